import Foundation
import NN
import Numerics

/// Residual MLP velocity network over flattened pixels ("mlp"), conditioned like DiT:
///
///     h = input_proj(x)                                        Linear(D, W)
///     c = t_embedder(t * time_scale) + y_embedder(y)           [B, W]
///     for each block:                                          blocks.i
///         shift, scale, gate = adaLN_modulation(c).chunk(3)    SiLU -> Linear(W, 3W)
///         h = h + gate * fc2(SiLU(fc1(LN(h) * (1 + scale) + shift)))   fc1 W->M, fc2 M->W
///     shift, scale = final_layer.adaLN_modulation(c).chunk(2)  SiLU -> Linear(W, 2W)
///     v = final_layer.linear(LN(h) * (1 + scale) + shift)      Linear(W, D)
///
/// LayerNorms have no affine, eps 1e-6. adaLN linears and the final linear start at zero
/// (adaLN-Zero), so the untrained network outputs 0. `benchmarks/torch_models.py` holds the
/// PyTorch twin (`MLPVelocity`) that loads our checkpoints with strict=True.
public final class MLPVelocity: VelocityNet {
    final class Block {
        let norm: LayerNorm
        let ada: Linear
        let mod: Modulate
        let fc1: Linear
        let act = SiLU()
        let fc2: Linear
        let gated: GatedResidual
        let shared = Buffer()  // [batch, 3W] ada rows gathered from the distinct (t, y) pairs

        init(_ ps: ParameterSet, _ name: String, width: Int, hidden: Int) {
            norm = LayerNorm(nil, name + ".norm", dim: width, affine: false)
            ada = Linear(ps, name + ".adaLN_modulation.1", in: width, out: 3 * width)
            mod = Modulate(dim: width)
            fc1 = Linear(ps, name + ".fc1", in: width, out: hidden)
            fc2 = Linear(ps, name + ".fc2", in: hidden, out: width)
            gated = GatedResidual(dim: width)
        }
    }

    let inputProj: Linear
    let tEmbedder: TimestepEmbedder
    let yEmbedder: Embedding
    let condAct = SiLU()
    let blocks: [Block]
    let finalNorm: LayerNorm
    let finalAda: Linear
    let finalMod: Modulate
    let finalLinear: Linear

    private var batch = 0
    private let xCopy = Buffer(), cond = Buffer(), tScaled = Buffer()
    private let dH = Buffer(), dMod = Buffer(), dSC = Buffer(), outBuf = Buffer()
    private let finalShared = Buffer()

    /// Rows of the GEMMs that compute the conditioning of distinct (t, y) pairs when
    /// `sharesConditioning`: always this many (padded), so a pair's values never depend on which
    /// other pairs share its chunk.
    static let conditioningRows = 16

    override init(config: ModelConfig, params ps: ParameterSet) {
        let W = config.hidden, D = config.sampleDimension
        inputProj = Linear(ps, "input_proj", in: D, out: W)
        tEmbedder = TimestepEmbedder(ps, "t_embedder", dim: W, frequencyDim: config.frequencyDim)
        yEmbedder = Embedding(ps, "y_embedder.embedding_table", rows: config.numClasses + 1, dim: W)
        blocks = (0..<config.depth).map { Block(ps, "blocks.\($0)", width: W, hidden: config.mlpHidden) }
        finalNorm = LayerNorm(nil, "final_layer.norm_final", dim: W, affine: false)
        finalAda = Linear(ps, "final_layer.adaLN_modulation.1", in: W, out: 2 * W)
        finalMod = Modulate(dim: W)
        finalLinear = Linear(ps, "final_layer.linear", in: W, out: D)
        super.init(config: config, params: ps)
        // Larger chunks than SiT's: OpenBLAS re-packs each weight once per GEMM, and packing was a
        // quarter of sampling time at 32 rows (measured in docs/engine.md; 128 rows is ~20% faster).
        inferenceChunk = 128
    }

    override func makeReplica() -> VelocityNet { MLPVelocity(config: config, params: params) }

