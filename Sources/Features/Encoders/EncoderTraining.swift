import Foundation
import NN
import Numerics
import TensorStream

/// Image augmentations for encoder training, on images in [-1, 1] whose background is -1
/// (Fashion-MNIST as `tensors from-idx` writes it). Every draw comes from a `CounterRNG`.
public enum Augment {
    /// Bilinear sample of one channel plane at (y, x) in pixel coordinates; outside is `fill`.
    @inline(__always)
    static func bilinear(_ p: UnsafePointer<Float>, h: Int, w: Int, y: Float, x: Float, fill: Float) -> Float {
        let y0f = y.rounded(.down), x0f = x.rounded(.down)
        let y0 = Int(y0f), x0 = Int(x0f)
        let fy = y - y0f, fx = x - x0f
        @inline(__always) func at(_ r: Int, _ c: Int) -> Float { (r >= 0 && r < h && c >= 0 && c < w) ? p[r * w + c] : fill }
        let a = at(y0, x0), b = at(y0, x0 + 1), c = at(y0 + 1, x0), d = at(y0 + 1, x0 + 1)
        return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy
    }

    /// Classifier augmentation: integer shift of up to `maxShift` pixels each way (filling with
    /// -1) and a horizontal flip with probability 1/2.
    public static func shiftFlip(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, channels: Int, height h: Int, width w: Int,
                                 maxShift: Int, rng: inout CounterRNG) {
        let dy = Int(rng.next() % UInt64(2 * maxShift + 1)) - maxShift
        let dx = Int(rng.next() % UInt64(2 * maxShift + 1)) - maxShift
        let flip = rng.next() & 1 == 1
        for c in 0..<channels {
            let s = src + c * h * w, d = dst + c * h * w
            for i in 0..<h {
                for j in 0..<w {
                    let si = i - dy, sj0 = j - dx
                    let sj = flip ? w - 1 - sj0 : sj0
                    d[i * w + j] = (si >= 0 && si < h && sj >= 0 && sj < w) ? s[si * w + sj] : -1
                }
            }
        }
    }

    /// SimCLR view: random resized crop (area fraction in [minArea, 1], aspect in [3/4, 4/3],
    /// bilinear back to full size), horizontal flip (p 1/2), brightness/contrast jitter (p 0.8,
    /// +-0.4 in [0, 1] units), a cut-out square of up to 10 px (p 0.5) and Gaussian noise (std 0.05).
    public static func simclrView(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<Float>, channels: Int, height h: Int, width w: Int,
                                  minArea: Double = 0.3, rng: inout CounterRNG) {
        let area = minArea + (1 - minArea) * rng.uniform()
        let logRatio = log(3.0 / 4.0) + (log(4.0 / 3.0) - log(3.0 / 4.0)) * rng.uniform()
        let ratio = exp(logRatio)
        let ch = min(Double(h), (area * Double(h * w) / ratio).squareRoot())
        let cw = min(Double(w), (area * Double(h * w) * ratio).squareRoot())
        let top = rng.uniform() * (Double(h) - ch), left = rng.uniform() * (Double(w) - cw)
        let flip = rng.next() & 1 == 1
        let jitter = rng.uniform() < 0.8
        let contrast = Float(jitter ? 1 + 0.8 * (rng.uniform() - 0.5) : 1)
        let brightness = Float(jitter ? 0.8 * (rng.uniform() - 0.5) : 0)
        let cut = rng.uniform() < 0.5
        let cutSize = 4 + Int(rng.next() % 7)
        let cutY = Int(rng.next() % UInt64(max(1, h - cutSize + 1))), cutX = Int(rng.next() % UInt64(max(1, w - cutSize + 1)))
        let sy = Float(ch / Double(h)), sx = Float(cw / Double(w))
        let noiseSeed = rng.next()
        var noise = CounterRNG(seed: noiseSeed, stream: 0x401)
        for c in 0..<channels {
            let s = src + c * h * w, d = dst + c * h * w
            for i in 0..<h {
                let y = Float(top) + (Float(i) + 0.5) * sy - 0.5
                for j in 0..<w {
                    let jj = flip ? w - 1 - j : j
                    let x = Float(left) + (Float(jj) + 0.5) * sx - 0.5
                    var v = bilinear(s, h: h, w: w, y: y, x: x, fill: -1)
                    // jitter in [0, 1] units: u' = (u - 0.5) * contrast + 0.5 + brightness
                    v = v * contrast + 2 * brightness
                    if cut && i >= cutY && i < cutY + cutSize && j >= cutX && j < cutX + cutSize { v = -1 }
                    v += Float(noise.normal() * 0.05)
                    d[i * w + j] = min(1, max(-1, v))
                }
            }
        }
    }
}

