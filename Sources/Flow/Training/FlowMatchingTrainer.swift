import Foundation
import NN
import Numerics
import TensorStream

/// How training draws the time t of each sample.
public enum TimeDistribution: Equatable, Sendable {
    /// t ~ U(0, 1).
    case uniform
    /// t = sigmoid(m + s n), n ~ N(0, 1) (SD3's logit-normal sampling).
    case logitNormal(mean: Double, std: Double)

    /// "uniform", "logit-normal" (m = 0, s = 1) or "logit-normal:M,S".
    public init(parsing text: String) throws {
        if text == "uniform" { self = .uniform; return }
        if text == "logit-normal" { self = .logitNormal(mean: 0, std: 1); return }
        if text.hasPrefix("logit-normal:") {
            let parts = text.dropFirst("logit-normal:".count).split(separator: ",").map { Double($0.trimmingCharacters(in: .whitespaces)) }
            if parts.count == 2, let m = parts[0], let s = parts[1], m.isFinite, s.isFinite, s > 0 {
                self = .logitNormal(mean: m, std: s)
                return
            }
        }
        throw FlowError("{t_dist} must be uniform, logit-normal or logit-normal:MEAN,STD (STD > 0), got '\(text)'")
    }

    public var text: String {
        switch self {
        case .uniform: return "uniform"
        case .logitNormal(let m, let s): return "logit-normal:\(m),\(s)"
        }
    }
}

/// The hyperparameters of a run. Stored as JSON in checkpoint metadata `train.settings`, so
/// `--resume` continues with exactly the same ones (the command line may only change the
/// total number of steps and checkpointing/logging).
public struct TrainSettings: Codable, Equatable, Sendable {
    public var batch: Int = 256
    public var lr: Float = 5e-4
    public var warmup: Int = 100
    public var weightDecay: Float = 0
    /// Global-norm clip; 0 disables clipping (the norm is still measured).
    public var gradClip: Double = 1
    /// EMA decay; the effective decay at step k is min(decay, (1 + k) / (10 + k)).
    public var ema: Float = 0.999
    public var labelDropout: Double = 0.1
    public var tDist: String = "uniform"
    public var seed: UInt64 = 0
    /// Cooldown window (warmup-stable-decay): the rate decays linearly over optimizer steps
    /// (cooldownStart, cooldownEnd]. Absent (nil) in constant-rate runs, and then left out of the
    /// JSON, so their checkpoints keep the bytes they had before the setting existed.
    public var cooldownStart: Int?
    public var cooldownEnd: Int?

    public init() {}

    enum CodingKeys: String, CodingKey {
        case batch, lr, warmup, seed, ema
        case weightDecay = "weight_decay", gradClip = "grad_clip", labelDropout = "label_dropout", tDist = "t_dist"
        case cooldownStart = "cooldown_start", cooldownEnd = "cooldown_end"
    }

    public func validate() throws {
        guard batch > 0 else { throw FlowError("{batch} must be positive") }
        guard lr.isFinite, lr > 0 else { throw FlowError("{lr} must be positive") }
        guard warmup >= 0 else { throw FlowError("{warmup} must be >= 0") }
        guard weightDecay.isFinite, weightDecay >= 0 else { throw FlowError("{weight_decay} must be >= 0") }
        guard gradClip.isFinite, gradClip >= 0 else { throw FlowError("{grad_clip} must be >= 0 (0: no clipping)") }
        guard ema.isFinite, ema >= 0, ema < 1 else { throw FlowError("{ema} must be in [0, 1)") }
        guard labelDropout.isFinite, labelDropout >= 0, labelDropout <= 1 else { throw FlowError("{label_dropout} must be in [0, 1]") }
        _ = try TimeDistribution(parsing: tDist)
        guard (cooldownStart == nil) == (cooldownEnd == nil) else { throw FlowError("a cooldown needs both its start and its end step") }
        if let a = cooldownStart, let b = cooldownEnd {
            guard a >= 0, b > a else { throw FlowError("the cooldown window (\(a), \(b)] is empty; {cooldown} must be positive and at most {steps}") }
        }
    }

    /// The learning rate of every step of the run.
    public var schedule: WarmupCooldown {
        WarmupCooldown(base: lr, warmupSteps: warmup, cooldownStart: cooldownStart, cooldownEnd: cooldownEnd)
    }

    public func json() -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return String(decoding: try! enc.encode(self), as: UTF8.self)
    }

    public static func from(json: String) throws -> TrainSettings {
        guard let s = try? JSONDecoder().decode(TrainSettings.self, from: Data(json.utf8)) else {
            throw FlowError("checkpoint metadata `train.settings` is not valid: \(json)")
        }
        return s
    }
}

/// What one optimizer step measured.
public struct TrainStepStats: Sendable {
    public var step: Int
    public var loss: Double
    public var lr: Float
    public var gradNorm: Double
}

