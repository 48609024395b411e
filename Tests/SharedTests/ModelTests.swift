import XCTest
import Foundation
import Shared

final class ModelTests: XCTestCase {
    static let mlpSmall = ModelConfig(arch: "mlp", channels: 2, height: 4, width: 4, numClasses: 3,
                                      hidden: 16, depth: 2, mlpRatio: 2, frequencyDim: 16)
    static let sitSmall = ModelConfig(arch: "sit", channels: 2, height: 8, width: 8, numClasses: 3,
                                      hidden: 16, depth: 2, mlpRatio: 2, heads: 2, patch: 2, frequencyDim: 16)
    static let unetSmall = ModelConfig(arch: "unet", channels: 2, height: 8, width: 8, numClasses: 3,
                                       hidden: 8, depth: 1, mlpRatio: 2, frequencyDim: 16, channelMult: [1, 2], groups: 2)

    /// Randomises every trainable parameter (the zero-initialised adaLN and final linears too, so
    /// no gradient is trivially zero), then checks all parameter gradients and the input gradient.
    func gradientCheck(_ config: ModelConfig) throws {
        var g = GradCheck()
        let net = try VelocityNet.make(config, seed: 7)
        for p in net.params.trainable { p.randomize(&g, std: p.shape.count >= 2 ? 0.4 : 0.2) }
        let B = 3, D = config.sampleDimension
        let x = Buffer(B * D)
        x.pointer.update(from: g.randoms(B * D), count: B * D)
        let t: [Float] = [0.1, 0.5, 0.93]
        let y = [0, 2, config.numClasses]  // includes the null label
        let w = g.randoms(B * D)
        net.params.zeroGrad()
        net.forward(x.pointer, t: t, y: y, batch: B)
        let dx = Array(UnsafeBufferPointer(start: net.backward(w), count: B * D))
        let loss = { GradCheck.project(net.forward(x.pointer, t: t, y: y, batch: B), w) }
        g.check("\(config.arch).x", value: x.pointer, count: B * D, analytic: dx, loss: loss)
        for p in net.params.trainable {
            g.check("\(config.arch).\(p.name)", value: p.value, count: p.count, analytic: p.grads, loss: loss)
        }
        // the VJP helper gives the same input gradient and leaves parameter gradients alone
        let before = net.params.all.map(\.grads)
        let xs = Array(UnsafeBufferPointer(start: x.pointer, count: B * D))
        let (v, dxv) = net.vjp(xs, t: t, y: y, cotangent: w)
        XCTAssertEqual(net.params.all.map(\.grads), before)
        // float rounding only (the helper's GEMMs may be shaped differently): 1e-4 relative
        for (a, b) in zip(dxv, dx) { XCTAssertEqual(a, b, accuracy: 1e-4 * max(1, abs(b))) }
        let v2 = net.velocity(xs, t: t, y: y)
        XCTAssertEqual(v, v2)
    }

    func testMLPGradients() throws { try gradientCheck(Self.mlpSmall) }

    func testSiTGradients() throws { try gradientCheck(Self.sitSmall) }

    func testUNetGradients() throws { try gradientCheck(Self.unetSmall) }

