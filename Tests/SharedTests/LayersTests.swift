import CKernels
import XCTest
import Shared

private func buffer(_ v: [Float]) -> Buffer {
    let b = Buffer(v.count)
    v.withUnsafeBufferPointer { b.pointer.update(from: $0.baseAddress!, count: v.count) }
    return b
}

private func array(_ p: UnsafePointer<Float>, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }

final class LayersTests: XCTestCase {
    /// The C kernels (CKernels: AVX-512, AVX2 and baseline builds) give the Swift formulas' bits
    /// for GELU (tanh) and SiLU, forward and backward, and the exact row maximum, at every level
    /// this CPU has, over values from the tails (exp clamped) to tiny ones.
    func testCKernelsMatchTheSwiftFormulasBitForBit() {
        defer { _ = drl_limit_kernel_level(2) }
        var g = GradCheck()
        let n = 4099
        var x = g.randoms(n).map { $0 * 6 }
        for (i, v) in [Float(-100), -90, -44, -10, -1e-20, 0, -0.0, 1e-30, 3, 44, 90, 100].enumerated() { x[i * 7] = v }
        let dy = g.randoms(n)
        let k: Float = (2 / Float.pi).squareRoot()
        let geluF = x.map { v in 0.5 * v * (1 + fastTanh(k * (v + 0.044715 * v * v * v))) }
        let geluB = zip(x, dy).map { v, d -> Float in
            let th = fastTanh(k * (v + 0.044715 * v * v * v))
            let du = k * (1 + 3 * 0.044715 * v * v)
            return d * (0.5 * (1 + th) + 0.5 * v * (1 - th * th) * du)
        }
        let siluF = x.map { v in v / (1 + fastExp(-v)) }
        let siluB = zip(x, dy).map { v, d -> Float in let s = 1 / (1 + fastExp(-v)); return d * s * (1 + v * (1 - s)) }
        var levels = Set<Int32>()
        for want in [Int32(2), 1, 0] {
            let level = drl_limit_kernel_level(want)
            levels.insert(level)
            var out = [Float](repeating: 0, count: n)
            drl_gelu_forward(x, &out, n, k); XCTAssertEqual(out, geluF, "GELU forward, level \(level)")
            drl_gelu_backward(x, dy, &out, n, k); XCTAssertEqual(out, geluB, "GELU backward, level \(level)")
            drl_silu_forward(x, &out, n); XCTAssertEqual(out, siluF, "SiLU forward, level \(level)")
            drl_silu_backward(x, dy, &out, n); XCTAssertEqual(out, siluB, "SiLU backward, level \(level)")
            for m in [1, 7, 16, 33, n] { XCTAssertEqual(drl_max(x, m), x[0..<m].max()!, "max of \(m), level \(level)") }
        }
        print("CKernels levels checked on this CPU: \(levels.sorted())")
        XCTAssert(levels.contains(0))
    }

    func testLinear() {
        var g = GradCheck()
        let ps = ParameterSet()
        let rows = 5, nin = 7, nout = 4
        let lin = Linear(ps, "fc", in: nin, out: nout)
        lin.weight.randomize(&g); lin.bias!.randomize(&g)
        let x = buffer(g.randoms(rows * nin))
        let w = g.randoms(rows * nout)
        // forward against a naive product
        let y = array(lin.forward(x.pointer, rows: rows), rows * nout)
        let W = lin.weight.values, b = lin.bias!.values, xv = array(x.pointer, rows * nin)
        for r in 0..<rows { for o in 0..<nout {
            var s = Double(b[o]); for i in 0..<nin { s += Double(W[o * nin + i]) * Double(xv[r * nin + i]) }
            XCTAssertEqual(Double(y[r * nout + o]), s, accuracy: 1e-5)
        } }
        ps.zeroGrad()
        lin.forward(x.pointer, rows: rows)
        let dx = array(lin.backward(w), rows * nin)
        let loss = { GradCheck.project(lin.forward(x.pointer, rows: rows), w) }
        g.check("linear.x", value: x.pointer, count: rows * nin, analytic: dx, loss: loss)
        g.check("linear.weight", value: lin.weight.value, count: lin.weight.count, analytic: lin.weight.grads, loss: loss)
        g.check("linear.bias", value: lin.bias!.value, count: nout, analytic: lin.bias!.grads, loss: loss)
        // accumulation: a second backward doubles the parameter gradient
        let once = lin.weight.grads
        lin.forward(x.pointer, rows: rows)
        lin.backward(w)
        for (a, b) in zip(lin.weight.grads, once) { XCTAssertEqual(a, 2 * b, accuracy: 1e-5 * max(1, abs(b))) }
    }

