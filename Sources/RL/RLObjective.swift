import Foundation
import Flow
import Numerics

/// What an objective sees: the trainable policy, the frozen reference, the sampler that made the
/// buffer (rebuilt from metadata) and the buffer itself.
public struct RLContext {
    public let model: VelocityNet
    public let reference: VelocityNet
    public let sampler: Sampler
    public let buffer: RolloutBuffer
    /// Data parallelism: `buffer` then holds this rank's samples only, and sample indices given
    /// to the objective (`trainable`, minibatches) are global (RLShard). nil: one process.
    public let shard: RLShard?

    public init(model: VelocityNet, reference: VelocityNet, sampler: Sampler, buffer: RolloutBuffer, shard: RLShard? = nil) {
        self.model = model
        self.reference = reference
        self.sampler = sampler
        self.buffer = buffer
        self.shard = shard
    }
}

/// A pluggable RL objective. `RLTrainer` owns the loop (epochs, minibatches, optimizer, clipping,
/// NaN checks, checkpoint); an objective only
///   1. `prepare`s stop-gradient quantities from the buffer with the pre-update model and the
///      reference (advantages, adjoints, reference means, ...),
///   2. computes a minibatch loss and ACCUMULATES dLoss/dtheta into `ctx.model.params`,
///   3. reports diagnostics and any state that must survive to the next round (checkpoint
///      metadata under `rl.<name>.*`).
/// AM and GRPO are implemented; CRD and DiffusionNFT fit the same protocol (forward-process
/// losses need only the final `x`, which `prepare` can noise itself).
public protocol RLObjective: AnyObject {
    var name: String { get }
    /// Validates the buffer and precomputes. Throws a one-line RLError for missing inputs.
    func prepare(_ ctx: RLContext) throws
    /// Sample indices of the buffer this objective trains on (e.g. GRPO drops zero-advantage groups).
    var trainable: [Int] { get }
    /// Loss of one minibatch of buffer indices; gradients accumulate into ctx.model.params.
    func accumulateGradients(_ ctx: RLContext, samples: [Int], rng: inout CounterRNG) throws -> Double
    /// Diagnostics for the metrics record, in a fixed order.
    func diagnostics() -> [(String, Double)]
    /// State for the next round (checkpoint metadata); `restore` reads it back.
    func state() -> [String: String]
    func restore(_ metadata: [String: String]) throws
    /// Minibatches for one epoch (e.g. whole groups); nil: the trainer shuffles single samples.
    func minibatches(of samples: [Int], size: Int, rng: inout CounterRNG) -> [[Int]]?
    /// Called once after the round's last update with the new optimizer step (e.g. snapshot updates).
    func finishRound(_ ctx: RLContext, step: Int) throws
    /// Under a shard, before `diagnostics`: sums the diagnostics each rank accumulated over its
    /// own rows, so every rank reports the round's.
    func reduceDiagnostics(_ ctx: RLContext) throws
}

extension RLObjective {
    public func minibatches(of samples: [Int], size: Int, rng: inout CounterRNG) -> [[Int]]? { nil }
    public func finishRound(_ ctx: RLContext, step: Int) throws {}
    public func reduceDiagnostics(_ ctx: RLContext) throws {}
}

