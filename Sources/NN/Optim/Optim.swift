import Foundation
import TensorStream

/// AdamW with PyTorch's semantics (`torch.optim.AdamW`, non-amsgrad, non-fused):
///
///     p  *= 1 - lr * weight_decay                      (decoupled decay, before the moments)
///     m   = beta1 * m + (1 - beta1) * g
///     v   = beta2 * v + (1 - beta2) * g^2
///     p  -= lr / (1 - beta1^k) * m / (sqrt(v) / sqrt(1 - beta2^k) + eps)
///
/// with k the 1-based step count; bias corrections in float64 as Python computes them. Only
/// trainable parameters are updated. State serialises to tensors `optim.exp_avg.<name>`,
/// `optim.exp_avg_sq.<name>` and metadata `optim.step` / `optim.config`, so a run resumes exactly.
public final class AdamW {
    public var lr: Float
    public var beta1: Float
    public var beta2: Float
    public var eps: Float
    public var weightDecay: Float
    /// Which parameters get weight decay (default: all trainable ones, as PyTorch with a single
    /// param group). A common alternative is `{ $0.shape.count >= 2 }`.
    public var decays: (Parameter) -> Bool = { _ in true }
    /// Number of steps taken so far.
    public private(set) var stepCount: Int = 0
    public let parameters: [Parameter]
    private var expAvg: [Buffer]
    private var expAvgSq: [Buffer]

    public init(_ params: ParameterSet, lr: Float = 1e-3, beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0.01) {
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        parameters = params.trainable
        expAvg = parameters.map { let b = Buffer($0.count); b.zeroed($0.count); return b }
        expAvgSq = parameters.map { let b = Buffer($0.count); b.zeroed($0.count); return b }
    }

    /// One update from the accumulated gradients (it does not zero them). `lr` overrides the
    /// stored rate for this step (for schedules).
    public func step(lr stepLR: Float? = nil) {
        stepCount += 1
        let lr = stepLR ?? self.lr
        let k = Double(stepCount)
        let bc1 = 1 - pow(Double(beta1), k)
        let bc2 = 1 - pow(Double(beta2), k)
        let stepSize = Float(Double(lr) / bc1)
        let bc2Sqrt = Float(bc2.squareRoot())
        let b1 = beta1, b2 = beta2, eps = eps
        for (i, p) in parameters.enumerated() {
            let w = p.value, g = p.grad, m = expAvg[i].pointer, v = expAvgSq[i].pointer
            if weightDecay != 0 && decays(p) {
                let f = 1 - lr * weightDecay
                for j in 0..<p.count { w[j] *= f }
            }
            for j in 0..<p.count {
                let gj = g[j]
                m[j] += (gj - m[j]) * (1 - b1)          // lerp, as torch does
                v[j] = v[j] * b2 + (1 - b2) * gj * gj
                let denom = v[j].squareRoot() / bc2Sqrt + eps
                w[j] -= stepSize * m[j] / denom
            }
        }
    }

    public static let stepKey = "optim.step"
    public static let configKey = "optim.config"

    public func stateTensors() -> [(String, Tensor)] {
        var out: [(String, Tensor)] = []
        for (i, p) in parameters.enumerated() {
            out.append(("optim.exp_avg." + p.name, Tensor(Array(UnsafeBufferPointer(start: expAvg[i].pointer, count: p.count)), shape: p.shape)))
            out.append(("optim.exp_avg_sq." + p.name, Tensor(Array(UnsafeBufferPointer(start: expAvgSq[i].pointer, count: p.count)), shape: p.shape)))
        }
        return out
    }

    public var stateMetadata: [String: String] {
        [Self.stepKey: String(stepCount),
         Self.configKey: "{\"lr\":\(lr),\"betas\":[\(beta1),\(beta2)],\"eps\":\(eps),\"weight_decay\":\(weightDecay)}"]
    }

    /// Adds the optimizer state (tensors and metadata) to a checkpoint record.
    public func save(into record: inout Record) {
        for (n, t) in stateTensors() { record[n] = t }
        for (k, v) in stateMetadata { record.metadata[k] = v }
    }

