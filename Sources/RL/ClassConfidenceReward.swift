import Foundation
import TensorStream

/// A preference reward that can be hacked (issue #17's Pareto study): the confidence of a
/// classifier for the class each sample was generated for, p(y | x) = softmax(logits)[y], from the
/// `logits` that `embed classify` adds. Adds `reward` F32 [B]; a `reward.grad` already in the
/// record is dropped (it would belong to another reward). The image gradient is not available
/// here (the classifier is a stage before), so it serves the objectives that need none (grpo,
/// crd, nft). Everything else passes through; metadata `reward` names the reward.
public enum ClassConfidenceReward {
    public static func apply(_ record: Record, tool: String = "tensors reward") throws -> Record {
        var r = record
        guard let b = record.batchSize else { return r }
        let logits = try record.require("logits", by: tool)
        guard logits.dtype == .f32, logits.shape.count == 2, logits.shape[0] == b else {
            throw RLError("\(tool): `logits` must be F32 [B, K] with B = \(b) (from `embed classify`), got \(logits.dtype.rawValue) \(logits.shape)")
        }
        let k = logits.shape[1]
        let labels = try record.require("y", by: tool).int64s()
        let z = try logits.floats()
        var reward = [Float](repeating: 0, count: b)
        for i in 0..<b {
            let y = Int(labels[i])
            guard y >= 0 && y < k else {
                throw RLError("\(tool): label \(y) of sample \(i) is not one of the classifier's \(k) classes (class confidence needs a real label, not the null label)")
            }
            let row = z[(i * k)..<(i * k + k)]
            guard let top = row.max(), top.isFinite, row.allSatisfy({ $0.isFinite }) else { throw RLError("\(tool): `logits` hold NaN or Inf") }
            var sum = 0.0
            for v in row { sum += exp(Double(v - top)) }
            reward[i] = Float(exp(Double(z[i * k + y] - top)) / sum)
        }
        r["reward"] = Tensor(reward, shape: [b])
        r["reward.grad"] = nil
        r.metadata["reward"] = "class confidence (softmax probability of y under `logits`)"
        return r
    }
}