    func testLayerNormAffineAndPlain() {
        for affine in [true, false] {
            var g = GradCheck()
            let ps = ParameterSet()
            let rows = 4, dim = 9
            let ln = LayerNorm(ps, "ln", dim: dim, affine: affine)
            if affine { ln.weight!.randomize(&g); ln.bias!.randomize(&g) }
            let x = buffer(g.randoms(rows * dim, std: 2).map { $0 + 1 })
            let w = g.randoms(rows * dim)
            let y = array(ln.forward(x.pointer, rows: rows), rows * dim)
            if !affine {  // zero mean, unit (biased) variance up to eps
                for r in 0..<rows {
                    let row = y[(r * dim)..<((r + 1) * dim)]
                    let m = row.reduce(0, +) / Float(dim)
                    let v = row.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Float(dim)
                    XCTAssertEqual(m, 0, accuracy: 1e-5)
                    XCTAssertEqual(v, 1, accuracy: 1e-3)
                }
            }
            ln.forward(x.pointer, rows: rows)
            let dx = array(ln.backward(w), rows * dim)
            let loss = { GradCheck.project(ln.forward(x.pointer, rows: rows), w) }
            g.check("layernorm(affine: \(affine)).x", value: x.pointer, count: rows * dim, analytic: dx, loss: loss)
            if affine {
                g.check("layernorm.weight", value: ln.weight!.value, count: dim, analytic: ln.weight!.grads, loss: loss)
                g.check("layernorm.bias", value: ln.bias!.value, count: dim, analytic: ln.bias!.grads, loss: loss)
            }
        }
    }

    func testActivations() {
        var g = GradCheck()
        let n = 40
        let x = buffer(g.randoms(n, std: 2))
        let w = g.randoms(n)
        let silu = SiLU(), gelu = GELU()
        silu.forward(x.pointer, count: n)
        let ds = array(silu.backward(w), n)
        g.check("silu.x", value: x.pointer, count: n, analytic: ds) { GradCheck.project(silu.forward(x.pointer, count: n), w) }
        gelu.forward(x.pointer, count: n)
        let dg = array(gelu.backward(w), n)
        g.check("gelu.x", value: x.pointer, count: n, analytic: dg) { GradCheck.project(gelu.forward(x.pointer, count: n), w) }
        // spot values: silu(1) = 1 * sigmoid(1); PyTorch gelu(1, approximate='tanh') = 0.8411920071
        let one = buffer([1])
        XCTAssertEqual(silu.forward(one.pointer, count: 1)[0], 0.7310585786, accuracy: 1e-6)
        XCTAssertEqual(gelu.forward(one.pointer, count: 1)[0], 0.8411920071, accuracy: 1e-6)
    }

