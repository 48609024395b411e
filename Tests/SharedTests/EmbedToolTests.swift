import XCTest
import Shared

/// The built `embed` executable: pass-through, digest, --pixels, errors, train and probe.
final class EmbedToolTests: XCTestCase {
    func makeEncoder(_ dir: String, kind: String = "classifier", height: Int = 12) throws -> (String, ConvEncoder) {
        let path = dir + "/enc-\(kind).safetensors"
        let enc = try ConvEncoder(config: EncoderConfig.preset(kind, height: height, width: height)!, seed: 5)
        try enc.save(to: path, metadata: ["step": "0"])
        return (path, enc)
    }

    func images(_ b: Int, side: Int, seed: UInt64) -> [Float] {
        var rng = CounterRNG(seed: seed, stream: 9)
        return (0..<(b * side * side)).map { _ in Float(rng.uniform() * 2 - 1) }
    }

    func assertOneLineError(_ r: TestSupport.Result, contains: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(r.status, 1, "status; stderr: \(r.stderr)", file: file, line: line)
        let lines = r.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "stderr: \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stderr.hasPrefix("embed: error: "), r.stderr, file: file, line: line)
        XCTAssertTrue(r.stderr.contains(contains), "expected `\(contains)` in: \(r.stderr)", file: file, line: line)
        XCTAssertTrue(r.stdout.isEmpty || r.status != 0, file: file, line: line)
    }

    func testPassThroughFeaturesAndDigest() throws {
        let dir = try TestSupport.temporaryDirectory()
        let (path, enc) = try makeEncoder(dir)
        let x1 = images(5, side: 12, seed: 1), x2 = images(3, side: 12, seed: 2)
        let r1 = Record([("x", Tensor(x1, shape: [5, 1, 12, 12])), ("y", Tensor([Int64](repeating: 3, count: 5), shape: [5])),
                         ("custom.thing", Tensor([Float](repeating: 0.5, count: 10), shape: [5, 2])),
                         ("traj.t", Tensor([Float]([1, 0.5, 0]), shape: [3]))],
                        metadata: ["sampler": "precise", "seed": "17", "per_record": "traj.t"])
        let r2 = Record([("x", Tensor(x2, shape: [3, 1, 12, 12])), ("id", Tensor([Int64]([7, 8, 9]), shape: [3]))], metadata: ["note": "second"])
        let r = try TestSupport.run("embed", ["--encoder", path, "--threads", "2"], stdin: TestSupport.streamBytes([r1, r2]))
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = try TestSupport.readAll(r.stdout)
        XCTAssertEqual(out.count, 2)
        let digest = try Checkpoint.digest(path)
        for (got, want, x, b) in [(out[0], r1, x1, 5), (out[1], r2, x2, 3)] {
            for name in want.names { XCTAssertEqual(got[name], want[name], name) }
            XCTAssertEqual(Set(got.names), Set(want.names + ["feat"]))
            for (k, v) in want.metadata { XCTAssertEqual(got.metadata[k], v, k) }
            XCTAssertEqual(got.metadata["encoder"], digest)
            let feat = try XCTUnwrap(got["feat"])
            XCTAssertEqual(feat.shape, [b, 128])
            XCTAssertEqual(feat.dtype, .f32)
            // the tool may run other OpenBLAS kernels than this test process (see BLAS.preferNativeKernels)
            let want = enc.features(x, batch: b), have = try feat.floats()
            XCTAssertEqual(want.count, have.count)
            for i in want.indices { XCTAssertEqual(have[i], want[i], accuracy: 1e-5) }
        }
    }

    func testPixelsEqualFlattenedInput() throws {
        let x = images(4, side: 6, seed: 3)
        let rec = Record([("x", Tensor(x, shape: [4, 2, 3, 6]))], metadata: ["k": "v"])
        let r = try TestSupport.run("embed", ["--pixels"], stdin: TestSupport.streamBytes([rec]))
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = try TestSupport.readAll(r.stdout)
        XCTAssertEqual(out[0]["feat"], Tensor(x, shape: [4, 36]))
        XCTAssertEqual(out[0]["x"], rec["x"])
        XCTAssertEqual(out[0].metadata["encoder"], "pixels")
        XCTAssertEqual(out[0].metadata["k"], "v")
    }

