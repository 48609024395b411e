import Foundation
import Numerics

/// 2-D convolution (PyTorch `nn.Conv2d`, weight [out, in, kh, kw], bias [out], zero padding,
/// square kernel/stride/padding) through im2col + sgemm.
///
/// Input NCHW [batch, inChannels, H, W]. im2col builds rows [samples * Ho * Wo, in * k * k] with
/// columns in the weight's (c, ki, kj) order, so y = cols W^T is [samples, Ho*Wo, out]
/// (token-major). `forward` returns NCHW by default; `tokensOut` returns the token-major rows
/// directly, which is exactly DiT's `x_embedder(x)` = `proj(x).flatten(2).transpose(1, 2)`.
///
/// NCHW output goes one sample per sgemm by default (`samplesPerChunk`): every call then has the
/// same shape whatever the batch, so a sample's output is the same bits alone or anywhere in a
/// batch (OpenBLAS's small-matrix and edge kernels otherwise sum in another order), and its
/// columns (K * Ho * Wo floats, under 2 MB in unet-tiny) are mostly still cached when sgemm packs them.
/// Chunks of 16 MB were 1.4x slower for U-Net sampling. Token-major output (a patch embedding,
/// small columns) goes in chunks whose rows fit `maxColumnFloats` (4M floats). Memory stays bounded
/// for any batch. Like the other layers it caches the input pointer; backward recomputes the
/// columns chunk by chunk.
public final class Conv2d {
    public let inChannels: Int, outChannels: Int, kernel: Int, stride: Int, padding: Int
    public let tokensOut: Bool
    public let weight: Parameter
    public let bias: Parameter?
    public var maxColumnFloats = 1 << 22
    public var samplesPerChunk = 1
    private var input: UnsafePointer<Float>?
    private var batch = 0, height = 0, widthIn = 0
    public private(set) var outHeight = 0
    public private(set) var outWidth = 0
    private let cols = Buffer(), rowsTmp = Buffer(), out = Buffer()
    private let dCols = Buffer(), dIn = Buffer()

