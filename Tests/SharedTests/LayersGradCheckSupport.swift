import XCTest
import Shared

/// Finite-difference gradient checking for float32 layers.
///
/// The scalar loss is a random projection of the output, L = sum_i w_i out_i, accumulated in
/// float64, so backward is fed dy = w. For each tensor under test we check
/// - a random direction d (Rademacher): (L(p + eps d) - L(p - eps d)) / (2 eps) against g . d,
/// - the 3 largest-|g| coordinates and 3 random ones, one by one,
/// with central differences and a relative tolerance plus an absolute floor derived from the
/// float32 rounding noise of L (relative 1e-6 of sum |w_i out_i|, divided by eps).
struct GradCheck {
    var rng = CounterRNG(seed: 1234, stream: 77)
    var eps: Float = 1e-2
    var rtol: Double = 3e-3

    mutating func randoms(_ n: Int, std: Double = 1) -> [Float] { (0..<n).map { _ in Float(rng.normal() * std) } }

    /// Checks the gradient `analytic` (already computed at the current value) of `loss` with
    /// respect to the `count` floats at `value`. `loss` returns (L, sum |w out|).
    mutating func check(_ label: String, value: UnsafeMutablePointer<Float>, count: Int, analytic: [Float],
                        loss: () -> (Double, Double), file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(analytic.count, count, "\(label): gradient size", file: file, line: line)
        let gnorm = analytic.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
        XCTAssertGreaterThan(gnorm, 0, "\(label): gradient is identically zero, the check would be vacuous", file: file, line: line)
        let scale = loss().1
        let floor = 2e-6 * scale / Double(eps) + 1e-7
        // Central differences at h and h/2 combined by Richardson extrapolation, which cancels
        // the O(h^2) truncation term: (4 D(h/2) - D(h)) / 3 has error O(h^4).
        func fd(_ perturb: (Float) -> Void) -> Double {
            func central(_ h: Float) -> Double {
                perturb(h)
                let lp = loss().0
                perturb(-2 * h)
                let lm = loss().0
                perturb(h)
                return (lp - lm) / (2 * Double(h))
            }
            return (4 * central(eps / 2) - central(eps)) / 3
        }
        // random direction
        let d: [Float] = (0..<count).map { _ in rng.next() & 1 == 0 ? 1 : -1 }
        let saved = Array(UnsafeBufferPointer(start: value, count: count))
        let numeric = fd { e in for i in 0..<count { value[i] += e * d[i] } }
        for i in 0..<count { value[i] = saved[i] }  // undo accumulated rounding
        var exact: Double = 0
        for i in 0..<count { exact += Double(analytic[i]) * Double(d[i]) }
        let tolDir = rtol * max(abs(exact), abs(numeric)) + floor * Double(count).squareRoot()
        XCTAssertLessThanOrEqual(abs(exact - numeric), tolDir, "\(label): directional derivative analytic \(exact) vs numeric \(numeric)", file: file, line: line)
        // single coordinates
        let ranked = analytic.indices.sorted { abs(analytic[$0]) > abs(analytic[$1]) }
        var coords = Array(ranked.prefix(3))
        for _ in 0..<3 { coords.append(Int(rng.next() % UInt64(count))) }
        for i in Set(coords) {
            let numeric = fd { e in value[i] += e }
            value[i] = saved[i]
            let exact = Double(analytic[i])
            let tol = rtol * max(abs(exact), abs(numeric)) + floor
            XCTAssertLessThanOrEqual(abs(exact - numeric), tol, "\(label)[\(i)]: analytic \(exact) vs numeric \(numeric)", file: file, line: line)
        }
    }

    /// Projection loss helper: (sum w*out, sum |w*out|).
    static func project(_ out: UnsafePointer<Float>, _ w: [Float]) -> (Double, Double) {
        var s = 0.0, a = 0.0
        for i in w.indices { let v = Double(w[i]) * Double(out[i]); s += v; a += abs(v) }
        return (s, a)
    }
}

extension Parameter {
    func randomize(_ g: inout GradCheck, std: Double = 0.5) { values = g.randoms(count, std: std) }
}
