import Foundation
import Numerics
import TensorStream

/// Linear-probe evaluation of a feature space: multinomial logistic regression on standardised
/// features (train-split mean and standard deviation), trained by minibatch Adam with a cosine
/// schedule and a small L2 penalty on the weights, then evaluated on the test split.
public struct LinearProbe {
    public var epochs = 30
    public var batch = 500
    public var lr: Float = 2e-3
    public var l2: Float = 1e-4
    public var seed: UInt64 = 0

    public init() {}

    public struct Result: Sendable {
        public var trainAccuracy: Double
        public var testAccuracy: Double
        public var trainLoss: Double
        public var dim: Int
        public var classes: Int
        public var trainCount: Int
        public var testCount: Int
    }

    /// train / test: features [n, d] row-major with labels in 0..<classes.
    public func fit(train: [Float], trainLabels: [Int], test: [Float], testLabels: [Int], dim d: Int) throws -> Result {
        let n = trainLabels.count, nt = testLabels.count
        guard n > 0, nt > 0, d > 0 else { throw StreamError.invalid("the probe needs train and test features") }
        guard train.count == n * d, test.count == nt * d else { throw StreamError.invalid("feature and label counts disagree") }
        guard let minLabel = (trainLabels + testLabels).min(), minLabel >= 0 else { throw StreamError.invalid("labels must be non-negative") }
        let k = max(2, (trainLabels + testLabels).max()! + 1)
        guard k <= 10_000 else { throw StreamError.invalid("too many classes (\(k))") }
        // standardisation in float64
        var mean = [Double](repeating: 0, count: d), sq = [Double](repeating: 0, count: d)
        for r in 0..<n { for j in 0..<d { let v = Double(train[r * d + j]); mean[j] += v; sq[j] += v * v } }
        var scale = [Float](repeating: 1, count: d), shift = [Float](repeating: 0, count: d)
        for j in 0..<d {
            let m = mean[j] / Double(n)
            let v = max(0, sq[j] / Double(n) - m * m)
            shift[j] = Float(m)
            scale[j] = v > 1e-12 ? Float(1 / v.squareRoot()) : 0
        }
        func standardise(_ x: [Float], _ rows: Int) -> [Float] {
            var out = x
            for r in 0..<rows { for j in 0..<d { out[r * d + j] = (x[r * d + j] - shift[j]) * scale[j] } }
            return out
        }
        let xs = standardise(train, n), xt = standardise(test, nt)
        // parameters W [k, d], b [k] with Adam moments
        var W = [Float](repeating: 0, count: k * d), b = [Float](repeating: 0, count: k)
        var mW = W, vW = W, mb = b, vb = b
        var gW = W, gb = b
        let bs = min(batch, n)
        let stepsPerEpoch = (n + bs - 1) / bs
        let total = epochs * stepsPerEpoch
        var rng = CounterRNG(seed: seed, stream: 0x9B0E)
        var order = Array(0..<n)
        var xb = [Float](repeating: 0, count: bs * d), logits = [Float](repeating: 0, count: bs * k), dl = logits
        var step = 0
        var lastLoss = 0.0
        let b1: Float = 0.9, b2: Float = 0.999
        for _ in 0..<epochs {
            order.shuffle(using: &rng)
            var epochLoss = 0.0
            for s in 0..<stepsPerEpoch {
                let start = s * bs, m = min(bs, n - start)
                var labels = [Int](repeating: 0, count: m)
                for r in 0..<m {
                    let i = order[start + r]
                    labels[r] = trainLabels[i]
                    for j in 0..<d { xb[r * d + j] = xs[i * d + j] }
                }
                for r in 0..<m { for c in 0..<k { logits[r * k + c] = b[c] } }
                xb.withUnsafeBufferPointer { xp in W.withUnsafeBufferPointer { wp in logits.withUnsafeMutableBufferPointer { lp in
                    BLAS.sgemm(transB: true, m: m, n: k, k: d, a: xp.baseAddress!, b: wp.baseAddress!, beta: 1, c: lp.baseAddress!)
                } } }
                let (loss, _) = logits.withUnsafeBufferPointer { lp in dl.withUnsafeMutableBufferPointer { gp in
                    EncoderLosses.crossEntropy(lp.baseAddress!, labels: labels, classes: k, grad: gp.baseAddress!)
                } }
                epochLoss += loss * Double(m)
                dl.withUnsafeBufferPointer { gp in xb.withUnsafeBufferPointer { xp in gW.withUnsafeMutableBufferPointer { wp in
                    BLAS.sgemm(transA: true, m: k, n: d, k: m, a: gp.baseAddress!, b: xp.baseAddress!, beta: 0, c: wp.baseAddress!)
                } } }
                for c in 0..<k { var s: Float = 0; for r in 0..<m { s += dl[r * k + c] }; gb[c] = s }
                for i in 0..<(k * d) { gW[i] += l2 * W[i] }
                step += 1
                let rate = lr * Float(0.5 * (1 + cos(Double.pi * Double(step - 1) / Double(total))))
                let bc1 = 1 - pow(Double(b1), Double(step)), bc2 = 1 - pow(Double(b2), Double(step))
                let a = rate * Float(bc2.squareRoot() / bc1)
                for i in 0..<(k * d) {
                    mW[i] = b1 * mW[i] + (1 - b1) * gW[i]
                    vW[i] = b2 * vW[i] + (1 - b2) * gW[i] * gW[i]
                    W[i] -= a * mW[i] / (vW[i].squareRoot() + 1e-8)
                }
                for c in 0..<k {
                    mb[c] = b1 * mb[c] + (1 - b1) * gb[c]
                    vb[c] = b2 * vb[c] + (1 - b2) * gb[c] * gb[c]
                    b[c] -= a * mb[c] / (vb[c].squareRoot() + 1e-8)
                }
            }
            lastLoss = epochLoss / Double(n)
        }
        func accuracy(_ x: [Float], _ labels: [Int]) -> Double {
            let rows = labels.count
            var out = [Float](repeating: 0, count: rows * k)
            for r in 0..<rows { for c in 0..<k { out[r * k + c] = b[c] } }
            x.withUnsafeBufferPointer { xp in W.withUnsafeBufferPointer { wp in out.withUnsafeMutableBufferPointer { op in
                BLAS.sgemm(transB: true, m: rows, n: k, k: d, a: xp.baseAddress!, b: wp.baseAddress!, beta: 1, c: op.baseAddress!)
            } } }
            var correct = 0
            for r in 0..<rows {
                var best = 0
                for c in 1..<k where out[r * k + c] > out[r * k + best] { best = c }
                if best == labels[r] { correct += 1 }
            }
            return Double(correct) / Double(rows)
        }
        return Result(trainAccuracy: accuracy(xs, trainLabels), testAccuracy: accuracy(xt, testLabels), trainLoss: lastLoss,
                      dim: d, classes: k, trainCount: n, testCount: nt)
    }
}
