import Foundation
import XCTest
import Shared

/// Gradient checks of every RL gradient path, and the DRL <-> toolkit time conventions.
final class RLGradientTests: XCTestCase {
    static let config = ModelConfig(arch: "mlp", channels: 1, height: 1, width: 3, numClasses: 2,
                                    hidden: 16, depth: 1, mlpRatio: 2, timeScale: 1, frequencyDim: 8)

    /// A small random (non-zero-output) velocity net.
    func randomNet(_ g: inout GradCheck, seed: UInt64 = 3) throws -> VelocityNet {
        let net = try VelocityNet.make(Self.config, seed: seed)
        for p in net.params.all { p.randomize(&g, std: 0.4) }
        return net
    }

    func testVelocityNetVJPMatchesFiniteDifferences() throws {
        var g = GradCheck()
        let net = try randomNet(&g)
        let B = 3, D = 3
        var x = g.randoms(B * D)
        let t: [Float] = [0.9, 0.5, 0.0], y = [0, 1, 2]
        let u = g.randoms(B * D)
        let (_, dx) = net.vjp(x, t: t, y: y, cotangent: u)
        x.withUnsafeMutableBufferPointer { xp in
            g.check("u^T dv/dx", value: xp.baseAddress!, count: B * D, analytic: dx) {
                let v = net.velocity(Array(xp), t: t, y: y)
                return v.withUnsafeBufferPointer { GradCheck.project($0.baseAddress!, u) }
            }
        }
    }

    /// One backward step of the lean adjoint equals Phi (a - 2 h J^T a), J^T a by finite differences.
    func testLeanAdjointStepUsesTheVJPOfTheBase() throws {
        var g = GradCheck()
        let net = try randomNet(&g)
        let B = 2, D = 3
        let times: [Float] = [1, 0.6, 0]
        let traj = g.randoms(B * 3 * D)
        let terminal = g.randoms(B * D)
        let offset = 0.5
        let (adj, vb) = AdjointMatching.leanAdjoint(reference: net, trajectory: traj, times: times, labels: [0, 1], terminal: terminal, offset: offset)
        // step k = 1: from the state at t = 0 (slot 2)
        let x2 = Sampler.slice(traj, batch: B, slots: 3, slot: 2, dim: D)
        let phi1 = (1 - 0.6 + offset) / (1 + offset), h1 = 0.6
        let jta = numericVJP(net, x2, t: 0, y: [0, 1], u: terminal)
        let a1 = (0..<(B * D)).map { phi1 * (Double(terminal[$0]) - 2 * h1 * jta[$0]) }
        for b in 0..<B { for d in 0..<D { XCTAssertEqual(Double(adj[(b * 2 + 1) * D + d]), a1[b * D + d], accuracy: 2e-3 * (abs(a1[b * D + d]) + 1)) } }
        // step k = 0: from slot 1 at t = 0.6
        let x1 = Sampler.slice(traj, batch: B, slots: 3, slot: 1, dim: D)
        let phi0 = offset / (1 - 0.6 + offset), h0 = 0.4
        let jta1 = numericVJP(net, x1, t: 0.6, y: [0, 1], u: a1.map { Float($0) })
        for b in 0..<B { for d in 0..<D {
            let e = phi0 * (a1[b * D + d] - 2 * h0 * jta1[b * D + d])
            XCTAssertEqual(Double(adj[(b * 2) * D + d]), e, accuracy: 2e-3 * (abs(e) + 1))
        } }
        // v_base at slot 1 and slot 0
        let v1 = net.velocity(x1, t: [0.6, 0.6], y: [0, 1])
        for b in 0..<B { for d in 0..<D { XCTAssertEqual(vb[(b * 2 + 1) * D + d], v1[b * D + d], accuracy: 1e-5) } }
    }

