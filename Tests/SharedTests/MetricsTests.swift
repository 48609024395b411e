import Foundation
import XCTest
import Shared

/// Library-level checks of the `fid` metrics: streaming statistics, the Frechet distance against
/// closed forms, and every bad input the tool must refuse.
final class MetricsTests: XCTestCase {
    /// Deterministic pseudo-random features: correlated, with a large common offset.
    static func features(n: Int, d: Int, seed: UInt64, offset: Float = 0, scale: Float = 1) -> [Float] {
        var rng = CounterRNG(seed: seed)
        let mix = (0..<(d * d)).map { _ in Float(rng.normal()) / Float(d).squareRoot() }
        var out = [Float](repeating: 0, count: n * d)
        for i in 0..<n {
            let z = (0..<d).map { _ in Float(rng.normal()) }
            for j in 0..<d {
                var s: Float = 0
                for k in 0..<d { s += z[k] * mix[k * d + j] }
                out[i * d + j] = scale * s + offset + Float(j) * 0.01
            }
        }
        return out
    }

    /// Textbook two-pass mean and covariance in float64.
    static func twoPass(_ x: [Float], n: Int, d: Int) -> (mean: [Double], cov: [Double]) {
        var mean = [Double](repeating: 0, count: d)
        for i in 0..<n { for j in 0..<d { mean[j] += Double(x[i * d + j]) } }
        for j in 0..<d { mean[j] /= Double(n) }
        var cov = [Double](repeating: 0, count: d * d)
        for i in 0..<n {
            for a in 0..<d {
                let u = Double(x[i * d + a]) - mean[a]
                for b in 0..<d { cov[a * d + b] += u * (Double(x[i * d + b]) - mean[b]) }
            }
        }
        for k in 0..<(d * d) { cov[k] /= Double(n - 1) }
        return (mean, cov)
    }

    static func maxRelDiff(_ a: [Double], _ b: [Double]) -> Double {
        let scale = b.map(abs).max() ?? 1
        return zip(a, b).map { abs($0 - $1) }.max()! / scale
    }

    func testStreamingStatisticsEqualBatchWhateverTheRecordSizes() throws {
        let (n, d) = (1000, 37)
        let x = Self.features(n: n, d: d, seed: 1, offset: 1000)  // offset: the naive sum-of-squares formula would cancel
        let reference = Self.twoPass(x, n: n, d: d)
        var results: [FeatureStatistics] = []
        for recordRows in [1, 7, 300, 1000] {
            let acc = FeatureAccumulator(dim: d, chunkRows: 128)
            var start = 0
            try x.withUnsafeBufferPointer { p in
                while start < n {
                    let b = min(recordRows, n - start)
                    try acc.add(UnsafeBufferPointer(rebasing: p[(start * d)..<((start + b) * d)]), rows: b)
                    start += b
                }
            }
            results.append(try acc.finish())
        }
        for r in results.dropFirst() {
            XCTAssertEqual(r.mean, results[0].mean, "streaming mean depends on record size")
            XCTAssertEqual(r.covariance, results[0].covariance, "streaming covariance depends on record size")
        }
        XCTAssertEqual(results[0].count, n)
        XCTAssertLessThan(Self.maxRelDiff(results[0].mean, reference.mean), 1e-13)
        XCTAssertLessThan(Self.maxRelDiff(results[0].covariance, reference.cov), 1e-10)
        // Different chunk sizes agree to rounding, and a chunk larger than n works too.
        for chunk in [1, 64, 5000] {
            let s = try FeatureStatistics.of(x, count: n, dim: d)
            let acc = FeatureAccumulator(dim: d, chunkRows: chunk)
            try x.withUnsafeBufferPointer { try acc.add($0, rows: n) }
            let t = try acc.finish()
            XCTAssertLessThan(Self.maxRelDiff(t.covariance, s.covariance), 1e-10, "chunk \(chunk)")
        }
    }

