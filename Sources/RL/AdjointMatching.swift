import Foundation
import Flow
import Numerics

/// DRL's stage 2: Adjoint Matching on memoryless local-linear rollouts (docs/algorithms.md 2.4, 3.4),
/// in the toolkit's time t (t = 1 noise, t = 0 data). DRL's tau (data at 1) is tau = 1 - t and
/// v_DRL = -v. With the sampler's offset delta = epsilon (`memorylessOffset`),
///
///     u_k = 1 - t_k + delta,  Phi_k = u_k / u_{k+1},  h_k = t_k - t_{k+1},
///     sigma_k = sqrt(2 (t_k + epsilon) / u_k)                      (DRL: sqrt(2(1 - tau_k + eps)/u_k))
///
/// Lean adjoint, backward from the final state (DRL eq. 38 with grad v_DRL = -grad v):
///
///     a_S = -lambda grad_x r(x_S)
///     a_k = Phi_k (a_{k+1} - 2 h_k [d v_base(x_{k+1}, t_{k+1}) / dx]^T a_{k+1})
///
/// Loss on a stratified subset K_i of steps per sample (|K_i| = ceil(f S), half with
/// tau_k = 1 - t_k < split, half with tau_k >= split), regressing the control onto the adjoint:
///
///     l_i = 1/(2 |K_i|) sum_{k in K_i} | (2/sigma_k)(v_theta(x_k, t_k) - v_base(x_k, t_k)) - sigma_k a_k |^2
///
/// (DRL writes +sigma a with v_DRL = -v; the sign flips with v.) Optimum: v_theta = v_base +
/// (sigma^2/2) a, so near the data end v moves along -lambda sigma^2/2 grad r and x (which moves
/// by -h v per step) along +grad r. Adaptive outlier clipping: tau_n = rho tau_{n-1} +
/// (1 - rho) min(q_alpha(l), c tau_{n-1}) (tau_1 = q_alpha of the first minibatch); samples with
/// l >= tau_n or non-finite l are masked; the loss is the mean over kept samples. tau persists
/// across rounds in checkpoint metadata `rl.am.outlier_threshold`.
public final class AdjointMatching: RLObjective {
    public struct Options {
        public var lambda: Double = 10
        public var timestepFraction = 0.4
        /// Stratum boundary in DRL time tau = 1 - t.
        public var split = 0.6
        /// alpha (>= 1 disables clipping except for non-finite losses), rho, spike cap c.
        public var clipQuantile = 0.9
        public var clipRho = 0.9
        public var clipCap = 5.0
        public init() {}
    }

    public let name = "am"
    public let options: Options
    public private(set) var threshold: Double?
    public private(set) var trainable: [Int] = []

    private var S = 0, D = 0
    private var times: [Float] = []
    private var offset = 0.0
    /// [N, S, D] stop-gradient buffers.
    private var vBase: [Float] = []
    private var adjoint: [Float] = []
    /// Wall-clock seconds of `prepare`'s two parts on this rank (`rlstep --profile`): the lean
    /// adjoint (S reference VJPs and the base velocities) and the path KL (S policy forwards).
    public private(set) var prepareStages: [(String, Double)] = []
    private var sigmas: [Double] = []
    private var strataLow: [Int] = [], strataHigh: [Int] = []
    private var klStart = 0.0, adjTerminal = 0.0, adjStart = 0.0
    private var masked = 0, seen = 0

    public init(options: Options = Options()) { self.options = options }

    // MARK: time conventions (tested)

    /// DRL's time (data at 1) of our t.
    public static func drlTime(_ t: Float) -> Double { 1 - Double(t) }
    /// u = tau + delta.
    public static func u(_ t: Float, offset: Double) -> Double { 1 - Double(t) + offset }
    /// The memoryless diffusion sigma(t) = sqrt(2 (t + eps) / (1 - t + delta)), eps = delta = offset.
    public static func sigma(_ t: Float, offset: Double) -> Double { (2 * (Double(t) + offset) / u(t, offset: offset)).squareRoot() }
    /// Step indices k in 0..<S split by DRL time tau_k = 1 - t_k < split (noisy) and >= split
    /// (compared with a 1e-6 tolerance: the Float grid's 0.4 is 0.4000000060).
    public static func strata(times: [Float], split: Double) -> (low: [Int], high: [Int]) {
        let S = times.count - 1
        let low = (0..<S).filter { drlTime(times[$0]) < split - 1e-6 }
        return (low, (0..<S).filter { !low.contains($0) })
    }

