import CKernels
import Foundation
import Numerics

// Layers with explicit forward and backward passes, in the spirit of llm.c.
//
// Conventions shared by every layer here:
// - Activations are float32, row-major, batched: a "row" is one token (or one sample) and all
//   rows of all samples go through one sgemm.
// - `forward` reads its input through a pointer, CACHES THAT POINTER (and whatever else backward
//   needs) and returns a pointer into a buffer the layer owns. The caller must keep the input
//   unchanged until `backward` has run; the returned output stays valid until the next forward.
// - `backward` takes dL/d(output) and returns dL/d(input) in a layer-owned buffer (or writes it
//   where told); parameter gradients are ACCUMULATED into `Parameter.grad` when `paramGrads`.
// - Buffers grow to the largest batch seen and are reused, so steady-state passes do not allocate.

/// y = x W^T + b with W [out, in] (PyTorch `nn.Linear`).
public final class Linear {
    public let inFeatures: Int
    public let outFeatures: Int
    public let weight: Parameter
    public let bias: Parameter?
    private var input: UnsafePointer<Float>?
    private var rows = 0
    private let out = Buffer()
    private let dIn = Buffer()

    public init(_ ps: ParameterSet, _ name: String, in inFeatures: Int, out outFeatures: Int, bias: Bool = true) {
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        weight = ps.parameter(name + ".weight", [outFeatures, inFeatures])
        self.bias = bias ? ps.parameter(name + ".bias", [outFeatures]) : nil
    }

    /// PyTorch's default `nn.Linear` initialisation.
    public func initDefault(rng: inout CounterRNG) {
        weight.uniformFanIn(inFeatures, rng: &rng)
        bias?.uniformFanIn(inFeatures, rng: &rng)
    }

    /// DiT's `_basic_init`: xavier-uniform weight, zero bias.
    public func initXavier(rng: inout CounterRNG) {
        weight.xavierUniform(fanIn: inFeatures, fanOut: outFeatures, rng: &rng)
        bias?.fill(0)
    }

    public func initZero() {
        weight.fill(0)
        bias?.fill(0)
    }

    /// Forward into a caller-provided output with leading dimension `ldy` (for writing into a
    /// slice of a wider buffer).
    public func forward(_ x: UnsafePointer<Float>, rows: Int, into y: UnsafeMutablePointer<Float>, ldy: Int? = nil) {
        input = x
        self.rows = rows
        let ld = ldy ?? outFeatures
        if let bias {
            for r in 0..<rows { (y + r * ld).update(from: bias.value, count: outFeatures) }
            BLAS.sgemm(transB: true, m: rows, n: outFeatures, k: inFeatures, a: x, b: weight.value, beta: 1, c: y, ldc: ld)
        } else {
            BLAS.sgemm(transB: true, m: rows, n: outFeatures, k: inFeatures, a: x, b: weight.value, beta: 0, c: y, ldc: ld)
        }
    }

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, rows: Int) -> UnsafeMutablePointer<Float> {
        let y = out.ensure(rows * outFeatures)
        forward(x, rows: rows, into: y)
        return y
    }

    /// Backward with dy of leading dimension `lddy`; writes (or adds, when `accumulate`) dx into
    /// `dx` if given.
    public func backward(_ dy: UnsafePointer<Float>, lddy: Int? = nil, into dx: UnsafeMutablePointer<Float>?, accumulate: Bool = false, paramGrads: Bool = true) {
        guard let x = input else { preconditionFailure("Linear.backward before forward") }
        let ld = lddy ?? outFeatures
        if paramGrads {
            // dW[out, in] += dy^T x
            BLAS.sgemm(transA: true, m: outFeatures, n: inFeatures, k: rows, a: dy, lda: ld, b: x, beta: 1, c: weight.grad)
            if let bias {
                let g = bias.grad
                for r in 0..<rows {
                    let d = dy + r * ld
                    for j in 0..<outFeatures { g[j] += d[j] }
                }
            }
        }
        if let dx {
            BLAS.sgemm(m: rows, n: inFeatures, k: outFeatures, a: dy, lda: ld, b: weight.value, beta: accumulate ? 1 : 0, c: dx)
        }
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>, paramGrads: Bool = true) -> UnsafeMutablePointer<Float> {
        let dx = dIn.ensure(rows * inFeatures)
        backward(dy, into: dx, paramGrads: paramGrads)
        return dx
    }
}

