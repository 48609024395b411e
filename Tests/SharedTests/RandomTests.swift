import XCTest
import Shared

final class RandomTests: XCTestCase {
    /// Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
    func testPhiloxKnownAnswers() {
        let zero = philox4x32((0, 0, 0, 0), key: (0, 0))
        XCTAssertEqual([zero.0, zero.1, zero.2, zero.3], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8])
        let ones = philox4x32((0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff), key: (0xffff_ffff, 0xffff_ffff))
        XCTAssertEqual([ones.0, ones.1, ones.2, ones.3], [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd])
        let pi = philox4x32((0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344), key: (0xa409_3822, 0x299f_31d0))
        XCTAssertEqual([pi.0, pi.1, pi.2, pi.3], [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1])
    }

    func testNoiseDependsOnlyOnSeedIdStream() {
        let a = CounterNoise(seed: 42), b = CounterNoise(seed: 42)
        XCTAssertEqual(a.normals(id: 7, stream: 0, count: 1000), b.normals(id: 7, stream: 0, count: 1000))
        XCTAssertNotEqual(a.normals(id: 7, stream: 0, count: 16), a.normals(id: 8, stream: 0, count: 16))
        XCTAssertNotEqual(a.normals(id: 7, stream: 0, count: 16), a.normals(id: 7, stream: 1, count: 16))
        XCTAssertNotEqual(a.normals(id: 7, stream: 0, count: 16), CounterNoise(seed: 43).normals(id: 7, stream: 0, count: 16))
        XCTAssertNotEqual(a.normals(id: 1 << 32, stream: 0, count: 16), a.normals(id: 0, stream: 0, count: 16))
        // Element i is the same whether drawn in one call or from an offset.
        let whole = a.normals(id: 3, stream: 2, count: 103)
        var tail = [Float](repeating: 0, count: 50)
        tail.withUnsafeMutableBufferPointer { a.fillNormal(id: 3, stream: 2, into: $0, startIndex: 53) }
        XCTAssertEqual(Array(whole[53...]), tail)
    }

    func testNormalMomentsOnAMillionDraws() {
        let noise = CounterNoise(seed: 2026)
        var sum = 0.0, sumSq = 0.0, sum4 = 0.0, n = 0
        for id in 0..<1000 {
            for v in noise.normals(id: UInt64(id), stream: 0, count: 1000) {
                let d = Double(v)
                sum += d; sumSq += d * d; sum4 += d * d * d * d; n += 1
            }
        }
        let mean = sum / Double(n), variance = sumSq / Double(n) - mean * mean
        // Standard errors at n = 1e6: mean 0.001, variance 0.0014, fourth moment ~0.01.
        XCTAssertEqual(mean, 0, accuracy: 0.005)
        XCTAssertEqual(variance, 1, accuracy: 0.007)
        XCTAssertEqual(sum4 / Double(n), 3, accuracy: 0.05)
    }

    func testUniformsAndSequentialGenerator() {
        let u = CounterNoise(seed: 1).uniforms(id: 0, stream: 0, count: 100_000)
        XCTAssertTrue(u.allSatisfy { $0 > 0 && $0 < 1 })
        XCTAssertEqual(u.reduce(0, +) / Double(u.count), 0.5, accuracy: 0.005)
        var g1 = CounterRNG(seed: 9), g2 = CounterRNG(seed: 9)
        let first = (0..<10).map { _ in g1.next() }
        XCTAssertEqual(first, (0..<10).map { _ in g2.next() })
        // Resuming from a saved position continues the same sequence.
        var g3 = CounterRNG(seed: 9, position: 5)
        XCTAssertEqual(Array(first[5...]), (0..<5).map { _ in g3.next() })
        var g4 = CounterRNG(seed: 9)
        let normals = (0..<200_000).map { _ in g4.normal() }
        XCTAssertEqual(normals.reduce(0, +) / 200_000, 0, accuracy: 0.01)
    }
}
