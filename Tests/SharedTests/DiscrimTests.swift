import Foundation
import XCTest
import Shared

/// A nonlinear test encoder without a JVP (R1 then uses finite differences): phi(x) = tanh(A x).
struct TanhEncoder: FeatureEncoder {
    let inputShape: [Int]
    let featureDimension: Int
    let a: [Float]
    var digest: String { "tanh-test" }

    init(inputShape: [Int], featureDimension: Int, seed: UInt64) {
        self.inputShape = inputShape
        self.featureDimension = featureDimension
        var rng = CounterRNG(seed: seed)
        let p = inputShape.reduce(1, *)
        a = (0..<(featureDimension * p)).map { _ in Float(rng.normal() * 0.7) }
    }

    func features(_ x: UnsafePointer<Float>, batch: Int, into out: UnsafeMutablePointer<Float>) {
        let p = inputShape.reduce(1, *), D = featureDimension
        for b in 0..<batch { for j in 0..<D {
            var s: Float = 0
            for i in 0..<p { s += a[j * p + i] * x[b * p + i] }
            out[b * D + j] = tanh(s)
        } }
    }

    func featureVJP(_ x: UnsafePointer<Float>, batch: Int, cotangent g: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>) {
        let p = inputShape.reduce(1, *), D = featureDimension
        for b in 0..<batch {
            for i in 0..<p { dx[b * p + i] = 0 }
            for j in 0..<D {
                var s: Float = 0
                for i in 0..<p { s += a[j * p + i] * x[b * p + i] }
                let th = tanh(s), d = g[b * D + j] * (1 - th * th)
                for i in 0..<p { dx[b * p + i] += d * a[j * p + i] }
            }
        }
    }
}

final class DiscrimTests: XCTestCase {
    static func cloud(_ n: Int, mean: [Float], label: Int = 0, seed: UInt64) -> (f: [Float], y: [Int]) {
        var rng = CounterRNG(seed: seed, stream: 9)
        var f: [Float] = []
        for _ in 0..<n { for m in mean { f.append(m + Float(rng.normal())) } }
        return (f, [Int](repeating: label, count: n))
    }

    func testSeparableCloudsReachHighAccuracy() throws {
        let D = 4
        let r = Self.cloud(1500, mean: [Float](repeating: 2, count: D), seed: 1)
        let f = Self.cloud(1500, mean: [Float](repeating: -2, count: D), seed: 2)
        let head = try ProjectionHead(config: DiscriminatorConfig(head: "linear", featureDim: D, width: 64, numClasses: 0), seed: 1)
        var o = DiscriminatorTrainOptions()
        o.lr = 3e-3; o.batch = 128; o.bufferBatches = 5; o.bufferEpochs = 2; o.maxSteps = 400; o.evalEvery = 20; o.patience = 10
        let rep = try DiscriminatorTrainer.train(head: head, real: LabelledFeatures(features: r.f, labels: r.y, dim: D),
                                                 fake: LabelledFeatures(features: f.f, labels: f.y, dim: D), options: o)
        print("separable clouds: \(rep.json)")
        let h = try XCTUnwrap(rep.heldOut)
        XCTAssertGreaterThan(h.accuracy, 0.99)
        XCTAssertGreaterThan(h.auc, 0.999)
        XCTAssertGreaterThan(h.meanLogitReal, 2)
        XCTAssertLessThan(h.meanLogitFake, -2)
        XCTAssertEqual(h.real, 150)
    }

