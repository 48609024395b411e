import Foundation
import Numerics

// Layers of frozen pretrained vision encoders (Inception-v3, ViTs): forward passes and the
// input gradient only (their weights are never trained here, so backward computes no parameter
// gradients). Same conventions as the other layers: forward caches what backward needs and
// returns a layer-owned buffer (or writes where told).

/// 2-D convolution with a rectangular kernel, stride and zero padding (PyTorch `nn.Conv2d` with
/// kernel (kh, kw), stride (sh, sw), padding (ph, pw); weight [out, in, kh, kw], bias [out]),
/// optionally followed by ReLU. Built for frozen encoders: `backward` returns only dL/dx.
///
/// Input NCHW. The output can be written into a channel slice of a wider NCHW tensor
/// (`channelOffset` within `totalChannels`), which is how Inception's branches concatenate with
/// no copy; `backward` then reads dy from the same slice. Samples go in chunks whose transposed
/// im2col [in*kh*kw, n*Ho*Wo] fits `maxColumnFloats`; each chunk is one sgemm.
public final class Conv2dRect {
    public let inChannels: Int, outChannels: Int
    public let kh: Int, kw: Int, sh: Int, sw: Int, ph: Int, pw: Int
    public let relu: Bool
    public let weight: Parameter
    public let bias: Parameter
    public var maxColumnFloats = 1 << 22
    private var input: UnsafePointer<Float>?
    private var output: UnsafeMutablePointer<Float>?
    private var batch = 0, height = 0, widthIn = 0, total = 0, offset = 0
    public private(set) var outHeight = 0
    public private(set) var outWidth = 0
    private let cols = Buffer(), tmp = Buffer(), out = Buffer(), dIn = Buffer()

    public init(_ ps: ParameterSet, _ name: String, in inChannels: Int, out outChannels: Int,
                kernel: (Int, Int), stride: (Int, Int) = (1, 1), padding: (Int, Int) = (0, 0), relu: Bool) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        (kh, kw) = kernel
        (sh, sw) = stride
        (ph, pw) = padding
        self.relu = relu
        weight = ps.parameter(name + ".weight", [outChannels, inChannels, kh, kw])
        bias = ps.parameter(name + ".bias", [outChannels])
    }

    public var fanIn: Int { inChannels * kh * kw }
    private var pointwise: Bool { kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0 }

    public func outputSize(height: Int, width: Int) -> (Int, Int) {
        ((height + 2 * ph - kh) / sh + 1, (width + 2 * pw - kw) / sw + 1)
    }

    private var geometry: ConvGeometry {
        ConvGeometry(channels: inChannels, height: height, width: widthIn, kh: kh, kw: kw, sh: sh, sw: sw,
                     ph: ph, pw: pw, outHeight: outHeight, outWidth: outWidth)
    }

    /// cols[k, s * P + p] for samples [s0, s0 + n) (`transposedIm2col`).
    private func im2colT(_ x: UnsafePointer<Float>, from s0: Int, count n: Int, into c: UnsafeMutablePointer<Float>) {
        transposedIm2col(geometry, x, from: s0, count: n, into: c)
    }

    /// The adjoint of `im2colT`: accumulates cols into dx.
    private func col2imT(_ c: UnsafePointer<Float>, from s0: Int, count n: Int, into dx: UnsafeMutablePointer<Float>) {
        transposedCol2im(geometry, c, from: s0, count: n, into: dx)
    }

    private var chunkSamples: Int { max(1, maxColumnFloats / max(1, outHeight * outWidth * max(fanIn, outChannels))) }

    /// Forward into `into` (a [batch, totalChannels, Ho, Wo] tensor, this conv's channels at
    /// `channelOffset`) or, when nil, into a layer-owned [batch, out, Ho, Wo] buffer. Returns the
    /// base pointer of the tensor written.
    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, batch: Int, height: Int, width: Int,
                        into dest: UnsafeMutablePointer<Float>? = nil, channelOffset: Int = 0, totalChannels: Int? = nil) -> UnsafeMutablePointer<Float> {
        input = x
        self.batch = batch
        self.height = height
        self.widthIn = width
        let (ho, wo) = outputSize(height: height, width: width)
        precondition(ho > 0 && wo > 0, "conv kernel \(kh)x\(kw) does not fit a \(height)x\(width) input")
        outHeight = ho
        outWidth = wo
        total = totalChannels ?? outChannels
        offset = channelOffset
        let K = fanIn, P = ho * wo, O = outChannels, C = inChannels
        let o = dest ?? out.ensure(batch * O * P)
        output = o
        let chunk = chunkSamples
        let b = bias.value
        var s0 = 0
        while s0 < batch {
            let n = min(chunk, batch - s0), nP = n * P
            let src: UnsafePointer<Float>
            if pointwise && n == 1 {
                src = x + s0 * C * P
            } else {
                let ct = cols.ensure(K * nP)
                im2colT(x, from: s0, count: n, into: ct)
                src = UnsafePointer(ct)
            }
            let y = tmp.ensure(O * nP)
            BLAS.sgemm(m: O, n: nP, k: K, a: weight.value, b: src, beta: 0, c: y)
            for s in 0..<n {
                for ch in 0..<O {
                    let d = o + ((s0 + s) * total + offset + ch) * P, r = y + ch * nP + s * P, bc = b[ch]
                    if relu {
                        for p in 0..<P { d[p] = max(r[p] + bc, 0) }
                    } else {
                        for p in 0..<P { d[p] = r[p] + bc }
                    }
                }
            }
            s0 += n
        }
        return o
    }

    /// dL/dx from dL/dy (read from the same slice forward wrote). Writes dx into `dx` (adds to it
    /// when `accumulate`), or into a layer-owned buffer that it returns.
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>, into dxOut: UnsafeMutablePointer<Float>? = nil, accumulate: Bool = false) -> UnsafeMutablePointer<Float> {
        guard let x = input, let y = output else { preconditionFailure("Conv2dRect.backward before forward") }
        _ = x
        let K = fanIn, P = outHeight * outWidth, O = outChannels, C = inChannels
        let count = batch * C * height * widthIn
        let dx = dxOut ?? dIn.ensure(count)
        if !accumulate { dx.update(repeating: 0, count: count) }
        let chunk = chunkSamples
        var s0 = 0
        while s0 < batch {
            let n = min(chunk, batch - s0), nP = n * P
            let g = tmp.ensure(O * nP)
            for s in 0..<n {
                for ch in 0..<O {
                    let at = ((s0 + s) * total + offset + ch) * P
                    let d = dy + at, r = g + ch * nP + s * P
                    if relu {
                        let yy = y + at
                        for p in 0..<P { r[p] = yy[p] > 0 ? d[p] : 0 }
                    } else {
                        for p in 0..<P { r[p] = d[p] }
                    }
                }
            }
            if pointwise && n == 1 {
                BLAS.sgemm(transA: true, m: K, n: nP, k: O, a: weight.value, b: g, beta: 1, c: dx + s0 * C * P)
            } else {
                let dc = cols.ensure(K * nP)
                BLAS.sgemm(transA: true, m: K, n: nP, k: O, a: weight.value, b: g, beta: 0, c: dc)
                col2imT(dc, from: s0, count: n, into: dx)
            }
            s0 += n
        }
        return dx
    }
}