/// The policy's velocity on a batch of rows with per-row times, through classifier-free guidance
/// when the sampler used it, with a matching backward (parameter gradients of the guided v).
///
/// Rows are independent in the forward pass; under a shard each rank passes only the rows of its
/// own samples.
///
/// Memory stays bounded whatever the number of rows: `forward` runs the thread-safe inference
/// path (fixed-size chunks, no activations kept), and `backward` re-runs the training forward
/// chunk by chunk (`chunk` rows plus their unconditional twins) before each chunk's backward, so
/// parameter gradients accumulate chunk by chunk. The extra forward costs about a third more, so
/// when the rows fit in one chunk and there is no guidance, `forward` runs the training forward
/// itself and `backward` reuses its activations (the mlp's chunk holds a whole minibatch of
/// rows: its activations are small). The loss then comes from the same forward the gradient
/// differentiates, which agrees with the inference path to float rounding, not in every bit.
/// `package` (not public): the tests check chunked training against one batch.
package final class TrainingVelocity {
    let model: VelocityNet
    let guidance: Guidance?
    package var chunk: Int
    private var x: [Float] = [], t: [Float] = [], y: [Int] = []
    /// The model's training caches hold the last `forward`'s rows (nothing ran since).
    private var activationsKept = false

    package init(model: VelocityNet, guidance: Guidance?) {
        self.model = model
        self.guidance = guidance
        // mlp-small keeps about 110 KB of activations per row; a SiT row is tens of times more.
        chunk = model.config.arch == "mlp" ? 1024 : 256
    }

    /// v [rows, D] for x [rows, D].
    package func forward(_ x: [Float], t: [Float], y: [Int]) -> [Float] {
        self.x = x; self.t = t; self.y = y
        let D = model.sampleDimension, rows = t.count
        activationsKept = false
        guard rows > 0 else { return [] }
        if guidance == nil && rows <= chunk {
            let v = x.withUnsafeBufferPointer { model.forward($0.baseAddress!, t: t, y: y, batch: rows) }
            activationsKept = true
            return Array(UnsafeBufferPointer(start: v, count: rows * D))
        }
        var v = model.velocity(x, t: t, y: y)
        if let g = guidance {
            let active = (0..<rows).filter { g.isActive(at: t[$0]) }
            if !active.isEmpty {
                var xu = [Float](); xu.reserveCapacity(active.count * D)
                for r in active { xu += x[(r * D)..<((r + 1) * D)] }
                let vu = model.velocity(xu, t: active.map { t[$0] }, y: [Int](repeating: g.nullLabel, count: active.count))
                for (j, r) in active.enumerated() {
                    for d in 0..<D { let i = r * D + d; v[i] = vu[j * D + d] + g.scale * (v[i] - vu[j * D + d]) }
                }
            }
        }
        return v
    }

    /// Accumulates parameter gradients for dL/dv [rows, D] of the last forward.
    package func backward(_ dv: [Float]) {
        let D = model.sampleDimension, rows = t.count
        if activationsKept {
            activationsKept = false
            dv.withUnsafeBufferPointer { _ = model.backward($0.baseAddress!, paramGrads: true) }
            return
        }
        var start = 0
        while start < rows {
            let end = min(start + chunk, rows)
            var xs = Array(x[(start * D)..<(end * D)]), ts = Array(t[start..<end]), ys = Array(y[start..<end])
            var g = Array(dv[(start * D)..<(end * D)])
            if let gd = guidance {
                for r in start..<end where gd.isActive(at: t[r]) {
                    let local = (r - start) * D
                    xs += x[(r * D)..<((r + 1) * D)]
                    ts.append(t[r])
                    ys.append(gd.nullLabel)
                    g += dv[(r * D)..<((r + 1) * D)].map { $0 * (1 - gd.scale) }
                    for d in 0..<D { g[local + d] = dv[r * D + d] * gd.scale }
                }
            }
            let n = ts.count
            _ = xs.withUnsafeBufferPointer { model.forward($0.baseAddress!, t: ts, y: ys, batch: n) }
            g.withUnsafeBufferPointer { _ = model.backward($0.baseAddress!, paramGrads: true) }
            start = end
        }
    }
}

/// Small statistics helpers (float64).
package enum Stats {
    package static func mean(_ v: [Double]) -> Double { v.isEmpty ? .nan : v.reduce(0, +) / Double(v.count) }
    package static func std(_ v: [Double]) -> Double {
        guard v.count > 0 else { return .nan }
        let m = mean(v)
        return (v.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(v.count)).squareRoot()
    }
    /// Linear-interpolated quantile (numpy's default).
    package static func quantile(_ v: [Double], _ q: Double) -> Double {
        guard !v.isEmpty else { return .nan }
        let s = v.sorted()
        let pos = q * Double(s.count - 1)
        let lo = Int(pos.rounded(.down)), hi = min(lo + 1, s.count - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - Double(lo))
    }
}
