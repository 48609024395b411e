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
    public func run(objective: RLObjective, buffer: RolloutBuffer) throws -> [(String, Double)] {
        try Self.check(model: model, reference: reference, buffer: buffer)
        guard buffer.count > 0 else { throw RLError("the rollout buffer is empty") }
        // a buffer of final samples only (forward-process objectives) has no sampler to rebuild
        let sampler = buffer.steps == 0 ? try Sampler(kind: .euler, times: [1, 0]) : try buffer.sampler()
        let ctx = RLContext(model: model, reference: reference, sampler: sampler, buffer: buffer)
        try objective.prepare(ctx)
        var rng = CounterRNG(seed: options.seed &+ UInt64(startStep) &* 0x9E37_79B9_7F4A_7C15, stream: 0x7157)
        let train = objective.trainable
        let warm = LinearWarmup(base: options.lr, warmupSteps: options.warmup)
        var losses: [Double] = [], norms: [Double] = []
        var lastLR = Double(options.lr)
        let mb = max(1, options.minibatch)
        for _ in 0..<options.epochs where !train.isEmpty {
            let batches = objective.minibatches(of: train, size: mb, rng: &rng) ?? {
                let order = shuffledIndices(train.count, &rng).map { train[$0] }
                return stride(from: 0, to: order.count, by: mb).map { Array(order[$0..<min($0 + mb, order.count)]) }
            }()
            for batch in batches {
                model.params.zeroGrad()
                let loss = try objective.accumulateGradients(ctx, samples: batch, rng: &rng)
                guard loss.isFinite else { throw RLError("the \(objective.name) loss is \(loss) at update \(losses.count + 1); no checkpoint written") }
                let norm = clipGradNorm(optimizer.parameters, maxNorm: options.maxGradNorm > 0 ? options.maxGradNorm : .infinity)
                guard norm.isFinite else { throw RLError("the gradient norm is \(norm) at update \(losses.count + 1); no checkpoint written") }
                let lr = warm.lr(step: optimizer.stepCount + 1)
                lastLR = Double(lr)
                optimizer.step(lr: lr)
                ema.update()
                step += 1
                losses.append(loss)
                norms.append(norm)
            }
        }
        for p in model.params.all {
            for j in 0..<p.count where !p.value[j].isFinite {
                throw RLError("parameter \(p.name) is NaN or Inf after the update; no checkpoint written")
            }
        }
        // Finite weights can still be ruined (a huge --lr gives weights of 1e30 whose velocity
        // overflows): the updated velocity on a few buffer states must be finite too.
        try Self.checkVelocity(model: model, buffer: buffer)
        // Snapshot schedules count RL optimizer steps (AdamW's, fresh when RL starts from a `train`
        // base), not the checkpoint's step, which includes pretraining.
        try objective.finishRound(ctx, step: optimizer.stepCount)
        var m: [(String, Double)] = [("step_start", Double(startStep)), ("step", Double(step)), ("updates", Double(losses.count)),
                                     ("samples", Double(buffer.count)), ("sampler_steps", Double(buffer.steps)), ("lr", lastLR)]
        if let r = buffer.rewards?.map(Double.init) {
            m += [("reward_mean", Stats.mean(r)), ("reward_std", Stats.std(r)), ("reward_min", r.min()!), ("reward_max", r.max()!)]
        }
        m += [("loss", losses.isEmpty ? .nan : Stats.mean(losses)), ("loss_first", losses.first ?? .nan), ("loss_last", losses.last ?? .nan),
              ("grad_norm", norms.isEmpty ? .nan : Stats.mean(norms)), ("grad_norm_max", norms.max() ?? .nan)]
        m += objective.diagnostics()
        // low-level statistics of the rollouts' final images (reward-hacking watch)
        let shape = [buffer.count] + buffer.sampleShape
        if ImageStatistics.applies(to: shape) {
            let S = buffer.steps
            let final = (0..<buffer.count).flatMap { i in buffer.trajectory[buffer.stateOffset(i, S)..<(buffer.stateOffset(i, S) + buffer.dim)] }
            var st = ImageStatistics()
            try final.withUnsafeBufferPointer { try st.add($0, shape: shape) }
            m += st.values.map { ("image_" + $0.name, $0.value) }
        }
        return m
    }

    /// Throws when the model's velocity at the first states of up to 16 buffer samples holds
    /// NaN or Inf.
    static func checkVelocity(model: VelocityNet, buffer: RolloutBuffer) throws {
        let n = min(buffer.count, 16), D = buffer.dim
        guard n > 0 else { return }
        var x = [Float](); x.reserveCapacity(n * D)
        for i in 0..<n { let o = buffer.stateOffset(i, 0); x += buffer.trajectory[o..<(o + D)] }
        // slot 0 is the noise for recorded rollouts (t = 1), the final sample for final-only buffers
        let t = Float(buffer.steps == 0 ? 0.5 : Double(buffer.times[0]))
        let v = model.velocity(x, t: [Float](repeating: t, count: n), y: Array(buffer.labels[0..<n]))
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