    /// The lean adjoint along one batch of trajectories: a [N, S, D] with a[:, k] the adjoint at
    /// state k (k < S), plus v_base at every state k < S. `terminal` = a_S [N, D].
    public static func leanAdjoint(reference: VelocityNet, trajectory: [Float], times: [Float], labels: [Int],
                                   terminal: [Float], offset: Double) -> (adjoint: [Float], vBase: [Float]) {
        let N = labels.count, S = times.count - 1, D = reference.sampleDimension
        var adj = [Float](repeating: 0, count: N * S * D), vb = adj
        var a = terminal
        func slot(_ k: Int) -> [Float] { Sampler.slice(trajectory, batch: N, slots: S + 1, slot: k, dim: D) }
        func store(_ src: [Float], into dst: inout [Float], k: Int) {
            for i in 0..<N { for d in 0..<D { dst[(i * S + k) * D + d] = src[i * D + d] } }
        }
        for k in stride(from: S - 1, through: 0, by: -1) {
            let tn = times[k + 1]
            let (v, g) = reference.vjp(slot(k + 1), t: [Float](repeating: tn, count: N), y: labels, cotangent: a)
            if k + 1 < S { store(v, into: &vb, k: k + 1) }
            let phi = u(times[k], offset: offset) / u(tn, offset: offset)
            let h = Double(times[k]) - Double(tn)
            for i in 0..<a.count { a[i] = Float(phi * (Double(a[i]) - 2 * h * Double(g[i]))) }
            store(a, into: &adj, k: k)
        }
        store(reference.velocity(slot(0), t: [Float](repeating: times[0], count: N), y: labels), into: &vb, k: 0)
        return (adj, vb)
    }

    // MARK: RLObjective

    public func prepare(_ ctx: RLContext) throws {
        // This rank's checks and stop-gradient quantities (all of them in one process): a rank
        // that fails stops every rank here, before the sums below.
        var sums = [0.0, 0.0, 0.0]
        try ctx.phase { sums = try prepareLocal(ctx) }
        try ctx.sum(&sums)
        let N = Double(ctx.total)
        adjTerminal = sums[0] / N
        adjStart = sums[1] / N
        klStart = sums[2] / Double(max(ctx.total, 1))
        trainable = Array(0..<ctx.total)
    }

