import Foundation
import XCTest
import Shared

/// The RL toy: a tiny mlp VelocityNet on [C, H, W] = [1, 1, 2] trained by flow matching on
/// data N(m, s^2) per dimension (the base), rollouts through the shipped Sampler written as
/// records in the `sample --record` contract, and analytic rewards.
enum RLToy {
    static let m: Float = 0.5, s: Float = 0.8
    static let config = ModelConfig(arch: "mlp", channels: 1, height: 1, width: 2, numClasses: 0,
                                    hidden: 48, depth: 2, mlpRatio: 2, timeScale: 1000, frequencyDim: 32)

    /// Trained once per test process (about a second).
    static let base: VelocityNet = {
        let threads = BLAS.threads
        BLAS.setThreads(1)  // tiny matrices: threads only add overhead
        let t0 = Date()
        defer {
            BLAS.setThreads(threads)
            print(String(format: "RL toy base trained in %.2f s", Date().timeIntervalSince(t0)))
        }
        let net = try! VelocityNet.make(config, seed: 7)
        net.inferenceChunk = 256
        let opt = AdamW(net.params, lr: 2e-3, weightDecay: 0)
        var rng = CounterRNG(seed: 11, stream: 3)
        let B = 256, D = 2
        for step in 0..<1500 {
            var x = [Float](repeating: 0, count: B * D), target = x, t = [Float](repeating: 0, count: B)
            for b in 0..<B {
                // stratified-ish t in (0, 1)
                t[b] = Float((Double(b) + rng.uniform()) / Double(B))
                for d in 0..<D {
                    let x0 = m + s * Float(rng.normal()), e = Float(rng.normal())
                    x[b * D + d] = (1 - t[b]) * x0 + t[b] * e
                    target[b * D + d] = e - x0
                }
            }
            net.params.zeroGrad()
            let v = x.withUnsafeBufferPointer { net.forward($0.baseAddress!, t: t, y: [Int](repeating: 0, count: B), batch: B) }
            var g = [Float](repeating: 0, count: B * D)
            for i in 0..<(B * D) { g[i] = 2 * (v[i] - target[i]) / Float(B * D) }
            g.withUnsafeBufferPointer { _ = net.backward($0.baseAddress!) }
            opt.step(lr: step < 1100 ? 2e-3 : 4e-4)
        }
        return net
    }()

    static func copy(_ net: VelocityNet) -> VelocityNet {
        let c = try! VelocityNet.make(net.config, seed: 0)
        c.params.copyValues(from: net.params)
        c.inferenceChunk = 256
        return c
    }

    /// Reward r(x) = c . x - (a/2) |x|^2 and its gradient.
    struct Reward {
        var c: [Float] = [1, -0.5]
        var a: Float = 0
        func value(_ x: [Float], _ b: Int) -> Float {
            var r: Float = 0
            for d in 0..<2 { let v = x[b * 2 + d]; r += c[d] * v - a / 2 * v * v }
            return r
        }
        func grad(_ x: [Float], _ b: Int) -> [Float] { (0..<2).map { c[$0] - a * x[b * 2 + $0] } }
    }

    /// Rollouts of `model` as one record of the `sample --record` contract, scored.
    static func rollouts(model: VelocityNet, sampler: Sampler, n: Int, seed: UInt64, idOffset: Int64 = 0,
                         group: Int = 0, reward: Reward, withGrad: Bool) -> Record {
        let ids = (0..<n).map { Int64($0) + idOffset }
        let res = sampler.sample(model: model, labels: [Int](repeating: 0, count: n), ids: ids, seed: seed, record: true)
        var r = Record()
        r["x"] = Tensor(res.x, shape: [n, 1, 1, 2])
        r["y"] = Tensor([Int64](repeating: 0, count: n), shape: [n])
        r["id"] = Tensor(ids, shape: [n])
        if group > 0 { r["group"] = Tensor(ids.map { $0 / Int64(group) }, shape: [n]) }
        r["traj.x"] = Tensor(res.trajectory!, shape: [n, sampler.steps + 1, 1, 1, 2])
        r["traj.t"] = Tensor(res.times, shape: [sampler.steps + 1])
        r["traj.logp"] = Tensor(res.logProbs!, shape: [n, sampler.steps])
        r["reward"] = Tensor((0..<n).map { reward.value(res.x, $0) }, shape: [n])
        if withGrad { r["reward.grad"] = Tensor((0..<n).flatMap { reward.grad(res.x, $0) }, shape: [n, 1, 1, 2]) }
        r.metadata = sampler.settings
        r.metadata["per_record"] = "traj.t"
        r.metadata["seed"] = "\(seed)"
        r.metadata["model"] = "toy"
        return r
    }

    /// Per-dimension mean and variance of samples [n, 2], optionally weighted.
    static func moments(_ x: [Float], weights: [Double]? = nil) -> (mean: [Double], variance: [Double]) {
        let n = x.count / 2
        let w = weights ?? [Double](repeating: 1, count: n)
        let W = w.reduce(0, +)
        var mean = [0.0, 0.0], v = [0.0, 0.0]
        for i in 0..<n { for d in 0..<2 { mean[d] += w[i] * Double(x[i * 2 + d]) / W } }
        for i in 0..<n { for d in 0..<2 { let e = Double(x[i * 2 + d]) - mean[d]; v[d] += w[i] * e * e / W } }
        return (mean, v)
    }

    static func finalSamples(model: VelocityNet, sampler: Sampler, n: Int, seed: UInt64) -> [Float] {
        sampler.sample(model: model, labels: [Int](repeating: 0, count: n), ids: (0..<n).map { Int64($0) }, seed: seed).x
    }
}
