import ArgumentParser
import Foundation
import Shared

/// --head: the discriminator head.
enum HeadKind: String, CaseIterable, ExpressibleByArgument { case linear, mlp, quadratic }

struct Discrim: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "discrim",
        abstract: "Train a real-vs-generated discriminator on frozen features; score streams with its logit as `reward`.",
        discussion: """
        The head is DRL's class-conditional projection discriminator on encoder features:
        logit = psi(h) + <h, e(y)> + b(y), h = Linear(feat) to --width (512), or with --head mlp
        two GELU residual blocks on top. The logit estimates log p_data(x) / p_model(x).

        Examples:
          discrim train --real real.tzst --fake fake.tzst -o disc.safetensors
          sample ... --record | embed --encoder enc.safetensors | discrim score --model disc.safetensors --grad --encoder enc.safetensors
          discrim eval --real test-scored.tzst --fake base-scored.tzst     (held-out AUC and calibration)
        """,
        version: Toolkit.version,
        subcommands: [Train.self, Score.self, Eval.self]
    )
}

extension Discrim {
    struct Train: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fit the head: logistic loss (real = 1, fake = 0), optional R1, Adam, buffered epochs, held-out early stopping.",
            discussion: """
            Both inputs are streams with `feat` [B, D] and `y` [B] (and `x` for --r1) from the same
            encoder (metadata `encoder`). Prints one JSON report (held-out accuracy, AUC, mean logits)
            on stdout; the checkpoint records the encoder digest and the report.
            """)

        @Option(name: .customLong("real"), help: "Stream of real samples' features.") var real: String
        @Option(name: .customLong("fake"), help: "Stream of generated samples' features.") var fake: String
        @Option(name: [.short, .customLong("output")], help: "Discriminator checkpoint to write (.safetensors).") var output: String
        @Option(name: .customLong("head"), help: "linear (DRL), mlp (two GELU residual blocks) or quadratic (linear plus a diagonal quadratic form in h: a Gaussian log ratio).") var head: HeadKind = .linear
        @Option(name: .customLong("width"), help: "Width of h.") var width = 512
        @Option(name: .customLong("num-classes"), help: "Classes of the conditional head (default: largest label + 1; 0 = unconditional).") var numClasses: Int?
        @Option(name: .customLong("r1"), help: "R1 weight gamma: (gamma/2) |grad_x logit(real)|^2 through the encoder.") var r1 = 0.0
        @Option(name: .customLong("r1-every"), help: "Lazy R1: apply it, weighted K * gamma, on every K-th step only (StyleGAN2 uses 16); most of an R1 step's cost is the encoder's.") var r1Every = 1
        @Option(name: .customLong("encoder"), help: "Encoder checkpoint for R1 (or `pixels`); must match the features' digest.") var encoder: String?
        @Option(name: .customLong("lr"), help: "Adam learning rate.") var lr: Float = 1e-4
        @Option(name: .customLong("batch"), help: "Samples per side per minibatch.") var batch = 256
        @Option(name: .customLong("buffer-batches"), help: "Minibatch pairs per buffer refresh.") var bufferBatches = 20
        @Option(name: .customLong("buffer-epochs"), help: "Passes over each buffer.") var bufferEpochs = 10
        @Option(name: .customLong("max-steps"), help: "Maximum optimizer steps.") var maxSteps = 10_000
        @Option(name: .customLong("eval-every"), help: "Held-out evaluation period (steps).") var evalEvery = 50
        @Option(name: .customLong("patience"), help: "Stop after this many evaluations without a better held-out loss.") var patience = 15
        @Option(name: .customLong("holdout"), help: "Held-out fraction of each side (0: no early stopping).") var holdout = 0.1
        @Option(name: .customLong("seed"), help: "Seed for initialisation, split and batch order.") var seed: UInt64 = 0
        @Option(name: .customLong("init-from"), help: "Warm start: continue from this discriminator's weights and Adam state (same head, width, classes and encoder).") var initFrom: String?
        @OptionGroup var threads: ThreadOptions
        @Flag(name: .customLong("quiet"), help: "No evaluation log on stderr.") var quiet = false

        func validate() throws {
            if width < 1 || batch < 1 || bufferBatches < 1 || bufferEpochs < 1 || maxSteps < 1 || evalEvery < 1 || patience < 1 || r1Every < 1 {
                throw ValidationError("--width, --batch, --buffer-batches, --buffer-epochs, --max-steps, --eval-every, --patience and --r1-every must be positive")
            }
            if !(0..<1).contains(holdout) { throw ValidationError("--holdout must be in [0, 1)") }
            if !(r1 >= 0) || !r1.isFinite { throw ValidationError("--r1 must be >= 0") }
            if !(lr > 0) { throw ValidationError("--lr must be positive") }
        }

        func run() throws {
            threads.apply()
            let needImages = r1 > 0
            let r = try LabelledFeatures.read(TensorStreamReader(path: real), needImages: needImages, requireLabels: numClasses != 0, tool: "discrim train")
            let f = try LabelledFeatures.read(TensorStreamReader(path: fake), needImages: false, requireLabels: numClasses != 0, tool: "discrim train")
            guard r.count > 0 else { throw ToolError("\(real) holds no samples") }
            guard f.count > 0 else { throw ToolError("\(fake) holds no samples") }
            guard r.dim == f.dim else { throw ToolError("real features have d = \(r.dim), fake features d = \(f.dim)") }
            guard let enc = r.encoder else { throw ToolError("\(real) names no `encoder` in its metadata; features must say which encoder made them") }
            guard f.encoder == enc else { throw ToolError("real features come from encoder \(enc) but fake features from \(f.encoder ?? "(not named)")") }
            let classes = numClasses ?? ((r.labels + f.labels).max().map { $0 + 1 } ?? 0)
            var encoderModel: FeatureEncoder?
            if needImages {
                encoderModel = try Encoders.resolve(digest: enc, path: encoder, inputShape: r.imageShape!)
                guard encoderModel!.featureDimension == r.dim else { throw ToolError("the encoder makes d = \(encoderModel!.featureDimension) features, the streams hold d = \(r.dim)") }
            }
            let config = DiscriminatorConfig(head: head.rawValue, featureDim: r.dim, width: width, numClasses: classes)
            let h: ProjectionHead
            var optimizer: AdamW?
            var parent: String?
            if let initFrom {
                let record = try Checkpoint.read(initFrom)
                let (warm, warmEncoder) = try ProjectionHead.load(from: record, name: initFrom)
                guard warm.config == config else {
                    throw ToolError("--init-from \(initFrom) is a \(warm.config.json()) discriminator; these flags and features ask for \(config.json())")
                }
                guard warmEncoder == enc else {
                    throw ToolError("--init-from \(initFrom) was trained on encoder \(warmEncoder.prefix(12)), the features come from \(enc.prefix(12))")
                }
                h = warm
                let opt = AdamW(h.params, lr: lr, weightDecay: 0)
                // A checkpoint from before optimizer state was saved starts with fresh moments.
                if record.metadata[AdamW.stepKey] != nil { try opt.load(from: record) }
                optimizer = opt
                parent = try Checkpoint.digest(initFrom)
            } else {
                h = try ProjectionHead(config: config, seed: seed)
                optimizer = AdamW(h.params, lr: lr, weightDecay: 0)
            }
            var o = DiscriminatorTrainOptions()
            o.lr = lr; o.batch = batch; o.bufferBatches = bufferBatches; o.bufferEpochs = bufferEpochs
            o.maxSteps = maxSteps; o.evalEvery = evalEvery; o.patience = patience; o.holdout = holdout; o.r1 = r1; o.r1Every = r1Every; o.seed = seed
            let report = try DiscriminatorTrainer.train(head: h, real: r, fake: f, options: o, encoder: encoderModel, optimizer: optimizer) { step, ev in
                if !quiet { printError(String(format: "discrim train: step %d held-out bce %.4f acc %.4f auc %.4f", step, ev.bce, ev.accuracy, ev.auc)) }
            }
            var meta = ["tool": "discrim train", "version": Toolkit.version, "step": String(report.steps), "report": report.json, "seed": String(seed),
                        "r1": "\(r1)", "r1_every": String(r1Every), "real": real, "fake": fake]
            if let parent { meta[TrainingCheckpoint.parentKey] = parent }
            var checkpoint = h.checkpointRecord(encoder: enc, metadata: meta)
            optimizer?.save(into: &checkpoint)   // what a later --init-from continues
            // The checkpoint appears only once the report is out: an unwritable stdout leaves none.
            let pending = try Checkpoint.prepare(checkpoint, to: output)
            do { try printLine(report.json) } catch is BrokenPipe { try pending.commit(); throw BrokenPipe() }
            try pending.commit()
        }
    }

    struct Score: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add `reward` (the logit) to every record; --grad adds `reward.grad` = d logit / d x through the encoder.",
            discussion: "Everything else passes through. Features named with another encoder's digest are refused.")

        @Option(name: .customLong("model"), help: "Discriminator checkpoint.") var model: String
        @Flag(name: .customLong("grad"), help: "Also write `reward.grad` F32 [B, C, H, W] (needs `x` and the encoder).") var grad = false
        @Option(name: .customLong("encoder"), help: "Encoder checkpoint (needed for --grad unless the features are pixels).") var encoder: String?
        @OptionGroup var input: InputOptions
        @OptionGroup var output: OutputOptions
        @OptionGroup var threads: ThreadOptions

        func run() throws {
            threads.apply()
            let record = try Checkpoint.read(model)
            let (head, encDigest) = try ProjectionHead.load(from: record, name: model)
            let digest = try Checkpoint.digest(model)
            let reader = try input.reader()
            let writer = try output.writer()
            // One zstd frame per record (the scores of a record depend on that record alone), so
            // shards join with `cat` into the bytes of one run (pipelines/shard.sh).
            writer.framePerRecord = true
            var scorer: DiscriminatorScorer?
            while let r = try reader.read() {
                if scorer == nil {
                    var enc: FeatureEncoder?
                    if encoder != nil || encDigest == "pixels" {
                        let shape = r["x"].map { Array($0.shape.dropFirst()) }
                        if let shape {
                            enc = try Encoders.resolve(digest: encDigest, path: encoder, inputShape: shape)
                        } else if encoder != nil && encDigest != "pixels" {
                            enc = try Encoders.resolve(digest: encDigest, path: encoder, inputShape: [])
                        }
                        if let e = enc, e.featureDimension != head.config.featureDim {
                            throw ToolError("the encoder makes d = \(e.featureDimension) features but the discriminator expects d = \(head.config.featureDim)")
                        }
                    }
                    scorer = DiscriminatorScorer(head: head, encoderDigest: encDigest, encoder: enc, digest: digest)
                }
                try writer.write(scorer!.score(r, grad: grad))
            }
            try writer.finish()
        }
    }

    struct Eval: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Judge a discriminator on held-out scored streams: separation and calibration of its logit as a density ratio.",
            discussion: """
            Both inputs are streams scored by `discrim score` (tensor `reward`, the logit), e.g. test \
            images and fresh samples of the model the discriminator was trained against. Prints one \
            JSON object: AUC, balanced accuracy, logistic loss, Brier score, expected calibration \
            error of sigmoid(logit), logit means and spreads, and log E_fake[exp r] and \
            log E_real[exp -r], which are 0 when exp r is an exact density ratio. Streams scored by \
            two different discriminators are refused.
            """)

        @Option(name: .customLong("real"), help: "Scored stream of held-out real samples.") var real: String
        @Option(name: .customLong("fake"), help: "Scored stream of held-out generated samples.") var fake: String
        @Option(name: .customLong("tensor"), help: "The logit tensor to read.") var tensor = "reward"
        @Option(name: .customLong("bins"), help: "Calibration bins.") var bins = 10

        func validate() throws {
            if bins < 1 { throw ValidationError("--bins must be at least 1") }
        }

        func read(_ path: String) throws -> (logits: [Float], discriminator: String?) {
            let reader = try TensorStreamReader(path: path)
            var out = [Float](), disc: String?
            while let r = try reader.read() {
                let t = try r.require(tensor, by: "discrim eval")
                guard t.shape.count == 1 else { throw ToolError("\(path): `\(tensor)` has shape \(t.shape); expected [B]") }
                let v = try t.floats()
                if v.contains(where: { !$0.isFinite }) { throw ToolError("\(path): `\(tensor)` holds NaN or Inf") }
                out += v
                if let d = r.metadata["discriminator"] {
                    if let disc, disc != d { throw ToolError("\(path) was scored by two discriminators") }
                    disc = d
                }
            }
            guard !out.isEmpty else { throw ToolError("\(path) holds no scored samples") }
            return (out, disc)
        }

        func run() throws {
            let r = try read(real), f = try read(fake)
            if let a = r.discriminator, let b = f.discriminator, a != b {
                throw ToolError("\(real) and \(fake) were scored by different discriminators (\(a.prefix(12)) vs \(b.prefix(12)))")
            }
            try printLine(RatioDiagnostics(real: r.logits, fake: f.logits, bins: bins).json)
        }
    }
}
