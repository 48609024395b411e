import XCTest
import Shared

/// Finite-difference checks of the layers the pretrained encoders (Inception-v3, DINOv2) are built
/// from: rectangular convolutions, padded pools, the resize-and-normalise step and exact GELU.
final class VisionLayersGradTests: XCTestCase {
    private func buffer(_ v: [Float]) -> Buffer {
        let b = Buffer(v.count)
        v.withUnsafeBufferPointer { b.pointer.update(from: $0.baseAddress!, count: v.count) }
        return b
    }
    private func array(_ p: UnsafePointer<Float>, _ n: Int) -> [Float] { Array(UnsafeBufferPointer(start: p, count: n)) }

    func testConv2dRectAgainstDirectAndGradients() {
        for (kernel, stride, padding) in [((1, 3), (2, 1), (0, 1)), ((3, 2), (1, 2), (1, 0))] {
            var g = GradCheck()
            let ps = ParameterSet()
            let B = 2, C = 2, O = 3, H = 5, W = 6
            let conv = Conv2dRect(ps, "c", in: C, out: O, kernel: kernel, stride: stride, padding: padding, relu: false)
            conv.weight.randomize(&g); conv.bias.randomize(&g)
            let x = buffer(g.randoms(B * C * H * W))
            let (ho, wo) = conv.outputSize(height: H, width: W)
            let n = B * O * ho * wo
            let y = array(conv.forward(x.pointer, batch: B, height: H, width: W), n)
            let xv = array(x.pointer, B * C * H * W), wv = conv.weight.values, bv = conv.bias.values
            let (kh, kw) = kernel
            for b in 0..<B { for o in 0..<O { for i in 0..<ho { for j in 0..<wo {
                var s = Double(bv[o])
                for c in 0..<C { for ki in 0..<kh { for kj in 0..<kw {
                    let r = i * stride.0 - padding.0 + ki, q = j * stride.1 - padding.1 + kj
                    if r >= 0 && r < H && q >= 0 && q < W { s += Double(wv[((o * C + c) * kh + ki) * kw + kj]) * Double(xv[((b * C + c) * H + r) * W + q]) }
                } } }
                XCTAssertEqual(Double(y[((b * O + o) * ho + i) * wo + j]), s, accuracy: 1e-5)
            } } } }
            let w = g.randoms(n)
            conv.forward(x.pointer, batch: B, height: H, width: W)
            let dx = array(conv.backward(w), B * C * H * W)
            let loss = { GradCheck.project(conv.forward(x.pointer, batch: B, height: H, width: W), w) }
            g.check("conv\(kernel).x", value: x.pointer, count: B * C * H * W, analytic: dx, loss: loss)
            // frozen-encoder layer: backward gives dL/dx only (no parameter gradients by design)
        }
    }

    func testPool2dGradients() {
        for (kind, kernel, stride, padding) in [(Pool2d.Kind.average, 3, 2, 1), (.max, 3, 2, 0), (.average, 3, 1, 1)] {
            var g = GradCheck()
            let B = 2, C = 2, H = 7, W = 6
            let pool = Pool2d(kind, kernel: kernel, stride: stride, padding: padding)
            let x = buffer(g.randoms(B * C * H * W))
            let y = pool.forward(x.pointer, batch: B, channels: C, height: H, width: W)
            let ho = (H + 2 * padding - kernel) / stride + 1, wo = (W + 2 * padding - kernel) / stride + 1
            let n = B * C * ho * wo
            _ = y
            let w = g.randoms(n)
            let dx = array(pool.backward(w), B * C * H * W)
            let loss = { GradCheck.project(pool.forward(x.pointer, batch: B, channels: C, height: H, width: W), w) }
            g.check("pool(\(kind),k\(kernel),s\(stride),p\(padding)).x", value: x.pointer, count: B * C * H * W, analytic: dx, loss: loss)
        }
    }

    func testResizeNormalizeGradients() {
        for (mode, inC, outC) in [(Interpolation.bilinear, 1, 3), (.bicubic, 2, 2)] {
            var g = GradCheck()
            let B = 2, H = 5, W = 6, S = 7, T = 4
            let scale = (0..<outC).map { Float(1 + $0) * 0.5 }, shift = (0..<outC).map { Float($0) * 0.1 - 0.1 }
            let layer = ResizeNormalize(channels: inC, height: H, width: W, outChannels: outC, outHeight: S, outWidth: T,
                                        mode: mode, scale: scale, shift: shift)
            let x = buffer(g.randoms(B * inC * H * W))
            _ = layer.forward(x.pointer, batch: B)
            let w = g.randoms(B * outC * S * T)
            let dx = array(layer.backward(w), B * inC * H * W)
            let loss = { GradCheck.project(layer.forward(x.pointer, batch: B), w) }
            g.check("resize(\(mode),\(inC)->\(outC)).x", value: x.pointer, count: B * inC * H * W, analytic: dx, loss: loss)
        }
    }

    func testGELUExactGradients() {
        var g = GradCheck()
        let n = 40
        let gelu = GELUExact()
        let x = buffer(g.randoms(n, std: 2))
        let y = array(gelu.forward(x.pointer, count: n), n)
        for i in 0..<n {   // against the erf form computed in Double
            let v = Double(x.pointer[i])
            XCTAssertEqual(Double(y[i]), 0.5 * v * (1 + erf(v / 2.0.squareRoot())), accuracy: 1e-6)
        }
        let w = g.randoms(n)
        let dx = array(gelu.backward(w), n)
        let loss = { GradCheck.project(gelu.forward(x.pointer, count: n), w) }
        g.check("gelu.x", value: x.pointer, count: n, analytic: dx, loss: loss)
    }
}
