import Foundation
import XCTest
import Shared

/// Helpers for the engine tests (train and sample run end to end as built executables).
enum EngineTestSupport {
    /// A small mlp on 1x4x4 images with 3 classes and random (non-zero) weights everywhere, so
    /// every layer matters; saved as a training-style checkpoint with EMA weights that differ.
    static func randomModel(in dir: String, seed: UInt64 = 7, name: String = "m.safetensors") throws -> String {
        let config = ModelConfig(arch: "mlp", channels: 1, height: 4, width: 4, numClasses: 3, hidden: 32, depth: 2,
                                 mlpRatio: 2, frequencyDim: 32)
        let net = try VelocityNet.make(config, seed: seed)
        var rng = CounterRNG(seed: seed, stream: 99)
        for p in net.params.all { p.normal(std: 0.3, rng: &rng) }
        let ema = EMA(net.params, decay: 0.5)
        for p in net.params.all { p.normal(std: 0.3, rng: &rng) }
        ema.update()
        let path = dir + "/" + name
        try TrainingCheckpoint.save(to: path, model: net, ema: ema, step: 3, metadata: ["tool": "test"])
        return path
    }

    static func records(_ bytes: [UInt8]) throws -> [Record] { try TestSupport.readAll(bytes) }

    /// All values of a per-sample tensor across records.
    static func floats(_ records: [Record], _ name: String) throws -> [Float] {
        try records.flatMap { try $0.require(name, by: "test").floats() }
    }

    static func ints(_ records: [Record], _ name: String) throws -> [Int64] {
        try records.flatMap { try $0.require(name, by: "test").int64s() }
    }

    static func sample(_ args: [String], stdin: [UInt8] = [], file: StaticString = #filePath, line: UInt = #line) throws -> [UInt8] {
        let r = try TestSupport.run("sample", args, stdin: stdin)
        XCTAssertEqual(r.status, 0, "sample \(args): \(r.stderr)", file: file, line: line)
        return r.stdout
    }

    /// Asserts a failed run: exit 1 and exactly one line `TOOL: error: ...` on stderr.
    static func assertOneLineError(_ r: TestSupport.Result, _ tool: String, contains: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 1, "stderr: \(r.stderr)", file: file, line: line)
        let lines = r.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "expected one line, got: \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.hasPrefix("\(tool): error: "), r.stderr, file: file, line: line)
        XCTAssertTrue(r.stderr.contains(contains), "'\(r.stderr)' should mention '\(contains)'", file: file, line: line)
    }
}

final class SampleToolTests: XCTestCase {
    var dir = ""
    var model = ""