    /// The U-Net against its PyTorch twin (benchmarks/torch_models.py `UNet`), randomly
    /// initialised with every weight non-zero by scripts/make_unet_golden.py: the checkpoint loads
    /// by PyTorch's names (shape-checked, no tensor left over), and v and u^T dv/dx agree with
    /// PyTorch's float64 reference to 1e-4 of their largest entry (PyTorch's own float32 run is
    /// ~4e-6 from it).
    func testUNetMatchesPyTorchGolden() throws {
        let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden")
        let weights = try Checkpoint.read(folder.appendingPathComponent("unet_small.safetensors").path)
        let net = try VelocityNet.load(from: weights)
        XCTAssertTrue(net is UNetVelocity)
        XCTAssertEqual(Set(net.params.names), Set(weights.names), "every PyTorch tensor has a Swift parameter of that name")
        let g = try Checkpoint.read(folder.appendingPathComponent("unet_small_golden.safetensors").path)
        let x = try g["x"]!.floats(), u = try g["u"]!.floats(), t = try g["t"]!.floats()
        let y = try g["y"]!.int64s().map { Int($0) }
        let (v, dx) = net.vjp(x, t: t, y: y, cotangent: u)
        for (name, got) in [("v", v), ("dx", dx)] {
            let want = try g[name]!.floats()
            XCTAssertEqual(got.count, want.count)
            let scale = want.map(abs).max()!
            let err = zip(got, want).map { abs($0 - $1) }.max()!
            XCTAssertLessThanOrEqual(err, 1e-4 * scale, "\(name): max error \(err) against max |ref| \(scale)")
            print("unet golden \(name): max abs error \(err), relative \(err / scale)")
        }
    }

    func testInitialisationIsDeterministicAndZeroOutput() throws {
        for config in [Self.mlpSmall, Self.sitSmall, Self.unetSmall] {
            let a = try VelocityNet.make(config, seed: 3), b = try VelocityNet.make(config, seed: 3)
            let c = try VelocityNet.make(config, seed: 4)
            XCTAssertEqual(a.params.all.map(\.values), b.params.all.map(\.values))
            XCTAssertNotEqual(a.params.all.map(\.values), c.params.all.map(\.values))
            // adaLN-Zero: the untrained network outputs exactly zero
            let x = (0..<(2 * config.sampleDimension)).map { Float($0 % 7) - 3 }
            XCTAssertTrue(a.velocity(x, t: [0.2, 0.8], y: [1, config.numClasses]).allSatisfy { $0 == 0 })
            let last = config.arch == "unet" ? "conv_out.weight" : "final_layer.linear.weight"
            XCTAssertTrue(a.params[last]!.values.allSatisfy { $0 == 0 })
            XCTAssertEqual(a.velocity([], t: [], y: []), [], "an empty batch is fine")
        }
    }

    /// Samples do not leak into each other: a batch gives the per-sample results.
    func testBatchRowsAreIndependent() throws {
        for config in [Self.mlpSmall, Self.sitSmall, Self.unetSmall] {
            var g = GradCheck()
            let net = try VelocityNet.make(config, seed: 9)
            for p in net.params.trainable { p.randomize(&g, std: 0.3) }
            let D = config.sampleDimension
            let x = g.randoms(3 * D), u = g.randoms(3 * D)
            let t: [Float] = [0.2, 0.6, 1], y = [1, config.numClasses, 0]
            let (v, dx) = net.vjp(x, t: t, y: y, cotangent: u)
            for b in 0..<3 {
                let r = (b * D)..<((b + 1) * D)
                let (vb, dxb) = net.vjp(Array(x[r]), t: [t[b]], y: [y[b]], cotangent: Array(u[r]))
                for (a, c) in zip(vb, v[r]) { XCTAssertEqual(a, c, accuracy: 1e-5 * max(1, abs(c))) }
                for (a, c) in zip(dxb, dx[r]) { XCTAssertEqual(a, c, accuracy: 1e-5 * max(1, abs(c))) }
            }
        }
    }

