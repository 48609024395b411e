import Foundation
import XCTest
import Shared

/// CRD and DiffusionNFT: exact centring, gradient checks, snapshot schedules, and the tilted toy.
final class RLForwardProcessTests: XCTestCase {
    static let config = RLGradientTests.config  // [1, 1, 3], 2 classes

    func randomNet(_ g: inout GradCheck, seed: UInt64 = 3) throws -> VelocityNet {
        let net = try VelocityNet.make(Self.config, seed: seed)
        for p in net.params.all { p.randomize(&g, std: 0.4) }
        return net
    }

    /// A final-samples buffer: n samples in groups of `group`, labels alternating per group.
    func buffer(n: Int = 8, group: Int = 4, seed: UInt64 = 5, rewardShift: ((Int64) -> Float)? = nil) throws -> RolloutBuffer {
        var g = CounterRNG(seed: seed, stream: 2)
        let D = 3
        let x = (0..<(n * D)).map { _ in Float(g.normal()) }
        let groups = (0..<n).map { Int64($0 / group) }
        var r = Record()
        r["x"] = Tensor(x, shape: [n, 1, 1, D])
        r["y"] = Tensor(groups.map { $0 % 2 }, shape: [n])
        r["group"] = Tensor(groups, shape: [n])
        r["reward"] = Tensor((0..<n).map { b in x[b * D] - 0.5 * x[b * D + 1] + (rewardShift?(groups[b]) ?? 0) }, shape: [n])
        return try RolloutBuffer.makeFinal([r], nullLabel: 2)
    }

    func context(_ policy: VelocityNet, _ reference: VelocityNet, _ buf: RolloutBuffer) throws -> RLContext {
        RLContext(model: policy, reference: reference, sampler: try Sampler(kind: .euler, times: [1, 0]), buffer: buf)
    }

    func crdOptions(kl: Double = 0.1, cfg: Double = 4.5) -> CRD.Options {
        var o = CRD.Options()
        o.common.timesteps = 3
        o.common.klWeight = kl
        o.common.klCFG = cfg
        return o
    }

    // MARK: centring

    func testCRDCentredLossIgnoresAConstantOnTheImplicitRewards() {
        let r = [0.3, -0.2, 0.5, 1.1, -0.7, 0.05], p = [0.9, 0.1, 0.4, 0.6, 0.5, 0.2]
        let groups = [[0, 1, 2], [3, 4, 5]]
        let a = CRD.centredLoss(implicit: r, target: p, groups: groups, beta: 0.7, scale: 5)
        let b = CRD.centredLoss(implicit: r.enumerated().map { $0.element + ($0.offset < 3 ? 12.5 : -3.25) }, target: p, groups: groups, beta: 0.7, scale: 5)
        let c = CRD.centredLoss(implicit: r.map { $0 + 4 }, target: p.map { $0 - 0.3 }, groups: groups, beta: 0.7, scale: 5)
        for other in [b, c] {
            XCTAssertEqual(a.loss, other.loss, accuracy: 1e-12)
            for j in 0..<r.count { XCTAssertEqual(a.dr[j], other.dr[j], accuracy: 1e-12) }
        }
        // each group's residuals sum to zero, so the detached mean has no gradient to lose
        XCTAssertEqual(a.dr[0] + a.dr[1] + a.dr[2], 0, accuracy: 1e-12)
    }

    /// Adding a constant per group to the rewards leaves the whole CRD update unchanged.
    func testCRDUpdateIsInvariantToPerGroupRewardShifts() throws {
        var g = GradCheck()
        let policy = try randomNet(&g), reference = try randomNet(&g, seed: 4)
        func grads(_ buf: RolloutBuffer) throws -> ([Float], Double) {
            let p = RLToy.copy(policy)
            let o = CRD(options: crdOptions())
            let ctx = try context(p, reference, buf)
            try o.prepare(ctx)
            o.old!.net.params.copyValues(from: reference.params)  // a non-trivial old snapshot
            p.params.zeroGrad()
            var rng = CounterRNG(seed: 9, stream: 1)
            let l = try o.accumulateGradients(ctx, samples: Array(0..<8), rng: &rng)
            return (p.params.all.flatMap { $0.grads }, l)
        }
        let (g0, l0) = try grads(try buffer())
        let (g1, l1) = try grads(try buffer(rewardShift: { $0 == 0 ? 7.5 : -120 }))
        XCTAssertEqual(l0, l1, accuracy: 1e-6 * abs(l0))
        let scale = g0.map { abs($0) }.max()!
        XCTAssertGreaterThan(scale, 0)
        for j in 0..<g0.count { XCTAssertEqual(g0[j], g1[j], accuracy: 1e-5 * scale) }
    }

