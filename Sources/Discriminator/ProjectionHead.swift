import Foundation
import NN
import Numerics
import TensorStream

/// Architecture of a discriminator head, serialised as JSON into checkpoint metadata `config`.
public struct DiscriminatorConfig: Codable, Equatable, Sendable {
    /// "linear" (DRL: h = linear map of the features), "mlp" (linear map, then two GELU residual
    /// blocks) or "quadratic" (linear, plus a diagonal quadratic form in h).
    public var head: String
    public var featureDim: Int
    public var width: Int
    /// Number of classes; 0 for an unconditional head (no class embedding, no class bias).
    public var numClasses: Int

    public init(head: String = "linear", featureDim: Int, width: Int = 512, numClasses: Int) {
        self.head = head
        self.featureDim = featureDim
        self.width = width
        self.numClasses = numClasses
    }

    enum CodingKeys: String, CodingKey {
        case head, width
        case featureDim = "feature_dim", numClasses = "num_classes"
    }

    public static let blocks = 2

    public func validate() throws {
        guard ["linear", "mlp", "quadratic"].contains(head) else { throw DiscriminatorError("discriminator head must be linear, mlp or quadratic, got \(head)") }
        guard featureDim > 0, width > 0, numClasses >= 0 else { throw DiscriminatorError("discriminator config: sizes must be positive") }
    }

    public func json() -> String {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return String(decoding: try! enc.encode(self), as: UTF8.self)
    }

    public static func from(json: String) throws -> DiscriminatorConfig {
        guard let c = try? JSONDecoder().decode(DiscriminatorConfig.self, from: Data(json.utf8)) else {
            throw DiscriminatorError("discriminator checkpoint has an unreadable `config`: \(json)")
        }
        try c.validate()
        return c
    }
}

/// DRL's class-conditional projection discriminator (Miyato & Koyama 2018) on frozen features f:
///
///     h     = proj(f)                                  Linear(D, W)          (`proj`)
///     mlp:  h = h + fc2(GELU(fc1(h)))  twice           Linear(W, W) x 2 each (`blocks.i.fc1/fc2`)
///     logit = psi(h) + <h, e(y)> + b(y)                Linear(W, 1) (`psi`), Embedding(K, W) (`embed`),
///                                                      Embedding(K, 1) (`class_bias`)
///     quadratic: logit += sum_j q_j h_j^2             (`quad.weight`, W; starts at 0)
///
/// The quadratic head can hold the exact log ratio of two Gaussians (any symmetric form
/// f^T A f = (P f)^T diag(q) (P f) once W >= D), the log density ratio Frechet distance assumes.
/// A linear logit's exponential tilt only shifts the features along one direction; a quadratic
/// one can also widen or narrow them, which a base whose features are too concentrated needs.
///
/// The logit estimates log q(x)/p(x) (q real, p generated); D = sigmoid(logit). Single-threaded
/// layers (BLAS threads inside); not thread-safe.
public final class ProjectionHead {
    public let config: DiscriminatorConfig
    public let params: ParameterSet
    let proj: Linear
    let fc1: [Linear], fc2: [Linear], acts: [GELU]
    let psi: Linear
    let embed: Parameter?
    let classBias: Parameter?
    let quad: Parameter?

    private var batch = 0
    private var labels: [Int] = []
    private let input = Buffer(), hBuf = Buffer(), logitBuf = Buffer(), dh = Buffer(), dlogit = Buffer()
    private var blockOut: [Buffer] = []

    public init(config: DiscriminatorConfig, seed: UInt64 = 0) throws {
        try config.validate()
        self.config = config
        let ps = ParameterSet()
        params = ps
        let W = config.width
        proj = Linear(ps, "proj", in: config.featureDim, out: W)
        let nb = config.head == "mlp" ? DiscriminatorConfig.blocks : 0
        fc1 = (0..<nb).map { Linear(ps, "blocks.\($0).fc1", in: W, out: W) }
        fc2 = (0..<nb).map { Linear(ps, "blocks.\($0).fc2", in: W, out: W) }
        acts = (0..<nb).map { _ in GELU() }
        blockOut = (0..<nb).map { _ in Buffer() }
        psi = Linear(ps, "psi", in: W, out: 1)
        if config.numClasses > 0 {
            embed = ps.add("embed.weight", [config.numClasses, W])
            classBias = ps.add("class_bias.weight", [config.numClasses, 1])
        } else {
            embed = nil
            classBias = nil
        }
        quad = config.head == "quadratic" ? ps.add("quad.weight", [W]) : nil
        var rng = CounterRNG(seed: seed, stream: 0xD15C)
        proj.initDefault(rng: &rng)
        for l in fc1 { l.initDefault(rng: &rng) }
        for l in fc2 { l.initDefault(rng: &rng); l.weight.values = l.weight.values.map { $0 * 0.1 } }
        psi.initDefault(rng: &rng)
        embed?.normal(std: 0.02, rng: &rng)
    }

    /// Checks labels against the head: class ids in 0..<numClasses (unconditional heads ignore them).
    public func validate(labels: [Int]) throws {
        guard config.numClasses > 0 else { return }
        if let bad = labels.first(where: { $0 < 0 || $0 >= config.numClasses }) {
            throw DiscriminatorError("label \(bad) is outside the discriminator's classes 0..<\(config.numClasses)")
        }
    }

