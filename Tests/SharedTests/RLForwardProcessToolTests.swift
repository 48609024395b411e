import Foundation
import XCTest
import Shared

/// `rlstep --algo crd|nft`, `sample --weights sampling` and `tensors reward --brightness` as a user runs them.
final class RLForwardProcessToolTests: XCTestCase {
    static let config = RLGradientTests.config  // [1, 1, 3], 2 classes

    func files() throws -> RLToolTests.Files {
        let dir = try TestSupport.temporaryDirectory()
        let net = try VelocityNet.make(Self.config, seed: 1)
        var g = GradCheck()
        for p in net.params.all { p.values = p.values.map { $0 + Float(g.randoms(1, std: 0.05)[0]) } }
        try net.save(to: dir + "/base.safetensors", metadata: ["step": "0"])
        try net.save(to: dir + "/cur.safetensors", metadata: ["step": "0"])
        return RLToolTests.Files(dir: dir, model: dir + "/cur.safetensors", ref: dir + "/base.safetensors")
    }

    /// Two records of ODE samples (no trajectories) with y, group, reward.
    func buffer(model path: String, weights: String? = nil, drop: [String] = []) throws -> [UInt8] {
        let record = try Checkpoint.read(path)
        let net = weights == "sampling" ? try VelocityNet.load(from: record, prefix: record.metadata["rl.sampling_weights"]!) : try VelocityNet.load(from: record)
        let sampler = try Sampler(kind: .euler, steps: 4)
        let D = net.sampleDimension
        var records: [Record] = []
        for part in 0..<2 {
            let n = 8
            let ids = (0..<n).map { Int64(part * n + $0) }
            let labels = ids.map { Int($0 / 4 % 2) }
            let res = sampler.sample(model: net, labels: labels, ids: ids, seed: 3)
            var r = Record()
            r["x"] = Tensor(res.x, shape: [n, 1, 1, D])
            r["y"] = Tensor(labels.map(Int64.init), shape: [n])
            r["id"] = Tensor(ids, shape: [n])
            r["group"] = Tensor(ids.map { $0 / 4 }, shape: [n])
            r["reward"] = Tensor((0..<n).map { b in res.x[b * D] - res.x[b * D + 1] }, shape: [n])
            r.metadata = sampler.settings
            r.metadata["model"] = try Checkpoint.digest(path)
            for name in drop { r[name] = nil }
            records.append(r)
        }
        return try TestSupport.streamBytes(records)
    }

    func rlstep(_ f: RLToolTests.Files, algo: String, model: String? = nil, stdin: [UInt8], out: String, extra: [String] = []) throws -> TestSupport.Result {
        try TestSupport.run("rlstep", ["--algo", algo, "--model", model ?? f.model, "--ref", f.ref, "--out", out, "--threads", "1",
                                       "--minibatch", "8", "--lr", "1e-3", "--timesteps", "3"] + extra, stdin: stdin)
    }

    func values(_ r: Record, prefix: String) throws -> [Float] {
        try r.names.filter { $0.hasPrefix(prefix) }.sorted().flatMap { try r[$0]!.floats() }
    }