    func testEmptyStreamAndEmptyBatch() throws {
        let dir = try TestSupport.temporaryDirectory()
        let (path, _) = try makeEncoder(dir)
        let r = try TestSupport.run("embed", ["--encoder", path], stdin: [])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try TestSupport.readAll(r.stdout).count, 0)
        let empty = Record([("x", Tensor([Float](), shape: [0, 1, 12, 12]))])
        let r2 = try TestSupport.run("embed", ["--encoder", path], stdin: TestSupport.streamBytes([empty]))
        XCTAssertEqual(r2.status, 0, r2.stderr)
        XCTAssertEqual(try TestSupport.readAll(r2.stdout)[0]["feat"]?.shape, [0, 128])
    }

    /// `embed classify`: logits equal the head applied to the features, pred is their argmax, and
    /// the report's accuracy counts pred == y (here 3 of 6 labels are set to the prediction).
    func testClassifyAddsLogitsPredAndReportsAgreement() throws {
        let dir = try TestSupport.temporaryDirectory()
        let (path, enc) = try makeEncoder(dir)
        let x = images(6, side: 12, seed: 4)
        let feat = enc.features(x, batch: 6)
        let head = try XCTUnwrap(enc.head)
        var want = [Float](repeating: 0, count: 60), argmax = [Int64](repeating: 0, count: 6)
        for i in 0..<6 {
            for k in 0..<10 {
                var s = Double(head.bias!.value[k])
                for j in 0..<128 { s += Double(head.weight.value[k * 128 + j]) * Double(feat[i * 128 + j]) }
                want[i * 10 + k] = Float(s)
            }
            argmax[i] = Int64((0..<10).max { want[i * 10 + $0] < want[i * 10 + $1] }!)
        }
        let y = (0..<6).map { $0 < 3 ? argmax[$0] : (argmax[$0] + 1) % 10 }
        let rec = Record([("x", Tensor(x, shape: [6, 1, 12, 12])), ("y", Tensor(y, shape: [6]))], metadata: ["k": "v"])
        let report = dir + "/report.json"
        let r = try TestSupport.run("embed", ["classify", "--encoder", path, "--report", report], stdin: TestSupport.streamBytes([rec]))
        XCTAssertEqual(r.status, 0, r.stderr)
        let out = try TestSupport.readAll(r.stdout)
        XCTAssertEqual(out[0]["x"], rec["x"])
        XCTAssertEqual(out[0]["y"], rec["y"])
        XCTAssertEqual(out[0].metadata["k"], "v")
        XCTAssertEqual(out[0]["pred"], Tensor(argmax, shape: [6]))
        let logits = try XCTUnwrap(out[0]["logits"]).floats()
        for i in want.indices { XCTAssertEqual(logits[i], want[i], accuracy: 1e-4) }
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as! [String: Any]
        XCTAssertEqual(json["n"] as? Int, 6)
        XCTAssertEqual(json["accuracy"] as? Double, 0.5)
        XCTAssertEqual(json["classifier"] as? String, try Checkpoint.digest(path))
    }

    func testClassifyRefusesHeadlessEncoderAndUnlabelledReport() throws {
        let dir = try TestSupport.temporaryDirectory()
        let (simclr, _) = try makeEncoder(dir, kind: "simclr")
        let rec = Record([("x", Tensor(images(2, side: 12, seed: 5), shape: [2, 1, 12, 12]))])
        let bytes = try TestSupport.streamBytes([rec])
        assertOneLineError(try TestSupport.run("embed", ["classify", "--encoder", simclr], stdin: bytes), contains: "no classifier head")
        let (classifier, _) = try makeEncoder(dir)
        let out = dir + "/out.tzst"
        let r = try TestSupport.run("embed", ["classify", "--encoder", classifier, "--report", dir + "/r.json", "-o", out], stdin: bytes)
        assertOneLineError(r, contains: "needs `y`")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/r.json"))
    }

    func testBadInputOneLineErrors() throws {
        let dir = try TestSupport.temporaryDirectory()
        let (path, _) = try makeEncoder(dir)
        // missing x
        let noX = Record([("y", Tensor([Int64]([1]), shape: [1]))])
        assertOneLineError(try TestSupport.run("embed", ["--encoder", path], stdin: TestSupport.streamBytes([noX])), contains: "`x`")
        // wrong shape
        let wrong = Record([("x", Tensor(images(2, side: 14, seed: 1), shape: [2, 1, 14, 14]))])
        assertOneLineError(try TestSupport.run("embed", ["--encoder", path], stdin: TestSupport.streamBytes([wrong])), contains: "[2, 1, 14, 14]")
        // NaN
        var bad = images(1, side: 12, seed: 1)
        bad[3] = .nan
        let nan = Record([("x", Tensor(bad, shape: [1, 1, 12, 12]))])
        assertOneLineError(try TestSupport.run("embed", ["--encoder", path], stdin: TestSupport.streamBytes([nan])), contains: "NaN")
        // corrupt (truncated) checkpoint, missing checkpoint, a checkpoint without config
        let bytes = try readFile(path)
        try AtomicFile.write(Array(bytes.prefix(bytes.count / 2)), to: dir + "/cut.safetensors")
        let good = Record([("x", Tensor(images(1, side: 12, seed: 1), shape: [1, 1, 12, 12]))])
        let input = try TestSupport.streamBytes([good])
        assertOneLineError(try TestSupport.run("embed", ["--encoder", dir + "/cut.safetensors"], stdin: input), contains: "cut.safetensors")
        assertOneLineError(try TestSupport.run("embed", ["--encoder", dir + "/none.safetensors"], stdin: input), contains: "none.safetensors")
        try Checkpoint.write(Record([("w", Tensor([Float(1)], shape: [1]))]), to: dir + "/noconfig.safetensors")
        assertOneLineError(try TestSupport.run("embed", ["--encoder", dir + "/noconfig.safetensors"], stdin: input), contains: "config")
        // corrupt stream
        assertOneLineError(try TestSupport.run("embed", ["--encoder", path], stdin: Array(input.prefix(input.count - 7))), contains: "truncated")
    }

    func testTrainAndProbeCommands() throws {
        let dir = try TestSupport.temporaryDirectory()
        let (x, y) = EncoderTests.toyImages(96, side: 10)
        let rec = Record([("x", Tensor(x, shape: [96, 1, 10, 10])), ("y", Tensor(y.map { Int64($0) }, shape: [96]))])
        try AtomicFile.write(TestSupport.streamBytes([rec.samples(0, 48), rec.samples(48, 48)]), to: dir + "/data.tzst")
        for kind in ["classifier", "simclr"] {
            let out = dir + "/\(kind).safetensors"
            let r = try TestSupport.run("embed", ["train", "--kind", kind, "-i", dir + "/data.tzst", "-o", out, "--steps", "20", "--batch", "16",
                                                  "--log-every", "10", "--metrics", dir + "/\(kind).jsonl", "--threads", "1", "--seed", "3"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let enc = try ConvEncoder.load(path: out)
            XCTAssertEqual(enc.config.kind, kind)
            let meta = try Checkpoint.read(out).metadata
            XCTAssertEqual(meta["step"], "20")
            XCTAssertEqual(meta["seed"], "3")
            let lines = String(decoding: try readFile(dir + "/\(kind).jsonl"), as: UTF8.self).split(separator: "\n")
            XCTAssertEqual(lines.count, 2)
            XCTAssertTrue(lines[0].contains("\"loss\""))
        }
        // classifier without labels is refused
        let unlabeled = Record([("x", Tensor(x, shape: [96, 1, 10, 10]))])
        try AtomicFile.write(TestSupport.streamBytes([unlabeled]), to: dir + "/nolabels.tzst")
        assertOneLineError(try TestSupport.run("embed", ["train", "--kind", "classifier", "-i", dir + "/nolabels.tzst", "-o", dir + "/c.safetensors", "--steps", "2", "--quiet"]),
                           contains: "labels")
        // probe on pixel features of the toy data
        let feat = try TestSupport.run("embed", ["--pixels", "-i", dir + "/data.tzst", "-o", dir + "/feat.tzst"])
        XCTAssertEqual(feat.status, 0, feat.stderr)
        let probe = try TestSupport.run("embed", ["probe", "--train", dir + "/feat.tzst", "--test", dir + "/feat.tzst", "--json", "--epochs", "10"])
        XCTAssertEqual(probe.status, 0, probe.stderr)
        let text = String(decoding: probe.stdout, as: UTF8.self)
        XCTAssertTrue(text.contains("\"test_accuracy\":1.0000"), text)
        XCTAssertTrue(text.contains("\"encoder\":\"pixels\""), text)
        // probe refuses streams without feat
        assertOneLineError(try TestSupport.run("embed", ["probe", "--train", dir + "/data.tzst", "--test", dir + "/feat.tzst"]), contains: "feat")
    }
}
