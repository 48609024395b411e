import Foundation
import Numerics

// Flow-matching samplers in the toolkit's convention (docs/design.md): x_t = (1 - t) x0 + t eps,
// t = 1 noise, t = 0 data, v = eps - x0, integration from t = 1 down to t = 0.
// docs/samplers.md gives every step's formula, its derivation, and the measured errors.

/// The sampler families. Raw values are the names the tools accept and record.
public enum SamplerKind: String, CaseIterable, Sendable {
    case euler
    case heun
    case flowgrpo
    case dance
    case cps
    case precise
    case dancePrecise = "dance-precise"
    case memorylessEM = "memoryless-em"
    case memorylessLL = "memoryless-ll"

    /// Stochastic samplers (Gaussian transitions with a log-prob); euler and heun are ODEs.
    public var isSDE: Bool { self != .euler && self != .heun }

    public var isMemoryless: Bool { self == .memorylessEM || self == .memorylessLL }

    /// Default noise level: Flow-GRPO/CPS 0.7, Precise 1.5, Dance/Dance-Precise 0.3 (Precise's
    /// official config); memoryless 1 (the memoryless schedule itself, see `Sampler.eta`).
    public var defaultEta: Double {
        switch self {
        case .euler, .heun: return 0
        case .flowgrpo, .cps: return 0.7
        case .precise: return 1.5
        case .dance, .dancePrecise: return 0.3
        case .memorylessEM, .memorylessLL: return 1
        }
    }
}

/// Classifier-free guidance: v = v_uncond + scale (v_cond - v_uncond), where v_uncond is the
/// model's velocity for the null label (`num_classes`). Guidance is on at time t when
/// scale != 1 and t lies in `interval` (in the toolkit's t: 1 = noise); outside the interval
/// the sampler uses the plain conditional velocity (scale 1). When on, the conditional and
/// unconditional halves go to the model as one batch of 2B rows: [x; x] with labels [y; null].
public struct Guidance: Sendable, Equatable {
    public var scale: Float
    public var interval: ClosedRange<Float>?
    public var nullLabel: Int

    public init(scale: Float, nullLabel: Int, interval: ClosedRange<Float>? = nil) {
        self.scale = scale
        self.nullLabel = nullLabel
        self.interval = interval
    }

    public func isActive(at t: Float) -> Bool {
        guard scale != 1 else { return false }
        if let interval { return interval.contains(t) }
        return true
    }
}

public struct SamplerError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One Gaussian step of an SDE (or its deterministic limit): given the state x at time t and the
/// (guided) velocity v = v(x, t),
///
///     x' ~ N(mean, std^2 I),  mean = a x + b v.
///
/// Every sampler except Heun has this form; `std == 0` marks a deterministic step. The
/// coefficients depend only on (sampler, eta, t, t', memoryless offset), are computed in Double
/// from the Float times, and are what `rlstep` needs to differentiate log pi through v:
/// d logp / d v_d = b (x'_d - mean_d) / (std^2 D).
public struct GaussianStep: Sendable, Equatable {
    public let a: Double
    public let b: Double
    public let std: Double
    public var isStochastic: Bool { std > 0 }

    public init(a: Double, b: Double, std: Double) {
        self.a = a
        self.b = b
        self.std = std
    }

    /// The ODE (Euler) step x' = x + (t' - t) v. Every sampler's deterministic limit (eta = 0)
    /// is exactly this step (docs/samplers.md shows why), and the samplers return it verbatim
    /// for eta = 0 so that limit is bit-for-bit the Euler sampler.
    public static func euler(t: Double, tNext: Double) -> GaussianStep { GaussianStep(a: 1, b: tNext - t, std: 0) }

    /// mean = a x + b v, rounded once to Float.
    @inline(__always)
    public func mean(x: Float, v: Float) -> Float { Float(a * Double(x) + b * Double(v)) }
}

/// The result of one transition for a batch: the Gaussian's mean [B, D] and its (shared) std.
public struct Transition {
    public var mean: [Float]
    public var std: Double
    /// Coefficients of the step (nil for Heun, whose mean is not linear in one velocity).
    public var step: GaussianStep?
    /// The (guided) velocity at (x, t) that produced the mean, [B, D].
    public var velocity: [Float]
    public var isStochastic: Bool { std > 0 }
}

