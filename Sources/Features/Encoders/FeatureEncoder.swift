/// A frozen feature map phi: images -> features, with the input gradient of any scalar function
/// of the features (R1 and the DRL reward gradient flow through it). `embed` implements it for
/// our trained encoders and for identity (`--pixels`) features; `discrim` only calls it.
public protocol FeatureEncoder {
    /// Input shape per sample [C, H, W] the encoder expects.
    var inputShape: [Int] { get }
    /// Feature dimension D.
    var featureDimension: Int { get }
    /// SHA-256 of the encoder checkpoint ("pixels" for identity features): streams carry it in
    /// metadata key `encoder` so later stages can refuse features from another encoder.
    var digest: String { get }

    /// features[b] = phi(x[b]) for b in 0..<batch; x is [batch, C*H*W], out [batch, D].
    func features(_ x: UnsafePointer<Float>, batch: Int, into out: UnsafeMutablePointer<Float>)

    /// Vector-Jacobian product: dx[b] = (d phi(x[b]) / d x)^T g[b], g is [batch, D], dx [batch, C*H*W].
    func featureVJP(_ x: UnsafePointer<Float>, batch: Int, cotangent g: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>)

    /// Features and the VJP of a cotangent computed from them (a discriminator's d logit / d phi),
    /// from one forward pass where the encoder can keep its activations (Inception, DINOv2: one
    /// pass per chunk instead of two). `cotangent(features, first, count, g)` fills g [count, D]
    /// for samples first..<first+count from their features [count, D]; it may be called from
    /// several threads at once. Bit-identical to `features` followed by `featureVJP`.
    func featuresAndVJP(_ x: UnsafePointer<Float>, batch: Int, features out: UnsafeMutablePointer<Float>,
                        cotangent: FeatureCotangent, into dx: UnsafeMutablePointer<Float>)
}

/// Fills g [count, D] for samples first..<first+count from their features [count, D].
public typealias FeatureCotangent = (_ features: UnsafePointer<Float>, _ first: Int, _ count: Int, _ g: UnsafeMutablePointer<Float>) -> Void

extension FeatureEncoder {
    /// Two passes: the features, then the VJP (which runs its own forward).
    public func featuresAndVJP(_ x: UnsafePointer<Float>, batch: Int, features out: UnsafeMutablePointer<Float>,
                               cotangent: FeatureCotangent, into dx: UnsafeMutablePointer<Float>) {
        guard batch > 0 else { return }
        features(x, batch: batch, into: out)
        let g = UnsafeMutablePointer<Float>.allocate(capacity: batch * featureDimension)
        defer { g.deallocate() }
        cotangent(out, 0, batch, g)
        featureVJP(x, batch: batch, cotangent: g, into: dx)
    }
}

/// Identity features: phi(x) = flattened x. The `--pixels` space, and a test double.
public struct PixelEncoder: FeatureEncoder {
    public let inputShape: [Int]
    public var featureDimension: Int { inputShape.reduce(1, *) }
    public var digest: String { "pixels" }

    public init(inputShape: [Int]) { self.inputShape = inputShape }

    public func features(_ x: UnsafePointer<Float>, batch: Int, into out: UnsafeMutablePointer<Float>) {
        out.update(from: x, count: batch * featureDimension)
    }

    public func featureVJP(_ x: UnsafePointer<Float>, batch: Int, cotangent g: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>) {
        dx.update(from: g, count: batch * featureDimension)
    }
}
