import Foundation
import XCTest
import Shared

/// Issue #13's defects, each through the built tools: a diverged RL update, unwritable or closed
/// outputs (EPIPE, a full disk: /dev/full, see TestSupport.fullDevice), ignored or unchecked flags.

extension RLToolTests {
    /// A learning rate that blows the weights up (finite but ~1e30, every sample NaN) must not
    /// give a checkpoint: the loss of a fully masked minibatch, and the updated velocity, are checked.
    func testDivergedAMUpdateWritesNoCheckpoint() throws {
        let f = try files()
        let buf = try buffer(model: f.model, kind: .memorylessLL)
        let out = f.dir + "/diverged.safetensors"
        // several updates (the later minibatches see NaN losses), and one update (only the weights tell)
        for minibatch in ["4", "16"] {
            let r = try rlstep(f, algo: "am", stdin: buf, out: out, extra: ["--lr", "1e30", "--minibatch", minibatch])
            expectFailure(r, "no checkpoint written", out: out)
        }
    }

    /// `rlstep | true`: the metrics line meets a closed pipe; the checkpoint is kept and the tool
    /// exits quietly (before: SIGILL from FileHandle.write). A full stdout is an error, no checkpoint.
    func testMetricsToClosedPipeOrFullDisk() throws {
        let f = try files()
        let buf = try buffer(model: f.model, kind: .memorylessLL)
        let out = f.dir + "/piped.safetensors"
        let args = ["--algo", "am", "--model", f.model, "--ref", f.ref, "--out", out, "--threads", "1", "--minibatch", "4"]
        let r = try TestSupport.shell("rlstep \(args.joined(separator: " ")) | true; echo \"status ${PIPESTATUS[0]}\"", stdin: buf)
        XCTAssertEqual(String(decoding: r.stdout, as: UTF8.self), "status 0\n", r.stderr)
        XCTAssertEqual(r.stderr, "")
        XCTAssertNoThrow(try Checkpoint.read(out))
        let full = f.dir + "/full.safetensors"
        let g = try TestSupport.run("rlstep", Array(args.dropLast(4)) + ["--out", full, "--threads", "1"], stdin: buf, stdoutPath: try TestSupport.fullDevice())
        expectFailure(g, "standard output", out: full)
    }

    /// An unwritable --metrics fails before anything is written (before: the checkpoint was
    /// written first, and write errors were ignored).
    func testUnwritableMetricsLeavesNoCheckpoint() throws {
        let f = try files()
        let buf = try buffer(model: f.model, kind: .memorylessLL)
        let out = f.dir + "/m.safetensors"
        expectFailure(try rlstep(f, algo: "am", stdin: buf, out: out, extra: ["--metrics", "/nonexistent/m.jsonl"]), "/nonexistent/m.jsonl", out: out)
        let full = try TestSupport.fullDevice()
        expectFailure(try rlstep(f, algo: "am", stdin: buf, out: out, extra: ["--metrics", full]), full, out: out)
    }

    func testSplitOutsideTheUnitIntervalIsAUsageError() throws {
        let f = try files()
        for bad in ["2", "nan", "-0.1"] {
            let r = try rlstep(f, algo: "am", stdin: [], out: f.dir + "/x.safetensors", extra: ["--split", bad])
            XCTAssertEqual(r.status, 64, "--split \(bad): \(r.stderr)")
        }
    }
}

extension TrainToolTests {
    /// A metrics file that cannot be written is one error line, not a trap (FileHandle.write).
    func testUnwritableMetricsIsAnError() throws {
        let full = try TestSupport.fullDevice()
        let r = try TestSupport.run("train", ["--config", Self.toyConfig, "--steps", "3", "--batch", "8", "--threads", "1",
                                              "--metrics", full, "-o", dir + "/t.safetensors", "--quiet"], stdin: try toyData(n: 100))
        EngineTestSupport.assertOneLineError(r, "train", contains: full)
    }

    /// --init-from takes its architecture; a --model or --config asking for another is refused.
    func testInitFromRefusesAnotherArchitecture() throws {
        let data = try toyData(n: 100)
        let base = dir + "/base.safetensors"
        var r = try TestSupport.run("train", ["--config", Self.toyConfig, "--steps", "2", "--batch", "8", "--threads", "1", "-o", base, "--quiet"], stdin: data)
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = dir + "/next.safetensors"
        r = try TestSupport.run("train", ["--init-from", base, "--model", "mlp-small", "--classes", "1", "--steps", "2", "--batch", "8", "-o", out, "--quiet"], stdin: data)
        EngineTestSupport.assertOneLineError(r, "train", contains: "architecture")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        r = try TestSupport.run("train", ["--init-from", base, "--config", Self.toyConfig, "--steps", "2", "--batch", "8", "-o", out, "--quiet"], stdin: data)
        XCTAssertEqual(r.status, 0, "the same architecture is fine: \(r.stderr)")
    }
}