    /// Restores moments and step count. Hyperparameters are not read back: the caller sets them.
    public func load(from record: Record) throws {
        guard let s = record.metadata[Self.stepKey], let k = Int(s), k >= 0 else {
            throw StreamError.invalid("checkpoint has no valid `\(Self.stepKey)` metadata; it holds no optimizer state")
        }
        var ms: [[Float]] = [], vs: [[Float]] = []
        for p in parameters {
            for (prefix, into) in [("optim.exp_avg.", 0), ("optim.exp_avg_sq.", 1)] {
                guard let t = record[prefix + p.name] else { throw StreamError.invalid("checkpoint has no `\(prefix + p.name)` tensor") }
                guard t.shape == p.shape else { throw StreamError.invalid("`\(prefix + p.name)` has shape \(t.shape), expected \(p.shape)") }
                let v = try t.floats()
                if into == 0 { ms.append(v) } else { vs.append(v) }
            }
        }
        for i in parameters.indices {
            ms[i].withUnsafeBufferPointer { expAvg[i].pointer.update(from: $0.baseAddress!, count: $0.count) }
            vs[i].withUnsafeBufferPointer { expAvgSq[i].pointer.update(from: $0.baseAddress!, count: $0.count) }
        }
        stepCount = k
    }
}

/// Global-norm gradient clipping as `torch.nn.utils.clip_grad_norm_` (norm type 2): the norm over
/// all gradients (accumulated in float64) is returned; if it exceeds `maxNorm`, every gradient is
/// scaled by maxNorm / (norm + 1e-6).
@discardableResult
public func clipGradNorm(_ parameters: [Parameter], maxNorm: Double) -> Double {
    var s: Double = 0
    for p in parameters {
        let g = p.grad
        for j in 0..<p.count { let v = Double(g[j]); s += v * v }
    }
    let norm = s.squareRoot()
    let coef = maxNorm / (norm + 1e-6)
    if coef < 1 {
        let c = Float(coef)
        for p in parameters { let g = p.grad; for j in 0..<p.count { g[j] *= c } }
    }
    return norm
}

/// Linear learning-rate warmup: the rate for 1-based step k is base * min(1, k / warmupSteps)
/// (base from the first step when warmupSteps is 0).
public struct LinearWarmup: Sendable, Equatable {
    public var base: Float
    public var warmupSteps: Int

    public init(base: Float, warmupSteps: Int) {
        self.base = base
        self.warmupSteps = warmupSteps
    }

    public func lr(step k: Int) -> Float {
        guard warmupSteps > 0 else { return base }
        return base * Float(min(1, Double(k) / Double(warmupSteps)))
    }
}

/// Warmup-stable-decay: linear warmup, then the base rate, then, over the window
/// (cooldownStart, cooldownEnd], a linear decay to base / (cooldownEnd - cooldownStart) at the
/// last step. The decay window is absolute (optimizer steps), so a constant-rate run can be
/// branched into a cooldown from any of its checkpoints and the branch still resumes exactly.
public struct WarmupCooldown: Sendable, Equatable {
    public var warmup: LinearWarmup
    public var cooldownStart: Int?
    public var cooldownEnd: Int?

    public init(base: Float, warmupSteps: Int, cooldownStart: Int? = nil, cooldownEnd: Int? = nil) {
        warmup = LinearWarmup(base: base, warmupSteps: warmupSteps)
        self.cooldownStart = cooldownStart
        self.cooldownEnd = cooldownEnd
    }

    public func lr(step k: Int) -> Float {
        let rate = warmup.lr(step: k)
        guard let start = cooldownStart, let end = cooldownEnd, end > start, k > start else { return rate }
        let left = Double(max(end - k + 1, 1)) / Double(end - start)
        return rate * Float(min(1, left))
    }
}

/// Exponential moving average of weights, as DiT's `update_ema`:
/// ema = decay * ema + (1 - decay) * param, over every parameter (fixed ones just track their
/// constant value). Saved as tensors `ema.<name>` plus metadata `ema.decay`; `apply(to:)` copies
/// the averages into a parameter set (e.g. a model built to sample with EMA weights).
public final class EMA {
    public var decay: Float
    public let names: [String]
    private var shadow: [String: Buffer] = [:]
    private let source: ParameterSet