    func testRoundsAreDeterministicAndResumeSnapshots() throws {
        for algo in ["crd", "nft"] {
            let f = try files()
            let buf = try buffer(model: f.model)
            let decays = algo == "crd" ? ["--old-decay", "0-0.5-0-0.5", "--sampling-decay", "0-0.25-0-0.25"] : ["--old-decay", "0-0.5-0-0.5"]
            let a = try rlstep(f, algo: algo, stdin: buf, out: f.dir + "/a.safetensors", extra: ["--metrics", f.dir + "/a.jsonl"] + decays)
            XCTAssertEqual(a.status, 0, a.stderr)
            let b = try rlstep(f, algo: algo, stdin: buf, out: f.dir + "/b.safetensors", extra: ["--metrics", f.dir + "/b.jsonl"] + decays)
            XCTAssertEqual(b.status, 0, b.stderr)
            XCTAssertEqual(try readFile(f.dir + "/a.safetensors"), try readFile(f.dir + "/b.safetensors"), "\(algo): checkpoint bytes differ")
            XCTAssertEqual(try readFile(f.dir + "/a.jsonl"), try readFile(f.dir + "/b.jsonl"), "\(algo): metrics bytes differ")
            let metrics = String(decoding: try readFile(f.dir + "/a.jsonl"), as: UTF8.self)
            XCTAssertTrue(metrics.contains("\"algo\":\"\(algo)\""), metrics)
            XCTAssertTrue(metrics.contains("\"old_decay\":0.5"), metrics)

            let r1 = try Checkpoint.read(f.dir + "/a.safetensors")
            XCTAssertEqual(r1.metadata["rl.algo"], algo)
            let samplingPrefix = algo == "crd" ? "crd.sampling." : "nft.old."
            XCTAssertEqual(r1.metadata["rl.sampling_weights"], samplingPrefix)
            let base = try Checkpoint.read(f.model)
            let theta0 = try base.names.sorted().flatMap { try base[$0]!.floats() }
            let theta1 = try base.names.sorted().flatMap { try r1[$0]!.floats() }
            // round 1: snapshots start at the starting policy, then s = d s + (1 - d) theta_1
            let old1 = try values(r1, prefix: "\(algo).old.")
            for i in 0..<old1.count { XCTAssertEqual(old1[i], 0.5 * theta0[i] + 0.5 * theta1[i], accuracy: 1e-6) }
            if algo == "crd" {
                let s1 = try values(r1, prefix: "crd.sampling.")
                for i in 0..<s1.count { XCTAssertEqual(s1[i], 0.25 * theta0[i] + 0.75 * theta1[i], accuracy: 1e-6) }
            }

            // round 2 from the round-1 checkpoint: rollouts from its sampling snapshot; snapshots resume
            let buf2 = try buffer(model: f.dir + "/a.safetensors", weights: "sampling")
            let c = try rlstep(f, algo: algo, model: f.dir + "/a.safetensors", stdin: buf2, out: f.dir + "/c.safetensors", extra: decays)
            XCTAssertEqual(c.status, 0, c.stderr)
            let r2 = try Checkpoint.read(f.dir + "/c.safetensors")
            XCTAssertEqual(r2.metadata["step"], "4")
            let theta2 = try base.names.sorted().flatMap { try r2[$0]!.floats() }
            let old2 = try values(r2, prefix: "\(algo).old.")
            for i in 0..<old2.count { XCTAssertEqual(old2[i], 0.5 * old1[i] + 0.5 * theta2[i], accuracy: 1e-6) }
            XCTAssertNotEqual(theta1, theta2)
        }
    }

