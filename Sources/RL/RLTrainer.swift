import Foundation
import Flow
import Metrics
import NN
import Numerics
import TensorStream

public struct RLTrainOptions {
    public var epochs = 1
    /// Samples per minibatch (one optimizer step each).
    public var minibatch = 64
    public var lr: Float = 1e-4
    public var warmup = 0
    public var weightDecay: Float = 0
    /// Global gradient-norm clip (0: no clipping; the norm is still reported).
    public var maxGradNorm = 1.0
    public var emaDecay: Float = 0.999
    public var seed: UInt64 = 0
    public init() {}
}

/// One `rlstep` round: the loop every objective shares. Owns optimizer steps (AdamW with linear
/// warmup on the checkpoint's global step), gradient clipping, EMA, NaN/Inf checks and the
/// metrics; the objective supplies the loss.
public final class RLTrainer {
    public let model: VelocityNet
    public let reference: VelocityNet
    public let optimizer: AdamW
    public let ema: EMA
    public let startStep: Int
    public let options: RLTrainOptions
    public private(set) var step: Int
    /// Wall-clock seconds of the round's stages, in order (`rlstep --profile`): prepare (the
    /// checks, the gathers and the objective's stop-gradient quantities), gradients (the
    /// objective's forward and backward passes, and the all-reduce under a shard), optimizer
    /// (clip, AdamW, EMA) and finish (the weight and velocity checks, the metrics).
    public private(set) var stageSeconds: [(String, Double)] = []

    public init(model: VelocityNet, reference: VelocityNet, optimizer: AdamW, ema: EMA, step: Int, options: RLTrainOptions) {
        self.model = model
        self.reference = reference
        self.optimizer = optimizer
        self.ema = ema
        self.startStep = step
        self.step = step
        self.options = options
    }

    /// Checks that the buffer fits the model: sample shape, labels, the same architecture for
    /// policy and reference.
    public static func check(model: VelocityNet, reference: VelocityNet, buffer: RolloutBuffer) throws {
        guard model.config == reference.config else {
            throw RLError("the reference model's architecture differs from the policy's (\(reference.config.json()) vs \(model.config.json()))")
        }
        let c = model.config
        guard buffer.sampleShape == [c.channels, c.height, c.width] else {
            throw RLError("the buffer's samples have shape \(buffer.sampleShape) but the model works on [\(c.channels), \(c.height), \(c.width)]")
        }
        if let bad = buffer.labels.first(where: { $0 < 0 || $0 > c.numClasses }) {
            throw RLError("label \(bad) is outside the model's classes 0...\(c.numClasses)")
        }
    }