    /// With the fixed inference chunk, a sample's velocity and VJP are bit-identical whether it
    /// comes alone, in a small batch or in a batch spanning several chunks (sit-tiny, mlp-tiny),
    /// for the OpenBLAS kernels where that was verified (Prescott, this machine's default,
    /// SkylakeX, Cooperlake, Sandybridge; 1 and 2 threads). The Haswell/Zen kernels give results
    /// that depend on a row's position in the GEMM (~1e-6); there only closeness is asserted.
    /// Without chunking (inferenceChunk = 0) the last bits change with the batch; only reported.
    func testBatchInvariance() throws {
        let bitExact = ["Prescott", "SkylakeX", "Cooperlake", "Sandybridge"].contains(BLAS.coreName)
        func same(_ a: [Float], _ b: [Float], _ what: String) {
            if bitExact {
                XCTAssertEqual(a, b, what)
            } else {
                XCTAssertEqual(a.count, b.count)
                for (p, q) in zip(a, b) { XCTAssertEqual(p, q, accuracy: 1e-5 * max(1, abs(q)), what) }
            }
        }
        for name in ["sit-tiny", "mlp-tiny", "unet-tiny"] {
            let net = try VelocityNet.make(ModelConfig.named(name)!, seed: 0)
            net.inferenceChunk = 16
            var g = GradCheck()
            for p in net.params.trainable { p.randomize(&g, std: 0.05) }
            let B = 35, D = 784
            let x = g.randoms(B * D), u = g.randoms(B * D)
            let t = (0..<B).map { Float($0) / Float(B) }, y = (0..<B).map { $0 % 11 }
            let (all, dall) = net.vjp(x, t: t, y: y, cotangent: u)
            let digest = SHA256.hex(all.withUnsafeBytes { Array($0) } + dall.withUnsafeBytes { Array($0) })
            print("\(name) (OpenBLAS \(BLAS.coreName), \(BLAS.threads) threads): sha256 of v and vjp \(digest.prefix(16))")
            for (start, n) in [(0, 1), (5, 1), (3, 4), (34, 1), (2, 29)] {
                let r = (start * D)..<((start + n) * D)
                let (part, dpart) = net.vjp(Array(x[r]), t: Array(t[start..<(start + n)]), y: Array(y[start..<(start + n)]), cotangent: Array(u[r]))
                same(part, Array(all[r]), "\(name): velocity of samples \(start)..<\(start + n)")
                same(dpart, Array(dall[r]), "\(name): vjp of samples \(start)..<\(start + n)")
                same(net.velocity(Array(x[r]), t: Array(t[start..<(start + n)]), y: Array(y[start..<(start + n)])), Array(all[r]), "\(name): velocity")
            }
            net.inferenceChunk = 0
            let whole = net.velocity(x, t: t, y: y)
            let alone = net.velocity(Array(x[0..<D]), t: [t[0]], y: [y[0]])
            let diff = zip(alone, whole[0..<D]).map { abs($0 - $1) }.max()!
            XCTAssertLessThan(diff, 1e-4)
            print("\(name) (OpenBLAS \(BLAS.coreName)) without chunking: max |v alone - v in batch of \(B)| = \(diff)")
        }
    }

    /// The layers' hand loops split over `Parallel.workers` (the tools' --threads): every item is
    /// computed as in the single loop, so the forward pass, the input gradient and every parameter
    /// gradient are the same bytes for 1, 2 and 3 workers.
    func testLayerLoopsSplitOverWorkersGiveTheSameBytes() throws {
        defer { Parallel.setWorkers(1) }
        for name in ["sit-tiny", "mlp-tiny"] {
            let net = try VelocityNet.make(ModelConfig.named(name)!, seed: 0)
            var g = GradCheck()
            for p in net.params.trainable { p.randomize(&g, std: 0.05) }
            let B = 40, D = net.sampleDimension
            let x = Buffer(B * D)
            x.pointer.update(from: g.randoms(B * D), count: B * D)
            let w = g.randoms(B * D)
            let t = (0..<B).map { Float($0) / Float(B) }, y = (0..<B).map { $0 % 11 }
            func pass(_ workers: Int) -> [[Float]] {
                Parallel.setWorkers(workers)
                net.params.zeroGrad()
                let v = Array(UnsafeBufferPointer(start: net.forward(x.pointer, t: t, y: y, batch: B), count: B * D))
                let dx = Array(UnsafeBufferPointer(start: net.backward(w), count: B * D))
                return [v, dx] + net.params.trainable.map(\.grads)
            }
            let one = pass(1)
            XCTAssertGreaterThan(one[1].map(abs).max()!, 0, "\(name): a zero input gradient proves nothing")
            for k in [2, 3] {
                let split = pass(k)
                XCTAssertEqual(split.count, one.count)
                for (i, (a, b)) in zip(split, one).enumerated() {
                    XCTAssertEqual(a, b, "\(name): output \(i) differs with \(k) workers")
                }
            }
        }
    }

