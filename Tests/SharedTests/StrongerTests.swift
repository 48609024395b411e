import Foundation
import XCTest
import Shared

/// Issue #13's weak tests made real: discriminator early stopping, the probe on held-out data.
extension DiscrimTests {
    /// Real and fake from one distribution: the held-out loss stops improving, training stops
    /// `patience` evaluations after the best one, and the head ends with the best weights.
    func testEarlyStoppingStopsAfterPatienceAndKeepsTheBestWeights() throws {
        let D = 4
        let r = Self.cloud(600, mean: [Float](repeating: 0, count: D), seed: 11)
        let f = Self.cloud(600, mean: [Float](repeating: 0, count: D), seed: 12)
        let head = try ProjectionHead(config: DiscriminatorConfig(head: "mlp", featureDim: D, width: 32, numClasses: 0), seed: 3)
        var o = DiscriminatorTrainOptions()
        o.lr = 1e-2; o.batch = 64; o.bufferBatches = 4; o.bufferEpochs = 2; o.maxSteps = 20_000; o.evalEvery = 5; o.patience = 4; o.holdout = 0.2
        var evals: [(Int, Double)] = []
        let rep = try DiscriminatorTrainer.train(head: head, real: LabelledFeatures(features: r.f, labels: r.y, dim: D),
                                                 fake: LabelledFeatures(features: f.f, labels: f.y, dim: D), options: o) { step, ev in evals.append((step, ev.bce)) }
        XCTAssertTrue(rep.stoppedEarly, rep.json)
        XCTAssertLessThan(rep.steps, o.maxSteps)
        let best = try XCTUnwrap(evals.min { $0.1 < $1.1 })
        XCTAssertEqual(rep.bestStep, best.0)
        XCTAssertEqual(rep.steps, rep.bestStep + o.patience * o.evalEvery, "stops exactly `patience` evaluations after the best")
        XCTAssertEqual(evals.last?.0, rep.steps)
        XCTAssertEqual(try XCTUnwrap(rep.heldOut).bce, best.1, accuracy: 1e-12, "the best weights are restored")
        XCTAssertLessThan(try XCTUnwrap(rep.heldOut).bce, try XCTUnwrap(evals.last).1)
    }
}

extension EmbedToolTests {
    /// The probe's test accuracy is measured on the test stream: labels learnable from the
    /// features generalise; random labels are memorised on train but stay near chance on test.
    func testProbeMeasuresHeldOutData() throws {
        let dir = try TestSupport.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func stream(_ n: Int, seed: UInt64, randomLabels: Bool, D: Int) throws -> String {
            var rng = CounterRNG(seed: seed, stream: 21)
            var feat = [Float](), y = [Int64]()
            for _ in 0..<n {
                let v = (0..<D).map { _ in Float(rng.normal()) }
                feat += v
                y.append(randomLabels ? Int64(rng.next() % 2) : (v[0] + v[1] > 0 ? 1 : 0))
            }
            let path = dir + "/\(seed)-\(randomLabels)-\(D).tzst"
            try AtomicFile.write(try TestSupport.streamBytes([Record([("feat", Tensor(feat, shape: [n, D])), ("y", Tensor(y, shape: [n]))],
                                                                     metadata: ["encoder": "test"])]), to: path)
            return path
        }
        func probe(_ train: String, _ test: String) throws -> (train: Double, test: Double) {
            let r = try TestSupport.run("embed", ["probe", "--train", train, "--test", test, "--json", "--epochs", "200", "--threads", "1"])
            XCTAssertEqual(r.status, 0, r.stderr)
            guard case .object(let o) = try JSON.parse(Array(String(decoding: r.stdout, as: UTF8.self).utf8.dropLast())) else { throw ToolError("not JSON") }
            func num(_ k: String) -> Double {
                switch o.first(where: { $0.0 == k })?.1 {
                case .number(let v)?: return v
                case .integer(let v)?: return Double(v)
                default: return .nan
                }
            }
            return (num("train_accuracy"), num("test_accuracy"))
        }
        let good = try probe(try stream(400, seed: 1, randomLabels: false, D: 4), try stream(400, seed: 2, randomLabels: false, D: 4))
        XCTAssertGreaterThan(good.test, 0.9)
        let noise = try probe(try stream(100, seed: 3, randomLabels: true, D: 64), try stream(400, seed: 4, randomLabels: true, D: 64))
        XCTAssertGreaterThan(noise.train, 0.8, "64 features fit 100 random labels")
        XCTAssertLessThan(noise.test, 0.65, "but the held-out accuracy is near chance")
        XCTAssertGreaterThan(noise.train - noise.test, 0.2)
    }
}

extension RLToolTests {
    /// Two rlstep rounds through checkpoints equal one process that keeps its model, AdamW,
    /// EMA and objective alive across both rounds: the checkpoint carries the whole state.
    func testResumedRoundsEqualAnUninterruptedRun() throws {
        let f = try files()
        let buf1 = try buffer(model: f.model, kind: .memorylessLL)
        let a = f.dir + "/a.safetensors", c = f.dir + "/c.safetensors"
        XCTAssertEqual(try rlstep(f, algo: "am", stdin: buf1, out: a).status, 0)
        let buf2 = try buffer(model: a, kind: .memorylessLL)
        var g = f
        g.model = a
        XCTAssertEqual(try rlstep(g, algo: "am", stdin: buf2, out: c).status, 0)

        let threads = BLAS.threads
        BLAS.setThreads(1)  // as the tool runs (--threads 1): the same GEMM rounding
        defer { BLAS.setThreads(threads) }
        let net = try VelocityNet.load(path: f.model), reference = try VelocityNet.load(path: f.ref)
        let optimizer = AdamW(net.params, lr: 1e-3, weightDecay: 0)
        let ema = EMA(net.params, decay: 0.999)
        let objective = AdjointMatching()
        var o = RLTrainOptions()
        o.minibatch = 4; o.lr = 1e-3
        var step = 0
        for bytes in [buf1, buf2] {
            let buffer = try RolloutBuffer.make(try TestSupport.readAll(bytes), nullLabel: net.config.numClasses)
            let trainer = RLTrainer(model: net, reference: reference, optimizer: optimizer, ema: ema, step: step, options: o)
            _ = try trainer.run(objective: objective, buffer: buffer)
            step = trainer.step
        }
        let live = TrainingCheckpoint.record(model: net, optimizer: optimizer, ema: ema, step: step, parentDigest: nil, metadata: [:])
        let resumed = try Checkpoint.read(c)
        XCTAssertEqual(resumed.metadata["step"], String(step))
        XCTAssertEqual(resumed.metadata[AdjointMatching.thresholdKey], objective.state()[AdjointMatching.thresholdKey])
        XCTAssertFalse(live.names.isEmpty)
        for name in live.names {
            XCTAssertEqual(try resumed[name].map { try $0.floats() }, try live[name]!.floats(), name)
        }
    }
}
