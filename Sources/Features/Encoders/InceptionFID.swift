import Foundation
import NN
import Numerics
import TensorStream

/// Inception-v3 as pytorch-fid builds it for FID: torchvision's Inception-v3 trunk with the FID
/// variants of its Mixed blocks (average pools that do not count padding in A, C and the first E;
/// a max pool in the last E), read out at the 2048-d global average pool ("pool3").
///
/// Input x in [-1, 1] (the toolkit's range), [C, H, W] with C 1 or 3: bilinearly resized to
/// `resize` x `resize` (299; `F.interpolate(..., mode="bilinear", align_corners=False)`, as
/// pytorch-fid's `resize_input`), grey repeated to three channels. pytorch-fid maps [0, 1] images
/// to [-1, 1] after resizing; resizing commutes with that affine map, so [-1, 1] images go in as
/// they are.
///
/// Checkpoint: torchvision's state-dict names (`Conv2d_1a_3x3.conv.weight`,
/// `Mixed_5b.branch1x1.bn.running_var`, ...; `fc.*` and `num_batches_tracked` are ignored) and
/// metadata `arch` "inception-v3-fid", `config` {"resize", "bn_eps"}: what
/// `scripts/convert_weights.py inception` writes. Batch norm is applied in eval mode, folded into
/// each convolution when loading. Every width is read from the weights, so a narrower network of
/// the same topology (the parity tests use one) loads the same way.
public final class InceptionFIDEncoder: ParallelFeatureEncoder {
    public static let arch = "inception-v3-fid"
    public let inputShape: [Int]
    public let featureDimension: Int
    public let digest: String
    public let resize: Int
    let params: ParameterSet
    private let runner: ChunkedRunner

    public var inferenceChunk: Int { get { runner.chunk } set { runner.chunk = newValue } }
    public var parallelism: Int { get { runner.parallelism } set { runner.parallelism = newValue } }