    /// logits [batch] for features [batch, D]. Caches what `backward` needs.
    @discardableResult
    public func forward(_ f: UnsafePointer<Float>, labels y: [Int], batch: Int) -> UnsafeMutablePointer<Float> {
        let D = config.featureDim, W = config.width
        self.batch = batch
        labels = y
        let xin = input.ensure(max(1, batch * D))
        xin.update(from: f, count: batch * D)
        var h = UnsafePointer(proj.forward(xin, rows: batch))
        for i in fc1.indices {
            let a = fc1[i].forward(h, rows: batch)
            let g = acts[i].forward(a, count: batch * W)
            let o = fc2[i].forward(g, rows: batch)
            let out = blockOut[i].ensure(batch * W)
            for j in 0..<(batch * W) { out[j] = h[j] + o[j] }
            h = UnsafePointer(out)
        }
        let hh = hBuf.ensure(max(1, batch * W))
        hh.update(from: h, count: batch * W)
        let logits = logitBuf.ensure(max(1, batch))
        psi.forward(hh, rows: batch, into: logits)
        if let embed, let classBias {
            for b in 0..<batch {
                let e = embed.value + y[b] * W, hb = hh + b * W
                var s: Float = 0
                for j in 0..<W { s += e[j] * hb[j] }
                logits[b] += s + classBias.value[y[b]]
            }
        }
        if let quad {
            for b in 0..<batch {
                let hb = hh + b * W
                var s: Float = 0
                for j in 0..<W { s += quad.value[j] * hb[j] * hb[j] }
                logits[b] += s
            }
        }
        return logits
    }

    public func logits(_ f: [Float], labels: [Int]) -> [Float] {
        let n = labels.count
        guard n > 0 else { return [] }
        let p = f.withUnsafeBufferPointer { forward($0.baseAddress!, labels: labels, batch: n) }
        return Array(UnsafeBufferPointer(start: p, count: n))
    }

    /// Given dL/dlogit [batch], accumulates parameter gradients (when `paramGrads`) and returns
    /// dL/df [batch, D].
    @discardableResult
    public func backward(_ dl: UnsafePointer<Float>, paramGrads: Bool = true) -> UnsafeMutablePointer<Float> {
        let W = config.width, B = batch
        let dlc = dlogit.ensure(max(1, B))
        dlc.update(from: dl, count: B)
        let hh = hBuf.pointer
        let g = dh.ensure(max(1, B * W))
        psi.backward(dlc, into: g, paramGrads: paramGrads)
        if let embed, let classBias {
            for b in 0..<B {
                let y = labels[b], e = embed.value + y * W, hb = hh + b * W, gb = g + b * W
                let d = dlc[b]
                for j in 0..<W { gb[j] += d * e[j] }
                if paramGrads {
                    let ge = embed.grad + y * W
                    for j in 0..<W { ge[j] += d * hb[j] }
                    classBias.grad[y] += d
                }
            }
        }
        if let quad {
            for b in 0..<B {
                let d = dlc[b], hb = hh + b * W, gb = g + b * W
                for j in 0..<W { gb[j] += 2 * d * quad.value[j] * hb[j] }
                if paramGrads { for j in 0..<W { quad.grad[j] += d * hb[j] * hb[j] } }
            }
        }
        for i in fc1.indices.reversed() {
            // h_out = h_in + fc2(gelu(fc1(h_in))): d h_in = d h_out + fc1^T gelu' fc2^T d h_out
            let d2 = fc2[i].backward(g, paramGrads: paramGrads)
            let da = acts[i].backward(d2)
            let d1 = fc1[i].backward(da, paramGrads: paramGrads)
            for j in 0..<(B * W) { g[j] += d1[j] }
        }
        return proj.backward(g, paramGrads: paramGrads)
    }

    // MARK: - checkpoints

    public static let kind = "discriminator"

    public func checkpointRecord(encoder: String, metadata extra: [String: String] = [:]) -> Record {
        var meta = extra
        meta["kind"] = Self.kind
        meta["config"] = config.json()
        meta["encoder"] = encoder
        meta["format"] = "pt"
        return Record(params.tensors(), metadata: meta)
    }

    /// Loads a head from a checkpoint; returns it with the encoder digest it was trained on.
    public static func load(from record: Record, name: String = "checkpoint") throws -> (ProjectionHead, encoder: String) {
        guard record.metadata["kind"] == kind, let json = record.metadata["config"] else {
            let what = record.metadata["kind"].map { "a `\($0)` checkpoint" } ?? (record.metadata["arch"] != nil ? "a velocity model" : "not a discriminator")
            throw DiscriminatorError("\(name) is \(what), not a discriminator checkpoint (metadata kind = discriminator)")
        }
        guard let encoder = record.metadata["encoder"] else { throw DiscriminatorError("\(name) records no `encoder` digest") }
        let head = try ProjectionHead(config: DiscriminatorConfig.from(json: json))
        // The optimizer state a checkpoint may carry (for `discrim train --init-from`) is not part
        // of the module; everything else must match it exactly.
        var weights = record
        for name in record.names where name.hasPrefix("optim.") { weights[name] = nil }
        try head.params.load(from: weights, strict: true)
        return (head, encoder)
    }

    public static func load(path: String) throws -> (ProjectionHead, encoder: String) {
        try load(from: Checkpoint.read(path), name: path)
    }
}
