import Foundation
import XCTest
import Shared

final class TrainToolTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws { dir = try TestSupport.temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// A 2-D mixture of three Gaussians as [N,2,1,1] "images", one class.
    static let means: [(Float, Float)] = [(-0.5, -0.5), (0.5, -0.3), (0.0, 0.6)]
    static let weights: [Double] = [0.5, 0.3, 0.2]
    static let std: Float = 0.08

    static func mixture(n: Int, seed: UInt64) -> [Float] {
        var rng = CounterRNG(seed: seed, stream: 5)
        var x: [Float] = []
        for _ in 0..<n {
            let u = rng.uniform()
            let k = u < weights[0] ? 0 : (u < weights[0] + weights[1] ? 1 : 2)
            x.append(means[k].0 + std * Float(rng.normal()))
            x.append(means[k].1 + std * Float(rng.normal()))
        }
        return x
    }

    static let toyConfig = #"{"arch":"mlp","channels":2,"height":1,"width":1,"num_classes":1,"hidden_size":64,"depth":2,"mlp_ratio":2,"frequency_embedding_size":64}"#

    func toyData(n: Int = 4000) throws -> [UInt8] {
        let x = Self.mixture(n: n, seed: 1)
        var records: [Record] = []
        for start in stride(from: 0, to: n, by: 1000) {
            let b = min(1000, n - start)
            records.append(Record([("x", Tensor(Array(x[(start * 2)..<((start + b) * 2)]), shape: [b, 2, 1, 1])),
                                   ("y", Tensor([Int64](repeating: 0, count: b), shape: [b]))]))
        }
        return try TestSupport.streamBytes(records)
    }