    override func setUpWithError() throws {
        dir = try TestSupport.temporaryDirectory()
        model = try EngineTestSupport.randomModel(in: dir)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// Every SDE sampler with --eta 0 writes exactly the Euler ODE's samples.
    func testEtaZeroSDEEqualsODE() throws {
        let common = ["--model", model, "--n", "40", "--steps", "8", "--seed", "3", "--batch", "16"]
        let ode = try EngineTestSupport.floats(EngineTestSupport.records(EngineTestSupport.sample(common + ["--sampler", "euler"])), "x")
        XCTAssertEqual(ode.count, 40 * 16)
        for kind in ["flowgrpo", "dance", "cps", "precise", "dance-precise"] {
            let sde = try EngineTestSupport.floats(EngineTestSupport.records(EngineTestSupport.sample(common + ["--sampler", kind, "--eta", "0"])), "x")
            XCTAssertEqual(sde, ode, "\(kind) with eta 0 differs from euler")
        }
        // ... and with eta > 0 they do differ (the noise is really injected).
        let noisy = try EngineTestSupport.floats(EngineTestSupport.records(EngineTestSupport.sample(common + ["--sampler", "precise"])), "x")
        XCTAssertNotEqual(noisy, ode)
    }

    /// The record format of --record, and the recorded log-probs recomputed from the checkpoint
    /// equal the stored ones bit for bit (on-policy ratio exactly 1), for several samplers, with
    /// CFG, a CFG interval, an SDE window and a time shift.
    func testRecordedLogProbsRecompute() throws {
        let variants: [[String]] = [
            ["--sampler", "flowgrpo"],
            ["--sampler", "precise", "--cfg", "2.5", "--cfg-interval", "0.2,0.9", "--shift", "3"],
            ["--sampler", "cps", "--sde-window", "1..4"],
            ["--sampler", "memoryless-ll", "--no-ema"],
            ["--sampler", "dance-precise", "--group", "4"],
        ]
        for v in variants {
            let out = try EngineTestSupport.sample(["--model", model, "--n", "24", "--steps", "6", "--batch", "16", "--record", "--seed", "5"] + v)
            let recs = try EngineTestSupport.records(out)
            XCTAssertEqual(recs.map { $0.batchSize }, [16, 8], "\(v)")
            let r = recs[0]
            XCTAssertEqual(r["traj.x"]?.shape, [16, 7, 1, 4, 4])
            XCTAssertEqual(r["traj.t"]?.shape, [7])
            XCTAssertEqual(r["traj.logp"]?.shape, [16, 6])
            XCTAssertEqual(r["x"]?.shape, [16, 1, 4, 4])
            XCTAssertEqual(r.metadata["per_record"], "traj.t")
            XCTAssertEqual(r.metadata["logprob_reduction"], "mean")
            XCTAssertEqual(r.metadata["model"], try Checkpoint.digest(model))
            XCTAssertEqual(r.metadata["weights"], v.contains("--no-ema") ? "raw" : "ema")
            XCTAssertEqual(try r["traj.t"]!.floats().first, 1)
            XCTAssertEqual(try r["traj.t"]!.floats().last, 0)
            // The last trajectory state is x (before clamping).
            let traj = try r["traj.x"]!.floats(), x = try r["x"]!.floats()
            for b in 0..<16 { for d in 0..<16 { XCTAssertEqual(min(1, max(-1, traj[(b * 7 + 6) * 16 + d])), x[b * 16 + d]) } }
            let logp = try r["traj.logp"]!.floats()
            if v.contains("1..4") {  // only steps 1, 2, 3 are stochastic
                for b in 0..<16 { XCTAssertEqual(logp[b * 6], 0); XCTAssertNotEqual(logp[b * 6 + 1], 0); XCTAssertEqual(logp[b * 6 + 4], 0) }
            }
            if v.contains("--group") {
                XCTAssertEqual(try r["group"]!.int64s(), (0..<16).map { Int64($0 / 4) })
                XCTAssertEqual(try r["y"]!.int64s(), (0..<16).map { Int64(($0 / 4) % 3) })
            }
            let check = try TestSupport.run("sample", ["logprob", "--model", model] + (v.contains("--no-ema") ? ["--no-ema"] : []), stdin: out)
            XCTAssertEqual(check.status, 0, check.stderr)
            let line = String(decoding: check.stdout, as: UTF8.self)
            XCTAssertTrue(line.contains("\"max_abs_diff\":0.0"), "\(v): \(line)")
            XCTAssertTrue(line.contains("\"max_ratio_deviation\":0.0"), line)
            XCTAssertTrue(line.contains("\"same_model\":true"), line)
            let transitions = Int(line.components(separatedBy: "\"transitions\":")[1].prefix { $0.isNumber })!
            XCTAssertTrue(line.contains("\"bit_identical\":\(transitions)"), line)
            XCTAssertGreaterThan(transitions, 0)
        }
    }

    /// Another model's log-probs differ: the self-test notices and exits 1.
    func testLogProbFlagsAnotherModel() throws {
        let other = try EngineTestSupport.randomModel(in: dir, seed: 8, name: "other.safetensors")
        let out = try EngineTestSupport.sample(["--model", model, "--n", "8", "--steps", "4", "--sampler", "flowgrpo", "--record"])
        let r = try TestSupport.run("sample", ["logprob", "--model", other], stdin: out)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(String(decoding: r.stdout, as: UTF8.self).contains("\"same_model\":false"))
        XCTAssertTrue(r.stderr.contains("differ"), r.stderr)
    }

    /// Same seed, same bytes, whatever the thread count; another seed, other samples.
    func testSameSeedSameBytes() throws {
        let args = ["--model", model, "--n", "70", "--steps", "5", "--sampler", "precise", "--record", "--seed", "11", "--batch", "64"]
        let a = try EngineTestSupport.sample(args + ["--threads", "1"])
        let b = try EngineTestSupport.sample(args + ["--threads", "1"])
        let c = try EngineTestSupport.sample(args + ["--threads", "2"])
        XCTAssertEqual(a, b)
        XCTAssertEqual(a, c, "thread count changed the bytes")
        let d = try EngineTestSupport.sample(["--model", model, "--n", "70", "--steps", "5", "--sampler", "precise", "--record", "--seed", "12", "--batch", "64"])
        XCTAssertNotEqual(try EngineTestSupport.floats(EngineTestSupport.records(a), "x"), try EngineTestSupport.floats(EngineTestSupport.records(d), "x"))
    }

    /// Shards at multiples of --batch joined with `cat` are byte for byte the stream of one run;
    /// shards at other offsets hold the same samples (by id), cut into records differently.
    func testOffsetShardsConcatenate() throws {
        for extra in [["--sampler", "euler"], ["--sampler", "flowgrpo", "--record", "--group", "4"]] {
            let base = ["--model", model, "--steps", "4", "--seed", "2", "--batch", "16"] + extra
            let whole = try EngineTestSupport.sample(base + ["--n", "56"])
            var joined: [UInt8] = []
            for (offset, n) in [(0, 16), (16, 32), (48, 8)] {
                joined += try EngineTestSupport.sample(base + ["--n", "\(n)", "--offset", "\(offset)"])
            }
            XCTAssertEqual(joined, whole, "cat of aligned shards differs from one run (\(extra))")
            // Unaligned shards: same samples per id, to float rounding: a shard that starts mid-batch
            // runs its first ids in a smaller batch, and BLAS kernels may round differently for a
            // different row count (OpenBLAS's Haswell sgemm does; its SkylakeX one did not).
            var parts: [Record] = []
            for (offset, n) in [(0, 20), (20, 36)] {
                parts += try EngineTestSupport.records(EngineTestSupport.sample(base + ["--n", "\(n)", "--offset", "\(offset)"]))
            }
            let ref = try EngineTestSupport.records(whole)
            XCTAssertEqual(try EngineTestSupport.ints(parts, "id"), (0..<56).map { Int64($0) })
            let got = try EngineTestSupport.floats(parts, "x"), want = try EngineTestSupport.floats(ref, "x")
            XCTAssertEqual(got.count, want.count)
            XCTAssertLessThan(zip(got, want).map { abs($0 - $1) }.max() ?? .infinity, 1e-5, "unaligned shards (\(extra))")
            XCTAssertEqual(try EngineTestSupport.ints(parts, "y"), try EngineTestSupport.ints(ref, "y"))
        }
        // An empty run is an empty (valid) stream.
        XCTAssertEqual(try EngineTestSupport.sample(["--model", model, "--n", "0"]), [])
    }

    /// Labels: balanced by default, --label, --labels-from a stream (with groups).
    func testLabels() throws {
        let balanced = try EngineTestSupport.ints(EngineTestSupport.records(EngineTestSupport.sample(["--model", model, "--n", "7", "--offset", "5"])), "y")
        XCTAssertEqual(balanced, (5..<12).map { Int64($0 % 3) })
        let fixed = try EngineTestSupport.ints(EngineTestSupport.records(EngineTestSupport.sample(["--model", model, "--n", "5", "--label", "3"])), "y")
        XCTAssertEqual(fixed, [3, 3, 3, 3, 3])  // 3 = the null label: unconditional
        let labels = try TestSupport.streamBytes([Record([("y", Tensor([Int64(2), 0, 1], shape: [3]))])])
        let fromStream = try EngineTestSupport.records(EngineTestSupport.sample(["--model", model, "--labels-from", "-", "--group", "2"], stdin: labels))
        XCTAssertEqual(try EngineTestSupport.ints(fromStream, "y"), [2, 2, 0, 0, 1, 1])
        XCTAssertEqual(try EngineTestSupport.ints(fromStream, "group"), [0, 0, 1, 1, 2, 2])
    }

    /// Bad input: one line, exit 1, no output file.
    func testBadInput() throws {
        let out = dir + "/out.tzst"
        EngineTestSupport.assertOneLineError(try TestSupport.run("sample", ["--model", model, "--label", "4", "-o", out]), "sample", contains: "outside")
        EngineTestSupport.assertOneLineError(try TestSupport.run("sample", ["--model", dir + "/missing.safetensors", "-o", out]), "sample", contains: "cannot open")
        EngineTestSupport.assertOneLineError(try TestSupport.run("sample", ["--model", model, "--group", "3", "--batch", "16", "-o", out]), "sample", contains: "multiple")
        let noY = try TestSupport.streamBytes([Record([("x", Tensor([Float](repeating: 0, count: 16), shape: [1, 1, 4, 4]))])])
        EngineTestSupport.assertOneLineError(try TestSupport.run("sample", ["--model", model, "--labels-from", "-", "-o", out], stdin: noY), "sample", contains: "`y`")
        let badLabel = try TestSupport.streamBytes([Record([("y", Tensor([Int64(9)], shape: [1]))])])
        EngineTestSupport.assertOneLineError(try TestSupport.run("sample", ["--model", model, "--labels-from", "-", "-o", out], stdin: badLabel), "sample", contains: "outside")
        EngineTestSupport.assertOneLineError(try TestSupport.run("sample", ["--model", model, "--sampler", "cps", "--eta", "2", "-o", out]), "sample", contains: "eta")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        // logprob on a stream without a trajectory
        let plain = try EngineTestSupport.sample(["--model", model, "--n", "4"])
        EngineTestSupport.assertOneLineError(try TestSupport.run("sample", ["logprob", "--model", model], stdin: plain), "sample", contains: "traj.x")
    }
}