    func testFrechetOfIdenticalSetsIsZero() throws {
        let x = Self.features(n: 400, d: 16, seed: 2, offset: 3)
        let s = try FeatureStatistics.of(x, count: 400, dim: 16)
        for route in FrechetDistance.Route.allCases {
            let r = try FrechetDistance.compute(s, s, route: route)
            XCTAssertEqual(r.distance, 0, accuracy: 1e-10 * s.trace, "\(route)")
        }
        let r = try FrechetDistance.compute(s, s, route: .eigen)
        XCTAssertEqual(r.distance, 0, accuracy: 1e-10 * s.trace)
        XCTAssertEqual(r.traceSqrt, s.trace, accuracy: 1e-10 * s.trace)
        XCTAssertEqual(r.rankA, 16)
    }

    /// A random orthogonal matrix (Gram-Schmidt on Gaussian columns), row-major.
    static func orthogonal(_ d: Int, seed: UInt64) -> [Double] {
        var rng = CounterRNG(seed: seed)
        var q = (0..<(d * d)).map { _ in rng.normal() }
        for j in 0..<d {
            for k in 0..<j {
                var dot = 0.0
                for i in 0..<d { dot += q[i * d + j] * q[i * d + k] }
                for i in 0..<d { q[i * d + j] -= dot * q[i * d + k] }
            }
            var norm = 0.0
            for i in 0..<d { norm += q[i * d + j] * q[i * d + j] }
            norm = norm.squareRoot()
            for i in 0..<d { q[i * d + j] /= norm }
        }
        return q
    }

    /// Q diag(l) Q^T.
    static func spd(_ q: [Double], _ l: [Double]) -> [Double] {
        let d = l.count
        var c = [Double](repeating: 0, count: d * d)
        for i in 0..<d { for j in 0..<d { var s = 0.0; for k in 0..<d { s += q[i * d + k] * l[k] * q[j * d + k] }; c[i * d + j] = s } }
        return c
    }

    func testFrechetOfGaussiansMatchesClosedForms() throws {
        for route in FrechetDistance.Route.allCases where route != .cholesky {
            try checkClosedForms(route)
        }
    }

    func checkClosedForms(_ route: FrechetDistance.Route) throws {
        let d = 12
        var rng = CounterRNG(seed: 3)
        let m1 = (0..<d).map { _ in rng.normal() }, m2 = (0..<d).map { _ in rng.normal() }
        let meanTerm = zip(m1, m2).map { ($0 - $1) * ($0 - $1) }.reduce(0, +)
        // Commuting covariances (same eigenvectors): FD = |dm|^2 + sum (sqrt a - sqrt b)^2.
        let q = Self.orthogonal(d, seed: 4)
        let a = (0..<d).map { _ in 0.1 + 3 * rng.uniform() }, b = (0..<d).map { _ in 0.1 + 3 * rng.uniform() }
        var expected = meanTerm + zip(a, b).map { ($0.squareRoot() - $1.squareRoot()) * ($0.squareRoot() - $1.squareRoot()) }.reduce(0, +)
        var r = try FrechetDistance.compute(FeatureStatistics(count: 100, dim: d, mean: m1, covariance: Self.spd(q, a)),
                                            FeatureStatistics(count: 100, dim: d, mean: m2, covariance: Self.spd(q, b)), route: route)
        XCTAssertEqual(r.distance, expected, accuracy: 1e-10 * expected, "\(route)")
        // Non-commuting: C1 = s I, C2 = Q2 diag(b) Q2^T: tr sqrt(C1 C2) = sqrt(s) sum sqrt(b).
        let s = 2.5
        let q2 = Self.orthogonal(d, seed: 5)
        var c1 = [Double](repeating: 0, count: d * d)
        for i in 0..<d { c1[i * d + i] = s }
        expected = meanTerm + Double(d) * s + b.reduce(0, +) - 2 * s.squareRoot() * b.map { $0.squareRoot() }.reduce(0, +)
        r = try FrechetDistance.compute(FeatureStatistics(count: 100, dim: d, mean: m1, covariance: c1),
                                        FeatureStatistics(count: 100, dim: d, mean: m2, covariance: Self.spd(q2, b)), route: route)
        XCTAssertEqual(r.distance, expected, accuracy: 1e-10 * expected, "\(route)")
        // Rank-deficient C1 (as with n <= d): zero eigenvalues are clamped, not turned into NaN.
        var a0 = a
        for k in 0..<4 { a0[k] = 0 }
        expected = meanTerm + zip(a0, b).map { ($0.squareRoot() - $1.squareRoot()) * ($0.squareRoot() - $1.squareRoot()) }.reduce(0, +)
        r = try FrechetDistance.compute(FeatureStatistics(count: 9, dim: d, mean: m1, covariance: Self.spd(q, a0)),
                                        FeatureStatistics(count: 100, dim: d, mean: m2, covariance: Self.spd(q, b)), route: route)
        XCTAssertEqual(r.distance, expected, accuracy: 1e-9 * expected, "\(route)")
        XCTAssertEqual(r.route, "eigen", "a singular C_A must take the eigen route")
        XCTAssertEqual(r.rankA, d - 4)
        XCTAssertThrowsError(try FrechetDistance.compute(FeatureStatistics(count: 9, dim: d, mean: m1, covariance: Self.spd(q, a0)),
                                                         FeatureStatistics(count: 100, dim: d, mean: m2, covariance: Self.spd(q, b)),
                                                         route: .cholesky))
        XCTAssertTrue(r.distance.isFinite)
    }