/// The output of `Sampler.sample`.
public struct SampleResult {
    /// Final states x at t = times.last, [B, D].
    public var x: [Float]
    /// [B, S+1, D] states along the path (t = 1 first), when recording.
    public var trajectory: [Float]?
    /// [S+1] the time grid.
    public var times: [Float]
    /// [B, S] log pi(x_{k+1} | x_k), mean over dimensions, when recording; 0 where the step is
    /// deterministic (see `stochastic`).
    public var logProbs: [Float]?
    /// [B, S, D] Gaussian means of every step, when `recordMeans`.
    public var means: [Float]?
    /// [S] per-step std (shared by every sample and dimension); 0 for deterministic steps.
    public var stds: [Double]
    /// [S] whether step k is stochastic (std > 0): the steps RL can train on.
    public var stochastic: [Bool]
}

/// A configured sampler: the kind, its noise level, the time grid, the SDE window and the
/// guidance. Value type; cheap to copy; rebuildable from `settings` plus a recorded `traj.t`.
public struct Sampler: Sendable {
    public let kind: SamplerKind
    /// Noise level. flowgrpo: g(t) = eta sqrt(t / (1 - t)); dance: g = eta; cps: std =
    /// t' sin(eta pi / 2) (eta in [0, 1]); precise / dance-precise: the exact OU refresh of those
    /// two schedules. memoryless-em / -ll: a multiplier on the memoryless diffusion,
    /// g = eta * g_memoryless, with the drift adjusted to keep the marginals; eta = 1 (default) is
    /// DRL's memoryless SDE (eqs. 34/35) exactly, other values are our generalisation; eta = 0 is
    /// the ODE. For every kind, eta = 0 is the deterministic limit, which is the Euler step.
    public let eta: Double
    /// [S+1] strictly decreasing times; `TimeGrid.make` gives 1 ... 0.
    public let times: [Float]
    /// Step indices that are stochastic (nil: all). Other steps use eta = 0 (the Euler step).
    public let sdeWindow: Range<Int>?
    public let guidance: Guidance?
    /// Memoryless samplers' offsets delta = epsilon (DRL: u = tau + delta with tau = 1 - t);
    /// default 1 / S, DRL's Delta t for a uniform grid. Unused by other kinds.
    public let memorylessOffset: Double
    /// The shift the grid was made with, if known (provenance only).
    public let shift: Double?

    public var steps: Int { times.count - 1 }

    public init(kind: SamplerKind, times: [Float], eta: Double? = nil, sdeWindow: Range<Int>? = nil,
                guidance: Guidance? = nil, memorylessOffset: Double? = nil, shift: Double? = nil) throws {
        if let problem = TimeGrid.validate(times) { throw SamplerError(problem) }
        let eta = eta ?? kind.defaultEta
        guard eta.isFinite, eta >= 0 else { throw SamplerError("eta must be finite and >= 0, got \(eta)") }
        if kind == .cps && eta > 1 { throw SamplerError("cps needs eta in [0, 1] (std = t' sin(eta pi/2)), got \(eta)") }
        if !kind.isSDE && eta != 0 { throw SamplerError("\(kind.rawValue) is an ODE sampler; eta must be 0") }
        if let w = sdeWindow, w.lowerBound < 0 || w.upperBound > times.count - 1 {
            throw SamplerError("sde window \(w.lowerBound)..<\(w.upperBound) is outside steps 0..<\(times.count - 1)")
        }
        if let g = guidance, !g.scale.isFinite { throw SamplerError("guidance scale must be finite") }
        let offset = memorylessOffset ?? 1 / Double(times.count - 1)
        guard offset.isFinite, offset > 0 else { throw SamplerError("memoryless offset must be > 0, got \(offset)") }
        self.kind = kind
        self.eta = eta
        self.times = times
        self.sdeWindow = sdeWindow
        self.guidance = guidance
        self.memorylessOffset = offset
        self.shift = shift
    }

