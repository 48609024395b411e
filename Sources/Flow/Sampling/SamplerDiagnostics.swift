import Foundation

/// Monte-Carlo moments of a sampler's states at every grid time against the exact marginals of
/// an analytic field. `SamplerDiagnostics.errorTable()` produces the table in docs/samplers.md.
public struct MomentReport {
    public let sampler: Sampler
    /// Number of pooled scalar values per step (samples x dimensions; dimensions are i.i.d.);
    /// 0 for `SamplerDiagnostics.propagatedMoments` (exact, no Monte-Carlo noise).
    public let count: Int
    /// [S+1] empirical mean and (population) variance of x at times[k].
    public let mean: [Double]
    public let variance: [Double]
    /// [S+1] exact marginal mean and variance.
    public let exactMean: [Double]
    public let exactVariance: [Double]

    public var meanError: [Double] { zip(mean, exactMean).map { $0 - $1 } }
    public var varianceError: [Double] { zip(variance, exactVariance).map { $0 - $1 } }
    /// Monte-Carlo standard errors of the mean and variance of an exact sampler at step k.
    public func meanStandardError(_ k: Int) -> Double { (exactVariance[k] / Double(count)).squareRoot() }
    public func varianceStandardError(_ k: Int) -> Double { exactVariance[k] * (2 / Double(count - 1)).squareRoot() }

    /// The step k >= 1 with the largest |error| and that error (signed).
    public func worst(_ errors: [Double]) -> (step: Int, error: Double) {
        var best = (step: 1, error: errors[1])
        for k in 1..<errors.count where abs(errors[k]) > abs(best.error) { best = (k, errors[k]) }
        return best
    }
}

public enum SamplerDiagnostics {
    /// Runs `sampler` on n samples (ids 0..<n, labels 0) of `field` and measures the moments at
    /// every step, pooling the i.i.d. dimensions. Batches of `batchSize` through `Sampler.sample`
    /// with recording on (the code path the tools use).
    public static func moments(sampler: Sampler, field: some AnalyticVelocityField, samples n: Int, seed: UInt64 = 1,
                               batchSize: Int = 2048) -> MomentReport {
        let dim = field.sampleDimension
        let S = sampler.steps
        let exact = sampler.times.map { field.marginal(at: Double($0)) }
        // Accumulate residuals from the exact mean (better conditioned than raw sums).
        var sum = [Double](repeating: 0, count: S + 1)
        var sumSq = [Double](repeating: 0, count: S + 1)
        var start = 0
        while start < n {
            let batch = min(batchSize, n - start)
            let ids = (start..<(start + batch)).map { Int64($0) }
            let noise = Sampler.initialNoise(seed: seed, ids: ids, dimension: dim)
            let result = sampler.sample(model: field, noise: noise, labels: [Int](repeating: 0, count: batch), ids: ids,
                                        seed: seed, record: true)
            let traj = result.trajectory!
            for b in 0..<batch {
                for k in 0...S {
                    let base = (b * (S + 1) + k) * dim
                    let mu = exact[k].mean
                    for d in 0..<dim {
                        let r = Double(traj[base + d]) - mu
                        sum[k] += r
                        sumSq[k] += r * r
                    }
                }
            }
            start += batch
        }
        let count = n * dim
        var mean = [Double](repeating: 0, count: S + 1), variance = mean
        for k in 0...S {
            let m1 = sum[k] / Double(count)
            mean[k] = exact[k].mean + m1
            variance[k] = max(0, sumSq[k] / Double(count) - m1 * m1)
        }
        return MomentReport(sampler: sampler, count: count, mean: mean, variance: variance,
                            exactMean: exact.map(\.mean), exactVariance: exact.map(\.variance))
    }

    /// The exact mean and variance of the sampler's states at every step, with no Monte-Carlo
    /// noise: every step is x' = A x + B + s xi with A, B from the step coefficients and the
    /// field's affine velocity (Heun composes two affine maps), so N(M, V) maps to
    /// N(A M + B, A^2 V + s^2) exactly. Starts from the exact marginal at times[0] (N(0, 1) at
    /// t = 1). Ignores guidance (the analytic fields ignore labels). Double precision.
    public static func propagatedMoments(sampler: Sampler, field: some AnalyticVelocityField) -> MomentReport {
        let S = sampler.steps
        let exact = sampler.times.map { field.marginal(at: Double($0)) }
        var (m, v) = exact[0]
        var mean = [m], variance = [v]
        for k in 0..<S {
            let t = Double(sampler.times[k]), tn = Double(sampler.times[k + 1])
            let (slope, intercept) = field.affineVelocity(at: t)
            var a: Double, b: Double, s = 0.0
            if let step = sampler.gaussianStep(k) {
                a = step.a + step.b * slope
                b = step.b * intercept
                s = step.std
            } else {  // Heun
                let d = tn - t
                a = 1 + d * slope
                b = d * intercept
                if tn > 0 {
                    let (slope2, intercept2) = field.affineVelocity(at: tn)
                    // x_p = a x + b; mean = x + d/2 (slope x + intercept + slope2 x_p + intercept2)
                    let ap = a, bp = b
                    a = 1 + d / 2 * (slope + slope2 * ap)
                    b = d / 2 * (intercept + slope2 * bp + intercept2)
                }
            }
            m = a * m + b
            v = a * a * v + s * s
            mean.append(m)
            variance.append(v)
        }
        return MomentReport(sampler: sampler, count: 0, mean: mean, variance: variance,
                            exactMean: exact.map(\.mean), exactVariance: exact.map(\.variance))
    }

