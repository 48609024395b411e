// swift-tools-version:6.0
import PackageDescription

// One package: C libraries come in through system-library targets found by pkg-config,
// all shared logic lives in `Shared`, and each tool is a thin executable over it.
let optimize: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]

let package = Package(
    name: "drl-toolkit",
    products: [
        .executable(name: "tensors", targets: ["tensors"]),
        .executable(name: "fid", targets: ["fid"]),
        .executable(name: "train", targets: ["train"]),
        .executable(name: "sample", targets: ["sample"]),
        .executable(name: "discrim", targets: ["discrim"]),
        .executable(name: "rlstep", targets: ["rlstep"]),
        .executable(name: "embed", targets: ["embed"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd",
                       providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CLibPNG", path: "Sources/CLibPNG", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"])]),
        // libpng reports errors by longjmp, which must never cross a Swift frame: every libpng
        // call happens inside this C shim, which turns the longjmp into an error code.
        .target(name: "CPNG", dependencies: ["CLibPNG"], path: "Sources/CPNG"),
        .target(
            name: "Shared",
            dependencies: [
                "CBLAS", "CZstd", "CZlib", "CPNG",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: optimize
        ),
        .executableTarget(name: "tensors", dependencies: ["Shared"], swiftSettings: optimize),
        .executableTarget(name: "fid", dependencies: ["Shared"], swiftSettings: optimize),
        .executableTarget(name: "train", dependencies: ["Shared"], swiftSettings: optimize),
        .executableTarget(name: "sample", dependencies: ["Shared"], swiftSettings: optimize),
        .executableTarget(name: "discrim", dependencies: ["Shared"], swiftSettings: optimize),
        .executableTarget(name: "rlstep", dependencies: ["Shared"], swiftSettings: optimize),
        .executableTarget(name: "embed", dependencies: ["Shared"], swiftSettings: optimize),
        .testTarget(name: "SharedTests", dependencies: ["Shared", "CZlib"], exclude: ["Golden"]),
    ],
    // Swift 5 language mode: the tools are single-process pipelines whose parallelism lives in
    // BLAS and explicit worker loops, so Swift 6's data-race checking buys little here.
    swiftLanguageModes: [.v5]
)