    /// The most steps a grid may have: far past any useful NFE, and small enough that the grid
    /// and per-step tables are never a giant allocation.
    public static let maxSteps = 100_000

    public init(kind: SamplerKind, steps: Int, shift: Double = 1, eta: Double? = nil, sdeWindow: Range<Int>? = nil,
                guidance: Guidance? = nil, memorylessOffset: Double? = nil) throws {
        guard (1...Self.maxSteps).contains(steps) else { throw SamplerError("steps must be in 1...\(Self.maxSteps), got \(steps)") }
        guard shift.isFinite, shift > 0 else { throw SamplerError("shift must be > 0, got \(shift)") }
        try self.init(kind: kind, times: TimeGrid.make(steps: steps, shift: shift), eta: eta, sdeWindow: sdeWindow,
                      guidance: guidance, memorylessOffset: memorylessOffset, shift: shift)
    }

    // MARK: - Step coefficients

    /// The eta step k runs with: `eta` inside the SDE window, 0 outside.
    public func eta(forStep k: Int) -> Double {
        if let w = sdeWindow, !w.contains(k) { return 0 }
        return eta
    }

    /// Coefficients of step k (nil for Heun).
    public func gaussianStep(_ k: Int) -> GaussianStep? {
        precondition(k >= 0 && k < steps, "step \(k) outside 0..<\(steps)")
        return Sampler.gaussianStep(kind: kind, eta: eta(forStep: k), t: times[k], tNext: times[k + 1], memorylessOffset: memorylessOffset)
    }

    /// [S] whether each step is stochastic.
    public var stochasticSteps: [Bool] { (0..<steps).map { gaussianStep($0)?.isStochastic ?? false } }

    /// The Gaussian step from t to tNext < t, in the toolkit's convention (formulas of
    /// docs/algorithms.md 5.2 / DRL eqs. 34-35 converted; derivations in docs/samplers.md).
    /// Times are taken as Float (what the grid stores) and converted to Double once.
    public static func gaussianStep(kind: SamplerKind, eta: Double, t tFloat: Float, tNext tNextFloat: Float,
                                    memorylessOffset: Double) -> GaussianStep? {
        let t = Double(tFloat), tn = Double(tNextFloat)
        precondition(tn < t && t <= 1 && tn >= 0, "gaussianStep: need 0 <= t' < t <= 1")
        let delta = tn - t  // < 0
        if kind == .heun { return nil }
        if kind.isMemoryless && tn == 0 {
            // DRL's final step: a deterministic denoising call, x0_hat = x - t v.
            return GaussianStep(a: 1, b: -t, std: 0)
        }
        if kind == .euler || eta == 0 { return .euler(t: t, tNext: tn) }
        let eta2 = eta * eta
        switch kind {
        case .euler, .heun:
            fatalError("unreachable")
        case .flowgrpo, .dance:
            // Euler-Maruyama of dx = [v - g^2/2 * score] dt + g dW, score = -(x + (1-t) v)/t:
            // mean = x + D v - (s^2 / 2t)(x + (1-t) v), s^2 = g(t)^2 |D|.
            let variance: Double
            if kind == .dance {
                variance = eta2 * (-delta)
            } else {
                // Flow-GRPO: g^2 = eta^2 t / (1 - t); at t = 1 the official code puts
                // sigma_max = sigmas[1] (= t', the next grid time) in the denominator.
                let denominatorT = tFloat == 1 ? tn : t
                variance = eta2 * t / (1 - denominatorT) * (-delta)
            }
            return GaussianStep(a: 1 - variance / (2 * t), b: delta - variance * (1 - t) / (2 * t), std: variance.squareRoot())
        case .cps, .precise, .dancePrecise:
            // mean = (1 - t') x0_hat + c eps_hat, x0_hat = x - t v, eps_hat = x + (1 - t) v,
            // with c = sqrt(t'^2 - s^2).
            let c: Double, s: Double
            if kind == .cps {
                s = tn * sin(eta * Double.pi / 2)
                c = tn * cos(eta * Double.pi / 2)
            } else {
                let rho: Double
                if tn == 0 {
                    rho = 0
                } else if kind == .precise {
                    // rho = [t'(1 - t) / (t (1 - t'))]^(eta^2 / 2)
                    rho = pow(tn * (1 - t) / (t * (1 - tn)), eta2 / 2)
                } else {
                    // rho = exp(-eta^2/2 (1/t' - 1/t))
                    rho = exp(-0.5 * eta2 * (1 / tn - 1 / t))
                }
                s = tn * (max(0, 1 - rho * rho)).squareRoot()
                c = tn * rho
            }
            return GaussianStep(a: (1 - tn) + c, b: c * (1 - t) - t * (1 - tn), std: s)
        case .memorylessEM, .memorylessLL:
            // DRL convention tau = 1 - t, v_DRL = -v, u = tau + delta, offsets delta = epsilon.
            // SDE (p = eta^2): dX = [(1+p) v_DRL - p X/u] dtau + sqrt(p 2 (1 - tau + eps)/u) dB.
            let p = eta2
            let off = memorylessOffset
            let u = 1 - t + off, un = 1 - tn + off
            let h = t - tn  // = tau' - tau > 0
            if kind == .memorylessEM {
                // DRL eq. 34 (p = 1): x' = x + (2 v_DRL - x/u) h + sqrt(2 (t + eps) h / u) xi.
                return GaussianStep(a: 1 - p * h / u, b: -(1 + p) * h, std: (p * 2 * (t + off) * h / u).squareRoot())
            }
            // DRL eq. 35 generalised to p (integrating factor u^p; p = 1 gives Phi, Omega, V):
            // x' = Phi^p x - u'(1 - Phi^(p+1)) v + sqrt(V) xi, Phi = u/u',
            // V = (1 + 2 off)(1 - Phi^(2p)) - 2p/(2p+1) u'(1 - Phi^(2p+1)).
            let phi = u / un
            let variance = (1 + 2 * off) * (1 - pow(phi, 2 * p)) - 2 * p / (2 * p + 1) * un * (1 - pow(phi, 2 * p + 1))
            return GaussianStep(a: pow(phi, p), b: -un * (1 - pow(phi, p + 1)), std: max(0, variance).squareRoot())
        }
    }

