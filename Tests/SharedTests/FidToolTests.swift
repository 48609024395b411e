import Foundation
import XCTest
import Shared

/// Runs the built `fid` executable (next to the test bundle) on good and bad inputs: the golden
/// numbers come out in `--json`, and every bad input is one `fid: error: ...` line with exit 1.
final class FidToolTests: XCTestCase {
    var tool: URL!
    var scratch: URL!

    override func setUpWithError() throws {
        // The .xctest bundle sits in the build folder beside the executables.
        let bundleDir = Bundle(for: FidToolTests.self).bundleURL.deletingLastPathComponent()
        let candidates = [bundleDir.appendingPathComponent("fid"), Bundle.main.bundleURL.appendingPathComponent("fid")]
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
            throw XCTSkip("fid executable not built next to the test bundle (\(bundleDir.path)); run `swift build -c release` first")
        }
        tool = found
        scratch = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("fidtool-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        if let scratch { try? FileManager.default.removeItem(at: scratch) }
    }

    func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
        let p = Process()
        p.executableURL = tool
        p.arguments = args + ["--threads", "1"].filter { _ in args.first != "--help" }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func write(_ name: String, _ records: [Record]) throws -> String {
        let path = scratch.appendingPathComponent(name).path
        let w = try TensorStreamWriter(path: path)
        for r in records { try w.write(r) }
        try w.finish()
        return path
    }

    func feat(_ b: Int, _ d: Int, seed: UInt64, encoder: String? = "golden-encoder-v1", poison: Bool = false) -> Record {
        var v = MetricsTests.features(n: b, d: d, seed: seed)
        if poison { v[v.count / 2] = .nan }
        return Record([("feat", Tensor(v, shape: [b, d]))], metadata: encoder.map { ["encoder": $0] } ?? [:])
    }

    func assertFails(_ args: [String], _ text: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try run(args)
        XCTAssertEqual(r.status, 1, "exit status for \(args): stderr \(r.err)", file: file, line: line)
        let lines = r.err.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "stderr should be one line: \(r.err)", file: file, line: line)
        XCTAssertTrue(r.err.hasPrefix("fid: error: "), "stderr: \(r.err)", file: file, line: line)
        XCTAssertTrue(r.err.contains(text), "stderr `\(r.err)` lacks `\(text)`", file: file, line: line)
        XCTAssertEqual(r.out, "", file: file, line: line)
    }

    func testGoldenThroughTheExecutable() throws {
        let a = FidGoldenTests.path("fid_a.tzst"), b = FidGoldenTests.path("fid_b.tzst")
        let r = try run([a, b, "--json", "--kid", "--prdc"])
        XCTAssertEqual(r.status, 0, r.err)
        let json = try JSONSerialization.jsonObject(with: Data(r.out.utf8)) as! [String: Any]
        let golden = try JSONSerialization.jsonObject(with: Data(contentsOf: FidGoldenTests.folder.appendingPathComponent("fid_golden.json"))) as! [String: Any]
        let fd = (json["fd"] as! NSNumber).doubleValue, ref = (golden["fd"] as! NSNumber).doubleValue
        XCTAssertEqual(fd, ref, accuracy: 1e-6 * ref)
        let prdc = json["prdc"] as! [String: Any], refP = golden["prdc"] as! [String: Any]
        for k in ["precision", "recall", "density", "coverage"] {
            XCTAssertEqual((prdc[k] as! NSNumber).doubleValue, (refP[k] as! NSNumber).doubleValue, accuracy: 1e-12, k)
        }
        XCTAssertNotNil(json["kid"])

        // `fid stats` then the cached statistics in place of B give the same FD.
        let stats = scratch.appendingPathComponent("b.safetensors").path
        let s = try run(["stats", "-i", b, "-o", stats, "--quiet"])
        XCTAssertEqual(s.status, 0, s.err)
        let st = try FeatureStatistics.read(stats)
        XCTAssertEqual(st.count, 400)
        XCTAssertEqual(st.encoder, "golden-encoder-v1")
        let r2 = try run([a, stats, "--json"])
        XCTAssertEqual(r2.status, 0, r2.err)
        let fd2 = ((try JSONSerialization.jsonObject(with: Data(r2.out.utf8)) as! [String: Any])["fd"] as! NSNumber).doubleValue
        XCTAssertEqual(fd2, ref, accuracy: 1e-6 * ref)

        // Table output by default.
        let t = try run([a, b])
        XCTAssertEqual(t.status, 0)
        XCTAssertTrue(t.out.contains("FD"))
    }

    func testBadInputsExitOneWithOneLine() throws {
        let a = FidGoldenTests.path("fid_a.tzst")
        let npz = FidGoldenTests.path("fid_b_stats.npz")
        try assertFails([a, FidGoldenTests.path("fid_images_grey.tzst")], "dimensions differ")
        try assertFails([a, try write("nan.tzst", [feat(30, 24, seed: 1, poison: true)])], "NaN or Inf")
        try assertFails([a, try write("one.tzst", [feat(1, 24, seed: 1)])], "only one sample")
        try assertFails([a, try write("empty.tzst", [])], "no features")
        let emptyFile = scratch.appendingPathComponent("zero-bytes.tzst").path
        XCTAssertTrue(FileManager.default.createFile(atPath: emptyFile, contents: Data()))
        try assertFails([a, emptyFile], "no features")
        try assertFails([a, try write("nofeat.tzst", [Record([("x", Tensor([Float](repeating: 0, count: 8), shape: [2, 1, 2, 2]))])])], "no `feat` tensor")
        try assertFails([a, try write("enc.tzst", [feat(30, 24, seed: 1, encoder: "another-encoder")])], "different encoders")
        try assertFails([a, npz], "names no encoder")
        try assertFails([a, npz, "--kid"], "need the features themselves")
        try assertFails([a, "/nonexistent/file.tzst"], "cannot open")
        // Statistics from another encoder.
        let other = scratch.appendingPathComponent("other.safetensors").path
        let s = try run(["stats", "-i", try write("o.tzst", [feat(30, 24, seed: 2, encoder: "another-encoder")]), "-o", other])
        XCTAssertEqual(s.status, 0, s.err)
        try assertFails([a, other], "different encoders")
        // n <= d: a warning, not an error.
        let few = try run([try write("few.tzst", [feat(10, 24, seed: 3)]), a])
        XCTAssertEqual(few.status, 0, few.err)
        XCTAssertTrue(few.err.contains("fid: warning:") && few.err.contains("n = 10 <= d = 24"), few.err)
        // Ignoring a one-sided missing encoder works.
        XCTAssertEqual(try run([a, npz, "--ignore-encoder"]).status, 0)
    }
}
