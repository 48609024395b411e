import Foundation
import NN
import Numerics
import TensorStream

/// A trainable velocity network: a `VelocityField` with explicit forward/backward, PyTorch-named
/// parameters and safetensors checkpoints. Subclasses: `MLPVelocity` ("mlp"), `SiTVelocity` ("sit"),
/// `UNetVelocity` ("unet").
///
/// Two ways to run it:
/// - Training (single thread): `forward` then `backward` on this object. Parameter gradients
///   accumulate in `params` until `params.zeroGrad()`.
/// - Sampling / VJPs from many threads: `velocity(...)` and `vjp(...)` are thread-safe; each call
///   borrows a replica (a second set of layers sharing the same `Parameter` storage, with its own
///   activation buffers) from a pool. Do not change parameters while such calls run.
open class VelocityNet: VelocityField {
    public let config: ModelConfig
    public let params: ParameterSet
    public var sampleDimension: Int { config.sampleDimension }

    private let poolLock = NSLock()
    private var pool: [VelocityNet] = []
    let padX = Buffer(), padU = Buffer()

    /// Subclasses register their parameters on `params` (shared when building a replica).
    init(config: ModelConfig, params: ParameterSet) {
        self.config = config
        self.params = params
    }

    /// Builds a network of the config's architecture with DiT-style initialisation from `seed`.
    public static func make(_ config: ModelConfig, seed: UInt64) throws -> VelocityNet {
        let net = try uninitialized(config)
        var rng = CounterRNG(seed: seed, stream: 0x1D17)
        net.initialize(rng: &rng)
        return net
    }

    /// The architecture with every parameter at zero, for a caller that overwrites them all
    /// (loading a checkpoint): the random init it skips was a tenth of reading a 9M-parameter mlp.
    public static func uninitialized(_ config: ModelConfig) throws -> VelocityNet {
        try config.validate()
        switch config.arch {
        case "mlp": return MLPVelocity(config: config, params: ParameterSet())
        case "unet": return UNetVelocity(config: config, params: ParameterSet())
        default: return SiTVelocity(config: config, params: ParameterSet())
        }
    }

    // MARK: - subclass interface

    func initialize(rng: inout CounterRNG) { fatalError("abstract") }
    /// A new network of the same architecture on the SAME parameter set (own buffers).
    func makeReplica() -> VelocityNet { fatalError("abstract") }

    /// v = net(x, t, y) for x [batch, D]; returns a pointer to [batch, D] owned by the network,
    /// valid until the next forward. Caches what backward needs (x is copied, so the caller's
    /// buffer may change afterwards). t in [0, 1]; y in 0...numClasses (numClasses = null label).
    @discardableResult
    open func forward(_ x: UnsafePointer<Float>, t: [Float], y: [Int], batch: Int) -> UnsafeMutablePointer<Float> { fatalError("abstract") }

    /// Given dL/dv [batch, D] for the last forward, accumulates dL/dθ into `params` (when
    /// `paramGrads`) and returns dL/dx [batch, D] (owned by the network).
    @discardableResult
    open func backward(_ dv: UnsafePointer<Float>, paramGrads: Bool = true) -> UnsafeMutablePointer<Float> { fatalError("abstract") }

    /// Classifier-free-guidance label dropout (DiT's LabelEmbedder.token_drop, done by the
    /// trainer): each label becomes the null label `numClasses` with the given probability.
    public func dropLabels(_ y: [Int], probability: Double, rng: inout CounterRNG) -> [Int] {
        y.map { rng.uniform() < probability ? config.numClasses : $0 }
    }

    // MARK: - checks

