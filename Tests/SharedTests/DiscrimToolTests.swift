import Foundation
import XCTest
import Shared

/// The `discrim` executable end to end: train on pixel features, score with --grad, refusals.
final class DiscrimToolTests: XCTestCase {
    // MARK: discrim

    /// Pixel features: `feat` = x flattened, metadata encoder = "pixels".
    func pixelStream(n: Int, mean: Float, seed: UInt64, encoder: String = "pixels") throws -> [UInt8] {
        var rng = CounterRNG(seed: seed)
        let x = (0..<(n * 3)).map { _ in mean + Float(rng.normal() * 0.5) }
        var r = Record([("x", Tensor(x, shape: [n, 1, 1, 3])), ("feat", Tensor(x, shape: [n, 3])),
                        ("y", Tensor((0..<n).map { Int64($0 % 2) }, shape: [n])), ("id", Tensor((0..<n).map { Int64($0) }, shape: [n]))])
        r.metadata = ["encoder": encoder, "sampler": "euler"]
        return try TestSupport.streamBytes([r])
    }

    func testDiscrimTrainAndScore() throws {
        let dir = try TestSupport.temporaryDirectory()
        try AtomicFile.write(try pixelStream(n: 400, mean: 0.5, seed: 1), to: dir + "/real.tzst")
        try AtomicFile.write(try pixelStream(n: 400, mean: -0.5, seed: 2), to: dir + "/fake.tzst")
        let t = try TestSupport.run("discrim", ["train", "--real", dir + "/real.tzst", "--fake", dir + "/fake.tzst", "-o", dir + "/d.safetensors",
                                                "--width", "16", "--batch", "64", "--max-steps", "300", "--eval-every", "20", "--lr", "3e-3",
                                                "--r1", "0.01", "--buffer-batches", "4", "--buffer-epochs", "2", "--threads", "1", "--quiet"])
        XCTAssertEqual(t.status, 0, t.stderr)
        let report = String(decoding: t.stdout, as: UTF8.self)
        XCTAssertTrue(report.contains("\"auc\":"), report)
        let ck = try Checkpoint.read(dir + "/d.safetensors")
        XCTAssertEqual(ck.metadata["encoder"], "pixels")
        XCTAssertEqual(ck.metadata["kind"], "discriminator")
        // score with --grad: reward and reward.grad added, the rest passed through
        let input = try pixelStream(n: 10, mean: 0.5, seed: 3)
        let s = try TestSupport.run("discrim", ["score", "--model", dir + "/d.safetensors", "--grad", "--threads", "1"], stdin: input)
        XCTAssertEqual(s.status, 0, s.stderr)
        let out = try TestSupport.readAll(s.stdout)
        let inRec = try TestSupport.readAll(input)[0]
        XCTAssertEqual(out.count, 1)
        XCTAssertEqual(out[0]["reward"]?.shape, [10])
        XCTAssertEqual(out[0]["reward.grad"]?.shape, [10, 1, 1, 3])
        XCTAssertEqual(out[0]["x"], inRec["x"])
        XCTAssertEqual(out[0]["id"], inRec["id"])
        XCTAssertEqual(out[0].metadata["sampler"], "euler")
        let (head, _) = try ProjectionHead.load(path: dir + "/d.safetensors")
        for (a, b) in zip(try out[0]["reward"]!.floats(), head.logits(try inRec["feat"]!.floats(), labels: try inRec["y"]!.int64s().map { Int($0) })) {
            XCTAssertEqual(a, b, accuracy: 1e-5 * (abs(b) + 1))  // BLAS thread counts differ in the last bits
        }
        XCTAssertGreaterThan(try out[0]["reward"]!.floats().reduce(0, +), 0, "real-like samples score positive")
        // refusals: another encoder's features; no feat and no encoder; training on mixed encoders
        let foreign = try pixelStream(n: 4, mean: 0, seed: 4, encoder: "0123abcd")
        let e1 = try TestSupport.run("discrim", ["score", "--model", dir + "/d.safetensors"], stdin: foreign)
        XCTAssertEqual(e1.status, 1)
        XCTAssertTrue(e1.stderr.contains("encoder 0123abcd"), e1.stderr)
        try AtomicFile.write(foreign, to: dir + "/foreign.tzst")
        let e2 = try TestSupport.run("discrim", ["train", "--real", dir + "/real.tzst", "--fake", dir + "/foreign.tzst", "-o", dir + "/x.safetensors"])
        XCTAssertEqual(e2.status, 1)
        XCTAssertTrue(e2.stderr.contains("encoder"), e2.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.safetensors"))
        var noFeat = try TestSupport.readAll(input)[0]
        noFeat["feat"] = nil
        noFeat["x"] = nil
        let e3 = try TestSupport.run("discrim", ["score", "--model", dir + "/d.safetensors"], stdin: try TestSupport.streamBytes([noFeat]))
        XCTAssertEqual(e3.status, 1)
        XCTAssertTrue(e3.stderr.contains("`x`") || e3.stderr.contains("`feat`"), e3.stderr)
        let e4 = try TestSupport.run("discrim", ["score", "--model", dir + "/real.tzst"], stdin: input)
        XCTAssertEqual(e4.status, 1)
    }
}
