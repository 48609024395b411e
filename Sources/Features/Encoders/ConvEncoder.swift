import Foundation
import NN
import Numerics
import TensorStream

/// Architecture of a `ConvEncoder`, stored as JSON in checkpoint metadata `config`.
///
/// The trunk is a stack of 3x3 convolutions (padding 1, stride `strides[i]`), each followed by the
/// activation and, where `pool[i]`, a 2x2 average pool; then global average pooling, a Linear to
/// `feature_dim` (after global average pooling, or flattening with `readout` "flatten") and the activation again. Those features are phi(x). On top sits a head that only
/// training uses: a Linear classifier (`kind` "classifier") or a two-layer projection MLP for the
/// contrastive loss (`kind` "simclr"). PyTorch twin: `benchmarks/torch_encoders.py`.
public struct EncoderConfig: Codable, Equatable, Sendable {
    public var kind: String
    public var arch: String
    public var channels: Int
    public var height: Int
    public var width: Int
    public var widths: [Int]
    public var strides: [Int]
    public var pool: [Bool]
    public var activation: String
    public var featureDim: Int
    public var numClasses: Int
    public var projectionDim: Int
    public var temperature: Double
    /// How the last conv map becomes a vector: nil or "mean" (global average pool, [C]) or
    /// "flatten" (PyTorch `flatten(1)`, [C*H*W], keeps the spatial layout).
    public var readout: String?

    public init(kind: String, arch: String = "cnn", channels: Int = 1, height: Int = 28, width: Int = 28,
                widths: [Int], strides: [Int], pool: [Bool], activation: String, featureDim: Int,
                numClasses: Int = 0, projectionDim: Int = 0, temperature: Double = 0.2, readout: String? = nil) {
        self.readout = readout
        self.kind = kind; self.arch = arch; self.channels = channels; self.height = height; self.width = width
        self.widths = widths; self.strides = strides; self.pool = pool; self.activation = activation
        self.featureDim = featureDim; self.numClasses = numClasses; self.projectionDim = projectionDim
        self.temperature = temperature
    }

    enum CodingKeys: String, CodingKey {
        case kind, arch, channels, height, width, widths, strides, pool, activation, temperature, readout
        case featureDim = "feature_dim", numClasses = "num_classes", projectionDim = "projection_dim"
    }

    /// The two encoders the toolkit trains (see docs/encoders.md).
    /// - classifier: conv 32-64-128, GELU, 2x2 average pools, 128-d features, 10-way head;
    /// - simclr: conv 32-64-128 with stride-2 downsampling, SiLU, 256-d features, 256-256-128 projection.
    public static func preset(_ kind: String, channels: Int = 1, height: Int = 28, width: Int = 28, numClasses: Int = 10) -> EncoderConfig? {
        switch kind {
        case "classifier":
            return EncoderConfig(kind: "classifier", channels: channels, height: height, width: width,
                                 widths: [32, 64, 128], strides: [1, 1, 1], pool: [true, true, false],
                                 activation: "gelu", featureDim: 128, numClasses: numClasses, readout: "flatten")
        case "simclr":
            return EncoderConfig(kind: "simclr", channels: channels, height: height, width: width,
                                 widths: [32, 64, 128], strides: [1, 2, 2], pool: [false, false, false],
                                 activation: "silu", featureDim: 256, projectionDim: 128, temperature: 0.2)
        default:
            return nil
        }
    }

    public var inputShape: [Int] { [channels, height, width] }

