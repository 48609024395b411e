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

    /// `--init-from` continues a discriminator: weights and Adam state come from the checkpoint
    /// (its step count goes on from there), the parent digest is recorded, and a head of another
    /// shape is refused with one line.
    func testDiscrimTrainInitFromKeepsOptimizerState() throws {
        let dir = try TestSupport.temporaryDirectory()
        try AtomicFile.write(try pixelStream(n: 300, mean: 0.5, seed: 1), to: dir + "/real.tzst")
        try AtomicFile.write(try pixelStream(n: 300, mean: -0.5, seed: 2), to: dir + "/fake.tzst")
        let common = ["--real", dir + "/real.tzst", "--fake", dir + "/fake.tzst", "--width", "16", "--batch", "64",
                      "--buffer-batches", "2", "--buffer-epochs", "1", "--holdout", "0", "--lr", "3e-3", "--threads", "1", "--quiet"]
        let first = try TestSupport.run("discrim", ["train"] + common + ["--max-steps", "30", "-o", dir + "/d1.safetensors"])
        XCTAssertEqual(first.status, 0, first.stderr)
        let ck1 = try Checkpoint.read(dir + "/d1.safetensors")
        XCTAssertEqual(ck1.metadata[AdamW.stepKey], "30")
        XCTAssertTrue(ck1.names.contains { $0.hasPrefix("optim.exp_avg_sq.") }, "the Adam moments are saved")
        let second = try TestSupport.run("discrim", ["train"] + common + ["--max-steps", "20", "--init-from", dir + "/d1.safetensors", "-o", dir + "/d2.safetensors"])
        XCTAssertEqual(second.status, 0, second.stderr)
        let ck2 = try Checkpoint.read(dir + "/d2.safetensors")
        XCTAssertEqual(ck2.metadata[AdamW.stepKey], "50", "Adam's step count continues")
        XCTAssertEqual(ck2.metadata[TrainingCheckpoint.parentKey], try Checkpoint.digest(dir + "/d1.safetensors"))
        let weight = ck2.names.first { !$0.hasPrefix("optim.") }!
        XCTAssertNotEqual(ck2[weight], ck1[weight], "training moved the weights")
        let (warm, _) = try ProjectionHead.load(path: dir + "/d2.safetensors")
        XCTAssertEqual(warm.config.width, 16)
        let bad = try TestSupport.run("discrim", ["train"] + common.map { $0 == "16" ? "32" : $0 } + ["--init-from", dir + "/d1.safetensors", "-o", dir + "/d3.safetensors"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertEqual(bad.stderr.split(separator: "\n").count, 1, bad.stderr)
        XCTAssertTrue(bad.stderr.contains("--init-from"), bad.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/d3.safetensors"))
    }

    /// `discrim eval` reads the logits of two scored streams: an exact log ratio is calibrated
    /// (log E_fake[exp r] and log E_real[exp -r] near 0), a tripled one is not.
    func testDiscrimEvalCalibration() throws {
        func scored(_ mean: Double, scale: Float, seed: UInt64) throws -> [UInt8] {
            var rng = CounterRNG(seed: seed)
            // real N(0.5, 1), fake N(-0.5, 1): log q/p (x) = x exactly
            let x = (0..<20000).map { _ in Float(mean + rng.normal()) }
            var r = Record([("reward", Tensor(x.map { $0 * scale }, shape: [x.count]))])
            r.metadata = ["discriminator": "d1"]
            return try TestSupport.streamBytes([r])
        }
        let dir = try TestSupport.temporaryDirectory()
        for scale: Float in [1, 3] {
            try AtomicFile.write(try scored(0.5, scale: scale, seed: 1), to: dir + "/real.tzst")
            try AtomicFile.write(try scored(-0.5, scale: scale, seed: 2), to: dir + "/fake.tzst")
            let r = try TestSupport.run("discrim", ["eval", "--real", dir + "/real.tzst", "--fake", dir + "/fake.tzst"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let j = try JSONSerialization.jsonObject(with: Data(r.stdout)) as! [String: Any]
            let a = j["log_mean_exp_fake"] as! Double, b = j["log_mean_exp_neg_real"] as! Double, ece = j["ece"] as! Double
            XCTAssertEqual(j["real"] as? Int, 20000)
            XCTAssertEqual(j["auc"] as! Double, 0.76, accuracy: 0.02)   // Phi(1 / sqrt 2) for unit-variance clouds 1 apart
            if scale == 1 {
                XCTAssertEqual(a, 0, accuracy: 0.05); XCTAssertEqual(b, 0, accuracy: 0.05); XCTAssertLessThan(ece, 0.02)
            } else {
                XCTAssertGreaterThan(a, 1); XCTAssertGreaterThan(b, 1); XCTAssertGreaterThan(ece, 0.1)
            }
        }
        var other = try TestSupport.readAll(try scored(0, scale: 1, seed: 3))[0]
        other.metadata["discriminator"] = "d2"
        try AtomicFile.write(try TestSupport.streamBytes([other]), to: dir + "/other.tzst")
        let e = try TestSupport.run("discrim", ["eval", "--real", dir + "/real.tzst", "--fake", dir + "/other.tzst"])
        XCTAssertEqual(e.status, 1)
        XCTAssertTrue(e.stderr.contains("different discriminators"), e.stderr)
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