    /// Builds the encoder from a decoded checkpoint for images of `inputShape` ([C, H, W]).
    public init(record: Record, digest: String, inputShape: [Int]?, path: String) throws {
        var resize = 299
        var eps = 0.001
        if let json = record.metadata["config"],
           let obj = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any] {
            if let r = obj["resize"] as? Int { resize = r }
            if let e = obj["bn_eps"] as? Double { eps = e }
        }
        guard resize >= 75, resize <= 1024 else { throw FeatureError("\(path): Inception resize \(resize) is out of range (75 ... 1024)") }
        guard eps > 0, eps < 1 else { throw FeatureError("\(path): bad bn_eps \(eps)") }
        self.resize = resize
        self.digest = digest
        self.inputShape = try PretrainedArch.imageShape(inputShape, native: [3, resize, resize], path: path)
        params = try Self.foldBatchNorm(record, eps: Float(eps), path: path)
        // One build to validate the topology against the weights and learn the feature width.
        let probe = try InceptionNetwork(params: params, inputShape: self.inputShape, resize: resize)
        featureDimension = probe.featureDimension
        let ps = params, shape = self.inputShape
        runner = ChunkedRunner(sampleDimension: shape.reduce(1, *), featureDimension: probe.featureDimension, chunk: 8) {
            try! InceptionNetwork(params: ps, inputShape: shape, resize: resize)
        }
    }

    /// conv weight W and BN (gamma, beta, mean, var) -> W * gamma / sqrt(var + eps) and bias
    /// beta - mean * gamma / sqrt(var + eps), as `<prefix>.weight`, `<prefix>.bias`.
    static func foldBatchNorm(_ record: Record, eps: Float, path: String) throws -> ParameterSet {
        let ps = ParameterSet()
        var used = Set<String>()
        for name in record.names where name.hasSuffix(".conv.weight") {
            let prefix = String(name.dropLast(".conv.weight".count))
            guard let t = record[name], t.shape.count == 4 else { throw FeatureError("\(path): `\(name)` is not a conv weight [out, in, kh, kw]") }
            let w = try PretrainedArch.float(t, name, path)
            let bnNames = ["weight", "bias", "running_mean", "running_var"].map { "\(prefix).bn.\($0)" }
            var bn: [[Float]] = []
            for n in bnNames {
                let v = try PretrainedArch.float(record[n], n, path)
                guard v.count == t.shape[0] else { throw FeatureError("\(path): `\(n)` has \(v.count) values, the conv has \(t.shape[0]) outputs") }
                bn.append(v)
            }
            let O = t.shape[0], per = w.count / O
            let wp = ps.add(prefix + ".weight", t.shape), bp = ps.add(prefix + ".bias", [O])
            for o in 0..<O {
                let s = bn[0][o] / (bn[3][o] + eps).squareRoot()
                for i in 0..<per { wp.value[o * per + i] = w[o * per + i] * s }
                bp.value[o] = bn[1][o] - bn[2][o] * s
            }
            used.insert(name)
            for n in bnNames { used.insert(n) }
        }
        for name in record.names where !used.contains(name) {
            if name.hasPrefix("fc.") || name.hasSuffix(".num_batches_tracked") || name.hasPrefix("AuxLogits.") { continue }
            throw FeatureError("\(path): unexpected tensor `\(name)` in an Inception checkpoint")
        }
        return ps
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

/// One step of a branch: a conv (+ folded BN + ReLU) or a pool.
private enum BranchOp {
    case conv(Conv2dRect)
    case pool(Pool2d)
}

/// A Mixed block: branches that read the same input and write channel slices of one output.
/// A branch is a chain of ops; a forking branch (the E blocks' 3x3 branches) ends in two convs
/// applied to the chain's output, both written to the concatenation.
private final class MixedBlock {
    struct Branch {
        var ops: [BranchOp]
        var fork: [Conv2dRect]
        var shapes: [(Int, Int, Int)] = []   // (c, h, w) after each op
        var offsets: [Int] = []               // channel offset of each written slice
        var channels: Int = 0                 // channels the branch writes
    }
    var branches: [Branch]
    let inC: Int, inH: Int, inW: Int
    let outC: Int, outH: Int, outW: Int
    private var batch = 0
    private let out = Buffer(), dIn = Buffer(), forkGrad = Buffer()

    init(_ branches: [Branch], channels: Int, height: Int, width: Int, name: String) throws {
        inC = channels; inH = height; inW = width
        var bs = branches
        var offset = 0
        var size: (Int, Int)?
        for b in bs.indices {
            var (c, h, w) = (channels, height, width)
            for op in bs[b].ops {
                switch op {
                case .conv(let k):
                    guard k.inChannels == c else { throw FeatureError("\(name): a conv expects \(k.inChannels) input channels, the branch has \(c)") }
                    (h, w) = k.outputSize(height: h, width: w)
                    c = k.outChannels
                case .pool(let p):
                    h = (h + 2 * p.padding - p.kernel) / p.stride + 1
                    w = (w + 2 * p.padding - p.kernel) / p.stride + 1
                }
                guard h > 0, w > 0 else { throw FeatureError("\(name): the image is too small for this network") }
                bs[b].shapes.append((c, h, w))
            }
            var written: [(Int, Int, Int)] = []
            if bs[b].fork.isEmpty {
                written = [(c, h, w)]
            } else {
                for k in bs[b].fork {
                    guard k.inChannels == c else { throw FeatureError("\(name): a conv expects \(k.inChannels) input channels, the branch has \(c)") }
                    let (hh, ww) = k.outputSize(height: h, width: w)
                    written.append((k.outChannels, hh, ww))
                }
            }
            for (cc, hh, ww) in written {
                if let s = size, s != (hh, ww) { throw FeatureError("\(name): branches end at different sizes") }
                size = (hh, ww)
                bs[b].offsets.append(offset)
                offset += cc
                bs[b].channels += cc
            }
        }
        self.branches = bs
        outC = offset
        (outH, outW) = size!
    }

    func forward(_ x: UnsafePointer<Float>, batch: Int) -> UnsafeMutablePointer<Float> {
        self.batch = batch
        let y = out.ensure(batch * outC * outH * outW)
        for b in branches {
            var h = x
            var (c, hh, ww) = (inC, inH, inW)
            let last = b.fork.isEmpty ? b.ops.count - 1 : b.ops.count
            for (i, op) in b.ops.enumerated() {
                let dest: UnsafeMutablePointer<Float>? = i == last ? y : nil
                let total: Int? = i == last ? outC : nil
                let off = i == last ? b.offsets[0] : 0
                switch op {
                case .conv(let k):
                    h = UnsafePointer(k.forward(h, batch: batch, height: hh, width: ww, into: dest, channelOffset: off, totalChannels: total))
                case .pool(let p):
                    h = UnsafePointer(p.forward(h, batch: batch, channels: c, height: hh, width: ww, into: dest, channelOffset: off, totalChannels: total))
                }
                (c, hh, ww) = b.shapes[i]
            }
            for (j, k) in b.fork.enumerated() {
                k.forward(h, batch: batch, height: hh, width: ww, into: y, channelOffset: b.offsets[j], totalChannels: outC)
            }
        }
        return y
    }

    func backward(_ dy: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        let dx = dIn.zeroed(batch * inC * inH * inW)
        for b in branches {
            var d: UnsafePointer<Float> = dy
            if !b.fork.isEmpty {
                let (c, h, w) = b.shapes.last!
                let fg = forkGrad.zeroed(batch * c * h * w)
                for k in b.fork { k.backward(dy, into: fg, accumulate: true) }
                d = UnsafePointer(fg)
            }
            for i in b.ops.indices.reversed() {
                let target: UnsafeMutablePointer<Float>? = i == 0 ? dx : nil
                switch b.ops[i] {
                case .conv(let k): d = UnsafePointer(k.backward(d, into: target, accumulate: target != nil))
                case .pool(let p): d = UnsafePointer(p.backward(d, into: target, accumulate: target != nil))
                }
            }
        }
        return dx
    }
}

/// One single-threaded Inception network over shared (folded) weights.
private final class InceptionNetwork: FrozenNetwork {
    let prep: ResizeNormalize
    let stem: [BranchOp]
    let stemShapes: [(Int, Int, Int)]
    let blocks: [MixedBlock]
    let featureDimension: Int
    private var batch = 0
    private let gap = GlobalAvgPool()

    init(params ps: ParameterSet, inputShape: [Int], resize: Int) throws {
        prep = ResizeNormalize(channels: inputShape[0], height: inputShape[1], width: inputShape[2],
                               outChannels: 3, outHeight: resize, outWidth: resize, mode: .bilinear,
                               scale: [1, 1, 1], shift: [0, 0, 0])
        func conv(_ name: String, _ k: (Int, Int), stride: (Int, Int) = (1, 1), pad: (Int, Int) = (0, 0)) throws -> Conv2dRect {
            guard let w = ps[name + ".weight"] else { throw FeatureError("Inception checkpoint has no `\(name).conv.weight`") }
            guard w.shape[2] == k.0, w.shape[3] == k.1 else {
                throw FeatureError("Inception `\(name).conv.weight` has kernel \(w.shape[2])x\(w.shape[3]), expected \(k.0)x\(k.1)")
            }
            return Conv2dRect(ps, name, in: w.shape[1], out: w.shape[0], kernel: k, stride: stride, padding: pad, relu: true)
        }
        func maxPool() -> BranchOp { .pool(Pool2d(.max, kernel: 3, stride: 2)) }
        func c(_ k: Conv2dRect) -> BranchOp { .conv(k) }
        typealias B = MixedBlock.Branch
        let avg3: () -> BranchOp = { .pool(Pool2d(.average, kernel: 3, stride: 1, padding: 1)) }

        let stemOps: [BranchOp] = [
            c(try conv("Conv2d_1a_3x3", (3, 3), stride: (2, 2))),
            c(try conv("Conv2d_2a_3x3", (3, 3))),
            c(try conv("Conv2d_2b_3x3", (3, 3), pad: (1, 1))),
            maxPool(),
            c(try conv("Conv2d_3b_1x1", (1, 1))),
            c(try conv("Conv2d_4a_3x3", (3, 3))),
            maxPool(),
        ]
        var (ch, h, w) = (3, resize, resize)
        var shapes: [(Int, Int, Int)] = []
        for op in stemOps {
            switch op {
            case .conv(let k):
                guard k.inChannels == ch else { throw FeatureError("Inception stem: a conv expects \(k.inChannels) input channels, not \(ch)") }
                (h, w) = k.outputSize(height: h, width: w); ch = k.outChannels
            case .pool(let p):
                h = (h - p.kernel) / p.stride + 1; w = (w - p.kernel) / p.stride + 1
            }
            guard h > 0, w > 0 else { throw FeatureError("Inception: resize \(resize) is too small") }
            shapes.append((ch, h, w))
        }
        stem = stemOps
        stemShapes = shapes

        func blockA(_ n: String) throws -> [B] {
            [B(ops: [c(try conv("\(n).branch1x1", (1, 1)))], fork: []),
             B(ops: [c(try conv("\(n).branch5x5_1", (1, 1))), c(try conv("\(n).branch5x5_2", (5, 5), pad: (2, 2)))], fork: []),
             B(ops: [c(try conv("\(n).branch3x3dbl_1", (1, 1))), c(try conv("\(n).branch3x3dbl_2", (3, 3), pad: (1, 1))),
                     c(try conv("\(n).branch3x3dbl_3", (3, 3), pad: (1, 1)))], fork: []),
             B(ops: [avg3(), c(try conv("\(n).branch_pool", (1, 1)))], fork: [])]
        }
        func blockB(_ n: String) throws -> [B] {
            [B(ops: [c(try conv("\(n).branch3x3", (3, 3), stride: (2, 2)))], fork: []),
             B(ops: [c(try conv("\(n).branch3x3dbl_1", (1, 1))), c(try conv("\(n).branch3x3dbl_2", (3, 3), pad: (1, 1))),
                     c(try conv("\(n).branch3x3dbl_3", (3, 3), stride: (2, 2)))], fork: []),
             B(ops: [maxPool()], fork: [])]
        }
        func blockC(_ n: String) throws -> [B] {
            [B(ops: [c(try conv("\(n).branch1x1", (1, 1)))], fork: []),
             B(ops: [c(try conv("\(n).branch7x7_1", (1, 1))), c(try conv("\(n).branch7x7_2", (1, 7), pad: (0, 3))),
                     c(try conv("\(n).branch7x7_3", (7, 1), pad: (3, 0)))], fork: []),
             B(ops: [c(try conv("\(n).branch7x7dbl_1", (1, 1))), c(try conv("\(n).branch7x7dbl_2", (7, 1), pad: (3, 0))),
                     c(try conv("\(n).branch7x7dbl_3", (1, 7), pad: (0, 3))), c(try conv("\(n).branch7x7dbl_4", (7, 1), pad: (3, 0))),
                     c(try conv("\(n).branch7x7dbl_5", (1, 7), pad: (0, 3)))], fork: []),
             B(ops: [avg3(), c(try conv("\(n).branch_pool", (1, 1)))], fork: [])]
        }
        func blockD(_ n: String) throws -> [B] {
            [B(ops: [c(try conv("\(n).branch3x3_1", (1, 1))), c(try conv("\(n).branch3x3_2", (3, 3), stride: (2, 2)))], fork: []),
             B(ops: [c(try conv("\(n).branch7x7x3_1", (1, 1))), c(try conv("\(n).branch7x7x3_2", (1, 7), pad: (0, 3))),
                     c(try conv("\(n).branch7x7x3_3", (7, 1), pad: (3, 0))), c(try conv("\(n).branch7x7x3_4", (3, 3), stride: (2, 2)))], fork: []),
             B(ops: [maxPool()], fork: [])]
        }
        func blockE(_ n: String, maxPoolBranch: Bool) throws -> [B] {
            let pool: BranchOp = maxPoolBranch ? .pool(Pool2d(.max, kernel: 3, stride: 1, padding: 1)) : avg3()
            return [B(ops: [c(try conv("\(n).branch1x1", (1, 1)))], fork: []),
                    B(ops: [c(try conv("\(n).branch3x3_1", (1, 1)))],
                      fork: [try conv("\(n).branch3x3_2a", (1, 3), pad: (0, 1)), try conv("\(n).branch3x3_2b", (3, 1), pad: (1, 0))]),
                    B(ops: [c(try conv("\(n).branch3x3dbl_1", (1, 1))), c(try conv("\(n).branch3x3dbl_2", (3, 3), pad: (1, 1)))],
                      fork: [try conv("\(n).branch3x3dbl_3a", (1, 3), pad: (0, 1)), try conv("\(n).branch3x3dbl_3b", (3, 1), pad: (1, 0))]),
                    B(ops: [pool, c(try conv("\(n).branch_pool", (1, 1)))], fork: [])]
        }
        let specs: [(String, () throws -> [B])] = [
            ("Mixed_5b", { try blockA("Mixed_5b") }), ("Mixed_5c", { try blockA("Mixed_5c") }), ("Mixed_5d", { try blockA("Mixed_5d") }),
            ("Mixed_6a", { try blockB("Mixed_6a") }),
            ("Mixed_6b", { try blockC("Mixed_6b") }), ("Mixed_6c", { try blockC("Mixed_6c") }),
            ("Mixed_6d", { try blockC("Mixed_6d") }), ("Mixed_6e", { try blockC("Mixed_6e") }),
            ("Mixed_7a", { try blockD("Mixed_7a") }),
            ("Mixed_7b", { try blockE("Mixed_7b", maxPoolBranch: false) }), ("Mixed_7c", { try blockE("Mixed_7c", maxPoolBranch: true) }),
        ]
        var blocks: [MixedBlock] = []
        for (name, make) in specs {
            let b = try MixedBlock(try make(), channels: ch, height: h, width: w, name: name)
            (ch, h, w) = (b.outC, b.outH, b.outW)
            blocks.append(b)
        }
        self.blocks = blocks
        featureDimension = ch
        // Every conv of the checkpoint must be used (a tensor left over means another topology).
        let convCount = ps.all.count / 2
        var used = 5
        for b in blocks { for br in b.branches { used += br.fork.count + br.ops.filter { if case .conv = $0 { return true }; return false }.count } }
        guard used == convCount else { throw FeatureError("Inception checkpoint has \(convCount) convolutions, the FID network uses \(used)") }
    }

    func forward(_ x: UnsafePointer<Float>, batch: Int) -> UnsafeMutablePointer<Float> {
        self.batch = batch
        var h = UnsafePointer(prep.forward(x, batch: batch))
        var (c, hh, ww) = (3, prep.outHeight, prep.outWidth)
        for (i, op) in stem.enumerated() {
            switch op {
            case .conv(let k): h = UnsafePointer(k.forward(h, batch: batch, height: hh, width: ww))
            case .pool(let p): h = UnsafePointer(p.forward(h, batch: batch, channels: c, height: hh, width: ww))
            }
            (c, hh, ww) = stemShapes[i]
        }
        for b in blocks { h = UnsafePointer(b.forward(h, batch: batch)) }
        let last = blocks.last!
        return gap.forward(h, batch: batch, channels: last.outC, spatial: last.outH * last.outW)
    }

    func backward(_ g: UnsafePointer<Float>) -> UnsafeMutablePointer<Float> {
        var d = UnsafePointer(gap.backward(g))
        for b in blocks.reversed() { d = UnsafePointer(b.backward(d)) }
        for op in stem.reversed() {
            switch op {
            case .conv(let k): d = UnsafePointer(k.backward(d))
            case .pool(let p): d = UnsafePointer(p.backward(d))
            }
        }
        return prep.backward(d)
    }
}
