import Foundation
import NN
import Numerics

/// SiT/DiT transformer velocity network ("sit"), parameter names and layouts as facebookresearch/DiT
/// `models.py` (with learn_sigma=False: the output has the input's channels):
///
///     x_embedder.proj        Conv2d(C, W, kernel=stride=patch)   -> tokens [B, T, W]
///     pos_embed              fixed 2-D sin-cos [1, T, W] (saved, never trained)
///     t_embedder.mlp.{0,2}   sinusoid(256) of t * time_scale -> Linear -> SiLU -> Linear
///     y_embedder.embedding_table  [num_classes + 1, W]; c = t_emb + y_emb
///     blocks.i: norm1, norm2 (LayerNorm, no affine, eps 1e-6), attn.qkv, attn.proj,
///               mlp.fc1, mlp.fc2 (GELU tanh), adaLN_modulation.1 Linear(W, 6W) after SiLU(c)
///     final_layer.norm_final, final_layer.adaLN_modulation.1 Linear(W, 2W), final_layer.linear
///     unpatchify (DiT's p, q, c token layout) -> [B, C, H, W]
///
/// Initialisation as DiT: xavier-uniform linears and patch conv (as a [W, C*p*p] matrix), zero
/// biases, N(0, 0.02) label table and t-MLP weights, zero adaLN linears and final linear.
public final class SiTVelocity: VelocityNet {
    final class Block {
        let norm1: LayerNorm
        let mod1: Modulate
        let attn: MultiHeadAttention
        let gated1: GatedResidual
        let norm2: LayerNorm
        let mod2: Modulate
        let fc1: Linear
        let act = GELU()
        let fc2: Linear
        let gated2: GatedResidual
        let ada: Linear

        init(_ ps: ParameterSet, _ name: String, width: Int, heads: Int, hidden: Int) {
            norm1 = LayerNorm(nil, name + ".norm1", dim: width, affine: false)
            mod1 = Modulate(dim: width)
            attn = MultiHeadAttention(ps, name + ".attn", width: width, heads: heads)
            gated1 = GatedResidual(dim: width)
            norm2 = LayerNorm(nil, name + ".norm2", dim: width, affine: false)
            mod2 = Modulate(dim: width)
            fc1 = Linear(ps, name + ".mlp.fc1", in: width, out: hidden)
            fc2 = Linear(ps, name + ".mlp.fc2", in: hidden, out: width)
            gated2 = GatedResidual(dim: width)
            ada = Linear(ps, name + ".adaLN_modulation.1", in: width, out: 6 * width)
        }
    }

    let xEmbedder: Conv2d
    let posEmbed: Parameter
    let tEmbedder: TimestepEmbedder
    let yEmbedder: Embedding
    let condAct = SiLU()
    let blocks: [Block]
    let finalNorm: LayerNorm
    let finalAda: Linear
    let finalMod: Modulate
    let finalLinear: Linear
    let unpatchify: Unpatchify
    public let tokens: Int

    private var batch = 0
    private let cond = Buffer(), outBuf = Buffer(), xCopy = Buffer()
    private let dH = Buffer(), dMod = Buffer(), dSC = Buffer()

    override init(config: ModelConfig, params ps: ParameterSet) {
        let W = config.hidden, p = config.patch, C = config.channels
        let grid = config.height / p
        tokens = grid * (config.width / p)
        xEmbedder = Conv2d(ps, "x_embedder.proj", in: C, out: W, kernel: p, stride: p, tokensOut: true)
        posEmbed = ps.parameter("pos_embed", [1, tokens, W], trainable: false)
        tEmbedder = TimestepEmbedder(ps, "t_embedder", dim: W, frequencyDim: config.frequencyDim)
        yEmbedder = Embedding(ps, "y_embedder.embedding_table", rows: config.numClasses + 1, dim: W)
        blocks = (0..<config.depth).map { Block(ps, "blocks.\($0)", width: W, heads: config.heads, hidden: config.mlpHidden) }
        finalNorm = LayerNorm(nil, "final_layer.norm_final", dim: W, affine: false)
        finalLinear = Linear(ps, "final_layer.linear", in: W, out: p * p * C)
        finalAda = Linear(ps, "final_layer.adaLN_modulation.1", in: W, out: 2 * W)
        finalMod = Modulate(dim: W)
        unpatchify = Unpatchify(channels: C, height: config.height, width: config.width, patch: p, order: .channelLast)
        super.init(config: config, params: ps)
    }

    override func makeReplica() -> VelocityNet { SiTVelocity(config: config, params: params) }

    override func initialize(rng: inout CounterRNG) {
        let W = config.hidden
        xEmbedder.weight.xavierUniform(fanIn: xEmbedder.fanIn, fanOut: W, rng: &rng)
        xEmbedder.bias?.fill(0)
        posEmbed.values = sinCosPositionalEmbedding2D(dim: W, gridSize: config.height / config.patch)
        tEmbedder.initDiT(rng: &rng)
        yEmbedder.weight.normal(std: 0.02, rng: &rng)
        for b in blocks {
            b.attn.qkv.initXavier(rng: &rng)
            b.attn.proj.initXavier(rng: &rng)
            b.fc1.initXavier(rng: &rng)
            b.fc2.initXavier(rng: &rng)
            b.ada.initZero()
        }
        finalAda.initZero()
        finalLinear.initZero()
    }

