import Foundation

/// Running summary of one named tensor over a whole stream: element count, mean, standard
/// deviation (population, ddof 0), min and max over the finite elements, and how many were NaN or
/// Inf. Records are merged with Chan et al.'s pairwise update, so a stream of any length is
/// summarised in constant memory and without the cancellation of a plain sum of squares.
public struct TensorSummary: Equatable {
    public let name: String
    public let dtype: DType
    public private(set) var count = 0
    public private(set) var mean = 0.0
    private var m2 = 0.0
    public private(set) var min = Double.infinity
    public private(set) var max = -Double.infinity
    public private(set) var nonFinite = 0

    public init(name: String, dtype: DType) { self.name = name; self.dtype = dtype }

    public var std: Double { count > 0 ? (m2 / Double(count)).squareRoot() : .nan }

    /// Adds every element of `tensor` (any numeric dtype).
    public mutating func add(_ tensor: Tensor) throws {
        let values = try tensor.doubles()
        var n = 0, s = 0.0
        for v in values where v.isFinite {
            n += 1; s += v
            if v < min { min = v }
            if v > max { max = v }
        }
        nonFinite += values.count - n
        guard n > 0 else { return }
        let recordMean = s / Double(n)
        var recordM2 = 0.0
        for v in values where v.isFinite { let d = v - recordMean; recordM2 += d * d }
        let total = count + n
        let delta = recordMean - mean
        mean += delta * Double(n) / Double(total)
        m2 += recordM2 + delta * delta * Double(count) * Double(n) / Double(total)
        count = total
    }

    public var json: String {
        func num(_ v: Double) -> String { v.isFinite ? "\(v)" : "null" }
        return "{\"tensor\":\(JSON.quote(name)),\"dtype\":\"\(dtype.rawValue)\",\"count\":\(count),\"mean\":\(num(mean)),"
            + "\"std\":\(num(std)),\"min\":\(num(min)),\"max\":\(num(max)),\"nonfinite\":\(nonFinite)}"
    }
}

/// Summaries of the named tensors of a stream, in the order named (all numeric tensors, in
/// first-seen order, when `names` is empty). A named tensor that never appears is an error, so a typo does not print nothing.
public enum StreamSummary {
    /// The dtypes `Tensor.doubles()` converts.
    public static let numeric: Set<DType> = [.f64, .f32, .f16, .bf16, .i64, .i32, .u8]

    public static func summarise(_ reader: TensorStreamReader, names: [String] = []) throws -> [TensorSummary] {
        var order: [String] = [], summaries: [String: TensorSummary] = [:]
        while let record = try reader.read() {
            for (name, t) in record.tensors where names.isEmpty ? StreamSummary.numeric.contains(t.dtype) : names.contains(name) {
                guard StreamSummary.numeric.contains(t.dtype) else { throw StreamError.invalid("`\(name)` is \(t.dtype.rawValue), not a numeric tensor") }
                if summaries[name] == nil { order.append(name); summaries[name] = TensorSummary(name: name, dtype: t.dtype) }
                try summaries[name]!.add(t)
            }
        }
        if let missing = names.first(where: { summaries[$0] == nil }) {
            throw StreamError.invalid("no tensor `\(missing)` in the stream")
        }
        return (names.isEmpty ? order : names).map { summaries[$0]! }
    }
}