    func testSampledGaussiansConvergeToClosedForm() throws {
        // Samples from N(0, I) and N(1, 4 I) in d = 8: FD -> 8 * 1 + 8 * (2 - 1)^2 = 16.
        let (n, d) = (20000, 8)
        var rng = CounterRNG(seed: 6)
        let x = (0..<(n * d)).map { _ in Float(rng.normal()) }
        let y = (0..<(n * d)).map { _ in Float(1 + 2 * rng.normal()) }
        let r = try FrechetDistance.compute(FeatureStatistics.of(x, count: n, dim: d), FeatureStatistics.of(y, count: n, dim: d))
        XCTAssertEqual(r.distance, 16, accuracy: 0.3)
    }

    // MARK: - Bad input

    func stream(_ records: [Record]) throws -> TensorStreamReader {
        let path = NSTemporaryDirectory() + "metrics-\(UUID().uuidString).tzst"
        let w = try TensorStreamWriter(path: path)
        for r in records { try w.write(r) }
        try w.finish()
        addTeardownBlock { unlink(path) }
        return try TensorStreamReader(path: path)
    }

    func feat(_ values: [Float], _ b: Int, _ d: Int, encoder: String? = nil) -> Record {
        Record([("feat", Tensor(values, shape: [b, d]))], metadata: encoder.map { ["encoder": $0] } ?? [:])
    }