    public init(_ ps: ParameterSet, _ name: String, in inChannels: Int, out outChannels: Int, kernel: Int,
                stride: Int = 1, padding: Int = 0, bias: Bool = true, tokensOut: Bool = false) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
        self.tokensOut = tokensOut
        weight = ps.parameter(name + ".weight", [outChannels, inChannels, kernel, kernel])
        self.bias = bias ? ps.parameter(name + ".bias", [outChannels]) : nil
    }

    public var fanIn: Int { inChannels * kernel * kernel }

    public func initDefault(rng: inout CounterRNG) {
        weight.uniformFanIn(fanIn, rng: &rng)
        bias?.uniformFanIn(fanIn, rng: &rng)
    }

    public func outputSize(height: Int, width: Int) -> (Int, Int) {
        ((height + 2 * padding - kernel) / stride + 1, (width + 2 * padding - kernel) / stride + 1)
    }

    private var chunkSamples: Int { tokensOut ? max(1, maxColumnFloats / max(1, outHeight * outWidth * fanIn)) : max(1, samplesPerChunk) }

    /// im2col of samples [s0, s0 + n) into c.
    private func im2col(_ x: UnsafePointer<Float>, from s0: Int, count n: Int, into c: UnsafeMutablePointer<Float>) {
        let K = fanIn, ho = outHeight, wo = outWidth, P = ho * wo, C = inChannels, k = kernel
        let H = height, W = widthIn
        for s in 0..<n {
            let xb = x + (s0 + s) * C * H * W
            for oh in 0..<ho {
                for ow in 0..<wo {
                    let row = c + (s * P + oh * wo + ow) * K
                    let ih0 = oh * stride - padding, iw0 = ow * stride - padding
                    for ch in 0..<C {
                        let xc = xb + ch * H * W
                        for ki in 0..<k {
                            let ih = ih0 + ki
                            let dst = row + (ch * k + ki) * k
                            if ih < 0 || ih >= H {
                                for kj in 0..<k { dst[kj] = 0 }
                                continue
                            }
                            let src = xc + ih * W
                            for kj in 0..<k {
                                let iw = iw0 + kj
                                dst[kj] = (iw >= 0 && iw < W) ? src[iw] : 0
                            }
                        }
                    }
                }
            }
        }
    }

    private var geometry: ConvGeometry {
        ConvGeometry(channels: inChannels, height: height, width: widthIn, kh: kernel, kw: kernel, sh: stride, sw: stride,
                     ph: padding, pw: padding, outHeight: outHeight, outWidth: outWidth)
    }

    /// Transposed im2col of samples [s0, s0 + n) (`transposedIm2col`).
    private func im2colTransposed(_ x: UnsafePointer<Float>, from s0: Int, count n: Int, into c: UnsafeMutablePointer<Float>) {
        transposedIm2col(geometry, x, from: s0, count: n, into: c)
    }

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int) -> UnsafeMutablePointer<Float> {
        input = x
        self.batch = batch
        self.height = height
        self.widthIn = width
        let (ho, wo) = outputSize(height: height, width: width)
        precondition(ho > 0 && wo > 0, "conv kernel \(kernel) does not fit a \(height)x\(width) input")
        outHeight = ho
        outWidth = wo
        let K = fanIn, P = ho * wo, O = outChannels
        let o = out.ensure(batch * P * O)
        let chunk = chunkSamples
        var s0 = 0
        while s0 < batch {
            let n = min(chunk, batch - s0)
            if !tokensOut {
                // NCHW output: columns transposed ([K, n*P], rows are shifted copies of input
                // planes), one sgemm W [O, K] x cols [K, n*P] = [O, n*P], then contiguous
                // copies of P floats into [n, O, P]. Cheaper than row im2col + transpose.
                let nP = n * P
                let ct = cols.ensure(K * nP)
                im2colTransposed(x, from: s0, count: n, into: ct)
                let y = rowsTmp.ensure(O * nP)
                if let bias {
                    for ch in 0..<O { (y + ch * nP).update(repeating: bias.value[ch], count: nP) }
                }
                BLAS.sgemm(m: O, n: nP, k: K, a: weight.value, b: ct, beta: bias == nil ? 0 : 1, c: y)
                for s in 0..<n {
                    for ch in 0..<O { (o + ((s0 + s) * O + ch) * P).update(from: y + ch * nP + s * P, count: P) }
                }
                s0 += n
                continue
            }
            let c = cols.ensure(n * P * K)
            im2col(x, from: s0, count: n, into: c)
            let rows = n * P
            let y = tokensOut ? o + s0 * P * O : rowsTmp.ensure(rows * O)
            if let bias {
                for r in 0..<rows { (y + r * O).update(from: bias.value, count: O) }
            }
            BLAS.sgemm(transB: true, m: rows, n: O, k: K, a: c, b: weight.value, beta: bias == nil ? 0 : 1, c: y)
            if !tokensOut {  // [n, P, O] -> [n, O, P]
                for s in 0..<n {
                    let src = y + s * P * O, dst = o + (s0 + s) * P * O
                    for p in 0..<P { for ch in 0..<O { dst[ch * P + p] = src[p * O + ch] } }
                }
            }
            s0 += n
        }
        return o
    }

    /// dy in the layout forward returned (NCHW, or token-major when `tokensOut`). Returns dx NCHW
    /// (zeros when `inputGrad` is false).
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>, paramGrads: Bool = true, inputGrad: Bool = true) -> UnsafeMutablePointer<Float> {
        guard let x = input else { preconditionFailure("Conv2d.backward before forward") }
        let K = fanIn, P = outHeight * outWidth, O = outChannels, C = inChannels, k = kernel
        let H = height, W = widthIn, wo = outWidth
        let dx = dIn.zeroed(batch * C * H * W)
        let chunk = chunkSamples
        var s0 = 0
        while s0 < batch {
            let n = min(chunk, batch - s0)
            let rows = n * P
            if !tokensOut {
                // NCHW: the adjoint of forward's transposed layout. dy gathered as [O, n*P] by
                // contiguous copies; dW += dy x cols^T and dcols = W^T x dy are plain sgemms, and the
                // column scatter runs along output rows (vectorisable), not element by element.
                let nP = rows  // columns of the [O, n*P] and [K, n*P] matrices
                let g = rowsTmp.ensure(O * nP)
                for s in 0..<n {
                    for ch in 0..<O { (g + ch * nP + s * P).update(from: dy + ((s0 + s) * O + ch) * P, count: P) }
                }
                if paramGrads {
                    let ct = cols.ensure(K * nP)
                    im2colTransposed(x, from: s0, count: n, into: ct)
                    BLAS.sgemm(transB: true, m: O, n: K, k: nP, a: g, b: ct, beta: 1, c: weight.grad)
                    if let bias {
                        let bg = bias.grad
                        for ch in 0..<O {
                            let r = g + ch * nP
                            var acc: Float = 0
                            for p in 0..<nP { acc += r[p] }
                            bg[ch] += acc
                        }
                    }
                }
                if inputGrad {
                    let dc = dCols.ensure(K * nP)
                    BLAS.sgemm(transA: true, m: K, n: nP, k: O, a: weight.value, b: g, beta: 0, c: dc)
                    transposedCol2im(geometry, dc, from: s0, count: n, into: dx)
                }
                s0 += n
                continue
            }
            let dr = dy + s0 * P * O  // tokens out: dy is already [rows, O]
            if paramGrads {
                let c = cols.ensure(n * P * K)
                im2col(x, from: s0, count: n, into: c)
                BLAS.sgemm(transA: true, m: O, n: K, k: rows, a: dr, b: c, beta: 1, c: weight.grad)
                if let bias {
                    let g = bias.grad
                    for r in 0..<rows { let d = dr + r * O; for j in 0..<O { g[j] += d[j] } }
                }
            }
            if inputGrad {
                let dc = dCols.ensure(rows * K)
                BLAS.sgemm(m: rows, n: K, k: O, a: dr, b: weight.value, beta: 0, c: dc)
                // col2im (accumulate)
                for s in 0..<n {
                    let xb = dx + (s0 + s) * C * H * W
                    for oh in 0..<outHeight {
                        for ow in 0..<wo {
                            let row = dc + (s * P + oh * wo + ow) * K
                            let ih0 = oh * stride - padding, iw0 = ow * stride - padding
                            for ch in 0..<C {
                                let xc = xb + ch * H * W
                                for ki in 0..<k {
                                    let ih = ih0 + ki
                                    if ih < 0 || ih >= H { continue }
                                    let src = row + (ch * k + ki) * k
                                    let dst = xc + ih * W
                                    for kj in 0..<k {
                                        let iw = iw0 + kj
                                        if iw >= 0 && iw < W { dst[iw] += src[kj] }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            s0 += n
        }
        return dx
    }
}

/// Average pooling NCHW (PyTorch `nn.AvgPool2d(kernel, stride)`, no padding, floor mode).
public final class AvgPool2d {
    public let kernel: Int, stride: Int
    private var batch = 0, channels = 0, height = 0, width = 0
    public private(set) var outHeight = 0
    public private(set) var outWidth = 0
    private let out = Buffer(), dIn = Buffer()

    public init(kernel: Int, stride: Int? = nil) {
        self.kernel = kernel
        self.stride = stride ?? kernel
    }

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, batch: Int, channels: Int, height: Int, width: Int) -> UnsafeMutablePointer<Float> {
        self.batch = batch; self.channels = channels; self.height = height; self.width = width
        let ho = (height - kernel) / stride + 1, wo = (width - kernel) / stride + 1
        precondition(ho > 0 && wo > 0, "pool kernel \(kernel) does not fit a \(height)x\(width) input")
        outHeight = ho; outWidth = wo
        let y = out.ensure(batch * channels * ho * wo)
        let inv = 1 / Float(kernel * kernel)
        for bc in 0..<(batch * channels) {
            let xp = x + bc * height * width, yp = y + bc * ho * wo
            for oh in 0..<ho {
                for ow in 0..<wo {
                    var s: Float = 0
                    for ki in 0..<kernel {
                        let r = xp + (oh * stride + ki) * width + ow * stride
                        for kj in 0..<kernel { s += r[kj] }
                    }
                    yp[oh * wo + ow] = s * inv
                }
            }
        }
        return y
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        let ho = outHeight, wo = outWidth
        let dx = dIn.zeroed(batch * channels * height * width)
        let inv = 1 / Float(kernel * kernel)
        for bc in 0..<(batch * channels) {
            let dxp = dx + bc * height * width, dyp = dy + bc * ho * wo
            for oh in 0..<ho {
                for ow in 0..<wo {
                    let g = dyp[oh * wo + ow] * inv
                    for ki in 0..<kernel {
                        let r = dxp + (oh * stride + ki) * width + ow * stride
                        for kj in 0..<kernel { r[kj] += g }
                    }
                }
            }
        }
        return dx
    }
}

/// Global average pooling NCHW [batch, C, H, W] -> [batch, C].
public final class GlobalAvgPool {
    private var batch = 0, channels = 0, spatial = 0
    private let out = Buffer(), dIn = Buffer()

    public init() {}

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, batch: Int, channels: Int, spatial: Int) -> UnsafeMutablePointer<Float> {
        self.batch = batch; self.channels = channels; self.spatial = spatial
        let y = out.ensure(batch * channels)
        let inv = 1 / Float(spatial)
        for bc in 0..<(batch * channels) {
            let xp = x + bc * spatial
            var s: Float = 0
            for i in 0..<spatial { s += xp[i] }
            y[bc] = s * inv
        }
        return y
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        let dx = dIn.ensure(batch * channels * spatial)
        let inv = 1 / Float(spatial)
        for bc in 0..<(batch * channels) {
            let g = dy[bc] * inv, d = dx + bc * spatial
            for i in 0..<spatial { d[i] = g }
        }
        return dx
    }
}

/// Patch layout of a token's features.
public enum PatchOrder: Sendable {
    /// (channel, row-in-patch, col-in-patch): the order of a Conv2d weight [out, C, p, p]
    /// flattened, i.e. what im2col produces for a kernel = stride = p convolution.
    case channelFirst
    /// (row-in-patch, col-in-patch, channel): DiT's `unpatchify` (einsum "nhwpqc->nchpwq").
    case channelLast
}

/// Shared permutation between NCHW images [B, C, H, W] and tokens [B, (H/p)*(W/p), p*p*C].
@inline(__always)
private func patchPermute(image: UnsafeMutablePointer<Float>, tokens: UnsafeMutablePointer<Float>, toTokens: Bool,
                          batch: Int, channels C: Int, height H: Int, width W: Int, patch p: Int, order: PatchOrder) {
    let gh = H / p, gw = W / p, F = p * p * C
    for b in 0..<batch {
        let img = image + b * C * H * W
        let tok = tokens + b * gh * gw * F
        for i in 0..<gh {
            for j in 0..<gw {
                let t = tok + (i * gw + j) * F
                for c in 0..<C {
                    for pi in 0..<p {
                        let src = img + c * H * W + (i * p + pi) * W + j * p
                        for pj in 0..<p {
                            let f = order == .channelFirst ? (c * p + pi) * p + pj : (pi * p + pj) * C + c
                            if toTokens { t[f] = src[pj] } else { src[pj] = t[f] }
                        }
                    }
                }
            }
        }
    }
}

/// Images NCHW -> tokens [B, T, p*p*C]. A pure permutation: backward is the inverse.
public final class Patchify {
    public let channels: Int, height: Int, width: Int, patch: Int
    public let order: PatchOrder
    private var batch = 0
    private let out = Buffer(), dIn = Buffer()

    public init(channels: Int, height: Int, width: Int, patch: Int, order: PatchOrder = .channelFirst) {
        precondition(height % patch == 0 && width % patch == 0, "image \(height)x\(width) is not divisible into \(patch)x\(patch) patches")
        self.channels = channels; self.height = height; self.width = width; self.patch = patch; self.order = order
    }

    public var tokens: Int { (height / patch) * (width / patch) }
    public var features: Int { patch * patch * channels }

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, batch: Int) -> UnsafeMutablePointer<Float> {
        self.batch = batch
        let y = out.ensure(batch * channels * height * width)
        patchPermute(image: UnsafeMutablePointer(mutating: x), tokens: y, toTokens: true, batch: batch, channels: channels, height: height, width: width, patch: patch, order: order)
        return y
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        let dx = dIn.ensure(batch * channels * height * width)
        patchPermute(image: dx, tokens: UnsafeMutablePointer(mutating: dy), toTokens: false, batch: batch, channels: channels, height: height, width: width, patch: patch, order: order)
        return dx
    }
}

/// Tokens [B, T, p*p*C] -> images NCHW (DiT's `unpatchify` with the default `.channelLast`).
public final class Unpatchify {
    public let channels: Int, height: Int, width: Int, patch: Int
    public let order: PatchOrder
    private var batch = 0
    private let out = Buffer(), dIn = Buffer()

    public init(channels: Int, height: Int, width: Int, patch: Int, order: PatchOrder = .channelLast) {
        precondition(height % patch == 0 && width % patch == 0, "image \(height)x\(width) is not divisible into \(patch)x\(patch) patches")
        self.channels = channels; self.height = height; self.width = width; self.patch = patch; self.order = order
    }

    /// Writes the image into `y` (caller-owned), e.g. straight into a velocity output.
    public func forward(_ x: UnsafePointer<Float>, batch: Int, into y: UnsafeMutablePointer<Float>) {
        self.batch = batch
        patchPermute(image: y, tokens: UnsafeMutablePointer(mutating: x), toTokens: false, batch: batch, channels: channels, height: height, width: width, patch: patch, order: order)
    }

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, batch: Int) -> UnsafeMutablePointer<Float> {
        let y = out.ensure(batch * channels * height * width)
        forward(x, batch: batch, into: y)
        return y
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        let dx = dIn.ensure(batch * channels * height * width)
        patchPermute(image: UnsafeMutablePointer(mutating: dy), tokens: dx, toTokens: true, batch: batch, channels: channels, height: height, width: width, patch: patch, order: order)
        return dx
    }
}

/// The shape of one 2-D convolution's im2col: input [channels, height, width], kernel kh x kw,
/// stride sh x sw, zero padding ph x pw, output outHeight x outWidth. Shared by `Conv2d` and
/// `Conv2dRect`, so both lay their columns out (and accumulate them back) the same way.
struct ConvGeometry {
    let channels: Int, height: Int, width: Int
    let kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int
    let outHeight: Int, outWidth: Int
}

/// Transposed im2col of samples [s0, s0 + n): c[k, s * P + p] with k in the weight's (c, ki, kj)
/// order; each (k, sample, output row) is a shifted run of one input row (plain loops: the runs are
/// short, a row of the output, so they beat memcpy calls).
func transposedIm2col(_ g: ConvGeometry, _ x: UnsafePointer<Float>, from s0: Int, count n: Int, into c: UnsafeMutablePointer<Float>) {
    let ho = g.outHeight, wo = g.outWidth, P = ho * wo, C = g.channels, H = g.height, W = g.width, nP = n * P
    let kh = g.kh, kw = g.kw, sh = g.sh, sw = g.sw, ph = g.ph, pw = g.pw
    for ch in 0..<C {
        for ki in 0..<kh {
            for kj in 0..<kw {
                let rowK = c + ((ch * kh + ki) * kw + kj) * nP
                let lo = max(0, (pw - kj + sw - 1) / sw)
                let span = W - 1 + pw - kj
                let hi = span < 0 ? 0 : min(wo, span / sw + 1)
                for s in 0..<n {
                    let plane = x + ((s0 + s) * C + ch) * H * W
                    for oh in 0..<ho {
                        let dst = rowK + s * P + oh * wo
                        let ih = oh * sh - ph + ki
                        if ih < 0 || ih >= H || lo >= hi {
                            for ow in 0..<wo { dst[ow] = 0 }
                            continue
                        }
                        for ow in 0..<lo { dst[ow] = 0 }
                        for ow in hi..<wo { dst[ow] = 0 }
                        let src = plane + ih * W - pw + kj
                        if sw == 1 {
                            for ow in lo..<hi { dst[ow] = src[ow] }
                        } else {
                            for ow in lo..<hi { dst[ow] = src[ow * sw] }
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of `transposedIm2col`: accumulates the columns into dx.
func transposedCol2im(_ g: ConvGeometry, _ c: UnsafePointer<Float>, from s0: Int, count n: Int, into dx: UnsafeMutablePointer<Float>) {
    let ho = g.outHeight, wo = g.outWidth, P = ho * wo, C = g.channels, H = g.height, W = g.width, nP = n * P
    let kh = g.kh, kw = g.kw, sh = g.sh, sw = g.sw, ph = g.ph, pw = g.pw
    for ch in 0..<C {
        for ki in 0..<kh {
            for kj in 0..<kw {
                let rowK = c + ((ch * kh + ki) * kw + kj) * nP
                let lo = max(0, (pw - kj + sw - 1) / sw)
                let span = W - 1 + pw - kj
                let hi = span < 0 ? 0 : min(wo, span / sw + 1)
                if lo >= hi { continue }
                for s in 0..<n {
                    let plane = dx + ((s0 + s) * C + ch) * H * W
                    for oh in 0..<ho {
                        let ih = oh * sh - ph + ki
                        if ih < 0 || ih >= H { continue }
                        let src = rowK + s * P + oh * wo
                        let dst = plane + ih * W - pw + kj
                        if sw == 1 {
                            for ow in lo..<hi { dst[ow] += src[ow] }
                        } else {
                            for ow in lo..<hi { dst[ow * sw] += src[ow] }
                        }
                    }
                }
            }
        }
    }
}
