import Foundation
import Flow
import Numerics

/// Flow-GRPO (docs/algorithms.md 2.1, 5.4) on recorded SDE rollouts of any Gaussian-step sampler.
///
/// Advantages: A_i = (R_i - mean_g R) / (std + 1e-4), clipped to [-c, c]; mean over the sample's
/// `group`, std over the group (`group`), over the whole buffer (`global-std`, Flow-GRPO's
/// global_std), or mean and std over the buffer (`global`). Groups whose advantages are all 0 are
/// dropped. For every stochastic step k of sample i (transition N(mu, s^2 I), mu = a x_k + b v):
///
///     log pi_theta = mean_d [ -(x_{k+1} - mu_theta)^2 / (2 s^2) ] - log s - log(2 pi)/2
///     ratio = exp(log pi_theta - log pi_old)               (log pi_old = recorded traj.logp)
///     ratio-norm: ratio = exp(s (log pi_theta - log pi_old + mean_d (mu_theta - mu_old)^2 / (2 s^2)))
///     L_pg = mean_{i,k} max(-A_i ratio, -A_i clip(ratio, 1 - eps, 1 + eps))   (/ mean_k |b_k| with ratio-norm)
///     KL_k = mean_d (mu_theta - mu_ref)^2 / (2 s^2)        (Gaussian KL of the two transitions / D)
///     L = L_pg + beta mean_{i,k} KL_k
///
/// mu_old is the mean under the model at the start of the round (the policy that sampled, when
/// on-policy); mu_ref under the frozen reference. CFG, when the sampler used it, is applied to
/// the policy's velocity exactly as sampling did (both branches get gradients).
public final class GRPO: RLObjective {
    public enum AdvantageNorm: String, CaseIterable, Sendable { case group, globalStd = "global-std", global }

    public struct Options {
        public var beta = 0.0
        public var clipRange = 1e-4
        public var advantageNorm = AdvantageNorm.group
        public var advantageClip = 5.0
        public var ratioNorm = false
        public init() {}
    }

    public let name = "grpo"
    public let options: Options
    public private(set) var advantages: [Double] = []
    public private(set) var trainable: [Int] = []

    private var K: [Int] = []  // stochastic steps
    private var D = 0
    private var muRef: [Float] = [], muOld: [Float] = []  // [N, |K|, D]
    private var meanAbsB = 1.0
    private var klStart = 0.0, logpMismatch = 0.0
    private var advClipped = 0, zeroGroups = 0
    private var ratioSum = 0.0, ratioMin = Double.infinity, ratioMax = -Double.infinity, rows = 0, clipped = 0
    private var klSum = 0.0

    public init(options: Options = Options()) { self.options = options }

    /// Group-normalised, clipped advantages (public for tests).
    public static func advantages(rewards: [Float], groups: [Int64]?, norm: AdvantageNorm, clip: Double) throws -> (values: [Double], clipped: Int) {
        let n = rewards.count
        let r = rewards.map(Double.init)
        var keys: [Int64]
        switch norm {
        case .global: keys = [Int64](repeating: 0, count: n)
        case .group, .globalStd:
            guard let groups else { throw RLError("{adv_norm} \(norm.rawValue) needs `group` in the buffer (`sample --group G`); or use {adv_norm} global") }
            keys = groups
        }
        var members: [Int64: [Int]] = [:]
        for i in 0..<n { members[keys[i], default: []].append(i) }
        let globalStd = Stats.std(r)
        var out = [Double](repeating: 0, count: n)
        var nClipped = 0
        for (_, idx) in members {
            let vals = idx.map { r[$0] }
            let m = Stats.mean(vals)
            let s = norm == .group ? Stats.std(vals) : globalStd
            for i in idx {
                var a = (r[i] - m) / (s + 1e-4)
                if abs(a) > clip { a = a > 0 ? clip : -clip; nClipped += 1 }
                out[i] = a
            }
        }
        return (out, nClipped)
    }

