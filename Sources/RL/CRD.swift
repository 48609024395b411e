import Foundation
import Flow
import Numerics
import TensorStream

/// Centered Reward Distillation (docs/algorithms.md 4.2-4.5), forward-process on the final samples.
///
/// Per minibatch of whole groups and training time t (x_t = (1 - t) x0 + t eps, u = eps - x0):
///
///     r_i   = -mean_d[ (v_theta - u)^2 / w_theta - (v_old - u)^2 / w_old ]     w = sg(max(mean_d |v - u|, 1e-5)), or 1
///     p_i   = clip(A_i, -c, c) / (2c) + 1/2                                    A: group-normalised reward
///     e_i   = beta (r_i - sg(mean_g r)) - (p_i - mean_g p)                     centred within the sample's group g
///     L_pol = (c / beta) mean_i e_i^2
///     L_KL  = beta_KL mean_i (m + p_i (1 - m)) mean_d (v_theta - v_ref^cfg)^2,  m = kl_floor / beta_KL (or factor 1)
///
/// averaged over the minibatch's training times. v_old is the "old" snapshot, v_ref^cfg the
/// reference under guidance --kl-cfg. After the round the old and sampling snapshots are blended
/// toward the policy with their decay schedules evaluated at the checkpoint's optimizer step.
public final class CRD: ForwardProcessObjective, RLObjective, RLSnapshotHolder {
    public struct Options {
        public var common = ForwardProcessObjective.Common()
        /// beta_crd: scale of the implicit reward.
        public var beta = 1.0
        /// Self-normalised (adaptive) weighting of the implicit reward.
        public var adaptiveWeighting = true
        /// KL factor m + p_i (1 - m) per sample (else 1).
        public var rewardAdaptiveKL = true
        /// Absolute KL weight of a sample with p = 0 (m = klFloor / klWeight).
        public var klFloor = 1e-4
        public var samplingDecay = DecaySchedule(startStep: 75, startValue: 0, slope: 0.0075, endValue: 0.999)
        public init() {
            common.klWeight = 0.1
            common.klCFG = 4.5
            common.oldDecay = DecaySchedule(startStep: 0, startValue: 0.25, slope: 0.005, endValue: 0.999)
        }
    }

    public let name = "crd"
    public let options: Options
    public var sampling: PolicySnapshot?
    private var polSum = 0.0, klSum = 0.0, klLossSum = 0.0, rMeanSum = 0.0, rcStdSum = 0.0, oldDevSum = 0.0, corrSum = 0.0
    private var nK = 0, nRows = 0, nCorr = 0
    private var lastSamplingDecay = Double.nan

    public init(options: Options = Options()) {
        self.options = options
        super.init(common: options.common)
    }

    public func prepare(_ ctx: RLContext) throws {
        try prepareCommon(ctx, algo: "crd")
        if sampling == nil { sampling = try PolicySnapshot(prefix: "crd.sampling", copying: ctx.model) }
    }

    /// The centred reward-matching loss of one time slice and dL/dr_i (public for tests).
    /// `groups` partitions the indices of `implicit`/`target`; the implicit mean is a constant (sg).
    public static func centredLoss(implicit r: [Double], target p: [Double], groups: [[Int]], beta: Double, scale: Double)
        -> (loss: Double, dr: [Double], centred: [Double]) {
        let B = Double(r.count)
        var loss = 0.0
        var dr = [Double](repeating: 0, count: r.count), rc = dr
        for g in groups {
            let mr = g.reduce(0) { $0 + r[$1] } / Double(g.count)
            let mp = g.reduce(0) { $0 + p[$1] } / Double(g.count)
            for j in g {
                rc[j] = r[j] - mr
                let e = beta * rc[j] - (p[j] - mp)
                loss += scale / beta * e * e / B
                dr[j] = scale / beta * 2 * beta * e / B
            }
        }
        return (loss, dr, rc)
    }