    /// Two overlapping unit Gaussians per class; the true log ratio is linear:
    /// log q/p (x) = (mu_q - mu_p) . x - (|mu_q|^2 - |mu_p|^2) / 2. Class 0 and class 1 differ.
    func testConditionalLogitApproachesLogDensityRatio() throws {
        let D = 2
        let muQ: [[Float]] = [[0.5, 0], [0, 0.6]], muP: [[Float]] = [[-0.5, 0], [0.2, -0.6]]
        var real = LabelledFeatures(), fake = LabelledFeatures()
        real.dim = D; fake.dim = D
        for c in 0..<2 {
            let r = Self.cloud(6000, mean: muQ[c], label: c, seed: 10 + UInt64(c)), f = Self.cloud(6000, mean: muP[c], label: c, seed: 20 + UInt64(c))
            real.features += r.f; real.labels += r.y; fake.features += f.f; fake.labels += f.y
        }
        let head = try ProjectionHead(config: DiscriminatorConfig(head: "linear", featureDim: D, width: 32, numClasses: 2), seed: 2)
        var o = DiscriminatorTrainOptions()
        o.lr = 2e-3; o.batch = 256; o.bufferBatches = 10; o.bufferEpochs = 2; o.maxSteps = 1500; o.evalEvery = 50; o.patience = 8
        let rep = try DiscriminatorTrainer.train(head: head, real: real, fake: fake, options: o)
        print("overlapping Gaussians: \(rep.json)")
        var se = 0.0, n = 0.0
        var rng = CounterRNG(seed: 77)
        for c in 0..<2 {
            for _ in 0..<500 {
                let x: [Float] = [Float(rng.normal() * 1.2), Float(rng.normal() * 1.2)]
                var truth = 0.0
                for d in 0..<D { truth += Double((muQ[c][d] - muP[c][d]) * x[d]) - Double(muQ[c][d] * muQ[c][d] - muP[c][d] * muP[c][d]) / 2 }
                let l = Double(head.logits(x, labels: [c])[0])
                se += (l - truth) * (l - truth); n += 1
            }
        }
        let rmse = (se / n).squareRoot()
        print("overlapping Gaussians: RMSE(logit - true log ratio) = \(rmse)")
        XCTAssertLessThan(rmse, 0.12)
    }

    /// Same mean, different spread: real N(0, 1), fake N(0, 0.6^2) in 2-D. The log ratio
    /// 0.5 (1/0.36 - 1) |f|^2 + 2 ln 0.6 is quadratic: the quadratic head learns it, and a linear
    /// head cannot separate the two at all.
    func testQuadraticHeadLearnsAGaussianVarianceRatio() throws {
        let D = 2, sf: Float = 0.6
        var rng = CounterRNG(seed: 31, stream: 2)
        let real = LabelledFeatures(features: (0..<(8000 * D)).map { _ in Float(rng.normal()) }, labels: [Int](repeating: 0, count: 8000), dim: D)
        let fake = LabelledFeatures(features: (0..<(8000 * D)).map { _ in sf * Float(rng.normal()) }, labels: [Int](repeating: 0, count: 8000), dim: D)
        var o = DiscriminatorTrainOptions()
        o.lr = 3e-3; o.batch = 256; o.bufferBatches = 10; o.bufferEpochs = 2; o.maxSteps = 2000; o.evalEvery = 50; o.patience = 8
        var auc: [String: Double] = [:]
        for kind in ["linear", "quadratic"] {
            let head = try ProjectionHead(config: DiscriminatorConfig(head: kind, featureDim: D, width: 16, numClasses: 0), seed: 4)
            let rep = try DiscriminatorTrainer.train(head: head, real: real, fake: fake, options: o)
            auc[kind] = try XCTUnwrap(rep.heldOut).auc
            guard kind == "quadratic" else { continue }
            var se = 0.0
            var r2 = CounterRNG(seed: 78)
            for _ in 0..<1000 {
                let x: [Float] = [Float(r2.normal() * 0.8), Float(r2.normal() * 0.8)]
                let rr = Double(x[0] * x[0] + x[1] * x[1])
                let truth = 0.5 * (1 / Double(sf * sf) - 1) * rr + Double(D) * log(Double(sf))
                let l = Double(head.logits(x, labels: [0])[0])
                se += (l - truth) * (l - truth)
            }
            let rmse = (se / 1000).squareRoot()
            print("variance ratio: quadratic RMSE(logit - true log ratio) = \(rmse), AUC \(auc)")
            XCTAssertLessThan(rmse, 0.15)
        }
        XCTAssertLessThan(try XCTUnwrap(auc["linear"]), 0.6)
        XCTAssertGreaterThan(try XCTUnwrap(auc["quadratic"]), 0.7)
    }

    func testHeadGradients() throws {
        for kind in ["linear", "mlp", "quadratic"] {
            var g = GradCheck()
            let D = 5, B = 4
            let head = try ProjectionHead(config: DiscriminatorConfig(head: kind, featureDim: D, width: 6, numClasses: 3), seed: 3)
            for p in head.params.all { p.randomize(&g, std: 0.5) }
            var f = g.randoms(B * D)
            let y = [0, 2, 1, 2]
            let w = g.randoms(B)
            head.params.zeroGrad()
            _ = head.logits(f, labels: y)
            let df = w.withUnsafeBufferPointer { Array(UnsafeBufferPointer(start: head.backward($0.baseAddress!), count: B * D)) }
            let grads = head.params.all.map(\.grads)
            func loss() -> (Double, Double) { head.logits(f, labels: y).withUnsafeBufferPointer { GradCheck.project($0.baseAddress!, w) } }
            for (p, gp) in zip(head.params.all, grads) {
                g.check("\(kind) \(p.name)", value: p.value, count: p.count, analytic: gp, loss: loss)
            }
            f.withUnsafeMutableBufferPointer { fp in
                g.check("\(kind) dlogit/dfeat", value: fp.baseAddress!, count: B * D, analytic: df) {
                    head.logits(Array(fp), labels: y).withUnsafeBufferPointer { GradCheck.project($0.baseAddress!, w) }
                }
            }
        }
    }