    func testAttention() {
        var g = GradCheck()
        let ps = ParameterSet()
        let batch = 2, T = 5, W = 8, heads = 2
        let attn = MultiHeadAttention(ps, "attn", width: W, heads: heads)
        for p in ps.all { p.randomize(&g) }
        XCTAssertEqual(Set(ps.names), ["attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias"])
        let x = buffer(g.randoms(batch * T * W))
        let w = g.randoms(batch * T * W)
        // forward against a direct float64 implementation of timm's Attention
        let out = array(attn.forward(x.pointer, batch: batch, tokens: T), batch * T * W)
        let xv = array(x.pointer, batch * T * W)
        let qw = ps["attn.qkv.weight"]!.values, qb = ps["attn.qkv.bias"]!.values
        let pw = ps["attn.proj.weight"]!.values, pb = ps["attn.proj.bias"]!.values
        let hd = W / heads
        for b in 0..<batch {
            var qkv = [[Double]](repeating: [Double](repeating: 0, count: 3 * W), count: T)
            for t in 0..<T { for o in 0..<(3 * W) {
                var s = Double(qb[o]); for i in 0..<W { s += Double(qw[o * W + i]) * Double(xv[(b * T + t) * W + i]) }
                qkv[t][o] = s
            } }
            var ctx = [[Double]](repeating: [Double](repeating: 0, count: W), count: T)
            for h in 0..<heads { for i in 0..<T {
                var sc = (0..<T).map { j in (0..<hd).reduce(0.0) { $0 + qkv[i][h * hd + $1] * qkv[j][W + h * hd + $1] } / Double(hd).squareRoot() }
                let mx = sc.max()!; sc = sc.map { exp($0 - mx) }; let z = sc.reduce(0, +)
                for d in 0..<hd { ctx[i][h * hd + d] = (0..<T).reduce(0.0) { $0 + sc[$1] / z * qkv[$1][2 * W + h * hd + d] } }
            } }
            for t in 0..<T { for o in 0..<W {
                var s = Double(pb[o]); for i in 0..<W { s += Double(pw[o * W + i]) * ctx[t][i] }
                XCTAssertEqual(Double(out[(b * T + t) * W + o]), s, accuracy: 1e-4)
            } }
        }
        ps.zeroGrad()
        attn.forward(x.pointer, batch: batch, tokens: T)
        let dx = array(attn.backward(w), batch * T * W)
        let loss = { GradCheck.project(attn.forward(x.pointer, batch: batch, tokens: T), w) }
        g.check("attn.x", value: x.pointer, count: batch * T * W, analytic: dx, loss: loss)
        for p in ps.all { g.check(p.name, value: p.value, count: p.count, analytic: p.grads, loss: loss) }
    }

    func testEmbeddingAndTimestepEmbedder() {
        var g = GradCheck()
        let ps = ParameterSet()
        let emb = Embedding(ps, "y_embedder.embedding_table", rows: 4, dim: 6)
        emb.weight.randomize(&g)
        let ids = [3, 0, 3, 1]
        let w = g.randoms(ids.count * 6)
        emb.forward(ids)
        emb.backward(w)
        g.check("embedding.weight", value: emb.weight.value, count: emb.weight.count, analytic: emb.weight.grads) {
            GradCheck.project(emb.forward(ids), w)
        }
        XCTAssertEqual(emb.weight.grads[(2 * 6)..<(3 * 6)].allSatisfy { $0 == 0 }, true, "unused row has no gradient")

        let te = TimestepEmbedder(ps, "t_embedder", dim: 8, frequencyDim: 16)
        for p in [te.fc1.weight, te.fc1.bias!, te.fc2.weight, te.fc2.bias!] { p.randomize(&g) }
        XCTAssertNotNil(ps["t_embedder.mlp.0.weight"]); XCTAssertNotNil(ps["t_embedder.mlp.2.bias"])
        let t: [Float] = [0, 1, 250, 999.5]
        let wt = g.randoms(t.count * 8)
        te.forward(t)
        te.backward(wt)
        let loss = { GradCheck.project(te.forward(t), wt) }
        for p in [te.fc1.weight, te.fc1.bias!, te.fc2.weight, te.fc2.bias!] {
            g.check(p.name, value: p.value, count: p.count, analytic: p.grads, loss: loss)
        }
        // frequency features: [cos(t f_i), sin(t f_i)] with f_i = 10000^(-i/half)
        let f = Buffer(2 * 16)
        TimestepEmbedder.frequencyEmbedding([0, 3], dim: 16, into: f.pointer)
        for i in 0..<8 {
            XCTAssertEqual(f.pointer[i], 1); XCTAssertEqual(f.pointer[8 + i], 0)
            let fi = exp(-log(10000.0) * Double(i) / 8)
            XCTAssertEqual(Double(f.pointer[16 + i]), cos(3 * fi), accuracy: 1e-5)
            XCTAssertEqual(Double(f.pointer[24 + i]), sin(3 * fi), accuracy: 1e-5)
        }
    }

