/// Encodes and decodes one record: 8-byte little-endian header length N, N bytes of JSON
/// (padded with spaces to a multiple of 8), then the data buffer. Decoding treats the bytes as
/// hostile: every length, offset and size is checked before anything is allocated or copied.
public enum RecordCodec {
    public struct Limits: Sendable {
        /// The safetensors reference refuses headers over 100 MB; so do we.
        public var maxHeaderBytes: Int = 100_000_000
        /// Largest data buffer accepted in one record.
        public var maxRecordBytes: Int = 8 << 30
        public init() {}
        public init(maxRecordBytes: Int) { self.maxRecordBytes = maxRecordBytes }
    }

    /// Tensor order in the header and buffer: descending alignment, then name, as the
    /// safetensors reference writer does, so equal records encode to equal bytes.
    static func canonicalOrder(_ record: Record) -> [(name: String, tensor: Tensor)] {
        record.tensors.sorted { a, b in
            a.tensor.dtype.size != b.tensor.dtype.size ? a.tensor.dtype.size > b.tensor.dtype.size : a.name < b.name
        }
    }

    /// The header bytes (without the 8-byte length) and the tensors in buffer order.
    public static func header(for record: Record) -> (json: [UInt8], order: [(name: String, tensor: Tensor)]) {
        let order = canonicalOrder(record)
        var parts: [String] = []
        if !record.metadata.isEmpty {
            let entries = record.metadata.keys.sorted().map { "\(JSON.quote($0)):\(JSON.quote(record.metadata[$0]!))" }
            parts.append("\"__metadata__\":{\(entries.joined(separator: ","))}")
        }
        var offset = 0
        for (name, tensor) in order {
            let end = offset + tensor.bytes.count
            let shape = tensor.shape.map(String.init).joined(separator: ",")
            parts.append("\(JSON.quote(name)):{\"dtype\":\"\(tensor.dtype.rawValue)\",\"shape\":[\(shape)],\"data_offsets\":[\(offset),\(end)]}")
            offset = end
        }
        var json = Array("{\(parts.joined(separator: ","))}".utf8)
        while json.count % 8 != 0 { json.append(0x20) }
        return (json, order)
    }