    // MARK: gradient checks

    func checkObjective(_ objective: ForwardProcessObjective & RLObjective, label: String) throws {
        var g = GradCheck()
        g.eps = 3e-3
        g.rtol = 3e-3
        let policy = try randomNet(&g), reference = try randomNet(&g, seed: 4)
        for (p, q) in zip(policy.params.all, reference.params.all) { p.values = q.values.map { $0 + Float(g.randoms(1, std: 0.05)[0]) } }
        let buf = try buffer()
        let ctx = try context(policy, reference, buf)
        try objective.prepare(ctx)
        for p in policy.params.all { p.values = p.values.map { $0 * 1.05 } }  // policy != old snapshot
        objective.freezeWeights = true
        let samples = Array(0..<8), rng0 = CounterRNG(seed: 9, stream: 1)
        policy.params.zeroGrad()
        var rng = rng0
        _ = try objective.accumulateGradients(ctx, samples: samples, rng: &rng)
        let names = ["final_layer.linear.weight", "blocks.0.fc1.weight", "input_proj.weight"]
        let grads = names.map { policy.params[$0]!.grads }
        for (name, analytic) in zip(names, grads) {
            let p = policy.params[name]!
            g.check("\(label) \(name)", value: p.value, count: p.count, analytic: analytic) {
                var r = rng0
                let l = try! objective.accumulateGradients(ctx, samples: samples, rng: &r)
                return (l, abs(l))
            }
        }
    }

    func testCRDLossGradient() throws {
        try checkObjective(CRD(options: crdOptions()), label: "crd")
        var o = crdOptions(kl: 0.5, cfg: 1)
        o.adaptiveWeighting = false; o.rewardAdaptiveKL = false; o.beta = 2
        try checkObjective(CRD(options: o), label: "crd plain")
    }

    func testNFTLossGradient() throws {
        var o = DiffusionNFT.Options()
        o.common.timesteps = 3; o.common.klWeight = 0.3; o.common.klCFG = 3; o.beta = 0.5
        try checkObjective(DiffusionNFT(options: o), label: "nft")
    }

    // MARK: snapshots

    /// After k rounds each snapshot is the closed-form blend s_k = (prod d) theta_0 + sum_j (1 - d_j) prod_{l > j} d_l theta_j.
    func testSnapshotsFollowTheirDecaySchedules() throws {
        var g = GradCheck()
        let policy = try randomNet(&g), reference = try randomNet(&g, seed: 4)
        var o = crdOptions()
        o.common.oldDecay = try DecaySchedule(parsing: "0-0.2-0.1-0.9")
        o.samplingDecay = try DecaySchedule(parsing: "4-0-0.25-0.6")
        let crd = CRD(options: o)
        let opt = AdamW(policy.params, lr: 1e-2, weightDecay: 0)
        let ema = EMA(policy.params, decay: 0.9)
        var topt = RLTrainOptions()
        topt.minibatch = 4; topt.lr = 1e-2
        let theta0 = policy.params.all.flatMap { $0.values }
        var thetas: [[Float]] = [], steps: [Int] = []
        // The checkpoint's step counts pretraining too (a base trained for 4000 steps); schedules
        // count RL optimizer steps only.
        var step = 4000
        for round in 0..<5 {
            let buf = try buffer(seed: UInt64(10 + round))
            let trainer = RLTrainer(model: policy, reference: reference, optimizer: opt, ema: ema, step: step, options: topt)
            _ = try trainer.run(objective: crd, buffer: buf)
            step = trainer.step
            steps.append(opt.stepCount)
            thetas.append(policy.params.all.flatMap { $0.values })
        }
        XCTAssertEqual(steps, [2, 4, 6, 8, 10])
        XCTAssertEqual(step, 4010)
        for (snap, sched) in [(crd.old!, o.common.oldDecay), (crd.sampling!, o.samplingDecay)] {
            let d = steps.map { sched.value(at: $0) }
            let got = snap.net.params.all.flatMap { $0.values }
            for i in stride(from: 0, to: got.count, by: 7) {
                var want = Double(theta0[i]) * d.reduce(1, *)
                for j in 0..<d.count { want += (1 - d[j]) * d[(j + 1)...].reduce(1, *) * Double(thetas[j][i]) }
                XCTAssertEqual(Double(got[i]), want, accuracy: 1e-5, "\(snap.prefix) element \(i)")
            }
        }
        XCTAssertEqual(o.samplingDecay.value(at: 2), 0)
        XCTAssertEqual(o.samplingDecay.value(at: 10), 0.6)
        XCTAssertEqual(o.common.oldDecay.value(at: 4), 0.6, accuracy: 1e-12)
    }