    func testModulateAndGatedResidual() {
        var g = GradCheck()
        let batch = 3, T = 4, D = 5, ld = 3 * D
        let x = buffer(g.randoms(batch * T * D))
        let res = buffer(g.randoms(batch * T * D))
        let mod = buffer(g.randoms(batch * ld))     // shift | scale | gate per sample
        let w = g.randoms(batch * T * D)
        let m = Modulate(dim: D)
        let dmod = Buffer(batch * ld)
        m.forward(x.pointer, shift: mod.pointer, scale: mod.pointer + D, ld: ld, batch: batch, tokens: T)
        let dx = array(m.backward(w, dShift: dmod.pointer, dScale: dmod.pointer + D), batch * T * D)
        var dm = array(dmod.pointer, batch * ld)
        for b in 0..<batch { for i in 0..<D { dm[b * ld + 2 * D + i] = 0 } }  // gate unused here
        let lossM = { GradCheck.project(m.forward(x.pointer, shift: mod.pointer, scale: mod.pointer + D, ld: ld, batch: batch, tokens: T), w) }
        g.check("modulate.x", value: x.pointer, count: batch * T * D, analytic: dx, loss: lossM)
        g.check("modulate.shift|scale", value: mod.pointer, count: batch * ld, analytic: dm, loss: lossM)

        let gr = GatedResidual(dim: D)
        gr.forward(residual: res.pointer, x.pointer, gate: mod.pointer + 2 * D, ld: ld, batch: batch, tokens: T)
        let dgate = Buffer(batch * ld)
        dgate.zeroed(batch * ld)
        let dy = array(gr.backward(w, dGate: dgate.pointer + 2 * D), batch * T * D)
        let lossG = { GradCheck.project(gr.forward(residual: res.pointer, x.pointer, gate: mod.pointer + 2 * D, ld: ld, batch: batch, tokens: T), w) }
        g.check("gated.y", value: x.pointer, count: batch * T * D, analytic: dy, loss: lossG)
        g.check("gated.residual", value: res.pointer, count: batch * T * D, analytic: w, loss: lossG)
        g.check("gated.gate", value: mod.pointer, count: batch * ld, analytic: array(dgate.pointer, batch * ld), loss: lossG)
    }

    func testConv2dAgainstDirectAndGradients() {
        for (tokensOut, stride, padding) in [(false, 2, 1), (false, 1, 0), (true, 2, 0)] {
            var g = GradCheck()
            let ps = ParameterSet()
            let B = 2, C = 2, O = 3, H = 5, W = 6, k = tokensOut ? 2 : 3
            let conv = Conv2d(ps, "proj", in: C, out: O, kernel: k, stride: stride, padding: padding, tokensOut: tokensOut)
            conv.weight.randomize(&g); conv.bias!.randomize(&g)
            let x = buffer(g.randoms(B * C * H * W))
            let (ho, wo) = conv.outputSize(height: H, width: W)
            let n = B * O * ho * wo
            let y = array(conv.forward(x.pointer, batch: B, height: H, width: W), n)
            let xv = array(x.pointer, B * C * H * W), wv = conv.weight.values, bv = conv.bias!.values
            for b in 0..<B { for o in 0..<O { for i in 0..<ho { for j in 0..<wo {
                var s = Double(bv[o])
                for c in 0..<C { for ki in 0..<k { for kj in 0..<k {
                    let r = i * stride - padding + ki, q = j * stride - padding + kj
                    if r >= 0 && r < H && q >= 0 && q < W { s += Double(wv[((o * C + c) * k + ki) * k + kj]) * Double(xv[((b * C + c) * H + r) * W + q]) }
                } } }
                let idx = tokensOut ? (b * ho * wo + i * wo + j) * O + o : ((b * O + o) * ho + i) * wo + j
                XCTAssertEqual(Double(y[idx]), s, accuracy: 1e-5)
            } } } }
            let w = g.randoms(n)
            ps.zeroGrad()
            conv.forward(x.pointer, batch: B, height: H, width: W)
            let dx = array(conv.backward(w), B * C * H * W)
            let loss = { GradCheck.project(conv.forward(x.pointer, batch: B, height: H, width: W), w) }
            g.check("conv(s\(stride),p\(padding)).x", value: x.pointer, count: B * C * H * W, analytic: dx, loss: loss)
            g.check("conv.weight", value: conv.weight.value, count: conv.weight.count, analytic: conv.weight.grads, loss: loss)
            g.check("conv.bias", value: conv.bias!.value, count: O, analytic: conv.bias!.grads, loss: loss)
            // one sample per chunk gives the same output and gradients as the whole batch at once
            conv.samplesPerChunk = B
            let whole = (array(conv.forward(x.pointer, batch: B, height: H, width: W), n), conv.weight.grads)
            ps.zeroGrad()
            conv.forward(x.pointer, batch: B, height: H, width: W)
            let dxWhole = array(conv.backward(w), B * C * H * W), dwWhole = conv.weight.grads
            conv.maxColumnFloats = 1
            conv.samplesPerChunk = 1
            ps.zeroGrad()
            for (a, b) in zip(array(conv.forward(x.pointer, batch: B, height: H, width: W), n), whole.0) { XCTAssertEqual(a, b, accuracy: 1e-5) }
            let dxChunked = array(conv.backward(w), B * C * H * W)
            for (a, b) in zip(dxChunked, dxWhole) { XCTAssertEqual(a, b, accuracy: 1e-5) }
            for (a, b) in zip(conv.weight.grads, dwWhole) { XCTAssertEqual(a, b, accuracy: 1e-4) }
        }
    }

