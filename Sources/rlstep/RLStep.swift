import ArgumentParser
import Foundation
#if DRL_MPI
import MPISupport
#endif
import Shared

extension GRPO.AdvantageNorm: ExpressibleByArgument {}

/// --algo: the RL objective.
enum Algo: String, CaseIterable, ExpressibleByArgument { case am, grpo, crd, nft }

/// --weights / --ref-weights: which weights of a checkpoint to start from.
enum StartWeights: String, CaseIterable, ExpressibleByArgument { case ema, raw }

struct RLStep: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rlstep",
        abstract: "One KL-regularised update round of a flow-matching generator from a buffer of scored rollouts.",
        discussion: """
        Reads the buffer (FILE, -i FILE or stdin), the current training checkpoint (--model: weights,
        and AdamW/EMA state when present) and the frozen reference (--ref), runs --epochs passes of
        --batch samples, writes the next checkpoint atomically (-o) and appends one JSON
        line of metrics (--metrics FILE, default stdout). NaN/Inf anywhere: no checkpoint, exit 1.

          --algo am    Adjoint Matching (DRL stage 2): rollouts from `sample --sampler memoryless-ll
                       --record`, scored with `discrim score --grad`.
          --algo grpo  Flow-GRPO: rollouts from any SDE sampler with --record (and --group), scored.
          --algo crd   Centered Reward Distillation; --algo nft  DiffusionNFT: forward-process, rollouts
                       of any sampler (`sample --weights sampling --group G`), only x, y, group, reward used.

        Built with MPI (`make build-mpi`), `mpirun -np K rlstep ... FILE` is data-parallel: rank r \
        reads the records j with j % K == r, gradients and batch statistics are summed over the \
        ranks, rank 0 writes; the result equals one process's to float rounding (docs/scaleout.md).

        Example:
          sample --model cur.safetensors --n 512 --sampler memoryless-ll --record \\
            | embed --encoder enc.safetensors | discrim score --model disc.safetensors --grad --encoder enc.safetensors \\
            | rlstep --algo am --model cur.safetensors --ref base.safetensors -o next.safetensors --lambda 10
        """,
        version: Toolkit.version)

    @Option(name: .customLong("algo"), help: ArgumentHelp("Objective.", valueName: "algo")) var algoChoice: Algo
    var algo: String { algoChoice.rawValue }
    @Option(name: .customLong("model"), help: "Current policy: an rlstep checkpoint (raw weights, AdamW and EMA resumed) or a base from train (its EMA weights, fresh state).") var model: String
    @Option(name: .customLong("ref"), help: "Frozen reference (base) checkpoint.") var ref: String
    @Option(name: [.short, .customLong("output"), .customLong("out")], help: "Next checkpoint to write.") var out: String
    @Option(name: .customLong("weights"), help: "Weights a base (non-rlstep) --model starts from (an rlstep checkpoint always resumes its raw weights).") var weights: StartWeights = .ema
    @Option(name: .customLong("ref-weights"), help: "Weights of the reference (ema: as `sample` draws by default).") var refWeights: StartWeights = .ema
    @Flag(name: .customLong("new-stage"), help: "Start a new RL stage from an rlstep --model (preference RL after DRL, say): its raw weights with fresh AdamW, EMA and objective state, as from a base; without it, an rlstep checkpoint's moments, tuned to the earlier stage's gradient scale, would carry over.") var newStage = false
    @Flag(name: .customLong("raw-start"), help: "The same as --weights raw.") var rawStartFlag = false
    @Flag(name: .customLong("ref-raw"), help: "The same as --ref-weights raw.") var refRawFlag = false
    var rawStart: Bool { rawStartFlag || weights == .raw }
    var refRaw: Bool { refRawFlag || refWeights == .raw }
    @OptionGroup var input: InputOptions
    @Option(name: .customLong("metrics"), help: "Append the metrics JSON line to this file (default: stdout).") var metrics: String?

    @Option(name: .customLong("epochs"), help: "Passes over the buffer.") var epochs = 1
    @Option(name: [.customLong("batch"), .customLong("minibatch")], help: "Samples per optimizer step (minibatch).") var minibatch = 64
    @Option(name: .customLong("lr"), help: "AdamW learning rate.") var lr: Float = 1e-4
    @Option(name: .customLong("warmup"), help: "Linear warmup steps (on the checkpoint's global optimizer step).") var warmup = 0
    @Option(name: .customLong("weight-decay"), help: "AdamW weight decay.") var weightDecay: Float = 0
    @Option(name: .customLong("max-grad-norm"), help: "Global gradient-norm clip (0: none).") var maxGradNorm = 1.0
    @Option(name: .customLong("ema-decay"), help: "EMA decay of the weights kept in the checkpoint.") var emaDecay: Float = 0.999
    @Option(name: .customLong("seed"), help: "Seed of minibatch order and timestep subsets (mixed with the checkpoint step).") var seed: UInt64 = 0

    @Option(name: .customLong("lambda"), help: "am: reward weight lambda (KL weight 1/lambda).") var lambda = 10.0
    @Option(name: .customLong("timestep-fraction"), help: "am: fraction of steps per sample per update.") var timestepFraction = 0.4
    @Option(name: .customLong("split"), help: "am: stratum boundary in DRL time tau = 1 - t.") var split = 0.6
    @Option(name: .customLong("clip-quantile"), help: "am: outlier quantile alpha (1: off).") var clipQuantile = 0.9
    @Option(name: .customLong("clip-rho"), help: "am: outlier threshold EMA rho.") var clipRho = 0.9
    @Option(name: .customLong("clip-cap"), help: "am: spike cap c.") var clipCap = 5.0

    @Option(name: .customLong("beta"), help: "grpo: KL weight to the reference.") var beta = 0.0
    @Option(name: .customLong("clip-range"), help: "grpo: PPO clip epsilon.") var clipRange = 1e-4
    @Option(name: .customLong("adv-norm"), help: "grpo: group, global-std or global.") var advNorm: GRPO.AdvantageNorm = .group
    @Option(name: .customLong("adv-clip"), help: "grpo/crd/nft: advantage clip.") var advClip = 5.0
    @Flag(name: .customLong("ratio-norm"), help: "grpo: GRPO-Guard ratio normalisation (docs/algorithms.md 5.4).") var ratioNorm = false

    @Flag(name: .customLong("profile"), help: "Print the wall-clock of each stage of the round (read, prepare, gradients, optimizer, finish, write) to stderr.") var profile = false

    @OptionGroup(title: "crd / nft") var fp: ForwardProcessFlags
    @OptionGroup var threads: ThreadOptions

    func validate() throws {
        try fp.validate(algo: algo)
        if epochs < 1 || minibatch < 1 { throw ValidationError("--epochs and --batch must be positive") }
        if !(lr > 0) || warmup < 0 || !(maxGradNorm >= 0) { throw ValidationError("--lr must be positive, --warmup and --max-grad-norm >= 0") }
        if !(0...1).contains(emaDecay) { throw ValidationError("--ema-decay must be in [0, 1]") }
        if !(split >= 0 && split <= 1) { throw ValidationError("--split must be in [0, 1]") }
        if !lambda.isFinite || !(timestepFraction > 0 && timestepFraction <= 1) { throw ValidationError("--lambda must be finite, --timestep-fraction in (0, 1]") }
        if !(clipQuantile > 0) || !(0..<1).contains(clipRho) || !(clipCap >= 1) { throw ValidationError("--clip-quantile > 0, --clip-rho in [0, 1), --clip-cap >= 1") }
        if !(beta >= 0) || !(clipRange > 0) || !(advClip > 0) { throw ValidationError("--beta >= 0, --clip-range > 0, --adv-clip > 0") }
    }

    func run() throws {
        threads.apply()
        #if DRL_MPI
        try Launch.refuseReplicatedTasks(mpiBuild: true)
        // Under mpirun: rank r reads the records j with j % K == r of the buffer, every rank
        // draws the same minibatches and computes the rows of its samples, the gradients (and
        // the batch statistics the objectives need) are summed before every step, and rank 0
        // alone writes the checkpoint and the metrics. A phase that fails on any rank ends every
        // rank (MPIGroup.collective; docs/scaleout.md).
        if let group = try MPIGroup.join(tool: "rlstep") {
            try group.collective { try round(group: group) }
            group.finish()
            return
        }
        #else
        try Launch.refuseReplicatedTasks(mpiBuild: false)
        #endif
        try round(group: nil)
    }

    /// Runs `body` as one collective phase (every rank agrees on failure) when in a group.
    func phase<T>(_ group: DataParallelGroup?, _ body: () throws -> T) throws -> T {
        if let group { return try group.collective(body) }
        return try body()
    }

    /// What a round starts from.
    struct Start {
        var metricsFile: TextFile?
        var net: VelocityNet, reference: VelocityNet
        var digest: String, refDigest: String
        var optimizer: AdamW, ema: EMA, step: Int
        var objective: RLObjective
        var buffer: RolloutBuffer
        var shard: RLShard?
    }

    /// Whether two paths name the same file (device and inode; false when either cannot be stat'ed).
    func sameFile(_ a: String, _ b: String) -> Bool {
        var sa = stat(), sb = stat()
        return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino
    }

    func setUp(group: DataParallelGroup?) throws -> Start {
        let lead = (group?.rank ?? 0) == 0
        // Opened first, so an unwritable metrics path fails before any work or output.
        let metricsFile = lead ? try metrics.map { try TextFile(path: $0) } : nil
        let (record, digest) = try Checkpoint.readDigested(model)
        guard record.metadata["arch"] != nil else { throw ToolError("\(model) is not a velocity-model checkpoint (no `arch` metadata)") }
        // A checkpoint rlstep did not write (a `train` base) starts the policy from the weights
        // `sample` draws by default (its EMA), with fresh optimizer and EMA state; an rlstep
        // checkpoint resumes its raw weights, AdamW moments and EMA.
        let hasEMA = { (r: Record) in r.names.contains(where: { $0.hasPrefix("ema.") }) }
        let fromRL = record.metadata["rl.algo"] != nil
        let continuing = fromRL && !newStage
        let net = try VelocityNet.load(from: record, ema: !fromRL && hasEMA(record) && !rawStart)
        // The first round of a run has --model and --ref the same file: read it once.
        let (refRecord, refDigest) = sameFile(model, ref) ? (record, digest) : try Checkpoint.readDigested(ref)
        guard refRecord.metadata["arch"] != nil else { throw ToolError("\(ref) is not a velocity-model checkpoint (no `arch` metadata)") }
        let reference = try VelocityNet.load(from: refRecord, ema: hasEMA(refRecord) && !refRaw)

        let optimizer = AdamW(net.params, lr: lr, weightDecay: weightDecay)
        if continuing && record.metadata[AdamW.stepKey] != nil { try optimizer.load(from: record) }
        let ema = EMA(net.params, decay: emaDecay)
        if continuing && hasEMA(record) { try ema.load(from: record) }
        let step = try TrainingCheckpoint.step(of: record)

        let objective: RLObjective
        if algo == "am" {
            var o = AdjointMatching.Options()
            o.lambda = lambda; o.timestepFraction = timestepFraction; o.split = split
            o.clipQuantile = clipQuantile; o.clipRho = clipRho; o.clipCap = clipCap
            objective = AdjointMatching(options: o)
        } else if algo == "crd" || algo == "nft" {
            objective = try fp.objective(algo: algo, advClip: advClip, record: continuing ? record : nil, config: net.config)
        } else {
            var o = GRPO.Options()
            o.beta = beta; o.clipRange = clipRange; o.advantageNorm = advNorm; o.advantageClip = advClip; o.ratioNorm = ratioNorm
            objective = GRPO(options: o)
        }
        if continuing { try objective.restore(record.metadata) }

        let finalSamples = algo == "crd" || algo == "nft"
        let buffer: RolloutBuffer
        var shard: RLShard?
        if let group {
            guard group.size == 1 || input.path != nil else {
                throw ToolError("under mpirun every rank reads the buffer itself: give it as FILE or -i FILE (standard input reaches rank 0 only)")
            }
            let reader = try input.reader()
            let part = try RolloutBuffer.readShard(reader, nullLabel: net.config.numClasses, rank: group.rank, size: group.size, finalSamples: finalSamples)
            guard part.total > 0 else { throw ToolError("\(reader.name) holds no rollouts") }
            guard part.buffer.count > 0 else {
                throw ToolError("\(reader.name) holds \(part.records) records of rollouts, fewer than the \(group.size) ranks (rank r takes the records j with j % \(group.size) == r): write smaller records (e.g. `sample --batch`) or run fewer ranks")
            }
            buffer = part.buffer
            shard = RLShard(group: group, total: part.total, globalIndex: part.globalIndex)
        } else {
            let reader = try input.reader()
            buffer = finalSamples ? try RolloutBuffer.readFinal(reader, nullLabel: net.config.numClasses)
                : try RolloutBuffer.read(reader, nullLabel: net.config.numClasses)
            guard buffer.count > 0 else { throw ToolError("\(reader.name) holds no rollouts") }
        }
        // rank 0 holds the first record, whose metadata one process reads
        if lead, let m = buffer.metadata["model"], m != digest {
            ToolMain.warn("rlstep", "the rollouts were sampled by model \(m.prefix(12))..., not by --model \(digest.prefix(12))... (off-policy)")
        }
        return Start(metricsFile: metricsFile, net: net, reference: reference, digest: digest, refDigest: refDigest,
                     optimizer: optimizer, ema: ema, step: step, objective: objective, buffer: buffer, shard: shard)
    }

    func round(group: DataParallelGroup?) throws {
        let lead = (group?.rank ?? 0) == 0
        let started = Date()
        // Every rank reads the checkpoints and its part of the buffer; one that fails stops all here.
        let start = try phase(group) { try setUp(group: group) }
        let read = Date().timeIntervalSince(started)
        let (metricsFile, net, reference, digest, refDigest) = (start.metricsFile, start.net, start.reference, start.digest, start.refDigest)
        let (optimizer, ema, objective, buffer) = (start.optimizer, start.ema, start.objective, start.buffer)
        var o = RLTrainOptions()
        o.epochs = epochs; o.minibatch = minibatch; o.lr = lr; o.warmup = warmup; o.weightDecay = weightDecay
        o.maxGradNorm = maxGradNorm; o.emaDecay = emaDecay; o.seed = seed
        let trainer = RLTrainer(model: net, reference: reference, optimizer: optimizer, ema: ema, step: start.step, options: o)
        // The round runs its own phases; its checks see the same numbers on every rank.
        let m = try trainer.run(objective: objective, buffer: buffer, shard: start.shard)
        // Rank 0 alone writes; the others wait for its outcome (a failed write stops them all).
        let writing = Date()
        try phase(group) {
            guard lead else { return }
            try write(m, trainer: trainer, start: start, metricsFile: metricsFile, digest: digest, refDigest: refDigest)
        }
        if profile && lead {
            // One line, after the checkpoint is written (a failed round prints none). Rank 0's
            // stages under mpirun.
            let stages = [("read", read)] + trainer.stageSeconds + [("write", Date().timeIntervalSince(writing))]
            let prepare = (objective as? AdjointMatching)?.prepareStages ?? []
            let text = stages.map { name, secs in
                let inner = name == "prepare" && !prepare.isEmpty
                    ? " (" + prepare.map { "\($0.0) \(String(format: "%.3f", $0.1))" }.joined(separator: ", ") + ")" : ""
                return "\(name) \(String(format: "%.3f", secs)) s" + inner
            }
            printError("rlstep: profile: " + text.joined(separator: ", ") + ", total \(String(format: "%.3f", Date().timeIntervalSince(started))) s")
        }
    }

    func write(_ m: [(String, Double)], trainer: RLTrainer, start: Start, metricsFile: TextFile?, digest: String, refDigest: String) throws {
        let (net, optimizer, ema, objective, buffer) = (start.net, start.optimizer, start.ema, start.objective, start.buffer)
        var meta = objective.state()
        meta["tool"] = "rlstep"
        meta["version"] = Toolkit.version
        meta["rl.algo"] = algo
        meta["rl.reference"] = refDigest
        if let bm = buffer.metadata["model"] { meta["rl.buffer_model"] = bm }
        let holder = objective as? RLSnapshotHolder
        if let holder { meta["rl.sampling_weights"] = holder.samplingPrefix }
        meta["rl.options"] = holder != nil ? "epochs=\(epochs) minibatch=\(minibatch) lr=\(lr) warmup=\(warmup) weight_decay=\(weightDecay) max_grad_norm=\(maxGradNorm) ema_decay=\(emaDecay) seed=\(seed) " + fp.describe(objective)
            : algo == "am"
            ? "epochs=\(epochs) minibatch=\(minibatch) lr=\(lr) warmup=\(warmup) weight_decay=\(weightDecay) max_grad_norm=\(maxGradNorm) ema_decay=\(emaDecay) seed=\(seed) lambda=\(lambda) timestep_fraction=\(timestepFraction) split=\(split) clip_quantile=\(clipQuantile) clip_rho=\(clipRho) clip_cap=\(clipCap)"
            : "epochs=\(epochs) minibatch=\(minibatch) lr=\(lr) warmup=\(warmup) weight_decay=\(weightDecay) max_grad_norm=\(maxGradNorm) ema_decay=\(emaDecay) seed=\(seed) beta=\(beta) clip_range=\(clipRange) adv_norm=\(advNorm.rawValue) adv_clip=\(advClip) ratio_norm=\(ratioNorm)"
        var next = TrainingCheckpoint.record(model: net, optimizer: optimizer, ema: ema, step: trainer.step, parentDigest: digest, metadata: meta)
        for (name, t) in holder?.snapshotTensors ?? [] { next[name] = t }
        // The checkpoint appears only after the metrics line is written: a metrics file or
        // stdout that cannot be written (full disk) leaves no checkpoint behind. A reader that
        // closed stdout (`| head`) still gets the checkpoint, and the tool exits quietly.
        let pending = try Checkpoint.prepare(next, to: out)
        let line = RLTrainer.json(m, strings: [("algo", algo), ("model", digest), ("reference", refDigest)]) + "\n"
        do {
            if let metricsFile {
                try metricsFile.write(line)
                try metricsFile.close()
            } else {
                try TextOutput.standardOutput(line)
            }
        } catch is BrokenPipe {
            try pending.commit()
            throw BrokenPipe()
        }
        try pending.commit()
        // A round in which the outlier rule masked every sample leaves the policy where it was,
        // with loss 0 (the losses outgrew the threshold, e.g. after a too large step).
        if let frac = m.first(where: { $0.0 == "outlier_frac" })?.1, frac >= 1 {
            printError("rlstep: warning: the outlier rule masked every sample, so this round did not update the policy; lower --lr, or raise --clip-cap or --clip-quantile")
        }
    }
}
