import Foundation
import Flow
import Numerics
import TensorStream

/// DiffusionNFT (docs/algorithms.md 2.3), forward-process on the final samples.
///
/// Per sample i and training time t (x_t = (1 - t) x0 + t eps):
///
///     p_i  = clip(A_i, -c, c) / (2c) + 1/2                         optimality probability, A group-normalised
///     v+   = (1 - beta) v_old + beta v_theta,   v- = (1 + beta) v_old - beta v_theta
///     x0+- = x_t - t v+-
///     l+-  = mean_d (x0+- - x0)^2 / sg(max(mean_d |x0+- - x0|, 1e-5))
///     L    = c mean_i (p_i l+ + (1 - p_i) l-) / beta  +  beta_KL mean_i mean_d (v_theta - v_ref^cfg)^2
///
/// averaged over the minibatch's training times. v_old is the old snapshot (which is also the
/// policy the next rollouts should come from); after the round it is blended toward the policy
/// with its decay schedule evaluated at the checkpoint's optimizer step.
public final class DiffusionNFT: ForwardProcessObjective, RLObjective, RLSnapshotHolder {
    public struct Options {
        public var common = ForwardProcessObjective.Common()
        /// beta_nft: how far the implicit policies sit from the old policy.
        public var beta = 1.0
        public init() {}
    }

    public let name = "nft"
    public let options: Options
    private var posSum = 0.0, negSum = 0.0, klSum = 0.0, nRows = 0

    public init(options: Options = Options()) {
        self.options = options
        super.init(common: options.common)
    }

    public func prepare(_ ctx: RLContext) throws { try prepareCommon(ctx, algo: "nft") }

    public func accumulateGradients(_ ctx: RLContext, samples: [Int], rng: inout CounterRNG) throws -> Double {
        let B = samples.count, T = common.timesteps
        let fwd = forwardMinibatch(ctx, samples: samples, rng: &rng)
        let (rows, vOld, vRef, useKL, tv, v) = (fwd.rows, fwd.vOld, fwd.vRef, fwd.useKL, fwd.policy, fwd.v)
        var dv = [Float](repeating: 0, count: v.count)
        let beta = options.beta, c = common.advantageClip
        let Dd = Double(D), n = Double(B * T)
        var total = 0.0
        var ep = [Double](repeating: 0, count: D), en = ep
        // this rank's rows: sample position rows.positions[jl] of the minibatch, row k * Bl + jl
        let Bl = rows.positions.count
        for k in 0..<T {
            for (jl, j) in rows.positions.enumerated() {
                let row = k * Bl + jl, o = row * D
                let t = Double(rows.t[row]), p = probability[samples[j]]
                var ap = 0.0, an = 0.0
                for d in 0..<D {
                    let vo = Double(vOld[o + d]), vt = Double(v[o + d]), xt = Double(rows.x[o + d]), x0 = Double(rows.x0[o + d])
                    ep[d] = xt - t * ((1 - beta) * vo + beta * vt) - x0
                    en[d] = xt - t * ((1 + beta) * vo - beta * vt) - x0
                    ap += abs(ep[d]); an += abs(en[d])
                }
                let wp = weight(max(ap / Dd, 1e-5)), wn = weight(max(an / Dd, 1e-5))
                var lp = 0.0, ln = 0.0, kl = 0.0
                for d in 0..<D { lp += ep[d] * ep[d]; ln += en[d] * en[d] }
                lp /= wp * Dd; ln /= wn * Dd
                total += c * (p * lp + (1 - p) * ln) / beta / n
                posSum += lp; negSum += ln
                for d in 0..<D {
                    // d x0+/d v_theta = -t beta, d x0-/d v_theta = +t beta
                    var g = c / beta / n * (p * 2 * ep[d] / (wp * Dd) * (-t * beta) + (1 - p) * 2 * en[d] / (wn * Dd) * (t * beta))
                    if useKL {
                        let e = Double(v[o + d]) - Double(vRef[o + d])
                        kl += e * e
                        g += common.klWeight * 2 * e / (Dd * n)
                    }
                    dv[o + d] = Float(g)
                }
                if useKL { total += common.klWeight * kl / Dd / n; klSum += kl / Dd }
                nRows += 1
            }
        }
        tv.backward(dv)
        // the whole minibatch's loss on every rank
        return try ctx.sum(total)
    }

    public func reduceDiagnostics(_ ctx: RLContext) throws {
        var v = [posSum, negSum, klSum, Double(nRows)]
        try ctx.sum(&v)
        posSum = v[0]; negSum = v[1]; klSum = v[2]; nRows = Int(v[3])
    }

    public func finishRound(_ ctx: RLContext, step: Int) throws {
        lastOldDecay = common.oldDecay.value(at: step)
        old?.blend(toward: ctx.model, decay: lastOldDecay)
    }

    public func diagnostics() -> [(String, Double)] {
        let n = Double(max(nRows, 1))
        return [("beta", options.beta)] + commonDiagnostics() + [
            ("loss_positive", nRows > 0 ? posSum / n : .nan), ("loss_negative", nRows > 0 ? negSum / n : .nan),
            ("kl", nRows > 0 && common.klWeight > 0 ? klSum / n : .nan), ("old_decay", lastOldDecay)]
    }

    public func state() -> [String: String] { [:] }
    public func restore(_ metadata: [String: String]) throws {}

    public func loadSnapshots(from record: Record, config: ModelConfig) throws {
        if let s = try PolicySnapshot.load(prefix: "nft.old", from: record, config: config) { old = s }
    }
    public var snapshotTensors: [(String, Tensor)] { old?.tensors ?? [] }
    public var samplingPrefix: String { "nft.old." }
}
