import Foundation
import NN
import TensorStream

/// A network that maps a fixed-size chunk of images to features and back-propagates a feature
/// cotangent to the images; single-threaded, caching its activations between the two.
protocol FrozenNetwork: AnyObject {
    func forward(_ x: UnsafePointer<Float>, batch: Int) -> UnsafeMutablePointer<Float>
    func backward(_ g: UnsafePointer<Float>) -> UnsafeMutablePointer<Float>
}

/// Runs a frozen network over a batch the way `ConvEncoder` does: fixed-size chunks (the last
/// padded with zeros, so a sample's features do not depend on the batch it arrives in), spread
/// over `parallelism` workers, each borrowing its own replica (replicas share the weights).
final class ChunkedRunner {
    let sampleDimension: Int, featureDimension: Int
    var chunk: Int
    var parallelism = 1
    private let make: () -> FrozenNetwork
    private var pool: [FrozenNetwork] = []
    private var pads: [ObjectIdentifier: (Buffer, Buffer)] = [:]
    private let lock = NSLock()

    init(sampleDimension: Int, featureDimension: Int, chunk: Int, make: @escaping () -> FrozenNetwork) {
        self.sampleDimension = sampleDimension
        self.featureDimension = featureDimension
        self.chunk = chunk
        self.make = make
    }

    private func borrow() -> (FrozenNetwork, Buffer, Buffer) {
        lock.lock()
        defer { lock.unlock() }
        let net = pool.popLast() ?? make()
        let id = ObjectIdentifier(net)
        if pads[id] == nil { pads[id] = (Buffer(), Buffer()) }
        return (net, pads[id]!.0, pads[id]!.1)
    }

    private func giveBack(_ net: FrozenNetwork) {
        lock.lock()
        pool.append(net)
        lock.unlock()
    }

    /// The cotangent of the VJP is either given (`cotangent`) or computed from each chunk's
    /// features (`cotangentOf`), so one forward pass serves both the features and the VJP.
    func run(_ x: UnsafePointer<Float>, batch: Int, cotangent g: UnsafePointer<Float>?,
             cotangentOf: FeatureCotangent? = nil,
             features out: UnsafeMutablePointer<Float>?, inputGrad dx: UnsafeMutablePointer<Float>?) {
        guard batch > 0 else { return }
        let D = sampleDimension, F = featureDimension
        let chunk = self.chunk > 0 ? self.chunk : batch
        let chunks = (batch + chunk - 1) / chunk
        let workers = max(1, min(parallelism, chunks))
        let xa = Int(bitPattern: x), ga = g.map { Int(bitPattern: $0) }
        let oa = out.map { Int(bitPattern: $0) }, da = dx.map { Int(bitPattern: $0) }
        let work: (Int) -> Void = { w in
            let (net, padX, padG) = self.borrow()
            defer { self.giveBack(net) }
            var k = w
            while k < chunks {
                let s0 = k * chunk, n = min(chunk, batch - s0)
                var xs = UnsafePointer<Float>(bitPattern: xa)! + s0 * D
                var gs = ga.map { UnsafePointer<Float>(bitPattern: $0)! + s0 * F }
                if n < chunk {
                    let px = padX.zeroed(chunk * D)
                    px.update(from: xs, count: n * D)
                    xs = UnsafePointer(px)
                    if let g0 = gs {
                        let pg = padG.zeroed(chunk * F)
                        pg.update(from: g0, count: n * F)
                        gs = UnsafePointer(pg)
                    }
                }
                let f = net.forward(xs, batch: chunk)
                if let oa { (UnsafeMutablePointer<Float>(bitPattern: oa)! + s0 * F).update(from: f, count: n * F) }
                if let cotangentOf {
                    // padded rows get a zero cotangent, as `featureVJP` gives them
                    let pg = padG.zeroed(chunk * F)
                    cotangentOf(UnsafePointer(f), s0, n, pg)
                    gs = UnsafePointer(pg)
                }
                if let gs, let da {
                    let d = net.backward(gs)
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
}

/// Encoders with chunked, multi-worker inference (`embed` sets these from `--chunk` and
/// `--threads`).
public protocol ParallelFeatureEncoder: FeatureEncoder {
    var inferenceChunk: Int { get set }
    var parallelism: Int { get set }
}

/// The architecture of a pretrained encoder checkpoint, read from metadata `arch` (and `config`).
enum PretrainedArch {
    static func float(_ t: Tensor?, _ name: String, _ path: String) throws -> [Float] {
        guard let t else { throw FeatureError("\(path): checkpoint has no `\(name)` tensor") }
        let v: [Float]
        do { v = try t.floats() } catch { throw FeatureError("\(path): tensor `\(name)` is not numeric: \(error)") }
        if v.contains(where: { !$0.isFinite }) { throw FeatureError("\(path): tensor `\(name)` holds NaN or Inf") }
        return v
    }

    /// The image shape a resizing encoder is built for: the stream's [C, H, W] (C 1 or 3), or
    /// `native` when the caller does not know it yet.
    static func imageShape(_ inputShape: [Int]?, native: [Int], path: String) throws -> [Int] {
        guard let s = inputShape, !s.isEmpty else { return native }
        guard s.count == 3, s[0] == 1 || s[0] == 3, s[1] > 0, s[2] > 0, s[1] * s[2] <= 1 << 24 else {
            throw FeatureError("encoder \(path) takes grey or RGB images [1 or 3, H, W], not \(s)")
        }
        return s
    }
}
