import Foundation
import XCTest
import Shared

/// Helpers shared by the tests: temporary files, zstd-compressing raw bytes, and running the
/// built executables (they sit next to the test bundle in the build folder).
enum TestSupport {
    static func temporaryDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "drl-tests-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// zstd-compresses raw bytes exactly as a stream writer would, without validating them.
    static func compress(_ bytes: [UInt8], level: Int = 1) throws -> [UInt8] {
        let dir = try temporaryDirectory()
        let path = dir + "/raw.zst"
        let file = try AtomicFile(path: path)
        let writer = try ZstdWriter(fd: file.fd, level: level)
        try writer.write(bytes)
        try writer.finish()
        try file.commit()
        return try readFile(path)
    }

    static func streamBytes(_ records: [Record], level: Int = 1) throws -> [UInt8] {
        let dir = try temporaryDirectory()
        let path = dir + "/s.tzst"
        let writer = try TensorStreamWriter(path: path, level: level)
        for r in records { try writer.write(r) }
        try writer.finish()
        return try readFile(path)
    }

    static func readAll(_ bytes: [UInt8], limits: RecordCodec.Limits = .init()) throws -> [Record] {
        let dir = try temporaryDirectory()
        let path = dir + "/in.tzst"
        try AtomicFile.write(bytes, to: path)
        let reader = try TensorStreamReader(path: path, limits: limits)
        var out: [Record] = []
        while let r = try reader.read() { out.append(r) }
        return out
    }

    /// A raw record: given header JSON text and a payload, the bytes of the record.
    static func rawRecord(header: String, payload: [UInt8], lengthOverride: UInt64? = nil) -> [UInt8] {
        let json = Array(header.utf8)
        var out = [UInt8]()
        withUnsafeBytes(of: (lengthOverride ?? UInt64(json.count)).littleEndian) { out.append(contentsOf: $0) }
        out += json
        out += payload
        return out
    }

    static var productsDirectory: URL {
        // DRL_TOOLS_DIR runs the tool tests against other builds (e.g. to see a new test fail
        // on the code before a fix).
        if let dir = ProcessInfo.processInfo.environment["DRL_TOOLS_DIR"], !dir.isEmpty { return URL(fileURLWithPath: dir) }
        for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
            return bundle.bundleURL.deletingLastPathComponent()
        }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    }

    struct Result {
        var status: Int32
        var stdout: [UInt8]
        var stderr: String
    }

    /// Runs a built tool with the given stdin, with a time limit so a hang fails the test.
    /// `stdoutPath` sends stdout to that file instead (e.g. /dev/full; `stdout` is then empty).
    static func run(_ tool: String, _ arguments: [String], stdin: [UInt8] = [], timeout: TimeInterval = 60, stdoutPath: String? = nil) throws -> Result {
        let process = Process()
        process.executableURL = tool.hasPrefix("/") ? URL(fileURLWithPath: tool) : productsDirectory.appendingPathComponent(tool)
        process.arguments = arguments
        // The tools re-execute themselves with native OpenBLAS kernels where Debian's OpenBLAS
        // falls back to generic ones (BLAS.preferNativeKernels); this test process cannot, so a
        // tool would round differently from the library it is compared with. Tools (and the
        // scripts and mpirun ranks that start them) run with this process's kernels instead.
        var environment = ProcessInfo.processInfo.environment
        environment["DRL_BLAS_REEXEC"] = "1"
        process.environment = environment
        let dir = try temporaryDirectory()
        let inPath = dir + "/stdin", outPath = dir + "/stdout", errPath = dir + "/stderr"
        FileManager.default.createFile(atPath: inPath, contents: Data(stdin))
        FileManager.default.createFile(atPath: outPath, contents: nil)
        FileManager.default.createFile(atPath: errPath, contents: nil)
        process.standardInput = FileHandle(forReadingAtPath: inPath)
        process.standardOutput = FileHandle(forWritingAtPath: stdoutPath ?? outPath)
        process.standardError = FileHandle(forWritingAtPath: errPath)
        try process.run()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            if Date() > deadline {
                process.terminate()
                XCTFail("\(tool) \(arguments) did not finish within \(timeout) s")
                break
            }
            usleep(2000)
        }
        process.waitUntilExit()
        let out = try readFile(outPath)
        let err = String(decoding: try readFile(errPath), as: UTF8.self)
        try? FileManager.default.removeItem(atPath: dir)
        // A signal (a trap) is not an exit status: report it as 128 + signal, as a shell does.
        let status = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        return Result(status: status, stdout: out, stderr: err)
    }

    /// A full device (writes fail with ENOSPC): /dev/full, or, where a container lacks it, the
    /// same device node made in the temporary folder. Skips the test when neither is possible.
    static func fullDevice() throws -> String {
        var st = stat()
        if stat("/dev/full", &st) == 0, (st.st_mode & S_IFMT) == S_IFCHR { return "/dev/full" }
        let path = NSTemporaryDirectory() + "drl-tests-full-\(getpid())"
        if stat(path, &st) == 0 {
            if (st.st_mode & S_IFMT) == S_IFCHR { return path }
            unlink(path)  // a tool under test replaced the node by a file (the bug being tested)
        }
        // device 1:7 is Linux's full device (dev_t encoding for small major/minor numbers)
        guard mknod(path, S_IFCHR | 0o666, dev_t(0x107)) == 0 else { throw XCTSkip("no /dev/full, and cannot make one") }
        return path
    }

    /// The scale a metric's rounding is judged against when one process is compared with ranks:
    /// the metric itself, except CRD's implicit-reward mean, which averages terms of both signs
    /// that nearly cancel (0.002 against a spread of 0.014), so its rounding is relative to the
    /// spread of those terms (`implicit_reward_centered_std` of the same line), not to itself.
    static func roundingScale(of key: String, value: Double, in line: [(String, Double)]) -> Double {
        guard key == "implicit_reward_mean" else { return abs(value) }
        let spread = line.first { $0.0 == "implicit_reward_centered_std" }.map { abs($0.1) } ?? 0
        return max(abs(value), spread)
    }

    /// Runs a bash script with the built tools first on PATH.
    static func shell(_ script: String, stdin: [UInt8] = [], timeout: TimeInterval = 60) throws -> Result {
        try run("/bin/bash", ["-c", "PATH=\(productsDirectory.path):$PATH; " + script], stdin: stdin, timeout: timeout)
    }
}
