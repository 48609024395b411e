import Foundation
import Features
import NN
import Numerics
import TensorStream

/// One side of the discriminator's data: features (and images when R1 needs them) with labels.
public struct LabelledFeatures {
    public var features: [Float] = []
    public var labels: [Int] = []
    /// Images [N, C*H*W] (only when asked for).
    public var images: [Float]?
    public var dim = 0
    public var imageShape: [Int]?
    /// Metadata `encoder` of the records (nil when absent).
    public var encoder: String?
    public var count: Int { labels.count }

    public init() {}

    public init(features: [Float], labels: [Int], dim: Int, images: [Float]? = nil, imageShape: [Int]? = nil, encoder: String? = nil) {
        self.features = features
        self.labels = labels
        self.dim = dim
        self.images = images
        self.imageShape = imageShape
        self.encoder = encoder
    }

    /// Reads every record's `feat` [B, D] and `y` [B] (labels 0 when absent and `requireLabels`
    /// is false), plus `x` when `needImages`.
    public static func read(_ reader: TensorStreamReader, needImages: Bool, requireLabels: Bool, tool: String) throws -> LabelledFeatures {
        var out = LabelledFeatures()
        if needImages { out.images = [] }
        while let r = try reader.read() {
            let f = try r.require("feat", by: tool)
            guard f.dtype == .f32, f.shape.count == 2 else { throw DiscriminatorError("\(reader.name): `feat` must be F32 [B, D], got \(f.dtype.rawValue) \(f.shape)") }
            let b = f.shape[0]
            if out.dim == 0 { out.dim = f.shape[1] }
            guard f.shape[1] == out.dim else { throw DiscriminatorError("\(reader.name): feature dimension changes from \(out.dim) to \(f.shape[1])") }
            let enc = r.metadata["encoder"]
            if reader.recordsRead == 1 { out.encoder = enc } else if enc != out.encoder {
                throw DiscriminatorError("\(reader.name): records carry features of different encoders (\(out.encoder ?? "none") and \(enc ?? "none"))")
            }
            let fv = try f.floats()
            if fv.contains(where: { !$0.isFinite }) { throw DiscriminatorError("\(reader.name): `feat` holds NaN or Inf") }
            out.features += fv
            if let y = r["y"] {
                guard y.shape == [b] else { throw DiscriminatorError("\(reader.name): `y` has shape \(y.shape), expected [\(b)]") }
                out.labels += try y.int64s().map { Int($0) }
            } else if requireLabels {
                throw StreamError.missingTensor("y", tool: tool)
            } else {
                out.labels += [Int](repeating: 0, count: b)
            }
            if needImages {
                let x = try r.require("x", by: tool + " (R1 needs the images)")
                guard x.dtype == .f32, x.shape.count == 4, x.shape[0] == b else { throw DiscriminatorError("\(reader.name): `x` must be F32 [B, C, H, W] with B = \(b), got \(x.shape)") }
                let shape = Array(x.shape.dropFirst())
                if out.imageShape == nil { out.imageShape = shape }
                guard shape == out.imageShape! else { throw DiscriminatorError("\(reader.name): image shape changes from \(out.imageShape!) to \(shape)") }
                out.images! += try x.floats()
            }
        }
        return out
    }

    func subset(_ idx: ArraySlice<Int>) -> LabelledFeatures {
        var out = LabelledFeatures()
        out.dim = dim
        out.imageShape = imageShape
        out.encoder = encoder
        out.features.reserveCapacity(idx.count * dim)
        for i in idx {
            out.features += features[(i * dim)..<((i + 1) * dim)]
            out.labels.append(labels[i])
        }
        if let images, let s = imageShape {
            let p = s.reduce(1, *)
            var im = [Float]()
            im.reserveCapacity(idx.count * p)
            for i in idx { im += images[(i * p)..<((i + 1) * p)] }
            out.images = im
        }
        return out
    }
}