    /// Throws a one-line error for labels or times a forward would reject.
    public func validate(t: [Float], y: [Int], batch: Int) throws {
        guard t.count == batch, y.count == batch else {
            throw StreamError.invalid("model input: \(batch) samples but \(t.count) times and \(y.count) labels")
        }
        if let bad = y.first(where: { $0 < 0 || $0 > config.numClasses }) {
            throw StreamError.invalid("label \(bad) is outside 0...\(config.numClasses) (\(config.numClasses) is the null label)")
        }
        if let bad = t.first(where: { !$0.isFinite }) {
            throw StreamError.invalid("time \(bad) is not finite")
        }
    }

    func checkInputs(t: [Float], y: [Int], batch: Int) {
        precondition(t.count == batch && y.count == batch, "model input: \(batch) samples but \(t.count) times and \(y.count) labels")
        for v in y { precondition(v >= 0 && v <= config.numClasses, "label \(v) outside 0...\(config.numClasses)") }
    }

    // MARK: - thread-safe entry points

    func borrow() -> VelocityNet {
        poolLock.lock()
        defer { poolLock.unlock() }
        let net = pool.popLast() ?? makeReplica()
        net.inferenceChunk = inferenceChunk
        net.sharesConditioning = true
        return net
    }

    func giveBack(_ net: VelocityNet) {
        poolLock.lock()
        pool.append(net)
        poolLock.unlock()
    }

    /// Batch size of every forward that `velocity` and `vjp` run (0: the caller's whole batch).
    /// OpenBLAS may sum in another order when the row count changes, so a sample's velocity could
    /// differ in the last bits between batch sizes. With a fixed chunk (the last one padded with
    /// zero inputs) every sample goes through identically shaped GEMMs, and its result is
    /// bit-identical whatever batch it arrives in; the padding costs up to chunk - 1 wasted rows.
    /// SiT keeps 32 (its attention scratch grows with the chunk); MLPVelocity sets 128.
    public var inferenceChunk = 32

    /// Set on the replicas that `velocity` and `vjp` borrow (never on a network that trains): a
    /// model may then compute what depends only on (t, y) once per distinct pair of a chunk
    /// (`MLPVelocity`). Such a forward supports `backward(paramGrads: false)` only.
    var sharesConditioning = false

    /// Runs `body(net, x, t, y, n, u)` over fixed-size chunks (see `inferenceChunk`), writing
    /// the first n rows of what it returns for each chunk to `out` / `dx`.
    private func chunked(_ x: UnsafePointer<Float>, t: [Float], y: [Int], batch: Int, cotangent u: UnsafePointer<Float>?,
                         velocity out: UnsafeMutablePointer<Float>?, inputGrad dx: UnsafeMutablePointer<Float>?) {
        let net = borrow()
        defer { giveBack(net) }
        let D = sampleDimension
        let chunk = inferenceChunk > 0 ? inferenceChunk : batch
        var s0 = 0
        while s0 < batch {
            let n = min(chunk, batch - s0)
            var xs = x + s0 * D
            var us = u.map { $0 + s0 * D }
            var ts = Array(t[s0..<(s0 + n)]), ys = Array(y[s0..<(s0 + n)])
            if n < chunk {  // pad with zero inputs (time 0, label 0, zero cotangent)
                let px = net.padX.zeroed(chunk * D)
                px.update(from: xs, count: n * D)
                xs = UnsafePointer(px)
                if let u0 = us {
                    let pu = net.padU.zeroed(chunk * D)
                    pu.update(from: u0, count: n * D)
                    us = UnsafePointer(pu)
                }
                ts += [Float](repeating: 0, count: chunk - n)
                ys += [Int](repeating: 0, count: chunk - n)
            }
            let v = net.forward(xs, t: ts, y: ys, batch: chunk)
            out?.advanced(by: s0 * D).update(from: v, count: n * D)
            if let us, let dx {
                let g = net.backward(us, paramGrads: false)
                dx.advanced(by: s0 * D).update(from: g, count: n * D)
            }
            s0 += n
        }
    }

