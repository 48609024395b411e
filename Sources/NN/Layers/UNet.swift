import Foundation
import Numerics

// Layers of the convolutional U-Net velocity model: group normalisation, nearest-neighbour
// upsampling, channel concatenation and the time/label-conditioned residual block. Same
// conventions as the other layers (Basic.swift): NCHW float32, forward caches what backward
// needs and returns a layer-owned buffer, backward accumulates parameter gradients.

/// Group normalisation over NCHW (PyTorch `nn.GroupNorm(groups, channels, eps=1e-5)`, affine,
/// biased variance): the channels of each sample are split into `groups` consecutive groups and
/// each group is normalised over its channels and all spatial positions, then
/// y = xhat * weight[c] + bias[c]. Names `name.weight`, `name.bias` ([channels]).
///
/// In NCHW a group of one sample is one contiguous run of (channels / groups) * H * W floats,
/// so its statistics are two vectorised reductions.
public final class GroupNorm {
    public let groups: Int, channels: Int
    public let eps: Float
    public let weight: Parameter
    public let bias: Parameter
    private var input: UnsafePointer<Float>?
    private var batch = 0, spatial = 0
    private let out = Buffer(), dIn = Buffer(), mean = Buffer(), rstd = Buffer()
    private let sumDy = Buffer(), sumDyX = Buffer()

    public init(_ ps: ParameterSet, _ name: String, groups: Int, channels: Int, eps: Float = 1e-5) {
        precondition(groups > 0 && channels % groups == 0, "\(channels) channels do not split into \(groups) groups")
        self.groups = groups
        self.channels = channels
        self.eps = eps
        weight = ps.parameter(name + ".weight", [channels])
        bias = ps.parameter(name + ".bias", [channels])
    }

    /// PyTorch's init: weight 1, bias 0.
    public func initDefault() {
        weight.fill(1)
        bias.fill(0)
    }

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, batch: Int, spatial: Int) -> UnsafeMutablePointer<Float> {
        input = x
        self.batch = batch
        self.spatial = spatial
        let C = channels, G = groups, cpg = C / G, n = cpg * spatial
        let y = out.ensure(batch * C * spatial), mu = mean.ensure(batch * G), rs = rstd.ensure(batch * G)
        let w = weight.value, b = bias.value
        for bg in 0..<(batch * G) {
            let xg = x + bg * n, yg = y + bg * n
            let m = vsum(xg, n) / Float(n)
            let inv = 1 / (vsumSquaredDeviation(xg, m, n) / Float(n) + eps).squareRoot()
            mu[bg] = m
            rs[bg] = inv
            let c0 = (bg % G) * cpg
            for j in 0..<cpg {
                // (x - m) * inv * w + b as one multiply-add per element
                let a = inv * w[c0 + j], s = b[c0 + j] - m * a
                let xc = xg + j * spatial, yc = yg + j * spatial
                for i in 0..<spatial { yc[i] = xc[i] * a + s }
            }
        }
        return y
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>, paramGrads: Bool = true) -> UnsafeMutablePointer<Float> {
        guard let x = input else { preconditionFailure("GroupNorm.backward before forward") }
        let C = channels, G = groups, cpg = C / G, n = cpg * spatial, P = spatial
        let dx = dIn.ensure(batch * C * P), mu = mean.pointer, rs = rstd.pointer
        let sdy = sumDy.ensure(cpg), sdyx = sumDyX.ensure(cpg)
        let w = weight.value, gw = weight.grad, gb = bias.grad
        let fn = Float(n)
        for bg in 0..<(batch * G) {
            let xg = x + bg * n, dyg = dy + bg * n, dxg = dx + bg * n
            let m = mu[bg], inv = rs[bg], c0 = (bg % G) * cpg
            // with dxhat = dy * w: s1 = sum dxhat, s2 = sum dxhat * xhat, per channel sums first
            var s1: Float = 0, s2: Float = 0
            for j in 0..<cpg {
                let d = dyg + j * P, xc = xg + j * P
                sdy[j] = vsum(d, P)
                sdyx[j] = inv * (vdot(d, xc, P) - m * sdy[j])   // sum dy * xhat
                s1 += w[c0 + j] * sdy[j]
                s2 += w[c0 + j] * sdyx[j]
            }
            // dx = inv * (dxhat - s1/n - xhat * s2/n) = A dy + Bx x + K per channel
            let bx = -inv * inv * s2 / fn
            let k0 = -inv * s1 / fn - m * bx
            for j in 0..<cpg {
                let a = inv * w[c0 + j]
                let d = dyg + j * P, xc = xg + j * P, o = dxg + j * P
                for i in 0..<P { o[i] = a * d[i] + bx * xc[i] + k0 }
                if paramGrads {
                    gw[c0 + j] += sdyx[j]
                    gb[c0 + j] += sdy[j]
                }
            }
        }
        return dx
    }
}

