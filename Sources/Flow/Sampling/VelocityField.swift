/// A velocity field v(x, t, y) in the toolkit's convention: x_t = (1 - t) x0 + t eps, t = 1 is
/// noise, t = 0 is data, target v = eps - x0. Samplers integrate from t = 1 down to t = 0 and
/// need nothing else from a model, so analytic fields (tests) and networks share one interface.
public protocol VelocityField {
    /// Per-sample dimension D (C*H*W for images).
    var sampleDimension: Int { get }

    /// out[b] = v(x[b], t[b], y[b]) for b in 0..<batch. x and out are [batch, D], row-major.
    /// y holds class ids; the null label (num_classes) asks for the unconditional velocity.
    func velocity(_ x: UnsafePointer<Float>, t: [Float], y: [Int], batch: Int, into out: UnsafeMutablePointer<Float>)
}
