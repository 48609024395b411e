import Foundation
import NN
import Numerics
import TensorStream

/// Architecture of a DINOv2 ViT checkpoint, JSON in metadata `config` (with `arch` "dinov2").
public struct DINOv2Config: Codable, Equatable, Sendable {
    /// Images are resized to image_size x image_size (224) before the patch embedding.
    public var imageSize: Int
    public var patchSize: Int
    public var embedDim: Int
    public var depth: Int
    public var heads: Int
    public var mlpHidden: Int
    public var layerNormEps: Double
    /// How the stored position embeddings (a square grid of M x M patches, 37 x 37 for the
    /// released models trained at 518) reach the image_size / patch_size grid: "size"
    /// (transformers: bicubic to the target size) or "offset" (the torch hub models: bicubic with
    /// scale factor (g + interpolate_offset) / M).
    public var posInterpolation: String
    public var interpolateOffset: Double
    /// The resize of input images to image_size: "bicubic" (default) or "bilinear".
    public var resizeInterpolation: String
    public var mean: [Double]
    public var std: [Double]

    enum CodingKeys: String, CodingKey {
        case imageSize = "image_size", patchSize = "patch_size", embedDim = "embed_dim", depth, heads
        case mlpHidden = "mlp_hidden", layerNormEps = "layer_norm_eps", posInterpolation = "pos_interpolation"
        case interpolateOffset = "interpolate_offset", resizeInterpolation = "resize_interpolation", mean, std
    }

    public func validate() throws {
        func bad(_ why: String) -> FeatureError { FeatureError("dinov2 config: \(why)") }
        guard patchSize > 0, imageSize >= patchSize, imageSize <= 1024, imageSize % patchSize == 0 else { throw bad("image_size must be a multiple of patch_size") }
        guard embedDim > 0, embedDim <= 8192, heads > 0, embedDim % heads == 0 else { throw bad("embed_dim must be a positive multiple of heads") }
        guard depth > 0, depth <= 128, mlpHidden > 0, mlpHidden <= 65536 else { throw bad("bad depth or mlp_hidden") }
        guard layerNormEps > 0 else { throw bad("layer_norm_eps must be positive") }
        guard ["size", "offset"].contains(posInterpolation) else { throw bad("pos_interpolation must be size or offset") }
        guard Interpolation(rawValue: resizeInterpolation) != nil else { throw bad("resize_interpolation must be bicubic or bilinear") }
        guard mean.count == 3, std.count == 3, std.allSatisfy({ $0 > 0 }) else { throw bad("mean and std need three values, std positive") }
    }
}

/// DINOv2 (ViT-S/14, ViT-B/14, any size): the CLS token of the final LayerNorm, the features
/// DRL's discriminator and FD_DINOv2 use.
///
/// Input x in [-1, 1], [C, H, W] with C 1 or 3: resized to image_size (bicubic by default,
/// `align_corners=False`, as `F.interpolate`), grey repeated to three channels, then ImageNet
/// normalisation of the [0, 1] image ((x + 1) / 2 - mean) / std. Then the patch embedding, the CLS
/// token, the position embeddings interpolated to the patch grid once at load, `depth` pre-norm
/// blocks x + ls1 * attn(norm1(x)), x + ls2 * mlp(norm2(x)) (exact GELU), and the final norm.
///
/// Checkpoint: the torch hub model's names (`cls_token`, `pos_embed`, `patch_embed.proj.*`,
/// `blocks.<i>.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}.*`, `norm.*`)
/// and metadata `arch` "dinov2", `config` (`DINOv2Config`): what `scripts/convert_weights.py
/// dinov2` writes from a hub or a transformers checkpoint.
public final class DINOv2Encoder: ParallelFeatureEncoder {
    public static let arch = "dinov2"
    public let config: DINOv2Config
    public let inputShape: [Int]
    public var featureDimension: Int { config.embedDim }
    public let digest: String
    let params: ParameterSet
    /// Position embeddings on the patch grid, [1 + g*g, D] (CLS first).
    let pos: [Float]
    private let runner: ChunkedRunner

    public var inferenceChunk: Int { get { runner.chunk } set { runner.chunk = newValue } }
    public var parallelism: Int { get { runner.parallelism } set { runner.parallelism = newValue } }

