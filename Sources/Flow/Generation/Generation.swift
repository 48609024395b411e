import Foundation
import TensorStream

/// Which label each sample gets.
public enum LabelSource: Sendable, Equatable {
    /// Sample index i (group index i / G when grouping) gets label index % numClasses.
    case balanced(numClasses: Int)
    /// Every sample gets this label.
    case fixed(Int)
    /// Label j of the list goes to samples j*G ..< (j+1)*G (G = 1 without grouping), counted
    /// from the first sample of the run.
    case list([Int])

    public var name: String {
        switch self {
        case .balanced: return "balanced"
        case .fixed(let k): return "fixed:\(k)"
        case .list: return "stream"
        }
    }
}

/// The id layout of a `sample` run: ids offset ..< offset + n, cut into records at multiples of
/// `batch` counted from id 0 (so record boundaries do not depend on the offset). When every
/// shard's offset is a multiple of `batch`, shards joined with `cat` hold exactly the records of
/// one big run, byte for byte. Groups of `group` consecutive ids share a label and never
/// straddle records (batch and offset must be multiples of group).
public struct GenerationPlan: Sendable {
    public let n: Int
    public let offset: Int
    public let batch: Int
    public let group: Int
    public let labels: LabelSource

    public init(n: Int, offset: Int, batch: Int, group: Int = 1, labels: LabelSource) throws {
        guard n >= 0 else { throw FlowError("{n} must be >= 0") }
        guard offset >= 0 else { throw FlowError("{offset} must be >= 0") }
        guard batch >= 1 else { throw FlowError("{batch} must be >= 1") }
        guard group >= 1 else { throw FlowError("{group} must be >= 1") }
        if group > 1 {
            guard batch % group == 0 else {
                throw FlowError("{batch} \(batch) is not a multiple of {group} \(group); groups must not straddle records (try {batch} \(max(group, batch / group * group)))")
            }
            guard offset % group == 0 else { throw FlowError("{offset} \(offset) is not a multiple of {group} \(group)") }
            guard n % group == 0 else { throw FlowError("{n} \(n) is not a multiple of {group} \(group)") }
        }
        if case .list(let l) = labels, l.count * group < n {
            throw FlowError("\(n) samples need \(((n + group - 1) / group)) labels but the label stream holds \(l.count)")
        }
        self.n = n
        self.offset = offset
        self.batch = batch
        self.group = group
        self.labels = labels
    }

    /// Id ranges of the records, in order.
    public var records: [Range<Int>] {
        var out: [Range<Int>] = []
        var start = offset
        let end = offset + n
        while start < end {
            let stop = min(end, (start / batch + 1) * batch)
            out.append(start..<stop)
            start = stop
        }
        return out
    }

    public func label(id: Int) -> Int {
        switch labels {
        case .balanced(let k): return (id / group) % k
        case .fixed(let k): return k
        case .list(let l): return l[(id - offset) / group]
        }
    }
}

/// Runs a sampler over a batch with `threads` workers, each on a contiguous slice of samples
/// (slices are multiples of the model's inference chunk, so no extra padding). The BLAS runs
/// single-threaded inside each worker: a sample's result never depends on the thread count.
public struct ParallelSampler {
    public let model: VelocityNet
    public let sampler: Sampler
    public let seed: UInt64
    public let threads: Int

    public init(model: VelocityNet, sampler: Sampler, seed: UInt64, threads: Int) {
        self.model = model
        self.sampler = sampler
        self.seed = seed
        self.threads = max(1, threads)
    }

    func slices(_ batch: Int) -> [Range<Int>] {
        let chunk = max(1, model.inferenceChunk)
        let per = max(chunk, ((batch + threads - 1) / threads + chunk - 1) / chunk * chunk)
        return stride(from: 0, to: batch, by: per).map { $0..<min(batch, $0 + per) }
    }

    /// Runs `work` on every slice, in parallel, and returns the results in slice order.
    func parallel<T>(_ batch: Int, _ work: (Range<Int>) -> T) -> [T] {
        let parts = slices(batch)
        if parts.count == 1 { return [work(parts[0])] }
        var results = [T?](repeating: nil, count: parts.count)
        let lock = NSLock()
        DispatchQueue.concurrentPerform(iterations: parts.count) { i in
            let r = work(parts[i])
            lock.lock()
            results[i] = r
            lock.unlock()
        }
        return results.map { $0! }
    }

    public func sample(labels: [Int], ids: [Int64], record: Bool) -> SampleResult {
        let parts = parallel(labels.count) { r in
            sampler.sample(model: model, labels: Array(labels[r]), ids: Array(ids[r]), seed: seed, record: record)
        }
        var out = parts[0]
        for p in parts.dropFirst() {
            out.x += p.x
            if record {
                out.trajectory! += p.trajectory!
                out.logProbs! += p.logProbs!
            }
        }
        return out
    }

    /// Recomputed log-probs [B, S] for a recorded trajectory [B, S+1, D].
    public func logProbs(trajectory: [Float], labels: [Int]) -> [Float] {
        let D = model.sampleDimension, S = sampler.steps
        let parts = parallel(labels.count) { r in
            sampler.logProbs(model: model, trajectory: Array(trajectory[(r.lowerBound * (S + 1) * D)..<(r.upperBound * (S + 1) * D)]),
                             labels: Array(labels[r]), batch: r.count)
        }
        return parts.flatMap { $0 }
    }
}

