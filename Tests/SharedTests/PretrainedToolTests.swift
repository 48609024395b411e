import Foundation
import XCTest
import Shared

/// The pretrained encoders through the built tools, as a user runs them after
/// scripts/convert_weights.py (the committed golden checkpoints are exactly what it writes from
/// the tiny random PyTorch models; `make_encoder_goldens.py --user-checkpoints` rebuilds those):
/// `embed --encoder`, `discrim train`, `discrim score --grad --encoder` and `fid` on the features.
final class PretrainedToolTests: XCTestCase {
    static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden")

    /// n grey 28x28 images in [-1, 1]: a bright blob on a dark background, `shift` moving it;
    /// labels alternate 0, 1.
    func stream(n: Int, shift: Double, seed: UInt64) throws -> (bytes: [UInt8], x: [Float], y: [Int]) {
        var rng = CounterRNG(seed: seed, stream: 7)
        var x = [Float](repeating: 0, count: n * 784)
        for b in 0..<n {
            let cx = 10 + shift + rng.uniform() * 8, cy = 10 + rng.uniform() * 8, r = 3 + rng.uniform() * 4
            for i in 0..<28 { for j in 0..<28 {
                let d2 = (Double(i) - cy) * (Double(i) - cy) + (Double(j) - cx) * (Double(j) - cx)
                x[b * 784 + i * 28 + j] = Float(-1 + 1.8 * exp(-d2 / (2 * r * r)) + 0.05 * (rng.uniform() - 0.5))
            } }
        }
        let y = (0..<n).map { $0 % 2 }
        let rec = Record([("x", Tensor(x, shape: [n, 1, 28, 28])), ("y", Tensor(y.map { Int64($0) }, shape: [n]))],
                         metadata: ["source": "PretrainedToolTests"])
        return (try TestSupport.streamBytes([rec]), x, y)
    }

    func relative(_ a: [Float], _ b: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for i in a.indices { num = max(num, Double(abs(a[i] - b[i]))); den = max(den, Double(abs(b[i]))) }
        return num / max(den, 1e-30)
    }

