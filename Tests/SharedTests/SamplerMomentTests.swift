import XCTest
import Shared

/// Marginal accuracy of every sampler against analytic data (docs/algorithms.md 8.1):
/// (a) point mass m = 1.5, marginal N((1 - t) m, t^2); (b) Gaussian N(1.5, 0.5^2), marginal
/// N((1 - t) m, (1 - t)^2 s^2 + t^2). Two measurements: exact moment propagation through the step
/// coefficients (no noise: `SamplerDiagnostics.propagatedMoments`) and Monte Carlo through
/// `Sampler.sample` (the real code path); the Monte Carlo must agree with the propagation.
final class SamplerMomentTests: XCTestCase {
    let pointMass = PointMassField(m: 1.5, dimension: 4)
    let gaussian = GaussianDataField(m: 1.5, s: 0.5, dimension: 4)
    let allEtas = [0.3, 0.7, 1.0, 1.5, 2.0.squareRoot(), 2.0, 3.0]

    func etas(_ kind: SamplerKind) -> [Double] {
        switch kind {
        case .euler, .heun: return [0]
        case .cps: return [0.3, 0.7, 1.0]
        default: return allEtas
        }
    }

    /// Precise, dance-precise (and CPS, and the ODEs) keep the exact point-mass marginal at every
    /// step, for any NFE, shift and eta: propagation error at rounding level.
    func testPointMassExactAtAnyNFEAndEta() throws {
        for kind in [SamplerKind.precise, .dancePrecise, .cps, .euler, .heun] {
            for nfe in [1, 2, 6, 10, 20, 30] {
                for shift in [1.0, 3.0] {
                    for eta in etas(kind) {
                        let s = try Sampler(kind: kind, steps: nfe, shift: shift, eta: eta)
                        let r = SamplerDiagnostics.propagatedMoments(sampler: s, field: pointMass)
                        let label = "\(kind.rawValue) NFE \(nfe) shift \(shift) eta \(eta)"
                        for k in 0...nfe {
                            XCTAssertEqual(r.meanError[k], 0, accuracy: 1e-9, label)
                            XCTAssertEqual(r.varianceError[k], 0, accuracy: 1e-9, label)
                        }
                    }
                }
            }
        }
        // Euler-type SDEs do not: Flow-GRPO's excess variance at NFE 6.
        let fg = SamplerDiagnostics.propagatedMoments(sampler: try Sampler(kind: .flowgrpo, steps: 6), field: pointMass)
        XCTAssertGreaterThan(fg.worst(fg.varianceError).error, 0.05)
    }

    /// Monte Carlo (40k values per step) of Precise / dance-precise against the exact point-mass
    /// marginals at every step: within 5.5 standard errors.
    func testPreciseMonteCarloMatchesExactPointMassMarginals() throws {
        for kind in [SamplerKind.precise, .dancePrecise] {
            for nfe in [6, 10, 20] {
                for eta in [0.3, 1.0, 1.5, 3.0] {
                    let s = try Sampler(kind: kind, steps: nfe, eta: eta)
                    let r = SamplerDiagnostics.moments(sampler: s, field: pointMass, samples: 10_000, seed: 1)
                    assertWithinMonteCarlo(r, reference: r.exactMean, referenceVariance: r.exactVariance, "\(kind.rawValue) NFE \(nfe) eta \(eta)")
                }
            }
        }
    }

    /// Every sampler, NFE 6/10/20, several eta, both data sets: the Monte-Carlo moments of the
    /// real sampling path agree with the exactly propagated moments of the step coefficients.
    /// This ties the sampling code (noise injection, guidance-free path, recording) to the
    /// formulas whose errors docs/samplers.md tabulates.
    func testMonteCarloMatchesPropagatedMoments() throws {
        for field in [pointMass, gaussian] as [any AnalyticVelocityField] {
            for kind in SamplerKind.allCases {
                for nfe in [6, 10, 20] {
                    for eta in SamplerDiagnostics.tableEtas(kind) {
                        let s = try Sampler(kind: kind, steps: nfe, eta: eta)
                        let mc = SamplerDiagnostics.moments(sampler: s, field: field, samples: 5_000, seed: 3)
                        let exact = SamplerDiagnostics.propagatedMoments(sampler: s, field: field)
                        assertWithinMonteCarlo(mc, reference: exact.mean, referenceVariance: exact.variance,
                                               "\(field.name) \(kind.rawValue) NFE \(nfe) eta \(eta)")
                    }
                }
            }
        }
    }