extension SampleToolTests {
    func testHugeStepCountIsAUsageError() throws {
        let r = try TestSupport.run("sample", ["--model", model, "--n", "1", "--steps", "1000000000000"])
        XCTAssertEqual(r.status, 64, r.stderr)
        XCTAssertTrue(r.stderr.contains("--steps"), r.stderr)
    }

    func testLogProbToleranceMustBeANumber() throws {
        let out = try EngineTestSupport.sample(["--model", model, "--n", "4", "--steps", "3", "--sampler", "flowgrpo", "--record"])
        for bad in ["nan", "-1"] {
            let r = try TestSupport.run("sample", ["logprob", "--model", model, "--tolerance", bad], stdin: out)
            XCTAssertEqual(r.status, 64, "--tolerance \(bad): \(r.stderr)")
        }
    }

    /// `--weights raw` is honoured: EMA-drawn rollouts re-scored with the raw weights differ.
    func testLogProbHonoursWeights() throws {
        let out = try EngineTestSupport.sample(["--model", model, "--n", "8", "--steps", "4", "--sampler", "flowgrpo", "--record"])
        XCTAssertEqual(try TestSupport.run("sample", ["logprob", "--model", model, "--weights", "ema"], stdin: out).status, 0)
        let r = try TestSupport.run("sample", ["logprob", "--model", model, "--weights", "raw"], stdin: out)
        EngineTestSupport.assertOneLineError(r, "sample", contains: "differ")
    }
}

extension EmbedToolTests {
    func testProbeNeedsAnEpoch() throws {
        let r = try TestSupport.run("embed", ["probe", "--train", "a.tzst", "--test", "b.tzst", "--epochs", "0"])
        XCTAssertEqual(r.status, 64, r.stderr)
    }

    func testTrainUnwritableMetricsIsAnError() throws {
        let dir = try TestSupport.temporaryDirectory()
        let x = images(32, side: 12, seed: 1)
        let data = try TestSupport.streamBytes([Record([("x", Tensor(x, shape: [32, 1, 12, 12])),
                                                        ("y", Tensor((0..<32).map { Int64($0 % 2) }, shape: [32]))])])
        let out = dir + "/enc.safetensors", full = try TestSupport.fullDevice()
        let r = try TestSupport.run("embed", ["train", "--kind", "classifier", "-o", out, "--steps", "2", "--batch", "8", "--log-every", "1",
                                              "--metrics", full, "--threads", "1", "--quiet"], stdin: data)
        assertOneLineError(r, contains: full)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
    }
}

/// Text reports on a full disk exit 1 with one line (before: status 0 and an empty file).
final class FullDiskReportTests: XCTestCase {
    func assertFullDiskFails(_ tool: String, _ args: [String], stdin: [UInt8] = [], file: StaticString = #filePath, line: UInt = #line) throws {
        let r = try TestSupport.run(tool, args, stdin: stdin, stdoutPath: try TestSupport.fullDevice())
        XCTAssertEqual(r.status, 1, "\(tool) \(args): \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.hasPrefix("\(tool): error: ") && r.stderr.contains("standard output"), r.stderr, file: file, line: line)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, r.stderr, file: file, line: line)
    }

    func testReportsOnAFullDisk() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var rng = CounterRNG(seed: 4, stream: 1)
        func feats(_ n: Int, shift: Float) -> Record {
            Record([("feat", Tensor((0..<(n * 3)).map { _ in Float(rng.normal()) + shift }, shape: [n, 3])),
                    ("y", Tensor((0..<n).map { Int64($0 % 2) }, shape: [n]))], metadata: ["encoder": "pixels"])
        }
        let a = dir + "/a.tzst", b = dir + "/b.tzst"
        try AtomicFile.write(try TestSupport.streamBytes([feats(64, shift: 0)]), to: a)
        try AtomicFile.write(try TestSupport.streamBytes([feats(64, shift: 1)]), to: b)
        try assertFullDiskFails("tensors", ["info", a])
        try assertFullDiskFails("tensors", ["stats", a])
        try assertFullDiskFails("fid", [a, b, "--threads", "1"])
        try assertFullDiskFails("embed", ["probe", "--train", a, "--test", b, "--epochs", "1", "--threads", "1"])
        let disc = dir + "/d.safetensors"
        try assertFullDiskFails("discrim", ["train", "--real", a, "--fake", b, "-o", disc, "--width", "4", "--batch", "16",
                                            "--max-steps", "4", "--eval-every", "2", "--quiet", "--threads", "1"])
        XCTAssertFalse(FileManager.default.fileExists(atPath: disc), "no checkpoint without its report")
        let model = try EngineTestSupport.randomModel(in: dir)
        let rollouts = try EngineTestSupport.sample(["--model", model, "--n", "4", "--steps", "3", "--sampler", "flowgrpo", "--record"])
        try assertFullDiskFails("sample", ["logprob", "--model", model], stdin: rollouts)
    }
}