    func numericVJP(_ net: VelocityNet, _ x: [Float], t: Float, y: [Int], u: [Float]) -> [Double] {
        let B = y.count, D = x.count / B
        var out = [Double](repeating: 0, count: x.count)
        let h: Float = 1e-2
        for i in 0..<x.count {
            var xp = x, xm = x
            xp[i] += h; xm[i] -= h
            let vp = net.velocity(xp, t: [Float](repeating: t, count: B), y: y)
            let vm = net.velocity(xm, t: [Float](repeating: t, count: B), y: y)
            let b = i / D
            var s = 0.0
            for d in 0..<D { s += Double(u[b * D + d]) * Double(vp[b * D + d] - vm[b * D + d]) / (2 * Double(h)) }
            out[i] = s
        }
        return out
    }

    /// A tiny buffer from a random policy with any sampler, scored with a quadratic reward.
    func buffer(_ net: VelocityNet, sampler: Sampler, n: Int = 4) throws -> RolloutBuffer {
        let res = sampler.sample(model: net, labels: (0..<n).map { $0 % 2 }, ids: (0..<n).map { Int64($0) }, seed: 5, record: true)
        var r = Record()
        let S = sampler.steps, D = 3
        r["x"] = Tensor(res.x, shape: [n, 1, 1, D])
        r["y"] = Tensor((0..<n).map { Int64($0 % 2) }, shape: [n])
        r["group"] = Tensor((0..<n).map { Int64($0 / 2) }, shape: [n])
        r["traj.x"] = Tensor(res.trajectory!, shape: [n, S + 1, 1, 1, D])
        r["traj.t"] = Tensor(res.times, shape: [S + 1])
        r["traj.logp"] = Tensor(res.logProbs!, shape: [n, S])
        r["reward"] = Tensor((0..<n).map { b in (0..<D).reduce(Float(0)) { $0 - res.x[b * D + $1] * res.x[b * D + $1] } }, shape: [n])
        r["reward.grad"] = Tensor(res.x.map { -2 * $0 }, shape: [n, 1, 1, D])
        r.metadata = sampler.settings
        return try RolloutBuffer.make([r], nullLabel: 2)
    }

    /// dL/dtheta of an objective's minibatch loss (through dL/dv and the net's backward) against
    /// finite differences of the loss itself.
    func checkObjective(_ objective: RLObjective, sampler: Sampler, label: String, eps: Float = 3e-3, rtol: Double = 3e-3) throws {
        var g = GradCheck()
        g.eps = eps
        g.rtol = rtol
        let policy = try randomNet(&g)
        let reference = try randomNet(&g, seed: 4)
        for (p, q) in zip(policy.params.all, reference.params.all) { p.values = q.values.map { $0 + Float(g.randoms(1, std: 0.05)[0]) } }
        let buf = try buffer(policy, sampler: sampler)
        let ctx = RLContext(model: policy, reference: reference, sampler: try buf.sampler(), buffer: buf)
        try objective.prepare(ctx)
        let samples = [0, 1, 2, 3]
        let rng0 = CounterRNG(seed: 9, stream: 1)
        // move the policy off the start point so ratios != 1 and the KL is non-trivial
        for p in policy.params.all { p.values = p.values.map { $0 * 1.02 } }
        policy.params.zeroGrad()
        var rng = rng0
        _ = try objective.accumulateGradients(ctx, samples: samples, rng: &rng)
        let names = ["final_layer.linear.weight", "blocks.0.fc1.weight", "input_proj.weight"]
        let grads = names.map { policy.params[$0]!.grads }  // before the loss calls below accumulate more
        for (name, analytic) in zip(names, grads) {
            let p = policy.params[name]!
            g.check("\(label) \(name)", value: p.value, count: p.count, analytic: analytic) {
                var r = rng0
                let l = try! objective.accumulateGradients(ctx, samples: samples, rng: &r)
                return (l, abs(l))
            }
        }
    }

    func testAdjointMatchingLossGradient() throws {
        var o = AdjointMatching.Options()
        o.lambda = 2; o.clipQuantile = 1; o.timestepFraction = 0.5
        try checkObjective(AdjointMatching(options: o), sampler: try Sampler(kind: .memorylessLL, steps: 6), label: "am")
    }