    func assertMetricsError(_ body: @autoclosure () throws -> Any, contains text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(text), "error `\(error)` does not mention `\(text)`", file: file, line: line)
            XCTAssertFalse("\(error)".contains("\n"), "error is not one line", file: file, line: line)
        }
    }

    func testBadInputsAreRefusedWithOneLineErrors() throws {
        let ok = try FeatureStatistics.of(Self.features(n: 50, d: 4, seed: 7), count: 50, dim: 4)
        let other = try FeatureStatistics.of(Self.features(n: 50, d: 5, seed: 7), count: 50, dim: 5)
        assertMetricsError(try FrechetDistance.compute(ok, other), contains: "dimensions differ")

        var x = Self.features(n: 10, d: 4, seed: 8)
        x[17] = .nan
        assertMetricsError(try FeatureStatistics.of(x, count: 10, dim: 4), contains: "NaN or Inf")
        x[17] = .infinity
        assertMetricsError(try FeatureStatistics.of(x, count: 10, dim: 4), contains: "sample 4")
        assertMetricsError(try FeatureStatistics.of([1, 2, 3], count: 1, dim: 3), contains: "covariance is undefined")

        assertMetricsError(try FeatureSet.read(stream([]), name: "empty"), contains: "no features")
        assertMetricsError(try FeatureSet.read(stream([feat([], 0, 4)]), name: "zero rows"), contains: "no features")
        assertMetricsError(try FeatureSet.read(stream([Record([("x", Tensor([0, 1] as [Float], shape: [2, 1]))])]), name: "s"),
                           contains: "no `feat` tensor")
        assertMetricsError(try FeatureSet.read(stream([feat([1, 2, 3, 4], 2, 2), feat([1, 2, 3], 1, 3)]), name: "s"),
                           contains: "dimension changes")
        assertMetricsError(try FeatureSet.read(stream([feat([1, 2, 3, 4], 2, 2, encoder: "e1"), feat([1, 2, 3, 4], 2, 2, encoder: "e2")]), name: "s"),
                           contains: "different encoders")
        assertMetricsError(try FeatureSet.read(stream([feat([1, 2], 1, 2)]), name: "one"), contains: "only one sample")

        XCTAssertNoThrow(try FrechetDistance.checkEncoders(nil, nil))
        XCTAssertNoThrow(try FrechetDistance.checkEncoders("e1", "e1"))
        assertMetricsError(try FrechetDistance.checkEncoders("e1", "e2"), contains: "different encoders")
        assertMetricsError(try FrechetDistance.checkEncoders("e1", nil), contains: "names no encoder")
        XCTAssertNoThrow(try FrechetDistance.checkEncoders("e1", nil, allowUnknown: true))
        assertMetricsError(try FrechetDistance.checkEncoders("e1", "e2", allowUnknown: true), contains: "different encoders")
    }

    func testStatisticsFileRoundTrip() throws {
        var s = try FeatureStatistics.of(Self.features(n: 60, d: 6, seed: 9), count: 60, dim: 6)
        s.encoder = "sha256:abc"
        let path = NSTemporaryDirectory() + "stats-\(UUID().uuidString).safetensors"
        defer { unlink(path) }
        try s.write(to: path)
        XCTAssertEqual(try FeatureSet.kind(of: path), .statistics)
        XCTAssertEqual(try FeatureStatistics.read(path), s)
    }

    func testKIDSubsetSampling() throws {
        var rng = CounterRNG(seed: 1)
        let idx = KernelDistance.sampleWithoutReplacement(n: 50, k: 20, rng: &rng)
        XCTAssertEqual(Set(idx).count, 20)
        XCTAssertTrue(idx.allSatisfy { (0..<50).contains($0) })
        let a = FeatureMatrix(Self.features(n: 60, d: 5, seed: 10), count: 60, dim: 5)
        let b = FeatureMatrix(Self.features(n: 40, d: 5, seed: 11, offset: 0.5), count: 40, dim: 5)
        let k1 = try KernelDistance.compute(a, b, subsetCount: 7, maxSubsetSize: 30, seed: 3)
        let k2 = try KernelDistance.compute(a, b, subsetCount: 7, maxSubsetSize: 30, seed: 3)
        XCTAssertEqual(k1, k2)
        XCTAssertEqual(k1.subsets, 7)
        XCTAssertEqual(k1.subsetSize, 30)
        XCTAssertGreaterThan(k1.std, 0)
        // Same distribution: KID near zero relative to a shifted one.
        let same = try KernelDistance.compute(a, FeatureMatrix(Self.features(n: 60, d: 5, seed: 12), count: 60, dim: 5))
        XCTAssertLessThan(abs(same.mean), k1.mean)
    }
}
