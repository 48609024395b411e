import Foundation

/// How well a discriminator's logits r on held-out samples behave as the estimate of
/// log p_data / p_model that DRL uses as its reward.
///
/// Separation (AUC, accuracy) says only that the two sets differ. A density-ratio estimate must
/// also be calibrated: with balanced classes, sigmoid(r) is the probability that a sample is real
/// (Brier score, expected calibration error), and the ratio must integrate to one under either
/// distribution: E_model[exp r] = 1 and E_data[exp -r] = 1. `logMeanExpFake` and
/// `logMeanExpNegReal` are the logs of those two means, 0 for an exact ratio; large positive values
/// mean the logit overstates the gap (a reward that saturates far from the data).
public struct RatioDiagnostics: Equatable {
    public var real = 0, fake = 0
    public var auc = Double.nan, accuracy = Double.nan, bce = Double.nan, brier = Double.nan
    /// Balanced expected calibration error of sigmoid(r) over `bins` equal-width bins.
    public var ece = Double.nan
    public var meanLogitReal = Double.nan, meanLogitFake = Double.nan
    public var stdLogitReal = Double.nan, stdLogitFake = Double.nan
    public var logMeanExpFake = Double.nan, logMeanExpNegReal = Double.nan

    public init(real: [Float], fake: [Float], bins: Int = 10) {
        precondition(bins >= 1)
        self.real = real.count
        self.fake = fake.count
        guard !real.isEmpty, !fake.isEmpty else { return }
        let r = real.map(Double.init), f = fake.map(Double.init)
        auc = DiscriminatorLoss.auc(real: real, fake: fake)
        let nr = Double(r.count), nf = Double(f.count)
        accuracy = 0.5 * (Double(r.filter { $0 > 0 }.count) / nr + Double(f.filter { $0 < 0 }.count) / nf)
        bce = r.reduce(0) { $0 + softplus(-$1) } / nr + f.reduce(0) { $0 + softplus($1) } / nf
        brier = 0.5 * (r.reduce(0) { $0 + pow(1 - sigmoid($1), 2) } / nr + f.reduce(0) { $0 + pow(sigmoid($1), 2) } / nf)
        // Each side weighs 1/2 in total, so the bins see the balanced mixture the logit assumes.
        var weight = [Double](repeating: 0, count: bins), predicted = weight, observed = weight
        func add(_ l: Double, isReal: Bool, w: Double) {
            let p = sigmoid(l)
            let b = min(bins - 1, Int(p * Double(bins)))
            weight[b] += w; predicted[b] += w * p; observed[b] += isReal ? w : 0
        }
        for l in r { add(l, isReal: true, w: 0.5 / nr) }
        for l in f { add(l, isReal: false, w: 0.5 / nf) }
        ece = (0..<bins).reduce(0) { $0 + (weight[$1] > 0 ? abs(predicted[$1] - observed[$1]) : 0) }
        func meanStd(_ v: [Double]) -> (Double, Double) {
            let m = v.reduce(0, +) / Double(v.count)
            return (m, (v.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(v.count)).squareRoot())
        }
        (meanLogitReal, stdLogitReal) = meanStd(r)
        (meanLogitFake, stdLogitFake) = meanStd(f)
        logMeanExpFake = Self.logMeanExp(f)
        logMeanExpNegReal = Self.logMeanExp(r.map { -$0 })
    }

    /// log(mean(exp v)), shifted by the maximum so that large logits do not overflow.
    static func logMeanExp(_ v: [Double]) -> Double {
        guard let m = v.max(), m.isFinite else { return v.max() ?? .nan }
        return m + log(v.reduce(0) { $0 + exp($1 - m) } / Double(v.count))
    }

    public var json: String {
        func n(_ v: Double) -> String { v.isFinite ? String(format: "%.6g", v) : "null" }
        return "{\"real\":\(real),\"fake\":\(fake),\"auc\":\(n(auc)),\"accuracy\":\(n(accuracy)),\"bce\":\(n(bce)),"
            + "\"brier\":\(n(brier)),\"ece\":\(n(ece)),\"mean_logit_real\":\(n(meanLogitReal)),\"std_logit_real\":\(n(stdLogitReal)),"
            + "\"mean_logit_fake\":\(n(meanLogitFake)),\"std_logit_fake\":\(n(stdLogitFake)),"
            + "\"log_mean_exp_fake\":\(n(logMeanExpFake)),\"log_mean_exp_neg_real\":\(n(logMeanExpNegReal))}"
    }
}
