import Foundation
import XCTest
import Shared

final class RLAdjointMatchingTests: XCTestCase {
    /// The outlier rule, step by step: the first minibatch sets tau to the quantile; later ones
    /// move it by rho toward the quantile, capped at cap * tau (a spike cannot drag it up); losses at
    /// or above tau, and non-finite ones, are masked.
    func testOutlierThresholdFollowsDRLsRule() {
        var tau: Double?
        let first = (1...10).map(Double.init)
        let keep1 = AdjointMatching.outlierMask(first, threshold: &tau, quantile: 0.9, rho: 0.9, cap: 5)
        let q1 = Stats.quantile(first, 0.9)
        XCTAssertEqual(tau, q1)
        XCTAssertEqual(keep1, first.map { $0 < q1 })
        XCTAssertEqual(keep1.filter { !$0 }.count, 1, "one loss of ten lies at or above the 0.9 quantile")
        // a spike: the quantile is huge, the cap holds the move to (1 - rho) * cap * tau
        let spiky = (1...9).map(Double.init) + [1e6, .nan]
        let q2 = Stats.quantile(spiky.filter { $0.isFinite }, 0.9)
        XCTAssertGreaterThan(q2, 5 * q1)
        let keep2 = AdjointMatching.outlierMask(spiky, threshold: &tau, quantile: 0.9, rho: 0.9, cap: 5)
        XCTAssertEqual(tau!, 0.9 * q1 + 0.1 * 5 * q1, accuracy: 1e-12)
        XCTAssertEqual(keep2, spiky.map { $0.isFinite && $0 < tau! })
        XCTAssertFalse(keep2.last!, "NaN is masked")
        // below the cap, tau moves a tenth of the way to the quantile
        let calm = (1...10).map { Double($0) / 10 }
        let before = tau!
        _ = AdjointMatching.outlierMask(calm, threshold: &tau, quantile: 0.9, rho: 0.9, cap: 5)
        XCTAssertEqual(tau!, 0.9 * before + 0.1 * Stats.quantile(calm, 0.9), accuracy: 1e-12)
        // quantile 1 switches clipping off but still masks non-finite losses
        var off: Double?
        XCTAssertEqual(AdjointMatching.outlierMask([1, 100, .infinity], threshold: &off, quantile: 1, rho: 0.9, cap: 5), [true, true, false])
        XCTAssertNil(off)
    }

    /// Adjoint matching on the toy: base = flow to N(0.5, 0.8^2) per dim, reward
    /// r = c.x - (a/2)|x|^2, lambda = 1. The target p_base exp(lambda r) is computed by
    /// self-normalised importance weighting of base samples from the same sampler (so sampler
    /// and base-fit errors cancel); the analytic Gaussian answer is printed beside it.
    func testAdjointMatchingReachesTiltedGaussian() throws {
        let base = RLToy.base
        let threads = BLAS.threads
        BLAS.setThreads(1)  // tiny matrices
        defer { BLAS.setThreads(threads) }
        let t0 = Date()
        defer { print(String(format: "AM toy: %.1f s after the base", Date().timeIntervalSince(t0))) }
        let policy = RLToy.copy(base)
        let sampler = try Sampler(kind: .memorylessLL, steps: 20)
        let reward = RLToy.Reward(c: [1, -0.5], a: 1)
        let lambda = 1.0
        // target by importance weighting of base samples
        let nEval = 20000
        let xb = RLToy.finalSamples(model: base, sampler: sampler, n: nEval, seed: 999)
        let w = (0..<nEval).map { exp(lambda * Double(reward.value(xb, $0))) }
        let baseM = RLToy.moments(xb), target = RLToy.moments(xb, weights: w)
        let prec = 1 / Double(RLToy.s * RLToy.s) + lambda * Double(reward.a)
        let analytic = (0..<2).map { (Double(RLToy.m) / Double(RLToy.s * RLToy.s) + lambda * Double(reward.c[$0])) / prec }
        print("AM toy: base mean \(baseM.mean) var \(baseM.variance); tilted target (IS) mean \(target.mean) var \(target.variance); analytic mean \(analytic) var \(1 / prec)")

        var o = RLTrainOptions()
        o.epochs = 1; o.minibatch = 64; o.lr = 2e-3; o.maxGradNorm = 1; o.emaDecay = 0.99
        let optimizer = AdamW(policy.params, lr: o.lr, weightDecay: 0)
        let ema = EMA(policy.params, decay: o.emaDecay)
        var opts = AdjointMatching.Options()
        opts.lambda = lambda
        let objective = AdjointMatching(options: opts)
        var step = 0
        let rounds = 150
        for round in 0..<rounds {
            let rec = RLToy.rollouts(model: policy, sampler: sampler, n: 256, seed: UInt64(round + 1), reward: reward, withGrad: true)
            let buffer = try RolloutBuffer.make([rec], nullLabel: 0)
            let trainer = RLTrainer(model: policy, reference: base, optimizer: optimizer, ema: ema, step: step, options: o)
            let m = try trainer.run(objective: objective, buffer: buffer)
            step = trainer.step
            if round % 30 == 0 || round == rounds - 1 {
                let d = Dictionary(uniqueKeysWithValues: m)
                print(String(format: "AM round %d: reward %.4f loss %.4f kl %.4f outliers %.3f grad %.3f", round, d["reward_mean"]!, d["loss"]!, d["kl"]!, d["outlier_frac"]!, d["grad_norm"]!))
            }
        }
        let xf = RLToy.finalSamples(model: policy, sampler: sampler, n: nEval, seed: 4242)
        let got = RLToy.moments(xf)
        print("AM toy after \(rounds) rounds: mean \(got.mean) var \(got.variance)")
        for d in 0..<2 {
            XCTAssertEqual(got.mean[d], target.mean[d], accuracy: 0.06, "mean dim \(d)")
            XCTAssertEqual(got.variance[d], target.variance[d], accuracy: 0.06, "variance dim \(d)")
        }
        let averaged = RLToy.copy(policy)
        ema.apply(to: averaged.params)
        let ge = RLToy.moments(RLToy.finalSamples(model: averaged, sampler: sampler, n: nEval, seed: 4242))
        print("AM toy, EMA (0.99) weights: mean \(ge.mean) var \(ge.variance)")
        for d in 0..<2 {  // the averaged weights remove most of the last iterate's noise
            XCTAssertEqual(ge.mean[d], target.mean[d], accuracy: 0.04, "EMA mean dim \(d)")
            XCTAssertEqual(ge.variance[d], target.variance[d], accuracy: 0.04, "EMA variance dim \(d)")
        }
        // DRL samples the fine-tuned model with the plain ODE (App. F): same tilt, looser check.
        let ode = try Sampler(kind: .euler, steps: 50)
        let xo = RLToy.finalSamples(model: policy, sampler: ode, n: 8000, seed: 1)
        let xob = RLToy.finalSamples(model: base, sampler: ode, n: 8000, seed: 2)
        let odeTarget = RLToy.moments(xob, weights: (0..<8000).map { exp(lambda * Double(reward.value(xob, $0))) })
        let odeGot = RLToy.moments(xo)
        print("AM toy, Euler-50 ODE: mean \(odeGot.mean) var \(odeGot.variance); IS-tilted ODE base mean \(odeTarget.mean) var \(odeTarget.variance)")
        for d in 0..<2 {
            XCTAssertEqual(odeGot.mean[d], odeTarget.mean[d], accuracy: 0.12, "ODE mean dim \(d)")
            XCTAssertEqual(odeGot.variance[d], odeTarget.variance[d], accuracy: 0.12, "ODE variance dim \(d)")
        }
    }
}
