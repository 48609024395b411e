import Foundation
import XCTest
import Shared

/// The `rlstep` and `discrim` executables: outputs, determinism, resumption and clear errors.
final class RLToolTests: XCTestCase {
    static let config = RLGradientTests.config  // [1, 1, 3], 2 classes

    struct Files {
        var dir: String
        var model: String
        var ref: String
    }

    func files() throws -> Files {
        let dir = try TestSupport.temporaryDirectory()
        let net = try VelocityNet.make(Self.config, seed: 1)
        var g = GradCheck()
        for p in net.params.all { p.values = p.values.map { $0 + Float(g.randoms(1, std: 0.05)[0]) } }
        try net.save(to: dir + "/base.safetensors", metadata: ["step": "0"])
        try net.save(to: dir + "/cur.safetensors", metadata: ["step": "0"])
        return Files(dir: dir, model: dir + "/cur.safetensors", ref: dir + "/base.safetensors")
    }

    /// A buffer of two records sampled by the model at `path`, with reward and reward.grad.
    func buffer(model path: String, kind: SamplerKind, steps: Int = 6, drop: [String] = [], mutate: ((inout Record) -> Void)? = nil) throws -> [UInt8] {
        let net = try VelocityNet.load(path: path)
        let sampler = try Sampler(kind: kind, steps: steps)
        let D = net.sampleDimension
        var records: [Record] = []
        for part in 0..<2 {
            let n = 8
            let ids = (0..<n).map { Int64(part * n + $0) }
            let labels = ids.map { Int($0 % 2) }
            let res = sampler.sample(model: net, labels: labels, ids: ids, seed: 3, record: true)
            var r = Record()
            r["x"] = Tensor(res.x, shape: [n, 1, 1, D])
            r["y"] = Tensor(labels.map(Int64.init), shape: [n])
            r["id"] = Tensor(ids, shape: [n])
            r["group"] = Tensor(ids.map { $0 / 4 }, shape: [n])
            r["traj.x"] = Tensor(res.trajectory!, shape: [n, steps + 1, 1, 1, D])
            r["traj.t"] = Tensor(res.times, shape: [steps + 1])
            r["traj.logp"] = Tensor(res.logProbs!, shape: [n, steps])
            r["reward"] = Tensor((0..<n).map { b in res.x[b * D] - res.x[b * D + 1] }, shape: [n])
            r["reward.grad"] = Tensor((0..<n).flatMap { _ in [Float(1), -1] + [Float](repeating: 0, count: D - 2) }, shape: [n, 1, 1, D])
            r.metadata = sampler.settings
            r.metadata["per_record"] = "traj.t"
            r.metadata["model"] = try Checkpoint.digest(path)
            for name in drop { r[name] = nil }
            mutate?(&r)
            records.append(r)
        }
        return try TestSupport.streamBytes(records)
    }

    func rlstep(_ f: Files, algo: String, stdin: [UInt8], out: String, extra: [String] = []) throws -> TestSupport.Result {
        try TestSupport.run("rlstep", ["--algo", algo, "--model", f.model, "--ref", f.ref, "--out", out, "--threads", "1", "--minibatch", "4", "--lr", "1e-3"] + extra, stdin: stdin)
    }

