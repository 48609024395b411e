import Foundation
import XCTest
import Shared

final class RLGRPOTests: XCTestCase {
    /// GRPO on the toy (flowgrpo SDE, eta 0.7, 10 steps, groups of 8, linear reward): the mean
    /// reward rises, and with beta > 0 the policy ends closer to the reference.
    func testGRPORaisesRewardAndBetaStaysCloser() throws {
        let base = RLToy.base
        let threads = BLAS.threads
        BLAS.setThreads(1)  // tiny matrices
        defer { BLAS.setThreads(threads) }
        let t0 = Date()
        defer { print(String(format: "GRPO toy: %.1f s after the base", Date().timeIntervalSince(t0))) }
        let sampler = try Sampler(kind: .flowgrpo, steps: 10)
        let reward = RLToy.Reward(c: [1, -0.5], a: 0)
        let nEval = 4000
        func meanReward(_ x: [Float]) -> Double { (0..<(x.count / 2)).reduce(0.0) { $0 + Double(reward.value(x, $1)) } / Double(x.count / 2) }
        let xb = RLToy.finalSamples(model: base, sampler: sampler, n: nEval, seed: 77)
        let baseReward = meanReward(xb), baseMean = RLToy.moments(xb).mean

        func train(beta: Double) throws -> (reward: Double, shift: Double, kl: Double) {
            let policy = RLToy.copy(base)
            var o = RLTrainOptions()
            o.epochs = 1; o.minibatch = 32; o.lr = 3e-3; o.maxGradNorm = 1; o.emaDecay = 0.99
            let optimizer = AdamW(policy.params, lr: o.lr, weightDecay: 0)
            let ema = EMA(policy.params, decay: o.emaDecay)
            var opts = GRPO.Options()
            opts.beta = beta; opts.clipRange = 0.2
            var step = 0
            var lastKL = 0.0
            for round in 0..<30 {
                let rec = RLToy.rollouts(model: policy, sampler: sampler, n: 128, seed: UInt64(round + 1), group: 8, reward: reward, withGrad: false)
                let buffer = try RolloutBuffer.make([rec], nullLabel: 0)
                let trainer = RLTrainer(model: policy, reference: base, optimizer: optimizer, ema: ema, step: step, options: o)
                let m = Dictionary(uniqueKeysWithValues: try trainer.run(objective: GRPO(options: opts), buffer: buffer))
                step = trainer.step
                lastKL = m["kl"]!
                if round % 10 == 0 || round == 29 {
                    print(String(format: "GRPO beta %.1f round %d: reward %.4f loss %.5f kl %.5f ratio [%.3f, %.3f] clip %.3f logp err %.2e", beta, round,
                                 m["reward_mean"]!, m["loss"]!, m["kl"]!, m["ratio_min"]!, m["ratio_max"]!, m["clip_frac"]!, m["logp_old_max_abs_err"]!))
                }
                if round == 0 { XCTAssertLessThan(m["logp_old_max_abs_err"]!, 1e-4, "recomputed log-probs of the sampling policy match the recorded ones") }
            }
            let xf = RLToy.finalSamples(model: policy, sampler: sampler, n: nEval, seed: 78)
            let mf = RLToy.moments(xf).mean
            let shift = ((mf[0] - baseMean[0]) * (mf[0] - baseMean[0]) + (mf[1] - baseMean[1]) * (mf[1] - baseMean[1])).squareRoot()
            return (meanReward(xf), shift, lastKL)
        }
        let free = try train(beta: 0)
        let anchored = try train(beta: 5)
        print("GRPO toy: base reward \(baseReward); beta 0 -> reward \(free.reward), mean shift \(free.shift), kl \(free.kl); beta 5 -> reward \(anchored.reward), shift \(anchored.shift), kl \(anchored.kl)")
        XCTAssertGreaterThan(free.reward, baseReward + 0.3)
        XCTAssertGreaterThan(anchored.reward, baseReward)
        XCTAssertLessThan(anchored.shift, free.shift)
        XCTAssertLessThan(anchored.kl, free.kl)
    }

    func testAdvantagesGroupGlobalAndClip() throws {
        let r: [Float] = [1, 2, 3, 5, 5, 5, 0, 10]
        let g: [Int64] = [0, 0, 0, 1, 1, 1, 2, 2]
        let (a, _) = try GRPO.advantages(rewards: r, groups: g, norm: .group, clip: 5)
        let s0 = (2.0 / 3).squareRoot()
        XCTAssertEqual(a[0], -1 / (s0 + 1e-4), accuracy: 1e-9)
        XCTAssertEqual(a[2], 1 / (s0 + 1e-4), accuracy: 1e-9)
        XCTAssertEqual(a[3], 0); XCTAssertEqual(a[5], 0)  // constant group -> all zero
        XCTAssertEqual(a[7], 5 / (5 + 1e-4), accuracy: 1e-9)
        let (c, n) = try GRPO.advantages(rewards: r, groups: g, norm: .group, clip: 0.5)
        XCTAssertEqual(c[0], -0.5); XCTAssertEqual(c[7], 0.5); XCTAssertEqual(n, 4)
        let (gl, _) = try GRPO.advantages(rewards: r, groups: nil, norm: .global, clip: 5)
        let m = r.reduce(0, +) / 8
        let sd = (r.map { Double(($0 - m) * ($0 - m)) }.reduce(0, +) / 8).squareRoot()
        XCTAssertEqual(gl[7], (10 - Double(m)) / (sd + 1e-4), accuracy: 1e-6)
        let (gs, _) = try GRPO.advantages(rewards: r, groups: g, norm: .globalStd, clip: 5)
        XCTAssertEqual(gs[0], -1 / (sd + 1e-4), accuracy: 1e-6)
        XCTAssertThrowsError(try GRPO.advantages(rewards: r, groups: nil, norm: .group, clip: 5))
    }
}