/// Conditional flow matching (docs/design.md conventions): for data x0 with label y,
///
///     t ~ U(0,1) or logit-normal,  eps ~ N(0, I),  x_t = (1 - t) x0 + t eps,
///     loss = mean over batch and dimensions of (v(x_t, t, y') - (eps - x0))^2,
///
/// with y' = the null label with probability `labelDropout` (classifier-free guidance). Then
/// global-norm clipping, AdamW with linear warmup (and an optional linear cooldown), and the EMA
/// update.
///
/// Randomness, all counter-based so a resumed run continues exactly:
/// - minibatch order: epoch e visits the data in a Fisher-Yates permutation drawn from
///   `CounterRNG(seed, stream: 0x1000_0000 + e)`; a batch that runs past the end of an epoch takes
///   the rest from the next epoch's order. State: (epoch, cursor).
/// - t and label dropout: one `CounterRNG(seed, stream: 0x7141)`; per step, B draws of t (two per
///   draw for logit-normal), then B dropout draws. State: its position.
/// - eps: `CounterNoise(seed)` at id = step (1-based), stream 0x7E95, elements 0..<B*D: a pure
///   function of (seed, step).
public final class FlowMatchingTrainer {
    public let net: VelocityNet
    public let settings: TrainSettings
    public let data: TrainingData
    public let optimizer: AdamW
    public let ema: EMA
    public let schedule: WarmupCooldown
    let timeDistribution: TimeDistribution

    /// Steps completed.
    public private(set) var step = 0
    public private(set) var epoch = 0
    public private(set) var cursor = 0
    private var rng: CounterRNG
    private var permutation: [Int] = []
    private var permutationEpoch = -1

    private var xt: [Float], target: [Float], dv: [Float]
    /// Data parallelism: this process computes rows [B r / K, B (r+1) / K) of every minibatch
    /// (every member draws the same indices, t, labels and noise), the gradients and the loss
    /// are summed over the group before clipping, and every member takes the same step.
    public let group: DataParallelGroup?
    private var reduceScratch: [Float] = []

    public static let epochKey = "train.epoch"
    public static let cursorKey = "train.cursor"
    public static let rngKey = "train.rng_position"
    public static let settingsKey = "train.settings"
    public static let samplesKey = "train.samples"

    public init(net: VelocityNet, settings: TrainSettings, data: TrainingData, group: DataParallelGroup? = nil) throws {
        try settings.validate()
        if let group, settings.batch < group.size {
            throw FlowError("a minibatch of \(settings.batch) cannot be split over \(group.size) processes")
        }
        self.group = group
        try data.check(against: net.config)
        self.net = net
        self.settings = settings
        self.data = data
        timeDistribution = try TimeDistribution(parsing: settings.tDist)
        optimizer = AdamW(net.params, lr: settings.lr, weightDecay: settings.weightDecay)
        ema = EMA(net.params, decay: settings.ema)
        schedule = settings.schedule
        rng = CounterRNG(seed: settings.seed, stream: 0x7141)
        let n = settings.batch * net.config.sampleDimension
        xt = [Float](repeating: 0, count: n)
        target = xt
        dv = xt
    }

    /// Restores step, data order, RNG position, optimizer and EMA state from a training
    /// checkpoint written by `checkpointRecord` (the weights are loaded by the caller's
    /// `VelocityNet.load`).
    public func restore(from record: Record) throws {
        func int(_ key: String) throws -> Int {
            guard let s = record.metadata[key], let v = Int(s), v >= 0 else {
                throw FlowError("checkpoint has no valid `\(key)` metadata; it was not written by train, so it cannot be resumed")
            }
            return v
        }
        let samples = try int(Self.samplesKey)
        guard samples == data.count else {
            throw FlowError("the checkpoint was trained on \(samples) samples but the data stream holds \(data.count); resume with the same data")
        }
        step = try TrainingCheckpoint.step(of: record)
        epoch = try int(Self.epochKey)
        cursor = try int(Self.cursorKey)
        guard cursor <= data.count else { throw FlowError("checkpoint data cursor \(cursor) is past the data") }
        guard let p = record.metadata[Self.rngKey], let position = UInt64(p) else {
            throw FlowError("checkpoint has no valid `\(Self.rngKey)` metadata")
        }
        rng = CounterRNG(seed: settings.seed, stream: 0x7141, position: position)
        try optimizer.load(from: record)
        try ema.load(from: record)
        guard optimizer.stepCount == step else {
            throw FlowError("checkpoint step \(step) disagrees with its optimizer step \(optimizer.stepCount)")
        }
    }

    private func order(for e: Int) -> [Int] {
        if e != permutationEpoch {
            var g = CounterRNG(seed: settings.seed, stream: UInt32(truncatingIfNeeded: 0x1000_0000 + e))
            var p = Array(0..<data.count)
            if p.count > 1 {
                for i in stride(from: p.count - 1, to: 0, by: -1) {
                    let j = Int(g.next() % UInt64(i + 1))
                    p.swapAt(i, j)
                }
            }
            permutation = p
            permutationEpoch = e
        }
        return permutation
    }