    public func json() -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return String(decoding: try! enc.encode(self), as: UTF8.self)
    }

    public static func from(json: String) throws -> EncoderConfig {
        let c: EncoderConfig
        do {
            c = try JSONDecoder().decode(EncoderConfig.self, from: Data(json.utf8))
        } catch {
            throw StreamError.invalid("encoder config is not valid JSON of the expected form: \(json.prefix(200))")
        }
        try c.validate()
        return c
    }

    public func validate() throws {
        func bad(_ why: String) -> StreamError { .invalid("encoder config: \(why)") }
        guard kind == "classifier" || kind == "simclr" else { throw bad("unknown kind `\(kind)` (expected classifier or simclr)") }
        guard arch == "cnn" else { throw bad("unknown arch `\(arch)` (expected cnn)") }
        guard activation == "gelu" || activation == "silu" else { throw bad("unknown activation `\(activation)`") }
        guard readout == nil || readout == "mean" || readout == "flatten" else { throw bad("unknown readout `\(readout!)` (expected mean or flatten)") }
        guard channels > 0, height > 0, width > 0, channels * height * width <= 1 << 24 else { throw bad("bad image shape") }
        guard !widths.isEmpty, widths.count == strides.count, widths.count == pool.count else { throw bad("widths, strides and pool must have one entry per conv") }
        guard widths.allSatisfy({ $0 > 0 && $0 <= 4096 }), strides.allSatisfy({ $0 == 1 || $0 == 2 }) else { throw bad("bad conv widths or strides") }
        guard featureDim > 0, featureDim <= 65536 else { throw bad("bad feature_dim") }
        if kind == "classifier" { guard numClasses >= 2 else { throw bad("a classifier needs num_classes >= 2") } }
        if kind == "simclr" {
            guard projectionDim > 0 else { throw bad("simclr needs projection_dim > 0") }
            guard temperature > 0, temperature.isFinite else { throw bad("temperature must be positive") }
        }
        var h = height, w = width
        for i in widths.indices {
            h = (h + 2 - 3) / strides[i] + 1
            w = (w + 2 - 3) / strides[i] + 1
            if pool[i] { h /= 2; w /= 2 }
            guard h > 0, w > 0 else { throw bad("the image is too small for \(widths.count) convs with these strides and pools") }
        }
    }
}

/// GELU or SiLU behind one interface.
final class Activation {
    private let gelu: GELU?
    private let silu: SiLU?
    init(_ name: String) {
        gelu = name == "gelu" ? GELU() : nil
        silu = name == "silu" ? SiLU() : nil
    }
    func forward(_ x: UnsafePointer<Float>, count: Int) -> UnsafeMutablePointer<Float> {
        gelu?.forward(x, count: count) ?? silu!.forward(x, count: count)
    }
    func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        gelu?.backward(dy) ?? silu!.backward(dy)
    }
}

/// A small CNN encoder (classifier or SimCLR-trained) with explicit forward and backward passes.
/// Parameter names follow the PyTorch module of `benchmarks/torch_encoders.py`:
/// `convs.<i>.weight|bias`, `fc.weight|bias`, and `head.weight|bias` (classifier) or
/// `proj.0.*`, `proj.2.*` (simclr).
///
/// As a `FeatureEncoder` it is thread-safe: `features` / `featureVJP` borrow a replica network
/// (sharing the weights) per worker, and run in fixed-size chunks (the last padded with zeros) so
/// a sample's features are bit-identical whatever batch it arrives in.
public final class ConvEncoder: FeatureEncoder {
    public let config: EncoderConfig
    public let params: ParameterSet
    public private(set) var digest: String

    let convs: [Conv2d]
    let convActs: [Activation]
    let pools: [AvgPool2d?]
    let gap = GlobalAvgPool()
    let fc: Linear
    let fcAct: Activation
    public let head: Linear?
    public let proj0: Linear?
    let projAct: Activation?
    public let proj1: Linear?
    /// (channels, height, width) after each conv stage (after its pool).
    let stageShapes: [(Int, Int, Int)]
    private var batch = 0
    let flatten: Bool

    /// Samples per forward in `features` / `featureVJP` (see the type's notes).
    public var inferenceChunk = 64
    /// Worker threads `features` / `featureVJP` split chunks over. With more than one, set BLAS
    /// to one thread (each worker runs its own single-threaded GEMMs).
    public var parallelism = 1

    private var pool: [ConvEncoder] = []
    private let poolLock = NSLock()
    private let padX = Buffer(), padG = Buffer()