    /// `srun -n 2` without an MPI launch (Slurm's SLURM_STEP_NUM_TASKS = 2, no PMI variable) would
    /// run every task as a whole job writing the same -o: refused in one line, no checkpoint, in
    /// this build (no MPI) as in the MPI one; one task runs. (rlstep: RLToolTests.)
    func testReplicatedSlurmTasksAreRefused() throws {
        FileManager.default.createFile(atPath: dir + "/toy.tzst", contents: Data(try toyData(n: 500)))
        let cmd = "train --config '\(Self.toyConfig)' --steps 3 --batch 64 --threads 1 --quiet -i '\(dir)/toy.tzst'"
        let two = try TestSupport.shell("SLURM_STEP_NUM_TASKS=2 \(cmd) -o '\(dir)/two.safetensors'")
        XCTAssertNotEqual(two.status, 0)
        XCTAssertEqual(two.stderr.split(separator: "\n").count, 1, two.stderr)
        XCTAssertTrue(two.stderr.hasPrefix("train: error: started as one of 2 Slurm tasks without an MPI launch"), two.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/two.safetensors"))
        let one = try TestSupport.shell("SLURM_STEP_NUM_TASKS=1 \(cmd) -o '\(dir)/one.safetensors'")
        XCTAssertEqual(one.status, 0, one.stderr)
    }

    /// Training on the mixture converges, and the EMA model's samples reproduce the components'
    /// weights and means.
    func testMixtureOfGaussiansConvergesAndSamplesMatch() throws {
        let ckpt = dir + "/toy.safetensors", metrics = dir + "/toy.jsonl"
        let r = try TestSupport.run("train", ["--config", Self.toyConfig, "--steps", "1500", "--batch", "256", "--lr", "3e-3",
                                              "--warmup", "50", "--ema", "0.99", "--label-dropout", "0", "--threads", "1",
                                              "--metrics", metrics, "-o", ckpt, "--quiet"], stdin: try toyData(), timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = try String(contentsOfFile: metrics, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 1500)
        func loss(_ l: Substring) -> Double { Double(l.components(separatedBy: "\"loss\":")[1].prefix { $0 != "," })! }
        let early = lines[0..<50].map(loss).reduce(0, +) / 50, late = lines[1400..<1500].map(loss).reduce(0, +) / 100
        XCTAssertLessThan(late, 0.75 * early, "loss did not fall: \(early) -> \(late)")

        let out = try TestSupport.run("sample", ["--model", ckpt, "--n", "3000", "--steps", "40", "--no-clamp", "--threads", "2", "--seed", "4"], timeout: 120)
        XCTAssertEqual(out.status, 0, out.stderr)
        let x = try EngineTestSupport.floats(EngineTestSupport.records(out.stdout), "x")
        var counts = [Int](repeating: 0, count: 3)
        var sums = [(Double, Double)](repeating: (0, 0), count: 3)
        var far = 0
        for i in 0..<(x.count / 2) {
            let p = (x[2 * i], x[2 * i + 1])
            let d = Self.means.map { ($0.0 - p.0) * ($0.0 - p.0) + ($0.1 - p.1) * ($0.1 - p.1) }
            let k = d.firstIndex(of: d.min()!)!
            if d[k].squareRoot() > 4 * Self.std { far += 1 }
            counts[k] += 1
            sums[k].0 += Double(p.0)
            sums[k].1 += Double(p.1)
        }
        let n = Double(x.count / 2)
        XCTAssertLessThan(Double(far) / n, 0.05, "too many samples between the components")
        for k in 0..<3 {
            XCTAssertEqual(Double(counts[k]) / n, Self.weights[k], accuracy: 0.04, "weight of component \(k)")
            XCTAssertEqual(sums[k].0 / Double(counts[k]), Double(Self.means[k].0), accuracy: 0.03, "mean x of component \(k)")
            XCTAssertEqual(sums[k].1 / Double(counts[k]), Double(Self.means[k].1), accuracy: 0.03, "mean y of component \(k)")
        }
    }

    /// An interrupted run resumed from its checkpoint gives the same loss curve and the same
    /// final checkpoint bytes as one uninterrupted run.
    func testResumeIsExact() throws {
        let data = try toyData(n: 1500)  // 1500 / 64 is not whole: batches cross epoch boundaries
        let common = ["--config", Self.toyConfig, "--batch", "64", "--lr", "2e-3", "--warmup", "10", "--t-dist", "logit-normal",
                      "--weight-decay", "0.01", "--threads", "1", "--quiet"]
        let full = dir + "/full.safetensors", fullLog = dir + "/full.jsonl"
        var r = try TestSupport.run("train", common + ["--steps", "60", "--metrics", fullLog, "-o", full], stdin: data)
        XCTAssertEqual(r.status, 0, r.stderr)
        let part = dir + "/part.safetensors", partLog = dir + "/part.jsonl"
        r = try TestSupport.run("train", common + ["--steps", "60", "--save-every", "25", "--metrics", partLog, "-o", part], stdin: data)
        XCTAssertEqual(r.status, 0, r.stderr)
        // Simulate a kill after the checkpoint at step 50: keep that checkpoint, resume from it.
        r = try TestSupport.run("train", common + ["--steps", "50", "--metrics", partLog, "-o", part], stdin: data)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try TrainingCheckpoint.step(of: Checkpoint.read(part)), 50)
        r = try TestSupport.run("train", ["--resume", part, "--steps", "60", "--metrics", partLog, "-o", part, "--threads", "1", "--quiet"], stdin: data)
        XCTAssertEqual(r.status, 0, r.stderr)
        func curve(_ path: String) throws -> [String] {
            try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { $0.components(separatedBy: ",\"images_per_s\"")[0] }
        }
        let a = try curve(fullLog), b = try curve(partLog)
        XCTAssertEqual(a.count, 60)
        XCTAssertEqual(a, b)
        XCTAssertEqual(try readFile(full), try readFile(part), "resumed checkpoint differs from the uninterrupted one")
        let meta = try Checkpoint.read(full).metadata
        XCTAssertEqual(meta["tool"], "train")
        XCTAssertEqual(meta["step"], "60")
        XCTAssertNotNil(meta["config"])
        XCTAssertNotNil(meta["version"])
        // Changing a hyperparameter on resume is refused.
        r = try TestSupport.run("train", ["--resume", part, "--steps", "70", "--lr", "1e-3", "-o", dir + "/x.safetensors"], stdin: data)
        EngineTestSupport.assertOneLineError(r, "train", contains: "settings")
    }

    /// A warmup-stable-decay branch: `--resume CKPT --steps S --cooldown N` from a constant-rate
    /// checkpoint decays the rate linearly over the last N steps (logged), keeps the branch point's
    /// weights and optimizer state (its first steps equal the constant run's until the decay
    /// starts), and resumes exactly; a fresh run with the same window logs the same rates.
    func testCooldownBranchDecaysAndResumesExactly() throws {
        let data = try toyData(n: 1500)
        let common = ["--config", Self.toyConfig, "--batch", "64", "--lr", "2e-3", "--warmup", "10", "--threads", "1", "--quiet"]
        let constant = dir + "/constant.safetensors", constantLog = dir + "/constant.jsonl"
        var r = try TestSupport.run("train", common + ["--steps", "40", "--metrics", constantLog, "-o", constant], stdin: data)
        XCTAssertEqual(r.status, 0, r.stderr)
        // Branch at step 40: 20 more steps, the last 10 of them decaying.
        let cooled = dir + "/cooled.safetensors", cooledLog = dir + "/cooled.jsonl"
        r = try TestSupport.run("train", ["--resume", constant, "--steps", "60", "--cooldown", "20", "--metrics", cooledLog, "-o", cooled, "--threads", "1", "--quiet"], stdin: data)
        XCTAssertEqual(r.status, 0, r.stderr)
        func lines(_ path: String) throws -> [[String: Any]] {
            try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map {
                try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
            }
        }
        let rates = try lines(cooledLog).map { ($0["step"] as! Int, $0["lr"] as! Double) }
        XCTAssertEqual(rates.map(\.0), Array(41...60))
        for (k, lr) in rates {
            XCTAssertEqual(lr, 2e-3 * Double(60 - k + 1) / 20, accuracy: 1e-9, "step \(k)")
        }
        let settings = try TrainSettings.from(json: Checkpoint.read(cooled).metadata[FlowMatchingTrainer.settingsKey]!)
        XCTAssertEqual(settings.cooldownStart, 40)
        XCTAssertEqual(settings.cooldownEnd, 60)
        // The constant run's checkpoint keeps the JSON it had before cooldowns existed.
        XCTAssertFalse(try Checkpoint.read(constant).metadata[FlowMatchingTrainer.settingsKey]!.contains("cooldown"))
        // The branch resumes exactly. A kill at step 50 is simulated in process: the same branch
        // run to step 50 and checkpointed as `train` does, then resumed by the tool to 60 without
        // repeating --cooldown; the bytes equal the uninterrupted branch's.
        let streamPath = dir + "/data.tzst"
        try AtomicFile.write(data, to: streamPath)
        let record = try Checkpoint.read(constant)
        var branchSettings = try TrainSettings.from(json: record.metadata[FlowMatchingTrainer.settingsKey]!)
        branchSettings.cooldownStart = 40
        branchSettings.cooldownEnd = 60
        let trainer = try FlowMatchingTrainer(net: try VelocityNet.load(from: record), settings: branchSettings,
                                              data: try TrainingData.read(try TensorStreamReader(path: streamPath)))
        try trainer.restore(from: record)
        let threads = BLAS.threads
        BLAS.setThreads(1)
        defer { BLAS.setThreads(threads) }
        while trainer.step < 50 { _ = try trainer.trainStep() }
        let part = dir + "/part.safetensors"
        try Checkpoint.write(trainer.checkpointRecord(parentDigest: nil, metadata: ["tool": "train", "version": Toolkit.version]), to: part)
        r = try TestSupport.run("train", ["--resume", part, "--steps", "60", "-o", part, "--threads", "1", "--quiet"], stdin: data)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try readFile(part), try readFile(cooled), "the resumed cooldown branch differs from the uninterrupted one")
        // Another window gives another model.
        let other = dir + "/other.safetensors"
        r = try TestSupport.run("train", ["--resume", constant, "--steps", "60", "--cooldown", "10", "-o", other, "--threads", "1", "--quiet"], stdin: data)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertNotEqual(try readFile(other), try readFile(cooled))
        // A fresh run with the same window logs the same rates over its decay.
        let fresh = dir + "/fresh.safetensors", freshLog = dir + "/fresh.jsonl"
        r = try TestSupport.run("train", common + ["--steps", "20", "--cooldown", "10", "--metrics", freshLog, "-o", fresh], stdin: data)
        XCTAssertEqual(r.status, 0, r.stderr)
        let freshRates = try lines(freshLog).map { $0["lr"] as! Double }
        XCTAssertEqual(freshRates[9], 2e-3, accuracy: 1e-9)        // end of warmup, start of the window
        XCTAssertEqual(freshRates[10], 2e-3, accuracy: 1e-9)       // first decaying step: (20-11+1)/10
        XCTAssertEqual(freshRates[19], 2e-4, accuracy: 1e-9)       // last: base / N
        // A run whose decay has not begun may move its window. A checkpoint at step 45 of a
        // branch decaying over 50-70, resumed with --steps 80 --cooldown 20, continues exactly as
        // the constant run branched at step 40 into the same 60-80 window: steps 46-80 log the
        // same losses and rates (until step 50 both ran at the constant rate).
        branchSettings.cooldownStart = 50
        branchSettings.cooldownEnd = 70
        let early = try FlowMatchingTrainer(net: try VelocityNet.load(from: record), settings: branchSettings,
                                            data: try TrainingData.read(try TensorStreamReader(path: streamPath)))
        try early.restore(from: record)
        while early.step < 45 { _ = try early.trainStep() }
        let pre = dir + "/pre.safetensors"
        try Checkpoint.write(early.checkpointRecord(parentDigest: nil, metadata: ["tool": "train", "version": Toolkit.version]), to: pre)
        let movedLog = dir + "/moved.jsonl", longLog = dir + "/long.jsonl"
        r = try TestSupport.run("train", ["--resume", pre, "--steps", "80", "--cooldown", "20", "--metrics", movedLog, "-o", dir + "/moved.safetensors", "--threads", "1", "--quiet"], stdin: data)
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try TestSupport.run("train", ["--resume", constant, "--steps", "80", "--cooldown", "20", "--metrics", longLog, "-o", dir + "/long.safetensors", "--threads", "1", "--quiet"], stdin: data)
        XCTAssertEqual(r.status, 0, r.stderr)
        func curve(_ path: String) throws -> [String] {
            try lines(path).filter { ($0["step"] as! Int) > 45 }.map { "\($0["step"]!) \($0["loss"]!) \($0["lr"]!)" }
        }
        XCTAssertEqual(try curve(movedLog).count, 35)
        XCTAssertEqual(try curve(movedLog), try curve(longLog))
        XCTAssertEqual(try lines(movedLog).last!["lr"] as! Double, 2e-3 / 20, accuracy: 1e-9)
        // A cooldown that would start before the checkpoint, a cooldown longer than the run,
        // and changing the window of a run whose decay has begun are refused.
        r = try TestSupport.run("train", ["--resume", constant, "--steps", "50", "--cooldown", "20", "-o", dir + "/x.safetensors"], stdin: data)
        EngineTestSupport.assertOneLineError(r, "train", contains: "--cooldown")
        r = try TestSupport.run("train", common + ["--steps", "10", "--cooldown", "11", "-o", dir + "/x.safetensors"], stdin: data)
        XCTAssertEqual(r.status, 64, "a usage error: \(r.stderr)")
        XCTAssertTrue(r.stderr.contains("--cooldown"), r.stderr)
        r = try TestSupport.run("train", ["--resume", cooled, "--steps", "80", "--cooldown", "30", "-o", dir + "/x.safetensors"], stdin: data)
        EngineTestSupport.assertOneLineError(r, "train", contains: "settings")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.safetensors"))
    }