/// LayerNorm over the last dimension (biased variance), with or without affine weight/bias.
/// DiT uses eps 1e-6 and no affine inside blocks.
public final class LayerNorm {
    public let dim: Int
    public let eps: Float
    public let weight: Parameter?
    public let bias: Parameter?
    private var input: UnsafePointer<Float>?
    private var rows = 0
    private let out = Buffer(), dIn = Buffer(), mean = Buffer(), rstd = Buffer()

    public init(_ ps: ParameterSet?, _ name: String, dim: Int, affine: Bool, eps: Float = 1e-6) {
        self.dim = dim
        self.eps = eps
        if affine, let ps {
            weight = ps.parameter(name + ".weight", [dim])
            bias = ps.parameter(name + ".bias", [dim])
        } else {
            precondition(!affine, "an affine LayerNorm needs a parameter set")
            weight = nil
            bias = nil
        }
    }

    public func initDefault() {
        weight?.fill(1)
        bias?.fill(0)
    }

    /// Rows a worker takes at least: about 16k elements.
    @inline(__always)
    static func grainRows(_ dim: Int) -> Int { max(1, 16_384 / max(1, dim)) }

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, rows: Int) -> UnsafeMutablePointer<Float> {
        input = x
        self.rows = rows
        let y = out.ensure(rows * dim), mu = mean.ensure(rows), rs = rstd.ensure(rows)
        let n = Float(dim), dim = dim, eps = eps
        let w = weight?.value, b = bias?.value
        Parallel.forRanges(rows, grain: Self.grainRows(dim)) { range in
            for r in range {
                let xr = x + r * dim, yr = y + r * dim
                let m = vsum(xr, dim) / n
                let v = vsumSquaredDeviation(xr, m, dim)
                let inv = 1 / (v / n + eps).squareRoot()
                mu[r] = m
                rs[r] = inv
                if let w, let b {
                    for i in 0..<dim { yr[i] = (xr[i] - m) * inv * w[i] + b[i] }
                } else {
                    for i in 0..<dim { yr[i] = (xr[i] - m) * inv }
                }
            }
        }
        return y
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>, paramGrads: Bool = true) -> UnsafeMutablePointer<Float> {
        guard let x = input else { preconditionFailure("LayerNorm.backward before forward") }
        let dx = dIn.ensure(rows * dim), mu = mean.pointer, rs = rstd.pointer
        let n = Float(dim), dim = dim
        let w = weight?.value
        Parallel.forRanges(rows, grain: Self.grainRows(dim)) { range in
            for r in range {
                let xr = x + r * dim, dyr = dy + r * dim, dxr = dx + r * dim
                let m = mu[r], inv = rs[r]
                // dnorm = dy * w; dx = (dnorm - mean(dnorm) - xhat * mean(dnorm * xhat)) * rstd
                var sum1: Float = 0, sum2: Float = 0
                if let w {
                    for i in 0..<dim {
                        let dn = dyr[i] * w[i]
                        sum1 += dn
                        sum2 += dn * (xr[i] - m) * inv
                    }
                    let a = sum1 / n, b = sum2 / n
                    for i in 0..<dim { dxr[i] = (dyr[i] * w[i] - a - (xr[i] - m) * inv * b) * inv }
                } else {
                    // sum dy * xhat = inv * (dy . x - m * sum dy)
                    sum1 = vsum(dyr, dim)
                    sum2 = inv * (vdot(dyr, xr, dim) - m * sum1)
                    let a = sum1 / n, b = sum2 / n
                    for i in 0..<dim { dxr[i] = (dyr[i] - a - (xr[i] - m) * inv * b) * inv }
                }
            }
        }
        // summed over rows in row order, in one loop: the same bytes for any thread count
        if paramGrads, let gw = weight?.grad, let gb = bias?.grad {
            for r in 0..<rows {
                let xr = x + r * dim, dyr = dy + r * dim
                let m = mu[r], inv = rs[r]
                for i in 0..<dim {
                    gw[i] += dyr[i] * (xr[i] - m) * inv
                    gb[i] += dyr[i]
                }
            }
        }
        return dx
    }
}

/// SiLU (swish): y = x * sigmoid(x).
public final class SiLU {
    private var input: UnsafePointer<Float>?
    private var count = 0
    private let out = Buffer(), dIn = Buffer()