    override func initialize(rng: inout CounterRNG) {
        inputProj.initXavier(rng: &rng)
        tEmbedder.initDiT(rng: &rng)
        yEmbedder.weight.normal(std: 0.02, rng: &rng)
        for b in blocks {
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
        let W = config.hidden, D = config.sampleDimension
        let xc = xCopy.ensure(batch * D)
        xc.update(from: x, count: batch * D)
        var h = UnsafePointer(inputProj.forward(xc, rows: batch))
        // ada[i] = blocks[i].adaLN_modulation(SiLU(t_emb + y_emb)) rows [batch, 3W], final [batch, 2W]
        var ada: [UnsafePointer<Float>] = []
        let mf: UnsafePointer<Float>
        if sharesConditioning {
            (ada, mf) = sharedConditioning(t: t, y: y, batch: batch)
        } else {
            // conditioning c = t_emb + y_emb, then SiLU(c) shared by every adaLN linear
            let te = tEmbedder.forward(t.map { $0 * config.timeScale })
            let ye = yEmbedder.forward(y)
            let c = cond.ensure(batch * W)
            for i in 0..<(batch * W) { c[i] = te[i] + ye[i] }
            let sc = condAct.forward(c, count: batch * W)
            for b in blocks { ada.append(UnsafePointer(b.ada.forward(sc, rows: batch))) }
            mf = UnsafePointer(finalAda.forward(sc, rows: batch))
        }
        for (i, b) in blocks.enumerated() {
            let m = ada[i]
            let n = b.norm.forward(h, rows: batch)
            let mm = b.mod.forward(n, shift: m, scale: m + W, ld: 3 * W, batch: batch, tokens: 1)
            let f1 = b.fc1.forward(mm, rows: batch)
            let a = b.act.forward(f1, count: batch * config.mlpHidden)
            let f2 = b.fc2.forward(a, rows: batch)
            h = UnsafePointer(b.gated.forward(residual: h, f2, gate: m + 2 * W, ld: 3 * W, batch: batch, tokens: 1))
        }
        let nf = finalNorm.forward(h, rows: batch)
        let mmf = finalMod.forward(nf, shift: mf, scale: mf + W, ld: 2 * W, batch: batch, tokens: 1)
        let out = outBuf.ensure(batch * D)
        finalLinear.forward(mmf, rows: batch, into: out)
        return out
    }

    /// The adaLN rows when sampling: every row of a chunk depends on (t, y) only, and a sampling
    /// chunk holds one time and at most numClasses + 1 labels, so the time embedder and the adaLN
    /// linears (about half of the MLP's FLOPs per row) run once per distinct pair, in GEMMs of
    /// `conditioningRows` rows, and the rows are copied out per sample. Values agree with the
    /// training forward to rounding (another GEMM row count), bit for bit between batches.
    private func sharedConditioning(t: [Float], y: [Int], batch: Int) -> ([UnsafePointer<Float>], UnsafePointer<Float>) {
        let W = config.hidden, G = Self.conditioningRows
        var index: [UInt64: Int] = [:]
        var slot = [Int](repeating: 0, count: batch)
        var ut: [Float] = [], uy: [Int] = []
        for b in 0..<batch {
            let key = UInt64(t[b].bitPattern) << 32 | UInt64(UInt32(truncatingIfNeeded: y[b]))
            if let u = index[key] { slot[b] = u; continue }
            index[key] = ut.count
            slot[b] = ut.count
            ut.append(t[b])
            uy.append(y[b])
        }
        let groups = (ut.count + G - 1) / G
        ut += [Float](repeating: 0, count: groups * G - ut.count)
        uy += [Int](repeating: 0, count: groups * G - uy.count)
        let outs = blocks.map { $0.shared.ensure(batch * 3 * W) }
        let fout = finalShared.ensure(batch * 2 * W)
        for g in 0..<groups {
            let te = tEmbedder.forward(ut[(g * G)..<((g + 1) * G)].map { $0 * config.timeScale })
            let ye = yEmbedder.forward(Array(uy[(g * G)..<((g + 1) * G)]))
            let c = cond.ensure(G * W)
            for i in 0..<(G * W) { c[i] = te[i] + ye[i] }
            let sc = condAct.forward(c, count: G * W)
            let members = (0..<batch).filter { slot[$0] / G == g }
            for (i, blk) in blocks.enumerated() {
                let m = blk.ada.forward(sc, rows: G)
                for b in members { (outs[i] + b * 3 * W).update(from: m + (slot[b] - g * G) * 3 * W, count: 3 * W) }
            }
            let m = finalAda.forward(sc, rows: G)
            for b in members { (fout + b * 2 * W).update(from: m + (slot[b] - g * G) * 2 * W, count: 2 * W) }
        }
        return (outs.map { UnsafePointer($0) }, UnsafePointer(fout))
    }

    @discardableResult
    override public func backward(_ dv: UnsafePointer<Float>, paramGrads: Bool = true) -> UnsafeMutablePointer<Float> {
        let W = config.hidden, B = batch
        let dh = dH.ensure(B * W)
        let dm = dMod.ensure(B * 3 * W)
        let dsc = dSC.zeroed(B * W)
        // final layer
        let dmmf = finalLinear.backward(dv, paramGrads: paramGrads)
        let dnf = finalMod.backward(dmmf, dShift: dm, dScale: dm + W)
        dh.update(from: finalNorm.backward(dnf), count: B * W)
        if paramGrads { finalAda.backward(dm, into: dsc, accumulate: true) }
        // blocks, last first; dh is dL/d(block output), the residual passes it through
        for b in blocks.reversed() {
            let df2 = b.gated.backward(dh, dGate: dm + 2 * W)
            let da = b.fc2.backward(df2, paramGrads: paramGrads)
            let df1 = b.act.backward(da)
            let dmm = b.fc1.backward(df1, paramGrads: paramGrads)
            let dn = b.mod.backward(dmm, dShift: dm, dScale: dm + W)
            Ops.add(b.norm.backward(dn), into: dh, count: B * W)
            if paramGrads { b.ada.backward(dm, into: dsc, accumulate: true) }
        }
        if paramGrads {
            let dc = condAct.backward(dsc)
            tEmbedder.backward(dc)
            yEmbedder.backward(dc)
        }
        return inputProj.backward(dh, paramGrads: paramGrads)
    }
}