    func testGRPOLossGradient() throws {
        for ratioNorm in [false, true] {
            var o = GRPO.Options()
            o.beta = 0.7; o.clipRange = 100; o.ratioNorm = ratioNorm
            try checkObjective(GRPO(options: o), sampler: try Sampler(kind: .flowgrpo, steps: 5), label: "grpo ratio-norm \(ratioNorm)")
        }
        // an active clip: rows on the clipped side contribute no gradient (the loss is flat there)
        var oc = GRPO.Options()
        oc.beta = 0; oc.clipRange = 0.003
        let clippedObjective = GRPO(options: oc)
        try checkObjective(clippedObjective, sampler: try Sampler(kind: .flowgrpo, steps: 5), label: "grpo clipped", eps: 1e-3, rtol: 2e-2)  // piecewise: small steps, looser tolerance
        let d = Dictionary(uniqueKeysWithValues: clippedObjective.diagnostics())
        XCTAssertGreaterThan(d["clip_frac"]!, 0.2, "the clip is active on some rows")
        // with classifier-free guidance the gradient flows through both branches
        var o = GRPO.Options()
        o.beta = 0.3; o.clipRange = 100
        let guided = try Sampler(kind: .cps, steps: 4, guidance: Guidance(scale: 2, nullLabel: 2))
        try checkObjective(GRPO(options: o), sampler: guided, label: "grpo cfg")
    }

    /// With a vanishing clip range every row counts as clipped (clip_frac = 1) and gradients stay
    /// finite. (Which rows keep a gradient is covered by the loss-gradient checks above only with
    /// the clip inactive.)
    func testGRPOClipFractionAndFiniteGradientsWithTinyClipRange() throws {
        var g = GradCheck()
        let policy = try randomNet(&g)
        let sampler = try Sampler(kind: .flowgrpo, steps: 5)
        let buf = try buffer(policy, sampler: sampler)
        var o = GRPO.Options()
        o.beta = 0; o.clipRange = 1e-9
        let obj = GRPO(options: o)
        let ctx = RLContext(model: policy, reference: policy, sampler: sampler, buffer: buf)
        try obj.prepare(ctx)
        for p in policy.params.all { p.values = p.values.map { $0 * 1.05 } }
        policy.params.zeroGrad()
        var rng = CounterRNG(seed: 1)
        _ = try obj.accumulateGradients(ctx, samples: [0, 1, 2, 3], rng: &rng)
        let d = Dictionary(uniqueKeysWithValues: obj.diagnostics())
        XCTAssertEqual(d["clip_frac"]!, 1, accuracy: 1e-12)
        XCTAssertTrue(policy.params.all.allSatisfy { $0.grads.allSatisfy { $0.isFinite } })
    }

    /// Chunked re-forward/backward gives the gradients of one big batch, with and without CFG.
    func testTrainingVelocityChunksMatchOneBatch() throws {
        var g = GradCheck()
        let net = try randomNet(&g)
        let rows = 7, D = 3
        let x = g.randoms(rows * D), dv = g.randoms(rows * D)
        let t: [Float] = [1, 0.9, 0.7, 0.5, 0.3, 0.2, 0.1], y = [0, 1, 0, 1, 1, 0, 2]
        for guidance in [nil, Guidance(scale: 1.7, nullLabel: 2, interval: 0.25...0.95)] {
            var grads: [[[Float]]] = []
            var vs: [[Float]] = []
            for chunk in [256, 2] {
                net.params.zeroGrad()
                let tv = TrainingVelocity(model: net, guidance: guidance)
                tv.chunk = chunk
                vs.append(tv.forward(x, t: t, y: y))
                tv.backward(dv)
                grads.append(net.params.all.map(\.grads))
            }
            for (a, b) in zip(grads[0], grads[1]) { for (u, w) in zip(a, b) { XCTAssertEqual(u, w, accuracy: 1e-5 * (abs(u) + 1)) } }
            // the guided velocity equals the sampler's
            if let guidance {
                let s = try Sampler(kind: .euler, times: [1, 0.5, 0], guidance: guidance)
                for r in 0..<rows {
                    let v = s.velocity(model: net, x: Array(x[(r * D)..<((r + 1) * D)]), labels: [y[r]], t: t[r], batch: 1)
                    for d in 0..<D { XCTAssertEqual(vs[0][r * D + d], v[d], accuracy: 1e-5) }
                }
            }
        }
    }