    public func accumulateGradients(_ ctx: RLContext, samples: [Int], rng: inout CounterRNG) throws -> Double {
        let B = samples.count, T = common.timesteps
        let fwd = forwardMinibatch(ctx, samples: samples, rng: &rng)
        let (rows, vOld, vRef, useKL, tv, v) = (fwd.rows, fwd.vOld, fwd.vRef, fwd.useKL, fwd.policy, fwd.v)
        // this rank's rows: sample position rows.positions[jl] of the minibatch, row k * Bl + jl
        let Bl = rows.positions.count
        var dv = [Float](repeating: 0, count: v.count)
        // local group partition of the minibatch
        var local: [Int: [Int]] = [:]
        for (j, i) in samples.enumerated() { local[groupOf[i], default: []].append(j) }
        let groups = local.keys.sorted().map { local[$0]! }
        let p = samples.map { probability[$0] }
        let Dd = Double(D), Td = Double(T)
        let m = useKL ? options.klFloor / common.klWeight : 0
        // The implicit rewards r[k * B + j] of every sample, on every rank (each has one owner:
        // the sum is exact), because the centring within a group needs all of them.
        var r = [Double](repeating: 0, count: T * B), wt = r
        for k in 0..<T {
            for (jl, j) in rows.positions.enumerated() {
                let o = (k * Bl + jl) * D
                var a1 = 0.0, a0 = 0.0
                if options.adaptiveWeighting {
                    for d in 0..<D { a1 += abs(Double(v[o + d]) - Double(rows.u[o + d])); a0 += abs(Double(vOld[o + d]) - Double(rows.u[o + d])) }
                    a1 = weight(max(a1 / Dd, 1e-5)); a0 = max(a0 / Dd, 1e-5)
                } else { a1 = 1; a0 = 1 }
                var s = 0.0, dev = 0.0
                for d in 0..<D {
                    let e1 = Double(v[o + d]) - Double(rows.u[o + d]), e0 = Double(vOld[o + d]) - Double(rows.u[o + d])
                    s += e1 * e1 / a1 - e0 * e0 / a0
                    let q = Double(v[o + d]) - Double(vOld[o + d]); dev += q * q
                }
                r[k * B + j] = -s / Dd
                wt[k * B + j] = a1
                oldDevSum += dev / Dd
            }
        }
        try ctx.sum(&r)
        var total = 0.0, policyPart = 0.0, klPart = 0.0
        for k in 0..<T {
            let rk = Array(r[(k * B)..<((k + 1) * B)])
            let (lp, dr, rc) = Self.centredLoss(implicit: rk, target: p, groups: groups, beta: options.beta, scale: common.advantageClip)
            total += lp / Td
            policyPart += lp / Td
            polSum += lp
            rMeanSum += Stats.mean(rk); rcStdSum += Stats.std(rc)
            let pc = groups.flatMap { g in g.map { p[$0] - g.reduce(0) { $0 + p[$1] } / Double(g.count) } }
            let rcs = groups.flatMap { g in g.map { rc[$0] } }
            let cr = Self.correlation(rcs, pc)
            if cr.isFinite { corrSum += cr; nCorr += 1 }
            nK += 1
            for (jl, j) in rows.positions.enumerated() {
                let o = (k * Bl + jl) * D
                let g = dr[j] / Td * (-2 / (wt[k * B + j] * Dd))
                var kl = 0.0
                let f = useKL ? (options.rewardAdaptiveKL ? m + p[j] * (1 - m) : 1) : 0
                for d in 0..<D {
                    var grad = g * (Double(v[o + d]) - Double(rows.u[o + d]))
                    if useKL {
                        let e = Double(v[o + d]) - Double(vRef[o + d])
                        kl += e * e
                        grad += common.klWeight * f * 2 * e / (Dd * Double(B) * Td)
                    }
                    dv[o + d] = Float(grad)
                }
                if useKL {
                    klSum += kl / Dd
                    let l = common.klWeight * f * kl / Dd / Double(B)
                    klLossSum += l
                    total += l / Td
                    klPart += l / Td
                }
                nRows += 1
            }
        }
        tv.backward(dv)
        // the whole minibatch's loss: the policy part is already every rank's, the KL part is summed
        return ctx.shard == nil ? total : policyPart + (try ctx.sum(klPart))
    }

    public func reduceDiagnostics(_ ctx: RLContext) throws {
        var v = [oldDevSum, klSum, klLossSum, Double(nRows)]
        try ctx.sum(&v)
        oldDevSum = v[0]; klSum = v[1]; klLossSum = v[2]; nRows = Int(v[3])
    }

    static func correlation(_ a: [Double], _ b: [Double]) -> Double {
        var ab = 0.0, aa = 0.0, bb = 0.0
        for i in 0..<a.count { ab += a[i] * b[i]; aa += a[i] * a[i]; bb += b[i] * b[i] }
        return ab / (aa * bb).squareRoot()
    }

    public func finishRound(_ ctx: RLContext, step: Int) throws {
        lastOldDecay = common.oldDecay.value(at: step)
        lastSamplingDecay = options.samplingDecay.value(at: step)
        old?.blend(toward: ctx.model, decay: lastOldDecay)
        sampling?.blend(toward: ctx.model, decay: lastSamplingDecay)
    }

    public func diagnostics() -> [(String, Double)] {
        let k = Double(max(nK, 1)), n = Double(max(nRows, 1))
        return [("beta", options.beta)] + commonDiagnostics() + [
            ("policy_loss", nK > 0 ? polSum / k : .nan),
            ("implicit_reward_mean", nK > 0 ? rMeanSum / k : .nan),
            ("implicit_reward_centered_std", nK > 0 ? rcStdSum / k : .nan),
            ("implicit_reward_corr", nCorr > 0 ? corrSum / Double(nCorr) : .nan),
            ("kl", nRows > 0 && common.klWeight > 0 ? klSum / n : .nan),
            ("kl_loss", nK > 0 ? klLossSum / k : .nan),
            ("old_deviation", nRows > 0 ? oldDevSum / n : .nan),
            ("old_decay", lastOldDecay), ("sampling_decay", lastSamplingDecay)]
    }

    public func state() -> [String: String] { [:] }
    public func restore(_ metadata: [String: String]) throws {}

    public func loadSnapshots(from record: Record, config: ModelConfig) throws {
        if let s = try PolicySnapshot.load(prefix: "crd.old", from: record, config: config) { old = s }
        if let s = try PolicySnapshot.load(prefix: "crd.sampling", from: record, config: config) { sampling = s }
    }
    public var snapshotTensors: [(String, Tensor)] { (old?.tensors ?? []) + (sampling?.tensors ?? []) }
    public var samplingPrefix: String { "crd.sampling." }
}