/// Losses with their gradients.
public enum EncoderLosses {
    /// Mean softmax cross-entropy of logits [n, k] against labels; writes dL/dlogits and returns
    /// (loss, number correct).
    public static func crossEntropy(_ logits: UnsafePointer<Float>, labels: [Int], classes k: Int, grad: UnsafeMutablePointer<Float>) -> (Double, Int) {
        let n = labels.count
        var loss = 0.0, correct = 0
        for r in 0..<n {
            let l = logits + r * k, g = grad + r * k
            var m = l[0], arg = 0
            for j in 1..<k where l[j] > m { m = l[j]; arg = j }
            if arg == labels[r] { correct += 1 }
            var s: Double = 0
            for j in 0..<k { s += exp(Double(l[j] - m)) }
            loss += log(s) - Double(l[labels[r]] - m)
            for j in 0..<k { g[j] = Float(exp(Double(l[j] - m)) / s) / Float(n) }
            g[labels[r]] -= 1 / Float(n)
        }
        return (loss / Double(n), correct)
    }

    /// NT-Xent (SimCLR) over 2n projections p [2n, P] where rows i and i + n are two views of
    /// one image: L = mean_i [ -s(i, pos i) + log sum_{j != i} exp s(i, j) ], s = cos / tau.
    /// Writes dL/dp and returns (loss, top-1 accuracy of finding the positive).
    public static func ntXent(_ p: UnsafePointer<Float>, pairs n: Int, dim P: Int, temperature tau: Float,
                              grad dp: UnsafeMutablePointer<Float>) -> (Double, Double) {
        let m = 2 * n
        var u = [Float](repeating: 0, count: m * P), norms = [Float](repeating: 0, count: m)
        for i in 0..<m {
            var s: Float = 0
            for j in 0..<P { s += p[i * P + j] * p[i * P + j] }
            norms[i] = max(s.squareRoot(), 1e-8)
            for j in 0..<P { u[i * P + j] = p[i * P + j] / norms[i] }
        }
        var S = [Float](repeating: 0, count: m * m)
        u.withUnsafeBufferPointer { up in
            S.withUnsafeMutableBufferPointer { sp in
                BLAS.sgemm(transB: true, m: m, n: m, k: P, alpha: 1 / tau, a: up.baseAddress!, b: up.baseAddress!, c: sp.baseAddress!)
            }
        }
        var loss = 0.0, hits = 0
        // G = dL/dS (row-wise softmax minus one-hot at the positive, diagonal excluded) / m
        var G = [Float](repeating: 0, count: m * m)
        for i in 0..<m {
            let pos = i < n ? i + n : i - n
            var mx = -Float.infinity, arg = -1
            for j in 0..<m where j != i && S[i * m + j] > mx { mx = S[i * m + j]; arg = j }
            if arg == pos { hits += 1 }
            var s: Double = 0
            for j in 0..<m where j != i { s += exp(Double(S[i * m + j] - mx)) }
            loss += log(s) - Double(S[i * m + pos] - mx)
            for j in 0..<m where j != i { G[i * m + j] = Float(exp(Double(S[i * m + j] - mx)) / s) / Float(m) }
            G[i * m + pos] -= 1 / Float(m)
        }
        // dL/du = (G + G^T) u / tau
        for i in 0..<m { for j in (i + 1)..<max(i + 1, m) { let s = G[i * m + j] + G[j * m + i]; G[i * m + j] = s; G[j * m + i] = s } }
        var du = [Float](repeating: 0, count: m * P)
        G.withUnsafeBufferPointer { gp in
            u.withUnsafeBufferPointer { up in
                du.withUnsafeMutableBufferPointer { dp in
                    BLAS.sgemm(m: m, n: P, k: m, alpha: 1 / tau, a: gp.baseAddress!, b: up.baseAddress!, c: dp.baseAddress!)
                }
            }
        }
        // through the normalisation: dp = (du - u (u . du)) / |p|
        for i in 0..<m {
            var dot: Float = 0
            for j in 0..<P { dot += u[i * P + j] * du[i * P + j] }
            for j in 0..<P { dp[i * P + j] = (du[i * P + j] - u[i * P + j] * dot) / norms[i] }
        }
        return (loss / Double(m), Double(hits) / Double(m))
    }
}

/// Training settings for `EncoderTrainer`.
public struct EncoderTrainingOptions: Sendable {
    public var steps: Int
    public var batch: Int
    public var lr: Float
    public var weightDecay: Float = 1e-4
    public var warmup: Int = 100
    public var seed: UInt64
    public var logEvery: Int = 50

    public init(steps: Int, batch: Int, lr: Float, seed: UInt64) {
        self.steps = steps; self.batch = batch; self.lr = lr; self.seed = seed
    }

    /// Linear warmup, then cosine decay to 0 at the last step (1-based step k).
    public func rate(step k: Int) -> Float {
        if warmup > 0 && k <= warmup { return lr * Float(k) / Float(warmup) }
        let span = max(1, steps - warmup)
        let t = Double(k - warmup) / Double(span)
        return lr * Float(0.5 * (1 + cos(Double.pi * min(1, t))))
    }
}