    /// Bad input: one line on stderr, exit 1, no checkpoint.
    func testBadInput() throws {
        let out = dir + "/bad.safetensors"
        let x = Tensor([Float](repeating: 0.1, count: 8), shape: [4, 2, 1, 1])
        let y = Tensor([Int64](repeating: 0, count: 4), shape: [4])
        func run(_ records: [Record], _ extra: [String] = []) throws -> TestSupport.Result {
            try TestSupport.run("train", ["--config", Self.toyConfig, "--steps", "5", "--batch", "4", "-o", out, "--quiet"] + extra,
                                stdin: try TestSupport.streamBytes(records))
        }
        EngineTestSupport.assertOneLineError(try run([Record([("y", y)])]), "train", contains: "`x`")
        EngineTestSupport.assertOneLineError(try run([Record([("x", x)])]), "train", contains: "`y`")
        let image = Tensor([Float](repeating: 0, count: 4 * 16), shape: [4, 1, 4, 4])
        EngineTestSupport.assertOneLineError(try run([Record([("x", image), ("y", y)])]), "train", contains: "the model takes")
        EngineTestSupport.assertOneLineError(try run([Record([("x", x), ("y", Tensor([Int64(0), 1, 0, 0], shape: [4]))])]), "train", contains: "label 1")
        let nan = Tensor([Float.nan] + [Float](repeating: 0, count: 7), shape: [4, 2, 1, 1])
        EngineTestSupport.assertOneLineError(try run([Record([("x", nan), ("y", y)])]), "train", contains: "non-finite")
        // Finite data so large that the loss overflows: refused at the first step.
        let huge = Tensor([Float](repeating: 3e25, count: 8), shape: [4, 2, 1, 1])
        EngineTestSupport.assertOneLineError(try run([Record([("x", huge), ("y", y)])]), "train", contains: "loss is not finite")
        EngineTestSupport.assertOneLineError(try run([]), "train", contains: "no samples")
        EngineTestSupport.assertOneLineError(try TestSupport.run("train", ["--model", "sit-huge", "-o", out],
                                                                 stdin: try TestSupport.streamBytes([Record([("x", x), ("y", y)])])), "train", contains: "unknown model")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains("bad.safetensors") }
        XCTAssertEqual(leftovers, [], "a temporary checkpoint was left behind")
    }
}