/// 2-D pooling NCHW with kernel k, stride s and zero padding p (floor mode): max pooling (PyTorch
/// `F.max_pool2d`, padding never chosen) or average pooling (`F.avg_pool2d`, with
/// `count_include_pad` false: each window averages only the inputs it covers). Writes into a
/// channel slice of a wider tensor like `Conv2dRect`.
public final class Pool2d {
    public enum Kind: Sendable { case max, average }
    public let kind: Kind
    public let kernel: Int, stride: Int, padding: Int
    private var batch = 0, channels = 0, height = 0, width = 0, total = 0, offset = 0
    public private(set) var outHeight = 0
    public private(set) var outWidth = 0
    private var argmax: [Int32] = []
    private let out = Buffer(), dIn = Buffer()

    public init(_ kind: Kind, kernel: Int, stride: Int, padding: Int = 0) {
        self.kind = kind
        self.kernel = kernel
        self.stride = stride
        self.padding = padding
    }

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, batch: Int, channels: Int, height: Int, width: Int,
                        into dest: UnsafeMutablePointer<Float>? = nil, channelOffset: Int = 0, totalChannels: Int? = nil) -> UnsafeMutablePointer<Float> {
        self.batch = batch; self.channels = channels; self.height = height; self.width = width
        let k = kernel, s = stride, p = padding
        let ho = (height + 2 * p - k) / s + 1, wo = (width + 2 * p - k) / s + 1
        precondition(ho > 0 && wo > 0, "pool kernel \(k) does not fit a \(height)x\(width) input")
        outHeight = ho; outWidth = wo
        total = totalChannels ?? channels
        offset = channelOffset
        let y = dest ?? out.ensure(batch * channels * ho * wo)
        if kind == .max && argmax.count < batch * channels * ho * wo { argmax = [Int32](repeating: 0, count: batch * channels * ho * wo) }
        argmax.withUnsafeMutableBufferPointer { am in
            for b in 0..<batch {
                for c in 0..<channels {
                    let xp = x + (b * channels + c) * height * width
                    let yp = y + (b * total + offset + c) * ho * wo
                    let ap = am.baseAddress! + (b * channels + c) * ho * wo
                    for oh in 0..<ho {
                        let h0 = max(0, oh * s - p), h1 = min(height, oh * s - p + k)
                        for ow in 0..<wo {
                            let w0 = max(0, ow * s - p), w1 = min(width, ow * s - p + k)
                            if kind == .max {
                                var best = -Float.infinity, at = h0 * width + w0
                                for i in h0..<h1 { for j in w0..<w1 { let v = xp[i * width + j]; if v > best { best = v; at = i * width + j } } }
                                yp[oh * wo + ow] = best
                                ap[oh * wo + ow] = Int32(at)
                            } else {
                                var sum: Float = 0
                                for i in h0..<h1 { for j in w0..<w1 { sum += xp[i * width + j] } }
                                yp[oh * wo + ow] = sum / Float((h1 - h0) * (w1 - w0))
                            }
                        }
                    }
                }
            }
        }
        return y
    }

    /// dL/dx from dy read from the slice forward wrote; into `dx` (added when `accumulate`) or a
    /// layer-owned buffer.
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>, into dxOut: UnsafeMutablePointer<Float>? = nil, accumulate: Bool = false) -> UnsafeMutablePointer<Float> {
        let k = kernel, s = stride, p = padding, ho = outHeight, wo = outWidth
        let count = batch * channels * height * width
        let dx = dxOut ?? dIn.ensure(count)
        if !accumulate { dx.update(repeating: 0, count: count) }
        argmax.withUnsafeBufferPointer { am in
            for b in 0..<batch {
                for c in 0..<channels {
                    let dxp = dx + (b * channels + c) * height * width
                    let dyp = dy + (b * total + offset + c) * ho * wo
                    let ap = am.baseAddress! + (b * channels + c) * ho * wo
                    for oh in 0..<ho {
                        let h0 = max(0, oh * s - p), h1 = min(height, oh * s - p + k)
                        for ow in 0..<wo {
                            let g = dyp[oh * wo + ow]
                            if kind == .max {
                                dxp[Int(ap[oh * wo + ow])] += g
                            } else {
                                let w0 = max(0, ow * s - p), w1 = min(width, ow * s - p + k)
                                let share = g / Float((h1 - h0) * (w1 - w0))
                                for i in h0..<h1 { for j in w0..<w1 { dxp[i * width + j] += share } }
                            }
                        }
                    }
                }
            }
        }
        return dx
    }
}

