import ArgumentParser
import Foundation
import Shared

struct Sample: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sample",
        abstract: "Generate images from a flow-matching checkpoint (ODE or SDE samplers), optionally recording trajectories and log-probs for RL.",
        discussion: """
        `sample [generate] ...` (the default) writes a stream; `sample logprob` recomputes the \
        log-probs of a recorded stream (the on-policy self-test). `sample help generate` lists \
        every generation option.

        Examples:
          sample --model base.safetensors --n 64 --png grid.png > samples.tzst
          sample --model cur.safetensors --n 512 --group 8 --sampler precise --steps 10 --record \\
            | embed --encoder enc.safetensors | discrim score --model disc.safetensors > scored.tzst
          sample --model m.safetensors --n 1024 --offset 0 > a.tzst       # shards: cat a b = one run
          sample --model m.safetensors --n 1024 --offset 1024 > b.tzst
          sample --model m.safetensors --n 64 --sampler flowgrpo --record \\
            | sample logprob --model m.safetensors
        """,
        version: Toolkit.version,
        subcommands: [Generate.self, LogProb.self],
        defaultSubcommand: Generate.self)
}

extension SamplerKind: ExpressibleByArgument {}

/// --weights: which weights of a checkpoint to draw with.
enum Weights: String, CaseIterable, ExpressibleByArgument { case ema, raw, sampling }

/// Options shared by both subcommands: which checkpoint and which of its weights.
struct ModelOptions: ParsableArguments {
    @Option(help: "Checkpoint (safetensors) written by train or rlstep.")
    var model: String

    @Flag(help: "The same as --weights raw.")
    var noEma = false

    @Option(help: "Which weights: ema (default when present; checkpoints without EMA weights use the raw ones), raw, or sampling (the rollout snapshot rlstep --algo crd|nft keeps).")
    var weights: Weights?

    func validate() throws {
        if noEma, let w = weights, w != .raw { throw ValidationError("--no-ema conflicts with --weights \(w.rawValue)") }
    }

    /// The network, the checkpoint's SHA-256, which weights were loaded ("ema", "raw" or "sampling"), the step.
    func load(preferEMA: Bool? = nil, sampling: Bool? = nil) throws -> (net: VelocityNet, digest: String, weights: String, step: Int) {
        let bytes = try readFile(model)
        let record: Record
        do { record = try RecordCodec.decode(bytes) } catch { throw ToolError("\(model) is not a valid safetensors checkpoint: \(error)") }
        if sampling ?? (weights == .sampling) {
            guard let prefix = record.metadata["rl.sampling_weights"] else {
                throw ToolError("\(model) has no sampling snapshot (metadata `rl.sampling_weights`, written by rlstep --algo crd|nft)")
            }
            let net = try VelocityNet.load(from: record, prefix: prefix)
            return (net, SHA256.hex(bytes), "sampling", try TrainingCheckpoint.step(of: record))
        }
        let hasEMA = record.names.contains { $0.hasPrefix("ema.") }
        let useEMA = (preferEMA ?? !(noEma || weights == .raw)) && hasEMA
        let net = try VelocityNet.load(from: record, ema: useEMA)
        return (net, SHA256.hex(bytes), useEMA ? "ema" : "raw", try TrainingCheckpoint.step(of: record))
    }
}

