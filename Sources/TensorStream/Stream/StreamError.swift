/// Everything that can be wrong with a tensor stream. Each case renders as one line that names
/// the problem, because tools print it as `TOOL: error: <description>` and exit 1.
public enum StreamError: Error, NamesSettings, Equatable {
    case notZstd
    case corruptZstd(String)
    case truncatedZstd
    case recordCutShort(needed: Int, got: Int)
    case headerTooLarge(Int, limit: Int)
    case recordTooLarge(Int, limit: Int)
    case badHeader(String)
    case wrongDType(expected: String, got: DType)
    case missingTensor(String, tool: String)
    case invalid(String)
    case io(String)

    public var template: String {
        switch self {
        case .notZstd: return "input is not a zstd-compressed tensor stream"
        case .corruptZstd(let why): return "corrupt zstd data: \(why)"
        case .truncatedZstd: return "truncated stream: the zstd data ends in the middle of a frame"
        case .recordCutShort(let needed, let got): return "record cut short: expected \(needed) bytes, stream ended after \(got)"
        case .headerTooLarge(let n, let limit): return "record header of \(n) bytes exceeds the limit of \(limit) bytes"
        case .recordTooLarge(let n, let limit): return "record of \(n) bytes exceeds the limit of \(limit) bytes (raise it with {max_record_mib})"
        case .badHeader(let why): return "bad record header: \(why)"
        case .wrongDType(let expected, let got): return "expected \(expected) but the tensor is \(got.rawValue)"
        case .missingTensor(let name, let tool): return "the stream has no `\(name)` tensor, which \(tool) needs"
        case .invalid(let why): return why
        case .io(let why): return why
        }
    }
}
