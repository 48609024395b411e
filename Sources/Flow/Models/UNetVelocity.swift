import Foundation
import NN
import Numerics

/// Class-conditional convolutional U-Net velocity network ("unet"), DDPM/ADM-style without
/// attention. With L = channel_mult.count levels, ch_l = hidden * channel_mult[l],
/// E = hidden * mlp_ratio and N = depth:
///
///     c = t_embedder(t * time_scale) + y_embedder(y); e = SiLU(c)     [B, E] (as SiT, width E)
///     h = conv_in(x)                                  Conv2d(C, ch_0, 3, padding 1)
///     down.l.res.i  (i < N)   ResBlock(ch_{l-1} or ch_0 -> ch_l, e); skip_l = h
///     down.l.downsample       Conv2d(ch_l, ch_l, 3, stride 2, padding 1)      (l < L-1)
///     mid.0, mid.1            ResBlock(ch_{L-1} -> ch_{L-1}, e)
///     for l = L-1 ... 0:
///       h = cat([h, skip_l], dim=1)
///       up.l.res.i            ResBlock(2 ch_l -> ch_l for i = 0, ch_l -> ch_l after, e)
///       up.l.upsample         nearest x2, then Conv2d(ch_l, ch_{l-1}, 3, padding 1)   (l > 0)
///     v = conv_out(SiLU(norm_out(h)))                 GroupNorm(ch_0), Conv2d(ch_0, C, 3, padding 1)
///
/// `ResBlock` (NN) holds the block's layers and names. Init: PyTorch defaults for convolutions
/// and linears, DiT's N(0, 0.02) for the label table and time MLP, zero for every block's conv2
/// and for conv_out (so the untrained network outputs exactly 0, as the adaLN-Zero models do).
/// `benchmarks/torch_models.py` holds the PyTorch twin (`UNet`).
public final class UNetVelocity: VelocityNet {
    final class Level {
        let res: [ResBlock]
        let resample: Conv2d?          // downsample (down path) or upsample conv (up path)
        let concat = ChannelConcat()   // up path only
        let nearest = Upsample2x()     // up path only

        init(res: [ResBlock], resample: Conv2d?) {
            self.res = res
            self.resample = resample
        }
    }

    let convIn: Conv2d
    let tEmbedder: TimestepEmbedder
    let yEmbedder: Embedding
    let condAct = SiLU()
    let down: [Level]
    let mid: [ResBlock]
    let up: [Level]
    let normOut: GroupNorm
    let actOut = SiLU()
    let convOut: Conv2d
    /// Channels of each level.
    public let levelChannels: [Int]

    private var batch = 0
    private var skips: [UnsafePointer<Float>] = []
    private var skipGrads: [UnsafeMutablePointer<Float>] = []
    private let xCopy = Buffer(), cond = Buffer(), dSC = Buffer()

    public static let midBlocks = 2

    override init(config: ModelConfig, params ps: ParameterSet) {
        let ch = config.levelMultipliers.map { config.hidden * $0 }
        let L = ch.count, E = config.mlpHidden, G = config.groupCount, N = config.depth
        levelChannels = ch
        convIn = Conv2d(ps, "conv_in", in: config.channels, out: ch[0], kernel: 3, padding: 1)
        tEmbedder = TimestepEmbedder(ps, "t_embedder", dim: E, frequencyDim: config.frequencyDim)
        yEmbedder = Embedding(ps, "y_embedder.embedding_table", rows: config.numClasses + 1, dim: E)
        down = (0..<L).map { l in
            let res = (0..<N).map { i in
                ResBlock(ps, "down.\(l).res.\(i)", in: i > 0 ? ch[l] : ch[max(l - 1, 0)], out: ch[l], embedDim: E, groups: G)
            }
            let ds = l < L - 1 ? Conv2d(ps, "down.\(l).downsample", in: ch[l], out: ch[l], kernel: 3, stride: 2, padding: 1) : nil
            return Level(res: res, resample: ds)
        }
        mid = (0..<Self.midBlocks).map { ResBlock(ps, "mid.\($0)", in: ch[L - 1], out: ch[L - 1], embedDim: E, groups: G) }
        // registered in level order (up.0 first), as the PyTorch ModuleList is; run from L-1 down
        up = (0..<L).map { l in
            let res = (0..<N).map { i in
                ResBlock(ps, "up.\(l).res.\(i)", in: i == 0 ? 2 * ch[l] : ch[l], out: ch[l], embedDim: E, groups: G)
            }
            let us = l > 0 ? Conv2d(ps, "up.\(l).upsample", in: ch[l], out: ch[l - 1], kernel: 3, padding: 1) : nil
            return Level(res: res, resample: us)
        }
        normOut = GroupNorm(ps, "norm_out", groups: G, channels: ch[0])
        convOut = Conv2d(ps, "conv_out", in: ch[0], out: config.channels, kernel: 3, padding: 1)
        super.init(config: config, params: ps)
    }

    override func makeReplica() -> VelocityNet { UNetVelocity(config: config, params: params) }

