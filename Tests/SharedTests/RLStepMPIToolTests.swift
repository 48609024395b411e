import Foundation
import XCTest
import Shared

/// Data-parallel `rlstep` under `mpirun -np 2` (OpenMPI), for every objective. Like
/// TrainMPIToolTests these run from `make test-mpi` (DRL_MPI_TOOLS points at the MPI build) and
/// are skipped elsewhere.
///
/// The buffer: 5 records of 6 samples, so rank 0 holds records 0, 2, 4 (18 samples) and rank 1
/// records 1, 3 (12), and the groups of 4 ids straddle records, hence ranks (CRD's centring and
/// every advantage need rewards of both ranks); minibatches of 8 draw samples of both ranks.
final class RLStepMPIToolTests: XCTestCase {
    var tools = ""
    var dir = ""
    let mpirun = "mpirun --allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none"

    override func setUpWithError() throws {
        guard let t = ProcessInfo.processInfo.environment["DRL_MPI_TOOLS"], !t.isEmpty else {
            throw XCTSkip("DRL_MPI_TOOLS is not set: `make test-mpi` builds the MPI tools and runs these")
        }
        tools = t
        dir = try TestSupport.temporaryDirectory()
        let net = try VelocityNet.make(RLGradientTests.config, seed: 1)
        var g = GradCheck()
        for p in net.params.all { p.values = p.values.map { $0 + Float(g.randoms(1, std: 0.05)[0]) } }
        try net.save(to: dir + "/base.safetensors", metadata: ["step": "0"])
        try net.save(to: dir + "/cur.safetensors", metadata: ["step": "0"])
        try AtomicFile.write(try buffer(kind: .memorylessLL), to: dir + "/am.tzst")
        try AtomicFile.write(try buffer(kind: .flowgrpo), to: dir + "/sde.tzst")
        // records 1 and 3 (rank 1's) without the reward gradient AM needs
        try AtomicFile.write(try buffer(kind: .memorylessLL) { i, r in if i % 2 == 1 { r["reward.grad"] = nil } }, to: dir + "/half.tzst")
        try AtomicFile.write(try buffer(kind: .memorylessLL, records: 1), to: dir + "/one.tzst")
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// `records` records of 6 rollouts of the current model, scored (reward, reward.grad), in groups of 4 ids.
    func buffer(kind: SamplerKind, records: Int = 5, mutate: ((Int, inout Record) -> Void)? = nil) throws -> [UInt8] {
        let path = dir + "/cur.safetensors"
        let net = try VelocityNet.load(path: path)
        let steps = 6
        let sampler = try Sampler(kind: kind, steps: steps)
        let D = net.sampleDimension
        var out: [Record] = []
        for part in 0..<records {
            let n = 6
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
            r["reward"] = Tensor((0..<n).map { b in res.x[b * D] - res.x[b * D + 1] + 0.3 * res.x[b * D + 2] * res.x[b * D + 2] }, shape: [n])
            r["reward.grad"] = Tensor((0..<n).flatMap { b in [Float(1), -1, 0.6 * res.x[b * D + 2]] }, shape: [n, 1, 1, D])
            r.metadata = sampler.settings
            r.metadata["per_record"] = "traj.t"
            r.metadata["model"] = try Checkpoint.digest(path)
            mutate?(part, &r)
            out.append(r)
        }
        return try TestSupport.streamBytes(out)
    }

    static let algos: [(algo: String, buffer: String, flags: String)] = [
        ("am", "am.tzst", "--lambda 2"),
        ("grpo", "sde.tzst", "--clip-range 0.2 --beta 0.05"),
        ("crd", "sde.tzst", "--timesteps 3 --kl-weight 0.05 --kl-cfg 1"),
        ("nft", "sde.tzst", "--timesteps 3 --kl-weight 0.05 --kl-cfg 1"),
    ]

    func command(_ algo: String, _ buffer: String, _ flags: String, out: String, model: String = "cur.safetensors", tool: String? = nil) -> String {
        "'\(tool ?? tools + "/rlstep")' --algo \(algo) --model \(model) --ref base.safetensors -o \(out) --threads 1 --minibatch 8 --epochs 2 --lr 1e-3 --seed 5 \(flags) --metrics \(out).jsonl \(buffer)"
    }

    func shell(_ line: String) throws -> TestSupport.Result { try TestSupport.shell("cd '\(dir)' && \(line)", timeout: 120) }

    /// Largest |a - b| over every tensor of two checkpoints (weights, EMA, Adam moments,
    /// snapshots); the metadata must agree exactly but for AM's outlier threshold (a quantile of
    /// losses of the updated model, so it carries the weights' rounding), compared as a number.
    func maxDifference(_ a: String, _ b: String) throws -> Double {
        let ra = try Checkpoint.read(dir + "/" + a), rb = try Checkpoint.read(dir + "/" + b)
        XCTAssertEqual(ra.names, rb.names)
        var ma = ra.metadata, mb = rb.metadata
        var worst = 0.0
        if let ta = ma.removeValue(forKey: AdjointMatching.thresholdKey), let tb = mb.removeValue(forKey: AdjointMatching.thresholdKey) {
            worst = abs(Double(ta)! - Double(tb)!) / max(abs(Double(ta)!), 1e-30)
        }
        XCTAssertEqual(ma, mb)
        for name in ra.names {
            let x = try ra[name]!.floats(), y = try rb[name]!.floats()
            XCTAssertEqual(x.count, y.count, name)
            for (u, v) in zip(x, y) { worst = max(worst, Double(abs(u - v))) }
        }
        return worst
    }

    /// Largest relative difference of two metrics lines (the same keys, the same strings; GRPO's
    /// `logp_old_max_abs_err`, a float-rounding measure itself, only small on both sides).
    func metricsDifference(_ a: String, _ b: String) throws -> Double {
        func parse(_ f: String) throws -> [(String, JSONValue)] {
            guard case .object(let o) = try JSON.parse(try readFile(dir + "/" + f)) else { XCTFail("\(f) is not a JSON object"); return [] }
            return o
        }
        func number(_ v: JSONValue) -> Double? {
            switch v {
            case .number(let d): return d
            case .integer(let i): return Double(i)
            default: return nil
            }
        }
        let x = try parse(a), y = try parse(b)
        XCTAssertEqual(x.map(\.0), y.map(\.0))
        let numbers = x.compactMap { k, v in number(v).map { (k, $0) } }
        var worst = 0.0
        for ((k, u), (_, v)) in zip(x, y) {
            if k == "logp_old_max_abs_err", let p = number(u), let q = number(v) {
                // float rounding itself (the recorded log-probs against the same model's, computed
                // on all 30 samples at once or on one rank's 18 or 12): small on both sides
                XCTAssertLessThan(max(p, q), 1e-5, k)
            } else if let p = number(u), let q = number(v) {
                let d = abs(p - q) / max(TestSupport.roundingScale(of: k, value: p, in: numbers), 1e-12)
                if d > 1e-6 { print("RLStepMPIToolTests: metrics \(a) \(k): \(p) vs \(q)") }
                worst = max(worst, d)
            } else {
                XCTAssertEqual(u, v, k)
            }
        }
        return worst
    }

    /// Each objective's round on 2 ranks against one process on the same buffer: every
    /// checkpoint value within 1e-6 (float rounding: each rank sums its rows' gradients, and the
    /// two halves are added; the per-sample losses, rewards and implicit rewards the batch
    /// statistics use are gathered exactly), the metrics within 1e-6 relative. The MPI build
    /// without mpirun writes the bytes of the default build; two 2-rank runs write the same bytes.
    func testTwoRanksEqualOneProcessForEveryObjective() throws {
        for (algo, buffer, flags) in Self.algos {
            var r = try shell(command(algo, buffer, flags, out: "\(algo)-one.safetensors"))
            XCTAssertEqual(r.status, 0, r.stderr)
            r = try shell(command(algo, buffer, flags, out: "\(algo)-default.safetensors", tool: "rlstep"))
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertTrue(try readFile(dir + "/\(algo)-one.safetensors") == readFile(dir + "/\(algo)-default.safetensors"), "\(algo): the MPI build alone differs from the default build")
            XCTAssertTrue(try readFile(dir + "/\(algo)-one.safetensors.jsonl") == readFile(dir + "/\(algo)-default.safetensors.jsonl"), "\(algo): metrics of the MPI build alone differ")
            r = try shell("\(mpirun) -np 2 \(command(algo, buffer, flags, out: "\(algo)-two.safetensors"))")
            XCTAssertEqual(r.status, 0, r.stderr)
            let diff = try maxDifference("\(algo)-one.safetensors", "\(algo)-two.safetensors")
            XCTAssertLessThanOrEqual(diff, 1e-6, "\(algo): 2 ranks vs 1 process")
            let mdiff = try metricsDifference("\(algo)-one.safetensors.jsonl", "\(algo)-two.safetensors.jsonl")
            XCTAssertLessThanOrEqual(mdiff, 1e-6, "\(algo): metrics of 2 ranks vs 1 process")
            print("RLStepMPIToolTests: \(algo): max |1 process - 2 ranks| over every checkpoint value: \(diff); largest relative metrics difference: \(mdiff)")
            if algo == "am" {
                XCTAssertEqual(try Checkpoint.read(dir + "/am-two.safetensors").metadata["step"], "8", "2 epochs of 30 samples in minibatches of 8")
            }
        }
        // determinism on 2 ranks, and a second round from a 2-rank checkpoint on 1 and on 2 ranks
        var r = try shell("\(mpirun) -np 2 \(command("am", "am.tzst", "--lambda 2", out: "am-again.safetensors"))")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(try readFile(dir + "/am-again.safetensors") == readFile(dir + "/am-two.safetensors"), "two 2-rank runs differ")
        r = try shell(command("am", "am.tzst", "--lambda 2", out: "am-next-one.safetensors", model: "am-two.safetensors"))
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try shell("\(mpirun) -np 2 \(command("am", "am.tzst", "--lambda 2", out: "am-next-two.safetensors", model: "am-two.safetensors"))")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertLessThanOrEqual(try maxDifference("am-next-one.safetensors", "am-next-two.safetensors"), 1e-6, "second round")
        XCTAssertEqual(try Checkpoint.read(dir + "/am-next-two.safetensors").metadata["step"], "16")
    }

    func expectOneLine(_ r: TestSupport.Result, prefix: String, contains: String, noFile: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertNotEqual(r.status, 0, file: file, line: line)
        let lines = r.stderr.split(separator: "\n").filter { $0.hasPrefix("rlstep:") }
        XCTAssertEqual(lines.count, 1, r.stderr, file: file, line: line)
        XCTAssertTrue(lines.first?.hasPrefix(prefix) ?? false, r.stderr, file: file, line: line)
        XCTAssertTrue(lines.first?.contains(contains) ?? false, r.stderr, file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/" + noFile), "\(noFile) was written", file: file, line: line)
    }

    /// Slurm's `srun --mpi=pmix` sets PMIX_RANK but no OMPI_* variable, and SLURM_STEP_NUM_TASKS:
    /// stood in for by mpirun with OMPI_COMM_WORLD_SIZE removed and the Slurm variable added, the
    /// ranks join through PMIx and write the bytes of an ordinary 2-rank run (before: each ran the
    /// whole round alone, writing the single-process bytes, which looked like success).
    func testPMIxLaunchWithoutOpenMPIVariablesJoins() throws {
        let plain = try shell("\(mpirun) -np 2 \(command("am", "am.tzst", "--lambda 2", out: "mpi.safetensors"))")
        XCTAssertEqual(plain.status, 0, plain.stderr)
        let pmix = try shell("\(mpirun) -np 2 env -u OMPI_COMM_WORLD_SIZE SLURM_STEP_NUM_TASKS=2 \(command("am", "am.tzst", "--lambda 2", out: "pmix.safetensors"))")
        XCTAssertEqual(pmix.status, 0, pmix.stderr)
        XCTAssertEqual(try readFile(dir + "/pmix.safetensors"), try readFile(dir + "/mpi.safetensors"))
        XCTAssertEqual(try readFile(dir + "/pmix.safetensors.jsonl"), try readFile(dir + "/mpi.safetensors.jsonl"))
        // without any MPI variable, two Slurm tasks are refused rather than run twice
        let bare = try shell("SLURM_STEP_NUM_TASKS=2 \(command("am", "am.tzst", "--lambda 2", out: "bare.safetensors"))")
        XCTAssertNotEqual(bare.status, 0)
        XCTAssertTrue(bare.stderr.contains("srun --mpi=pmix"), bare.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bare.safetensors"))
    }

    /// The metrics line on a closed standard output (`mpirun ... rlstep | true`): as for one
    /// process, the checkpoint is kept and every rank exits quietly with status 0 (before: rank 0
    /// printed `rlstep: error: BrokenPipe()` and the job failed).
    func testClosedStandardOutputExitsQuietly() throws {
        let cmd = command("am", "am.tzst", "--lambda 2", out: "piped.safetensors")
            .replacingOccurrences(of: "--metrics piped.safetensors.jsonl", with: "")
        let r = try shell("\(mpirun) -np 2 \(cmd) | true; echo \"status ${PIPESTATUS[0]}\"")
        XCTAssertEqual(String(decoding: r.stdout, as: UTF8.self), "status 0\n", r.stderr)
        XCTAssertFalse(r.stderr.contains("rlstep:"), r.stderr)
        let one = try shell(command("am", "am.tzst", "--lambda 2", out: "piped-one.safetensors"))
        XCTAssertEqual(one.status, 0, one.stderr)
        XCTAssertLessThanOrEqual(try maxDifference("piped.safetensors", "piped-one.safetensors"), 1e-6)
    }

    /// A rank that fails ends every rank, with one `rlstep:` line, a non-zero exit and no
    /// checkpoint: rank 1 cannot read its buffer (mpirun's MPMD form gives it another path);
    /// rank 1's records lack what AM needs (found while preparing, after the buffer was read);
    /// rank 0 cannot write the checkpoint; the update diverges (the NaN guard, on every rank at
    /// once); fewer records than ranks; the buffer on standard input.
    func testFailingRankStopsEveryRank() throws {
        let cmd = command("am", "", "--lambda 2", out: "out.safetensors")
        var r = try shell("\(mpirun) -np 1 \(cmd) am.tzst : -np 1 \(cmd) missing.tzst")
        expectOneLine(r, prefix: "rlstep: error: rank 1 of 2: ", contains: "missing.tzst", noFile: "out.safetensors")

        r = try shell("\(mpirun) -np 2 \(command("am", "half.tzst", "--lambda 2", out: "out.safetensors"))")
        expectOneLine(r, prefix: "rlstep: error: rank 1 of 2: ", contains: "reward.grad", noFile: "out.safetensors")

        r = try shell("\(mpirun) -np 2 \(command("am", "am.tzst", "--lambda 2", out: "no/such/dir/out.safetensors"))")
        expectOneLine(r, prefix: "rlstep: error: ", contains: "no/such/dir", noFile: "no/such/dir/out.safetensors")

        r = try shell("\(mpirun) -np 2 \(command("grpo", "sde.tzst", "--clip-range 0.2", out: "out.safetensors")) --lr 1e30 --max-grad-norm 0")
        expectOneLine(r, prefix: "rlstep: error: ", contains: "no checkpoint written", noFile: "out.safetensors")
        XCTAssertFalse(r.stderr.contains("rank 1 of 2"), r.stderr)

        r = try shell("\(mpirun) -np 2 \(command("am", "one.tzst", "--lambda 2", out: "out.safetensors"))")
        expectOneLine(r, prefix: "rlstep: error: rank 1 of 2: ", contains: "fewer than the 2 ranks", noFile: "out.safetensors")

        r = try shell("\(mpirun) -np 2 \(command("am", "", "--lambda 2", out: "out.safetensors")) < am.tzst")
        expectOneLine(r, prefix: "rlstep: error: ", contains: "standard input", noFile: "out.safetensors")
    }
}