    /// The adjoints and base velocities of the buffer's samples; returns the sums over them of
    /// the terminal and t = 1 adjoint norms and of the path KL.
    private func prepareLocal(_ ctx: RLContext) throws -> [Double] {
        let s = ctx.sampler, buf = ctx.buffer
        guard s.kind == .memorylessLL || s.kind == .memorylessEM else {
            throw RLError("{algo} am needs memoryless rollouts (`sample --sampler memoryless-ll --record`), but the buffer was sampled with \(s.kind.rawValue)")
        }
        guard s.eta == 1, s.sdeWindow == nil else {
            throw RLError("{algo} am needs the memoryless SDE itself (eta = 1, no SDE window); the buffer has eta = \(s.eta), window \(s.sdeWindow.map { "\($0)" } ?? "all")")
        }
        if let g = s.guidance, s.times.contains(where: { g.isActive(at: $0) }) {
            throw RLError("{algo} am trains the conditional branch without classifier-free guidance; sample the buffer with `sample --cfg 1`")
        }
        guard let grad = buf.rewardGrad else {
            throw RLError("{algo} am needs `reward.grad` in every record (score the rollouts with `discrim score --grad`)")
        }
        S = buf.steps
        D = buf.dim
        times = buf.times
        offset = s.memorylessOffset
        let N = buf.count
        let terminal = grad.map { Float(-options.lambda * Double($0)) }
        let started = Date()
        (adjoint, vBase) = Self.leanAdjoint(reference: ctx.reference, trajectory: buf.trajectory, times: times,
                                            labels: buf.labels, terminal: terminal, offset: offset)
        let adjointDone = Date()
        sigmas = (0..<S).map { Self.sigma(times[$0], offset: offset) }
        (strataLow, strataHigh) = Self.strata(times: times, split: options.split)
        func norm(_ v: [Float], _ i: Int, _ base: Int) -> Double {
            var s = 0.0
            for d in 0..<D { s += Double(v[base + d]) * Double(v[base + d]) }
            return s.squareRoot()
        }
        let terminalSum = (0..<N).map { norm(terminal, $0, $0 * D) }.reduce(0, +)
        let startSum = (0..<N).map { norm(adjoint, $0, ($0 * S) * D) }.reduce(0, +)
        // Girsanov estimate of the path KL (per dimension) of the sampling policy to the base,
        // over the stochastic steps: sum_k h_k/2 |(2/sigma_k)(v - v_base)|^2 / D, mean over samples.
        var kl = 0.0
        for k in 0..<S where s.gaussianStep(k)?.isStochastic ?? false {
            let x = Sampler.slice(buf.trajectory, batch: N, slots: S + 1, slot: k, dim: D)
            let v = ctx.model.velocity(x, t: [Float](repeating: times[k], count: N), y: buf.labels)
            let h = Double(times[k]) - Double(times[k + 1]), c = 2 / sigmas[k]
            for i in 0..<N {
                var ss = 0.0
                for d in 0..<D { let e = c * (Double(v[i * D + d]) - Double(vBase[(i * S + k) * D + d])); ss += e * e }
                kl += h / 2 * ss / Double(D)
            }
        }
        prepareStages = [("lean_adjoint", adjointDone.timeIntervalSince(started)), ("path_kl", Date().timeIntervalSince(adjointDone))]
        return [terminalSum, startSum, kl]
    }

    /// Sets the time grid alone (tests of `subset`).
    package func prepareTimesForTesting(_ t: [Float]) {
        times = t
        S = t.count - 1
        (strataLow, strataHigh) = Self.strata(times: t, split: options.split)
    }

    /// Stratified subset of steps for one sample.
    package func subset(_ rng: inout CounterRNG) -> [Int] {
        let m = max(1, Int((options.timestepFraction * Double(S)).rounded(.up)))
        func pick(_ from: [Int], _ n: Int) -> [Int] {
            var a = from
            let n = min(n, a.count)
            for i in 0..<n { let j = i + Int(rng.next() % UInt64(a.count - i)); a.swapAt(i, j) }
            return Array(a[..<n])
        }
        var nLow = min(strataLow.count, (m + 1) / 2)
        let nHigh = min(strataHigh.count, m - nLow)
        nLow = min(strataLow.count, m - nHigh)
        return (pick(strataLow, nLow) + pick(strataHigh, nHigh)).sorted()
    }