    override func initialize(rng: inout CounterRNG) {
        convIn.initDefault(rng: &rng)
        tEmbedder.initDiT(rng: &rng)
        yEmbedder.weight.normal(std: 0.02, rng: &rng)
        for level in down {
            for b in level.res { b.initialize(rng: &rng) }
            level.resample?.initDefault(rng: &rng)
        }
        for b in mid { b.initialize(rng: &rng) }
        for level in up {
            for b in level.res { b.initialize(rng: &rng) }
            level.resample?.initDefault(rng: &rng)
        }
        normOut.initDefault()
        convOut.weight.fill(0)
        convOut.bias?.fill(0)
    }

    @discardableResult
    override public func forward(_ x: UnsafePointer<Float>, t: [Float], y: [Int], batch: Int) -> UnsafeMutablePointer<Float> {
        checkInputs(t: t, y: y, batch: batch)
        self.batch = batch
        let E = config.mlpHidden, D = config.sampleDimension, ch = levelChannels, L = ch.count
        // the first conv keeps a pointer to its input for backward, so it reads a copy
        let xc = xCopy.ensure(batch * D)
        xc.update(from: x, count: batch * D)
        let te = tEmbedder.forward(t.map { $0 * config.timeScale })
        let ye = yEmbedder.forward(y)
        let c = cond.ensure(batch * E)
        for i in 0..<(batch * E) { c[i] = te[i] + ye[i] }
        let e = UnsafePointer(condAct.forward(c, count: batch * E))

        var hh = config.height, ww = config.width
        var h = UnsafePointer(convIn.forward(xc, batch: batch, height: hh, width: ww))
        skips.removeAll(keepingCapacity: true)
        for l in 0..<L {
            for b in down[l].res { h = UnsafePointer(b.forward(h, emb: e, batch: batch, height: hh, width: ww)) }
            skips.append(h)   // a block's output buffer, untouched until the next forward
            if let ds = down[l].resample {
                h = UnsafePointer(ds.forward(h, batch: batch, height: hh, width: ww))
                hh = ds.outHeight
                ww = ds.outWidth
            }
        }
        for b in mid { h = UnsafePointer(b.forward(h, emb: e, batch: batch, height: hh, width: ww)) }
        var cur = ch[L - 1]
        for l in stride(from: L - 1, through: 0, by: -1) {
            let level = up[l]
            h = UnsafePointer(level.concat.forward(h, channels: cur, skips[l], channels: ch[l], batch: batch, spatial: hh * ww))
            for b in level.res { h = UnsafePointer(b.forward(h, emb: e, batch: batch, height: hh, width: ww)) }
            cur = ch[l]
            if let us = level.resample {
                h = UnsafePointer(level.nearest.forward(h, planes: batch * cur, height: hh, width: ww))
                hh *= 2
                ww *= 2
                h = UnsafePointer(us.forward(h, batch: batch, height: hh, width: ww))
                cur = us.outChannels
            }
        }
        let n = normOut.forward(h, batch: batch, spatial: hh * ww)
        let a = actOut.forward(n, count: batch * cur * hh * ww)
        return convOut.forward(a, batch: batch, height: hh, width: ww)
    }

    @discardableResult
    override public func backward(_ dv: UnsafePointer<Float>, paramGrads: Bool = true) -> UnsafeMutablePointer<Float> {
        let E = config.mlpHidden, ch = levelChannels, L = ch.count, B = batch
        let H = config.height, W = config.width
        // the conditioning gradient is needed only for the embedders' parameters
        let dsc: UnsafeMutablePointer<Float>? = paramGrads ? dSC.zeroed(B * E) : nil
        let da = convOut.backward(dv, paramGrads: paramGrads)
        let dn = actOut.backward(da)
        var dh = normOut.backward(dn, paramGrads: paramGrads)
        // up path, level 0 first (the reverse of forward's order)
        skipGrads.removeAll(keepingCapacity: true)
        for l in 0..<L {
            let level = up[l]
            if let us = level.resample {
                dh = us.backward(dh, paramGrads: paramGrads)
                dh = level.nearest.backward(dh)
            }
            for b in level.res.reversed() { dh = b.backward(dh, dEmb: dsc, paramGrads: paramGrads) }
            let (dPrev, dSkip) = level.concat.backward(dh)
            skipGrads.append(dSkip)
            dh = dPrev
        }
        for b in mid.reversed() { dh = b.backward(dh, dEmb: dsc, paramGrads: paramGrads) }
        for l in stride(from: L - 1, through: 0, by: -1) {
            let level = down[l]
            if let ds = level.resample { dh = ds.backward(dh, paramGrads: paramGrads) }
            // the skip's gradient joins the down path where the skip left it (dh is a buffer
            // of the layer that returned it, free to change)
            let P = (H >> l) * (W >> l)
            Ops.add(skipGrads[l], into: dh, count: B * ch[l] * P)
            for b in level.res.reversed() { dh = b.backward(dh, dEmb: dsc, paramGrads: paramGrads) }
        }
        let dx = convIn.backward(dh, paramGrads: paramGrads)
        if let dsc {
            let dc = condAct.backward(dsc)
            tEmbedder.backward(dc)
            yEmbedder.backward(dc)
        }
        return dx
    }
}