    func testPooling() {
        var g = GradCheck()
        let B = 2, C = 3, H = 6, W = 5
        let x = buffer(g.randoms(B * C * H * W))
        let pool = AvgPool2d(kernel: 2)
        let y = pool.forward(x.pointer, batch: B, channels: C, height: H, width: W)
        XCTAssertEqual(pool.outHeight, 3); XCTAssertEqual(pool.outWidth, 2)
        XCTAssertEqual(y[0], (x.pointer[0] + x.pointer[1] + x.pointer[5] + x.pointer[6]) / 4, accuracy: 1e-6)
        let n = B * C * 3 * 2
        let w = g.randoms(n)
        let dx = array(pool.backward(w), B * C * H * W)
        g.check("avgpool.x", value: x.pointer, count: B * C * H * W, analytic: dx) {
            GradCheck.project(pool.forward(x.pointer, batch: B, channels: C, height: H, width: W), w)
        }
        let gap = GlobalAvgPool()
        let wg = g.randoms(B * C)
        gap.forward(x.pointer, batch: B, channels: C, spatial: H * W)
        let dxg = array(gap.backward(wg), B * C * H * W)
        g.check("globalavgpool.x", value: x.pointer, count: B * C * H * W, analytic: dxg) {
            GradCheck.project(gap.forward(x.pointer, batch: B, channels: C, spatial: H * W), wg)
        }
    }

    func testPatchifyUnpatchify() {
        var g = GradCheck()
        let B = 2, C = 3, H = 4, W = 6, p = 2
        let xv = g.randoms(B * C * H * W)
        let x = buffer(xv)
        for order in [PatchOrder.channelFirst, .channelLast] {
            let pf = Patchify(channels: C, height: H, width: W, patch: p, order: order)
            let up = Unpatchify(channels: C, height: H, width: W, patch: p, order: order)
            let tok = pf.forward(x.pointer, batch: B)
            XCTAssertEqual(array(up.forward(tok, batch: B), xv.count), xv, "unpatchify inverts patchify")
            // token (i, j), feature f -> pixel
            let gw = W / p
            for b in 0..<B { for i in 0..<(H / p) { for j in 0..<gw { for c in 0..<C { for pi in 0..<p { for pj in 0..<p {
                let f = order == .channelFirst ? (c * p + pi) * p + pj : (pi * p + pj) * C + c
                XCTAssertEqual(tok[((b * (H / p) + i) * gw + j) * p * p * C + f], xv[((b * C + c) * H + i * p + pi) * W + j * p + pj])
            } } } } } }
            // backward is the transpose: <P x, w> = <x, P^T w>
            let w = g.randoms(xv.count)
            let lhs = GradCheck.project(pf.forward(x.pointer, batch: B), w).0
            let rhs = GradCheck.project(pf.backward(w), xv).0
            XCTAssertEqual(lhs, rhs, accuracy: 1e-4)
            up.forward(tok, batch: B)
            let lhs2 = GradCheck.project(up.forward(tok, batch: B), w).0
            let rhs2 = GradCheck.project(up.backward(w), array(tok, xv.count)).0
            XCTAssertEqual(lhs2, rhs2, accuracy: 1e-4)
        }
        // patchify (channel-first) is exactly the im2col of a kernel = stride = p convolution
        let ps = ParameterSet()
        let conv = Conv2d(ps, "proj", in: C, out: 2, kernel: p, stride: p, tokensOut: true)
        conv.weight.randomize(&g); conv.bias!.fill(0)
        let viaConv = array(conv.forward(x.pointer, batch: B, height: H, width: W), B * 6 * 2)
        let lin = Linear(ps, "lin", in: C * p * p, out: 2)
        lin.weight.values = conv.weight.values; lin.bias!.fill(0)
        let patchify = Patchify(channels: C, height: H, width: W, patch: p)  // owns the tokens
        let viaLinear = array(lin.forward(patchify.forward(x.pointer, batch: B), rows: B * 6), B * 6 * 2)
        for (a, b) in zip(viaConv, viaLinear) { XCTAssertEqual(a, b, accuracy: 1e-5) }
    }

