import Dispatch
import Foundation
import Numerics
import TensorStream

/// Mean and covariance of a feature set, in float64: the "statistics" that the Frechet distance
/// needs and that `fid stats` caches. The covariance is the unbiased one (divisor n - 1), as
/// `numpy.cov` and pytorch-fid compute it.
public struct FeatureStatistics: Sendable, Equatable {
    /// Number of samples n.
    public var count: Int
    /// Feature dimension d.
    public var dim: Int
    /// Mean, [d].
    public var mean: [Double]
    /// Covariance, [d, d] row-major, symmetric (both triangles filled).
    public var covariance: [Double]
    /// Digest of the encoder that made the features (stream metadata key `encoder`), if known.
    public var encoder: String?

    public init(count: Int, dim: Int, mean: [Double], covariance: [Double], encoder: String? = nil) {
        precondition(mean.count == dim && covariance.count == dim * dim)
        self.count = count
        self.dim = dim
        self.mean = mean
        self.covariance = covariance
        self.encoder = encoder
    }

    /// Statistics of an in-memory [n, d] float32 matrix (rows are samples), through the same
    /// streaming accumulator the tools use.
    public static func of(_ features: [Float], count n: Int, dim d: Int, encoder: String? = nil) throws -> FeatureStatistics {
        precondition(features.count == n * d)
        let acc = FeatureAccumulator(dim: d)
        try features.withUnsafeBufferPointer { try acc.add($0, rows: n) }
        var stats = try acc.finish()
        stats.encoder = encoder
        return stats
    }

    /// tr C.
    public var trace: Double {
        var t = 0.0
        for i in 0..<dim { t += covariance[i * dim + i] }
        return t
    }

    // MARK: - Files

    /// Tensor and metadata names of a statistics file (one plain safetensors file, like a checkpoint).
    public enum Key {
        public static let mean = "mu"
        public static let covariance = "sigma"
        public static let count = "n"
        public static let encoder = "encoder"
    }

    /// The statistics as a safetensors record: `mu` F64 [d], `sigma` F64 [d, d], `n` I64 [1];
    /// metadata `encoder` (when known), `n`, `dim` and whatever `extraMetadata` adds.
    public func record(extraMetadata: [String: String] = [:]) -> Record {
        var meta = extraMetadata
        if let encoder { meta[Key.encoder] = encoder }
        meta["n"] = String(count)
        meta["dim"] = String(dim)
        meta["kind"] = "feature-statistics"
        return Record([
            (Key.mean, Tensor(mean, shape: [dim])),
            (Key.covariance, Tensor(covariance, shape: [dim, dim])),
            (Key.count, Tensor([Int64(count)], shape: [1])),
        ], metadata: meta)
    }

    /// Writes the statistics file atomically.
    public func write(to path: String, extraMetadata: [String: String] = [:]) throws {
        try Checkpoint.write(record(extraMetadata: extraMetadata), to: path)
    }

    /// Reads a statistics record (as written by `record()`); `name` labels error messages.
    public init(record: Record, name: String) throws {
        guard let mu = record[Key.mean] else { throw MetricsError("\(name) has no `mu` tensor: not a statistics file") }
        guard let sigma = record[Key.covariance] else { throw MetricsError("\(name) has no `sigma` tensor: not a statistics file") }
        guard mu.shape.count == 1, mu.shape[0] > 0 else { throw MetricsError("\(name): `mu` must be a vector, got shape \(mu.shape)") }
        let d = mu.shape[0]
        guard sigma.shape == [d, d] else { throw MetricsError("\(name): `sigma` has shape \(sigma.shape) but `mu` has \(d) entries") }
        var n = 0
        if let t = record[Key.count], t.count == 1, let v = try t.int64s().first { n = Int(v) }
        else if let s = record.metadata["n"], let v = Int(s) { n = v }
        let mean = try mu.doubles()
        let cov = try sigma.doubles()
        guard mean.allSatisfy({ $0.isFinite }), cov.allSatisfy({ $0.isFinite }) else {
            throw MetricsError("\(name): the statistics contain NaN or Inf")
        }
        self.init(count: n, dim: d, mean: mean, covariance: cov, encoder: record.metadata[Key.encoder])
    }

    public static func read(_ path: String) throws -> FeatureStatistics {
        try FeatureStatistics(record: Checkpoint.read(path), name: path)
    }
}

/// A metrics error: one line, printed by the tools as `TOOL: error: message`.
public struct MetricsError: Error, NamesSettings, Equatable {
    public let template: String
    public init(_ message: String) { template = message }
}

/// Streaming float64 mean and covariance with bounded memory.
///
/// Rows are copied (as float64, minus a shift vector) into a chunk of `chunkRows` rows; each full
/// chunk is folded into the scatter matrix S = sum (x - s)(x - s)^T with one `dsyrk`, and into
/// the sum of (x - s). The shift s is the mean of the first chunk, so (x - s) is centred to within
/// sampling noise and the final correction cov = (S - n dm dm^T) / (n - 1), dm = mean - s, does not
/// cancel catastrophically (the textbook sum-of-squares formula does, in float32 and at large
/// offsets in float64 too). Chunk boundaries depend only on the global row index, so the result
/// is bit-for-bit the same however the rows arrive (one row at a time or all at once).
///
/// Two chunk buffers alternate: while OpenBLAS folds one into S on a background serial queue,
/// the caller keeps decoding and converting records into the other, so reading and
/// decompression overlap the O(n d^2) work. The dsyrk calls still run in chunk order.
public final class FeatureAccumulator {
    public let dim: Int
    public let chunkRows: Int
    public private(set) var count = 0
    private let buffers: [UnsafeMutablePointer<Double>]
    private let busy: [DispatchGroup]
    private var current = 0
    private var filled = 0
    private var shift: [Double]?
    private var sum: [Double]
    private let scatter: UnsafeMutablePointer<Double>
    private let queue = DispatchQueue(label: "FeatureAccumulator.dsyrk")

