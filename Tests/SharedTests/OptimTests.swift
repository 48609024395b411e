import XCTest
import Shared

final class OptimTests: XCTestCase {
    /// Reference AdamW in float64, written from torch.optim.AdamW's documented algorithm.
    func referenceAdamW(_ p0: [Double], grads: [[Double]], lr: Double, b1: Double, b2: Double, eps: Double, wd: Double) -> [Double] {
        var p = p0, m = [Double](repeating: 0, count: p0.count), v = m
        for (k, g) in grads.enumerated() {
            let step = Double(k + 1)
            for i in p.indices {
                p[i] *= 1 - lr * wd
                m[i] = b1 * m[i] + (1 - b1) * g[i]
                v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i]
                let mh = m[i] / (1 - pow(b1, step))
                let vh = v[i] / (1 - pow(b2, step))
                p[i] -= lr * mh / (vh.squareRoot() + eps)
            }
        }
        return p
    }

    func testAdamWMatchesHandComputedSteps() {
        let ps = ParameterSet()
        let p = ps.add("w", [3])
        p.values = [1, -2, 0.5]
        let fixed = ps.add("pos_embed", [2], trainable: false)
        fixed.values = [7, 8]
        let opt = AdamW(ps, lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1)
        // step 1 by hand: m_hat = g, v_hat = g^2, so p1 = p0 (1 - lr wd) - lr sign(g)
        let g1: [Float] = [0.5, -3, 2e-3]
        p.grad.update(from: g1, count: 3)
        opt.step()
        let decay: Double = 1 - 0.01 * 0.1
        let e0: Double = 1 * decay - 0.01
        let e1: Double = -2 * decay + 0.01
        let e2: Double = 0.5 * decay - 0.01 * 2e-3 / (2e-3 + 1e-8)
        XCTAssertEqual(Double(p.values[0]), e0, accuracy: 1e-6)
        XCTAssertEqual(Double(p.values[1]), e1, accuracy: 1e-6)
        XCTAssertEqual(Double(p.values[2]), e2, accuracy: 1e-6)
        XCTAssertEqual(fixed.values, [7, 8], "fixed parameters are never updated")
        // two more steps against the float64 reference
        let g2: [Float] = [-1, 0.25, 4], g3: [Float] = [0.1, 0.1, -0.3]
        p.grad.update(from: g2, count: 3); opt.step()
        p.grad.update(from: g3, count: 3); opt.step()
        let expected = referenceAdamW([1, -2, 0.5], grads: [g1, g2, g3].map { $0.map(Double.init) }, lr: 0.01, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.1)
        for i in 0..<3 { XCTAssertEqual(Double(p.values[i]), expected[i], accuracy: 1e-6) }
        XCTAssertEqual(opt.stepCount, 3)
    }

    func testAdamWResumesExactly() throws {
        func makeSet() -> ParameterSet {
            let ps = ParameterSet()
            ps.add("a.weight", [2, 3]).values = [0.1, 0.2, -0.3, 0.4, 0.5, -0.6]
            ps.add("a.bias", [2]).values = [0.01, -0.02]
            return ps
        }
        func grads(_ k: Int, _ ps: ParameterSet) {
            for p in ps.all { for j in 0..<p.count { p.grad[j] = Float(sin(Double(k * 7 + j))) } }
        }
        let ps = makeSet()
        let opt = AdamW(ps, lr: 1e-2, weightDecay: 0.05)
        var saved = Record()
        for k in 1...5 {
            grads(k, ps); opt.step(lr: LinearWarmup(base: 1e-2, warmupSteps: 3).lr(step: k))
            if k == 2 {
                saved = Record(ps.tensors(), metadata: [:])
                opt.save(into: &saved)
            }
        }
        let bytes = RecordCodec.encode(saved)
        let record = try RecordCodec.decode(bytes)
        XCTAssertNotNil(record["optim.exp_avg.a.weight"]); XCTAssertNotNil(record["optim.exp_avg_sq.a.bias"])
        XCTAssertEqual(record.metadata[AdamW.stepKey], "2")
        let ps2 = makeSet()
        try ps2.load(from: record)
        let opt2 = AdamW(ps2, lr: 1e-2, weightDecay: 0.05)
        try opt2.load(from: record)
        for k in 3...5 { grads(k, ps2); opt2.step(lr: LinearWarmup(base: 1e-2, warmupSteps: 3).lr(step: k)) }
        XCTAssertEqual(ps2.all.map(\.values), ps.all.map(\.values), "resumed run is bit-identical")
        XCTAssertThrowsError(try AdamW(makeSet()).load(from: Record()))
    }

    func testClipGradNormAndWarmup() {
        let ps = ParameterSet()
        let a = ps.add("a", [2]), b = ps.add("b", [1])
        a.grad.update(from: [3, 0], count: 2); b.grad[0] = 4
        let norm = clipGradNorm(ps.all, maxNorm: 1)
        XCTAssertEqual(norm, 5, accuracy: 1e-12)
        XCTAssertEqual(a.grads[0], Float(3 / (5 + 1e-6)), accuracy: 1e-7)
        XCTAssertEqual(b.grads[0], Float(4 / (5 + 1e-6)), accuracy: 1e-7)
        let norm2 = clipGradNorm(ps.all, maxNorm: 10)
        XCTAssertEqual(norm2, 1, accuracy: 1e-5)
        XCTAssertEqual(b.grads[0], Float(4 / (5 + 1e-6)), "below the limit nothing changes")
        let w = LinearWarmup(base: 1e-3, warmupSteps: 4)
        XCTAssertEqual([1, 2, 4, 5, 100].map { w.lr(step: $0) }, [2.5e-4, 5e-4, 1e-3, 1e-3, 1e-3])
        XCTAssertEqual(LinearWarmup(base: 0.5, warmupSteps: 0).lr(step: 1), 0.5)
    }

    func testEMA() throws {
        let ps = ParameterSet()
        let p = ps.add("w", [2])
        p.values = [1, 2]
        let ema = EMA(ps, decay: 0.9)
        p.values = [3, 4]
        ema.update()
        XCTAssertEqual(ema.value("w")![0], 0.9 * 1 + 0.1 * 3, accuracy: 1e-6)
        XCTAssertEqual(ema.value("w")![1], 0.9 * 2 + 0.1 * 4, accuracy: 1e-6)
        p.values = [0, 0]
        ema.update()
        XCTAssertEqual(ema.value("w")![0], 0.9 * 1.2, accuracy: 1e-6)
        var record = Record()
        ema.save(into: &record)
        XCTAssertEqual(record.metadata[EMA.decayKey], "0.9")
        let ps2 = ParameterSet()
        ps2.add("w", [2])
        let ema2 = EMA(ps2, decay: 0.9)
        try ema2.load(from: try RecordCodec.decode(RecordCodec.encode(record)))
        XCTAssertEqual(ema2.value("w"), ema.value("w"))
        let target = ParameterSet()
        target.add("w", [2])
        ema.apply(to: target)
        XCTAssertEqual(target["w"]!.values, ema.value("w"))
    }

    /// End to end: forward, backward, clipping, warmup and AdamW fit a fixed flow-matching batch.
    func testAdamWFitsAFixedFlowMatchingBatch() throws {
        let config = ModelConfig(arch: "mlp", channels: 1, height: 4, width: 4, numClasses: 2, hidden: 32, depth: 2, mlpRatio: 2, frequencyDim: 32)
        let net = try VelocityNet.make(config, seed: 1)
        var rng = CounterRNG(seed: 3)
        let B = 8, D = 16
        let x0 = (0..<(B * D)).map { i in Float((i / D) % 2 == 0 ? 1 : -1) * Float(i % D) / 16 }
        let eps = (0..<(B * D)).map { _ in Float(rng.normal()) }
        let t = (0..<B).map { Float($0 + 1) / Float(B + 1) }
        let y = (0..<B).map { $0 % 2 }
        let xt = (0..<(B * D)).map { i in (1 - t[i / D]) * x0[i] + t[i / D] * eps[i] }
        let target = zip(eps, x0).map { $0 - $1 }
        let opt = AdamW(net.params, lr: 3e-3, weightDecay: 0)
        let warmup = LinearWarmup(base: 3e-3, warmupSteps: 10)
        var first = 0.0, last = 0.0
        var dv = [Float](repeating: 0, count: B * D)
        for k in 1...150 {
            net.params.zeroGrad()
            let v = xt.withUnsafeBufferPointer { net.forward($0.baseAddress!, t: t, y: y, batch: B) }
            var loss = 0.0
            for i in 0..<(B * D) {
                let r = v[i] - target[i]
                loss += Double(r * r)
                dv[i] = 2 * r / Float(B * D)
            }
            loss /= Double(B * D)
            if k == 1 { first = loss }
            last = loss
            dv.withUnsafeBufferPointer { _ = net.backward($0.baseAddress!) }
            clipGradNorm(net.params.trainable, maxNorm: 1)
            opt.step(lr: warmup.lr(step: k))
        }
        XCTAssertLessThan(last, first * 0.05, "loss \(first) -> \(last)")
    }

    /// Save model + AdamW + EMA at step 3 of a run, restore into fresh objects, continue: the
    /// weights, moments and EMA match the uninterrupted run exactly.
    func testTrainingCheckpointResumesExactly() throws {
        let config = ModelConfig(arch: "sit", channels: 1, height: 4, width: 4, numClasses: 2, hidden: 8, depth: 1, mlpRatio: 2, heads: 2, patch: 2, frequencyDim: 8)
        let B = 2, D = 16
        let x: [Float] = (0..<(B * D)).map { Float(($0 * 37) % 11) / 5 - 1 }
        let dv: [Float] = (0..<(B * D)).map { Float(($0 * 13) % 7) / 3 - 1 }
        func step(_ net: VelocityNet, _ opt: AdamW, _ ema: EMA) {
            net.params.zeroGrad()
            x.withUnsafeBufferPointer { _ = net.forward($0.baseAddress!, t: [0.3, 0.8], y: [0, 2], batch: B) }
            dv.withUnsafeBufferPointer { _ = net.backward($0.baseAddress!) }
            opt.step()
            ema.update()
        }
        let net = try VelocityNet.make(config, seed: 4)
        let opt = AdamW(net.params, lr: 1e-2)
        let ema = EMA(net.params, decay: 0.5)
        var saved = Record()
        for k in 1...5 {
            step(net, opt, ema)
            if k == 3 { saved = TrainingCheckpoint.record(model: net, optimizer: opt, ema: ema, step: k, parentDigest: "abc", metadata: ["tool": "test"]) }
        }
        let record = try RecordCodec.decode(RecordCodec.encode(saved))
        XCTAssertEqual(try TrainingCheckpoint.step(of: record), 3)
        XCTAssertEqual(record.metadata[TrainingCheckpoint.parentKey], "abc")
        let net2 = try VelocityNet.load(from: record)
        let opt2 = AdamW(net2.params, lr: 1e-2)
        try opt2.load(from: record)
        let ema2 = EMA(net2.params, decay: 0.5)
        try ema2.load(from: record)
        for _ in 4...5 { step(net2, opt2, ema2) }
        for p in net.params.all {
            XCTAssertEqual(net2.params[p.name]!.values, p.values, p.name)
            XCTAssertEqual(ema2.value(p.name), ema.value(p.name), p.name)
        }
        // the EMA weights load as a model of their own
        let emaNet = try VelocityNet.load(from: record, ema: true)
        XCTAssertEqual(emaNet.params["blocks.0.attn.qkv.weight"]!.values, record["ema.blocks.0.attn.qkv.weight"]!.floatsForTest)
    }
}

private extension Tensor {
    var floatsForTest: [Float] { (try? floats()) ?? [] }
}