    public init(_ params: ParameterSet, decay: Float = 0.9999) {
        self.decay = decay
        source = params
        names = params.names
        for p in params.all {
            let b = Buffer(p.count)
            b.pointer.update(from: p.value, count: p.count)
            shadow[p.name] = b
        }
    }

    public func update() {
        let d = decay, od = 1 - decay
        for p in source.all {
            let e = shadow[p.name]!.pointer, w = p.value
            for j in 0..<p.count { e[j] = e[j] * d + w[j] * od }
        }
    }

    public func value(_ name: String) -> [Float]? {
        guard let b = shadow[name], let p = source[name] else { return nil }
        return Array(UnsafeBufferPointer(start: b.pointer, count: p.count))
    }

    /// Copies the averaged weights into `params` (same names and shapes).
    public func apply(to params: ParameterSet) {
        for p in params.all {
            guard let b = shadow[p.name], p.count == source[p.name]?.count else { preconditionFailure("EMA has no \(p.name)") }
            p.value.update(from: b.pointer, count: p.count)
        }
    }

    public static let decayKey = "ema.decay"

    public func stateTensors() -> [(String, Tensor)] {
        source.all.map { p in ("ema." + p.name, Tensor(Array(UnsafeBufferPointer(start: shadow[p.name]!.pointer, count: p.count)), shape: p.shape)) }
    }

    public func save(into record: inout Record) {
        for (n, t) in stateTensors() { record[n] = t }
        record.metadata[Self.decayKey] = String(decay)
    }

    public func load(from record: Record) throws {
        var values: [(Buffer, [Float])] = []
        for p in source.all {
            guard let t = record["ema." + p.name] else { throw StreamError.invalid("checkpoint has no `ema.\(p.name)` tensor") }
            guard t.shape == p.shape else { throw StreamError.invalid("`ema.\(p.name)` has shape \(t.shape), expected \(p.shape)") }
            values.append((shadow[p.name]!, try t.floats()))
        }
        for (b, v) in values { v.withUnsafeBufferPointer { b.pointer.update(from: $0.baseAddress!, count: $0.count) } }
    }
}

/// A group of processes that train one model together (data parallelism): every member computes
/// the gradient of its slice of each minibatch, and `sum` adds a buffer over all members in
/// place, so each one then takes the same optimizer step. The library knows only this protocol;
/// the tool that links MPI provides it.
public protocol DataParallelGroup: AnyObject {
    /// This member's index, 0..<size.
    var rank: Int { get }
    var size: Int { get }
    func sum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws
    func sum(_ buffer: UnsafeMutablePointer<Double>, count: Int) throws
    /// Runs `body` as one collective phase: every member runs it, then all agree on the outcome,
    /// so a failure on one member ends every member (the MPI group: the lowest failing rank
    /// rethrows, the others exit 1). Rule for callers: inside one phase, no collective call (a
    /// `sum`, a nested phase) may follow a statement that can throw on some members only.
    /// Default: just `body()`.
    func collective<T>(_ body: () throws -> T) throws -> T
}

extension DataParallelGroup {
    public func collective<T>(_ body: () throws -> T) throws -> T { try body() }
}

/// Sums the gradients of `parameters` over the group in place (one packed buffer, one call).
public func allReduceGradients(_ parameters: [Parameter], group: DataParallelGroup, scratch: inout [Float]) throws {
    let total = parameters.reduce(0) { $0 + $1.count }
    if scratch.count != total { scratch = [Float](repeating: 0, count: total) }
    try scratch.withUnsafeMutableBufferPointer { buf in
        var o = 0
        for p in parameters { (buf.baseAddress! + o).update(from: p.grad, count: p.count); o += p.count }
        try group.sum(buf.baseAddress!, count: total)
        o = 0
        for p in parameters { p.grad.update(from: buf.baseAddress! + o, count: p.count); o += p.count }
    }
}
