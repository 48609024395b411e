import Foundation
import Flow
import TensorStream

/// Scored rollouts as `sample --record | embed | discrim score` writes them, gathered from every
/// record of a stream into flat arrays (the buffer of one `rlstep` round).
public struct RolloutBuffer {
    /// N samples, D = C*H*W, S steps.
    public var count = 0
    public var sampleShape: [Int] = []
    public var steps = 0
    public var dim: Int { sampleShape.reduce(1, *) }
    /// [S+1] times, t = 1 first (identical in every record).
    public var times: [Float] = []
    /// [N, S+1, D] states.
    public var trajectory: [Float] = []
    /// [N, S] recorded log-probs (mean over dimensions), when present.
    public var logProbs: [Float]?
    public var labels: [Int] = []
    public var ids: [Int64] = []
    public var groups: [Int64]?
    public var rewards: [Float]?
    /// [N, D] d reward / d x, when present.
    public var rewardGrad: [Float]?
    /// Metadata of the first record (sampler settings, model digest, seed...).
    public var metadata: [String: String] = [:]

    public init() {}

    /// Keys whose values must agree across the records of one buffer.
    static let consistentKeys = ["sampler", "sampler.eta", "sampler.steps", "sampler.sde_window", "sampler.memoryless_offset",
                                 "sampler.cfg_scale", "sampler.cfg_interval", "sampler.null_label", "logprob_reduction", "encoder"]

    /// Reads a whole stream. `nullLabel` is used for records without `y`.
    public static func read(_ reader: TensorStreamReader, nullLabel: Int, tool: String = "rlstep") throws -> RolloutBuffer {
        var records: [Record] = []
        while let r = try reader.read() { records.append(r) }
        return try make(records, nullLabel: nullLabel, source: reader.name, tool: tool)
    }

    public static func make(_ records: [Record], nullLabel: Int, source: String = "buffer", tool: String = "rlstep") throws -> RolloutBuffer {
        var buf = RolloutBuffer()
        var gradMissing = false, rewardMissing = false, logpMissing = false, groupMissing = false
        for (index, r) in records.enumerated() {
            func bad(_ why: String) -> RLError { RLError("\(source) record \(index): \(why)") }
            guard r.batchSize != nil else { continue }
            let tx = try r.require("traj.x", by: tool)
            let tt = try r.require("traj.t", by: tool)
            guard tx.dtype == .f32, tx.shape.count >= 3 else { throw bad("`traj.x` must be F32 [B, S+1, C, H, W], got \(tx.dtype.rawValue) \(tx.shape)") }
            guard tt.dtype == .f32, tt.shape.count == 1 else { throw bad("`traj.t` must be F32 [S+1], got \(tt.dtype.rawValue) \(tt.shape)") }
            let b = tx.shape[0], s1 = tx.shape[1], shape = Array(tx.shape.dropFirst(2))
            guard s1 >= 2, tt.shape[0] == s1 else { throw bad("`traj.t` has \(tt.shape[0]) times but `traj.x` has \(s1) states") }
            let t = try tt.floats()
            if let problem = TimeGrid.validate(t) { throw bad("`traj.t`: \(problem)") }
            if buf.times.isEmpty {
                buf.times = t
                buf.steps = s1 - 1
                buf.sampleShape = shape
                buf.metadata = r.metadata
            } else {
                guard t == buf.times else { throw bad("`traj.t` differs from the first record's; one buffer must come from one sampler grid") }
                guard shape == buf.sampleShape else { throw bad("sample shape \(shape) differs from the first record's \(buf.sampleShape)") }
                for k in consistentKeys where r.metadata[k] != buf.metadata[k] {
                    throw bad("metadata `\(k)` = \(r.metadata[k] ?? "(absent)") differs from the first record's \(buf.metadata[k] ?? "(absent)")")
                }
            }
            let D = buf.dim, S = buf.steps
            let tv = try tx.floats()
            if tv.contains(where: { !$0.isFinite }) { throw bad("`traj.x` holds NaN or Inf") }
            buf.trajectory += tv
            try buf.appendLabelsAndIDs(of: r, count: b, nullLabel: nullLabel, bad: bad)
            if let lp = r["traj.logp"] {
                guard lp.shape == [b, S] else { throw bad("`traj.logp` has shape \(lp.shape), expected [\(b), \(S)]") }
                let v = try lp.floats()
                if v.contains(where: { !$0.isFinite }) { throw bad("`traj.logp` holds NaN or Inf") }
                buf.logProbs = (buf.logProbs ?? []) + v
            } else { logpMissing = true }
            if let g = r["group"] {
                guard g.shape == [b] else { throw bad("`group` has shape \(g.shape), expected [\(b)]") }
                buf.groups = (buf.groups ?? []) + (try g.int64s())
            } else { groupMissing = true }
            if let rw = r["reward"] {
                guard rw.shape == [b] else { throw bad("`reward` has shape \(rw.shape), expected [\(b)]") }
                let v = try rw.floats()
                if v.contains(where: { !$0.isFinite }) { throw bad("`reward` holds NaN or Inf") }
                buf.rewards = (buf.rewards ?? []) + v
            } else { rewardMissing = true }
            if let rg = r["reward.grad"] {
                guard rg.shape == [b] + buf.sampleShape else { throw bad("`reward.grad` has shape \(rg.shape), expected \([b] + buf.sampleShape)") }
                let v = try rg.floats()
                if v.contains(where: { !$0.isFinite }) { throw bad("`reward.grad` holds NaN or Inf") }
                buf.rewardGrad = (buf.rewardGrad ?? []) + v
            } else { gradMissing = true }
            _ = D
            buf.count += b
        }
        // A tensor present in some records but not others is as good as missing.
        if logpMissing { buf.logProbs = nil }
        if groupMissing { buf.groups = nil }
        if rewardMissing { buf.rewards = nil }
        if gradMissing { buf.rewardGrad = nil }
        return buf
    }