    func testEmbedScoreGradAndFidThroughPretrainedEncoders() throws {
        let dir = try TestSupport.temporaryDirectory()
        let n = 24
        let real = try stream(n: n, shift: 0, seed: 1), fake = try stream(n: n, shift: 3, seed: 2)
        try AtomicFile.write(real.bytes, to: dir + "/real.tzst")
        try AtomicFile.write(fake.bytes, to: dir + "/fake.tzst")
        var digests: [String] = []
        for (file, d) in [("enc_inception_w32.safetensors", 64), ("enc_dinov2_tiny.safetensors", 16)] {
            let weights = Self.golden.appendingPathComponent(file).path
            let tag = String(file.split(separator: "_")[1])
            let enc = try Encoders.load(path: weights, inputShape: [1, 28, 28])
            digests.append(enc.digest)
            // embed: `feat` [n, d], the encoder's digest, the features of the library call
            for (side, data) in [("real", real), ("fake", fake)] {
                let r = try TestSupport.run("embed", ["--encoder", weights, "--threads", "2", "-i", dir + "/\(side).tzst",
                                                      "-o", dir + "/\(side)-\(tag).tzst"])
                XCTAssertEqual(r.status, 0, "\(tag) \(side): \(r.stderr)")
                let out = try TestSupport.readAll(Array(try Data(contentsOf: URL(fileURLWithPath: dir + "/\(side)-\(tag).tzst"))))
                XCTAssertEqual(out.count, 1)
                XCTAssertEqual(out[0]["feat"]?.shape, [n, d], tag)
                XCTAssertEqual(out[0].metadata["encoder"], try Checkpoint.digest(weights))
                XCTAssertEqual(out[0].metadata["source"], "PretrainedToolTests")
                let want = Encoders.features(enc, x: data.x, batch: n)
                let rel = relative(try out[0]["feat"]!.floats(), want)
                XCTAssertLessThanOrEqual(rel, 1e-4, "\(tag) \(side): embed vs library features \(rel)")  // BLAS threads may differ
            }
            // discrim train on those features, then score with --grad through the encoder
            let t = try TestSupport.run("discrim", ["train", "--real", dir + "/real-\(tag).tzst", "--fake", dir + "/fake-\(tag).tzst",
                                                    "-o", dir + "/d-\(tag).safetensors", "--width", "16", "--batch", "16",
                                                    "--max-steps", "30", "--buffer-batches", "2", "--buffer-epochs", "1",
                                                    "--holdout", "0", "--lr", "3e-3", "--threads", "1", "--quiet"])
            XCTAssertEqual(t.status, 0, "\(tag): \(t.stderr)")
            let s = try TestSupport.run("discrim", ["score", "--model", dir + "/d-\(tag).safetensors", "--grad", "--encoder", weights,
                                                    "--threads", "2", "-i", dir + "/real-\(tag).tzst"])
            XCTAssertEqual(s.status, 0, "\(tag): \(s.stderr)")
            let scored = try TestSupport.readAll(s.stdout)[0]
            let grad = try XCTUnwrap(scored["reward.grad"]).floats()
            XCTAssertEqual(scored["reward.grad"]?.shape, [n, 1, 28, 28])
            XCTAssertEqual(scored["reward"]?.shape, [n])
            let (head, headEncoder) = try ProjectionHead.load(path: dir + "/d-\(tag).safetensors")
            XCTAssertEqual(headEncoder, enc.digest)
            let want = DiscriminatorLoss.inputGradient(head: head, encoder: enc, images: real.x, labels: real.y)
            XCTAssertGreaterThan(want.map { abs($0) }.max()!, 0, "\(tag): the reward gradient is zero")
            let rg = relative(grad, want)
            XCTAssertLessThanOrEqual(rg, 1e-3, "\(tag): score --grad vs library \(rg)")
            // and that gradient is d logit / dx: a central difference of the library's logit of
            // the first image (DINOv2 only: the random Inception has kinks closer than any usable step)
            if tag == "dinov2" {
                var rng = CounterRNG(seed: 5, stream: 1)
                let u = (0..<784).map { _ in Float(rng.uniform() * 2 - 1) }, e: Float = 1e-2
                let x0 = Array(real.x[0..<784])
                let lp = head.logits(Encoders.features(enc, x: zip(x0, u).map { $0 + e * $1 }, batch: 1), labels: [real.y[0]])[0]
                let lm = head.logits(Encoders.features(enc, x: zip(x0, u).map { $0 - e * $1 }, batch: 1), labels: [real.y[0]])[0]
                let numeric = Double(lp - lm) / Double(2 * e)
                let analytic = (0..<784).reduce(0.0) { $0 + Double(grad[$1]) * Double(u[$1]) }
                XCTAssertEqual(numeric, analytic, accuracy: 2e-2 * abs(analytic) + 1e-5, "dinov2 reward.grad vs central difference")
            }
            // fid on the features: positive between the two sets, 0 for a set against itself
            let f = try TestSupport.run("fid", [dir + "/real-\(tag).tzst", dir + "/fake-\(tag).tzst", "--json"])
            XCTAssertEqual(f.status, 0, "\(tag): \(f.stderr)")
            let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(f.stdout)) as? [String: Any])
            let fd = try XCTUnwrap(j["fd"] as? Double)
            XCTAssertTrue(fd.isFinite && fd > 0, "\(tag): fd \(fd)")
            let same = try TestSupport.run("fid", [dir + "/real-\(tag).tzst", dir + "/real-\(tag).tzst", "--json"])
            let js = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(same.stdout)) as? [String: Any])
            XCTAssertEqual(try XCTUnwrap(js["fd"] as? Double), 0, accuracy: 1e-6 * max(1, fd))
            print("tools \(tag): fd(real, fake) \(fd), score --grad vs library \(rg)")
        }
        XCTAssertNotEqual(digests[0], digests[1])
        // features of two different encoders are not compared
        let x = try TestSupport.run("fid", [dir + "/real-inception.tzst", dir + "/fake-dinov2.tzst"])
        XCTAssertEqual(x.status, 1)
    }
}