    /// The eta values the table sweeps per sampler (0 for ODEs).
    public static func tableEtas(_ kind: SamplerKind) -> [Double] {
        switch kind {
        case .euler, .heun: return [0]
        case .precise: return [0.7, 1.5, 2.0]
        case .memorylessEM, .memorylessLL: return [0.5, 1.0]
        default: return [0.3, 0.7, 1.0]
        }
    }

    /// Markdown table of mean/variance errors (final step and worst step) per sampler x NFE x eta
    /// for the point-mass (m = 1.5) and Gaussian (m = 1.5, s = 0.5) data, `samples` samples of
    /// `dimension` i.i.d. dimensions each, uniform grid (shift 1), seed 1.
    /// `monteCarlo: false` gives the exact propagated moments (`propagatedMoments`) instead,
    /// and adds a Gaussian with s = 2 (data wider than the noise).
    public static func errorTable(monteCarlo: Bool = true, samples: Int = 10_000, dimension: Int = 4, nfes: [Int] = [6, 10, 20],
                                  kinds: [SamplerKind] = SamplerKind.allCases, seed: UInt64 = 1) -> String {
        var fields: [any AnalyticVelocityField] = [PointMassField(m: 1.5, dimension: dimension),
                                                   GaussianDataField(m: 1.5, s: 0.5, dimension: dimension)]
        if !monteCarlo { fields.append(GaussianDataField(m: 1.5, s: 2, dimension: dimension)) }
        var out = ""
        for field in fields {
            let how = monteCarlo ? "Monte Carlo, \(samples) samples x \(dimension) i.i.d. dims, seed \(seed)" : "exact moment propagation"
            out += "\n#### \(field.name) (\(how))\n\n"
            out += "Final-step exact marginal: mean \(fmt(field.marginal(at: 0).mean)), variance \(fmt(field.marginal(at: 0).variance)). "
            out += "Errors are sampler minus exact; 'worst' is the step k >= 1 (of S) with the largest |error|.\n\n"
            out += "| sampler | NFE | eta | final d-mean | final d-var | worst d-mean (step) | worst d-var (step) |\n"
            out += "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
            for kind in kinds {
                for nfe in nfes {
                    for eta in tableEtas(kind) {
                        let sampler = try! Sampler(kind: kind, steps: nfe, eta: eta)
                        let r = monteCarlo ? moments(sampler: sampler, field: field, samples: samples, seed: seed)
                                           : propagatedMoments(sampler: sampler, field: field)
                        let me = r.meanError, ve = r.varianceError
                        let wm = r.worst(me), wv = r.worst(ve)
                        let etaText = kind.isSDE ? fmt(eta, digits: 2) : "-"
                        out += "| \(kind.rawValue) | \(nfe) | \(etaText) | \(fmt(me[nfe])) | \(fmt(ve[nfe])) | "
                        out += "\(fmt(wm.error)) (\(wm.step)) | \(fmt(wv.error)) (\(wv.step)) |\n"
                    }
                }
            }
        }
        return out
    }

    /// Headline table (exact moment propagation, each sampler at its default eta): point mass
    /// worst-step errors, and final / worst errors for N(1.5, 0.5^2) and N(1.5, 2^2) data.
    public static func summaryTable(nfes: [Int] = [6, 10, 20]) -> String {
        let pm = PointMassField(m: 1.5, dimension: 1)
        let g1 = GaussianDataField(m: 1.5, s: 0.5, dimension: 1), g2 = GaussianDataField(m: 1.5, s: 2, dimension: 1)
        var out = "| sampler (default eta) | NFE | point mass: worst abs d-mean | worst abs d-var | N(1.5,0.5^2): final d-mean | final d-var | worst abs d-var | N(1.5,2^2): final d-mean | final d-var | worst abs d-var |\n"
        out += "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        for kind in SamplerKind.allCases {
            for nfe in nfes {
                let sampler = try! Sampler(kind: kind, steps: nfe)
                let a = propagatedMoments(sampler: sampler, field: pm)
                let b = propagatedMoments(sampler: sampler, field: g1)
                let c = propagatedMoments(sampler: sampler, field: g2)
                let name = kind.isSDE ? "\(kind.rawValue) (\(fmt(kind.defaultEta, digits: 1).dropFirst()))" : kind.rawValue
                func mag(_ x: Double) -> String { String(fmt(abs(x)).dropFirst()) }
                out += "| \(name) | \(nfe) | \(mag(a.worst(a.meanError).error)) | \(mag(a.worst(a.varianceError).error)) | "
                out += "\(fmt(b.meanError[nfe])) | \(fmt(b.varianceError[nfe])) | \(mag(b.worst(b.varianceError).error)) | "
                out += "\(fmt(c.meanError[nfe])) | \(fmt(c.varianceError[nfe])) | \(mag(c.worst(c.varianceError).error)) |\n"
            }
        }
        return out
    }

    static func fmt(_ x: Double, digits: Int = 4) -> String {
        let s = String(format: "%+.\(digits)f", x)
        return s == "-0.0000" ? "+0.0000" : s
    }
}