    func testAMRoundIsDeterministicResumableAndReportsMetrics() throws {
        let f = try files()
        let buf = try buffer(model: f.model, kind: .memorylessLL)
        let a = try rlstep(f, algo: "am", stdin: buf, out: f.dir + "/a.safetensors", extra: ["--lambda", "2"])
        XCTAssertEqual(a.status, 0, a.stderr)
        let b = try rlstep(f, algo: "am", stdin: buf, out: f.dir + "/b.safetensors", extra: ["--lambda", "2"])
        XCTAssertEqual(b.status, 0, b.stderr)
        XCTAssertEqual(try readFile(f.dir + "/a.safetensors"), try readFile(f.dir + "/b.safetensors"), "same inputs, same bytes")
        XCTAssertEqual(a.stdout, b.stdout, "metrics are deterministic too")
        let line = String(decoding: a.stdout, as: UTF8.self)
        XCTAssertEqual(line.filter { $0 == "\n" }.count, 1)
        let json = try JSON.parse(Array(line.utf8))
        guard case .object(let obj) = json else { return XCTFail("metrics are not a JSON object: \(line)") }
        let keys = Set(obj.map(\.0))
        for k in ["algo", "step", "updates", "reward_mean", "reward_std", "loss", "kl", "grad_norm", "outlier_frac", "outlier_threshold", "adjoint_norm_terminal", "lr"] {
            XCTAssertTrue(keys.contains(k), "metrics lack \(k): \(line)")
        }
        let ck = try Checkpoint.read(f.dir + "/a.safetensors")
        XCTAssertEqual(ck.metadata["step"], "4")  // 16 samples / minibatch 4
        XCTAssertEqual(ck.metadata["parent_sha256"], try Checkpoint.digest(f.model))
        XCTAssertEqual(ck.metadata["rl.algo"], "am")
        XCTAssertNotNil(ck.metadata[AdjointMatching.thresholdKey])
        XCTAssertTrue(ck.names.contains { $0.hasPrefix("optim.exp_avg.") })
        XCTAssertTrue(ck.names.contains { $0.hasPrefix("ema.") })
        // the next round resumes the optimizer and the step count
        var g = f
        g.model = f.dir + "/a.safetensors"
        let buf2 = try buffer(model: g.model, kind: .memorylessLL)
        let c = try rlstep(g, algo: "am", stdin: buf2, out: f.dir + "/c.safetensors", extra: ["--metrics", f.dir + "/m.jsonl"])
        XCTAssertEqual(c.status, 0, c.stderr)
        XCTAssertEqual(try Checkpoint.read(f.dir + "/c.safetensors").metadata["step"], "8")
        XCTAssertEqual(try Checkpoint.read(f.dir + "/c.safetensors").metadata["optim.step"], "8")
        XCTAssertTrue(String(decoding: try readFile(f.dir + "/m.jsonl"), as: UTF8.self).contains("\"step_start\":4"))
        // --new-stage: the same start weights (a's raw ones), but fresh AdamW moments and count
        let n = try rlstep(g, algo: "am", stdin: buf2, out: f.dir + "/n.safetensors", extra: ["--new-stage"])
        XCTAssertEqual(n.status, 0, n.stderr)
        let nk = try Checkpoint.read(f.dir + "/n.safetensors")
        XCTAssertEqual(nk.metadata["optim.step"], "4", "a new stage counts its own optimizer steps")
        XCTAssertEqual(nk.metadata["step"], "8", "the global step goes on")
        XCTAssertNotEqual(try readFile(f.dir + "/n.safetensors"), try readFile(f.dir + "/c.safetensors"), "the moments differ")
    }

