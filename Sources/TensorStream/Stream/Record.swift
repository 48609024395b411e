/// One record of a stream: a batch of named tensors plus string metadata. Byte for byte it is a
/// safetensors file. Tensors keep their insertion order in memory; the encoder orders them
/// canonically (see `RecordCodec`) so the same record always has the same bytes.
public struct Record: Sendable, Equatable {
    public private(set) var names: [String] = []
    private var table: [String: Tensor] = [:]
    public var metadata: [String: String] = [:]

    public init() {}

    public init(_ tensors: [(String, Tensor)], metadata: [String: String] = [:]) {
        for (name, tensor) in tensors { self[name] = tensor }
        self.metadata = metadata
    }

    public subscript(name: String) -> Tensor? {
        get { table[name] }
        set {
            if let newValue {
                if table.updateValue(newValue, forKey: name) == nil { names.append(name) }
            } else if table.removeValue(forKey: name) != nil {
                names.removeAll { $0 == name }
            }
        }
    }

    public var tensors: [(name: String, tensor: Tensor)] { names.map { ($0, table[$0]!) } }

    /// A tensor the caller cannot do without; the error names the tool that needs it.
    public func require(_ name: String, by tool: String) throws -> Tensor {
        guard let t = table[name] else { throw StreamError.missingTensor(name, tool: tool) }
        return t
    }

    /// Metadata key listing (comma-separated) the tensors that belong to the whole record rather
    /// than to each sample, such as `traj.t`; they are never split or counted as the batch.
    public static let perRecordKey = "per_record"

    public var perRecordNames: Set<String> {
        Set((metadata[Self.perRecordKey] ?? "").split(separator: ",").map { String($0) })
    }

    /// The batch size B: the leading dimension of `x` (or `id`, `y`, `feat`, `reward`), else of
    /// the first per-sample tensor. Nil for a record with no per-sample tensor.
    public var batchSize: Int? {
        let shared = perRecordNames
        for name in ["x", "id", "y", "feat", "reward"] where !shared.contains(name) {
            if let t = table[name], !t.shape.isEmpty { return t.shape[0] }
        }
        for name in names where !shared.contains(name) {
            if let t = table[name], !t.shape.isEmpty { return t.shape[0] }
        }
        return nil
    }

    /// Whether a tensor is split with the batch: rank >= 1, leading dimension B, not per-record.
    public func isPerSample(_ name: String) -> Bool {
        guard let b = batchSize, let t = table[name], !t.shape.isEmpty else { return false }
        return t.shape[0] == b && !perRecordNames.contains(name)
    }

    /// Samples [start, start+n): per-sample tensors are sliced, the rest are kept whole.
    public func samples(_ start: Int, _ n: Int) -> Record {
        var out = Record()
        out.metadata = metadata
        for name in names {
            let t = table[name]!
            out[name] = isPerSample(name) ? t.rows(start, n) : t
        }
        return out
    }

    /// Total payload bytes.
    public var payloadBytes: Int { table.values.reduce(0) { $0 + $1.bytes.count } }
}