extension Sample {
    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate samples (the default subcommand).",
            discussion: """
            Sample ids run from --offset to --offset + --n - 1. The initial noise of id i is \
            CounterNoise(seed) at (i, stream 0) and the noise of SDE step k at (i, stream k + 1), so a \
            sample depends only on (checkpoint, sampler settings, seed, id, label), not on how ids are \
            split into runs (to float rounding when a batch is cut short: see below).

            Records are cut at multiples of --batch counted from id 0, not from --offset, and every \
            record is its own zstd frame. So when every shard's --offset is a multiple of --batch, \
            `cat` of the shards is byte for byte the stream of one run over all ids. (Other offsets \
            give the same samples to float rounding, cut into records differently: BLAS may round \
            a smaller batch differently.)

            Labels: by default id i gets label i % num_classes (with --group G: (i / G) % \
            num_classes); --label K gives every sample label K (K = num_classes: unconditional); \
            --labels-from reads `y` from a stream, one label per sample (per group with --group).

            Output per record: `x` F32 [B,C,H,W] clamped to [-1,1], `y` I64 [B], `id` I64 [B], \
            `group` I64 [B] (= id / G) with --group; with --record also `traj.x` F32 [B,S+1,C,H,W] \
            (unclamped states, t = 1 first), `traj.t` F32 [S+1] (per record), `traj.logp` F32 [B,S] \
            (log-prob of each transition, mean over dimensions; 0 on deterministic steps). Metadata: \
            tool, version, model (SHA-256 of the checkpoint), model_step, weights (ema|raw), seed, \
            labels, the sampler settings (sampler, sampler.*), logprob_reduction, per_record.
            """)

        @OptionGroup var modelOptions: ModelOptions

        @Option(name: [.short, .customLong("n")], help: "Number of samples (default 64; with --labels-from, one per label read, times --group).")
        var n: Int?

        @Option(help: "First sample id.")
        var offset: Int = 0

        @Option(help: "Seed of the noise.")
        var seed: UInt64 = 0

        @Option(help: "Samples per record; records break at multiples of it counted from id 0.")
        var batch: Int = 256

        @Option(help: "Every sample gets this label (num_classes = the null label: unconditional).")
        var label: Int?

        @Option(help: "Read labels `y` from this stream ('-' for standard input).")
        var labelsFrom: String?

        @Option(help: "Draw G samples per label; writes `group` = id / G.")
        var group: Int?

        @Option(help: "Sampler.")
        var sampler: SamplerKind = .euler

        @Option(help: "Sampling steps (NFE per sample: steps, x2 with CFG, about x2 for heun).")
        var steps: Int = 20

        @Option(help: "Time shift s: t' = s t / (1 + (s - 1) t) (s > 1: more steps near noise).")
        var shift: Double = 1

        @Option(help: "Noise level of SDE samplers (default: the sampler's own, e.g. precise 1.5, flowgrpo 0.7).")
        var eta: Double?

        @Option(help: "Steps lo..hi (lo..<hi, 0-based) that are stochastic; the others are Euler steps.")
        var sdeWindow: String?

        @Option(help: "Classifier-free guidance scale (1: off).")
        var cfg: Float = 1

        @Option(help: "Apply guidance only for t in [lo, hi] (t = 1 is noise), e.g. 0.1,0.9.")
        var cfgInterval: String?

        @Flag(help: "Add traj.x, traj.t, traj.logp and the sampler settings, for rlstep.")
        var record = false

        @Flag(help: "Do not clamp `x` to [-1, 1] (e.g. for data that are not images).")
        var noClamp = false

        @Option(help: "Also write a PNG grid of the first 64 samples (8x8).")
        var png: String?

        @OptionGroup var output: OutputOptions
        @OptionGroup var threads: ThreadOptions
        @OptionGroup var progress: ProgressOptions

        func validate() throws {
            if let n, n < 0 { throw ValidationError("--n must be >= 0") }
            guard (1...Sampler.maxSteps).contains(steps) else { throw ValidationError("--steps must be in 1...\(Sampler.maxSteps)") }
            if label != nil && labelsFrom != nil { throw ValidationError("give --label or --labels-from, not both") }
        }

        func makeSampler(nullLabel: Int) throws -> Sampler {
            let kind = sampler
            var window: Range<Int>?
            if let sdeWindow {
                let text = sdeWindow.contains("..<") ? sdeWindow : sdeWindow.replacingOccurrences(of: "..", with: "..<")
                window = try Sampler.parseRange(text)
            }
            var guidance: Guidance?
            if cfg != 1 || cfgInterval != nil {
                guidance = Guidance(scale: cfg, nullLabel: nullLabel, interval: try cfgInterval.map { try Sampler.parseInterval($0) })
            }
            do {
                return try Sampler(kind: kind, steps: steps, shift: shift, eta: kind.isSDE ? eta : (eta ?? 0), sdeWindow: window, guidance: guidance)
            } catch let e as SamplerError {
                throw ToolError(e.description)
            }
        }

        func run() throws {
            let (net, digest, weights, step) = try modelOptions.load()
            let config = net.config
            let sampler = try makeSampler(nullLabel: config.numClasses)
            let G = group ?? 1
            var count = n ?? 64
            let labels: LabelSource
            if let label {
                guard (0...config.numClasses).contains(label) else {
                    throw ToolError("--label \(label) is outside 0...\(config.numClasses) (\(config.numClasses) is the null label)")
                }
                labels = .fixed(label)
            } else if let labelsFrom {
                let reader = try TensorStreamReader(path: labelsFrom)
                var list: [Int] = []
                while let r = try reader.read() {
                    list += try r.require("y", by: "sample --labels-from").int64s().map { Int($0) }
                }
                if let bad = list.first(where: { $0 < 0 || $0 > config.numClasses }) {
                    throw ToolError("label \(bad) in \(reader.name) is outside 0...\(config.numClasses) (\(config.numClasses) is the null label)")
                }
                // Without an explicit --n, one sample (one group) per label read.
                if n == nil { count = list.count * G }
                labels = .list(list)
            } else {
                labels = .balanced(numClasses: max(1, config.numClasses))
            }
            let plan = try GenerationPlan(n: count, offset: offset, batch: batch, group: G, labels: labels)
            // A recorded record holds [B, S+1, D] states: refuse what readers would refuse
            // (--max-record-mib's default) instead of failing on the allocation.
            let perSample = (record ? steps + 2 : 1) * config.sampleDimension * 4
            if perSample > 0, min(batch, max(count, 1)) > (8192 << 20) / perSample {
                throw ToolError("records of \(min(batch, count)) samples with \(steps) recorded steps exceed 8 GiB; lower --batch or --steps")
            }

            BLAS.setThreads(1)  // parallel over samples instead; results do not depend on --threads
            let runner = ParallelSampler(model: net, sampler: sampler, seed: seed, threads: threads.count)
            var meta = sampler.settings
            meta["tool"] = "sample"
            meta["version"] = Toolkit.version
            meta["model"] = digest
            meta["model_step"] = String(step)
            meta["weights"] = weights
            meta["seed"] = String(seed)
            meta["labels"] = labels.name
            if group != nil { meta["group_size"] = String(G) }

            let writer = try output.writer()
            writer.framePerRecord = true
            let bar = Progress(label: "sample", total: count, enabled: progress.showProgress)
            var gridImages: [Float] = []
            var gridCount = 0
            for range in plan.records {
                let ids = range.map { Int64($0) }
                let y = range.map { plan.label(id: $0) }
                let result = runner.sample(labels: y, ids: ids, record: record)
                let rec = SampleRecord.make(result: result, ids: ids, labels: y, group: group, config: config, steps: sampler.steps,
                                            clamp: !noClamp, metadata: meta)
                try writer.write(rec)
                if png != nil && gridCount < 64 {
                    let take = min(64 - gridCount, ids.count)
                    let x = try rec["x"]!.floats()
                    gridImages += x[0..<(take * config.sampleDimension)]
                    gridCount += take
                }
                bar.advance(ids.count, unit: " img")
            }
            try writer.finish()
            bar.finish()
            if let png, gridCount > 0 {
                guard config.channels == 1 || config.channels == 3 else {
                    throw ToolError("--png needs 1 or 3 channels; the model makes \(config.channels)")
                }
                let shape = [gridCount, config.channels, config.height, config.width]
                let (pixels, w, h) = gridImages.withUnsafeBufferPointer {
                    ImageConversion.grid($0, shape: shape, count: gridCount, rows: 8, cols: 8, padding: 2)
                }
                try PNGFile.write(pixels, width: w, height: h, channels: config.channels, to: png)
            }
        }
    }

    struct LogProb: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "logprob",
            abstract: "Recompute the log-probs of a stream written by `sample --record` and compare them with the stored ones.",
            discussion: """
            The sampler is rebuilt from each record's metadata and `traj.t`; every stochastic \
            transition's log-prob is recomputed with the checkpoint (EMA or raw weights as the \
            record's `weights` metadata says, unless --no-ema). Prints one JSON line: records, \
            samples, transitions, bit_identical (transitions whose value has exactly the stored \
            bits), max_abs_diff, max_ratio_deviation (max |exp(new - stored) - 1|: the on-policy \
            PPO ratio's distance from exactly 1) and same_model (the checkpoint's SHA-256 equals \
            the record's `model`). Exits 1 when max_abs_diff exceeds --tolerance.
              sample --model m.safetensors --n 64 --sampler precise --record | sample logprob --model m.safetensors
            """)

        @OptionGroup var modelOptions: ModelOptions

        @Option(help: "Largest acceptable |recomputed - stored| log-prob.")
        var tolerance: Double = 1e-5

        @OptionGroup var input: InputOptions
        @OptionGroup var threads: ThreadOptions

        func validate() throws {
            guard tolerance >= 0 else { throw ValidationError("--tolerance must be a number >= 0") }
        }

        func run() throws {
            let reader = try input.reader()
            var check = LogProbCheck()
            var loaded: [String: (VelocityNet, String)] = [:]
            BLAS.setThreads(1)
            while let record = try reader.read() {
                // --weights (or --no-ema) overrides the weights the record says it was drawn with
                let chosen = modelOptions.noEma ? "raw" : (modelOptions.weights?.rawValue ?? record.metadata["weights"] ?? "ema")
                let key = chosen == "sampling" ? "sampling" : (chosen == "raw" ? "raw" : "ema")
                let preferEMA = key == "ema"
                if loaded[key] == nil {
                    let m = try modelOptions.load(preferEMA: preferEMA, sampling: key == "sampling")
                    loaded[key] = (m.net, m.digest)
                }
                let (net, digest) = loaded[key]!
                if let stored = record.metadata["model"], stored != digest { check.modelMismatch = true }
                try check.check(record: record, model: net, threads: threads.count)
            }
            try printLine(check.json)
            if check.maxAbsDiff > tolerance {
                throw ToolError("recomputed log-probs differ from the stored ones by up to \(check.maxAbsDiff) (> --tolerance \(tolerance))")
            }
        }
    }
}
