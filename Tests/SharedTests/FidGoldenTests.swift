import Foundation
import XCTest
import Shared

/// Agreement with numpy/scipy reference numbers written by scripts/fid_golden.py:
/// FD as pytorch-fid computes it (scipy.linalg.sqrtm), KID and PRDC by straightforward numpy,
/// low-level image statistics. Tolerance: 1e-6 relative (FD, KID), exact fractions (PRDC).
final class FidGoldenTests: XCTestCase {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden")
    static func path(_ name: String) -> String { folder.appendingPathComponent(name).path }

    lazy var golden: [String: Any] = {
        let data = try! Data(contentsOf: Self.folder.appendingPathComponent("fid_golden.json"))
        return try! JSONSerialization.jsonObject(with: data) as! [String: Any]
    }()

    func number(_ key: String, in dict: [String: Any]? = nil) -> Double { ((dict ?? golden)[key] as! NSNumber).doubleValue }

    func load(_ name: String, keep: Bool = false) throws -> FeatureSet {
        try FeatureSet.read(TensorStreamReader(path: Self.path(name)), name: name, keepFeatures: keep)
    }

    func assertRelative(_ x: Double, _ y: Double, _ tol: Double = 1e-6, _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertLessThanOrEqual(abs(x - y), tol * max(abs(y), 1e-300), "\(what): \(x) vs reference \(y)", file: file, line: line)
    }

    func testFrechetDistanceMatchesPytorchFidSqrtm() throws {
        let a = try load("fid_a.tzst"), b = try load("fid_b.tzst")
        XCTAssertEqual(a.statistics.count, 500)
        XCTAssertEqual(b.statistics.count, 400)
        XCTAssertEqual(a.statistics.encoder, "golden-encoder-v1")
        let mu = (golden["mu_a"] as! [NSNumber]).map(\.doubleValue)
        let sigma = (golden["sigma_a"] as! [NSNumber]).map(\.doubleValue)
        XCTAssertLessThan(MetricsTests.maxRelDiff(a.statistics.mean, mu), 1e-12)
        XCTAssertLessThan(MetricsTests.maxRelDiff(a.statistics.covariance, sigma), 1e-10)
        let fd = try FrechetDistance.compute(a.statistics, b.statistics)
        XCTAssertEqual(fd.route, "cholesky")
        assertRelative(fd.distance, number("fd"), 1e-6, "FD")
        for route in FrechetDistance.Route.allCases {
            assertRelative(try FrechetDistance.compute(a.statistics, b.statistics, route: route).distance, number("fd"), 1e-6, "FD \(route) route")
        }
        assertRelative(fd.traceA, number("trace_a"), 1e-10, "tr C_A")
        assertRelative(fd.traceB, number("trace_b"), 1e-10, "tr C_B")
        // Symmetric in its arguments.
        assertRelative(try FrechetDistance.compute(b.statistics, a.statistics).distance, number("fd"), 1e-6, "FD(B, A)")
        XCTAssertEqual(try FrechetDistance.compute(a.statistics, a.statistics).distance, number("fd_self"), accuracy: 1e-9)
    }

    func testNPZStatisticsFromNumpy() throws {
        XCTAssertEqual(try FeatureSet.kind(of: Self.path("fid_b_stats.npz")), .npz)
        let npz = try NPZ.statistics(Self.path("fid_b_stats.npz"))
        XCTAssertEqual(npz.dim, 24)
        XCTAssertNil(npz.encoder)
        let a = try load("fid_a.tzst")
        assertRelative(try FrechetDistance.compute(a.statistics, npz).distance, number("fd"), 1e-6, "FD vs npz stats")
        assertRelative(try FrechetDistance.compute(a.statistics, try load("fid_b.tzst").statistics).distance,
                       try FrechetDistance.compute(a.statistics, npz).distance, 1e-12, "stream vs npz")
    }

    func testKIDMatchesNumpy() throws {
        let a = try load("fid_a.tzst", keep: true).features!, b = try load("fid_b.tzst", keep: true).features!
        let ref = golden["kid_subsets"] as! [String: Any]
        let ia = (ref["idx_a"] as! [[NSNumber]]).map { $0.map(\.intValue) }
        let ib = (ref["idx_b"] as! [[NSNumber]]).map { $0.map(\.intValue) }
        let kid = try KernelDistance.compute(a, b, subsets: Array(zip(ia, ib)).map { (a: $0.0, b: $0.1) })
        let values = (ref["values"] as! [NSNumber]).map(\.doubleValue)
        for (x, y) in zip(kid.values, values) { assertRelative(x, y, 1e-9, "per-subset MMD^2") }
        assertRelative(kid.mean, number("mean", in: ref), 1e-6, "KID mean")
        assertRelative(kid.std, number("std", in: ref), 1e-6, "KID std")
        // Full sets (subset size covering both sides): the deterministic path of `fid --kid`.
        let a400 = FeatureMatrix(count: 400, dim: a.dim, values: Array(a.values[0..<(400 * a.dim)]))
        let full = try KernelDistance.compute(a400, b, subsetCount: 100, maxSubsetSize: 1000)
        XCTAssertEqual(full.subsets, 1)
        XCTAssertEqual(full.subsetSize, 400)
        assertRelative(full.mean, number("kid_full"), 1e-6, "KID full sets")
    }

    func testPRDCMatchesNumpy() throws {
        let a = try load("fid_a.tzst", keep: true).features!, b = try load("fid_b.tzst", keep: true).features!
        let ref = golden["prdc"] as! [String: Any]
        for block in [256, 37] {
            let r = try PRDC.compute(real: a, fake: b, blockRows: block)
            XCTAssertEqual(r.precision, number("precision", in: ref), accuracy: 1e-12)
            XCTAssertEqual(r.recall, number("recall", in: ref), accuracy: 1e-12)
            XCTAssertEqual(r.density, number("density", in: ref), accuracy: 1e-12)
            XCTAssertEqual(r.coverage, number("coverage", in: ref), accuracy: 1e-12)
        }
    }

    func testLowLevelImageStatistics() throws {
        for (file, key) in [("fid_images_rgb.tzst", "lowlevel_rgb"), ("fid_images_grey.tzst", "lowlevel_grey")] {
            let set = try load(file)
            let ref = golden[key] as! [String: Any]
            let ours = set.images!.values
            XCTAssertEqual(Set(ours.map(\.name)), Set(ref.keys), file)
            for (name, value) in ours { assertRelative(value, number(name, in: ref), 1e-9, "\(file) \(name)") }
        }
    }
}