/// 1-D interpolation weights as a dense [outSize, inSize] matrix, as PyTorch's `F.interpolate`
/// computes them with `align_corners=False` and no antialiasing: the source coordinate of output
/// i is (i + 0.5) * scale - 0.5, where scale is in/out, or 1/scaleFactor when a scale factor is
/// given (as DINOv2's position-embedding interpolation passes one).
/// - bilinear: the coordinate clamped at 0, neighbours floor and floor+1 (clamped to the last);
/// - bicubic: Keys' cubic convolution with A = -0.75 on the four neighbours, indices clamped.
public enum Interpolation: String, Sendable {
    case bilinear, bicubic

    public func matrix(inSize: Int, outSize: Int, scaleFactor: Double? = nil) -> [Float] {
        var m = [Float](repeating: 0, count: outSize * inSize)
        let scale: Float = scaleFactor.map { Float(1.0 / $0) } ?? Float(inSize) / Float(outSize)
        for i in 0..<outSize {
            var src = scale * (Float(i) + 0.5) - 0.5
            switch self {
            case .bilinear:
                if src < 0 { src = 0 }
                let i0 = min(Int(src), inSize - 1)
                let i1 = i0 + (i0 < inSize - 1 ? 1 : 0)
                let l1 = src - Float(i0), l0 = 1 - l1
                m[i * inSize + i0] += l0
                m[i * inSize + i1] += l1
            case .bicubic:
                let f = src.rounded(.down)
                let t = src - f, i0 = Int(f)
                let A: Float = -0.75
                func cc1(_ x: Float) -> Float { ((A + 2) * x - (A + 3)) * x * x + 1 }
                func cc2(_ x: Float) -> Float { ((A * x - 5 * A) * x + 8 * A) * x - 4 * A }
                let w = [cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t)]
                for k in 0..<4 {
                    let j = min(max(i0 - 1 + k, 0), inSize - 1)
                    m[i * inSize + j] += w[k]
                }
            }
        }
        return m
    }
}