    func testMissingRewardOrGroupIsOneLine() throws {
        let f = try files()
        for algo in ["crd", "nft"] {
            for (missing, word) in [("reward", "`reward`"), ("group", "`group`"), ("x", "`x`")] {
                let r = try rlstep(f, algo: algo, stdin: try buffer(model: f.model, drop: [missing]), out: f.dir + "/x.safetensors")
                XCTAssertNotEqual(r.status, 0)
                let lines = r.stderr.split(separator: "\n")
                XCTAssertEqual(lines.count, 1, r.stderr)
                XCTAssertTrue(r.stderr.contains(word), r.stderr)
                XCTAssertFalse(FileManager.default.fileExists(atPath: f.dir + "/x.safetensors"))
            }
        }
        // CFG in the KL needs a class-conditional reference; a bad schedule is refused up front
        let bad = try rlstep(f, algo: "crd", stdin: try buffer(model: f.model), out: f.dir + "/x.safetensors", extra: ["--old-decay", "0-1.5-0-1"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("decay schedule"), bad.stderr)
    }

    func testSampleDrawsFromTheSamplingSnapshot() throws {
        let f = try files()
        let r = try rlstep(f, algo: "crd", stdin: try buffer(model: f.model), out: f.dir + "/a.safetensors", extra: ["--sampling-decay", "0-0.5-0-0.5"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let args = ["--model", f.dir + "/a.safetensors", "--n", "4", "--sampler", "euler", "--steps", "4", "--threads", "1", "--no-clamp"]
        let s = try TestSupport.run("sample", args + ["--weights", "sampling"])
        XCTAssertEqual(s.status, 0, s.stderr)
        let raw = try TestSupport.run("sample", args + ["--weights", "raw"])
        XCTAssertEqual(raw.status, 0, raw.stderr)
        let rs = try TestSupport.readAll(s.stdout), rr = try TestSupport.readAll(raw.stdout)
        XCTAssertEqual(rs.first?.metadata["weights"], "sampling")
        XCTAssertNotEqual(try rs[0]["x"]!.floats(), try rr[0]["x"]!.floats())
        // the samples are those of the snapshot's weights
        let ck = try Checkpoint.read(f.dir + "/a.safetensors")
        let snap = try VelocityNet.load(from: ck, prefix: "crd.sampling.")
        let want = try Sampler(kind: .euler, steps: 4).sample(model: snap, labels: try rs[0]["y"]!.int64s().map { Int($0) }, ids: (0..<4).map { Int64($0) }, seed: UInt64(rs[0].metadata["seed"] ?? "0") ?? 0).x
        let got = try rs[0]["x"]!.floats()
        for i in 0..<got.count { XCTAssertEqual(got[i], want[i], accuracy: 1e-5) }
        // a checkpoint without snapshots says so in one line
        let none = try TestSupport.run("sample", ["--model", f.model, "--n", "2", "--weights", "sampling"])
        XCTAssertNotEqual(none.status, 0)
        XCTAssertTrue(none.stderr.contains("no sampling snapshot"), none.stderr)
    }

    /// `tensors reward --class-confidence`: softmax(logits)[y] per sample (the `logits` of
    /// `embed classify`), a stale reward.grad dropped; one clear line for a null label, missing
    /// logits, non-finite logits, and --grad (no image gradient behind a classifier stage).
    func testClassConfidenceReward() throws {
        let logits: [Float] = [2, 0, -1, 0, 0, 0, 1000, 999, 0]
        let rec = Record([("x", Tensor([Float](repeating: 0, count: 3), shape: [3, 1, 1, 1])), ("y", Tensor([Int64(0), 2, 1], shape: [3])),
                          ("logits", Tensor(logits, shape: [3, 3])), ("reward.grad", Tensor([Float](repeating: 9, count: 3), shape: [3, 1, 1, 1]))])
        let r = try TestSupport.run("tensors", ["reward", "--class-confidence"], stdin: try TestSupport.streamBytes([rec]))
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = try TestSupport.readAll(r.stdout)
        let got = try out[0]["reward"]!.floats()
        let e2 = exp(2.0), e1 = exp(-1.0)
        let want = [e2 / (e2 + 1 + e1), 1.0 / 3, exp(-1.0) / (1 + exp(-1.0) + exp(-1000.0))]
        for i in 0..<3 { XCTAssertEqual(Double(got[i]), want[i], accuracy: 1e-6, "sample \(i)") }
        XCTAssertNil(out[0]["reward.grad"], "a stale reward.grad must not survive")
        XCTAssertEqual(try out[0]["logits"]!.floats(), logits)
        func fails(_ records: [Record], _ needle: String, args: [String] = ["reward", "--class-confidence"]) throws {
            let f = try TestSupport.run("tensors", args, stdin: try TestSupport.streamBytes(records))
            XCTAssertNotEqual(f.status, 0)
            // runtime errors are one line; usage errors (flags) get ArgumentParser's usage lines too
            if !args.contains("--grad") && !args.contains("--brightness") { XCTAssertEqual(f.stderr.split(separator: "\n").count, 1, f.stderr) }
            XCTAssertTrue(f.stderr.contains(needle), f.stderr)
        }
        var null = rec; null["y"] = Tensor([Int64(0), 3, 1], shape: [3])
        try fails([null], "label 3 of sample 1")
        var noLogits = rec; noLogits["logits"] = nil
        try fails([noLogits], "logits")
        var nan = rec; nan["logits"] = Tensor([Float.nan] + logits.dropFirst(), shape: [3, 3])
        try fails([nan], "NaN")
        try fails([rec], "no image gradient", args: ["reward", "--class-confidence", "--grad"])
        try fails([rec], "choose one reward", args: ["reward", "--class-confidence", "--brightness"])
    }

    func testBrightnessReward() throws {
        let x: [Float] = [-1, 0, 0.5, 1, 0.2, 0.2, 0.2, 0.2]
        var rec = Record([("x", Tensor(x, shape: [2, 1, 2, 2])), ("y", Tensor([Int64(3), 4], shape: [2])),
                          ("reward.grad", Tensor([Float](repeating: 9, count: 8), shape: [2, 1, 2, 2]))], metadata: ["tool": "test"])
        rec.metadata["keep"] = "me"
        let input = try TestSupport.streamBytes([rec])
        let r = try TestSupport.run("tensors", ["reward", "--brightness"], stdin: input)
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = try TestSupport.readAll(r.stdout)
        XCTAssertEqual(out.count, 1)
        XCTAssertEqual(try out[0]["reward"]!.floats(), [0.125, 0.2].map { Float($0) })
        XCTAssertNil(out[0]["reward.grad"], "a stale reward.grad must not survive")
        XCTAssertEqual(try out[0]["x"]!.floats(), x)
        XCTAssertEqual(try out[0]["y"]!.int64s(), [3, 4])
        XCTAssertEqual(out[0].metadata["keep"], "me")
        let g = try TestSupport.run("tensors", ["reward", "--brightness", "--grad"], stdin: input)
        XCTAssertEqual(g.status, 0, g.stderr)
        let og = try TestSupport.readAll(g.stdout)
        XCTAssertEqual(try og[0]["reward.grad"]!.floats(), [Float](repeating: 0.25, count: 8))
        XCTAssertEqual(og[0]["reward.grad"]!.shape, [2, 1, 2, 2])
        let noX = try TestSupport.run("tensors", ["reward", "--brightness"], stdin: try TestSupport.streamBytes([Record([("y", Tensor([Int64(1)], shape: [1]))])]))
        XCTAssertNotEqual(noX.status, 0)
        XCTAssertEqual(noX.stderr.split(separator: "\n").count, 1, noX.stderr)
    }
}
