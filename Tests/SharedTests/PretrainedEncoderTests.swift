import XCTest
import Shared

/// Parity of the Swift Inception-v3 (pytorch-fid) and DINOv2 encoders with PyTorch, on randomly
/// initialised reduced models written by scripts/make_encoder_goldens.py (Inception at 1/32 of
/// every width, its batch norms calibrated so that the random network is live; DINOv2 at width 16,
/// depth 2, a 19x19 position grid): features and a vector-Jacobian product (against
/// torch.autograd) for grey 28x28 and RGB 32x32 images, and for Inception also RGB 75x75 images
/// at the network's input size. The golden networks are checked to be live (features that differ
/// between images, a VJP of the cotangent's order), and the Swift VJP is also checked against a
/// central difference of the Swift features.
///
/// Inception's reference is PyTorch in float64 (`feat_*`, `vjp_*`), with PyTorch's float32 results
/// beside it (`feat32_*`, `vjp32_*`) for the resized cases: there, images upsampled ~10x are
/// piecewise linear, their ridges put near-ties into the max pools, and any float32 VJP is a few
/// percent off the float64 one (PyTorch's own: 6.9e-2 grey, 2.7e-2 RGB). At native size the two
/// agree to < 1e-6 and the VJP is held to 1e-4.
final class PretrainedEncoderTests: XCTestCase {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden")

