import ArgumentParser
import Foundation
import Shared

struct Embed: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "embed",
        abstract: "Add encoder features `feat` to every record of a stream; train encoders; linear probes.",
        discussion: """
        `embed --encoder E.safetensors` reads a stream whose records carry `x` F32 [B,C,H,W], adds \
        `feat` F32 [B,D] and metadata `encoder` (the SHA-256 of E), and passes every other tensor and \
        metadata key through. `--pixels` gives identity features (encoder "pixels").

        Examples:
          embed --encoder /work/runs/enc-simclr.safetensors -i test.tzst -o test-feat.tzst
          sample ... | embed --encoder enc.safetensors --threads 1 | discrim score ...
          embed train --kind classifier -i train.tzst -o enc-classifier.safetensors --steps 3000
          embed probe --train train-feat.tzst --test test-feat.tzst
          sample --model m.safetensors --n 2000 | embed classify --encoder enc-classifier.safetensors \\
                 --report consistency.json > /dev/null
        """,
        version: Toolkit.version,
        subcommands: [Apply.self, Train.self, Probe.self, Classify.self],
        defaultSubcommand: Apply.self
    )
}

/// --kind of `embed train`.
enum EncoderKind: String, CaseIterable, ExpressibleByArgument { case classifier, simclr }

extension Embed {
    struct Apply: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "apply",
            abstract: "Add `feat` to every record (the default subcommand: `embed --encoder E`)."
        )

        @Option(name: .customLong("encoder"), help: "Encoder checkpoint: written by `embed train`, or a pretrained Inception-v3 (pytorch-fid) or DINOv2 converted by scripts/convert_weights.py.")
        var encoder: String?
        @Flag(name: .customLong("pixels"), help: "Identity features: feat = x flattened.")
        var pixels = false
        // Each encoder keeps its own default: 64 for the toolkit's small CNNs, 8 for Inception and
        // DINOv2, whose activations are ~110 MB an image (a 64-image chunk held 6.8 GB per worker).
        @Option(name: .customLong("chunk"), help: ArgumentHelp("Samples per forward pass per worker (features do not depend on it; memory grows with it).", discussion: "Default: 64 for encoders written by `embed train`, 8 for Inception-v3 and DINOv2."))
        var chunk: Int?

        @OptionGroup var input: InputOptions
        @OptionGroup var output: OutputOptions
        @OptionGroup var threads: ThreadOptions
        @OptionGroup var progress: ProgressOptions

        func validate() throws {
            if pixels == (encoder != nil) { throw ValidationError("give exactly one of --encoder FILE and --pixels") }
            if let chunk, chunk < 1 { throw ValidationError("--chunk must be at least 1") }
        }

        func run() throws {
            // Workers run single-threaded GEMMs side by side: small convolutions scale better
            // across samples than inside one GEMM.
            BLAS.setThreads(1)
            var enc: FeatureEncoder?
            // Pretrained standard encoders (Inception, DINOv2) resize any image, so they are
            // built for the shape of the first record.
            var standard: Record?
            if let encoder {
                let record = try Checkpoint.read(encoder)
                if [InceptionFIDEncoder.arch, DINOv2Encoder.arch].contains(record.metadata["arch"] ?? "") {
                    standard = record
                } else {
                    let conv = try ConvEncoder.load(path: encoder)
                    conv.parallelism = threads.count
                    if let chunk { conv.inferenceChunk = chunk }
                    enc = conv
                }
            }
            let reader = try input.reader()
            let writer = try output.writer()
            // An output record depends only on its input record: one zstd frame per record, so
            // the outputs of shards that split the input at record boundaries join with `cat`
            // into exactly the bytes of one run (pipelines/shard.sh).
            writer.framePerRecord = true
            let bar = Progress(label: "embed", enabled: progress.showProgress)
            var xbuf = [Float]()
            while var record = try reader.read() {
                let x = try record.require("x", by: "embed")
                guard x.shape.count >= 2 else {
                    throw ToolError("record \(reader.recordsRead): `x` has shape \(x.shape); expected images [B,C,H,W]")
                }
                if enc == nil, let encoder, standard != nil {
                    standard = nil
                    guard var p = try Encoders.load(path: encoder, inputShape: Array(x.shape.dropFirst())) as? ParallelFeatureEncoder else {
                        throw ToolError("\(encoder) is not a pretrained encoder")
                    }
                    p.parallelism = threads.count
                    if let chunk { p.inferenceChunk = chunk }
                    enc = p
                }
                if enc == nil { enc = PixelEncoder(inputShape: Array(x.shape.dropFirst())) }
                let e = enc!
                guard Array(x.shape.dropFirst()) == e.inputShape else {
                    throw ToolError("record \(reader.recordsRead): `x` has shape \(x.shape) but the encoder expects [B,\(e.inputShape.map(String.init).joined(separator: ","))]")
                }
                let b = x.shape[0], D = e.featureDimension
                if x.dtype == .f32 {
                    xbuf = try x.withFloats { Array($0) }
                } else {
                    xbuf = try x.floats()
                }
                if xbuf.contains(where: { !$0.isFinite }) {
                    throw ToolError("record \(reader.recordsRead): `x` holds NaN or Inf")
                }
                var feat = [Float](repeating: 0, count: b * D)
                if b > 0 {
                    xbuf.withUnsafeBufferPointer { xp in feat.withUnsafeMutableBufferPointer { e.features(xp.baseAddress!, batch: b, into: $0.baseAddress!) } }
                }
                record["feat"] = Tensor(feat, shape: [b, D])
                record.metadata["encoder"] = e.digest
                try writer.write(record)
                bar.advance(b, unit: "images")
            }
            try writer.finish()
        }
    }

    struct Train: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "train",
            abstract: "Train an encoder from a data stream of `x` (and `y` for the classifier).",
            discussion: """
            --kind classifier: supervised CNN on the labels (features: penultimate layer, 128-d).
            --kind simclr: contrastive (NT-Xent) on augmented views, no labels (features: 256-d).
            The checkpoint holds the weights under PyTorch names and metadata `config` (JSON), `kind`,
            `step`, `seed`, `tool`, `source`. Metrics: one JSON line per --log-every steps.
            """
        )

        @Option(name: .customLong("kind"), help: ArgumentHelp("Encoder to train.", valueName: "kind"))
        var kindChoice: EncoderKind
        var kind: String { kindChoice.rawValue }
        @OptionGroup var input: InputOptions
        @Option(name: [.short, .customLong("output")], help: "Encoder checkpoint to write.")
        var output: String
        @Option(name: .customLong("steps"), help: "Optimizer steps.")
        var steps = 3000
        @Option(name: .customLong("batch"), help: "Images per step (SimCLR uses two views of each).")
        var batch = 128
        @Option(name: .customLong("lr"), help: "Peak learning rate (AdamW; linear warmup, cosine decay).")
        var lr: Float = 2e-3
        @Option(name: .customLong("weight-decay"), help: "AdamW weight decay on weight matrices.")
        var weightDecay: Float = 1e-4
        @Option(name: .customLong("warmup"), help: "Warmup steps.")
        var warmup = 100
        @Option(name: .customLong("seed"), help: "Seed for the initialisation, minibatches and augmentations.")
        var seed: UInt64 = 0
        @Option(name: .customLong("limit"), help: "Use at most this many images (0: all).")
        var limit = 0
        @Option(name: .customLong("metrics"), help: "Write metrics as JSON lines to this file.")
        var metrics: String?
        @Option(name: .customLong("log-every"), help: "Steps between metric lines.")
        var logEvery = 50
        @OptionGroup var threads: ThreadOptions
        @OptionGroup var progress: ProgressOptions

        func validate() throws {
            guard EncoderConfig.preset(kind) != nil else { throw ValidationError("--kind must be classifier or simclr") }
            guard steps >= 1, batch >= 2, lr > 0, lr.isFinite, warmup >= 0, limit >= 0, logEvery >= 1, weightDecay >= 0 else {
                throw ValidationError("--steps, --batch (>= 2), --lr, --warmup, --limit and --log-every must be positive")
            }
        }

        func run() throws {
            threads.apply()
            let reader = try input.reader()
            var images = [Float](), labels = [Int]()
            var shape: [Int]?
            var haveLabels = true
            while let record = try reader.read() {
                let x = try record.require("x", by: "embed train")
                guard x.shape.count == 4 else { throw ToolError("`x` has shape \(x.shape); expected images [B,C,H,W]") }
                if shape == nil { shape = Array(x.shape.dropFirst()) }
                guard Array(x.shape.dropFirst()) == shape! else { throw ToolError("`x` changes shape from \(shape!) to \(Array(x.shape.dropFirst()))") }
                let v = try x.floats()
                if v.contains(where: { !$0.isFinite }) { throw ToolError("`x` holds NaN or Inf") }
                images += v
                if let y = record["y"] {
                    guard y.shape == [x.shape[0]] else { throw ToolError("`y` has shape \(y.shape), expected [\(x.shape[0])]") }
                    labels += try y.int64s().map { Int($0) }
                } else {
                    haveLabels = false
                }
                if limit > 0 && images.count >= limit * shape!.reduce(1, *) { break }
            }
            guard let shape else { throw ToolError("\(reader.name) holds no images") }
            let per = shape.reduce(1, *)
            if limit > 0 && images.count > limit * per {
                images.removeLast(images.count - limit * per)
                if haveLabels { labels.removeLast(labels.count - limit) }
            }
            if kind == "classifier" && !haveLabels { throw ToolError("--kind classifier needs labels `y` in every record") }
            let numClasses = haveLabels ? max(2, (labels.max() ?? 0) + 1) : 10
            guard var config = EncoderConfig.preset(kind, channels: shape[0], height: shape[1], width: shape[2], numClasses: numClasses) else {
                throw ToolError("unknown kind \(kind)")
            }
            config.numClasses = kind == "classifier" ? numClasses : 0
            let enc = try ConvEncoder(config: config, seed: seed)
            var opts = EncoderTrainingOptions(steps: steps, batch: batch, lr: lr, seed: seed)
            opts.weightDecay = weightDecay
            opts.warmup = min(warmup, steps)
            opts.logEvery = logEvery
            let metricsFile = try metrics.map { try TextFile(path: $0, truncate: true) }
            let start = Date()
            let show = progress.showProgress || !progress.quiet
            try EncoderTrainer.train(enc, images: images, labels: haveLabels ? labels : nil, options: opts) { entry in
                try metricsFile?.write(entry.json + "\n")
                if show { printError("embed train: \(entry.json)") }
            }
            try metricsFile?.close()
            let seconds = Date().timeIntervalSince(start)
            try enc.save(to: output, metadata: [
                "tool": "embed train", "version": Toolkit.version, "step": String(steps), "seed": String(seed),
                "source": reader.name, "batch": String(batch), "lr": String(lr),
                "train_images": String(images.count / per), "train_seconds": String(format: "%.1f", seconds),
            ])
            if show { printError("embed train: wrote \(output) (sha256 \(enc.digest)) in \(String(format: "%.1f", seconds)) s") }
        }
    }

    struct Probe: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "probe",
            abstract: "Linear-probe accuracy: logistic regression on `feat` of a train stream, evaluated on a test stream.",
            discussion: "Both streams need `feat` [B,D] and `y` [B] (run `embed` first). Features are standardised with the train split's statistics."
        )

        @Option(name: .customLong("train"), help: "Feature stream with labels to fit on.")
        var train: String
        @Option(name: .customLong("test"), help: "Feature stream with labels to evaluate on.")
        var test: String
        @Option(name: .customLong("epochs"), help: "Passes over the train split.")
        var epochs = 30
        @Option(name: .customLong("seed"), help: "Seed for the minibatch order.")
        var seed: UInt64 = 0
        @Flag(name: .customLong("json"), help: "One JSON object instead of text.")
        var json = false
        @OptionGroup var threads: ThreadOptions

        func validate() throws {
            guard epochs >= 1 else { throw ValidationError("--epochs must be >= 1") }
        }

        func read(_ path: String) throws -> (feat: [Float], labels: [Int], dim: Int, encoder: String?) {
            let reader = try TensorStreamReader(path: path)
            var feat = [Float](), labels = [Int](), dim: Int?
            var encoder: String?
            while let r = try reader.read() {
                let f = try r.require("feat", by: "embed probe"), y = try r.require("y", by: "embed probe")
                guard f.shape.count == 2, y.shape == [f.shape[0]] else { throw ToolError("\(path): `feat` \(f.shape) and `y` \(y.shape) do not fit [B,D] and [B]") }
                if dim == nil { dim = f.shape[1] }
                guard f.shape[1] == dim! else { throw ToolError("\(path): feature dimension changes from \(dim!) to \(f.shape[1])") }
                let v = try f.floats()
                if v.contains(where: { !$0.isFinite }) { throw ToolError("\(path): `feat` holds NaN or Inf") }
                feat += v
                labels += try y.int64s().map { Int($0) }
                encoder = r.metadata["encoder"] ?? encoder
            }
            guard let dim, !labels.isEmpty else { throw ToolError("\(path) holds no features") }
            return (feat, labels, dim, encoder)
        }

        func run() throws {
            threads.apply()
            let a = try read(train), b = try read(test)
            guard a.dim == b.dim else { throw ToolError("feature dimensions differ: \(train) has \(a.dim), \(test) has \(b.dim)") }
            if let ea = a.encoder, let eb = b.encoder, ea != eb {
                throw ToolError("\(train) and \(test) come from different encoders (\(ea.prefix(12)) vs \(eb.prefix(12)))")
            }
            var probe = LinearProbe()
            probe.epochs = epochs
            probe.seed = seed
            let start = Date()
            let r = try probe.fit(train: a.feat, trainLabels: a.labels, test: b.feat, testLabels: b.labels, dim: a.dim)
            let secs = Date().timeIntervalSince(start)
            if json {
                try printLine(String(format: "{\"test_accuracy\":%.4f,\"train_accuracy\":%.4f,\"train_loss\":%.4f,\"dim\":%d,\"classes\":%d,\"train_n\":%d,\"test_n\":%d,\"seconds\":%.1f,",
                             r.testAccuracy, r.trainAccuracy, r.trainLoss, r.dim, r.classes, r.trainCount, r.testCount, secs) + "\"encoder\":\"\(a.encoder ?? "")\"}")
            } else {
                try printLine("linear probe (logistic regression, \(epochs) epochs) on d = \(r.dim), \(r.classes) classes")
                try printLine(String(format: "  train accuracy  %.4f  (n = %d, loss %.4f)", r.trainAccuracy, r.trainCount, r.trainLoss))
                try printLine(String(format: "  test accuracy   %.4f  (n = %d)", r.testAccuracy, r.testCount))
                try printLine("  encoder         \(a.encoder ?? "unknown")")
            }
        }
    }

    struct Classify: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "classify",
            abstract: "Add a classifier encoder's `logits` and predicted class `pred` to every record; report agreement with `y`.",
            discussion: """
            Adds `logits` F32 [B,K] and `pred` I64 [B] (the argmax) and passes everything else through. \
            With --report FILE it also writes one JSON object: n, accuracy (the fraction of samples \
            whose `pred` equals their `y`: for generated samples, the class consistency of a \
            class-conditional model), per-class accuracy and counts, and the encoder digest. Needs an \
            encoder with a classifier head (`embed train --kind classifier`); records without `y` \
            are passed through but make the report an error.
            """
        )

        @Option(name: .customLong("encoder"), help: "Classifier checkpoint (`embed train --kind classifier`).")
        var encoder: String
        @Option(name: .customLong("report"), help: "Write the agreement of `pred` with `y` as JSON to this file (atomically).")
        var report: String?
        @OptionGroup var input: InputOptions
        @OptionGroup var output: OutputOptions
        @OptionGroup var threads: ThreadOptions
        @OptionGroup var progress: ProgressOptions

        func run() throws {
            BLAS.setThreads(1)
            let enc = try ConvEncoder.load(path: encoder)
            guard enc.head != nil, enc.config.numClasses >= 2 else {
                throw ToolError("\(encoder) has no classifier head (kind \(enc.config.kind)); train one with `embed train --kind classifier`")
            }
            enc.parallelism = threads.count
            let K = enc.config.numClasses
            let reader = try input.reader()
            let writer = try output.writer()
            let bar = Progress(label: "embed classify", enabled: progress.showProgress)
            var total = 0, correct = 0
            var perClassN = [Int](repeating: 0, count: K), perClassCorrect = [Int](repeating: 0, count: K)
            while var record = try reader.read() {
                let x = try record.require("x", by: "embed classify")
                guard Array(x.shape.dropFirst()) == enc.inputShape, x.shape.count == 4 else {
                    throw ToolError("record \(reader.recordsRead): `x` has shape \(x.shape) but the encoder expects [B,\(enc.inputShape.map(String.init).joined(separator: ","))]")
                }
                let b = x.shape[0]
                let xs = try x.floats()
                if xs.contains(where: { !$0.isFinite }) { throw ToolError("record \(reader.recordsRead): `x` holds NaN or Inf") }
                let feat = enc.features(xs, batch: b)
                let logits = enc.classLogits(features: feat, batch: b)!
                var pred = [Int64](repeating: 0, count: b)
                for i in 0..<b {
                    var best = 0
                    for k in 1..<K where logits[i * K + k] > logits[i * K + best] { best = k }
                    pred[i] = Int64(best)
                }
                if let y = record["y"] {
                    guard y.shape == [b] else { throw ToolError("record \(reader.recordsRead): `y` has shape \(y.shape), expected [\(b)]") }
                    for (i, label) in try y.int64s().enumerated() {
                        total += 1
                        let hit = label == pred[i]
                        if hit { correct += 1 }
                        if label >= 0 && label < K {
                            perClassN[Int(label)] += 1
                            if hit { perClassCorrect[Int(label)] += 1 }
                        }
                    }
                } else if b > 0 && report != nil {
                    // Refused before the output is finished, so no -o file appears.
                    throw ToolError("record \(reader.recordsRead): --report needs `y` in every record")
                }
                record["logits"] = Tensor(logits, shape: [b, K])
                record["pred"] = Tensor(pred, shape: [b])
                record.metadata["classifier"] = enc.digest
                try writer.write(record)
                bar.advance(b, unit: "images")
            }
            if report != nil && total == 0 { throw ToolError("\(reader.name) holds no samples to report on") }
            try writer.finish()
            if let report {
                func ratio(_ a: Int, _ n: Int) -> String { n == 0 ? "null" : String(format: "%.4f", Double(a) / Double(n)) }
                let per = (0..<K).map { ratio(perClassCorrect[$0], perClassN[$0]) }.joined(separator: ",")
                let counts = perClassN.map(String.init).joined(separator: ",")
                let json = "{\"n\":\(total),\"accuracy\":\(ratio(correct, total)),\"per_class_accuracy\":[\(per)],\"per_class_n\":[\(counts)],\"classifier\":\"\(enc.digest)\"}\n"
                try AtomicFile.write(Array(json.utf8), to: report)
            }
        }
    }
}