    // MARK: - Velocity with guidance

    /// out = guided v(x, t) for a batch x [B, D]. One model call of B rows when guidance is off
    /// at t, of 2B rows ([x; x], labels [y; null]) when on.
    public func velocity(model: VelocityField, x: UnsafePointer<Float>, labels: [Int], t: Float, batch: Int,
                         into out: UnsafeMutablePointer<Float>) {
        let dim = model.sampleDimension
        guard let g = guidance, g.isActive(at: t) else {
            model.velocity(x, t: [Float](repeating: t, count: batch), y: labels, batch: batch, into: out)
            return
        }
        let n = batch * dim
        var xx = [Float](repeating: 0, count: 2 * n)
        var vv = [Float](repeating: 0, count: 2 * n)
        xx.withUnsafeMutableBufferPointer { p in
            p.baseAddress!.update(from: x, count: n)
            (p.baseAddress! + n).update(from: x, count: n)
        }
        let yy = labels + [Int](repeating: g.nullLabel, count: batch)
        xx.withUnsafeBufferPointer { xp in
            vv.withUnsafeMutableBufferPointer { vp in
                model.velocity(xp.baseAddress!, t: [Float](repeating: t, count: 2 * batch), y: yy, batch: 2 * batch, into: vp.baseAddress!)
            }
        }
        let w = g.scale
        vv.withUnsafeBufferPointer { vp in
            for i in 0..<n {
                let vc = vp[i], vu = vp[n + i]
                out[i] = vu + w * (vc - vu)
            }
        }
    }

