import XCTest
import Shared

/// Finite-difference checks of the U-Net's layers (Sources/NN/Layers/UNet.swift): group
/// normalisation, nearest 2x upsampling, channel concatenation and the conditioned residual block,
/// each for the input and every parameter; plus GroupNorm against a direct float64 evaluation.
final class UNetLayersGradTests: XCTestCase {
    private func buffer(_ v: [Float]) -> Buffer {
        let b = Buffer(v.count)
        b.pointer.update(from: v, count: v.count)
        return b
    }
    private func array(_ p: UnsafePointer<Float>, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }

    func testGroupNormValuesAndGradients() {
        var g = GradCheck()
        let ps = ParameterSet()
        let B = 2, C = 6, G = 3, P = 5
        let norm = GroupNorm(ps, "n", groups: G, channels: C)
        norm.weight.randomize(&g); norm.bias.randomize(&g)
        let xv = g.randoms(B * C * P, std: 2).map { $0 + 1 }
        let x = buffer(xv)
        let y = array(norm.forward(x.pointer, batch: B, spatial: P), B * C * P)
        // direct: each (sample, group) normalised over its channels and positions, biased variance
        let cpg = C / G
        for b in 0..<B {
            for grp in 0..<G {
                let idx = (0..<(cpg * P)).map { b * C * P + grp * cpg * P + $0 }
                let m = idx.map { Double(xv[$0]) }.reduce(0, +) / Double(idx.count)
                let v = idx.map { (Double(xv[$0]) - m) * (Double(xv[$0]) - m) }.reduce(0, +) / Double(idx.count)
                for i in idx {
                    let c = (i / P) % C
                    let want = (Double(xv[i]) - m) / (v + 1e-5).squareRoot() * Double(norm.weight.values[c]) + Double(norm.bias.values[c])
                    XCTAssertEqual(Double(y[i]), want, accuracy: 1e-5 * max(1, abs(want)))
                }
            }
        }
        let w = g.randoms(B * C * P)
        ps.zeroGrad()
        norm.forward(x.pointer, batch: B, spatial: P)
        let dx = array(norm.backward(w), B * C * P)
        let loss = { GradCheck.project(norm.forward(x.pointer, batch: B, spatial: P), w) }
        g.check("groupnorm.x", value: x.pointer, count: B * C * P, analytic: dx, loss: loss)
        g.check("groupnorm.weight", value: norm.weight.value, count: C, analytic: norm.weight.grads, loss: loss)
        g.check("groupnorm.bias", value: norm.bias.value, count: C, analytic: norm.bias.grads, loss: loss)
        // without parameter gradients the input gradient is the same and nothing accumulates
        ps.zeroGrad()
        norm.forward(x.pointer, batch: B, spatial: P)
        XCTAssertEqual(array(norm.backward(w, paramGrads: false), B * C * P), dx)
        XCTAssertTrue(norm.weight.grads.allSatisfy { $0 == 0 })
    }

    func testUpsampleAndConcatGradients() {
        var g = GradCheck()
        let planes = 3, H = 2, W = 3
        let up = Upsample2x()
        let x = buffer(g.randoms(planes * H * W))
        let y = array(up.forward(x.pointer, planes: planes, height: H, width: W), planes * 4 * H * W)
        XCTAssertEqual(y[0], y[1]); XCTAssertEqual(y[0], y[2 * W]); XCTAssertEqual(y[0], x.pointer[0])
        XCTAssertEqual(y[2 * W * 2 * H + 2], x.pointer[H * W + 1], "plane 1, row 0, column 1")
        let w = g.randoms(planes * 4 * H * W)
        let dx = array(up.backward(w), planes * H * W)
        g.check("upsample.x", value: x.pointer, count: planes * H * W, analytic: dx,
                loss: { GradCheck.project(up.forward(x.pointer, planes: planes, height: H, width: W), w) })

        let B = 2, ca = 2, cb = 3, P = 4
        let cat = ChannelConcat()
        let a = buffer(g.randoms(B * ca * P)), b = buffer(g.randoms(B * cb * P))
        let out = array(cat.forward(a.pointer, channels: ca, b.pointer, channels: cb, batch: B, spatial: P), B * (ca + cb) * P)
        XCTAssertEqual(Array(out[(ca + cb) * P..<((ca + cb) * P + ca * P)]), array(a.pointer + ca * P, ca * P), "sample 1 starts with a")
        let wc = g.randoms(B * (ca + cb) * P)
        let (da, db) = cat.backward(wc)
        let (dav, dbv) = (array(da, B * ca * P), array(db, B * cb * P))
        let loss = { GradCheck.project(cat.forward(a.pointer, channels: ca, b.pointer, channels: cb, batch: B, spatial: P), wc) }
        g.check("concat.a", value: a.pointer, count: B * ca * P, analytic: dav, loss: loss)
        g.check("concat.b", value: b.pointer, count: B * cb * P, analytic: dbv, loss: loss)
    }

    func testResBlockGradients() {
        for (cin, cout) in [(4, 4), (2, 4)] {   // identity skip, and a 1x1 conv skip
            var g = GradCheck()
            let ps = ParameterSet()
            let B = 2, E = 5, H = 4, W = 3, P = H * W
            let block = ResBlock(ps, "r", in: cin, out: cout, embedDim: E, groups: 2)
            for p in ps.trainable { p.randomize(&g, std: 0.4) }
            XCTAssertEqual(block.skip == nil, cin == cout)
            let x = buffer(g.randoms(B * cin * P)), e = buffer(g.randoms(B * E))
            let w = g.randoms(B * cout * P)
            ps.zeroGrad()
            block.forward(x.pointer, emb: e.pointer, batch: B, height: H, width: W)
            let de = Buffer(B * E)
            de.pointer.update(repeating: 0, count: B * E)
            let dx = array(block.backward(w, dEmb: de.pointer), B * cin * P)
            let dev = array(de.pointer, B * E)
            let loss = { GradCheck.project(block.forward(x.pointer, emb: e.pointer, batch: B, height: H, width: W), w) }
            g.check("resblock\(cin)->\(cout).x", value: x.pointer, count: B * cin * P, analytic: dx, loss: loss)
            g.check("resblock\(cin)->\(cout).emb", value: e.pointer, count: B * E, analytic: dev, loss: loss)
            for p in ps.trainable {
                g.check("resblock\(cin)->\(cout).\(p.name)", value: p.value, count: p.count, analytic: p.grads, loss: loss)
            }
        }
    }
}
