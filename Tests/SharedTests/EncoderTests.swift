import XCTest
import Shared

/// Encoders: gradient checks of featureVJP and of the training gradients, batch invariance,
/// checkpoints, and tiny training runs that lower the loss.
final class EncoderTests: XCTestCase {
    /// Small versions of the two presets (same layer types, same code paths).
    static func smallConfig(_ kind: String) -> EncoderConfig {
        var c = EncoderConfig.preset(kind, channels: 1, height: 10, width: 10, numClasses: 3)!
        c.widths = [3, 4, 5]
        c.featureDim = 6
        if kind == "simclr" { c.projectionDim = 4 }
        return c
    }

    func randomImages(_ n: Int, _ d: Int, seed: UInt64) -> [Float] {
        var rng = CounterRNG(seed: seed, stream: 5)
        return (0..<(n * d)).map { _ in Float(rng.normal() * 0.6) }
    }

    func checkFeatureVJP(_ kind: String) throws {
        let enc = try ConvEncoder(config: Self.smallConfig(kind), seed: 3)
        var g = GradCheck()
        for p in enc.params.all { p.randomize(&g, std: 0.6) }
        let batch = 3, D = enc.sampleDimension, F = enc.featureDimension
        var x = randomImages(batch, D, seed: 11)
        let w = g.randoms(batch * F)
        let dx = enc.featureVJP(x, batch: batch, cotangent: w)
        x.withUnsafeMutableBufferPointer { xp in
            g.check("\(kind) featureVJP", value: xp.baseAddress!, count: batch * D, analytic: dx) {
                let f = enc.features(Array(xp), batch: batch)
                return f.withUnsafeBufferPointer { GradCheck.project($0.baseAddress!, w) }
            }
        }
    }

    func testClassifierFeatureVJPGradCheck() throws { try checkFeatureVJP("classifier") }
    func testSimCLRFeatureVJPGradCheck() throws { try checkFeatureVJP("simclr") }

    /// Parameter gradients of the raw backward (what training uses), for every parameter tensor
    /// of the trunk, the classifier head and the projection head.
    func testParameterGradients() throws {
        for kind in ["classifier", "simclr"] {
            let enc = try ConvEncoder(config: Self.smallConfig(kind), seed: 4)
            var g = GradCheck()
            for p in enc.params.all { p.randomize(&g, std: 0.6) }
            let batch = 2
            let x = randomImages(batch, enc.sampleDimension, seed: 12)
            let outDim = kind == "classifier" ? enc.config.numClasses : enc.config.projectionDim
            let w = g.randoms(batch * outDim)
            func loss() -> (Double, Double) {
                x.withUnsafeBufferPointer { xp in
                    let f = enc.forward(xp.baseAddress!, batch: batch)
                    let o = kind == "classifier" ? enc.headForward(f) : enc.projectionForward(f)
                    return GradCheck.project(o, w)
                }
            }
            enc.params.zeroGrad()
            _ = loss()
            let df = w.withUnsafeBufferPointer { kind == "classifier" ? enc.headBackward($0.baseAddress!) : enc.projectionBackward($0.baseAddress!) }
            enc.backward(df, paramGrads: true, inputGrad: false)
            for p in enc.params.all {
                g.check("\(kind) \(p.name)", value: p.value, count: p.count, analytic: p.grads, loss: loss)
            }
        }
    }

    func testNTXentGradient() {
        var g = GradCheck()
        let n = 3, P = 4
        var p = g.randoms(2 * n * P)
        var dp = [Float](repeating: 0, count: p.count)
        _ = p.withUnsafeBufferPointer { pp in dp.withUnsafeMutableBufferPointer { EncoderLosses.ntXent(pp.baseAddress!, pairs: n, dim: P, temperature: 0.5, grad: $0.baseAddress!) } }
        var scratch = dp
        p.withUnsafeMutableBufferPointer { pp in
            g.check("ntXent", value: pp.baseAddress!, count: pp.count, analytic: dp) {
                let l = scratch.withUnsafeMutableBufferPointer { EncoderLosses.ntXent(pp.baseAddress!, pairs: n, dim: P, temperature: 0.5, grad: $0.baseAddress!).0 }
                return (l, abs(l))
            }
        }
    }

    func testCrossEntropyGradient() {
        var g = GradCheck()
        let labels = [0, 2, 1], k = 3
        var logits = g.randoms(labels.count * k)
        var grad = [Float](repeating: 0, count: logits.count)
        _ = logits.withUnsafeBufferPointer { lp in grad.withUnsafeMutableBufferPointer { EncoderLosses.crossEntropy(lp.baseAddress!, labels: labels, classes: k, grad: $0.baseAddress!) } }
        var scratch = grad
        logits.withUnsafeMutableBufferPointer { lp in
            g.check("crossEntropy", value: lp.baseAddress!, count: lp.count, analytic: grad) {
                let l = scratch.withUnsafeMutableBufferPointer { EncoderLosses.crossEntropy(lp.baseAddress!, labels: labels, classes: k, grad: $0.baseAddress!).0 }
                return (l, abs(l))
            }
        }
    }