/// Resizes images [batch, C, H, W] to [batch, C', outH, outW] with separable interpolation
/// (out = Rh x Rw^T per plane, two sgemms), then maps channel c' as a[c'] * v + b[c']. Grey
/// input (C = 1) with C' = 3 repeats the plane (its gradient sums the three). Backward is the
/// exact adjoint.
public final class ResizeNormalize {
    public let inChannels: Int, height: Int, width: Int
    public let outChannels: Int, outHeight: Int, outWidth: Int
    public let scale: [Float], shift: [Float]
    private let rh: [Float], rw: [Float]   // [outH, H], [outW, W]
    private var batch = 0
    private let out = Buffer(), dIn = Buffer(), tmp = Buffer(), plane = Buffer()

    public init(channels: Int, height: Int, width: Int, outChannels: Int, outHeight: Int, outWidth: Int,
                mode: Interpolation, scale: [Float], shift: [Float]) {
        precondition(channels == outChannels || channels == 1, "cannot map \(channels) channels to \(outChannels)")
        precondition(scale.count == outChannels && shift.count == outChannels)
        inChannels = channels; self.height = height; self.width = width
        self.outChannels = outChannels; self.outHeight = outHeight; self.outWidth = outWidth
        self.scale = scale; self.shift = shift
        rh = mode.matrix(inSize: height, outSize: outHeight)
        rw = mode.matrix(inSize: width, outSize: outWidth)
    }

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, batch: Int) -> UnsafeMutablePointer<Float> {
        self.batch = batch
        let H = height, W = width, S = outHeight, T = outWidth, Q = S * T
        let y = out.ensure(batch * outChannels * Q)
        let t = tmp.ensure(H * T), r = plane.ensure(Q)
        rh.withUnsafeBufferPointer { rhp in rw.withUnsafeBufferPointer { rwp in
            for b in 0..<batch {
                for c in 0..<inChannels {
                    // t[H, T] = X[H, W] Rw^T ; r[S, T] = Rh[S, H] t
                    BLAS.sgemm(transB: true, m: H, n: T, k: W, a: x + (b * inChannels + c) * H * W, b: rwp.baseAddress!, beta: 0, c: t)
                    BLAS.sgemm(m: S, n: T, k: H, a: rhp.baseAddress!, b: t, beta: 0, c: r)
                    let targets = inChannels == outChannels ? c..<(c + 1) : 0..<outChannels
                    for co in targets {
                        let d = y + (b * outChannels + co) * Q, a = scale[co], s = shift[co]
                        for i in 0..<Q { d[i] = a * r[i] + s }
                    }
                }
            }
        } }
        return y
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        let H = height, W = width, S = outHeight, T = outWidth, Q = S * T
        let dx = dIn.ensure(batch * inChannels * H * W)
        let t = tmp.ensure(H * T), r = plane.ensure(Q)
        rh.withUnsafeBufferPointer { rhp in rw.withUnsafeBufferPointer { rwp in
            for b in 0..<batch {
                for c in 0..<inChannels {
                    let sources = inChannels == outChannels ? c..<(c + 1) : 0..<outChannels
                    r.update(repeating: 0, count: Q)
                    for co in sources {
                        let g = dy + (b * outChannels + co) * Q, a = scale[co]
                        for i in 0..<Q { r[i] += a * g[i] }
                    }
                    // t[H, T] = Rh^T r ; dX[H, W] = t Rw
                    BLAS.sgemm(transA: true, m: H, n: T, k: S, a: rhp.baseAddress!, b: r, beta: 0, c: t)
                    BLAS.sgemm(m: H, n: W, k: T, a: t, b: rwp.baseAddress!, beta: 0, c: dx + (b * inChannels + c) * H * W)
                }
            }
        } }
        return dx
    }
}

/// GELU, exact (erf) form: PyTorch `nn.GELU()` (ViTs such as DINOv2).
public final class GELUExact {
    private var input: UnsafePointer<Float>?
    private var count = 0
    private let out = Buffer(), dIn = Buffer()

    public init() {}

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, count: Int) -> UnsafeMutablePointer<Float> {
        input = x
        self.count = count
        let y = out.ensure(count)
        let r: Float = 1 / Float(2).squareRoot()
        for i in 0..<count { let v = x[i]; y[i] = 0.5 * v * (1 + erff(v * r)) }
        return y
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        guard let x = input else { preconditionFailure("GELUExact.backward before forward") }
        let dx = dIn.ensure(count)
        let r: Float = 1 / Float(2).squareRoot(), c: Float = 1 / (2 * Float.pi).squareRoot()
        for i in 0..<count {
            let v = x[i]
            dx[i] = dy[i] * (0.5 * (1 + erff(v * r)) + v * c * expf(-0.5 * v * v))
        }
        return dx
    }
}