    /// `VelocityField`: out[b] = v(x[b], t[b], y[b]). Thread-safe (see the type's notes).
    public func velocity(_ x: UnsafePointer<Float>, t: [Float], y: [Int], batch: Int, into out: UnsafeMutablePointer<Float>) {
        guard batch > 0 else { return }
        chunked(x, t: t, y: y, batch: batch, cotangent: nil, velocity: out, inputGrad: nil)
    }

    /// Vector-Jacobian product: dx[b] = u[b]^T dv(x[b], t[b], y[b]) / dx[b]. Optionally also
    /// writes v. Touches no parameter gradient; thread-safe; chunked like `velocity`.
    public func vjp(_ x: UnsafePointer<Float>, t: [Float], y: [Int], batch: Int, cotangent u: UnsafePointer<Float>,
                    into dx: UnsafeMutablePointer<Float>, velocity out: UnsafeMutablePointer<Float>? = nil) {
        guard batch > 0 else { return }
        chunked(x, t: t, y: y, batch: batch, cotangent: u, velocity: out, inputGrad: dx)
    }

    /// Array conveniences (tests, small callers).
    public func velocity(_ x: [Float], t: [Float], y: [Int]) -> [Float] {
        let batch = t.count
        precondition(x.count == batch * sampleDimension)
        if batch == 0 { return [] }
        var out = [Float](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { xp in out.withUnsafeMutableBufferPointer { velocity(xp.baseAddress!, t: t, y: y, batch: batch, into: $0.baseAddress!) } }
        return out
    }

    public func vjp(_ x: [Float], t: [Float], y: [Int], cotangent u: [Float]) -> (v: [Float], dx: [Float]) {
        let batch = t.count
        precondition(x.count == batch * sampleDimension && u.count == x.count)
        if batch == 0 { return ([], []) }
        var out = [Float](repeating: 0, count: x.count), dx = out
        x.withUnsafeBufferPointer { xp in
            u.withUnsafeBufferPointer { up in
                out.withUnsafeMutableBufferPointer { op in
                    dx.withUnsafeMutableBufferPointer { dp in
                        vjp(xp.baseAddress!, t: t, y: y, batch: batch, cotangent: up.baseAddress!, into: dp.baseAddress!, velocity: op.baseAddress!)
                    }
                }
            }
        }
        return (out, dx)
    }

    // MARK: - checkpoints

    /// The model as a checkpoint record: every parameter under its PyTorch name (including the
    /// fixed `pos_embed` for sit, as DiT's state_dict has it) plus metadata `config` (JSON),
    /// `arch`, `format` = "pt"; `extra` metadata (step, parent digest, tool) is merged in.
    public func checkpointRecord(metadata extra: [String: String] = [:]) -> Record {
        var meta = extra
        meta["config"] = config.json()
        meta["arch"] = config.arch
        meta["format"] = "pt"
        return Record(params.tensors(), metadata: meta)
    }

    /// Builds a network from a checkpoint record: config from metadata, parameters by name
    /// (shape-checked; tensors with other names, such as `optim.*` and `ema.*`, are ignored).
    /// With `ema`, the weights come from the `ema.<name>` tensors a training checkpoint carries.
    public static func load(from record: Record, ema: Bool = false) throws -> VelocityNet {
        guard let json = record.metadata["config"] else {
            throw StreamError.invalid("checkpoint has no `config` metadata; it is not a velocity model")
        }
        let config = try ModelConfig.from(json: json)
        // `load` overwrites every parameter or throws, so no random init is needed first.
        let net = try uninitialized(config)
        try net.params.load(from: record, prefix: ema ? "ema." : "")
        return net
    }

    public static func load(path: String, ema: Bool = false) throws -> VelocityNet {
        try load(from: Checkpoint.read(path), ema: ema)
    }

    public func save(to path: String, metadata: [String: String] = [:], extraTensors: [(String, Tensor)] = []) throws {
        var r = checkpointRecord(metadata: metadata)
        for (name, t) in extraTensors { r[name] = t }
        try Checkpoint.write(r, to: path)
    }
}