    @discardableResult
    override public func forward(_ x: UnsafePointer<Float>, t: [Float], y: [Int], batch: Int) -> UnsafeMutablePointer<Float> {
        checkInputs(t: t, y: y, batch: batch)
        self.batch = batch
        let W = config.hidden, T = tokens, rows = batch * T
        // patch embedding on a copy of x (the conv keeps a pointer to its input for backward)
        let xc = xCopy.ensure(batch * config.sampleDimension)
        xc.update(from: x, count: batch * config.sampleDimension)
        let e = xEmbedder.forward(xc, batch: batch, height: config.height, width: config.width)
        let pe = posEmbed.value
        for b in 0..<batch {
            let row = e + b * T * W
            for i in 0..<(T * W) { row[i] += pe[i] }
        }
        var h = UnsafePointer(e)
        let te = tEmbedder.forward(t.map { $0 * config.timeScale })
        let ye = yEmbedder.forward(y)
        let c = cond.ensure(batch * W)
        for i in 0..<(batch * W) { c[i] = te[i] + ye[i] }
        let sc = condAct.forward(c, count: batch * W)
        for b in blocks {
            // shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
            let m = b.ada.forward(sc, rows: batch)
            let n1 = b.norm1.forward(h, rows: rows)
            let m1 = b.mod1.forward(n1, shift: m, scale: m + W, ld: 6 * W, batch: batch, tokens: T)
            let a = b.attn.forward(m1, batch: batch, tokens: T)
            let h1 = b.gated1.forward(residual: h, a, gate: m + 2 * W, ld: 6 * W, batch: batch, tokens: T)
            let n2 = b.norm2.forward(h1, rows: rows)
            let m2 = b.mod2.forward(n2, shift: m + 3 * W, scale: m + 4 * W, ld: 6 * W, batch: batch, tokens: T)
            let f1 = b.fc1.forward(m2, rows: rows)
            let g = b.act.forward(f1, count: rows * config.mlpHidden)
            let f2 = b.fc2.forward(g, rows: rows)
            h = UnsafePointer(b.gated2.forward(residual: h1, f2, gate: m + 5 * W, ld: 6 * W, batch: batch, tokens: T))
        }
        let mf = finalAda.forward(sc, rows: batch)
        let nf = finalNorm.forward(h, rows: rows)
        let mmf = finalMod.forward(nf, shift: mf, scale: mf + W, ld: 2 * W, batch: batch, tokens: T)
        let o = finalLinear.forward(mmf, rows: rows)
        let out = outBuf.ensure(batch * config.sampleDimension)
        unpatchify.forward(o, batch: batch, into: out)
        return out
    }

    @discardableResult
    override public func backward(_ dv: UnsafePointer<Float>, paramGrads: Bool = true) -> UnsafeMutablePointer<Float> {
        let W = config.hidden, T = tokens, B = batch, rows = B * T
        let dh = dH.ensure(rows * W)
        let dm = dMod.ensure(B * 6 * W)
        let dsc = dSC.zeroed(B * W)
        let dO = unpatchify.backward(dv)
        let dmmf = finalLinear.backward(dO, paramGrads: paramGrads)
        let dnf = finalMod.backward(dmmf, dShift: dm, dScale: dm + W)
        dh.update(from: finalNorm.backward(dnf), count: rows * W)
        if paramGrads { finalAda.backward(dm, lddy: 2 * W, into: dsc, accumulate: true) }
        for b in blocks.reversed() {
            // MLP half: dh is dL/d(block output)
            let df2 = b.gated2.backward(dh, dGate: dm + 5 * W)
            let dg = b.fc2.backward(df2, paramGrads: paramGrads)
            let df1 = b.act.backward(dg)
            let dm2 = b.fc1.backward(df1, paramGrads: paramGrads)
            let dn2 = b.mod2.backward(dm2, dShift: dm + 3 * W, dScale: dm + 4 * W)
            Ops.add(b.norm2.backward(dn2), into: dh, count: rows * W)
            // attention half: dh is now dL/dh1
            let da = b.gated1.backward(dh, dGate: dm + 2 * W)
            let dm1 = b.attn.backward(da, paramGrads: paramGrads)
            let dn1 = b.mod1.backward(dm1, dShift: dm, dScale: dm + W)
            Ops.add(b.norm1.backward(dn1), into: dh, count: rows * W)
            if paramGrads { b.ada.backward(dm, into: dsc, accumulate: true) }
        }
        if paramGrads {
            let dc = condAct.backward(dsc)
            tEmbedder.backward(dc)
            yEmbedder.backward(dc)
        }
        // pos_embed is fixed; the patch conv takes dh straight (token-major)
        return xEmbedder.backward(dh, paramGrads: paramGrads)
    }
}