/// Held-out quality of a discriminator.
public struct DiscriminatorEvaluation: Equatable {
    public var accuracy: Double
    public var auc: Double
    /// Mean logistic loss per side, summed: mean softplus(-l_real) + mean softplus(l_fake).
    public var bce: Double
    public var meanLogitReal: Double
    public var meanLogitFake: Double
    public var real: Int
    public var fake: Int

    public var json: String {
        func n(_ v: Double) -> String { v.isFinite ? String(format: "%.9g", v) : "null" }
        return "{\"accuracy\":\(n(accuracy)),\"auc\":\(n(auc)),\"bce\":\(n(bce)),\"mean_logit_real\":\(n(meanLogitReal)),\"mean_logit_fake\":\(n(meanLogitFake)),\"real\":\(real),\"fake\":\(fake)}"
    }
}

@inline(__always) func softplus(_ x: Double) -> Double { x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)) }
@inline(__always) func sigmoid(_ x: Double) -> Double { x >= 0 ? 1 / (1 + exp(-x)) : exp(x) / (1 + exp(x)) }

public enum DiscriminatorLoss {
    /// Area under the ROC curve of real (positive) vs fake logits, ties counted one half
    /// (Mann-Whitney U / (n_r n_f)).
    public static func auc(real: [Float], fake: [Float]) -> Double {
        guard !real.isEmpty, !fake.isEmpty else { return .nan }
        var all = real.map { ($0, true) } + fake.map { ($0, false) }
        all.sort { $0.0 < $1.0 }
        var rankSum = 0.0
        var i = 0
        while i < all.count {
            var j = i
            while j + 1 < all.count && all[j + 1].0 == all[i].0 { j += 1 }
            let rank = Double(i + j) / 2 + 1
            for k in i...j where all[k].1 { rankSum += rank }
            i = j + 1
        }
        let nr = Double(real.count), nf = Double(fake.count)
        return (rankSum - nr * (nr + 1) / 2) / (nr * nf)
    }

    public static func evaluate(head: ProjectionHead, real: LabelledFeatures, fake: LabelledFeatures) -> DiscriminatorEvaluation {
        let lr = head.logits(real.features, labels: real.labels), lf = head.logits(fake.features, labels: fake.labels)
        var correct = 0, bceR = 0.0, bceF = 0.0
        for l in lr { if l > 0 { correct += 1 }; bceR += softplus(-Double(l)) }
        for l in lf { if l < 0 { correct += 1 }; bceF += softplus(Double(l)) }
        let nr = Double(max(lr.count, 1)), nf = Double(max(lf.count, 1))
        return DiscriminatorEvaluation(
            accuracy: Double(correct) / Double(max(lr.count + lf.count, 1)), auc: auc(real: lr, fake: lf),
            bce: bceR / nr + bceF / nf,
            meanLogitReal: lr.reduce(0.0) { $0 + Double($1) } / nr, meanLogitFake: lf.reduce(0.0) { $0 + Double($1) } / nf,
            real: lr.count, fake: lf.count)
    }