    /// d logit / d x through a nonlinear encoder (the `reward.grad` path).
    func testRewardGradientThroughEncoder() throws {
        var g = GradCheck()
        let enc = TanhEncoder(inputShape: [1, 2, 3], featureDimension: 4, seed: 5)
        let head = try ProjectionHead(config: DiscriminatorConfig(head: "mlp", featureDim: 4, width: 8, numClasses: 2), seed: 4)
        for p in head.params.all { p.randomize(&g, std: 0.5) }
        let B = 3
        var x = g.randoms(B * 6)
        let y = [1, 0, 1]
        let gx = DiscriminatorLoss.inputGradient(head: head, encoder: enc, images: x, labels: y)
        let ones = [Float](repeating: 1, count: B)
        x.withUnsafeMutableBufferPointer { xp in
            g.check("grad_x logit", value: xp.baseAddress!, count: B * 6, analytic: gx) {
                let l = head.logits(Encoders.features(enc, x: Array(xp), batch: B), labels: y)
                return l.withUnsafeBufferPointer { GradCheck.project($0.baseAddress!, ones) }
            }
        }
    }

    /// The full loss (BCE + R1 through the encoder) against finite differences of its value,
    /// for both heads; the tanh encoder has no JVP, so J J^T g takes the finite-difference route.
    func testR1ParameterGradient() throws {
        for kind in ["linear", "mlp", "quadratic"] {
            var g = GradCheck()
            g.eps = 3e-3
            g.rtol = 1e-2
            let enc = TanhEncoder(inputShape: [1, 1, 3], featureDimension: 4, seed: 6)
            let head = try ProjectionHead(config: DiscriminatorConfig(head: kind, featureDim: 4, width: 5, numClasses: 2), seed: 5)
            for p in head.params.all { p.randomize(&g, std: 0.5) }
            let B = 3
            let xr = g.randoms(B * 3), yr = [0, 1, 1]
            let fr = Encoders.features(enc, x: xr, batch: B)
            let ff = g.randoms(B * 4), yf = [1, 0, 0]
            let gamma = 2.0
            head.params.zeroGrad()
            let (_, _, r1) = DiscriminatorLoss.accumulate(head: head, realFeatures: fr, realLabels: yr, realImages: xr, fakeFeatures: ff, fakeLabels: yf, r1: gamma, encoder: enc)
            XCTAssertGreaterThan(r1, 0)
            let grads = head.params.all.map(\.grads)
            for (p, gp) in zip(head.params.all, grads) {
                g.check("\(kind) R1 \(p.name)", value: p.value, count: p.count, analytic: gp) {
                    let l = DiscriminatorLoss.accumulate(head: head, realFeatures: fr, realLabels: yr, realImages: xr, fakeFeatures: ff, fakeLabels: yf, r1: gamma, encoder: enc).loss
                    return (l, abs(l))
                }
            }
        }
    }

