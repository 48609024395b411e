import Foundation

/// A velocity field whose data distribution is known in closed form, so the exact marginal of
/// x_t is known at every t: the yardstick for sampler tests and the error table of
/// docs/samplers.md. Every dimension is an independent copy of the same 1-D law.
public protocol AnalyticVelocityField: VelocityField {
    /// Exact mean and variance of x_t (each dimension).
    func marginal(at t: Double) -> (mean: Double, variance: Double)
    /// The velocity is affine in x at each t: v(x, t) = slope x + intercept (both fields here
    /// are). Lets `SamplerDiagnostics.propagatedMoments` push the exact mean and variance
    /// through a sampler's Gaussian steps with no Monte-Carlo noise.
    func affineVelocity(at t: Double) -> (slope: Double, intercept: Double)
    var name: String { get }
}

/// Data = a point mass at m: x_t = (1 - t) m + t eps, so eps_hat = (x - (1 - t) m) / t and
/// v = eps_hat - m exactly; marginal N((1 - t) m, t^2). Labels are ignored. Singular at t = 0,
/// which no sampler evaluates.
public struct PointMassField: AnalyticVelocityField {
    public let m: Double
    public let sampleDimension: Int
    public var name: String { "point mass m=\(m)" }

    public init(m: Double, dimension: Int) {
        self.m = m
        self.sampleDimension = dimension
    }

    public func velocity(_ x: UnsafePointer<Float>, t: [Float], y: [Int], batch: Int, into out: UnsafeMutablePointer<Float>) {
        let dim = sampleDimension
        for b in 0..<batch {
            let tb = Double(t[b])
            for d in 0..<dim {
                let i = b * dim + d
                out[i] = Float((Double(x[i]) - (1 - tb) * m) / tb - m)
            }
        }
    }

    public func marginal(at t: Double) -> (mean: Double, variance: Double) { ((1 - t) * m, t * t) }

    public func affineVelocity(at t: Double) -> (slope: Double, intercept: Double) { (1 / t, -m / t) }
}

/// Data = N(m, s^2) per dimension. x_t = (1 - t) x0 + t eps is jointly Gaussian with x0 and eps:
/// with r = x - (1 - t) m and q = (1 - t)^2 s^2 + t^2 = Var x_t,
///   E[x0 | x] = m + (1 - t) s^2 r / q,  E[eps | x] = t r / q,  v = E[eps - x0 | x];
/// marginal N((1 - t) m, q). Labels are ignored.
public struct GaussianDataField: AnalyticVelocityField {
    public let m: Double
    public let s: Double
    public let sampleDimension: Int
    public var name: String { "Gaussian m=\(m) s=\(s)" }

    public init(m: Double, s: Double, dimension: Int) {
        self.m = m
        self.s = s
        self.sampleDimension = dimension
    }

    public func velocity(_ x: UnsafePointer<Float>, t: [Float], y: [Int], batch: Int, into out: UnsafeMutablePointer<Float>) {
        let dim = sampleDimension
        let s2 = s * s
        for b in 0..<batch {
            let tb = Double(t[b])
            let q = (1 - tb) * (1 - tb) * s2 + tb * tb
            for d in 0..<dim {
                let i = b * dim + d
                let r = Double(x[i]) - (1 - tb) * m
                let x0 = m + (1 - tb) * s2 * r / q
                let eps = tb * r / q
                out[i] = Float(eps - x0)
            }
        }
    }

    public func marginal(at t: Double) -> (mean: Double, variance: Double) {
        ((1 - t) * m, (1 - t) * (1 - t) * s * s + t * t)
    }

    /// v = r (t - (1 - t) s^2) / q - m with r = x - (1 - t) m.
    public func affineVelocity(at t: Double) -> (slope: Double, intercept: Double) {
        let q = (1 - t) * (1 - t) * s * s + t * t
        let slope = (t - (1 - t) * s * s) / q
        return (slope, -(1 - t) * m * slope - m)
    }
}