    /// The training loss on one paired minibatch, gradients ACCUMULATED into `head.params`:
    ///
    ///     L = mean_i softplus(-l(real_i)) + mean_j softplus(l(fake_j)) + (gamma/2) mean_i |grad_x l(real_i)|^2
    ///
    /// R1 (gamma > 0) differentiates the logit with respect to the image through the frozen
    /// encoder: grad_x l = J^T g with g = dl/df. Its parameter gradient is
    /// (gamma/B) sum_i d/dtheta [w_i . g_i(theta)] with w_i = J J^T g_i, taken as a central
    /// difference of parameter gradients at f_i +- e w_i (exact for the linear and quadratic
    /// heads, whose parameter gradients are at most quadratic in f). Returns (loss, bce, r1 = mean |grad_x l|^2).
    @discardableResult
    public static func accumulate(head: ProjectionHead, realFeatures: [Float], realLabels: [Int], realImages: [Float]? = nil,
                                  fakeFeatures: [Float], fakeLabels: [Int], r1 gamma: Double = 0,
                                  encoder: FeatureEncoder? = nil) -> (loss: Double, bce: Double, r1: Double) {
        let br = realLabels.count, bf = fakeLabels.count
        let D = head.config.featureDim
        var bce = 0.0
        if br > 0 {
            let l = head.logits(realFeatures, labels: realLabels)
            var d = [Float](repeating: 0, count: br)
            for i in 0..<br { bce += softplus(-Double(l[i])) / Double(br); d[i] = Float((sigmoid(Double(l[i])) - 1) / Double(br)) }
            d.withUnsafeBufferPointer { _ = head.backward($0.baseAddress!) }
        }
        if bf > 0 {
            let l = head.logits(fakeFeatures, labels: fakeLabels)
            var d = [Float](repeating: 0, count: bf)
            for i in 0..<bf { bce += softplus(Double(l[i])) / Double(bf); d[i] = Float(sigmoid(Double(l[i])) / Double(bf)) }
            d.withUnsafeBufferPointer { _ = head.backward($0.baseAddress!) }
        }
        var r1 = 0.0
        if gamma > 0, br > 0, let encoder, let images = realImages {
            let gx = inputGradient(head: head, encoder: encoder, images: images, labels: realLabels)
            let P = encoder.inputShape.reduce(1, *)
            for i in 0..<(br * P) { r1 += Double(gx[i]) * Double(gx[i]) }
            r1 /= Double(br)
            let w = Encoders.jvp(encoder, x: images, tangent: gx, batch: br)
            var fp = realFeatures, fm = realFeatures
            var dp = [Float](repeating: 0, count: br), dm = dp
            for i in 0..<br {
                var fn = 0.0, wn = 0.0
                for j in 0..<D { fn += Double(realFeatures[i * D + j] * realFeatures[i * D + j]); wn += Double(w[i * D + j] * w[i * D + j]) }
                guard wn > 0 else { continue }
                let e = 3e-3 * ((fn / Double(D)).squareRoot() + 1e-3) / (wn / Double(D)).squareRoot()
                for j in 0..<D { fp[i * D + j] += Float(e) * w[i * D + j]; fm[i * D + j] -= Float(e) * w[i * D + j] }
                dp[i] = Float(gamma / Double(br) / (2 * e))
                dm[i] = -dp[i]
            }
            _ = head.logits(fp, labels: realLabels)
            dp.withUnsafeBufferPointer { _ = head.backward($0.baseAddress!) }
            _ = head.logits(fm, labels: realLabels)
            dm.withUnsafeBufferPointer { _ = head.backward($0.baseAddress!) }
        }
        return (bce + gamma / 2 * r1, bce, r1)
    }

    /// grad_x logit for images [B, C*H*W] through the encoder: J^T (dl/df). [B, C*H*W].
    public static func inputGradient(head: ProjectionHead, encoder: FeatureEncoder, images: [Float], labels: [Int]) -> [Float] {
        featuresAndInputGradient(head: head, encoder: encoder, images: images, labels: labels).grad
    }