    public init(record: Record, digest: String, inputShape: [Int]?, path: String) throws {
        guard let json = record.metadata["config"] else { throw FeatureError("\(path): a dinov2 checkpoint needs `config` metadata") }
        let config: DINOv2Config
        do { config = try JSONDecoder().decode(DINOv2Config.self, from: Data(json.utf8)) } catch {
            throw FeatureError("\(path): dinov2 config is not valid JSON of the expected form: \(json.prefix(200))")
        }
        try config.validate()
        self.config = config
        self.digest = digest
        self.inputShape = try PretrainedArch.imageShape(inputShape, native: [3, config.imageSize, config.imageSize], path: path)
        let D = config.embedDim
        let ps = ParameterSet()
        _ = DINOv2Network.register(ps, config)
        for p in ps.all {
            guard let t = record[p.name] else { throw FeatureError("\(path): checkpoint has no `\(p.name)` tensor") }
            guard t.shape == p.shape else { throw FeatureError("\(path): tensor `\(p.name)` has shape \(t.shape), the model needs \(p.shape)") }
            p.values = try PretrainedArch.float(t, p.name, path)
        }
        guard let pe = record["pos_embed"], pe.shape.count == 3, pe.shape[0] == 1, pe.shape[2] == D else {
            throw FeatureError("\(path): `pos_embed` must be [1, 1 + M*M, \(D)]")
        }
        let M = Int(Double(pe.shape[1] - 1).squareRoot().rounded())
        guard M * M == pe.shape[1] - 1, M > 0 else { throw FeatureError("\(path): `pos_embed` does not hold a square grid of patches") }
        let known = Set(ps.names + ["pos_embed", "mask_token"])
        for name in record.names where !known.contains(name) {
            throw FeatureError("\(path): unexpected tensor `\(name)` in a dinov2 checkpoint (register tokens and other variants are not supported)")
        }
        pos = try Self.interpolatePositions(try PretrainedArch.float(pe, "pos_embed", path), grid: M, config: config, path: path)
        params = ps
        let shape = self.inputShape, posCopy = pos
        runner = ChunkedRunner(sampleDimension: shape.reduce(1, *), featureDimension: D, chunk: 8) {
            DINOv2Network(params: ps, config: config, inputShape: shape, pos: posCopy)
        }
    }

    /// [1 + M*M, D] -> [1 + g*g, D], g = image_size / patch_size, by bicubic interpolation of each
    /// channel's M x M plane (unchanged when M == g).
    static func interpolatePositions(_ pe: [Float], grid M: Int, config: DINOv2Config, path: String) throws -> [Float] {
        let D = config.embedDim, g = config.imageSize / config.patchSize
        if M == g { return pe }
        let m: [Float]
        if config.posInterpolation == "offset" {
            let sf = (Double(g) + config.interpolateOffset) / Double(M)
            guard Int((Double(M) * sf).rounded(.down)) == g else {
                throw FeatureError("\(path): interpolate_offset \(config.interpolateOffset) does not give a \(g) x \(g) grid from \(M) x \(M)")
            }
            m = Interpolation.bicubic.matrix(inSize: M, outSize: g, scaleFactor: sf)
        } else {
            m = Interpolation.bicubic.matrix(inSize: M, outSize: g)
        }
        var out = [Float](repeating: 0, count: (1 + g * g) * D)
        for d in 0..<D { out[d] = pe[d] }
        // out[(1 + i*g + j), d] = sum_{a,b} m[i,a] m[j,b] pe[1 + a*M + b, d], accumulated in double
        var tmp = [Double](repeating: 0, count: M * g * D)   // [a, j, d]
        for a in 0..<M { for j in 0..<g { for b in 0..<M {
            let w = Double(m[j * M + b])
            if w == 0 { continue }
            let src = (1 + a * M + b) * D, dst = (a * g + j) * D
            for d in 0..<D { tmp[dst + d] += w * Double(pe[src + d]) }
        } } }
        for i in 0..<g { for j in 0..<g {
            let dst = (1 + i * g + j) * D
            var acc = [Double](repeating: 0, count: D)
            for a in 0..<M {
                let w = Double(m[i * M + a])
                if w == 0 { continue }
                let src = (a * g + j) * D
                for d in 0..<D { acc[d] += w * tmp[src + d] }
            }
            for d in 0..<D { out[dst + d] = Float(acc[d]) }
        } }
        return out
    }