    /// `chunkRows` defaults to about 32 MiB of float64 rows (at least 64 rows, at most 4096):
    /// large enough for dsyrk to run near GEMM speed.
    public init(dim: Int, chunkRows: Int? = nil) {
        precondition(dim > 0)
        self.dim = dim
        let rows = max(1, chunkRows ?? min(4096, max(64, (32 << 20) / (8 * dim))))
        self.chunkRows = rows
        buffers = (0..<2).map { _ in UnsafeMutablePointer<Double>.allocate(capacity: rows * dim) }
        busy = [DispatchGroup(), DispatchGroup()]
        sum = [Double](repeating: 0, count: dim)
        scatter = UnsafeMutablePointer<Double>.allocate(capacity: dim * dim)
        scatter.initialize(repeating: 0, count: dim * dim)
    }

    deinit {
        queue.sync {}
        buffers.forEach { $0.deallocate() }
        scatter.deallocate()
    }

    /// Adds `rows` samples stored row-major in `values` ([rows, dim]). NaN or Inf is an error and
    /// leaves the accumulator unusable (the caller reports and stops).
    public func add(_ values: UnsafeBufferPointer<Float>, rows: Int) throws {
        precondition(values.count >= rows * dim)
        let d = dim
        var r = 0
        while r < rows {
            let take = min(rows - r, chunkRows - filled)
            let dst = buffers[current] + filled * d
            let src = values.baseAddress! + r * d
            let total = take * d
            var acc: Float = 0
            if let shift {
                // Once the shift is known, convert, centre and sum in one pass.
                shift.withUnsafeBufferPointer { sp in
                    sum.withUnsafeMutableBufferPointer { sums in
                        for i in 0..<take {
                            let row = src + i * d, out = dst + i * d
                            for j in 0..<d {
                                let v = row[j]
                                acc += v - v  // NaN for any NaN or Inf in the chunk
                                let c = Double(v) - sp[j]
                                out[j] = c
                                sums[j] += c
                            }
                        }
                    }
                }
            } else {
                for i in 0..<total {
                    let v = src[i]
                    acc += v - v
                    dst[i] = Double(v)
                }
            }
            if acc.isNaN || acc != 0 {
                throw MetricsError("NaN or Inf in features (sample \(count + firstNonFinite(values, from: r, rows: take)))")
            }
            filled += take
            count += take
            r += take
            if filled == chunkRows { flush() }
        }
    }

    private func firstNonFinite(_ values: UnsafeBufferPointer<Float>, from r: Int, rows: Int) -> Int {
        for i in 0..<rows {
            for j in 0..<dim where !values[(r + i) * dim + j].isFinite { return i }
        }
        return 0
    }

    /// Centres the pending rows, adds them to the sum, and hands the chunk to the dsyrk queue.
    private func flush() {
        guard filled > 0 else { return }
        let d = dim, rows = filled
        let c = buffers[current]
        if shift == nil {
            // First chunk: its mean becomes the shift; centre and sum it here (later chunks are
            // centred and summed as they are copied in).
            var s = [Double](repeating: 0, count: d)
            for i in 0..<rows { for j in 0..<d { s[j] += c[i * d + j] } }
            for j in 0..<d { s[j] /= Double(rows) }
            shift = s
            s.withUnsafeBufferPointer { sp in
                sum.withUnsafeMutableBufferPointer { acc in
                    for i in 0..<rows {
                        let row = c + i * d
                        for j in 0..<d {
                            let v = row[j] - sp[j]
                            row[j] = v
                            acc[j] += v
                        }
                    }
                }
            }
        }
        let job = SyrkJob(chunk: c, scatter: scatter)
        queue.async(group: busy[current]) {
            BLAS.dsyrkUpperAtA(n: d, k: rows, a: job.chunk, beta: 1, c: job.scatter)
        }
        current = 1 - current
        filled = 0
        busy[current].wait()  // the other buffer's dsyrk must be done before it is refilled
    }

    /// The mean and unbiased covariance. Needs at least two samples.
    public func finish() throws -> FeatureStatistics {
        flush()
        queue.sync {}
        guard count > 0 else { throw MetricsError("no samples: the feature set is empty") }
        guard count > 1 else { throw MetricsError("only one sample: the covariance is undefined (n - 1 = 0)") }
        let d = dim, n = Double(count)
        let s = shift!
        var mean = [Double](repeating: 0, count: d)
        var dm = [Double](repeating: 0, count: d)
        for j in 0..<d {
            dm[j] = sum[j] / n
            mean[j] = s[j] + dm[j]
        }
        var cov = [Double](repeating: 0, count: d * d)
        for i in 0..<d {
            for j in i..<d {
                let v = (scatter[i * d + j] - n * dm[i] * dm[j]) / (n - 1)
                cov[i * d + j] = v
                cov[j * d + i] = v
            }
        }
        return FeatureStatistics(count: count, dim: d, mean: mean, covariance: cov)
    }
}

/// The buffers one background dsyrk reads and updates; the accumulator never touches them until
/// that job is done (it waits on the buffer's group), hence the unchecked Sendable.
private struct SyrkJob: @unchecked Sendable {
    let chunk: UnsafeMutablePointer<Double>
    let scatter: UnsafeMutablePointer<Double>
}
