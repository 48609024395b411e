import Foundation
import TensorStream

/// A deliberately hackable reward (docs/algorithms.md 8.0 R3): the mean pixel value of `x` per sample.
/// Adds `reward` F32 [B] and, with `grad`, `reward.grad` F32 [B, C, H, W] = 1/D everywhere; a
/// `reward.grad` already in the record is dropped without `grad` (it would belong to another
/// reward). Everything else passes through; metadata `reward` names the reward.
public enum BrightnessReward {
    public static func apply(_ record: Record, grad: Bool, tool: String = "tensors reward") throws -> Record {
        var r = record
        guard record.batchSize != nil else { return r }
        let x = try record.require("x", by: tool)
        guard x.dtype == .f32, x.shape.count >= 2 else { throw RLError("\(tool): `x` must be F32 [B, C, H, W], got \(x.dtype.rawValue) \(x.shape)") }
        let b = x.shape[0], D = x.shape.dropFirst().reduce(1, *)
        let v = try x.floats()
        var reward = [Float](repeating: 0, count: b)
        for i in 0..<b {
            var s = 0.0
            for d in 0..<D { s += Double(v[i * D + d]) }
            reward[i] = Float(s / Double(D))
        }
        if reward.contains(where: { !$0.isFinite }) { throw RLError("\(tool): `x` holds NaN or Inf") }
        r["reward"] = Tensor(reward, shape: [b])
        r["reward.grad"] = grad ? Tensor([Float](repeating: 1 / Float(D), count: b * D), shape: x.shape) : nil
        r.metadata["reward"] = "brightness (mean pixel value of x)"
        return r
    }
}