    /// The features phi(x) [B, D] and grad_x logit [B, C*H*W] from one encoder pass per chunk
    /// (`FeatureEncoder.featuresAndVJP`): the head's cotangent is taken chunk by chunk from the
    /// features the forward pass has just produced.
    public static func featuresAndInputGradient(head: ProjectionHead, encoder: FeatureEncoder, images: [Float],
                                                labels: [Int]) -> (features: [Float], grad: [Float]) {
        let b = labels.count
        guard b > 0 else { return ([], []) }
        let D = head.config.featureDim
        var f = [Float](repeating: 0, count: b * D), dx = [Float](repeating: 0, count: images.count)
        let lock = NSLock()   // the head keeps its activations: one chunk at a time
        let cotangent: FeatureCotangent = { feats, first, count, g in
            lock.lock()
            defer { lock.unlock() }
            _ = head.logits(Array(UnsafeBufferPointer(start: feats, count: count * D)), labels: Array(labels[first..<(first + count)]))
            let ones = [Float](repeating: 1, count: count)
            let gp = ones.withUnsafeBufferPointer { head.backward($0.baseAddress!, paramGrads: false) }
            g.update(from: gp, count: count * D)
        }
        images.withUnsafeBufferPointer { xp in
            f.withUnsafeMutableBufferPointer { fp in
                dx.withUnsafeMutableBufferPointer { dp in
                    encoder.featuresAndVJP(xp.baseAddress!, batch: b, features: fp.baseAddress!, cotangent: cotangent, into: dp.baseAddress!)
                }
            }
        }
        return (f, dx)
    }
}

public struct DiscriminatorTrainOptions {
    public var lr: Float = 1e-4
    public var batch = 256
    /// Minibatch pairs per buffer refresh and passes over each buffer (DRL: 20 and 10).
    public var bufferBatches = 20
    public var bufferEpochs = 10
    public var maxSteps = 10_000
    public var evalEvery = 50
    public var patience = 15
    public var holdout = 0.1
    public var r1: Double = 0
    /// Lazy R1 (StyleGAN2's regularisation interval): the penalty, weighted K * gamma, on every
    /// K-th step only. The encoder's VJP and JVP on the real batch are most of a step's cost.
    public var r1Every = 1
    public var seed: UInt64 = 0
    public init() {}
}

public struct DiscriminatorTrainReport {
    public var steps = 0
    public var bestStep = 0
    public var stoppedEarly = false
    public var heldOut: DiscriminatorEvaluation?
    public var train: DiscriminatorEvaluation?
    public var trainReal = 0, trainFake = 0

    public var json: String {
        var parts = ["\"steps\":\(steps)", "\"best_step\":\(bestStep)", "\"stopped_early\":\(stoppedEarly)",
                     "\"train_real\":\(trainReal)", "\"train_fake\":\(trainFake)"]
        parts.append("\"heldout\":" + (heldOut?.json ?? "null"))
        parts.append("\"train\":" + (train?.json ?? "null"))
        return "{" + parts.joined(separator: ",") + "}"
    }
}