    public func velocity(model: VelocityField, x: [Float], labels: [Int], t: Float, batch: Int) -> [Float] {
        var out = [Float](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                velocity(model: model, x: xp.baseAddress!, labels: labels, t: t, batch: batch, into: op.baseAddress!)
            }
        }
        return out
    }

    // MARK: - Transition

    /// The transition of step k from state x [B, D] (row-major): N(mean, std^2 I) with the
    /// step's eta (SDE window applied). Pure function of (sampler settings, model, x, labels,
    /// times[k], times[k+1]); per-row arithmetic only, so bitwise independent of the batch
    /// split (given a model whose rows do not depend on the batch).
    public func transition(model: VelocityField, x: [Float], labels: [Int], batch: Int, step k: Int) -> Transition {
        precondition(k >= 0 && k < steps, "step \(k) outside 0..<\(steps)")
        return transition(model: model, x: x, labels: labels, batch: batch, t: times[k], tNext: times[k + 1], eta: eta(forStep: k))
    }

    /// The transition from t to tNext with an explicit eta (this sampler's kind, guidance and
    /// memoryless offset).
    public func transition(model: VelocityField, x: [Float], labels: [Int], batch: Int, t: Float, tNext: Float, eta: Double) -> Transition {
        let dim = model.sampleDimension
        precondition(batch > 0 && x.count == batch * dim && labels.count == batch, "transition: shape mismatch")
        let v = velocity(model: model, x: x, labels: labels, t: t, batch: batch)
        var mean = [Float](repeating: 0, count: x.count)
        if let step = Sampler.gaussianStep(kind: kind, eta: eta, t: t, tNext: tNext, memorylessOffset: memorylessOffset) {
            for i in 0..<x.count { mean[i] = step.mean(x: x[i], v: v[i]) }
            return Transition(mean: mean, std: step.std, step: step, velocity: v)
        }
        // Heun: predictor x_p = x + D v(x, t), corrector mean = x + D/2 (v(x, t) + v(x_p, t'));
        // the step to t' = 0 is plain Euler (v at t = 0 is not used).
        let euler = GaussianStep.euler(t: Double(t), tNext: Double(tNext))
        for i in 0..<x.count { mean[i] = euler.mean(x: x[i], v: v[i]) }
        if tNext > 0 {
            let v2 = velocity(model: model, x: mean, labels: labels, t: tNext, batch: batch)
            let half = 0.5 * (Double(tNext) - Double(t))
            for i in 0..<x.count { mean[i] = Float(Double(x[i]) + half * (Double(v[i]) + Double(v2[i]))) }
        }
        return Transition(mean: mean, std: 0, step: nil, velocity: v)
    }

    // MARK: - Sampling

    /// Initial noise for samples `ids`: stream 0 of `CounterNoise(seed)`, [B, D].
    public static func initialNoise(seed: UInt64, ids: [Int64], dimension: Int) -> [Float] {
        let noise = CounterNoise(seed: seed)
        var out = [Float](repeating: 0, count: ids.count * dimension)
        out.withUnsafeMutableBufferPointer { p in
            for (b, id) in ids.enumerated() {
                noise.fillNormal(id: UInt64(bitPattern: id), stream: 0,
                                 into: UnsafeMutableBufferPointer(rebasing: p[(b * dimension)..<((b + 1) * dimension)]))
            }
        }
        return out
    }

    /// Runs the sampler on a batch from `noise` [B, D] (the state at times[0]). The noise
    /// injected at step k for sample ids[b] is stream k + 1 of `CounterNoise(seed)`, so every
    /// sample's path depends only on (seed, id, noise, label), not on the batch it is run in.
    /// With `record`, returns the trajectory [B, S+1, D] and log-probs [B, S].
    public func sample(model: VelocityField, noise: [Float], labels: [Int], ids: [Int64], seed: UInt64,
                       record: Bool = false, recordMeans: Bool = false) -> SampleResult {
        let batch = labels.count
        let dim = model.sampleDimension
        precondition(batch > 0 && noise.count == batch * dim && ids.count == batch, "sample: shape mismatch")
        let S = steps
        var x = noise
        var trajectory: [Float]? = record ? [Float](repeating: 0, count: batch * (S + 1) * dim) : nil
        var logProbs: [Float]? = record ? [Float](repeating: 0, count: batch * S) : nil
        var means: [Float]? = recordMeans ? [Float](repeating: 0, count: batch * S * dim) : nil
        var stds = [Double](repeating: 0, count: S)
        var stochastic = [Bool](repeating: false, count: S)
        func store(_ state: [Float], into buffer: inout [Float]?, slot: Int, slots: Int) {
            guard buffer != nil else { return }
            for b in 0..<batch {
                let dst = (b * slots + slot) * dim
                for d in 0..<dim { buffer![dst + d] = state[b * dim + d] }
            }
        }
        store(x, into: &trajectory, slot: 0, slots: S + 1)
        let generator = CounterNoise(seed: seed)
        var z = [Float](repeating: 0, count: dim)
        for k in 0..<S {
            let tr = transition(model: model, x: x, labels: labels, batch: batch, step: k)
            stds[k] = tr.std
            stochastic[k] = tr.isStochastic
            store(tr.mean, into: &means, slot: k, slots: S)
            if tr.isStochastic {
                for b in 0..<batch {
                    z.withUnsafeMutableBufferPointer { generator.fillNormal(id: UInt64(bitPattern: ids[b]), stream: UInt32(k + 1), into: $0) }
                    for d in 0..<dim {
                        x[b * dim + d] = Float(Double(tr.mean[b * dim + d]) + tr.std * Double(z[d]))
                    }
                }
                if record {
                    let lp = GaussianLogProb.meanLogDensity(x: x, mean: tr.mean, std: tr.std, batch: batch)
                    for b in 0..<batch { logProbs![b * S + k] = Float(lp[b]) }
                }
            } else {
                x = tr.mean
            }
            store(x, into: &trajectory, slot: k + 1, slots: S + 1)
        }
        return SampleResult(x: x, trajectory: trajectory, times: times, logProbs: logProbs, means: means,
                            stds: stds, stochastic: stochastic)
    }

    /// `sample` from the toolkit's initial noise: stream 0 of `CounterNoise(seed)` for each id.
    public func sample(model: VelocityField, labels: [Int], ids: [Int64], seed: UInt64,
                       record: Bool = false, recordMeans: Bool = false) -> SampleResult {
        sample(model: model, noise: Sampler.initialNoise(seed: seed, ids: ids, dimension: model.sampleDimension),
               labels: labels, ids: ids, seed: seed, record: record, recordMeans: recordMeans)
    }

    /// Recomputes log pi(x_{k+1} | x_k) for every step from a recorded trajectory [B, S+1, D]
    /// (t = times[0] first), with this sampler's settings and `model` (e.g. the current policy
    /// for the PPO ratio). Returns [B, S], 0 on deterministic steps, computed exactly as `sample`
    /// computes it: the same model and settings reproduce the stored values bit for bit.
    public func logProbs(model: VelocityField, trajectory: [Float], labels: [Int], batch: Int) -> [Float] {
        let dim = model.sampleDimension
        let S = steps
        precondition(trajectory.count == batch * (S + 1) * dim && labels.count == batch, "logProbs: shape mismatch")
        var out = [Float](repeating: 0, count: batch * S)
        for k in 0..<S where gaussianStep(k)?.isStochastic ?? false {
            let xk = Sampler.slice(trajectory, batch: batch, slots: S + 1, slot: k, dim: dim)
            let xn = Sampler.slice(trajectory, batch: batch, slots: S + 1, slot: k + 1, dim: dim)
            let tr = transition(model: model, x: xk, labels: labels, batch: batch, step: k)
            let lp = GaussianLogProb.meanLogDensity(x: xn, mean: tr.mean, std: tr.std, batch: batch)
            for b in 0..<batch { out[b * S + k] = Float(lp[b]) }
        }
        return out
    }

    /// Rows [b, slot, :] of a [B, slots, D] tensor, as a [B, D] array.
    public static func slice(_ tensor: [Float], batch: Int, slots: Int, slot: Int, dim: Int) -> [Float] {
        var out = [Float](repeating: 0, count: batch * dim)
        for b in 0..<batch {
            let src = (b * slots + slot) * dim
            for d in 0..<dim { out[b * dim + d] = tensor[src + d] }
        }
        return out
    }
}