    public init() {}

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, count: Int) -> UnsafeMutablePointer<Float> {
        input = x
        self.count = count
        let y = out.ensure(count)
        Parallel.forRanges(count, grain: elementGrain) { range in
            drl_silu_forward(x + range.lowerBound, y + range.lowerBound, range.count)
        }
        return y
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard let x = input else { preconditionFailure("SiLU.backward before forward") }
        let dx = dIn.ensure(count)
        Parallel.forRanges(count, grain: elementGrain) { range in
            // v = x[i], s = 1 / (1 + fastExp(-v)), dx[i] = dy[i] * s * (1 + v * (1 - s))
            drl_silu_backward(x + range.lowerBound, dy + range.lowerBound, dx + range.lowerBound, range.count)
        }
        return dx
    }
}

/// GELU, tanh approximation (PyTorch `nn.GELU(approximate="tanh")`, used by DiT's MLP).
public final class GELU {
    private var input: UnsafePointer<Float>?
    private var count = 0
    private let out = Buffer(), dIn = Buffer()
    private static let k: Float = (2 / Float.pi).squareRoot()

    public init() {}

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, count: Int) -> UnsafeMutablePointer<Float> {
        input = x
        self.count = count
        let y = out.ensure(count)
        let k = Self.k
        // y[i] = 0.5 * v * (1 + fastTanh(k * (v + 0.044715 * v * v * v))), v = x[i], in C for
        // AVX-512/AVX2 (CKernels, same bits); backward recomputes tanh (cheaper than the memory
        // traffic of caching it for activations larger than the cache)
        Parallel.forRanges(count, grain: elementGrain) { range in
            drl_gelu_forward(x + range.lowerBound, y + range.lowerBound, range.count, k)
        }
        return y
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard let x = input else { preconditionFailure("GELU.backward before forward") }
        let dx = dIn.ensure(count)
        let k = Self.k
        Parallel.forRanges(count, grain: elementGrain) { range in
            // th = fastTanh(k * (v + 0.044715 * v * v * v)), du = k * (1 + 3 * 0.044715 * v * v),
            // dx[i] = dy[i] * (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * du)
            drl_gelu_backward(x + range.lowerBound, dy + range.lowerBound, dx + range.lowerBound, range.count, k)
        }
        return dx
    }
}

/// Embedding table [rows, dim] (PyTorch `nn.Embedding`; DiT's LabelEmbedder names it
/// `embedding_table.weight` with num_classes + 1 rows, the last one the null label).
public final class Embedding {
    public let rows: Int
    public let dim: Int
    public let weight: Parameter
    private var ids: [Int] = []
    private let out = Buffer()

    public init(_ ps: ParameterSet, _ name: String, rows: Int, dim: Int) {
        self.rows = rows
        self.dim = dim
        weight = ps.parameter(name + ".weight", [rows, dim])
    }

    @discardableResult
    public func forward(_ ids: [Int]) -> UnsafeMutablePointer<Float> {
        self.ids = ids
        let y = out.ensure(ids.count * dim)
        for (r, id) in ids.enumerated() {
            precondition(id >= 0 && id < rows, "embedding id \(id) outside 0..<\(rows)")
            (y + r * dim).update(from: weight.value + id * dim, count: dim)
        }
        return y
    }

    /// Accumulates dL/d(table); ids have no gradient.
    public func backward(_ dy: UnsafePointer<Float>) {
        for (r, id) in ids.enumerated() {
            let g = weight.grad + id * dim, d = dy + r * dim
            for j in 0..<dim { g[j] += d[j] }
        }
    }
}

/// adaLN modulation: y[b, t, :] = x[b, t, :] * (1 + scale[b, :]) + shift[b, :] (DiT's `modulate`).
/// shift and scale are read from per-sample rows of a wider buffer (the chunked output of an
/// adaLN Linear), with row stride `ld`; backward writes their gradients into the matching slots
/// of a gradient buffer of the same layout.
public final class Modulate {
    public let dim: Int
    private var input: UnsafePointer<Float>?
    private var shift: UnsafePointer<Float>?
    private var scale: UnsafePointer<Float>?
    private var ld = 0, batch = 0, tokens = 0
    private let out = Buffer(), dIn = Buffer()

