import Foundation
import Numerics

/// The Frechet distance between two Gaussians fitted to feature sets, and its parts.
public struct FrechetResult: Sendable, Equatable {
    /// FD = meanTerm + traceA + traceB - 2 traceSqrt.
    public var distance: Double
    /// |mu_A - mu_B|^2.
    public var meanTerm: Double
    /// tr C_A and tr C_B.
    public var traceA: Double
    public var traceB: Double
    /// tr sqrt(C_A^1/2 C_B C_A^1/2).
    public var traceSqrt: Double
    /// Number of eigenvalues of C_A above the numerical-rank threshold (d * eps * max |eigenvalue|);
    /// those below it are treated as 0.
    public var rankA: Int
    /// Most negative eigenvalue clamped to 0, of C_A and of the product matrix (0 if none).
    public var clampedA: Double
    public var clampedProduct: Double
    /// How tr sqrt was computed: "cholesky" or "eigen".
    public var route: String = "eigen"
}

/// Frechet distance through the symmetric eigen route (no general matrix square root):
///
///   C_A = V diag(l) V^T        (dsyevd; l below d * eps * max|l|, negative ones included, set to 0)
///   W   = V diag(sqrt l)       so that C_A^1/2 = W V^T and C_A^1/2 C_B C_A^1/2 = V (W^T C_B W) V^T
///   tr sqrt(C_A^1/2 C_B C_A^1/2) = sum_i sqrt(max(m_i, 0)),  m = eig(W^T C_B W)  (dsyevd, values only;
///                                  m below r * eps * max|m| counts as 0)
///
/// W^T C_B W is orthogonally similar to S1 C_B S1 (S1 = C_A^1/2), so it has the same eigenvalues
/// while skipping one d^3 product; columns of W with l = 0 are dropped (rank-deficient C_A).
///
/// The `auto` route first tries the same computation with another square-root factor of C_A:
/// its Cholesky factor C_A = U^T U (dpotrf). Any two factors F with F^T F = C_A differ by an
/// orthogonal Q (U = Q S1), so U C_B U^T = Q (S1 C_B S1) Q^T has exactly the eigenvalues of
/// S1 C_B S1, and it costs a Cholesky plus two triangular products instead of a full
/// eigen-decomposition with vectors. When C_A is not numerically positive definite (n <= d,
/// collapsed or constant features) dpotrf fails and the eigen route with clamping takes over.
public enum FrechetDistance {
    public enum Route: String, Sendable, CaseIterable {
        case auto, eigen, cholesky
    }