    /// Lazy R1: with interval K the penalty, weighted K * gamma, enters on steps K, 2K, ... only,
    /// so a run shorter than K equals one without R1 bit for bit, and one that reaches step K
    /// does not; K = 1 is the every-step R1.
    func testLazyR1AppliesThePenaltyEveryKthStep() throws {
        let enc = TanhEncoder(inputShape: [1, 1, 3], featureDimension: 4, seed: 6)
        var rng = CounterRNG(seed: 12, stream: 3)
        let n = 64
        let xr = (0..<(n * 3)).map { _ in Float(rng.normal()) }
        let real = LabelledFeatures(features: Encoders.features(enc, x: xr, batch: n), labels: (0..<n).map { $0 % 2 }, dim: 4,
                                    images: xr, imageShape: [1, 1, 3])
        let fake = LabelledFeatures(features: (0..<(n * 4)).map { _ in Float(rng.normal() * 0.8 + 0.3) }, labels: (0..<n).map { ($0 + 1) % 2 }, dim: 4)
        func weights(steps: Int, r1: Double, every: Int) throws -> [[Float]] {
            let head = try ProjectionHead(config: DiscriminatorConfig(head: "linear", featureDim: 4, width: 5, numClasses: 2), seed: 5)
            var o = DiscriminatorTrainOptions()
            o.lr = 1e-2; o.batch = 16; o.bufferBatches = 2; o.bufferEpochs = 1; o.maxSteps = steps; o.holdout = 0
            o.r1 = r1; o.r1Every = every
            _ = try DiscriminatorTrainer.train(head: head, real: real, fake: fake, options: o, encoder: enc)
            return head.params.all.map(\.values)
        }
        XCTAssertEqual(try weights(steps: 3, r1: 0.5, every: 4), try weights(steps: 3, r1: 0, every: 1))
        XCTAssertNotEqual(try weights(steps: 4, r1: 0.5, every: 4), try weights(steps: 4, r1: 0, every: 1))
        XCTAssertNotEqual(try weights(steps: 4, r1: 0.5, every: 4), try weights(steps: 4, r1: 0.5, every: 1))
        XCTAssertNotEqual(try weights(steps: 1, r1: 0.5, every: 1), try weights(steps: 1, r1: 0, every: 1))
        var o = DiscriminatorTrainOptions()
        o.r1 = 0.5; o.r1Every = 0
        let head = try ProjectionHead(config: DiscriminatorConfig(head: "linear", featureDim: 4, width: 5, numClasses: 2), seed: 5)
        XCTAssertThrowsError(try DiscriminatorTrainer.train(head: head, real: real, fake: fake, options: o, encoder: enc))
    }

    func testAUC() {
        XCTAssertEqual(DiscriminatorLoss.auc(real: [3, 4], fake: [1, 2]), 1)
        XCTAssertEqual(DiscriminatorLoss.auc(real: [1, 2], fake: [3, 4]), 0)
        XCTAssertEqual(DiscriminatorLoss.auc(real: [1, 3], fake: [2, 2]), 0.5)
        XCTAssertEqual(DiscriminatorLoss.auc(real: [2], fake: [2]), 0.5)
    }

    func testCheckpointRoundTripAndScorer() throws {
        let head = try ProjectionHead(config: DiscriminatorConfig(head: "mlp", featureDim: 6, width: 8, numClasses: 2), seed: 9)
        let dir = try TestSupport.temporaryDirectory()
        let path = dir + "/d.safetensors"
        try Checkpoint.write(head.checkpointRecord(encoder: "pixels"), to: path)
        let (back, enc) = try ProjectionHead.load(path: path)
        XCTAssertEqual(enc, "pixels")
        var g = GradCheck()
        let x = g.randoms(2 * 6)
        XCTAssertEqual(back.logits(x, labels: [0, 1]), head.logits(x, labels: [0, 1]))
        // scorer: reward = logit of the features; reward.grad through pixels = dlogit/dfeat
        let scorer = DiscriminatorScorer(head: back, encoderDigest: "pixels", encoder: PixelEncoder(inputShape: [1, 2, 3]))
        var r = Record([("x", Tensor(x, shape: [2, 1, 2, 3])), ("y", Tensor([Int64(0), 1], shape: [2])),
                        ("feat", Tensor(x, shape: [2, 6])), ("extra", Tensor([Int64(7)], shape: [1]))])
        r.metadata = ["encoder": "pixels", "sampler": "euler"]
        let s = try scorer.score(r, grad: true)
        XCTAssertEqual(try s["reward"]!.floats(), head.logits(x, labels: [0, 1]))
        XCTAssertEqual(s["reward.grad"]!.shape, [2, 1, 2, 3])
        XCTAssertEqual(s["extra"], r["extra"])
        XCTAssertEqual(s.metadata["sampler"], "euler")
        // another encoder's features are refused
        var other = r
        other.metadata["encoder"] = "abc123"
        XCTAssertThrowsError(try scorer.score(other, grad: false)) { XCTAssertTrue("\($0)".contains("encoder abc123")) }
        // a velocity checkpoint is not a discriminator
        let net = try VelocityNet.make(RLGradientTests.config, seed: 1)
        try net.save(to: dir + "/v.safetensors")
        XCTAssertThrowsError(try ProjectionHead.load(path: dir + "/v.safetensors")) { XCTAssertTrue("\($0)".contains("not a discriminator")) }
    }
}