    /// `srun -n 2` without an MPI launch would run the whole round in every task, each writing
    /// the same -o: refused in one line and no checkpoint (TrainToolTests has the same for train).
    func testReplicatedSlurmTasksAreRefused() throws {
        let f = try files()
        FileManager.default.createFile(atPath: f.dir + "/buf.tzst", contents: Data(try buffer(model: f.model, kind: .memorylessLL)))
        let cmd = "rlstep --algo am --model '\(f.model)' --ref '\(f.ref)' --threads 1 --minibatch 4 --metrics /dev/null '\(f.dir)/buf.tzst'"
        let two = try TestSupport.shell("SLURM_STEP_NUM_TASKS=2 \(cmd) -o '\(f.dir)/two.safetensors'")
        XCTAssertNotEqual(two.status, 0)
        XCTAssertEqual(two.stderr.split(separator: "\n").count, 1, two.stderr)
        XCTAssertTrue(two.stderr.contains("rlstep: error: started as one of 2 Slurm tasks without an MPI launch"), two.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: f.dir + "/two.safetensors"))
        let one = try TestSupport.shell("SLURM_STEP_NUM_TASKS=1 \(cmd) -o '\(f.dir)/one.safetensors'")
        XCTAssertEqual(one.status, 0, one.stderr)
    }

    /// `--profile` adds one stderr line of stage times (am: the two parts of prepare) and changes
    /// neither the checkpoint nor the metrics; a failed round prints no profile.
    func testProfilePrintsStagesWithoutChangingTheResult() throws {
        let f = try files()
        let buf = try buffer(model: f.model, kind: .memorylessLL)
        let plain = try rlstep(f, algo: "am", stdin: buf, out: f.dir + "/plain.safetensors")
        XCTAssertEqual(plain.status, 0, plain.stderr)
        let prof = try rlstep(f, algo: "am", stdin: buf, out: f.dir + "/prof.safetensors", extra: ["--profile"])
        XCTAssertEqual(prof.status, 0, prof.stderr)
        XCTAssertEqual(try readFile(f.dir + "/plain.safetensors"), try readFile(f.dir + "/prof.safetensors"))
        XCTAssertEqual(plain.stdout, prof.stdout)
        let lines = prof.stderr.split(separator: "\n").filter { $0.hasPrefix("rlstep: profile: ") }
        XCTAssertEqual(lines.count, 1, prof.stderr)
        let line = String(lines.first ?? "")
        var at = line.startIndex
        for stage in ["read ", "prepare ", "(lean_adjoint ", "path_kl ", "gradients ", "optimizer ", "finish ", "write ", "total "] {
            guard let r = line.range(of: stage, range: at..<line.endIndex) else { return XCTFail("no \(stage)in order: \(line)") }
            at = r.upperBound
        }
        let grpo = try rlstep(f, algo: "grpo", stdin: buf, out: f.dir + "/g.safetensors", extra: ["--profile"])
        XCTAssertEqual(grpo.status, 0, grpo.stderr)
        XCTAssertTrue(grpo.stderr.contains("rlstep: profile: read ") && !grpo.stderr.contains("lean_adjoint"), grpo.stderr)
        let bad = try rlstep(f, algo: "am", stdin: try buffer(model: f.model, kind: .memorylessLL, drop: ["reward.grad"]),
                             out: f.dir + "/bad.safetensors", extra: ["--profile"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertFalse(bad.stderr.contains("profile"), bad.stderr)
    }

    /// A `train` checkpoint (EMA and optimizer state, no `rl.algo`) starts the policy from its EMA
    /// weights with fresh state, and the reference is its EMA too (what `sample` draws by default);
    /// `--raw-start` takes the raw weights instead.
    func testBaseCheckpointStartsFromItsEMAWeights() throws {
        let f = try files()
        let net = try VelocityNet.load(path: f.model)
        let ema = EMA(net.params, decay: 0.9)
        let emaValues = net.params.all.map(\.values)
        for p in net.params.all { p.values = p.values.map { $0 + 0.25 } }   // raw != EMA
        let optimizer = AdamW(net.params, lr: 1e-3)
        let base = f.dir + "/trained.safetensors"
        try TrainingCheckpoint.save(to: base, model: net, optimizer: optimizer, ema: ema, step: 40)
        var g = f
        g.model = base; g.ref = base
        let buf = try buffer(model: base, kind: .memorylessLL)
        // lr tiny: the written raw weights are the starting weights to ~1e-12
        for (flag, expected) in [([String](), emaValues), (["--raw-start"], net.params.all.map(\.values))] {
            let out = f.dir + "/start.safetensors"
            let r = try rlstep(g, algo: "am", stdin: buf, out: out, extra: ["--lr", "1e-12"] + flag)
            XCTAssertEqual(r.status, 0, r.stderr)
            let next = try Checkpoint.read(out)
            XCTAssertEqual(next.metadata["optim.step"], "4", "fresh optimizer: 16 samples / minibatch 4")
            for (p, want) in zip(net.params.all, expected) {
                let got = try next[p.name]!.floats()
                let err = zip(got, want).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThan(err, 1e-6, "\(flag) \(p.name)")
            }
        }
    }

    func testGRPORoundReportsRatioStatistics() throws {
        let f = try files()
        for extra in [["--beta", "0.1"], ["--ratio-norm", "--adv-norm", "global-std"]] {
            let r = try rlstep(f, algo: "grpo", stdin: try buffer(model: f.model, kind: .flowgrpo), out: f.dir + "/g.safetensors", extra: extra + ["--clip-range", "0.1"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let line = String(decoding: r.stdout, as: UTF8.self)
            for k in ["ratio_mean", "ratio_min", "ratio_max", "clip_frac", "adv_mean", "adv_std", "kl", "logp_old_max_abs_err"] {
                XCTAssertTrue(line.contains("\"\(k)\":"), "metrics lack \(k): \(line)")
            }
        }
    }

    func expectFailure(_ r: TestSupport.Result, _ needle: String, out: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 1, "expected failure, stderr: \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.contains(needle), "stderr should mention \(needle): \(r.stderr)", file: file, line: line)
        XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "one line: \(r.stderr)", file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "no checkpoint on failure", file: file, line: line)
    }

    func testCorruptAndMismatchedInputsGiveClearErrors() throws {
        let f = try files()
        let out = f.dir + "/never.safetensors"
        expectFailure(try rlstep(f, algo: "grpo", stdin: try buffer(model: f.model, kind: .flowgrpo, drop: ["reward"]), out: out), "reward", out: out)
        expectFailure(try rlstep(f, algo: "am", stdin: try buffer(model: f.model, kind: .memorylessLL, drop: ["reward.grad"]), out: out), "reward.grad", out: out)
        expectFailure(try rlstep(f, algo: "am", stdin: try buffer(model: f.model, kind: .memorylessLL, drop: ["traj.x"]), out: out), "traj.x", out: out)
        expectFailure(try rlstep(f, algo: "grpo", stdin: try buffer(model: f.model, kind: .flowgrpo, drop: ["traj.t"]), out: out), "traj.t", out: out)
        expectFailure(try rlstep(f, algo: "grpo", stdin: try buffer(model: f.model, kind: .flowgrpo, drop: ["traj.logp"]), out: out), "traj.logp", out: out)
        expectFailure(try rlstep(f, algo: "grpo", stdin: try buffer(model: f.model, kind: .flowgrpo, drop: ["group"]), out: out), "group", out: out)
        expectFailure(try rlstep(f, algo: "am", stdin: try buffer(model: f.model, kind: .flowgrpo), out: out), "memoryless", out: out)
        expectFailure(try rlstep(f, algo: "grpo", stdin: try buffer(model: f.model, kind: .euler), out: out), "stochastic", out: out)
        // NaN in the reward gradient
        expectFailure(try rlstep(f, algo: "am", stdin: try buffer(model: f.model, kind: .memorylessLL) { r in
            r["reward.grad"] = Tensor([Float](repeating: .nan, count: 24), shape: [8, 1, 1, 3])
        }, out: out), "NaN", out: out)
        // wrong shapes
        expectFailure(try rlstep(f, algo: "grpo", stdin: try buffer(model: f.model, kind: .flowgrpo) { r in
            r["reward"] = Tensor([Float](repeating: 0, count: 7), shape: [7])
        }, out: out), "`reward` has shape", out: out)
        let wide = try VelocityNet.make(ModelConfig(arch: "mlp", channels: 1, height: 1, width: 4, numClasses: 2, hidden: 16, depth: 1, mlpRatio: 2, timeScale: 1, frequencyDim: 8), seed: 1)
        try wide.save(to: f.dir + "/wide.safetensors")
        // samples of another shape (no `model` digest, so the only complaint is the shape)
        expectFailure(try rlstep(f, algo: "grpo", stdin: try buffer(model: f.dir + "/wide.safetensors", kind: .flowgrpo) { r in
            r.metadata["model"] = nil
        }, out: out), "shape", out: out)
        // a reference of another architecture
        var other = Self.config
        other.hidden = 24
        try VelocityNet.make(other, seed: 1).save(to: f.dir + "/other.safetensors")
        var g = f
        g.ref = f.dir + "/other.safetensors"
        expectFailure(try rlstep(g, algo: "grpo", stdin: try buffer(model: f.model, kind: .flowgrpo), out: out), "architecture", out: out)
        // a discriminator passed as the model
        try Checkpoint.write(try ProjectionHead(config: DiscriminatorConfig(featureDim: 3, width: 4, numClasses: 2)).checkpointRecord(encoder: "pixels"), to: f.dir + "/d.safetensors")
        g = f
        g.model = f.dir + "/d.safetensors"
        expectFailure(try rlstep(g, algo: "grpo", stdin: try buffer(model: f.model, kind: .flowgrpo), out: out), "not a velocity-model", out: out)
        // an empty buffer, and garbage
        expectFailure(try rlstep(f, algo: "grpo", stdin: [], out: out), "no rollouts", out: out)
        expectFailure(try rlstep(f, algo: "grpo", stdin: [1, 2, 3, 4, 5], out: out), "zstd", out: out)
    }
}