    /// A freshly initialised encoder (PyTorch default init, seeded).
    public convenience init(config: EncoderConfig, seed: UInt64) throws {
        try config.validate()
        self.init(config: config, params: ParameterSet(), digest: "untrained")
        var rng = CounterRNG(seed: seed, stream: 0xE7C0)
        if config.kind == "classifier" {
            for c in convs { c.initDefault(rng: &rng) }
            fc.initDefault(rng: &rng)
            head?.initDefault(rng: &rng)
        } else {
            // SimCLR: Kaiming-uniform weights (gain sqrt 2, bound sqrt(6 / fan_in)) and zero biases.
            // PyTorch's default init shrinks the signal ~3x per layer, so without normalisation
            // layers every image starts with nearly the same projection (all cosines ~1) and the
            // contrastive gradient is tiny; this keeps the images apart from the first step.
            func kaiming(_ w: Parameter, _ b: Parameter?, fanIn: Int) {
                let a = (6.0 / Double(fanIn)).squareRoot()
                for i in 0..<w.count { w.value[i] = Float((rng.uniform() * 2 - 1) * a) }
                b?.fill(0)
            }
            for c in convs { kaiming(c.weight, c.bias, fanIn: c.fanIn) }
            for l in [fc, proj0!, proj1!] { kaiming(l.weight, l.bias, fanIn: l.inFeatures) }
        }
    }

    init(config: EncoderConfig, params ps: ParameterSet, digest: String) {
        self.config = config
        self.params = ps
        self.digest = digest
        var c = config.channels, h = config.height, w = config.width
        var convs: [Conv2d] = [], acts: [Activation] = [], pools: [AvgPool2d?] = [], shapes: [(Int, Int, Int)] = []
        for i in config.widths.indices {
            convs.append(Conv2d(ps, "convs.\(i)", in: c, out: config.widths[i], kernel: 3, stride: config.strides[i], padding: 1))
            acts.append(Activation(config.activation))
            c = config.widths[i]
            h = (h + 2 - 3) / config.strides[i] + 1
            w = (w + 2 - 3) / config.strides[i] + 1
            if config.pool[i] {
                pools.append(AvgPool2d(kernel: 2))
                h /= 2; w /= 2
            } else {
                pools.append(nil)
            }
            shapes.append((c, h, w))
        }
        self.convs = convs
        self.convActs = acts
        self.pools = pools
        self.stageShapes = shapes
        flatten = config.readout == "flatten"
        fc = Linear(ps, "fc", in: flatten ? c * h * w : c, out: config.featureDim)
        fcAct = Activation(config.activation)
        if config.kind == "classifier" {
            head = Linear(ps, "head", in: config.featureDim, out: config.numClasses)
            proj0 = nil; projAct = nil; proj1 = nil
        } else {
            head = nil
            proj0 = Linear(ps, "proj.0", in: config.featureDim, out: config.featureDim)
            projAct = Activation(config.activation)
            proj1 = Linear(ps, "proj.2", in: config.featureDim, out: config.projectionDim)
        }
    }

    public var inputShape: [Int] { config.inputShape }
    public var featureDimension: Int { config.featureDim }
    public var sampleDimension: Int { config.channels * config.height * config.width }

    // MARK: - checkpoints

    public static let configKey = "config"

    /// Checkpoint record: parameters under PyTorch names; metadata `config` (JSON), `kind`,
    /// `arch`, `format` = "pt", plus the caller's keys (step, seed, tool...).
    public func checkpointRecord(metadata extra: [String: String] = [:]) -> Record {
        var meta = extra
        meta[Self.configKey] = config.json()
        meta["kind"] = config.kind
        meta["arch"] = config.arch
        meta["format"] = "pt"
        return Record(params.tensors(), metadata: meta)
    }

    public func save(to path: String, metadata: [String: String] = [:]) throws {
        try Checkpoint.write(checkpointRecord(metadata: metadata), to: path)
        digest = try Checkpoint.digest(path)
    }

    /// Loads an encoder checkpoint (strict: every tensor must belong to the model); its digest is
    /// the SHA-256 of the file's bytes.
    public static func load(path: String) throws -> ConvEncoder {
        let bytes = try readFile(path)
        let record: Record
        do {
            record = try RecordCodec.decode(bytes)
        } catch let error as StreamError {
            throw StreamError.invalid("\(path) is not a valid safetensors checkpoint: \(error)")
        }
        guard let json = record.metadata[configKey] else {
            throw StreamError.invalid("\(path) has no `config` metadata; it is not an encoder checkpoint")
        }
        let config = try EncoderConfig.from(json: json)
        let enc = ConvEncoder(config: config, params: ParameterSet(), digest: SHA256.hex(bytes))
        do {
            try enc.params.load(from: record, strict: true)
        } catch let error as StreamError {
            throw StreamError.invalid("\(path): \(error)")
        }
        return enc
    }