    public func prepare(_ ctx: RLContext) throws {
        // This rank's checks and start-of-round means (all samples in one process): a rank that
        // fails stops every rank here, before the sums below.
        var local = (kl: 0.0, mismatch: 0.0)
        try ctx.phase { local = try prepareLocal(ctx) }
        // The advantages need every reward of a group (or of the buffer): from all ranks.
        guard let rewards = ctx.rewards else { throw RLError("{algo} grpo needs `reward` in every record (score the rollouts, e.g. `discrim score`)") }
        let N = ctx.total
        let (adv, nClip) = try Self.advantages(rewards: rewards, groups: ctx.groups, norm: options.advantageNorm, clip: options.advantageClip)
        advantages = adv
        advClipped = nClip
        // drop groups whose advantages are all zero
        var groupAllZero: [Int64: Bool] = [:]
        let keys = options.advantageNorm == .global ? [Int64](repeating: 0, count: N) : ctx.groups!
        for i in 0..<N { groupAllZero[keys[i]] = (groupAllZero[keys[i]] ?? true) && adv[i] == 0 }
        zeroGroups = groupAllZero.values.filter { $0 }.count
        trainable = (0..<N).filter { !groupAllZero[keys[$0]]! }
        klStart = try ctx.sum(local.kl) / Double(max(N, 1))
        logpMismatch = try ctx.max(local.mismatch)
    }

    /// The reference and start-of-round means of the buffer's samples; returns the sum of their
    /// start KL and the largest recorded-log-prob mismatch.
    private func prepareLocal(_ ctx: RLContext) throws -> (kl: Double, mismatch: Double) {
        let s = ctx.sampler, buf = ctx.buffer
        guard s.kind != .heun else { throw RLError("{algo} grpo needs Gaussian transitions; heun has none") }
        K = (0..<s.steps).filter { s.gaussianStep($0)?.isStochastic ?? false }
        guard !K.isEmpty else {
            throw RLError("{algo} grpo needs stochastic steps, but the buffer's sampler (\(s.kind.rawValue), eta \(s.eta)) is deterministic")
        }
        guard let recorded = buf.logProbs else { throw RLError("{algo} grpo needs `traj.logp` (`sample --record` writes it)") }
        guard buf.rewards != nil else { throw RLError("{algo} grpo needs `reward` in every record (score the rollouts, e.g. `discrim score`)") }
        if options.advantageNorm != .global && buf.groups == nil {
            throw RLError("--adv-norm \(options.advantageNorm.rawValue) needs `group` in the buffer (`sample --group G`); or use --adv-norm global")
        }
        D = buf.dim
        let N = buf.count, S = buf.steps
        meanAbsB = Stats.mean(K.map { abs(s.gaussianStep($0)!.b) })
        // reference and start-of-round means for every stochastic step
        muRef = [Float](repeating: 0, count: N * K.count * D)
        muOld = muRef
        var kl = 0.0, mismatch = 0.0
        for (j, k) in K.enumerated() {
            let x = Sampler.slice(buf.trajectory, batch: N, slots: S + 1, slot: k, dim: D)
            let xn = Sampler.slice(buf.trajectory, batch: N, slots: S + 1, slot: k + 1, dim: D)
            let tr = s.transition(model: ctx.reference, x: x, labels: buf.labels, batch: N, step: k)
            let to = s.transition(model: ctx.model, x: x, labels: buf.labels, batch: N, step: k)
            let lp = GaussianLogProb.meanLogDensity(x: xn, mean: to.mean, std: to.std, batch: N)
            let s2 = max(to.std, GaussianLogProb.minStd) * max(to.std, GaussianLogProb.minStd)
            for i in 0..<N {
                mismatch = max(mismatch, abs(lp[i] - Double(recorded[i * S + k])))
                var ss = 0.0
                for d in 0..<D {
                    let o = (i * K.count + j) * D + d
                    muRef[o] = tr.mean[i * D + d]
                    muOld[o] = to.mean[i * D + d]
                    let e = Double(muOld[o]) - Double(muRef[o])
                    ss += e * e
                }
                kl += ss / (2 * s2 * Double(D))
            }
        }
        return (kl, mismatch)
    }