    /// DRL's formulas typed in DRL's time tau (data at 1) against ours (noise at 1).
    func testTimeConventionsMatchDRL() throws {
        let S = 10
        let times = TimeGrid.make(steps: S)
        let delta = 1.0 / Double(S), eps = delta
        for k in 0..<S {
            let tau = Double(k) / Double(S)   // DRL grid t_k = k/K
            XCTAssertEqual(AdjointMatching.drlTime(times[k]), tau, accuracy: 1e-6)
            let sigmaDRL = (2 * (1 - tau + eps) / (tau + delta)).squareRoot()
            XCTAssertEqual(AdjointMatching.sigma(times[k], offset: delta), sigmaDRL, accuracy: 1e-5)
            let phiDRL = (tau + delta) / (tau + 1 / Double(S) + delta)
            XCTAssertEqual(AdjointMatching.u(times[k], offset: delta) / AdjointMatching.u(times[k + 1], offset: delta), phiDRL, accuracy: 1e-6)
        }
        // the memoryless-ll sampler's drift coefficient on x is DRL's Phi (eta = 1)
        let sampler = try Sampler(kind: .memorylessLL, steps: S)
        for k in 0..<(S - 1) {
            let phi = AdjointMatching.u(times[k], offset: delta) / AdjointMatching.u(times[k + 1], offset: delta)
            XCTAssertEqual(sampler.gaussianStep(k)!.a, phi, accuracy: 1e-9)
        }
        // strata: DRL's t < 0.6 is the noisy part, i.e. our t > 0.4
        let (low, high) = AdjointMatching.strata(times: times, split: 0.6)
        XCTAssertEqual(low, [0, 1, 2, 3, 4, 5])
        XCTAssertEqual(high, [6, 7, 8, 9])
        XCTAssertTrue(low.allSatisfy { times[$0] > 0.4 })
        // a subset of ceil(0.4 S) = 4 steps, 2 from each stratum
        let am = AdjointMatching()
        am.setUpForTesting(times: times)
        var rng = CounterRNG(seed: 3)
        for _ in 0..<20 {
            let ks = am.subset(&rng)
            XCTAssertEqual(ks.count, 4)
            XCTAssertEqual(ks.filter { low.contains($0) }.count, 2)
            XCTAssertEqual(Set(ks).count, 4)
        }
    }

    func testOutlierThresholdFollowsDRLRule() throws {
        // first minibatch sets tau to q_alpha; next: rho tau + (1 - rho) min(q, c tau)
        var o = AdjointMatching.Options()
        o.clipQuantile = 0.5; o.clipRho = 0.9; o.clipCap = 5
        XCTAssertEqual(Stats.quantile([1, 2, 3, 4], 0.5), 2.5)
        XCTAssertEqual(Stats.quantile([1, 2, 3, 4, 5], 0.9), 4.6, accuracy: 1e-12)
        let am = AdjointMatching(options: o)
        try am.restore([AdjointMatching.thresholdKey: "2.0"])
        XCTAssertEqual(am.threshold, 2.0)
        XCTAssertEqual(am.state()[AdjointMatching.thresholdKey], "2.0")
        XCTAssertThrowsError(try am.restore([AdjointMatching.thresholdKey: "nan"]))
    }
}

extension AdjointMatching {
    func setUpForTesting(times: [Float]) {
        prepareTimesForTesting(times)
    }
}
