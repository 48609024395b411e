import XCTest
import Shared

/// Parity of the Swift Inception-v3 (pytorch-fid) and DINOv2 encoders with PyTorch, on randomly
/// initialised reduced models written by scripts/make_encoder_goldens.py (Inception at 1/32 of
/// every width, DINOv2 at width 16, depth 2, a 19x19 position grid): features and a
/// vector-Jacobian product for grey 28x28 and RGB 32x32 images, <= 1e-4 relative; NOTE: the committed
/// Inception golden is degenerate (its random ReLUs are dead: constant features, zero VJP); see the report.
final class PretrainedEncoderTests: XCTestCase {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden")

    func relative(_ a: [Float], _ b: [Float]) -> Double {
        precondition(a.count == b.count)
        var num = 0.0, den = 0.0
        for i in a.indices { num = max(num, Double(abs(a[i] - b[i]))); den = max(den, Double(abs(b[i]))) }
        return num / max(den, 1e-30)
    }

    func checkParity(weights: String, golden: String, featureDimension: Int, file: StaticString = #filePath, line: UInt = #line) throws {
        let path = Self.folder.appendingPathComponent(weights).path
        let g = try Checkpoint.read(Self.folder.appendingPathComponent(golden).path)
        for tag in ["grey", "rgb"] {
            let xt = g["x_\(tag)"]!, x = try xt.floats()
            let shape = Array(xt.shape.dropFirst()), batch = xt.shape[0]
            guard var enc = try Encoders.load(path: path, inputShape: shape) as? ParallelFeatureEncoder else { return XCTFail("not a pretrained encoder") }
            enc.inferenceChunk = batch
            XCTAssertEqual(enc.featureDimension, featureDimension, file: file, line: line)
            XCTAssertEqual(enc.inputShape, shape, file: file, line: line)
            let f = enc.features(x, batch: batch)
            let rf = relative(f, try g["feat_\(tag)"]!.floats())
            XCTAssertLessThanOrEqual(rf, 1e-4, "\(weights) \(tag) features: relative error \(rf)", file: file, line: line)
            let dx = enc.featureVJP(x, batch: batch, cotangent: try g["cot_\(tag)"]!.floats())
            let rv = relative(dx, try g["vjp_\(tag)"]!.floats())
            XCTAssertLessThanOrEqual(rv, 1e-4, "\(weights) \(tag) VJP: relative error \(rv)", file: file, line: line)
            print("parity \(weights) \(tag): features \(rf), vjp \(rv)")
        }
    }

    func testInceptionFIDParity() throws {
        // The committed reduced-width random Inception is dead (every ReLU off: constant features,
        // zero VJP), so agreement with it proves nothing. Skipped until a live golden replaces it
        // (docs/encoders.md, "What is missing").
        throw XCTSkip("the Inception golden network is dead (constant features); regenerate it with scripts/make_encoder_goldens.py")
        try checkParity(weights: "enc_inception_w32.safetensors", golden: "enc_inception_w32_golden.safetensors", featureDimension: 64)
    }

    func testDINOv2Parity() throws {
        try checkParity(weights: "enc_dinov2_tiny.safetensors", golden: "enc_dinov2_tiny_golden.safetensors", featureDimension: 16)
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
