import Foundation
import Numerics
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
        let decayFactor: [Float] = parameters.map { weightDecay != 0 && decays($0) ? 1 - lr * weightDecay : 1 }
        let decayed = parameters.map { weightDecay != 0 && decays($0) }
        // Element-wise, so SIMD8 lanes and the split over workers give the scalar loop's bits
        // (no FMA contraction in Swift). Fixed segments over all parameters (`ParameterSegments`).
        let oneMinusB1 = 1 - b1, oneMinusB2 = 1 - b2
        segments.run { i, r in
            let p = parameters[i]
            let w = p.value + r.lowerBound, g = p.grad + r.lowerBound
            let m = expAvg[i].pointer + r.lowerBound, v = expAvgSq[i].pointer + r.lowerBound
            let n = r.count
            let f = decayFactor[i], decay = decayed[i]
            var j = 0
            let fv = SIMD8<Float>(repeating: f), a1 = SIMD8<Float>(repeating: oneMinusB1)
            let b2v = SIMD8<Float>(repeating: b2), a2 = SIMD8<Float>(repeating: oneMinusB2)
            let bcv = SIMD8<Float>(repeating: bc2Sqrt), ev = SIMD8<Float>(repeating: eps)
            let sv = SIMD8<Float>(repeating: stepSize)
            while j + 8 <= n {
                var wj = UnsafeRawPointer(w + j).loadUnaligned(as: SIMD8<Float>.self)
                if decay { wj = wj * fv }
                let gj = UnsafeRawPointer(g + j).loadUnaligned(as: SIMD8<Float>.self)
                var mj = UnsafeRawPointer(m + j).loadUnaligned(as: SIMD8<Float>.self)
                var vj = UnsafeRawPointer(v + j).loadUnaligned(as: SIMD8<Float>.self)
                mj += (gj - mj) * a1
                vj = vj * b2v + a2 * gj * gj
                let denom = vj.squareRoot() / bcv + ev
                wj -= sv * mj / denom
                UnsafeMutableRawPointer(w + j).storeBytes(of: wj, as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(m + j).storeBytes(of: mj, as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(v + j).storeBytes(of: vj, as: SIMD8<Float>.self)
                j += 8
            }
            while j < n {
                if decay { w[j] *= f }
                let gj = g[j]
                m[j] += (gj - m[j]) * oneMinusB1          // lerp, as torch does
                v[j] = v[j] * b2 + oneMinusB2 * gj * gj
                let denom = v[j].squareRoot() / bc2Sqrt + eps
                w[j] -= stepSize * m[j] / denom
                j += 1
            }
        }
    }

    private lazy var segments = ParameterSegments(parameters)

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
/// scaled by maxNorm / (norm + 1e-6). The float64 sum runs in four lanes per fixed segment of
/// `ParameterSegments`, segments added in order, so it is the same for any worker count (since
/// #14; before, one sequential sum: the norm differs from it by rounding, ~1e-16 relative).
@discardableResult
public func clipGradNorm(_ parameters: [Parameter], maxNorm: Double) -> Double {
    let segments = ParameterSegments(parameters)
    var partial = [Double](repeating: 0, count: segments.count)
    partial.withUnsafeMutableBufferPointer { out in
        let o = out.baseAddress!
        segments.runIndexed { k, i, r in
            let g = parameters[i].grad + r.lowerBound, n = r.count
            var acc = SIMD4<Double>(repeating: 0)
            var j = 0
            while j + 4 <= n {
                let v = SIMD4<Double>(Double(g[j]), Double(g[j + 1]), Double(g[j + 2]), Double(g[j + 3]))
                acc += v * v
                j += 4
            }
            var s = acc.sum()
            while j < n { let v = Double(g[j]); s += v * v; j += 1 }
            o[k] = s
        }
    }
    var s: Double = 0
    for v in partial { s += v }
    let norm = s.squareRoot()
    let coef = maxNorm / (norm + 1e-6)
    if coef < 1 {
        let c = Float(coef)
        segments.run { i, r in
            let g = parameters[i].grad
            for j in r { g[j] *= c }
        }
    }
    return norm
}

/// All elements of a list of parameters cut into fixed segments (at most `size` elements, never
/// crossing a parameter), so the optimizer's element-wise passes split over the workers
/// (`Parallel`) without a dispatch per small parameter. The cut depends only on the shapes, never
/// on the worker count, so per-segment reductions added in segment order are reproducible.
struct ParameterSegments {
    static let size = 1 << 15
    let items: [(param: Int, range: Range<Int>)]
    let total: Int
    var count: Int { items.count }

    init(_ parameters: [Parameter]) {
        var items: [(Int, Range<Int>)] = []
        var total = 0
        for (i, p) in parameters.enumerated() {
            var s = 0
            while s < p.count {
                let e = min(p.count, s + Self.size)
                items.append((i, s..<e))
                s = e
            }
            total += p.count
        }
        self.items = items
        self.total = total
    }

    /// body(segment index, parameter index, element range), segments split over the workers.
    func runIndexed(_ body: (Int, Int, Range<Int>) -> Void) {
        let items = items
        // about 64k elements per worker at least, counted in segments
        let grain = max(1, items.count * 65_536 / max(1, total))
        Parallel.forRanges(items.count, grain: grain) { range in
            for k in range { body(k, items[k].param, items[k].range) }
        }
    }

    func run(_ body: (Int, Range<Int>) -> Void) {
        runIndexed { _, i, r in body(i, r) }
    }
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
        let all = source.all
        let shadows = all.map { shadow[$0.name]!.pointer }
        // element-wise: SIMD8 lanes and the split over workers keep the scalar loop's bits
        ParameterSegments(all).run { i, r in
            let e = shadows[i] + r.lowerBound, w = UnsafePointer(all[i].value) + r.lowerBound, n = r.count
            let dv = SIMD8<Float>(repeating: d), odv = SIMD8<Float>(repeating: od)
            var j = 0
            while j + 8 <= n {
                let ej = UnsafeRawPointer(e + j).loadUnaligned(as: SIMD8<Float>.self)
                let wj = UnsafeRawPointer(w + j).loadUnaligned(as: SIMD8<Float>.self)
                UnsafeMutableRawPointer(e + j).storeBytes(of: ej * dv + wj * odv, as: SIMD8<Float>.self)
                j += 8
            }
            while j < n { e[j] = e[j] * d + w[j] * od; j += 1 }
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
