import Foundation
import TensorStream

extension RolloutBuffer {
    /// A buffer of final samples only, for forward-process objectives (CRD, DiffusionNFT): `x`
    /// [B, C, H, W] from each record (or the last state of `traj.x` when `x` is absent), with `y`,
    /// `id`, `group`, `reward`. Any sampler works (ODE included); `traj.*` is otherwise ignored.
    /// The result has `steps` = 0, no times, and `trajectory` [N, 1, D] (slot 0 = the final sample).
    public static func readFinal(_ reader: TensorStreamReader, nullLabel: Int, tool: String = "rlstep") throws -> RolloutBuffer {
        var records: [Record] = []
        while let r = try reader.read() { records.append(r) }
        return try makeFinal(records, nullLabel: nullLabel, source: reader.name, tool: tool)
    }

    public static func makeFinal(_ records: [Record], nullLabel: Int, source: String = "buffer", tool: String = "rlstep") throws -> RolloutBuffer {
        var buf = RolloutBuffer()
        var rewardMissing = false, groupMissing = false
        var first = true
        for (index, r) in records.enumerated() {
            func bad(_ why: String) -> RLError { RLError("\(source) record \(index): \(why)") }
            guard r.batchSize != nil else { continue }
            let b: Int, shape: [Int], values: [Float]
            if let x = r["x"] {
                guard x.dtype == .f32, x.shape.count >= 2 else { throw bad("`x` must be F32 [B, C, H, W], got \(x.dtype.rawValue) \(x.shape)") }
                b = x.shape[0]; shape = Array(x.shape.dropFirst()); values = try x.floats()
            } else if let tx = r["traj.x"] {
                guard tx.dtype == .f32, tx.shape.count >= 3, tx.shape[1] >= 1 else { throw bad("`traj.x` must be F32 [B, S+1, C, H, W], got \(tx.dtype.rawValue) \(tx.shape)") }
                b = tx.shape[0]; shape = Array(tx.shape.dropFirst(2))
                let all = try tx.floats(), D = shape.reduce(1, *), s1 = tx.shape[1]
                var v = [Float](); v.reserveCapacity(b * D)
                for i in 0..<b { let o = (i * s1 + s1 - 1) * D; v += all[o..<(o + D)] }
                values = v
            } else {
                throw bad("no `x` (the final samples)")
            }
            if values.contains(where: { !$0.isFinite }) { throw bad("`x` holds NaN or Inf") }
            if first {
                buf.sampleShape = shape
                buf.metadata = r.metadata
                first = false
            } else {
                guard shape == buf.sampleShape else { throw bad("sample shape \(shape) differs from the first record's \(buf.sampleShape)") }
            }
            buf.trajectory += values
            try buf.appendLabelsAndIDs(of: r, count: b, nullLabel: nullLabel, bad: bad)
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
            buf.count += b
        }
        if groupMissing { buf.groups = nil }
        if rewardMissing { buf.rewards = nil }
        buf.steps = 0
        return buf
    }
}