    // MARK: the tilted toy

    /// Rounds of: ODE rollouts of the objective's sampling snapshot in groups, linear reward, one
    /// rlstep round. Returns the policy and the reward of its plain ODE samples.
    func runToy(_ objective: ForwardProcessObjective & RLObjective, sampling: () -> VelocityNet, rounds: Int) throws -> VelocityNet {
        let policy = RLToy.copy(RLToy.base)
        let opt = AdamW(policy.params, lr: 3e-3, weightDecay: 0)
        let ema = EMA(policy.params, decay: 0.9)
        var topt = RLTrainOptions()
        topt.minibatch = 64; topt.lr = 3e-3
        let sampler = try Sampler(kind: .euler, steps: 8)
        let reward = RLToy.Reward()
        var step = 0
        for round in 0..<rounds {
            let n = 128
            let src = round == 0 ? policy : sampling()
            let x = RLToy.finalSamples(model: src, sampler: sampler, n: n, seed: UInt64(100 + round))
            var r = Record()
            r["x"] = Tensor(x, shape: [n, 1, 1, 2])
            r["group"] = Tensor((0..<n).map { Int64($0 / 16) }, shape: [n])
            r["reward"] = Tensor((0..<n).map { reward.value(x, $0) }, shape: [n])
            let buf = try RolloutBuffer.makeFinal([r], nullLabel: 0)
            let trainer = RLTrainer(model: policy, reference: RLToy.base, optimizer: opt, ema: ema, step: step, options: topt)
            _ = try trainer.run(objective: objective, buffer: buf)
            step = trainer.step
        }
        return policy
    }

    func meanReward(_ net: VelocityNet) throws -> (reward: Double, shift: Double) {
        let sampler = try Sampler(kind: .euler, steps: 20)
        let x = RLToy.finalSamples(model: net, sampler: sampler, n: 2000, seed: 77)
        let base = RLToy.finalSamples(model: RLToy.base, sampler: sampler, n: 2000, seed: 77)
        let m = RLToy.moments(x).mean, mb = RLToy.moments(base).mean
        let c = RLToy.Reward().c
        let rw = Double(c[0]) * m[0] + Double(c[1]) * m[1]
        // distance to the reference: how far the sample mean moved
        return (rw, ((m[0] - mb[0]) * (m[0] - mb[0]) + (m[1] - mb[1]) * (m[1] - mb[1])).squareRoot())
    }

    func testCRDRaisesTheRewardAndTheKLAnchorHoldsItNearTheReference() throws {
        let start = try meanReward(RLToy.base)
        var results: [(reward: Double, shift: Double)] = []
        for kl in [0.0, 1.0] {
            var o = CRD.Options()
            o.common.timesteps = 4; o.common.klWeight = kl; o.common.klCFG = 1
            let crd = CRD(options: o)
            let net = try runToy(crd, sampling: { crd.sampling!.net }, rounds: 40)
            results.append(try meanReward(net))
        }
        print("CRD toy: start \(start), KL off \(results[0]), KL on \(results[1])")
        XCTAssertGreaterThan(results[0].reward, start.reward + 0.1)
        XCTAssertGreaterThan(results[1].reward, start.reward + 0.02)
        XCTAssertLessThan(results[1].shift, 0.7 * results[0].shift)
    }

    func testNFTRaisesTheRewardAndTheKLAnchorHoldsItNearTheReference() throws {
        let start = try meanReward(RLToy.base)
        var results: [(reward: Double, shift: Double)] = []
        for kl in [0.0, 1.0] {
            var o = DiffusionNFT.Options()
            o.common.timesteps = 4; o.common.klWeight = kl
            let nft = DiffusionNFT(options: o)
            let net = try runToy(nft, sampling: { nft.old!.net }, rounds: 40)
            results.append(try meanReward(net))
        }
        print("NFT toy: start \(start), KL off \(results[0]), KL on \(results[1])")
        XCTAssertGreaterThan(results[0].reward, start.reward + 0.1)
        XCTAssertGreaterThan(results[1].reward, start.reward + 0.02)
        XCTAssertLessThan(results[1].shift, 0.7 * results[0].shift)
    }
}