    /// A sample's features do not depend on the batch it arrives in or the chunk padding (to float
    /// rounding: OpenBLAS's Haswell sgemm rounds differently for a different row count), nor,
    /// exactly, on the number of worker threads.
    func testFeaturesBatchAndThreadInvariant() throws {
        let enc = try ConvEncoder(config: EncoderConfig.preset("simclr")!, seed: 7)
        enc.inferenceChunk = 16
        let D = enc.sampleDimension, F = enc.featureDimension
        let x = randomImages(37, D, seed: 2)
        let all = enc.features(x, batch: 37)
        let one = enc.features(Array(x[(5 * D)..<(6 * D)]), batch: 1)
        for (a, b) in zip(all[(5 * F)..<(6 * F)], one) { XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(b))) }
        enc.parallelism = 3
        XCTAssertEqual(enc.features(x, batch: 37), all)
        let g = randomImages(37, F, seed: 3)
        enc.parallelism = 1
        let dx1 = enc.featureVJP(x, batch: 37, cotangent: g)
        enc.parallelism = 2
        XCTAssertEqual(enc.featureVJP(x, batch: 37, cotangent: g), dx1)
        XCTAssertEqual(enc.features([], batch: 0), [])
    }

    func testCheckpointRoundTripAndDigest() throws {
        let dir = try TestSupport.temporaryDirectory()
        let path = dir + "/enc.safetensors"
        let enc = try ConvEncoder(config: EncoderConfig.preset("classifier")!, seed: 9)
        try enc.save(to: path, metadata: ["step": "0"])
        XCTAssertEqual(enc.digest, try Checkpoint.digest(path))
        let back = try ConvEncoder.load(path: path)
        XCTAssertEqual(back.config, enc.config)
        XCTAssertEqual(back.digest, enc.digest)
        XCTAssertEqual(back.params.names, ["convs.0.weight", "convs.0.bias", "convs.1.weight", "convs.1.bias", "convs.2.weight", "convs.2.bias",
                                           "fc.weight", "fc.bias", "head.weight", "head.bias"])
        let x = randomImages(3, enc.sampleDimension, seed: 1)
        XCTAssertEqual(back.features(x, batch: 3), enc.features(x, batch: 3))
        let record = try Checkpoint.read(path)
        XCTAssertEqual(record.metadata["kind"], "classifier")
        XCTAssertEqual(try EncoderConfig.from(json: record.metadata["config"]!), enc.config)
        // strict: an unexpected tensor is refused
        var extra = record
        extra["stray"] = Tensor([Float(1)], shape: [1])
        try Checkpoint.write(extra, to: dir + "/extra.safetensors")
        XCTAssertThrowsError(try ConvEncoder.load(path: dir + "/extra.safetensors"))
        let simclr = try ConvEncoder(config: EncoderConfig.preset("simclr")!, seed: 9)
        XCTAssertEqual(simclr.params.names.suffix(4), ["proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias"])
    }

    /// Two-class toy data: a bright square top-left vs bottom-right, on a -1 background.
    static func toyImages(_ n: Int, side: Int = 10) -> ([Float], [Int]) {
        var rng = CounterRNG(seed: 21, stream: 1)
        var x = [Float](repeating: -1, count: n * side * side), y = [Int](repeating: 0, count: n)
        for i in 0..<n {
            let cls = i % 2
            y[i] = cls
            let o = cls == 0 ? 1 : side / 2
            for r in o..<(o + 3) { for c in o..<(o + 3) { x[i * side * side + r * side + c] = 1 } }
            for k in 0..<(side * side) { x[i * side * side + k] += Float(rng.normal() * 0.1) }
        }
        return (x, y)
    }

    func tinyRun(_ kind: String, steps: Int) throws -> [EncoderTrainingLog] {
        // the classifier uses the tiny config; SimCLR the real preset on 10x10 images (the tiny
        // one collapses to identical projections at this learning rate)
        var cfg = kind == "classifier" ? Self.smallConfig(kind) : EncoderConfig.preset("simclr", height: 10, width: 10)!
        cfg.numClasses = kind == "classifier" ? 2 : 0
        let enc = try ConvEncoder(config: cfg, seed: 1)
        let (x, y) = Self.toyImages(64)
        var o = EncoderTrainingOptions(steps: steps, batch: 16, lr: kind == "classifier" ? 1e-2 : 1e-3, seed: 2)
        o.warmup = 5
        o.logEvery = 10
        var logs: [EncoderTrainingLog] = []
        try EncoderTrainer.train(enc, images: x, labels: kind == "classifier" ? y : nil, options: o) { logs.append($0) }
        return logs
    }

    func testTinyClassifierTrainingLowersLoss() throws {
        let logs = try tinyRun("classifier", steps: 60)
        XCTAssertEqual(logs.count, 6)
        XCTAssertLessThan(logs.last!.loss, logs.first!.loss - 0.05, "\(logs.map(\.loss))")
    }

    func testTinySimCLRTrainingLowersLoss() throws {
        let logs = try tinyRun("simclr", steps: 60)
        XCTAssertLessThan(logs.last!.loss, logs.first!.loss - 0.05, "\(logs.map(\.loss))")
    }

    func testLinearProbeSeparable() throws {
        var rng = CounterRNG(seed: 4, stream: 0)
        func make(_ n: Int) -> ([Float], [Int]) {
            var f = [Float](), y = [Int]()
            for i in 0..<n {
                let c = i % 3
                y.append(c)
                for j in 0..<4 { f.append(Float(rng.normal() * 0.3) + (j == c ? 2 : 0)) }
            }
            return (f, y)
        }
        let (a, ya) = make(300), (b, yb) = make(90)
        var probe = LinearProbe()
        probe.epochs = 20
        probe.batch = 50
        let r = try probe.fit(train: a, trainLabels: ya, test: b, testLabels: yb, dim: 4)
        XCTAssertGreaterThan(r.testAccuracy, 0.97)
        XCTAssertEqual(r.classes, 3)
    }

    func testConfigValidation() {
        XCTAssertThrowsError(try EncoderConfig.from(json: "{}"))
        var c = EncoderConfig.preset("classifier")!
        c.kind = "vae"
        XCTAssertThrowsError(try EncoderConfig.from(json: c.json()))
        c = EncoderConfig.preset("classifier", height: 3, width: 3)!
        XCTAssertThrowsError(try c.validate())
    }
}