    public func features(_ x: UnsafePointer<Float>, batch: Int, into out: UnsafeMutablePointer<Float>) {
        runner.run(x, batch: batch, cotangent: nil, features: out, inputGrad: nil)
    }

    public func featureVJP(_ x: UnsafePointer<Float>, batch: Int, cotangent g: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>) {
        runner.run(x, batch: batch, cotangent: g, features: nil, inputGrad: dx)
    }

    public func featuresAndVJP(_ x: UnsafePointer<Float>, batch: Int, features out: UnsafeMutablePointer<Float>,
                               cotangent: FeatureCotangent, into dx: UnsafeMutablePointer<Float>) {
        withoutActuallyEscaping(cotangent) { c in
            runner.run(x, batch: batch, cotangent: nil, cotangentOf: c, features: out, inputGrad: dx)
        }
    }
}

/// One pre-norm ViT block with layer scale.
private final class ViTBlock {
    let norm1: LayerNorm, attn: MultiHeadAttention, ls1: Parameter
    let norm2: LayerNorm, fc1: Linear, act = GELUExact(), fc2: Linear, ls2: Parameter
    let dim: Int, hidden: Int
    private var rows = 0, batch = 0, tokens = 0
    private let mid = Buffer(), out = Buffer(), dMid = Buffer(), dIn = Buffer(), scaled = Buffer()

    init(_ ps: ParameterSet, _ n: String, _ c: DINOv2Config) {
        dim = c.embedDim; hidden = c.mlpHidden
        norm1 = LayerNorm(ps, n + ".norm1", dim: dim, affine: true, eps: Float(c.layerNormEps))
        attn = MultiHeadAttention(ps, n + ".attn", width: dim, heads: c.heads)
        ls1 = ps.parameter(n + ".ls1.gamma", [dim])
        norm2 = LayerNorm(ps, n + ".norm2", dim: dim, affine: true, eps: Float(c.layerNormEps))
        fc1 = Linear(ps, n + ".mlp.fc1", in: dim, out: hidden)
        fc2 = Linear(ps, n + ".mlp.fc2", in: hidden, out: dim)
        ls2 = ps.parameter(n + ".ls2.gamma", [dim])
    }

    func forward(_ x: UnsafePointer<Float>, batch: Int, tokens: Int) -> UnsafeMutablePointer<Float> {
        self.batch = batch; self.tokens = tokens
        let rows = batch * tokens, D = dim
        self.rows = rows
        let a = attn.forward(norm1.forward(x, rows: rows), batch: batch, tokens: tokens)
        let h = mid.ensure(rows * D), g1 = ls1.value
        for r in 0..<rows { let hr = h + r * D, xr = x + r * D, ar = a + r * D; for i in 0..<D { hr[i] = xr[i] + g1[i] * ar[i] } }
        let f = fc2.forward(act.forward(fc1.forward(norm2.forward(h, rows: rows), rows: rows), count: rows * hidden), rows: rows)
        let y = out.ensure(rows * D), g2 = ls2.value
        for r in 0..<rows { let yr = y + r * D, hr = h + r * D, fr = f + r * D; for i in 0..<D { yr[i] = hr[i] + g2[i] * fr[i] } }
        return y
    }

    func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        let D = dim
        let s = scaled.ensure(rows * D), g2 = ls2.value, g1 = ls1.value
        for r in 0..<rows { let sr = s + r * D, dr = dy + r * D; for i in 0..<D { sr[i] = g2[i] * dr[i] } }
        var d = fc2.backward(s, paramGrads: false)
        d = act.backward(d)
        d = fc1.backward(d, paramGrads: false)
        d = norm2.backward(d, paramGrads: false)
        let dh = dMid.ensure(rows * D)
        for i in 0..<(rows * D) { dh[i] = dy[i] + d[i] }
        for r in 0..<rows { let sr = s + r * D, dr = dh + r * D; for i in 0..<D { sr[i] = g1[i] * dr[i] } }
        d = attn.backward(s, paramGrads: false)
        d = norm1.backward(d, paramGrads: false)
        let dx = dIn.ensure(rows * D)
        for i in 0..<(rows * D) { dx[i] = dh[i] + d[i] }
        return dx
    }
}