/// One logged training step.
public struct EncoderTrainingLog: Sendable {
    public var step: Int
    public var loss: Double
    /// Classifier: minibatch accuracy on augmented images; SimCLR: fraction of views whose
    /// nearest other view is their positive.
    public var accuracy: Double
    public var lr: Float
    public var imagesPerSecond: Double

    public var json: String {
        String(format: "{\"step\":%d,\"loss\":%.6f,\"accuracy\":%.4f,\"lr\":%.3g,\"images_per_s\":%.1f}", step, loss, accuracy, Double(lr), imagesPerSecond)
    }
}

/// Trains a `ConvEncoder` on images held in memory ([n, C*H*W] in [-1, 1]; labels for the classifier).
public enum EncoderTrainer {
    public static func train(_ enc: ConvEncoder, images: [Float], labels: [Int]?, options o: EncoderTrainingOptions,
                             log: (EncoderTrainingLog) throws -> Void) throws {
        let cfg = enc.config
        let D = enc.sampleDimension
        let n = images.count / D
        guard n >= 2 else { throw StreamError.invalid("training needs at least 2 images, got \(n)") }
        if cfg.kind == "classifier" {
            guard let labels, labels.count == n else { throw StreamError.invalid("a classifier needs a label `y` for every image") }
            if let bad = labels.first(where: { $0 < 0 || $0 >= cfg.numClasses }) {
                throw StreamError.invalid("label \(bad) is outside 0..<\(cfg.numClasses)")
            }
        }
        let opt = AdamW(enc.params, lr: o.lr, weightDecay: o.weightDecay)
        opt.decays = { $0.shape.count >= 2 }
        var rng = CounterRNG(seed: o.seed, stream: 0xDA7A)
        let simclr = cfg.kind == "simclr"
        let views = simclr ? 2 * o.batch : o.batch
        let xb = Buffer(views * D)
        let gradBuf = Buffer()
        var order = Array(0..<n)
        var cursor = n
        var lossSum = 0.0, accSum = 0.0, count = 0
        var since = Date()
        var imagesSince = 0
        for step in 1...max(1, o.steps) where o.steps > 0 {
            // minibatch: epochs of shuffled order
            var idx = [Int]()
            idx.reserveCapacity(o.batch)
            while idx.count < o.batch {
                if cursor >= n { order.shuffle(using: &rng); cursor = 0 }
                idx.append(order[cursor]); cursor += 1
            }
            let x = xb.ensure(views * D)
            images.withUnsafeBufferPointer { src in
                for (r, i) in idx.enumerated() {
                    let s = src.baseAddress! + i * D
                    if simclr {
                        Augment.simclrView(s, into: x + r * D, channels: cfg.channels, height: cfg.height, width: cfg.width, rng: &rng)
                        Augment.simclrView(s, into: x + (r + o.batch) * D, channels: cfg.channels, height: cfg.height, width: cfg.width, rng: &rng)
                    } else {
                        Augment.shiftFlip(s, into: x + r * D, channels: cfg.channels, height: cfg.height, width: cfg.width, maxShift: 2, rng: &rng)
                    }
                }
            }
            enc.params.zeroGrad()
            let f = enc.forward(x, batch: views)
            let loss: Double, acc: Double
            if simclr {
                let z = enc.projectionForward(f)
                let dz = gradBuf.ensure(views * cfg.projectionDim)
                (loss, acc) = EncoderLosses.ntXent(z, pairs: o.batch, dim: cfg.projectionDim, temperature: Float(cfg.temperature), grad: dz)
                let df = enc.projectionBackward(dz)
                enc.backward(df, paramGrads: true, inputGrad: false)
            } else {
                let logits = enc.headForward(f)
                let dl = gradBuf.ensure(views * cfg.numClasses)
                let (l, correct) = EncoderLosses.crossEntropy(logits, labels: idx.map { labels![$0] }, classes: cfg.numClasses, grad: dl)
                (loss, acc) = (l, Double(correct) / Double(o.batch))
                let df = enc.headBackward(dl)
                enc.backward(df, paramGrads: true, inputGrad: false)
            }
            guard loss.isFinite else { throw StreamError.invalid("training diverged at step \(step) (loss is \(loss)); lower {lr}") }
            clipGradNorm(opt.parameters, maxNorm: 5)
            let lr = o.rate(step: step)
            opt.step(lr: lr)
            lossSum += loss; accSum += acc; count += 1
            imagesSince += o.batch
            if step % max(1, o.logEvery) == 0 || step == o.steps {
                let now = Date()
                let rate = Double(imagesSince) / max(now.timeIntervalSince(since), 1e-9)
                try log(EncoderTrainingLog(step: step, loss: lossSum / Double(count), accuracy: accSum / Double(count), lr: lr, imagesPerSecond: rate))
                lossSum = 0; accSum = 0; count = 0; imagesSince = 0; since = now
            }
        }
    }
}
