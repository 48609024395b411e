/// A failure of flow-matching training or generation (bad data, a model that does not fit it). Renders as one line, which tools print as `TOOL: error: <description>`.
public struct FlowError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}