    /// Runs epochs x minibatches over the objective's trainable samples. Returns the metrics
    /// (fixed key order). Throws, leaving no checkpoint to write, on NaN/Inf in a loss, gradient
    /// norm or the final weights.
    ///
    /// With a `shard` (data parallelism, RLShard), `buffer` holds this rank's samples; the
    /// minibatches, the random numbers and every check are those of the single-process round,
    /// the gradients are summed over the ranks before every optimizer step (so the weights stay
    /// identical on every rank), and the metrics are the whole round's on every rank.
    public func run(objective: RLObjective, buffer: RolloutBuffer, shard: RLShard? = nil) throws -> [(String, Double)] {
        var clock = Date()
        func lap() -> Double { let now = Date(); defer { clock = now }; return now.timeIntervalSince(clock) }
        stageSeconds = []
        // Checks of this rank's own buffer; a rank that fails stops all of them here.
        let sampler: Sampler
        if let shard {
            sampler = try shard.phase { try Self.checkLocal(model: model, reference: reference, buffer: buffer) }
        } else {
            sampler = try Self.checkLocal(model: model, reference: reference, buffer: buffer)
        }
        if let shard { try Self.gatherGlobal(shard, buffer: buffer) }
        let ctx = RLContext(model: model, reference: reference, sampler: sampler, buffer: buffer, shard: shard)
        try objective.prepare(ctx)
        stageSeconds.append(("prepare", lap()))
        var gradientSeconds = 0.0, optimizerSeconds = 0.0
        var rng = CounterRNG(seed: options.seed &+ UInt64(startStep) &* 0x9E37_79B9_7F4A_7C15, stream: 0x7157)
        let train = objective.trainable
        let warm = LinearWarmup(base: options.lr, warmupSteps: options.warmup)
        var losses: [Double] = [], norms: [Double] = []
        var lastLR = Double(options.lr)
        let mb = max(1, options.minibatch)
        var reduceScratch: [Float] = []
        for _ in 0..<options.epochs where !train.isEmpty {
            let batches = objective.minibatches(of: train, size: mb, rng: &rng) ?? {
                let order = shuffledIndices(train.count, &rng).map { train[$0] }
                return stride(from: 0, to: order.count, by: mb).map { Array(order[$0..<min($0 + mb, order.count)]) }
            }()
            for batch in batches {
                model.params.zeroGrad()
                // Under a shard the objective returns the whole minibatch's loss (it sums what it
                // needs over the ranks), and the gradients are summed here: every check below then
                // sees the same numbers on every rank, so all of them stop together.
                let loss = try objective.accumulateGradients(ctx, samples: batch, rng: &rng)
                if let shard { try allReduceGradients(optimizer.parameters, group: shard.group, scratch: &reduceScratch) }
                gradientSeconds += lap()
                guard loss.isFinite else { throw RLError("the \(objective.name) loss is \(loss) at update \(losses.count + 1); no checkpoint written") }
                let norm = clipGradNorm(optimizer.parameters, maxNorm: options.maxGradNorm > 0 ? options.maxGradNorm : .infinity)
                guard norm.isFinite else { throw RLError("the gradient norm is \(norm) at update \(losses.count + 1); no checkpoint written") }
                let lr = warm.lr(step: optimizer.stepCount + 1)
                lastLR = Double(lr)
                optimizer.step(lr: lr)
                ema.update()
                optimizerSeconds += lap()
                step += 1
                losses.append(loss)
                norms.append(norm)
            }
        }
        stageSeconds += [("gradients", gradientSeconds), ("optimizer", optimizerSeconds)]
        _ = lap()
        for p in model.params.all {
            for j in 0..<p.count where !p.value[j].isFinite {
                throw RLError("parameter \(p.name) is NaN or Inf after the update; no checkpoint written")
            }
        }
        // Finite weights can still be ruined (a huge --lr gives weights of 1e30 whose velocity
        // overflows): the updated velocity on a few buffer states must be finite too (the first
        // 16 of the round; under a shard each rank checks those it holds).
        try ctx.phase { try Self.checkVelocity(model: model, buffer: buffer, shard: shard) }
        // Snapshot schedules count RL optimizer steps (AdamW's, fresh when RL starts from a `train`
        // base), not the checkpoint's step, which includes pretraining.
        try objective.finishRound(ctx, step: optimizer.stepCount)
        var m: [(String, Double)] = [("step_start", Double(startStep)), ("step", Double(step)), ("updates", Double(losses.count)),
                                     ("samples", Double(ctx.total)), ("sampler_steps", Double(buffer.steps)), ("lr", lastLR)]
        if let r = ctx.rewards?.map(Double.init) {
            m += [("reward_mean", Stats.mean(r)), ("reward_std", Stats.std(r)), ("reward_min", r.min()!), ("reward_max", r.max()!)]
        }
        m += [("loss", losses.isEmpty ? .nan : Stats.mean(losses)), ("loss_first", losses.first ?? .nan), ("loss_last", losses.last ?? .nan),
              ("grad_norm", norms.isEmpty ? .nan : Stats.mean(norms)), ("grad_norm_max", norms.max() ?? .nan)]
        if shard != nil { try objective.reduceDiagnostics(ctx) }
        m += objective.diagnostics()
        // low-level statistics of the rollouts' final images (reward-hacking watch)
        let shape = [buffer.count] + buffer.sampleShape
        if ImageStatistics.applies(to: shape) {
            let S = buffer.steps
            let final = (0..<buffer.count).flatMap { i in buffer.trajectory[buffer.stateOffset(i, S)..<(buffer.stateOffset(i, S) + buffer.dim)] }
            var terms = try final.withUnsafeBufferPointer { try ImageStatistics.terms($0, shape: shape) }
            if let shard {
                // every image's terms, summed in the single-process order
                let columns = try (0..<5).map { c in try shard.gather(terms.map { $0[c] }) }
                terms = (0..<shard.total).map { i in columns.map { $0[i] } }
            }
            var st = ImageStatistics()
            try st.add(terms: terms, channels: shape[1])
            m += st.values.map { ("image_" + $0.name, $0.value) }
        }
        stageSeconds.append(("finish", lap()))
        return m
    }