    /// max |a - b| / max |b|
    func relative(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count)
        var num = 0.0, den = 0.0
        for i in a.indices { num = max(num, Double(abs(a[i] - b[i]))); den = max(den, Double(abs(b[i]))) }
        return num / max(den, 1e-30)
    }

    /// The encoder for a golden case: the committed weights, or for `native` a copy whose
    /// metadata `config` sets `resize` to the golden's native size (the same tensors).
    func encoder(weights: String, golden: Record, tag: String, shape: [Int]) throws -> ParallelFeatureEncoder {
        var path = Self.folder.appendingPathComponent(weights).path
        if tag == "native", let size = golden.metadata["native_resize"] {
            var r = try Checkpoint.read(path)
            r.metadata["config"] = "{\"bn_eps\": 0.001, \"resize\": \(size)}"
            path = try TestSupport.temporaryDirectory() + "/native.safetensors"
            try Checkpoint.write(r, to: path)
        }
        guard let enc = try Encoders.load(path: path, inputShape: shape) as? ParallelFeatureEncoder else {
            throw XCTSkip("not a pretrained encoder")
        }
        return enc
    }

    func tags(_ g: Record) -> [String] { ["grey", "rgb", "native"].filter { g["x_\($0)"] != nil } }

    func checkParity(weights: String, golden: String, featureDimension: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let g = try Checkpoint.read(Self.folder.appendingPathComponent(golden).path)
        for tag in tags(g) {
            let xt = g["x_\(tag)"]!, x = try xt.floats()
            let shape = Array(xt.shape.dropFirst()), batch = xt.shape[0]
            var enc = try encoder(weights: weights, golden: g, tag: tag, shape: shape)
            enc.inferenceChunk = batch
            XCTAssertEqual(enc.featureDimension, featureDimension, file: file, line: line)
            XCTAssertEqual(enc.inputShape, shape, file: file, line: line)
            let f = enc.features(x, batch: batch)
            let dx = enc.featureVJP(x, batch: batch, cotangent: try g["cot_\(tag)"]!.floats())
            let rf = relative(f, try g["feat_\(tag)"]!.floats()), rv = relative(dx, try g["vjp_\(tag)"]!.floats())
            var line1 = "parity \(weights) \(tag): features \(rf), vjp \(rv)"
            if let f32 = g["feat32_\(tag)"], let v32 = g["vjp32_\(tag)"] {
                // Resized Inception cases: features within 1e-4 of PyTorch float32 and within 1e-4
                // (or twice PyTorch float32's own error) of float64; the VJP no further from float64
                // than twice PyTorch float32's own error.
                let feat32 = try f32.floats(), vjp32 = try v32.floats()
                let torchF = relative(feat32, try g["feat_\(tag)"]!.floats()), torchV = relative(vjp32, try g["vjp_\(tag)"]!.floats())
                let rf32 = relative(f, feat32), rv32 = relative(dx, vjp32)
                XCTAssertLessThanOrEqual(rf32, 1e-4, "\(weights) \(tag) features vs PyTorch float32: \(rf32)", file: file, line: line)
                XCTAssertLessThanOrEqual(rf, max(1e-4, 2 * torchF), "\(weights) \(tag) features vs float64: \(rf) (PyTorch float32 \(torchF))", file: file, line: line)
                XCTAssertLessThanOrEqual(rv, 2 * torchV + 1e-4, "\(weights) \(tag) VJP vs float64: \(rv) (PyTorch float32 \(torchV))", file: file, line: line)
                line1 += " (vs float64; PyTorch float32 vs float64: features \(torchF), vjp \(torchV); ours vs PyTorch float32: features \(rf32), vjp \(rv32))"
            } else {
                XCTAssertLessThanOrEqual(rf, 1e-4, "\(weights) \(tag) features: relative error \(rf)", file: file, line: line)
                XCTAssertLessThanOrEqual(rv, 1e-4, "\(weights) \(tag) VJP: relative error \(rv)", file: file, line: line)
            }
            print(line1)
        }
    }

    /// A parity check against a dead network (constant features, zero VJP) proves nothing: the
    /// Inception golden written before scripts/make_encoder_goldens.py calibrated its batch norms
    /// gave features equal to ~1e-3 across images.
    func checkLive(golden: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let g = try Checkpoint.read(Self.folder.appendingPathComponent(golden).path)
        let f = try g["feat_grey"]!.floats(), D = f.count / 2
        var diff = 0.0, scale = 0.0
        for i in 0..<D { diff += Double(abs(f[i] - f[D + i])); scale += Double(abs(f[i]) + abs(f[D + i])) / 2 }
        XCTAssertGreaterThan(diff / scale, 0.05, "\(golden): the two grey images have nearly the same features", file: file, line: line)
        for tag in tags(g) {
            let v = try g["vjp_\(tag)"]!.floats()
            let rms = (v.reduce(0.0) { $0 + Double($1 * $1) } / Double(v.count)).squareRoot()
            XCTAssertGreaterThan(rms, 1e-3, "\(golden) \(tag): the golden VJP is (nearly) zero", file: file, line: line)
        }
    }

    /// <featureVJP(x, g), u> against (<g, phi(x + e u)> - <g, phi(x - e u)>) / 2e, all in Swift.
    /// The random Inception is piecewise linear with kinks (ReLU, max pool) closer together than
    /// 1e-4 along a random direction (its float64 central difference is off by 1-200% at e = 1e-4
    /// and exact at 1e-5), so it is checked at e = 1e-5 on the native-size case, where a step that
    /// crosses no kink makes the central difference exact up to float32 rounding; DINOv2 is smooth
    /// (GELU, softmax) and is checked at e = 1e-2.
    func checkVJPByFiniteDifference(weights: String, golden: String, tags only: [String], e: Float, tolerance: Double,
                                    file: StaticString = #filePath, line: UInt = #line) throws {
        let g = try Checkpoint.read(Self.folder.appendingPathComponent(golden).path)
        for tag in only {
            let xt = g["x_\(tag)"]!, x = try xt.floats(), batch = xt.shape[0]
            let enc = try encoder(weights: weights, golden: g, tag: tag, shape: Array(xt.shape.dropFirst()))
            let cot = try g["cot_\(tag)"]!.floats()
            var rng = CounterRNG(seed: 11, stream: 3)
            let u = x.indices.map { _ in Float(rng.uniform() * 2 - 1) }
            let dx = Encoders.vjp(enc, x: x, cotangent: cot, batch: batch)
            // The best of three step sizes: a float32 central difference carries rounding noise of
            // about ulp(feature) / e, which grows as e shrinks and depends on the BLAS kernels'
            // rounding (1.9% at e = 1e-5 with OpenBLAS's generic kernels, under 1% with SkylakeX
            // or Cooperlake ones), while a larger e meets more max-pool near-ties. A wrong VJP is
            // off at every step size.
            var best = (rel: Double.infinity, analytic: 0.0, numeric: 0.0, e: e)
            for step in [e, 3 * e, 10 * e] {
                let xp = zip(x, u).map { $0 + step * $1 }, xm = zip(x, u).map { $0 - step * $1 }
                // <vjp, the step actually taken> / 2e: x +- e u rounded to float32 is not exactly x +- e u
                var analytic = 0.0
                for i in dx.indices { analytic += Double(dx[i]) * (Double(xp[i]) - Double(xm[i])) }
                analytic /= 2 * Double(step)
                let fp = Encoders.features(enc, x: xp, batch: batch), fm = Encoders.features(enc, x: xm, batch: batch)
                var numeric = 0.0
                for i in cot.indices { numeric += Double(cot[i]) * (Double(fp[i]) - Double(fm[i])) }
                numeric /= 2 * Double(step)
                let rel = abs(numeric - analytic) / max(abs(analytic), 1e-30)
                print("finite difference \(weights) \(tag) (e \(step)): <vjp, u> \(analytic), central difference \(numeric), relative \(rel)")
                if rel < best.rel { best = (rel, analytic, numeric, step) }
            }
            XCTAssertGreaterThan(abs(best.analytic), 1e-3, "\(weights) \(tag): directional derivative is ~0", file: file, line: line)
            XCTAssertLessThanOrEqual(best.rel, tolerance, "\(weights) \(tag) (best step \(best.e)): <vjp, u> = \(best.analytic), central difference \(best.numeric)", file: file, line: line)
        }
    }

    func testInceptionFIDParity() throws {
        try checkLive(golden: "enc_inception_w32_golden.safetensors")
        try checkParity(weights: "enc_inception_w32.safetensors", golden: "enc_inception_w32_golden.safetensors", featureDimension: 64)
    }

    func testInceptionFIDVJPFiniteDifference() throws {
        try checkVJPByFiniteDifference(weights: "enc_inception_w32.safetensors", golden: "enc_inception_w32_golden.safetensors",
                                       tags: ["native"], e: 1e-5, tolerance: 1e-2)
    }

    func testDINOv2Parity() throws {
        try checkLive(golden: "enc_dinov2_tiny_golden.safetensors")
        try checkParity(weights: "enc_dinov2_tiny.safetensors", golden: "enc_dinov2_tiny_golden.safetensors", featureDimension: 16)
    }

    func testDINOv2VJPFiniteDifference() throws {
        try checkVJPByFiniteDifference(weights: "enc_dinov2_tiny.safetensors", golden: "enc_dinov2_tiny_golden.safetensors",
                                       tags: ["grey", "rgb"], e: 1e-2, tolerance: 1e-2)
    }

    /// `featuresAndVJP` (one forward pass per chunk, the cotangent taken from that chunk's
    /// features) gives the bits of `features` then `featureVJP`, with a padded last chunk and two
    /// workers; and `discrim score --grad`'s path through a feature-dependent (mlp) head agrees
    /// (1e-6) with the head's per-sample gradient pushed through `featureVJP`.
    func testOnePassFeaturesAndVJPMatchTwoPasses() throws {
        for (weights, golden) in [("enc_dinov2_tiny.safetensors", "enc_dinov2_tiny_golden.safetensors"),
                                  ("enc_inception_w32.safetensors", "enc_inception_w32_golden.safetensors")] {
            let g = try Checkpoint.read(Self.folder.appendingPathComponent(golden).path)
            let xt = g["x_grey"]!, x0 = try xt.floats(), shape = Array(xt.shape.dropFirst())
            // three images (the golden's, then its first flipped): chunks of 2 leave a padded last one
            let P = shape.reduce(1, *), x = x0 + x0[0..<P].reversed(), batch = x.count / P
            XCTAssertEqual(batch % 2, 1)
            var enc = try encoder(weights: weights, golden: g, tag: "grey", shape: shape)
            enc.inferenceChunk = 2
            enc.parallelism = 2
            let D = enc.featureDimension
            let cotangentOf: ([Float]) -> [Float] = { f in f.indices.map { 0.5 * f[$0] * f[$0] + Float($0 % D) / Float(D) - 0.3 } }
            let f2 = enc.features(x, batch: batch)
            let dx2 = enc.featureVJP(x, batch: batch, cotangent: cotangentOf(f2))
            var f1 = [Float](repeating: .nan, count: batch * D), dx1 = [Float](repeating: .nan, count: x.count)
            let lock = NSLock()
            x.withUnsafeBufferPointer { xp in f1.withUnsafeMutableBufferPointer { fp in dx1.withUnsafeMutableBufferPointer { dp in
                enc.featuresAndVJP(xp.baseAddress!, batch: batch, features: fp.baseAddress!, cotangent: { feats, first, count, gp in
                    lock.lock(); defer { lock.unlock() }
                    let c = cotangentOf(Array(UnsafeBufferPointer(start: feats, count: count * D)))
                    for i in 0..<(count * D) { gp[i] = c[i] }
                    XCTAssertEqual(first % 2, 0)
                }, into: dp.baseAddress!)
            } } }
            XCTAssertEqual(f1, f2, "\(weights): features")
            XCTAssertEqual(dx1, dx2, "\(weights): VJP")
            XCTAssertGreaterThan(dx2.map { abs($0) }.max()!, 0)

            let head = try ProjectionHead(config: DiscriminatorConfig(head: "mlp", featureDim: D, width: 8, numClasses: 3), seed: 4)
            let labels = (0..<batch).map { $0 % 3 }
            let both = DiscriminatorLoss.featuresAndInputGradient(head: head, encoder: enc, images: x, labels: labels)
            var headGrad = [Float]()
            for b in 0..<batch {   // the head's d logit / d phi, one sample at a time
                _ = head.logits(Array(f2[(b * D)..<((b + 1) * D)]), labels: [labels[b]])
                let gp = [Float](repeating: 1, count: 1).withUnsafeBufferPointer { head.backward($0.baseAddress!, paramGrads: false) }
                headGrad += Array(UnsafeBufferPointer(start: gp, count: D))
            }
            XCTAssertEqual(both.features, f2)
            XCTAssertLessThanOrEqual(relative(both.grad, enc.featureVJP(x, batch: batch, cotangent: headGrad)), 1e-6, weights)
        }
    }

    func testUnknownTensorIsRefused() throws {
        let dir = try TestSupport.temporaryDirectory()
        let src = try Checkpoint.read(Self.folder.appendingPathComponent("enc_dinov2_tiny.safetensors").path)
        var r = src
        r["register_tokens"] = Tensor([Float](repeating: 0, count: 16), shape: [1, 1, 16])
        try Checkpoint.write(r, to: dir + "/bad.safetensors")
        XCTAssertThrowsError(try Encoders.load(path: dir + "/bad.safetensors", inputShape: [1, 28, 28]))
    }
}
