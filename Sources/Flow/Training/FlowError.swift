import TensorStream
/// A failure of flow-matching training or generation (bad data, a model that does not fit it). Renders as one line, which tools print as `TOOL: error: <description>`.
public struct FlowError: Error, NamesSettings {
    public let template: String
    public init(_ message: String) { template = message }
}