    /// Sampling (velocity/vjp on the borrowed replicas) computes the MLP's conditioning once per
    /// distinct (t, y) pair of a chunk: with many repeated pairs (one time, 11 labels) and more
    /// than one 16-row group of pairs (two times), it agrees with the training forward to
    /// rounding, and a sample's velocity is the same bytes alone as in the batch (on the kernels where
    /// `testBatchInvariance` is bit-exact).
    func testMLPSharedConditioningMatchesTheTrainingForward() throws {
        let net = try VelocityNet.make(ModelConfig.named("mlp-tiny")!, seed: 0)
        var g = GradCheck()
        for p in net.params.trainable { p.randomize(&g, std: 0.05) }
        let D = net.sampleDimension
        for times in [[Float(0.4)], [0.25, 0.75]] {
            let B = 150
            let x = g.randoms(B * D)
            let t = (0..<B).map { times[$0 % times.count] }, y = (0..<B).map { ($0 / times.count) % 11 }
            let v = net.velocity(x, t: t, y: y)
            let reference = x.withUnsafeBufferPointer { Array(UnsafeBufferPointer(start: net.forward($0.baseAddress!, t: t, y: y, batch: B), count: B * D)) }
            for (a, b) in zip(v, reference) { XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(b))) }
            let alone = net.velocity(Array(x[(7 * D)..<(8 * D)]), t: [t[7]], y: [y[7]])
            if ["Prescott", "SkylakeX", "Cooperlake", "Sandybridge"].contains(BLAS.coreName) {  // as testBatchInvariance
                XCTAssertEqual(alone, Array(v[(7 * D)..<(8 * D)]))
            } else {
                for (a, b) in zip(alone, v[(7 * D)..<(8 * D)]) { XCTAssertEqual(a, b, accuracy: 1e-5 * max(1, abs(b))) }
            }
        }
    }

    func testConcurrentVelocityMatchesSerial() throws {
        var g = GradCheck()
        let net = try VelocityNet.make(Self.sitSmall, seed: 1)
        for p in net.params.trainable { p.randomize(&g, std: 0.3) }
        let D = net.sampleDimension, B = 2
        let inputs = (0..<6).map { _ in g.randoms(B * D) }
        let serial = inputs.map { net.velocity($0, t: [0.3, 0.7], y: [0, 1]) }
        var parallel = [[Float]](repeating: [], count: inputs.count)
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: inputs.count) { i in
            let v = net.velocity(inputs[i], t: [0.3, 0.7], y: [0, 1])
            lock.lock(); parallel[i] = v; lock.unlock()
        }
        XCTAssertEqual(parallel, serial)
    }

    /// The exact parameter names and shapes of facebookresearch/DiT's `DiT` (learn_sigma=False)
    /// for sit-tiny on 28x28x1, 10 classes.
    func testSiTTinyNamesShapesAndCheckpointRoundTrip() throws {
        let config = ModelConfig.named("sit-tiny")!
        let net = try VelocityNet.make(config, seed: 11)
        var expected: [String: [Int]] = [
            "x_embedder.proj.weight": [128, 1, 4, 4], "x_embedder.proj.bias": [128],
            "pos_embed": [1, 49, 128],
            "t_embedder.mlp.0.weight": [128, 256], "t_embedder.mlp.0.bias": [128],
            "t_embedder.mlp.2.weight": [128, 128], "t_embedder.mlp.2.bias": [128],
            "y_embedder.embedding_table.weight": [11, 128],
            "final_layer.linear.weight": [16, 128], "final_layer.linear.bias": [16],
            "final_layer.adaLN_modulation.1.weight": [256, 128], "final_layer.adaLN_modulation.1.bias": [256],
        ]
        for i in 0..<4 {
            let b = "blocks.\(i)."
            expected[b + "attn.qkv.weight"] = [384, 128]; expected[b + "attn.qkv.bias"] = [384]
            expected[b + "attn.proj.weight"] = [128, 128]; expected[b + "attn.proj.bias"] = [128]
            expected[b + "mlp.fc1.weight"] = [512, 128]; expected[b + "mlp.fc1.bias"] = [512]
            expected[b + "mlp.fc2.weight"] = [128, 512]; expected[b + "mlp.fc2.bias"] = [128]
            expected[b + "adaLN_modulation.1.weight"] = [768, 128]; expected[b + "adaLN_modulation.1.bias"] = [768]
        }
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: net.params.all.map { ($0.name, $0.shape) }), expected)
        XCTAssertEqual(net.params.trainable.count, expected.count - 1, "pos_embed is not trained")

        var g = GradCheck()
        for p in net.params.trainable { p.randomize(&g, std: 0.05) }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("layers-test-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("sit.safetensors").path
        try net.save(to: path, metadata: ["step": "5"])
        let record = try Checkpoint.read(path)
        XCTAssertEqual(record.metadata["step"], "5")
        XCTAssertEqual(try ModelConfig.from(json: record.metadata["config"]!), config)
        let back = try VelocityNet.load(path: path)
        XCTAssertTrue(back is SiTVelocity)
        XCTAssertEqual(back.config, config)
        for p in net.params.all { XCTAssertEqual(back.params[p.name]!.values, p.values, p.name) }
        let x = g.randoms(2 * 784)
        XCTAssertEqual(back.velocity(x, t: [0.5, 0.9], y: [3, 10]), net.velocity(x, t: [0.5, 0.9], y: [3, 10]))
        // a wrong shape or a missing tensor is a clear error
        var broken = record
        broken["final_layer.linear.bias"] = Tensor([Float](repeating: 0, count: 8), shape: [8])
        XCTAssertThrowsError(try VelocityNet.load(from: broken)) { XCTAssertTrue("\($0)".contains("final_layer.linear.bias")) }
        broken["final_layer.linear.bias"] = nil
        XCTAssertThrowsError(try VelocityNet.load(from: broken))
        var noConfig = record
        noConfig.metadata["config"] = nil
        XCTAssertThrowsError(try VelocityNet.load(from: noConfig))
    }

    func testMLPCheckpointRoundTrip() throws {
        let net = try VelocityNet.make(ModelConfig.named("mlp-tiny")!, seed: 2)
        var g = GradCheck()
        for p in net.params.trainable { p.randomize(&g, std: 0.05) }
        let record = try RecordCodec.decode(RecordCodec.encode(net.checkpointRecord()))
        let back = try VelocityNet.load(from: record)
        XCTAssertTrue(back is MLPVelocity)
        XCTAssertEqual(back.params.names, net.params.names)
        XCTAssertTrue(net.params.names.contains("blocks.2.adaLN_modulation.1.weight"))
        XCTAssertEqual(net.params["input_proj.weight"]!.shape, [256, 784])
        let x = g.randoms(3 * 784)
        XCTAssertEqual(back.velocity(x, t: [0, 0.5, 1], y: [0, 9, 10]), net.velocity(x, t: [0, 0.5, 1], y: [0, 9, 10]))
    }

    func testConfigValidationAndNames() throws {
        XCTAssertThrowsError(try ModelConfig.from(json: "{\"arch\":\"unet\"}"))
        XCTAssertThrowsError(try ModelConfig.from(json: "{\"arch\":\"sit\",\"hidden_size\":64}"), "image shape is required")
        let minimal = try ModelConfig.from(json: "{\"arch\":\"sit\",\"channels\":1,\"height\":28,\"width\":28,\"num_classes\":10,\"hidden_size\":128,\"depth\":4}")
        XCTAssertEqual(minimal, ModelConfig.named("sit-tiny")!)
        var bad = ModelConfig.named("sit-tiny")!
        bad.patch = 5
        XCTAssertThrowsError(try bad.validate())
        for name in ModelConfig.names { XCTAssertNoThrow(try ModelConfig.named(name)!.validate()) }
        let json = ModelConfig.named("sit-small")!.json()
        XCTAssertTrue(json.contains("\"hidden_size\":256") && json.contains("\"num_classes\":10"), json)
        let net = try VelocityNet.make(ModelConfig.named("sit-tiny")!, seed: 0)
        XCTAssertThrowsError(try net.validate(t: [0.5], y: [11], batch: 1))
        XCTAssertNoThrow(try net.validate(t: [0.5], y: [10], batch: 1))
        var rng = CounterRNG(seed: 1)
        let dropped = net.dropLabels(Array(repeating: 3, count: 1000), probability: 0.1, rng: &rng)
        XCTAssertTrue(dropped.allSatisfy { $0 == 3 || $0 == 10 })
        XCTAssertEqual(Double(dropped.filter { $0 == 10 }.count), 100, accuracy: 40)
    }

    /// Named sizes on real-sized input: finite outputs, and a rough timing for the record.
    func testSiTTinyTrainingStepTiming() throws {
        let net = try VelocityNet.make(ModelConfig.named("sit-tiny")!, seed: 0)
        var g = GradCheck()
        for p in net.params.trainable where p.name.contains("adaLN") || p.name.hasPrefix("final_layer.linear") { p.randomize(&g, std: 0.02) }
        let B = 32, D = 784
        let x = Buffer(B * D)
        x.pointer.update(from: g.randoms(B * D), count: B * D)
        let t = (0..<B).map { Float($0) / Float(B) }, y = (0..<B).map { $0 % 11 }
        let dv = g.randoms(B * D)
        net.forward(x.pointer, t: t, y: y, batch: B)
        net.backward(dv)
        let reps = Int(ProcessInfo.processInfo.environment["DRL_TIMING_REPS"] ?? "") ?? 3
        var start = Date()
        for _ in 0..<reps {
            let v = net.forward(x.pointer, t: t, y: y, batch: B)
            XCTAssertTrue((0..<(B * D)).allSatisfy { v[$0].isFinite })
            net.backward(dv)
        }
        let ms = Date().timeIntervalSince(start) / Double(reps) * 1000
        start = Date()
        for _ in 0..<reps { net.forward(x.pointer, t: t, y: y, batch: B) }
        let fms = Date().timeIntervalSince(start) / Double(reps) * 1000
        print("sit-tiny batch \(B), BLAS threads \(BLAS.threads): forward+backward \(String(format: "%.1f", ms)) ms, forward \(String(format: "%.1f", fms)) ms")
    }

    /// Writes checkpoints and reference outputs for `benchmarks/numpy_reference.py` when
    /// DRL_PARITY_DIR is set (the default test run skips it).
    func testDumpForNumpyParity() throws {
        guard let dir = ProcessInfo.processInfo.environment["DRL_PARITY_DIR"] else { return }
        for config in [Self.mlpSmall, Self.sitSmall] {
            var g = GradCheck()
            let net = try VelocityNet.make(config, seed: 5)
            for p in net.params.trainable { p.randomize(&g, std: 0.3) }
            let B = 3, D = config.sampleDimension
            let x = g.randoms(B * D), u = g.randoms(B * D)
            let t: [Float] = [0.05, 0.5, 0.97], y = [0, 2, config.numClasses]
            let (v, dx) = net.vjp(x, t: t, y: y, cotangent: u)
            try net.save(to: "\(dir)/\(config.arch).safetensors")
            let shape = [B, config.channels, config.height, config.width]
            let io = Record([("x", Tensor(x, shape: shape)), ("t", Tensor(t, shape: [B])), ("y", Tensor(y.map { Int64($0) }, shape: [B])),
                             ("v", Tensor(v, shape: shape)), ("u", Tensor(u, shape: shape)), ("dx", Tensor(dx, shape: shape))])
            try Checkpoint.write(io, to: "\(dir)/\(config.arch).io.safetensors")
        }
    }
}
