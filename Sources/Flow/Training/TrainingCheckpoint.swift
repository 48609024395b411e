import NN
import TensorStream

/// One safetensors file holding everything a training run needs to resume: the model weights
/// under their PyTorch names, AdamW moments (`optim.*`), EMA weights (`ema.*`), and metadata
/// `config`, `step`, `parent_sha256` (digest of the checkpoint training started from) plus the
/// caller's own keys (tool, version, seed...). Written atomically.
public enum TrainingCheckpoint {
    public static let stepKey = "step"
    public static let parentKey = "parent_sha256"

    public static func record(model: VelocityNet, optimizer: AdamW? = nil, ema: EMA? = nil, step: Int,
                              parentDigest: String? = nil, metadata: [String: String] = [:]) -> Record {
        var meta = metadata
        meta[stepKey] = String(step)
        if let parentDigest { meta[parentKey] = parentDigest }
        var r = model.checkpointRecord(metadata: meta)
        optimizer?.save(into: &r)
        ema?.save(into: &r)
        return r
    }

    public static func save(to path: String, model: VelocityNet, optimizer: AdamW? = nil, ema: EMA? = nil, step: Int,
                            parentDigest: String? = nil, metadata: [String: String] = [:]) throws {
        try Checkpoint.write(record(model: model, optimizer: optimizer, ema: ema, step: step, parentDigest: parentDigest, metadata: metadata), to: path)
    }

    /// The step recorded in a checkpoint (0 when absent, e.g. a fresh or exported model).
    public static func step(of record: Record) throws -> Int {
        guard let s = record.metadata[stepKey] else { return 0 }
        guard let k = Int(s), k >= 0 else { throw StreamError.invalid("checkpoint metadata `step` is not a step count: \(s)") }
        return k
    }
}