    /// The whole record as one byte array (tests and small records; streams write in pieces).
    public static func encode(_ record: Record) -> [UInt8] {
        let (json, order) = header(for: record)
        var out = [UInt8]()
        out.reserveCapacity(8 + json.count + record.payloadBytes)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: json)
        for (_, tensor) in order { out.append(contentsOf: tensor.bytes) }
        return out
    }

    /// What a header promises: each tensor's dtype, shape and byte range, and the metadata.
    public struct Layout {
        public var entries: [(name: String, dtype: DType, shape: [Int], begin: Int, end: Int)]
        public var metadata: [String: String]
        public var dataBytes: Int
    }

    /// Parses and validates a header. The ranges must tile [0, dataBytes) exactly.
    public static func parseHeader(_ bytes: UnsafeBufferPointer<UInt8>, limits: Limits = Limits()) throws -> Layout {
        guard String(validating: bytes, as: UTF8.self) != nil else { throw StreamError.badHeader("header is not valid UTF-8") }
        guard bytes.first == UInt8(ascii: "{") else { throw StreamError.badHeader("header does not start with '{'") }
        let value: JSONValue
        do { value = try JSON.parse(bytes) } catch { throw StreamError.badHeader("invalid JSON: \(error)") }
        guard case .object(let members) = value else { throw StreamError.badHeader("header is not a JSON object") }
        var layout = Layout(entries: [], metadata: [:], dataBytes: 0)
        for (name, entry) in members {
            if name == "__metadata__" {
                guard case .object(let pairs) = entry else { throw StreamError.badHeader("__metadata__ is not an object") }
                for (k, v) in pairs {
                    guard case .string(let s) = v else { throw StreamError.badHeader("__metadata__ value of \"\(k)\" is not a string") }
                    layout.metadata[k] = s
                }
                continue
            }
            guard case .object(let fields) = entry else { throw StreamError.badHeader("entry \"\(name)\" is not an object") }
            var dtype: DType?
            var shape: [Int]?
            var offsets: (UInt64, UInt64)?
            for (key, field) in fields {
                switch key {
                case "dtype":
                    guard case .string(let s) = field else { throw StreamError.badHeader("dtype of \"\(name)\" is not a string") }
                    guard let d = DType(rawValue: s) else { throw StreamError.badHeader("unknown dtype \"\(s)\" for \"\(name)\"") }
                    dtype = d
                case "shape":
                    guard case .array(let dims) = field else { throw StreamError.badHeader("shape of \"\(name)\" is not an array") }
                    shape = try dims.map { d in
                        guard case .integer(let v) = d else { throw StreamError.badHeader("shape of \"\(name)\" has a dimension that is not a non-negative integer") }
                        guard v <= UInt64(Int.max) else { throw StreamError.badHeader("shape of \"\(name)\" has a dimension that overflows") }
                        return Int(v)
                    }
                case "data_offsets":
                    guard case .array(let pair) = field, pair.count == 2,
                          case .integer(let b) = pair[0], case .integer(let e) = pair[1]
                    else { throw StreamError.badHeader("data_offsets of \"\(name)\" is not a pair of non-negative integers") }
                    offsets = (b, e)
                default:
                    throw StreamError.badHeader("unexpected field \"\(key)\" in \"\(name)\"")
                }
            }
            guard let dtype, let shape, let offsets else { throw StreamError.badHeader("entry \"\(name)\" needs dtype, shape and data_offsets") }
            var elements = 1
            for d in shape {
                let (p, o) = elements.multipliedReportingOverflow(by: d)
                guard !o else { throw StreamError.badHeader("shape \(shape) of \"\(name)\" overflows") }
                elements = p
            }
            let (size, o) = elements.multipliedReportingOverflow(by: dtype.size)
            guard !o, offsets.1 <= UInt64(Int.max) else { throw StreamError.badHeader("tensor \"\(name)\" is too large") }
            guard offsets.0 <= offsets.1 else { throw StreamError.badHeader("data_offsets of \"\(name)\" end before they begin") }
            let begin = Int(offsets.0), end = Int(offsets.1)
            guard end - begin == size else {
                throw StreamError.badHeader("\"\(name)\" holds \(end - begin) bytes but shape \(shape) of \(dtype.rawValue) needs \(size)")
            }
            layout.entries.append((name, dtype, shape, begin, end))
        }
        // The ranges must cover the buffer with no hole and no overlap.
        let sorted = layout.entries.sorted { ($0.begin, $0.end) < ($1.begin, $1.end) }
        var cursor = 0
        for e in sorted {
            if e.begin < cursor { throw StreamError.badHeader("tensor \"\(e.name)\" overlaps another tensor's bytes") }
            if e.begin > cursor { throw StreamError.badHeader("the tensors leave a hole in the data buffer before \"\(e.name)\"") }
            cursor = e.end
        }
        layout.dataBytes = cursor
        guard cursor <= limits.maxRecordBytes else { throw StreamError.recordTooLarge(cursor, limit: limits.maxRecordBytes) }
        return layout
    }

    /// Decodes one record from a complete byte buffer (which must hold exactly one record).
    public static func decode(_ bytes: [UInt8], limits: Limits = Limits()) throws -> Record {
        var offset = 0
        let record = try bytes.withUnsafeBytes { raw -> Record? in
            try read(limits: limits) { dst, n in
                let k = min(n, raw.count - offset)
                if k > 0 { dst.copyMemory(from: raw.baseAddress! + offset, byteCount: k) }
                offset += k
                return k
            }
        }
        guard let record else { throw StreamError.invalid("no record in the buffer") }
        guard offset == bytes.count else { throw StreamError.badHeader("\(bytes.count - offset) bytes follow the record's data") }
        return record
    }

    /// Reads one record through `fill`, which copies up to n bytes to its pointer and returns how
    /// many it copied (fewer only at the end of input). Nil at a clean end before any byte.
    public static func read(limits: Limits, fill: (UnsafeMutableRawPointer, Int) throws -> Int) throws -> Record? {
        var lengthBytes: UInt64 = 0
        let got = try withUnsafeMutableBytes(of: &lengthBytes) { try fill($0.baseAddress!, 8) }
        if got == 0 { return nil }
        guard got == 8 else { throw StreamError.recordCutShort(needed: 8, got: got) }
        let length = UInt64(littleEndian: lengthBytes)
        guard length <= UInt64(limits.maxHeaderBytes) else {
            throw StreamError.headerTooLarge(length > UInt64(Int.max) ? Int.max : Int(length), limit: limits.maxHeaderBytes)
        }
        let headerLength = Int(length)
        guard headerLength >= 2 else { throw StreamError.badHeader("header length \(headerLength) is too short for a JSON object") }
        let header = try [UInt8](unsafeUninitializedCapacity: headerLength) { buffer, initialized in
            let n = try fill(buffer.baseAddress!, headerLength)
            initialized = n
            guard n == headerLength else { throw StreamError.recordCutShort(needed: 8 + headerLength, got: 8 + n) }
        }
        let layout = try header.withUnsafeBufferPointer { try parseHeader($0, limits: limits) }
        var record = Record()
        record.metadata = layout.metadata
        var received = 8 + headerLength
        let needed = received + layout.dataBytes
        // Tensors tile the buffer, so reading them in offset order consumes it exactly.
        for entry in layout.entries.sorted(by: { $0.begin < $1.begin }) {
            let bytes = try readBytes(entry.end - entry.begin, fill: fill, received: &received, needed: needed)
            record[entry.name] = Tensor(dtype: entry.dtype, shape: entry.shape, bytes: bytes)
        }
        // Restore header order so a decoded record lists tensors as its writer named them.
        var ordered = Record()
        ordered.metadata = record.metadata
        for entry in layout.entries { ordered[entry.name] = record[entry.name] }
        return ordered
    }

    /// Small tensors are allocated whole; large ones grow as data arrives, so a header that lies
    /// about a huge tensor costs at most what the stream really delivers.
    private static let chunk = 64 << 20

    private static func readBytes(_ count: Int, fill: (UnsafeMutableRawPointer, Int) throws -> Int,
                                  received: inout Int, needed: Int) throws -> [UInt8] {
        if count <= chunk {
            var got = 0
            let bytes = try [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
                if count > 0 { got = try fill(buffer.baseAddress!, count) }
                initialized = got
            }
            received += got
            guard got == count else { throw StreamError.recordCutShort(needed: needed, got: received) }
            return bytes
        }
        var bytes = [UInt8]()
        while bytes.count < count {
            let step = min(count - bytes.count, max(chunk, bytes.count))
            let old = bytes.count
            bytes.reserveCapacity(old + step)
            bytes.append(contentsOf: repeatElement(0, count: step))
            let got = try bytes.withUnsafeMutableBytes { try fill($0.baseAddress! + old, step) }
            received += got
            guard got == step else { throw StreamError.recordCutShort(needed: needed, got: received) }
        }
        return bytes
    }
}