    /// The checks of `check` and the sampler rebuilt from the buffer's metadata.
    static func checkLocal(model: VelocityNet, reference: VelocityNet, buffer: RolloutBuffer) throws -> Sampler {
        try check(model: model, reference: reference, buffer: buffer)
        guard buffer.count > 0 else { throw RLError("the rollout buffer is empty") }
        // a buffer of final samples only (forward-process objectives) has no sampler to rebuild
        return buffer.steps == 0 ? try Sampler(kind: .euler, times: [1, 0]) : try buffer.sampler()
    }

    /// Under a shard: checks that every rank's records come from the same sampler grid and
    /// settings (one process checks each record against the first), and gathers every sample's
    /// reward and group.
    static func gatherGlobal(_ shard: RLShard, buffer: RolloutBuffer) throws {
        var h = FNV1a()
        h.add(buffer.sampleShape.map(String.init).joined(separator: ","))
        h.add(String(buffer.steps))
        h.add(buffer.times.map { String($0.bitPattern) }.joined(separator: ","))
        for k in RolloutBuffer.consistentKeys { h.add(k + "=" + (buffer.metadata[k] ?? "(absent)")) }
        let mine = [Double(h.value >> 32), Double(h.value & 0xFFFF_FFFF),
                    buffer.rewards == nil ? 0 : 1, buffer.groups == nil ? 0 : 1]
        let rows = try shard.perRank(mine)
        try shard.phase {
            if rows[shard.group.rank][0..<2] != rows[0][0..<2] {
                throw RLError("the records of rank \(shard.group.rank) come from another sampler grid, sample shape or sampler settings than rank 0's; one buffer must come from one sampler")
            }
        }
        if rows.allSatisfy({ $0[2] == 1 }) {
            shard.rewards = try shard.gather(buffer.rewards!.map(Double.init)).map(Float.init)
        }
        if rows.allSatisfy({ $0[3] == 1 }) {
            shard.groups = try shard.gather(buffer.groups!.map(Double.init)).map { Int64($0) }
        }
    }

    /// Throws when the model's velocity at the first states of up to 16 buffer samples holds
    /// NaN or Inf (under a shard: of those of the round's first 16 this rank holds).
    static func checkVelocity(model: VelocityNet, buffer: RolloutBuffer, shard: RLShard? = nil) throws {
        let D = buffer.dim
        let rows = (0..<buffer.count).filter { (shard?.globalIndex[$0] ?? $0) < 16 }
        let n = rows.count
        guard n > 0 else { return }
        var x = [Float](); x.reserveCapacity(n * D)
        for i in rows { let o = buffer.stateOffset(i, 0); x += buffer.trajectory[o..<(o + D)] }
        // slot 0 is the noise for recorded rollouts (t = 1), the final sample for final-only buffers
        let t = Float(buffer.steps == 0 ? 0.5 : Double(buffer.times[0]))
        let v = model.velocity(x, t: [Float](repeating: t, count: n), y: rows.map { buffer.labels[$0] })
        if v.contains(where: { !$0.isFinite }) {
            throw RLError("the updated model's velocity is NaN or Inf on the buffer's samples (the update diverged; lower {lr}); no checkpoint written")
        }
    }

    /// The metrics as one JSON object (one line), numbers with 9 significant digits, non-finite as null.
    public static func json(_ metrics: [(String, Double)], strings: [(String, String)] = []) -> String {
        let parts = strings.map { "\(JSON.quote($0.0)):\(JSON.quote($0.1))" }
            + metrics.map { "\(JSON.quote($0.0)):\($0.1.isFinite ? String(format: "%.9g", $0.1) : "null")" }
        return "{" + parts.joined(separator: ",") + "}"
    }
}

/// 64-bit FNV-1a of strings (a cheap fingerprint to compare settings across ranks).
struct FNV1a {
    var value: UInt64 = 0xCBF2_9CE4_8422_2325
    mutating func add(_ s: String) {
        for b in s.utf8 { value = (value ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        value = (value ^ 0xFF) &* 0x0000_0100_0000_01B3
    }
}