    // MARK: - raw passes (single-threaded; layers cache their inputs)

    /// phi(x) for x [batch, C*H*W]; returns [batch, featureDim] in a buffer this network owns.
    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, batch: Int) -> UnsafeMutablePointer<Float> {
        self.batch = batch
        var h = UnsafePointer(x)
        var c = config.channels, hh = config.height, ww = config.width
        for i in convs.indices {
            let y = convs[i].forward(h, batch: batch, height: hh, width: ww)
            let (co, ho, wo) = (config.widths[i], convs[i].outHeight, convs[i].outWidth)
            var a = convActs[i].forward(y, count: batch * co * ho * wo)
            if let p = pools[i] { a = p.forward(a, batch: batch, channels: co, height: ho, width: wo) }
            h = UnsafePointer(a)
            (c, hh, ww) = stageShapes[i]
        }
        let g = flatten ? h : UnsafePointer(gap.forward(h, batch: batch, channels: c, spatial: hh * ww))
        let f = fc.forward(g, rows: batch)
        return fcAct.forward(f, count: batch * config.featureDim)
    }

    /// Backward from dL/d(features); returns dL/dx [batch, C*H*W] (undefined when `inputGrad` is
    /// false). Parameter gradients accumulate when `paramGrads`.
    @discardableResult
    public func backward(_ dFeatures: UnsafePointer<Float>, paramGrads: Bool = true, inputGrad: Bool = true) -> UnsafeMutablePointer<Float> {
        var d = fcAct.backward(dFeatures)
        d = fc.backward(d, paramGrads: paramGrads)
        if !flatten { d = gap.backward(d) }
        for i in convs.indices.reversed() {
            if let p = pools[i] { d = p.backward(d) }
            d = convActs[i].backward(d)
            d = convs[i].backward(d, paramGrads: paramGrads, inputGrad: i > 0 || inputGrad)
        }
        return d
    }

    /// Classifier logits [batch, numClasses] from the features `forward` returned.
    public func headForward(_ features: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        head!.forward(features, rows: batch)
    }

    public func headBackward(_ dLogits: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        head!.backward(dLogits)
    }

    /// SimCLR projection [batch, projectionDim] from the features.
    public func projectionForward(_ features: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        let a = proj0!.forward(features, rows: batch)
        let b = projAct!.forward(a, count: batch * config.featureDim)
        return proj1!.forward(b, rows: batch)
    }

    public func projectionBackward(_ dz: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        let a = proj1!.backward(dz)
        let b = projAct!.backward(a)
        return proj0!.backward(b)
    }

    // MARK: - FeatureEncoder (thread-safe, chunked)

    func makeReplica() -> ConvEncoder {
        ConvEncoder(config: config, params: params, digest: digest)
    }

    private func borrow() -> ConvEncoder {
        poolLock.lock()
        defer { poolLock.unlock() }
        return pool.popLast() ?? makeReplica()
    }

    private func giveBack(_ net: ConvEncoder) {
        poolLock.lock()
        pool.append(net)
        poolLock.unlock()
    }

    private func run(_ x: UnsafePointer<Float>, batch: Int, cotangent g: UnsafePointer<Float>?,
                     features out: UnsafeMutablePointer<Float>?, inputGrad dx: UnsafeMutablePointer<Float>?) {
        guard batch > 0 else { return }
        let D = sampleDimension, F = config.featureDim
        let chunk = inferenceChunk > 0 ? inferenceChunk : batch
        let chunks = (batch + chunk - 1) / chunk
        let workers = max(1, min(parallelism, chunks))
        // Pointers cross threads as integers (Swift 5 mode, but keep closures Sendable-clean).
        let xa = Int(bitPattern: x), ga = g.map { Int(bitPattern: $0) }
        let oa = out.map { Int(bitPattern: $0) }, da = dx.map { Int(bitPattern: $0) }
        let work: (Int) -> Void = { w in
            let net = self.borrow()
            defer { self.giveBack(net) }
            var k = w
            while k < chunks {
                let s0 = k * chunk, n = min(chunk, batch - s0)
                var xs = UnsafePointer<Float>(bitPattern: xa)! + s0 * D
                var gs = ga.map { UnsafePointer<Float>(bitPattern: $0)! + s0 * F }
                if n < chunk {
                    let px = net.padX.zeroed(chunk * D)
                    px.update(from: xs, count: n * D)
                    xs = UnsafePointer(px)
                    if let g0 = gs {
                        let pg = net.padG.zeroed(chunk * F)
                        pg.update(from: g0, count: n * F)
                        gs = UnsafePointer(pg)
                    }
                }
                let f = net.forward(xs, batch: chunk)
                if let oa { (UnsafeMutablePointer<Float>(bitPattern: oa)! + s0 * F).update(from: f, count: n * F) }
                if let gs, let da {
                    let d = net.backward(gs, paramGrads: false, inputGrad: true)
                    (UnsafeMutablePointer<Float>(bitPattern: da)! + s0 * D).update(from: d, count: n * D)
                }
                k += workers
            }
        }
        if workers == 1 {
            work(0)
        } else {
            DispatchQueue.concurrentPerform(iterations: workers, execute: work)
        }
    }

    public func features(_ x: UnsafePointer<Float>, batch: Int, into out: UnsafeMutablePointer<Float>) {
        run(x, batch: batch, cotangent: nil, features: out, inputGrad: nil)
    }

    public func featureVJP(_ x: UnsafePointer<Float>, batch: Int, cotangent g: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>) {
        run(x, batch: batch, cotangent: g, features: nil, inputGrad: dx)
    }

    /// Class logits [batch, numClasses] of the classifier head applied to features [batch, D]
    /// (what `features` returned). A plain double-accumulated loop rather than the layer's
    /// `forward`, so it touches no cached state and is thread-safe and batch-invariant like
    /// `features`. Nil for an encoder without a head (SimCLR).
    public func classLogits(features: [Float], batch: Int) -> [Float]? {
        guard let head else { return nil }
        let K = head.outFeatures, F = head.inFeatures
        precondition(features.count == batch * F)
        var logits = [Float](repeating: 0, count: batch * K)
        let w = head.weight.value, b = head.bias?.value
        features.withUnsafeBufferPointer { f in
            for i in 0..<batch {
                let row = f.baseAddress! + i * F
                for k in 0..<K {
                    var s = Double(b?[k] ?? 0)
                    let wk = w + k * F
                    for j in 0..<F { s += Double(wk[j]) * Double(row[j]) }
                    logits[i * K + k] = Float(s)
                }
            }
        }
        return logits
    }
}

extension FeatureEncoder {
    /// Array convenience: features of x [batch * C*H*W].
    public func features(_ x: [Float], batch: Int) -> [Float] {
        precondition(x.count == batch * inputShape.reduce(1, *))
        var out = [Float](repeating: 0, count: batch * featureDimension)
        if batch == 0 { return out }
        x.withUnsafeBufferPointer { xp in out.withUnsafeMutableBufferPointer { features(xp.baseAddress!, batch: batch, into: $0.baseAddress!) } }
        return out
    }

    /// Array convenience: (d phi / dx)^T g.
    public func featureVJP(_ x: [Float], batch: Int, cotangent g: [Float]) -> [Float] {
        precondition(x.count == batch * inputShape.reduce(1, *) && g.count == batch * featureDimension)
        var dx = [Float](repeating: 0, count: x.count)
        if batch == 0 { return dx }
        x.withUnsafeBufferPointer { xp in
            g.withUnsafeBufferPointer { gp in
                dx.withUnsafeMutableBufferPointer { featureVJP(xp.baseAddress!, batch: batch, cotangent: gp.baseAddress!, into: $0.baseAddress!) }
            }
        }
        return dx
    }
}