/// One single-threaded DINOv2 network over shared weights.
private final class DINOv2Network: FrozenNetwork {
    let config: DINOv2Config
    let prep: ResizeNormalize
    let patch: Conv2d
    let cls: Parameter
    let blocks: [ViTBlock]
    let norm: LayerNorm
    let pos: [Float]
    let grid: Int
    private var batch = 0
    private let tokens = Buffer(), clsRows = Buffer(), dTokens = Buffer(), dPatch = Buffer()

    /// Registers every parameter (all but pos_embed) and returns the layers.
    static func register(_ ps: ParameterSet, _ c: DINOv2Config) -> (Conv2d, Parameter, [ViTBlock], LayerNorm) {
        let patch = Conv2d(ps, "patch_embed.proj", in: 3, out: c.embedDim, kernel: c.patchSize, stride: c.patchSize, tokensOut: true)
        let cls = ps.parameter("cls_token", [1, 1, c.embedDim])
        let blocks = (0..<c.depth).map { ViTBlock(ps, "blocks.\($0)", c) }
        let norm = LayerNorm(ps, "norm", dim: c.embedDim, affine: true, eps: Float(c.layerNormEps))
        return (patch, cls, blocks, norm)
    }

    init(params ps: ParameterSet, config c: DINOv2Config, inputShape: [Int], pos: [Float]) {
        config = c
        let mode = Interpolation(rawValue: c.resizeInterpolation)!
        // x in [-1, 1]: ((x + 1) / 2 - mean) / std = x * 0.5 / std + (0.5 - mean) / std
        prep = ResizeNormalize(channels: inputShape[0], height: inputShape[1], width: inputShape[2],
                               outChannels: 3, outHeight: c.imageSize, outWidth: c.imageSize, mode: mode,
                               scale: (0..<3).map { Float(0.5 / c.std[$0]) },
                               shift: (0..<3).map { Float((0.5 - c.mean[$0]) / c.std[$0]) })
        (patch, cls, blocks, norm) = Self.register(ps, c)
        self.pos = pos
        grid = c.imageSize / c.patchSize
    }

    var tokenCount: Int { 1 + grid * grid }

    func forward(_ x: UnsafePointer<Float>, batch: Int) -> UnsafeMutablePointer<Float> {
        self.batch = batch
        let D = config.embedDim, T = tokenCount, G = grid * grid
        let img = prep.forward(x, batch: batch)
        let p = patch.forward(img, batch: batch, height: config.imageSize, width: config.imageSize)  // [batch * G, D]
        let t = tokens.ensure(batch * T * D)
        pos.withUnsafeBufferPointer { pe in
            for b in 0..<batch {
                let tb = t + b * T * D
                for i in 0..<D { tb[i] = cls.value[i] + pe[i] }
                for j in 0..<G {
                    let dst = tb + (1 + j) * D, src = p + (b * G + j) * D, pr = pe.baseAddress! + (1 + j) * D
                    for i in 0..<D { dst[i] = src[i] + pr[i] }
                }
            }
        }
        var h = UnsafePointer(t)
        for blk in blocks { h = UnsafePointer(blk.forward(h, batch: batch, tokens: T)) }
        let c = clsRows.ensure(batch * D)
        for b in 0..<batch { (c + b * D).update(from: h + b * T * D, count: D) }
        return norm.forward(c, rows: batch)
    }

    func backward(_ g: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        let D = config.embedDim, T = tokenCount, G = grid * grid
        let dc = norm.backward(g, paramGrads: false)
        let dt = dTokens.zeroed(batch * T * D)
        for b in 0..<batch { (dt + b * T * D).update(from: dc + b * D, count: D) }
        var d = UnsafePointer(dt)
        for blk in blocks.reversed() { d = UnsafePointer(blk.backward(d)) }
        let dp = dPatch.ensure(batch * G * D)
        for b in 0..<batch { (dp + b * G * D).update(from: d + (b * T + 1) * D, count: G * D) }
        let di = patch.backward(dp, paramGrads: false, inputGrad: true)
        return prep.backward(di)
    }
}