    /// Gaussian data: DRL's local-linear memoryless integrator stays close to the exact marginals
    /// and beats Euler-Maruyama; the ODEs converge at their orders; the rest stay within sane
    /// bounds at their default eta.
    func testGaussianDataBounds() throws {
        func report(_ kind: SamplerKind, _ nfe: Int, eta: Double? = nil, offset: Double? = nil) throws -> MomentReport {
            SamplerDiagnostics.propagatedMoments(sampler: try Sampler(kind: kind, steps: nfe, eta: eta, memorylessOffset: offset), field: gaussian)
        }
        for nfe in [6, 10, 20] {
            let ll = try report(.memorylessLL, nfe), em = try report(.memorylessEM, nfe)
            // LL: variance within 0.01 at the end and 0.2 anywhere; EM's early-t blow-up is > 1.
            XCTAssertLessThan(abs(ll.varianceError[nfe]), 0.01, "LL NFE \(nfe)")
            XCTAssertLessThan(abs(ll.worst(ll.varianceError).error), 0.2, "LL NFE \(nfe)")
            XCTAssertGreaterThan(abs(em.worst(em.varianceError).error), 1, "EM NFE \(nfe)")
            XCTAssertLessThan(abs(ll.worst(ll.meanError).error), abs(em.worst(em.meanError).error), "NFE \(nfe)")
            // The mean bias of the memoryless samplers comes from DRL's offsets (delta = 1/S):
            // with a tiny offset it vanishes.
            let tiny = try report(.memorylessLL, nfe, offset: 1e-4)
            XCTAssertLessThan(abs(tiny.meanError[nfe]), 0.01, "LL offset 1e-4 NFE \(nfe)")
        }
        let ll20 = try report(.memorylessLL, 20)
        XCTAssertLessThan(abs(ll20.meanError[20]), 0.06)
        // Euler first order, Heun second order in the final variance.
        let e10 = try report(.euler, 10).varianceError[10], e20 = try report(.euler, 20).varianceError[20]
        XCTAssertEqual(e10 / e20, 2, accuracy: 0.3)
        let h10 = try report(.heun, 10).varianceError[10], h20 = try report(.heun, 20).varianceError[20]
        XCTAssertGreaterThan(h10 / h20, 3)
        XCTAssertLessThan(abs(h20), abs(e20))
        // Sane bounds at default eta, NFE 20 (final step), and errors shrinking with NFE.
        for kind in SamplerKind.allCases {
            let r20 = try report(kind, 20), r6 = try report(kind, 6)
            XCTAssertLessThan(abs(r20.meanError[20]), 0.06, kind.rawValue)
            XCTAssertLessThan(abs(r20.varianceError[20]), 0.1, kind.rawValue)
            XCTAssertLessThan(abs(r20.worst(r20.varianceError).error), abs(r6.worst(r6.varianceError).error) + 1e-3, kind.rawValue)
            for k in 0...20 {
                XCTAssertTrue(r20.mean[k].isFinite && r20.variance[k].isFinite, kind.rawValue)
            }
        }
    }

    func assertWithinMonteCarlo(_ mc: MomentReport, reference: [Double], referenceVariance: [Double], _ label: String,
                                file: StaticString = #filePath, line: UInt = #line) {
        let n = Double(mc.count)
        for k in 0..<reference.count {
            let v = referenceVariance[k]
            let meanTol = 5.5 * (v / n).squareRoot() + 1e-5
            let varTol = 5.5 * v * (2 / (n - 1)).squareRoot() + 1e-5
            XCTAssertEqual(mc.mean[k], reference[k], accuracy: meanTol, "\(label) step \(k) mean", file: file, line: line)
            XCTAssertEqual(mc.variance[k], v, accuracy: varTol, "\(label) step \(k) variance", file: file, line: line)
        }
    }
}