    public init(dim: Int) { self.dim = dim }

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, shift: UnsafePointer<Float>, scale: UnsafePointer<Float>, ld: Int, batch: Int, tokens: Int) -> UnsafeMutablePointer<Float> {
        input = x
        self.shift = shift
        self.scale = scale
        self.ld = ld
        self.batch = batch
        self.tokens = tokens
        let y = out.ensure(batch * tokens * dim)
        let dim = dim
        Parallel.forRanges(batch, grain: sampleGrain(tokens * dim)) { range in
            for b in range {
                let sh = shift + b * ld, sc = scale + b * ld
                for t in 0..<tokens {
                    let o = (b * tokens + t) * dim
                    let xr = x + o, yr = y + o
                    for i in 0..<dim { yr[i] = xr[i] * (1 + sc[i]) + sh[i] }
                }
            }
        }
        return y
    }

    /// Returns dx; writes dshift and dscale (overwriting) at the given slots (stride ld).
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>, dShift: UnsafeMutablePointer<Float>, dScale: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard let x = input, let scale else { preconditionFailure("Modulate.backward before forward") }
        let dx = dIn.ensure(batch * tokens * dim)
        let dim = dim, ld = ld, tokens = tokens
        Parallel.forRanges(batch, grain: sampleGrain(tokens * dim)) { range in
            for b in range {
                let sc = scale + b * ld, dsh = dShift + b * ld, dsc = dScale + b * ld
                for i in 0..<dim { dsh[i] = 0; dsc[i] = 0 }
                for t in 0..<tokens {
                    let o = (b * tokens + t) * dim
                    let xr = x + o, dyr = dy + o, dxr = dx + o
                    for i in 0..<dim {
                        let g = dyr[i]
                        dxr[i] = g * (1 + sc[i])
                        dsh[i] += g
                        dsc[i] += g * xr[i]
                    }
                }
            }
        }
        return dx
    }
}

/// Gated residual: out[b, t, :] = residual[b, t, :] + gate[b, :] * y[b, t, :] (adaLN-Zero's gating).
/// dL/d(residual) is dL/d(out) itself; backward returns dL/dy and writes dL/d(gate).
public final class GatedResidual {
    public let dim: Int
    private var y: UnsafePointer<Float>?
    private var gate: UnsafePointer<Float>?
    private var ld = 0, batch = 0, tokens = 0
    private let out = Buffer(), dY = Buffer()

    public init(dim: Int) { self.dim = dim }

    @discardableResult
    public func forward(residual: UnsafePointer<Float>, _ y: UnsafePointer<Float>, gate: UnsafePointer<Float>, ld: Int, batch: Int, tokens: Int) -> UnsafeMutablePointer<Float> {
        self.y = y
        self.gate = gate
        self.ld = ld
        self.batch = batch
        self.tokens = tokens
        let o = out.ensure(batch * tokens * dim)
        let dim = dim
        Parallel.forRanges(batch, grain: sampleGrain(tokens * dim)) { range in
            for b in range {
                let g = gate + b * ld
                for t in 0..<tokens {
                    let off = (b * tokens + t) * dim
                    let rr = residual + off, yr = y + off, orow = o + off
                    for i in 0..<dim { orow[i] = rr[i] + g[i] * yr[i] }
                }
            }
        }
        return o
    }

    @discardableResult
    public func backward(_ dOut: UnsafePointer<Float>, dGate: UnsafeMutablePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard let y, let gate else { preconditionFailure("GatedResidual.backward before forward") }
        let dy = dY.ensure(batch * tokens * dim)
        let dim = dim, ld = ld, tokens = tokens
        Parallel.forRanges(batch, grain: sampleGrain(tokens * dim)) { range in
            for b in range {
                let g = gate + b * ld, dg = dGate + b * ld
                for i in 0..<dim { dg[i] = 0 }
                for t in 0..<tokens {
                    let off = (b * tokens + t) * dim
                    let dor = dOut + off, yr = y + off, dyr = dy + off
                    for i in 0..<dim {
                        dyr[i] = dor[i] * g[i]
                        dg[i] += dor[i] * yr[i]
                    }
                }
            }
        }
        return dy
    }
}

/// Elements a worker takes at least in an element-wise layer (`Parallel`): below about 16k the
/// dispatch costs more than the second core saves.
let elementGrain = 16_384

/// Samples a worker takes at least when each holds `perSample` elements.
@inline(__always)
func sampleGrain(_ perSample: Int) -> Int { max(1, elementGrain / max(1, perSample)) }

/// Element-wise helpers used by the models.
public enum Ops {
    /// y[i] += x[i]
    @inline(__always)
    public static func add(_ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { y[i] += x[i] }
    }
}