    public func accumulateGradients(_ ctx: RLContext, samples: [Int], rng: inout CounterRNG) throws -> Double {
        let buf = ctx.buffer, s = ctx.sampler, S = buf.steps
        let recorded = buf.logProbs!
        // The rows of the samples this rank holds (local indices); R counts every rank's rows.
        let mine = samples.compactMap { ctx.local($0) }
        let owner = samples.filter { ctx.local($0) != nil }
        var xs: [Float] = [], ts: [Float] = [], ys: [Int] = []
        xs.reserveCapacity(mine.count * K.count * D)
        for i in mine {
            for k in K {
                let o = buf.stateOffset(i, k)
                xs += buf.trajectory[o..<(o + D)]
                ts.append(s.times[k])
                ys.append(buf.labels[i])
            }
        }
        let tv = TrainingVelocity(model: ctx.model, guidance: s.guidance)
        let v = tv.forward(xs, t: ts, y: ys)
        let R = samples.count * K.count
        var dv = [Float](repeating: 0, count: ts.count * D)
        let eps = options.clipRange
        let pgScale = (options.ratioNorm ? 1 / meanAbsB : 1) / Double(R)
        var total = 0.0
        var r = 0
        for (i, g) in zip(mine, owner) {
            let A = advantages[g]
            for (j, k) in K.enumerated() {
                let step = s.gaussianStep(k)!
                let sd = max(step.std, GaussianLogProb.minStd), s2 = sd * sd
                let xo = buf.stateOffset(i, k + 1), mo = (i * K.count + j) * D
                var sq = 0.0, bias = 0.0, kl = 0.0
                var mu = [Double](repeating: 0, count: D)
                for d in 0..<D {
                    let m = Double(step.mean(x: xs[r * D + d], v: v[r * D + d]))
                    mu[d] = m
                    let e = Double(buf.trajectory[xo + d]) - m
                    sq += e * e
                    let eo = m - Double(muOld[mo + d]); bias += eo * eo
                    let er = m - Double(muRef[mo + d]); kl += er * er
                }
                let lp = -sq / (2 * s2 * Double(D)) - log(sd) - 0.5 * log(2 * Double.pi)
                bias /= 2 * s2 * Double(D)
                kl /= 2 * s2 * Double(D)
                let lpOld = Double(recorded[i * S + k])
                let logRatio = options.ratioNorm ? sd * (lp - lpOld + bias) : lp - lpOld
                let ratio = exp(logRatio)
                let unclipped = -A * ratio, clippedLoss = -A * min(max(ratio, 1 - eps), 1 + eps)
                total += max(unclipped, clippedLoss) * pgScale + options.beta * kl / Double(R)
                ratioSum += ratio; ratioMin = min(ratioMin, ratio); ratioMax = max(ratioMax, ratio); rows += 1
                if abs(ratio - 1) > eps { clipped += 1 }
                klSum += kl
                let dLogR = unclipped >= clippedLoss ? -A * ratio * pgScale : 0
                for d in 0..<D {
                    let xn = Double(buf.trajectory[xo + d])
                    var g = (xn - mu[d]) / (s2 * Double(D))                       // d logp / d mu_d
                    if options.ratioNorm { g = sd * (g + (mu[d] - Double(muOld[mo + d])) / (s2 * Double(D))) }
                    var dmu = dLogR * g
                    dmu += options.beta / Double(R) * (mu[d] - Double(muRef[mo + d])) / (s2 * Double(D))
                    dv[r * D + d] = Float(dmu * step.b)                        // d mu / d v = b
                }
                r += 1
            }
        }
        tv.backward(dv)
        // the whole minibatch's loss on every rank
        return try ctx.sum(total)
    }

    public func reduceDiagnostics(_ ctx: RLContext) throws {
        var v = [ratioSum, Double(rows), Double(clipped), klSum]
        try ctx.sum(&v)
        ratioSum = v[0]; rows = Int(v[1]); clipped = Int(v[2]); klSum = v[3]
        ratioMin = try ctx.min(ratioMin)
        ratioMax = try ctx.max(ratioMax)
    }

    public func diagnostics() -> [(String, Double)] {
        let adv = trainable.map { advantages[$0] }
        return [("beta", options.beta), ("clip_range", options.clipRange),
                ("adv_mean", Stats.mean(advantages)), ("adv_std", Stats.std(advantages)),
                ("adv_min", advantages.min() ?? .nan), ("adv_max", advantages.max() ?? .nan),
                ("adv_abs_mean_trained", Stats.mean(adv.map(abs))),
                ("adv_clip_frac", advantages.isEmpty ? 0 : Double(advClipped) / Double(advantages.count)),
                ("zero_adv_groups", Double(zeroGroups)), ("trained_samples", Double(trainable.count)),
                ("sde_steps", Double(K.count)),
                ("ratio_mean", rows > 0 ? ratioSum / Double(rows) : .nan), ("ratio_min", rows > 0 ? ratioMin : .nan),
                ("ratio_max", rows > 0 ? ratioMax : .nan), ("clip_frac", rows > 0 ? Double(clipped) / Double(rows) : .nan),
                ("kl", klStart), ("kl_train_mean", rows > 0 ? klSum / Double(rows) : .nan),
                ("logp_old_max_abs_err", logpMismatch)]
    }

    public func state() -> [String: String] { [:] }
    public func restore(_ metadata: [String: String]) throws {}
}
