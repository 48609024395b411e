import Foundation
import TensorStream

/// Everything `fid` gathers from one side: statistics always; the features themselves when KID
/// or PRDC need them; image statistics when the records carry images `x`.
public struct FeatureSet {
    public var name: String
    public var statistics: FeatureStatistics
    public var features: FeatureMatrix?
    public var images: ImageStatistics?

    public init(name: String, statistics: FeatureStatistics, features: FeatureMatrix? = nil, images: ImageStatistics? = nil) {
        self.name = name
        self.statistics = statistics
        self.features = features
        self.images = images
    }

    /// Reads a feature stream record by record (tensor `feat`, [B, D], any float dtype; F32 is
    /// read without conversion). Memory stays bounded unless `keepFeatures`.
    /// Errors: no records or no samples, a record without `feat`, a dimension that changes,
    /// NaN/Inf, one sample only, records that disagree on the `encoder` metadata.
    public static func read(_ reader: TensorStreamReader, name: String, keepFeatures: Bool = false,
                            imageStatistics: Bool = true, progress: (any ProgressSink)? = nil) throws -> FeatureSet {
        var acc: FeatureAccumulator?
        var kept: [Double] = []
        var images = ImageStatistics()
        var encoder: String??  // nil: no record yet; .some(nil): records name no encoder
        var dim = 0
        do {
            while let record = try reader.read() {
                guard let feat = record["feat"] else {
                    throw MetricsError("\(name): record \(reader.recordsRead - 1) has no `feat` tensor (features [B, D]; run `embed` first)")
                }
                guard feat.shape.count == 2 else {
                    throw MetricsError("\(name): `feat` must be [B, D], got shape \(feat.shape)")
                }
                let enc = record.metadata[FeatureStatistics.Key.encoder]
                if let previous = encoder, previous != enc {
                    throw MetricsError("\(name): records come from different encoders (\(previous ?? "none") then \(enc ?? "none"))")
                }
                encoder = .some(enc)
                let (b, d) = (feat.shape[0], feat.shape[1])
                if acc == nil {
                    guard d > 0 else { throw MetricsError("\(name): `feat` has zero feature dimension") }
                    dim = d
                    acc = FeatureAccumulator(dim: d)
                } else if d != dim {
                    throw MetricsError("\(name): feature dimension changes within the stream (\(dim) then \(d))")
                }
                if b == 0 { continue }
                let floats: [Float]? = feat.dtype == .f32 ? nil : try feat.floats()
                do {
                    if let floats {
                        try floats.withUnsafeBufferPointer { try acc!.add($0, rows: b) }
                        if keepFeatures { kept += floats.map(Double.init) }
                    } else {
                        try feat.withFloats { try acc!.add($0, rows: b) }
                        if keepFeatures { try feat.withFloats { kept += $0.lazy.map(Double.init) } }
                    }
                } catch let error as MetricsError {
                    throw MetricsError("\(name): \(error.template)")
                }
                if imageStatistics, let x = record["x"], ImageStatistics.applies(to: x.shape), x.shape[0] == b {
                    if x.dtype == .f32 {
                        try x.withFloats { try images.add($0, shape: x.shape) }
                    } else if x.dtype.isFloatingPoint {
                        let v = try x.floats()
                        try v.withUnsafeBufferPointer { try images.add($0, shape: x.shape) }
                    }
                }
                progress?.advance(b, unit: "samples")
            }
        }
        progress?.finish()
        guard let acc, acc.count > 0 else {
            throw MetricsError("\(name): no features (the stream is empty)")
        }
        var stats: FeatureStatistics
        do { stats = try acc.finish() } catch let error as MetricsError { throw MetricsError("\(name): \(error.template)") }
        stats.encoder = encoder ?? nil
        let matrix = keepFeatures ? FeatureMatrix(count: acc.count, dim: dim, values: kept) : nil
        return FeatureSet(name: name, statistics: stats, features: matrix,
                          images: images.images > 0 ? images : nil)
    }

    /// What kind of input a path is: a tensor stream, a statistics file, or a pytorch-fid /
    /// clean-fid `.npz`.
    public enum Kind { case stream, statistics, npz }

    public static func kind(of path: String) throws -> Kind {
        if path == "-" { return .stream }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw StreamError.io("cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: 16)
        let n = head.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress!, 16) }
        if n >= 4 && head[0] == 0x28 && head[1] == 0xB5 && head[2] == 0x2F && head[3] == 0xFD { return .stream }
        if n >= 4 && head[0] == 0x50 && head[1] == 0x4B && head[2] == 0x03 && head[3] == 0x04 { return .npz }
        if n >= 9 && head[8] == UInt8(ascii: "{") { return .statistics }
        if n <= 0 { return .stream }  // an empty file is an empty stream (reported as such)
        // Skippable zstd frames (0x184D2A5?) are streams too; anything else is left to the stream reader to reject.
        return .stream
    }
}