/// Nearest-neighbour 2x upsampling NCHW (PyTorch `F.interpolate(x, scale_factor=2, mode="nearest")`):
/// out[.., 2i + a, 2j + b] = x[.., i, j]. Backward sums each 2x2 block.
public final class Upsample2x {
    private var planes = 0, height = 0, width = 0
    private let out = Buffer(), dIn = Buffer()

    public init() {}

    /// `planes` = batch * channels; returns [planes, 2H, 2W].
    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, planes: Int, height: Int, width: Int) -> UnsafeMutablePointer<Float> {
        self.planes = planes; self.height = height; self.width = width
        let W2 = 2 * width
        let y = out.ensure(planes * 4 * height * width)
        for p in 0..<(planes * height) {   // one input row -> two output rows
            let src = x + p * width, dst = y + p * 2 * W2
            for j in 0..<width { let v = src[j]; dst[2 * j] = v; dst[2 * j + 1] = v }
            (dst + W2).update(from: dst, count: W2)
        }
        return y
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        let W2 = 2 * width
        let dx = dIn.ensure(planes * height * width)
        for p in 0..<(planes * height) {
            let r0 = dy + p * 2 * W2, r1 = r0 + W2, d = dx + p * width
            for j in 0..<width { d[j] = (r0[2 * j] + r0[2 * j + 1]) + (r1[2 * j] + r1[2 * j + 1]) }
        }
        return dx
    }
}

/// Channel concatenation of two NCHW tensors of the same batch and spatial size
/// (`torch.cat([a, b], dim=1)`), the U-Net's skip connection. Backward splits dy.
public final class ChannelConcat {
    private var batch = 0, ca = 0, cb = 0, spatial = 0
    private let out = Buffer(), dA = Buffer(), dB = Buffer()

    public init() {}

    @discardableResult
    public func forward(_ a: UnsafePointer<Float>, channels ca: Int, _ b: UnsafePointer<Float>, channels cb: Int,
                        batch: Int, spatial: Int) -> UnsafeMutablePointer<Float> {
        self.batch = batch; self.ca = ca; self.cb = cb; self.spatial = spatial
        let na = ca * spatial, nb = cb * spatial
        let y = out.ensure(batch * (na + nb))
        for s in 0..<batch {
            (y + s * (na + nb)).update(from: a + s * na, count: na)
            (y + s * (na + nb) + na).update(from: b + s * nb, count: nb)
        }
        return y
    }

    /// (dL/da, dL/db), each in a layer-owned buffer.
    public func backward(_ dy: UnsafePointer<Float>) -> (UnsafeMutablePointer<Float>, UnsafeMutablePointer<Float>) {
        let na = ca * spatial, nb = cb * spatial
        let da = dA.ensure(batch * na), db = dB.ensure(batch * nb)
        for s in 0..<batch {
            (da + s * na).update(from: dy + s * (na + nb), count: na)
            (db + s * nb).update(from: dy + s * (na + nb) + na, count: nb)
        }
        return (da, db)
    }
}

/// The U-Net's residual block with per-channel conditioning (DDPM / ADM style, without dropout
/// or scale-shift norm):
///
///     h = conv1(SiLU(norm1(x)))                 GroupNorm(in), Conv2d(in, out, 3, padding 1)
///     h = h + emb_proj(e)[:, :, None, None]      Linear(E, out); e = SiLU(t_emb + y_emb), [B, E]
///     h = conv2(SiLU(norm2(h)))                 GroupNorm(out), Conv2d(out, out, 3, padding 1)
///     out = skip(x) + h                          skip: Conv2d(in, out, 1) when in != out, else x
///
/// Names `name.norm1.*`, `name.conv1.*`, `name.emb_proj.*`, `name.norm2.*`, `name.conv2.*`,
/// `name.skip.*`.
public final class ResBlock {
    public let inChannels: Int, outChannels: Int, embedDim: Int
    public let norm1: GroupNorm, norm2: GroupNorm
    public let conv1: Conv2d, conv2: Conv2d
    public let embProj: Linear
    public let skip: Conv2d?
    let act1 = SiLU(), act2 = SiLU()
    private var batch = 0, height = 0, width = 0
    private let out = Buffer(), dIn = Buffer(), dE = Buffer()

