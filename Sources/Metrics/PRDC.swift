import Foundation
import Numerics

/// Precision, recall, density and coverage (Naeem et al. 2020, the `prdc` package), Euclidean in
/// feature space. `real` is the reference set, `fake` the generated one. Radii are distances to
/// the k-th nearest neighbour within a set, the point itself excluded (the package's
/// `kth_value(k + 1)` over distances that include the zero self-distance).
public struct PRDCResult: Sendable, Equatable {
    public var precision: Double
    public var recall: Double
    public var density: Double
    public var coverage: Double
    /// k for precision/recall and for density/coverage.
    public var kPR: Int
    public var kDC: Int
}

public enum PRDC {
    /// Squared distances are computed blockwise as |a|^2 + |b|^2 - 2 a.b with one dgemm per block
    /// of `blockRows` rows, so memory stays O(blockRows * n) and the work runs at GEMM speed.
    public static func compute(real: FeatureMatrix, fake: FeatureMatrix, kPR: Int = 3, kDC: Int = 5,
                               blockRows: Int = 256) throws -> PRDCResult {
        guard real.dim == fake.dim else { throw MetricsError("feature dimensions differ: \(real.dim) vs \(fake.dim)") }
        let kMax = max(kPR, kDC)
        guard kPR >= 1, kDC >= 1 else { throw MetricsError("PRDC needs k >= 1") }
        guard real.count > kMax, fake.count > kPR else {
            throw MetricsError("PRDC needs more than \(kMax) real and \(kPR) generated samples (k-nearest-neighbour radii)")
        }
        let nR = real.count, nF = fake.count
        let normR = squaredNorms(real), normF = squaredNorms(fake)
        // Squared k-NN radii (k-th smallest distance to another point of the same set).
        let radiiR = kthNeighbour(real, normR, ks: [kPR, kDC], blockRows: blockRows)
        let radiiF = kthNeighbour(fake, normF, ks: [kPR], blockRows: blockRows)
        let rR_PR = radiiR[0], rR_DC = radiiR[1], rF_PR = radiiF[0]

        var precise = [Bool](repeating: false, count: nF)      // fake j within some real PR ball
        var densityCount = [Int](repeating: 0, count: nF)       // real DC balls containing fake j
        var recalled = [Bool](repeating: false, count: nR)      // real i within some fake PR ball
        var covered = [Bool](repeating: false, count: nR)       // nearest fake inside real i's DC ball
        var block = [Double](repeating: 0, count: blockRows * nF)
        var start = 0
        while start < nR {
            let rows = min(blockRows, nR - start)
            distanceBlock(real, start, rows, normR, fake, normF, into: &block)
            // Per real row: recall and coverage. Per fake column: precision and density.
            block.withUnsafeBufferPointer { bp in
                for i in 0..<rows {
                    let g = start + i
                    let row = bp.baseAddress! + i * nF
                    let rPR = rR_PR[g], rDC = rR_DC[g]
                    var rec = false
                    var nearest = Double.infinity
                    for j in 0..<nF {
                        let v = row[j]
                        if v < rF_PR[j] { rec = true }
                        if v < nearest { nearest = v }
                        if v < rPR { precise[j] = true }
                        if v < rDC { densityCount[j] += 1 }
                    }
                    recalled[g] = rec
                    covered[g] = nearest < rDC
                }
            }
            start += rows
        }
        let precision = Double(precise.filter { $0 }.count) / Double(nF)
        let recall = Double(recalled.filter { $0 }.count) / Double(nR)
        let density = Double(densityCount.reduce(0, +)) / Double(kDC) / Double(nF)
        let coverage = Double(covered.filter { $0 }.count) / Double(nR)
        return PRDCResult(precision: precision, recall: recall, density: density, coverage: coverage, kPR: kPR, kDC: kDC)
    }

    static func squaredNorms(_ x: FeatureMatrix) -> [Double] {
        var out = [Double](repeating: 0, count: x.count)
        x.values.withUnsafeBufferPointer { v in
            for i in 0..<x.count {
                var s = 0.0
                let row = v.baseAddress! + i * x.dim
                for j in 0..<x.dim { s += row[j] * row[j] }
                out[i] = s
            }
        }
        return out
    }

    /// Squared distances of rows [start, start+rows) of a to every row of b, into block [rows, b.count].
    static func distanceBlock(_ a: FeatureMatrix, _ start: Int, _ rows: Int, _ normA: [Double],
                              _ b: FeatureMatrix, _ normB: [Double], into block: inout [Double]) {
        let n = b.count, d = a.dim
        a.values.withUnsafeBufferPointer { ap in
            b.values.withUnsafeBufferPointer { bp in
                block.withUnsafeMutableBufferPointer { cp in
                    BLAS.dgemm(transB: true, m: rows, n: n, k: d, alpha: -2, a: ap.baseAddress! + start * d,
                               b: bp.baseAddress!, c: cp.baseAddress!)
                    for i in 0..<rows {
                        let na = normA[start + i]
                        let row = cp.baseAddress! + i * n
                        for j in 0..<n { row[j] = max(0, row[j] + na + normB[j]) }
                    }
                }
            }
        }
    }

    /// For each k in `ks`, the squared distance from every row of x to its k-th nearest other row.
    static func kthNeighbour(_ x: FeatureMatrix, _ norms: [Double], ks: [Int], blockRows: Int) -> [[Double]] {
        let n = x.count
        let kMax = ks.max()!
        var out = ks.map { _ in [Double](repeating: 0, count: n) }
        var block = [Double](repeating: 0, count: blockRows * n)
        var start = 0
        var smallest = [Double](repeating: 0, count: kMax + 1)
        while start < n {
            let rows = min(blockRows, n - start)
            distanceBlock(x, start, rows, norms, x, norms, into: &block)
            block.withUnsafeBufferPointer { bp in
                for i in 0..<rows {
                    let g = start + i
                    let row = bp.baseAddress! + i * n
                    // Keep the kMax smallest distances to points other than g, sorted ascending.
                    var filled = 0
                    for j in 0..<n where j != g {
                        let v = row[j]
                        if filled < kMax {
                            var p = filled
                            while p > 0 && smallest[p - 1] > v { smallest[p] = smallest[p - 1]; p -= 1 }
                            smallest[p] = v
                            filled += 1
                        } else if v < smallest[kMax - 1] {
                            var p = kMax - 1
                            while p > 0 && smallest[p - 1] > v { smallest[p] = smallest[p - 1]; p -= 1 }
                            smallest[p] = v
                        }
                    }
                    for (q, k) in ks.enumerated() { out[q][g] = smallest[k - 1] }
                }
            }
            start += rows
        }
        return out
    }
}