    /// The sampler that produced the trajectories, rebuilt from metadata and `traj.t`.
    public func sampler() throws -> Sampler {
        do { return try Sampler(settings: metadata, times: times) } catch let e as SamplerError {
            throw RLError("cannot rebuild the sampler from the buffer's metadata: \(e.description)")
        }
    }

    /// Row [i, slot] of the trajectory.
    @inline(__always)
    public func stateOffset(_ i: Int, _ slot: Int) -> Int { (i * (steps + 1) + slot) * dim }

    /// States at `slot` for samples `idx`, [idx.count, D].
    public func states(_ idx: [Int], slot: Int) -> [Float] {
        let D = dim
        var out = [Float](repeating: 0, count: idx.count * D)
        for (r, i) in idx.enumerated() {
            let o = stateOffset(i, slot)
            for d in 0..<D { out[r * D + d] = trajectory[o + d] }
        }
        return out
    }
}

extension RolloutBuffer {
    /// Appends a record's `y` (the null label when absent) and `id` (running indices when absent),
    /// both [b]; shared by the trajectory and final-sample readers.
    mutating func appendLabelsAndIDs(of r: Record, count b: Int, nullLabel: Int, bad: (String) -> RLError) throws {
        if let y = r["y"] {
            guard y.shape == [b] else { throw bad("`y` has shape \(y.shape), expected [\(b)]") }
            labels += try y.int64s().map { Int($0) }
        } else {
            labels += [Int](repeating: nullLabel, count: b)
        }
        if let id = r["id"] {
            guard id.shape == [b] else { throw bad("`id` has shape \(id.shape), expected [\(b)]") }
            ids += try id.int64s()
        } else {
            ids += (0..<b).map { Int64(count + $0) }
        }
    }
}

extension RolloutBuffer {
    /// One rank's part of a stream for a data-parallel round: the records j with j % size == rank
    /// (j counting the records that hold samples), read as `read` (or `readFinal`) reads a whole
    /// stream. Every rank decompresses the whole stream but decodes and keeps only its records;
    /// the other records give only their sample counts, so each rank knows the global index of
    /// its samples (their place in the single-process buffer) and the total. Interleaved records,
    /// not contiguous blocks: a stream has no index, and its number of records is known only at
    /// its end, so a record's owner must follow from its position alone.
    public static func readShard(_ reader: TensorStreamReader, nullLabel: Int, rank: Int, size: Int, finalSamples: Bool,
                                 tool: String = "rlstep") throws -> (buffer: RolloutBuffer, globalIndex: [Int], total: Int, records: Int) {
        var mine: [Record] = [], globalIndex: [Int] = []
        var j = 0, total = 0
        while let r = try reader.read() {
            guard let b = r.batchSize else { continue }
            if j % size == rank {
                mine.append(r)
                globalIndex += total..<(total + b)
            }
            j += 1
            total += b
        }
        let buffer = finalSamples ? try makeFinal(mine, nullLabel: nullLabel, source: reader.name, tool: tool)
            : try make(mine, nullLabel: nullLabel, source: reader.name, tool: tool)
        guard buffer.count == globalIndex.count else {
            throw RLError("\(reader.name): this rank's records hold \(buffer.count) samples, but their batch sizes add up to \(globalIndex.count)")
        }
        return (buffer, globalIndex, total, j)
    }
}