    public func accumulateGradients(_ ctx: RLContext, samples: [Int], rng: inout CounterRNG) throws -> Double {
        let buf = ctx.buffer
        // Rows (sample, step) of the samples this rank holds (rowSample: local index, rowOf: the
        // sample's position in the minibatch); every rank draws every sample's steps.
        var rowSample: [Int] = [], rowStep: [Int] = [], rowOf: [Int] = []
        var perSampleSteps: [Int] = []
        for (j, i) in samples.enumerated() {
            let ks = subset(&rng)
            perSampleSteps.append(ks.count)
            guard let l = ctx.local(i) else { continue }
            for k in ks { rowSample.append(l); rowStep.append(k); rowOf.append(j) }
        }
        let R = rowSample.count
        var x = [Float](repeating: 0, count: R * D)
        for r in 0..<R {
            let o = buf.stateOffset(rowSample[r], rowStep[r])
            for d in 0..<D { x[r * D + d] = buf.trajectory[o + d] }
        }
        let tv = TrainingVelocity(model: ctx.model, guidance: nil)
        let v = tv.forward(x, t: rowStep.map { times[$0] }, y: rowSample.map { buf.labels[$0] })
        var resid = [Double](repeating: 0, count: R * D)
        var loss = [Double](repeating: 0, count: samples.count)
        for r in 0..<R {
            let j = rowOf[r], m = Double(perSampleSteps[j])
            let k = rowStep[r], sg = sigmas[k], base = (rowSample[r] * S + k) * D
            var ss = 0.0
            for d in 0..<D {
                let e = 2 / sg * (Double(v[r * D + d]) - Double(vBase[base + d])) - sg * Double(adjoint[base + d])
                resid[r * D + d] = e
                ss += e * e
            }
            loss[j] += ss / (2 * m)
        }
        // Every sample's loss on every rank (each has one owner: the sum is exact), so the
        // outlier quantile, the mask and the kept count below are the single-process ones.
        try ctx.sum(&loss)
        let finite = loss.filter { $0.isFinite }
        let keep = Self.outlierMask(loss, threshold: &threshold, quantile: options.clipQuantile, rho: options.clipRho, cap: options.clipCap)
        let kept = keep.filter { $0 }.count
        seen += samples.count
        masked += samples.count - kept
        // Every sample masked because its loss is NaN/Inf means the model itself diverged: report
        // it (the trainer refuses to write), not a zero loss that hides it.
        guard kept > 0 else { return finite.isEmpty ? .nan : 0 }
        var dv = [Float](repeating: 0, count: R * D)
        var total = 0.0
        for j in samples.indices where keep[j] { total += loss[j] }
        for r in 0..<R where keep[rowOf[r]] {
            let c = 2 / sigmas[rowStep[r]] / (Double(perSampleSteps[rowOf[r]]) * Double(kept))
            for d in 0..<D { dv[r * D + d] = Float(c * resid[r * D + d]) }
        }
        tv.backward(dv)
        return total / Double(kept)
    }

    public func diagnostics() -> [(String, Double)] {
        [("lambda", options.lambda), ("kl", klStart), ("outlier_frac", seen > 0 ? Double(masked) / Double(seen) : 0),
         ("outlier_threshold", threshold ?? .nan), ("adjoint_norm_terminal", adjTerminal), ("adjoint_norm_t1", adjStart),
         ("timesteps_per_sample", Double(max(1, Int((options.timestepFraction * Double(S)).rounded(.up)))))]
    }

    /// DRL's adaptive outlier clipping of per-sample losses l (App. H): with q the `quantile` of
    /// the finite losses, the threshold moves as tau_n = rho tau_{n-1} + (1 - rho) min(q, cap tau_{n-1})
    /// (the first minibatch sets tau = q), and samples with l >= tau_n or a non-finite l are masked.
    /// Returns which samples are kept; `quantile` >= 1 switches the clipping off (non-finite
    /// losses are still masked).
    public static func outlierMask(_ loss: [Double], threshold: inout Double?, quantile: Double, rho: Double, cap: Double) -> [Bool] {
        let finite = loss.filter { $0.isFinite }
        var keep = loss.map { $0.isFinite }
        guard quantile < 1, !finite.isEmpty else { return keep }
        let q = Stats.quantile(finite, quantile)
        if let prev = threshold {
            threshold = rho * prev + (1 - rho) * min(q, cap * prev)
        } else {
            threshold = q
        }
        for j in loss.indices where keep[j] && loss[j] >= threshold! { keep[j] = false }
        return keep
    }

    public static let thresholdKey = "rl.am.outlier_threshold"

    public func state() -> [String: String] {
        guard let threshold, threshold.isFinite else { return [:] }
        return [Self.thresholdKey: "\(threshold)"]
    }

    public func restore(_ metadata: [String: String]) throws {
        guard let s = metadata[Self.thresholdKey] else { return }
        guard let v = Double(s), v.isFinite else { throw RLError("checkpoint metadata \(Self.thresholdKey) = \(s) is not a number") }
        threshold = v
    }
}