    func testSinCosPositionalEmbedding() {
        // MAE get_2d_sincos_pos_embed(8, 3): token (i, j) = [sin(j w), cos(j w), sin(i w), cos(i w)],
        // w = [1, 1/100] for embed_dim 8 (quarter 2: omega_k = 1/10000^(k/2)).
        let pe = sinCosPositionalEmbedding2D(dim: 8, gridSize: 3)
        let i = 2, j = 1
        let row = Array(pe[((i * 3 + j) * 8)..<((i * 3 + j + 1) * 8)])
        let expected: [Double] = [sin(1), sin(0.01), cos(1), cos(0.01), sin(2), sin(0.02), cos(2), cos(0.02)]
        for (a, b) in zip(row, expected) { XCTAssertEqual(Double(a), b, accuracy: 1e-6) }
    }

    func testFastExpAndTanhAccuracy() {
        var worstExp = 0.0, worstTanh = 0.0
        var v: Float = -80
        while v < 80 {
            worstExp = max(worstExp, abs(Double(fastExp(v)) / exp(Double(v)) - 1))
            worstTanh = max(worstTanh, abs(Double(fastTanh(v / 8)) - tanh(Double(v / 8))))
            v += 0.01337
        }
        XCTAssertLessThan(worstExp, 5e-7)
        XCTAssertLessThan(worstTanh, 1e-6)
        XCTAssertEqual(fastExp(0), 1)
        XCTAssertTrue(fastExp(-1000) >= 0 && fastExp(-1000) < 1e-37)
        XCTAssertTrue(fastExp(1000).isFinite)
        XCTAssertEqual(fastTanh(50), 1)
        XCTAssertEqual(fastTanh(-50), -1)
    }

    func testLaneReductions() {
        var g = GradCheck()
        for n in [1, 7, 8, 9, 49, 128, 131] {
            let a = g.randoms(n), b = g.randoms(n)
            a.withUnsafeBufferPointer { pa in
                b.withUnsafeBufferPointer { pb in
                    let s = a.reduce(0.0) { $0 + Double($1) }
                    let d = zip(a, b).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
                    let m: Float = 0.3
                    let q = a.reduce(0.0) { $0 + Double($1 - m) * Double($1 - m) }
                    XCTAssertEqual(Double(vsum(pa.baseAddress!, n)), s, accuracy: 1e-5 * Double(n))
                    XCTAssertEqual(Double(vdot(pa.baseAddress!, pb.baseAddress!, n)), d, accuracy: 1e-5 * Double(n))
                    XCTAssertEqual(Double(vsumSquaredDeviation(pa.baseAddress!, m, n)), q, accuracy: 1e-5 * Double(n))
                    XCTAssertEqual(vmax(pa.baseAddress!, n), a.max()!)
                }
            }
        }
    }
}
