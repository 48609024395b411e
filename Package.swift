// swift-tools-version:6.0
import Foundation
import PackageDescription

// One package. C libraries come in through system-library targets found by pkg-config; the shared
// logic is a stack of library targets, each depending only on those below it (docs/architecture.md),
// so an upward import does not compile; `Shared` re-exports them all for the tools, and each tool
// is a thin executable over it.

// -Ounchecked (no preconditions, no overflow checks) only for Numerics and NN, whose element-wise
// loops (layers, attention, BLAS glue) were measured to need it: with -O there, sit-tiny training
// ran about 40% and its sampling about 80% slower (docs/engine.md). Every other target builds with
// -O, so its preconditions run in the tools and in the tests.
let unchecked: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]
let checked: [SwiftSetting] = [.unsafeFlags(["-O", "-wmo"], .when(configuration: .release))]

// MPI is optional: DRL_MPI=1 at build time adds OpenMPI (Debian's libopenmpi-dev, through the
// system-library target CMPI and the C shim CMPIShim, wrapped as a DataParallelGroup by
// MPISupport) to `train` and `rlstep`, compiled with the condition DRL_MPI, so `mpirun -np K
// train ...` and `mpirun -np K rlstep ...` are data-parallel (docs/scaleout.md). The default
// build needs no MPI. Build it apart: `DRL_MPI=1 swift build -c release --build-path .build-mpi`
// (`make build-mpi`).
let withMPI = ProcessInfo.processInfo.environment["DRL_MPI"] == "1"
let mpiTargets: [Target] = withMPI ? [
    .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi", providers: [.apt(["libopenmpi-dev"])]),
    .target(name: "CMPIShim", dependencies: ["CMPI"], path: "Sources/CMPIShim"),
    .target(name: "MPISupport", dependencies: ["CMPIShim", "NN", "CLI", "TensorStream"], path: "Sources/MPISupport",
            swiftSettings: checked + [.define("DRL_MPI")]),
] : []
let mpiToolDependencies: [Target.Dependency] = withMPI ? ["Shared", "MPISupport"] : ["Shared"]
let mpiToolSettings: [SwiftSetting] = withMPI ? checked + [.define("DRL_MPI")] : checked

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
        // OpenSSL's libcrypto, only for SHA-256: its SHA-NI/AVX2 code hashes a checkpoint about seven
        // times faster than portable Swift, and every tool hashes each checkpoint it reads or writes.
        .systemLibrary(name: "CCrypto", path: "Sources/CCrypto", pkgConfig: "libcrypto",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CLibPNG", path: "Sources/CLibPNG", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"])]),
        // libpng reports errors by longjmp, which must never cross a Swift frame: every libpng
        // call happens inside this C shim, which turns the longjmp into an error code.
        .target(name: "CPNG", dependencies: ["CLibPNG"], path: "Sources/CPNG"),

        // Element-wise layer loops in C, built for AVX-512, AVX2 and baseline x86-64 and picked at
        // run time (Swift cannot target one function at a newer ISA); no FMA contraction, so all
        // three give the Swift loops' bits (docs/engine.md).
        .target(name: "CKernels", path: "Sources/CKernels",
                cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off", "-mprefer-vector-width=512"])]),

        // The layers, bottom to top.
        .target(name: "Numerics", dependencies: ["CBLAS"], swiftSettings: unchecked),
        .target(name: "TensorStream", dependencies: ["CZstd", "CCrypto"], swiftSettings: checked),
        .target(name: "Formats", dependencies: ["TensorStream", "CZlib", "CPNG"], swiftSettings: checked),
        .target(name: "NN", dependencies: ["Numerics", "TensorStream", "CKernels"], swiftSettings: unchecked),
        .target(name: "Flow", dependencies: ["NN", "Numerics", "TensorStream"], swiftSettings: checked),
        .target(name: "Features", dependencies: ["NN", "Numerics", "TensorStream"], swiftSettings: checked),
        .target(name: "Discriminator", dependencies: ["Features", "NN", "Numerics", "TensorStream"], swiftSettings: checked),
        .target(name: "Metrics", dependencies: ["Numerics", "TensorStream", "CZlib"], swiftSettings: checked),
        .target(name: "RL", dependencies: ["Flow", "Metrics", "NN", "Numerics", "TensorStream"], swiftSettings: checked),
        // Only the CLI layer knows flags, `ToolError` and the progress bar.
        .target(
            name: "CLI",
            dependencies: ["Numerics", "TensorStream", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            swiftSettings: checked
        ),
        // The umbrella the tools import: it re-exports every layer.
        .target(
            name: "Shared",
            dependencies: ["Numerics", "TensorStream", "Formats", "NN", "Flow", "Features", "Discriminator",
                           "Metrics", "RL", "CLI"],
            swiftSettings: checked
        ),

        .executableTarget(name: "tensors", dependencies: ["Shared"], swiftSettings: checked),
        .executableTarget(name: "fid", dependencies: ["Shared"], swiftSettings: checked),
        .executableTarget(name: "train", dependencies: mpiToolDependencies, swiftSettings: mpiToolSettings),
        .executableTarget(name: "sample", dependencies: ["Shared"], swiftSettings: checked),
        .executableTarget(name: "discrim", dependencies: ["Shared"], swiftSettings: checked),
        .executableTarget(name: "rlstep", dependencies: mpiToolDependencies, swiftSettings: mpiToolSettings),
        .executableTarget(name: "embed", dependencies: ["Shared"], swiftSettings: checked),
        .testTarget(name: "SharedTests", dependencies: ["Shared", "CZlib", "CKernels"], exclude: ["Golden"]),
    ] + mpiTargets,
    // Swift 5 language mode: the tools are single-process pipelines whose parallelism lives in
    // BLAS and explicit worker loops, so Swift 6's data-race checking buys little here.
    swiftLanguageModes: [.v5]
)
