import Features
import TensorStream

/// `discrim score` on one record: adds `reward` F32 [B] (the logit) and, with `grad`,
/// `reward.grad` F32 [B, C, H, W] = d logit / d x through the encoder; everything else passes
/// through. Features must come from the encoder the head was trained on (metadata `encoder`).
public struct DiscriminatorScorer {
    public let head: ProjectionHead
    /// Digest of the encoder the head was trained on.
    public let encoderDigest: String
    /// The encoder itself (needed for `grad`, or when records carry `x` but no `feat`).
    public let encoder: FeatureEncoder?
    /// Digest of the discriminator checkpoint (provenance metadata `discriminator`).
    public let digest: String?
    public var tool = "discrim score"

    public init(head: ProjectionHead, encoderDigest: String, encoder: FeatureEncoder?, digest: String? = nil) {
        self.head = head
        self.encoderDigest = encoderDigest
        self.encoder = encoder
        self.digest = digest
    }

    public func score(_ record: Record, grad: Bool) throws -> Record {
        var out = record
        guard let b = record.batchSize else { return record }  // no per-sample tensor: pass through
        let labels: [Int]
        if let y = record["y"] {
            guard y.shape == [b] else { throw DiscriminatorError("`y` has shape \(y.shape), expected [\(b)]") }
            labels = try y.int64s().map { Int($0) }
        } else if head.config.numClasses > 0 {
            throw StreamError.missingTensor("y", tool: tool + " (the discriminator is class-conditional)")
        } else {
            labels = [Int](repeating: 0, count: b)
        }
        try head.validate(labels: labels)
        var features: [Float]?
        if let f = record["feat"] {
            let recEnc = record.metadata["encoder"]
            guard recEnc == encoderDigest else {
                throw DiscriminatorError("features come from encoder \(recEnc ?? "(not named)") but the discriminator was trained on encoder \(encoderDigest)")
            }
            guard f.dtype == .f32, f.shape == [b, head.config.featureDim] else {
                throw DiscriminatorError("`feat` must be F32 [\(b), \(head.config.featureDim)], got \(f.dtype.rawValue) \(f.shape)")
            }
            features = try f.floats()
        }
        var images: [Float]?, imageGrad: [Float]?
        if grad || features == nil {
            guard let encoder else {
                if grad { throw DiscriminatorError("{grad} needs the encoder (\(encoderDigest)); pass it with {encoder}") }
                throw StreamError.missingTensor("feat", tool: tool)
            }
            let x = try record.require("x", by: grad ? tool + " {grad}" : tool + " (no `feat` to score)")
            guard x.dtype == .f32, x.shape == [b] + encoder.inputShape else {
                throw DiscriminatorError("`x` must be F32 \([b] + encoder.inputShape) for encoder \(encoderDigest), got \(x.dtype.rawValue) \(x.shape)")
            }
            images = try x.floats()
            // with the gradient, one encoder pass gives both the features and grad_x logit
            let fx: [Float]
            if grad {
                let both = DiscriminatorLoss.featuresAndInputGradient(head: head, encoder: encoder, images: images!, labels: labels)
                fx = both.features
                imageGrad = both.grad
            } else {
                fx = Encoders.features(encoder, x: images!, batch: b)
            }
            if let given = features {
                var worst: Float = 0, scale: Float = 1
                for i in 0..<given.count { worst = max(worst, abs(given[i] - fx[i])); scale = max(scale, abs(fx[i])) }
                if worst > 1e-3 * scale {
                    throw DiscriminatorError("`feat` does not match the encoder's features of `x` (max difference \(worst)); the features come from another encoder or other images")
                }
            }
            features = fx
        }
        let logits = head.logits(features!, labels: labels)
        if logits.contains(where: { !$0.isFinite }) { throw DiscriminatorError("the discriminator's logit is NaN or Inf") }
        out["reward"] = Tensor(logits, shape: [b])
        if let encoder, let g = imageGrad {
            out["reward.grad"] = Tensor(g, shape: [b] + encoder.inputShape)
        }
        out.metadata["encoder"] = encoderDigest
        out.metadata["reward"] = "discriminator logit"
        if let digest { out.metadata["discriminator"] = digest }
        return out
    }
}