    /// The next minibatch's sample indices.
    private func nextIndices() -> [Int] {
        var out: [Int] = []
        out.reserveCapacity(settings.batch)
        while out.count < settings.batch {
            if cursor >= data.count { epoch += 1; cursor = 0 }
            let p = order(for: epoch)
            let take = min(settings.batch - out.count, data.count - cursor)
            out.append(contentsOf: p[cursor..<(cursor + take)])
            cursor += take
        }
        return out
    }

    /// One optimizer step. Throws (before touching the weights) when the loss or the gradient
    /// norm is not finite.
    @discardableResult
    public func trainStep() throws -> TrainStepStats {
        let k = step + 1
        let B = settings.batch, D = net.config.sampleDimension
        let indices = nextIndices()
        var t = [Float](repeating: 0, count: B)
        for b in 0..<B {
            switch timeDistribution {
            case .uniform: t[b] = Float(rng.uniform())
            case .logitNormal(let m, let s): t[b] = Float(1 / (1 + exp(-(m + s * rng.normal()))))
            }
        }
        let labels = net.dropLabels(indices.map { data.y[$0] }, probability: settings.labelDropout, rng: &rng)
        let noise = CounterNoise(seed: settings.seed)
        xt.withUnsafeMutableBufferPointer { xp in
            target.withUnsafeMutableBufferPointer { tp in
                noise.fillNormal(id: UInt64(k), stream: 0x7E95, into: tp)  // eps, then eps - x0 in place
                data.x.withUnsafeBufferPointer { dp in
                    for b in 0..<B {
                        let src = indices[b] * D, dst = b * D
                        let tb = t[b], one = 1 - t[b]
                        for d in 0..<D {
                            let x0 = dp[src + d], eps = tp[dst + d]
                            xp[dst + d] = one * x0 + tb * eps
                            tp[dst + d] = eps - x0
                        }
                    }
                }
            }
        }
        net.params.zeroGrad()
        // This process's rows of the minibatch: all of them without a group.
        let lo = group.map { B * $0.rank / $0.size } ?? 0
        let hi = group.map { B * ($0.rank + 1) / $0.size } ?? B
        let b = hi - lo
        let v = xt.withUnsafeBufferPointer { net.forward($0.baseAddress! + lo * D, t: Array(t[lo..<hi]), y: Array(labels[lo..<hi]), batch: b) }
        var sum = 0.0
        let scale = Float(2.0 / Double(B * D))
        target.withUnsafeBufferPointer { tp in
            dv.withUnsafeMutableBufferPointer { gp in
                for i in 0..<(b * D) {
                    let r = v[i] - tp[lo * D + i]
                    sum += Double(r * r)
                    gp[i] = scale * r
                }
            }
        }
        if group == nil {
            let loss = sum / Double(B * D)
            guard loss.isFinite else {
                throw FlowError("loss is not finite (\(loss)) at step \(k); lower {lr} or check the data")
            }
        }
        dv.withUnsafeBufferPointer { _ = net.backward($0.baseAddress!) }
        if let group {
            // The checks below then see the same sums on every member, so all of them stop together.
            try allReduceGradients(optimizer.parameters, group: group, scratch: &reduceScratch)
            try withUnsafeMutablePointer(to: &sum) { try group.sum($0, count: 1) }
        }
        let loss = sum / Double(B * D)
        guard loss.isFinite else {
            throw FlowError("loss is not finite (\(loss)) at step \(k); lower {lr} or check the data")
        }
        let norm = clipGradNorm(optimizer.parameters, maxNorm: settings.gradClip > 0 ? settings.gradClip : .infinity)
        guard norm.isFinite else {
            throw FlowError("gradient norm is not finite (\(norm)) at step \(k); lower {lr} or check the data")
        }
        let lr = schedule.lr(step: k)
        optimizer.step(lr: lr)
        ema.decay = min(settings.ema, Float(1 + Double(k)) / Float(10 + Double(k)))
        ema.update()
        step = k
        return TrainStepStats(step: k, loss: loss, lr: lr, gradNorm: norm)
    }

    /// A complete training checkpoint: weights, AdamW and EMA state, and everything `restore`
    /// needs, plus `extra` metadata (tool, version, parent digest...). Contains no time stamps,
    /// so an uninterrupted and a resumed run write identical bytes.
    public func checkpointRecord(parentDigest: String?, metadata extra: [String: String] = [:]) -> Record {
        var meta = extra
        meta[Self.settingsKey] = settings.json()
        meta[Self.epochKey] = String(epoch)
        meta[Self.cursorKey] = String(cursor)
        meta[Self.rngKey] = String(rng.position)
        meta[Self.samplesKey] = String(data.count)
        meta["seed"] = String(settings.seed)
        // The EMA decay stored is the configured one (the effective decay is a function of step).
        let saved = ema.decay
        ema.decay = settings.ema
        defer { ema.decay = saved }
        return TrainingCheckpoint.record(model: net, optimizer: optimizer, ema: ema, step: step,
                                         parentDigest: parentDigest, metadata: meta)
    }
}
