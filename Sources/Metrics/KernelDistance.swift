import Foundation
import Numerics

/// An in-memory feature set: [count, dim] float64, rows are samples (KID and PRDC need the
/// features themselves, not only their statistics).
public struct FeatureMatrix: Sendable {
    public let count: Int
    public let dim: Int
    public var values: [Double]

    public init(count: Int, dim: Int, values: [Double]) {
        precondition(values.count == count * dim)
        self.count = count
        self.dim = dim
        self.values = values
    }

    public init(_ floats: [Float], count: Int, dim: Int) {
        self.init(count: count, dim: dim, values: floats.map(Double.init))
    }

    /// Rows `indices`, gathered into a new matrix.
    public func rows(_ indices: [Int]) -> [Double] {
        var out = [Double](repeating: 0, count: indices.count * dim)
        values.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                for (r, i) in indices.enumerated() {
                    (dst.baseAddress! + r * dim).update(from: src.baseAddress! + i * dim, count: dim)
                }
            }
        }
        return out
    }
}

/// Kernel Inception/Frechet-style distance (KID, Binkowski et al. 2018): the unbiased estimate of
/// MMD^2 with the polynomial kernel k(a, b) = (a.b / d + 1)^3, averaged over random subsets.
public struct KernelDistanceResult: Sendable, Equatable {
    /// Mean of the per-subset MMD^2 estimates.
    public var mean: Double
    /// Sample standard deviation of the per-subset estimates (divisor S - 1; 0 for one subset).
    public var std: Double
    /// Standard error of the mean, std / sqrt(S).
    public var standardError: Double
    /// Number of subsets S actually evaluated, and the subset size m.
    public var subsets: Int
    public var subsetSize: Int
    /// Per-subset values.
    public var values: [Double]
}

public enum KernelDistance {
    /// Unbiased MMD^2 between the rows of x [m, d] and y [m, d] (both float64, same m):
    /// (sum_{i!=j} k(x_i,x_j) + sum_{i!=j} k(y_i,y_j)) / (m (m-1)) - 2 sum_{i,j} k(x_i,y_j) / m^2.
    public static func unbiasedMMD2(_ x: [Double], _ y: [Double], m: Int, dim d: Int) -> Double {
        precondition(m >= 2 && x.count == m * d && y.count == m * d)
        var g = [Double](repeating: 0, count: m * m)
        let invD = 1.0 / Double(d)
        func offDiagonalSum(_ a: [Double]) -> Double {
            a.withUnsafeBufferPointer { ap in
                g.withUnsafeMutableBufferPointer { gp in
                    BLAS.dsyrkUpperAAt(n: m, k: d, a: ap.baseAddress!, beta: 0, c: gp.baseAddress!)
                }
            }
            var s = 0.0
            for i in 0..<m {
                var rowSum = 0.0
                for j in (i + 1)..<max(i + 1, m) {
                    let k = g[i * m + j] * invD + 1
                    rowSum += k * k * k
                }
                s += rowSum
            }
            return 2 * s
        }
        let sxx = offDiagonalSum(x)
        let syy = offDiagonalSum(y)
        x.withUnsafeBufferPointer { xp in
            y.withUnsafeBufferPointer { yp in
                g.withUnsafeMutableBufferPointer { gp in
                    BLAS.dgemm(transB: true, m: m, n: m, k: d, a: xp.baseAddress!, b: yp.baseAddress!, c: gp.baseAddress!)
                }
            }
        }
        var sxy = 0.0
        for i in 0..<m {
            var rowSum = 0.0
            for j in 0..<m {
                let k = g[i * m + j] * invD + 1
                rowSum += k * k * k
            }
            sxy += rowSum
        }
        let mm = Double(m)
        return (sxx + syy) / (mm * (mm - 1)) - 2 * sxy / (mm * mm)
    }

    /// KID over given subsets: `subsets[s] = (rows of a, rows of b)`, each of the same size m >= 2.
    public static func compute(_ a: FeatureMatrix, _ b: FeatureMatrix, subsets: [(a: [Int], b: [Int])]) throws -> KernelDistanceResult {
        guard a.dim == b.dim else { throw MetricsError("feature dimensions differ: \(a.dim) vs \(b.dim)") }
        guard let first = subsets.first else { throw MetricsError("KID needs at least one subset") }
        let m = first.a.count
        guard m >= 2 else { throw MetricsError("KID needs at least two samples per side") }
        var values: [Double] = []
        for s in subsets {
            guard s.a.count == m, s.b.count == m else { throw MetricsError("KID subsets must all have the same size") }
            values.append(unbiasedMMD2(a.rows(s.a), b.rows(s.b), m: m, dim: a.dim))
        }
        let count = Double(values.count)
        let mean = values.reduce(0, +) / count
        let std = values.count > 1 ? (values.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / (count - 1)).squareRoot() : 0
        return KernelDistanceResult(mean: mean, std: std, standardError: std / count.squareRoot(),
                                    subsets: values.count, subsetSize: m, values: values)
    }

    /// KID with `subsetCount` subsets of size m = min(maxSubsetSize, n_a, n_b), drawn without
    /// replacement by a partial Fisher-Yates shuffle driven by `CounterRNG(seed, stream: 0x4B1D)`
    /// (one RNG for all subsets: a's rows, then b's, subset after subset). When m equals both
    /// set sizes every subset is the full set, so one evaluation is exact and the others would
    /// repeat it: the result then has `subsets == 1` and std 0.
    public static func compute(_ a: FeatureMatrix, _ b: FeatureMatrix, subsetCount: Int = 100, maxSubsetSize: Int = 1000,
                               seed: UInt64 = 0) throws -> KernelDistanceResult {
        let m = min(maxSubsetSize, a.count, b.count)
        guard m >= 2 else { throw MetricsError("KID needs at least two samples per side") }
        if m == a.count && m == b.count {
            return try compute(a, b, subsets: [(Array(0..<m), Array(0..<m))])
        }
        var rng = CounterRNG(seed: seed, stream: 0x4B1D)
        var subsets: [(a: [Int], b: [Int])] = []
        for _ in 0..<max(1, subsetCount) {
            let ia = sampleWithoutReplacement(n: a.count, k: m, rng: &rng)
            let ib = sampleWithoutReplacement(n: b.count, k: m, rng: &rng)
            subsets.append((ia, ib))
        }
        return try compute(a, b, subsets: subsets)
    }

    /// k distinct indices from 0..<n (partial Fisher-Yates), in draw order.
    public static func sampleWithoutReplacement(n: Int, k: Int, rng: inout CounterRNG) -> [Int] {
        precondition(k <= n)
        var pool = Array(0..<n)
        for i in 0..<k {
            let j = i + Int(rng.next() % UInt64(n - i))
            pool.swapAt(i, j)
        }
        return Array(pool[0..<k])
    }
}
