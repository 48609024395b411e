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