public enum DiscriminatorTrainer {
    /// Splits off a held-out fraction of each side, trains with Adam over buffered epochs,
    /// evaluates every `evalEvery` steps on the held-out split and stops after `patience`
    /// evaluations without a better held-out loss; ends with the best weights.
    ///
    /// `optimizer` continues a warm start: an AdamW over `head.params` whose moments and step count
    /// came from the previous checkpoint (its learning rate is set to `options.lr`). Its state
    /// afterwards is that of the last step taken, while the head ends with the best weights.
    public static func train(head: ProjectionHead, real: LabelledFeatures, fake: LabelledFeatures,
                             options o: DiscriminatorTrainOptions, encoder: FeatureEncoder? = nil,
                             optimizer: AdamW? = nil,
                             log: ((Int, DiscriminatorEvaluation) -> Void)? = nil) throws -> DiscriminatorTrainReport {
        guard real.count > 0, fake.count > 0 else { throw DiscriminatorError("discriminator training needs real and fake samples (got \(real.count) real, \(fake.count) fake)") }
        guard real.dim == head.config.featureDim, fake.dim == head.config.featureDim else {
            throw DiscriminatorError("feature dimensions \(real.dim) (real) and \(fake.dim) (fake) do not match the head's \(head.config.featureDim)")
        }
        try head.validate(labels: real.labels)
        try head.validate(labels: fake.labels)
        if o.r1 > 0 && (encoder == nil || real.images == nil) { throw DiscriminatorError("{r1} needs the real images (`x`) and the encoder") }
        guard o.r1Every >= 1 else { throw DiscriminatorError("the R1 interval must be >= 1 (got \(o.r1Every))") }
        var rng = CounterRNG(seed: o.seed, stream: 0xD15C)
        func split(_ s: LabelledFeatures) -> (LabelledFeatures, LabelledFeatures?) {
            let perm = shuffledIndices(s.count, &rng)
            let nh = o.holdout > 0 && s.count >= 2 ? min(s.count - 1, max(1, Int((Double(s.count) * o.holdout).rounded()))) : 0
            return (s.subset(perm[nh...]), nh > 0 ? s.subset(perm[..<nh]) : nil)
        }
        let (tr, hr) = split(real)
        let (tf, hf) = split(fake)
        var report = DiscriminatorTrainReport()
        report.trainReal = tr.count
        report.trainFake = tf.count
        let opt = optimizer ?? AdamW(head.params, lr: o.lr, weightDecay: 0)
        opt.lr = o.lr
        var best = Double.infinity
        var bestWeights: [[Float]]?
        var bad = 0
        var step = 0
        var permR = shuffledIndices(tr.count, &rng), permF = shuffledIndices(tf.count, &rng)
        var curR = 0, curF = 0
        func draw(_ n: Int, _ perm: inout [Int], _ cur: inout Int, _ count: Int) -> [Int] {
            var out: [Int] = []
            for _ in 0..<n {
                if cur == count { perm = shuffledIndices(count, &rng); cur = 0 }
                out.append(perm[cur]); cur += 1
            }
            return out
        }
        let bR = min(o.batch, tr.count), bF = min(o.batch, tf.count)
        training: while step < o.maxSteps {
            // one buffer refresh: bufferBatches paired minibatches, bufferEpochs passes
            let bufR = draw(bR * o.bufferBatches, &permR, &curR, tr.count)
            let bufF = draw(bF * o.bufferBatches, &permF, &curF, tf.count)
            for _ in 0..<o.bufferEpochs {
                let order = shuffledIndices(o.bufferBatches, &rng)
                for m in order {
                    let ir = bufR[(m * bR)..<((m + 1) * bR)], iF = bufF[(m * bF)..<((m + 1) * bF)]
                    let r = tr.subset(ir), f = tf.subset(iF)
                    head.params.zeroGrad()
                    let gamma = (step + 1) % o.r1Every == 0 ? o.r1 * Double(o.r1Every) : 0
                    let (loss, _, _) = DiscriminatorLoss.accumulate(head: head, realFeatures: r.features, realLabels: r.labels, realImages: r.images,
                                                                    fakeFeatures: f.features, fakeLabels: f.labels, r1: gamma, encoder: encoder)
                    guard loss.isFinite else { throw DiscriminatorError("discriminator loss became \(loss) at step \(step + 1)") }
                    opt.step()
                    step += 1
                    if let hr, let hf, step % o.evalEvery == 0 || step == o.maxSteps {
                        let ev = DiscriminatorLoss.evaluate(head: head, real: hr, fake: hf)
                        log?(step, ev)
                        if ev.bce < best {
                            best = ev.bce
                            bestWeights = head.params.all.map(\.values)
                            report.bestStep = step
                            bad = 0
                        } else {
                            bad += 1
                            if bad >= o.patience { report.stoppedEarly = true; break training }
                        }
                    }
                    if step >= o.maxSteps { break training }
                }
            }
        }
        report.steps = step
        if let bestWeights { for (p, w) in zip(head.params.all, bestWeights) { p.values = w } } else { report.bestStep = step }
        for p in head.params.all where p.values.contains(where: { !$0.isFinite }) {
            throw DiscriminatorError("discriminator weights hold NaN or Inf after training")
        }
        if let hr, let hf { report.heldOut = DiscriminatorLoss.evaluate(head: head, real: hr, fake: hf) }
        report.train = DiscriminatorLoss.evaluate(head: head, real: tr, fake: tf)
        return report
    }
}
