import ArgumentParser
import Foundation
#if DRL_MPI
import MPISupport
#endif
import Shared

struct Train: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a class-conditional flow-matching velocity model on a stream of `x` and `y`.",
        discussion: """
        Conditional flow matching in the toolkit's convention: x_t = (1 - t) x0 + t eps, target \
        v = eps - x0, t uniform (or --t-dist logit-normal), labels dropped to the null label with \
        probability --label-dropout for classifier-free guidance. AdamW with linear warmup, global \
        gradient-norm clipping, EMA of the weights (what `sample` uses by default). The whole data \
        stream is read into memory once; epochs are shuffled by a counter-based RNG.

        The checkpoint (-o) is written atomically every --save-every steps and at the end. It holds \
        weights, AdamW and EMA state, and the data cursor and RNG position, so --resume continues \
        exactly: the same loss curve and the same final bytes as an uninterrupted run. When resuming, \
        hyperparameters come from the checkpoint; only --steps (the total), --save-every, -o and \
        logging options may change, and a constant-rate run may be branched into a cooldown.

        --cooldown N decays the learning rate linearly over the last N steps of the run (a \
        warmup-stable-decay schedule). The window is stored as absolute steps, so \
        `--resume CKPT --steps S --cooldown N -o cooled.safetensors` turns any checkpoint taken at \
        a constant rate (of a run without --cooldown, or before its decay began: the window moves) \
        into a converged model without retraining it, and that branch resumes exactly too.

        Examples:
          D=/usr/share/datasets/fashion-mnist
          tensors from-idx $D/train-images-idx3-ubyte.gz $D/train-labels-idx1-ubyte.gz > train.tzst
          train --model sit-tiny --steps 3000 --threads 2 --save-every 500 \\
                --metrics sit.jsonl -o sit.safetensors < train.tzst
          train --resume sit.safetensors --steps 6000 --metrics sit.jsonl -o sit.safetensors < train.tzst
          train --config '{"arch":"mlp","channels":2,"height":1,"width":1,"num_classes":3,\\
                "hidden_size":64,"depth":2}' --steps 500 -o toy.safetensors < toy.tzst
        """,
        version: Toolkit.version)

    @Option(name: [.short, .customLong("output")], help: "The checkpoint to write (safetensors).")
    var output: String

    @Option(help: "Named architecture: \(ModelConfig.names.joined(separator: ", ")). Its image shape follows the data.")
    var model: String?

    @Option(help: "Architecture as JSON (inline, or a path to a .json file), the `config` of docs/models.md.")
    var config: String?

    @Option(name: [.customLong("num-classes"), .customLong("classes")], help: "Number of classes for --model (labels 0..<K; K is the null label).")
    var classes: Int = 10

    @Option(help: "Continue a run from its checkpoint (same data stream).")
    var resume: String?

    @Option(help: "Start from these weights (fresh optimizer; the checkpoint becomes the parent).")
    var initFrom: String?

    @Option(help: "Total optimizer steps of the run.")
    var steps: Int = 1000

    @Option(help: "Minibatch size (default 256).")
    var batch: Int?

    @Option(help: "Peak learning rate (default 5e-4).")
    var lr: Float?

    @Option(help: "Linear warmup steps (default 100).")
    var warmup: Int?

    @Option(help: "AdamW decoupled weight decay (default 0).")
    var weightDecay: Float?

    @Option(help: "Decay the learning rate linearly over the last N steps of the run (default 0: constant after warmup).")
    var cooldown: Int?

    @Option(name: [.customLong("max-grad-norm"), .customLong("grad-clip")], help: "Clip the global gradient norm to this (default 1; 0: no clipping).")
    var gradClip: Double?

    @Option(name: [.customLong("ema-decay"), .customLong("ema")], help: "EMA decay (default 0.999; the effective decay at step k is min(decay, (1+k)/(10+k))).")
    var ema: Float?

    @Option(help: "Probability of replacing a label by the null label (default 0.1).")
    var labelDropout: Double?

    @Option(help: "Time distribution: uniform (default), logit-normal, or logit-normal:MEAN,STD.")
    var tDist: String?

    @Option(help: "Seed of the weights' initialisation, data order, times and noise (default 0).")
    var seed: UInt64?

    @Option(help: "Also write the checkpoint every K steps (0: only at the end).")
    var saveEvery: Int = 0

    @Option(help: "Append one JSON line per logged step: step, loss, lr, grad_norm, images_per_s.")
    var metrics: String?

    @Option(help: "Log to --metrics every N steps.")
    var logEvery: Int = 1

    @OptionGroup var input: InputOptions
    @OptionGroup var threads: ThreadOptions
    @OptionGroup var progress: ProgressOptions

    func validate() throws {
        guard steps >= 0 else { throw ValidationError("--steps must be >= 0") }
        guard saveEvery >= 0 else { throw ValidationError("--save-every must be >= 0") }
        guard logEvery >= 1 else { throw ValidationError("--log-every must be >= 1") }
        guard classes >= 1 else { throw ValidationError("--num-classes must be >= 1") }
        if let cooldown { guard cooldown >= 0, cooldown <= steps else { throw ValidationError("--cooldown must be in 0...--steps (\(steps)), got \(cooldown)") } }
        if resume != nil && (model != nil || config != nil || initFrom != nil) {
            throw ValidationError("--resume takes the model from the checkpoint; drop --model/--config/--init-from")
        }
        if resume == nil && (model == nil) == (config == nil) && initFrom == nil {
            throw ValidationError("give --model NAME or --config JSON (or --resume CKPT, or --init-from CKPT)")
        }
        if model != nil && config != nil { throw ValidationError("give --model or --config, not both") }
    }

    func run() throws {
        threads.apply()
        #if DRL_MPI
        try Launch.refuseReplicatedTasks(mpiBuild: true)
        // Under mpirun: every rank reads the whole stream and computes its rows of each
        // minibatch; gradients are summed before every step; rank 0 alone logs and writes the
        // checkpoint. A phase that fails on any rank ends every rank (MPIGroup.collective).
        if let group = try MPIGroup.join(tool: "train") {
            try group.collective { try train(group: group) }
            group.finish()
            return
        }
        #else
        try Launch.refuseReplicatedTasks(mpiBuild: false)
        #endif
        try train(group: nil)
    }

    /// Runs `body` as one collective phase (every rank agrees on failure) when in a group.
    func phase<T>(_ group: DataParallelGroup?, _ body: () throws -> T) throws -> T {
        if let group { return try group.collective(body) }
        return try body()
    }

    /// The data, the model and the trainer (resumed or fresh), with the parent digest.
    func setUp(group: DataParallelGroup?) throws -> (FlowMatchingTrainer, String?) {
        let data = try TrainingData.read(try input.reader())
        let trainer: FlowMatchingTrainer
        var parent: String?
        if let resume {
            let record = try Checkpoint.read(resume)
            guard let json = record.metadata[FlowMatchingTrainer.settingsKey] else {
                throw ToolError("\(resume) has no `\(FlowMatchingTrainer.settingsKey)` metadata; it was not written by train")
            }
            let saved = try resumedSettings(try TrainSettings.from(json: json), at: try TrainingCheckpoint.step(of: record))
            let net = try VelocityNet.load(from: record)
            trainer = try FlowMatchingTrainer(net: net, settings: saved, data: data, group: group)
            try trainer.restore(from: record)
            parent = record.metadata[TrainingCheckpoint.parentKey]
        } else {
            let settings = try freshSettings()
            let net: VelocityNet
            if let initFrom {
                net = try VelocityNet.load(path: initFrom)
                parent = try Checkpoint.digest(initFrom)
                // The architecture comes from the checkpoint; a --model/--config that asks for
                // another one is an error, not silently ignored.
                if model != nil || config != nil {
                    let asked = try modelConfig(for: data)
                    guard asked == net.config else {
                        throw ToolError("--init-from \(initFrom) holds the architecture \(net.config.json()), not the requested \(asked.json()); drop --model/--config or give the matching one")
                    }
                }
            } else {
                net = try VelocityNet.make(try modelConfig(for: data), seed: settings.seed)
            }
            trainer = try FlowMatchingTrainer(net: net, settings: settings, data: data, group: group)
        }
        return (trainer, parent)
    }

    func train(group: DataParallelGroup?) throws {
        let lead = (group?.rank ?? 0) == 0
        // Every rank reads the data and builds the trainer; one that fails stops them all here.
        let (trainer, parent) = try phase(group) { try setUp(group: group) }

        let meta = ["tool": "train", "version": Toolkit.version]
        func save() throws {
            guard lead else { return }
            try Checkpoint.write(trainer.checkpointRecord(parentDigest: parent, metadata: meta), to: output)
        }

        var log: TextFile?
        if let metrics { log = try phase(group) { lead ? try MetricsLog.open(metrics, keepingThrough: trainer.step) : nil } }
        let bar = Progress(label: "train", total: max(0, steps - trainer.step), enabled: lead && progress.showProgress)
        let started = Date()
        var windowStart = Date(), windowImages = 0
        var last: TrainStepStats?
        let firstStep = trainer.step
        while trainer.step < steps {
            // One phase per step (with its log line and checkpoint): a rank that fails in it stops all.
            let s = try phase(group) { () -> TrainStepStats in
                let s = try trainer.trainStep()
                windowImages += trainer.settings.batch
                if let log, s.step % logEvery == 0 || s.step == steps {
                    let now = Date()
                    let rate = Double(windowImages) / max(now.timeIntervalSince(windowStart), 1e-9)
                    try log.write(MetricsLog.line(s, imagesPerSecond: rate))
                    windowStart = now
                    windowImages = 0
                }
                if saveEvery > 0 && s.step % saveEvery == 0 && s.step < steps { try save() }
                return s
            }
            last = s
            bar.note = String(format: "loss %.4f", s.loss)
            bar.advance(1, unit: " step")
        }
        try phase(group) {
            try save()
            try log?.close()
        }
        bar.finish()
        let elapsed = Date().timeIntervalSince(started)
        let done = trainer.step - firstStep
        var summary = "train: step \(trainer.step)"
        if let last { summary += String(format: ", loss %.5f", last.loss) }
        if done > 0 { summary += String(format: ", %.1f images/s", Double(done * trainer.settings.batch) / max(elapsed, 1e-9)) }
        summary += String(format: ", peak memory %.0f MiB, BLAS core %@ x %d threads", MetricsLog.peakResidentMiB(), BLAS.coreName, BLAS.threads)
        if let group { summary += ", \(group.size) ranks" }
        if lead && !progress.quiet { printError(summary) }
    }

    func freshSettings() throws -> TrainSettings {
        var s = TrainSettings()
        if let batch { s.batch = batch }
        if let lr { s.lr = lr }
        if let warmup { s.warmup = warmup }
        if let weightDecay { s.weightDecay = weightDecay }
        if let gradClip { s.gradClip = gradClip }
        if let ema { s.ema = ema }
        if let labelDropout { s.labelDropout = labelDropout }
        if let tDist { s.tDist = tDist }
        if let seed { s.seed = seed }
        applyCooldown(to: &s)
        try s.validate()
        return s
    }

    /// The cooldown window of --cooldown N: the last N steps of this run.
    func applyCooldown(to s: inout TrainSettings) {
        guard let cooldown else { return }
        if cooldown == 0 { s.cooldownStart = nil; s.cooldownEnd = nil; return }
        s.cooldownStart = steps - cooldown
        s.cooldownEnd = steps
    }

    /// On resume every given hyperparameter must equal the checkpoint's (an exact continuation);
    /// the one exception is a cooldown added to a run whose rate has been constant so far (a
    /// warmup-stable-decay branch): one without a window, or one whose window has not begun, which
    /// may be moved (a longer run, then the same decay). Returns the settings to continue with.
    func resumedSettings(_ saved: TrainSettings, at step: Int) throws -> TrainSettings {
        var branched = saved
        let constantSoFar = saved.cooldownStart.map { step <= $0 } ?? true
        if constantSoFar, cooldown != nil {
            applyCooldown(to: &branched)
            if let start = branched.cooldownStart, start < step {
                throw ToolError("--cooldown \(cooldown!) would start at step \(start), before the checkpoint's step \(step); give --steps >= \(step + cooldown!) or a shorter --cooldown")
            }
            try branched.validate()
        }
        try checkUnchanged(branched)
        return branched
    }

    func checkUnchanged(_ saved: TrainSettings) throws {
        var given = saved
        if let batch { given.batch = batch }
        if let lr { given.lr = lr }
        if let warmup { given.warmup = warmup }
        if let weightDecay { given.weightDecay = weightDecay }
        if let gradClip { given.gradClip = gradClip }
        if let ema { given.ema = ema }
        if let labelDropout { given.labelDropout = labelDropout }
        if let tDist { given.tDist = tDist }
        if let seed { given.seed = seed }
        applyCooldown(to: &given)
        if given != saved {
            throw ToolError("--resume continues with the checkpoint's settings \(saved.json()); drop the options that differ")
        }
    }

    func modelConfig(for data: TrainingData) throws -> ModelConfig {
        if let model {
            guard let c = ModelConfig.named(model, channels: data.channels, height: data.height, width: data.width, numClasses: classes) else {
                throw ToolError("unknown model '\(model)' (known: \(ModelConfig.names.joined(separator: ", ")))")
            }
            try c.validate()
            return c
        }
        var text = config!
        if !text.trimmingCharacters(in: .whitespaces).hasPrefix("{") {
            text = String(decoding: try readFile(text), as: UTF8.self)
        }
        return try ModelConfig.from(json: text)
    }
}
