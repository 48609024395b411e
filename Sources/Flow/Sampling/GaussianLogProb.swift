import Foundation

/// Log-density of an isotropic Gaussian transition N(mu, s^2 I), reduced as the *mean over
/// dimensions* (Flow-GRPO / Precise convention, see docs/algorithms.md 2.1):
///
///     logp = mean_d [ -(x'_d - mu_d)^2 / (2 s^2) - log s - 0.5 log 2 pi ],   s clamped >= 1e-6.
///
/// x' and mu are Float (the stored states); the reduction runs in Double, one row at a time, in
/// index order, so a row's value never depends on the batch it sits in or on the thread count.
public enum GaussianLogProb {
    public static let minStd: Double = 1e-6
    /// Name of the reduction, for provenance metadata (`logprob_reduction`).
    public static let reduction = "mean"
    static let halfLog2Pi = 0.5 * log(2 * Double.pi)

    /// Mean-over-dimensions log-density of one row `x` (count elements) under N(mean, std^2 I).
    @inline(__always)
    public static func meanLogDensity(_ x: UnsafePointer<Float>, mean: UnsafePointer<Float>, std: Double, count: Int) -> Double {
        precondition(count > 0)
        let s = max(std, minStd)
        var sumSq = 0.0
        for d in 0..<count {
            let r = Double(x[d]) - Double(mean[d])
            sumSq += r * r
        }
        return -sumSq / (2 * s * s * Double(count)) - log(s) - halfLog2Pi
    }

    /// Row-wise version: x and mean are [batch, D]; returns [batch] log-probs.
    public static func meanLogDensity(x: [Float], mean: [Float], std: Double, batch: Int) -> [Double] {
        precondition(batch > 0 && x.count == mean.count && x.count % batch == 0, "GaussianLogProb: shape mismatch")
        let dim = x.count / batch
        return x.withUnsafeBufferPointer { xp in
            mean.withUnsafeBufferPointer { mp in
                (0..<batch).map { b in
                    meanLogDensity(xp.baseAddress! + b * dim, mean: mp.baseAddress! + b * dim, std: std, count: dim)
                }
            }
        }
    }
}