/// Builds the records `sample` writes. Per-sample tensors: `x` F32 [B,C,H,W] (clamped to
/// [-1,1] unless `clamp` is false), `y` I64 [B], `id` I64 [B], `group` I64 [B] (= id / G, with
/// grouping); with `record`: `traj.x` F32 [B,S+1,C,H,W] (unclamped states, t = 1 first),
/// `traj.t` F32 [S+1] (per record, listed in metadata `per_record`), `traj.logp` F32 [B,S]
/// (0 on deterministic steps). Metadata is the same for every record of a run and does not
/// depend on --offset or --n.
public enum SampleRecord {
    public static func make(result: SampleResult, ids: [Int64], labels: [Int], group: Int?, config: ModelConfig,
                            steps: Int, clamp: Bool, metadata: [String: String]) -> Record {
        let B = ids.count
        let shape = [config.channels, config.height, config.width]
        var record = Record()
        record["x"] = Tensor(clamp ? result.x.map { min(1, max(-1, $0)) } : result.x, shape: [B] + shape)
        record["y"] = Tensor(labels.map { Int64($0) }, shape: [B])
        record["id"] = Tensor(ids, shape: [B])
        if let group { record["group"] = Tensor(ids.map { $0 / Int64(group) }, shape: [B]) }
        var meta = metadata
        if let traj = result.trajectory, let logp = result.logProbs {
            record["traj.x"] = Tensor(traj, shape: [B, steps + 1] + shape)
            record["traj.t"] = Tensor(result.times, shape: [steps + 1])
            record["traj.logp"] = Tensor(logp, shape: [B, steps])
            meta[Record.perRecordKey] = "traj.t"
        }
        record.metadata = meta
        return record
    }
}

/// Result of recomputing a recorded stream's log-probs (`sample logprob`).
public struct LogProbCheck: Sendable {
    public var records = 0
    public var samples = 0
    /// Stochastic transitions compared.
    public var transitions = 0
    /// Transitions whose recomputed log-prob has exactly the stored bits.
    public var identical = 0
    public var maxAbsDiff = 0.0
    /// max |exp(new - stored) - 1| over transitions: the on-policy ratio's deviation from 1.
    public var maxRatioDeviation = 0.0
    public var modelMismatch = false

    public init() {}

    public var json: String {
        "{\"records\":\(records),\"samples\":\(samples),\"transitions\":\(transitions),\"bit_identical\":\(identical),\"max_abs_diff\":\(maxAbsDiff),\"max_ratio_deviation\":\(maxRatioDeviation),\"same_model\":\(!modelMismatch)}"
    }

    /// Compares one record's stored log-probs with those the model gives.
    public mutating func check(record: Record, model: VelocityNet, threads: Int) throws {
        let tool = "sample logprob"
        let trajX = try record.require("traj.x", by: tool)
        let trajT = try record.require("traj.t", by: tool)
        let trajLogp = try record.require("traj.logp", by: tool)
        let y = try record.require("y", by: tool)
        let times = try trajT.floats()
        guard trajT.shape.count == 1, times.count >= 2 else { throw FlowError("`traj.t` has shape \(trajT.shape), expected [S+1]") }
        let S = times.count - 1
        let c = model.config
        let B = y.shape.first ?? 0
        guard trajX.dtype == .f32, trajX.shape == [B, S + 1, c.channels, c.height, c.width] else {
            throw FlowError("`traj.x` is \(trajX.dtype.rawValue) \(trajX.shape); the model and `traj.t` need F32 \([B, S + 1, c.channels, c.height, c.width])")
        }
        guard trajLogp.dtype == .f32, trajLogp.shape == [B, S] else {
            throw FlowError("`traj.logp` is \(trajLogp.dtype.rawValue) \(trajLogp.shape), expected F32 [\(B), \(S)]")
        }
        let sampler: Sampler
        do { sampler = try Sampler(settings: record.metadata, times: times) } catch { throw FlowError("cannot rebuild the sampler from the record's metadata: \(error)") }
        let labels = try y.int64s().map { Int($0) }
        try model.validate(t: [Float](repeating: 0, count: B), y: labels, batch: B)
        let stored = try trajLogp.floats()
        let traj = try trajX.floats()
        guard !traj.contains(where: { !$0.isFinite }) else { throw FlowError("`traj.x` holds NaN or Inf") }
        let runner = ParallelSampler(model: model, sampler: sampler, seed: 0, threads: threads)
        let fresh = B > 0 ? runner.logProbs(trajectory: traj, labels: labels) : []
        let stochastic = sampler.stochasticSteps
        for b in 0..<B {
            for k in 0..<S where stochastic[k] {
                let a = stored[b * S + k], f = fresh[b * S + k]
                transitions += 1
                if a.bitPattern == f.bitPattern { identical += 1 }
                let d = abs(Double(f) - Double(a))
                maxAbsDiff = max(maxAbsDiff, d.isNaN ? .infinity : d)
                let dev = abs(exp(Double(f) - Double(a)) - 1)
                maxRatioDeviation = max(maxRatioDeviation, dev.isNaN ? .infinity : dev)
            }
        }
        records += 1
        samples += B
    }
}
