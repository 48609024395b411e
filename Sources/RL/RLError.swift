import TensorStream
/// A failure of an RL update: a buffer that lacks what the objective needs, a model that does not fit it. Renders as one line, which tools print as `TOOL: error: <description>`.
public struct RLError: Error, NamesSettings {
    public let template: String
    public init(_ message: String) { template = message }
}