    public static func compute(_ a: FeatureStatistics, _ b: FeatureStatistics, route: Route = .auto) throws -> FrechetResult {
        guard a.dim == b.dim else {
            throw MetricsError("feature dimensions differ: \(a.dim) vs \(b.dim)")
        }
        let d = a.dim
        var meanTerm = 0.0
        for i in 0..<d { let t = a.mean[i] - b.mean[i]; meanTerm += t * t }
        let trA = a.trace, trB = b.trace

        if route != .eigen {
            var u = a.covariance
            let positiveDefinite = try u.withUnsafeMutableBufferPointer { try LAPACK.cholesky($0.baseAddress!, n: d) }
            if positiveDefinite {
                // M = U C_B U^T, in place in a copy of C_B: T = U C_B, then M = T U^T.
                var m = b.covariance
                u.withUnsafeBufferPointer { up in
                    m.withUnsafeMutableBufferPointer { mp in
                        BLAS.dtrmm(left: true, upper: true, transA: false, m: d, n: d, a: up.baseAddress!, lda: d, b: mp.baseAddress!)
                        BLAS.dtrmm(left: false, upper: true, transA: true, m: d, n: d, a: up.baseAddress!, lda: d, b: mp.baseAddress!)
                    }
                }
                u = []
                let (traceSqrt, clamped) = try traceSqrtOfSymmetric(&m, n: d)
                return FrechetResult(distance: meanTerm + trA + trB - 2 * traceSqrt, meanTerm: meanTerm, traceA: trA, traceB: trB,
                                     traceSqrt: traceSqrt, rankA: d, clampedA: 0, clampedProduct: clamped, route: "cholesky")
            } else if route == .cholesky {
                throw MetricsError("the covariance of A is not positive definite: the Cholesky route cannot be used")
            }
        }

        // Eigen-decomposition of C_A.
        var e = a.covariance
        let lambda = try e.withUnsafeMutableBufferPointer {
            try LAPACK.symmetricEigen($0.baseAddress!, n: d, vectors: true)
        }
        let lmax = lambda.last ?? 0
        let tol = Double(d) * Double.ulpOfOne * max(abs(lmax), abs(lambda.first ?? 0))
        let rank = lambda.filter { $0 > tol }.count
        let clampedA = min(0, lambda.first ?? 0)
        // Rows j of e are eigenvectors; keep those above the noise floor `tol` (eigenvalues below it
        // are rounding noise of a zero eigenvalue, whose square root ~1e-8 would bias the trace),
        // scaled by sqrt(l_j): E = W^T, [r, d].
        let keep = (0..<d).filter { lambda[$0] > tol }
        let r = keep.count
        guard r > 0 else {
            return FrechetResult(distance: meanTerm + trA + trB, meanTerm: meanTerm, traceA: trA, traceB: trB,
                                 traceSqrt: 0, rankA: 0, clampedA: clampedA, clampedProduct: 0)
        }
        var w = [Double](repeating: 0, count: r * d)
        e.withUnsafeBufferPointer { ev in
            w.withUnsafeMutableBufferPointer { wp in
                for (row, j) in keep.enumerated() {
                    let s = lambda[j].squareRoot()
                    let src = ev.baseAddress! + j * d, dst = wp.baseAddress! + row * d
                    for i in 0..<d { dst[i] = src[i] * s }
                }
            }
        }
        e = []
        // T = C_B W  ([d, r]; as row-major T^T = W^T C_B = E C_B, [r, d]), then M = E C_B E^T ([r, r]).
        var t = [Double](repeating: 0, count: r * d)
        var m = [Double](repeating: 0, count: r * r)
        w.withUnsafeBufferPointer { wp in
            b.covariance.withUnsafeBufferPointer { cb in
                t.withUnsafeMutableBufferPointer { tp in
                    BLAS.dgemm(m: r, n: d, k: d, a: wp.baseAddress!, b: cb.baseAddress!, c: tp.baseAddress!)
                }
            }
            t.withUnsafeBufferPointer { tp in
                m.withUnsafeMutableBufferPointer { mp in
                    BLAS.dgemm(transB: true, m: r, n: r, k: d, a: tp.baseAddress!, b: wp.baseAddress!, c: mp.baseAddress!)
                }
            }
        }
        t = []
        let (traceSqrt, clamped) = try traceSqrtOfSymmetric(&m, n: r)
        let distance = meanTerm + trA + trB - 2 * traceSqrt
        return FrechetResult(distance: distance, meanTerm: meanTerm, traceA: trA, traceB: trB, traceSqrt: traceSqrt,
                             rankA: rank, clampedA: clampedA, clampedProduct: clamped, route: "eigen")
    }

    /// sum sqrt(max(eig(M), 0)) of a nearly symmetric n x n matrix (symmetrised first, since
    /// rounding in the products makes it slightly asymmetric; destroyed). Eigenvalues below
    /// n * eps * max|eig| are rounding noise of zero and count as 0. Also returns the most
    /// negative eigenvalue (0 if none).
    static func traceSqrtOfSymmetric(_ m: inout [Double], n: Int) throws -> (Double, Double) {
        for i in 0..<n {
            for j in (i + 1)..<max(i + 1, n) {
                let v = 0.5 * (m[i * n + j] + m[j * n + i])
                m[i * n + j] = v
                m[j * n + i] = v
            }
        }
        let mu = try m.withUnsafeMutableBufferPointer {
            try LAPACK.symmetricEigen($0.baseAddress!, n: n, vectors: false)
        }
        let tol = Double(n) * Double.ulpOfOne * max(abs(mu.last ?? 0), abs(mu.first ?? 0))
        var traceSqrt = 0.0
        for v in mu where v > tol { traceSqrt += v.squareRoot() }
        return (traceSqrt, min(0, mu.first ?? 0))
    }

    /// Refuses to compare statistics from different encoders. Missing on both sides is fine;
    /// missing on one side only is a mismatch unless `allowUnknown`.
    public static func checkEncoders(_ a: String?, _ b: String?, nameA: String = "A", nameB: String = "B", allowUnknown: Bool = false) throws {
        switch (a, b) {
        case (nil, nil): return
        case let (x?, y?):
            if x != y { throw MetricsError("features come from different encoders: \(nameA) has encoder \(x), \(nameB) has \(y)") }
        case let (x?, nil):
            if !allowUnknown { throw MetricsError("\(nameA) has encoder \(x) but \(nameB) names no encoder (pass {ignore_encoder} if you know they match)") }
        case let (nil, y?):
            if !allowUnknown { throw MetricsError("\(nameB) has encoder \(y) but \(nameA) names no encoder (pass {ignore_encoder} if you know they match)") }
        }
    }
}