    public init(_ ps: ParameterSet, _ name: String, in inChannels: Int, out outChannels: Int, embedDim: Int, groups: Int) {
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.embedDim = embedDim
        norm1 = GroupNorm(ps, name + ".norm1", groups: groups, channels: inChannels)
        conv1 = Conv2d(ps, name + ".conv1", in: inChannels, out: outChannels, kernel: 3, padding: 1)
        embProj = Linear(ps, name + ".emb_proj", in: embedDim, out: outChannels)
        norm2 = GroupNorm(ps, name + ".norm2", groups: groups, channels: outChannels)
        conv2 = Conv2d(ps, name + ".conv2", in: outChannels, out: outChannels, kernel: 3, padding: 1)
        skip = inChannels == outChannels ? nil : Conv2d(ps, name + ".skip", in: inChannels, out: outChannels, kernel: 1)
    }

    /// PyTorch default init for the convolutions and the projection, norms at (1, 0), and conv2
    /// at zero (ADM's zero_module), so a fresh block is its skip path.
    public func initialize(rng: inout CounterRNG) {
        norm1.initDefault()
        conv1.initDefault(rng: &rng)
        embProj.initDefault(rng: &rng)
        norm2.initDefault()
        conv2.weight.fill(0)
        conv2.bias?.fill(0)
        skip?.initDefault(rng: &rng)
    }

    /// x [batch, in, H, W], e [batch, E] (already through SiLU) -> [batch, out, H, W].
    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, emb e: UnsafePointer<Float>, batch: Int, height: Int, width: Int) -> UnsafeMutablePointer<Float> {
        self.batch = batch; self.height = height; self.width = width
        let P = height * width, O = outChannels
        let n1 = norm1.forward(x, batch: batch, spatial: P)
        let a1 = act1.forward(n1, count: batch * inChannels * P)
        let h1 = conv1.forward(a1, batch: batch, height: height, width: width)
        let pe = embProj.forward(e, rows: batch)
        // added in place: conv1's backward needs its input, not its output
        for s in 0..<batch {
            for c in 0..<O {
                let v = pe[s * O + c], r = h1 + (s * O + c) * P
                for i in 0..<P { r[i] += v }
            }
        }
        let n2 = norm2.forward(h1, batch: batch, spatial: P)
        let a2 = act2.forward(n2, count: batch * O * P)
        let h2 = conv2.forward(a2, batch: batch, height: height, width: width)
        let y = out.ensure(batch * O * P)
        let count = batch * O * P
        if let skip {
            let s = skip.forward(x, batch: batch, height: height, width: width)
            for i in 0..<count { y[i] = s[i] + h2[i] }
        } else {
            for i in 0..<count { y[i] = x[i] + h2[i] }
        }
        return y
    }

    /// dL/dx from dL/d(out). Accumulates dL/de into `dEmb` ([batch, E]) when given; parameter
    /// gradients when `paramGrads`.
    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>, dEmb: UnsafeMutablePointer<Float>?, paramGrads: Bool = true) -> UnsafeMutablePointer<Float> {
        let P = height * width, O = outChannels, B = batch
        let da2 = conv2.backward(dy, paramGrads: paramGrads)
        let dn2 = act2.backward(da2)
        let dh1 = norm2.backward(dn2, paramGrads: paramGrads)
        if paramGrads || dEmb != nil {
            // the broadcast add's gradient: dL/d(emb_proj output) = spatial sums of dh1
            let de = dE.ensure(B * O)
            for i in 0..<(B * O) { de[i] = vsum(dh1 + i * P, P) }
            embProj.backward(de, into: dEmb, accumulate: true, paramGrads: paramGrads)
        }
        let da1 = conv1.backward(dh1, paramGrads: paramGrads)
        let dn1 = act1.backward(da1)
        let dxn = norm1.backward(dn1, paramGrads: paramGrads)
        let count = B * inChannels * P
        let dx = dIn.ensure(count)
        if let skip {
            let ds = skip.backward(dy, paramGrads: paramGrads)
            for i in 0..<count { dx[i] = dxn[i] + ds[i] }
        } else {
            for i in 0..<count { dx[i] = dxn[i] + dy[i] }
        }
        return dx
    }
}
