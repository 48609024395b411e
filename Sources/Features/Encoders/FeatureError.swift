import TensorStream
/// A failure to load, train or apply a feature encoder. Renders as one line, which tools print as `TOOL: error: <description>`.
public struct FeatureError: Error, NamesSettings {
    public let template: String
    public init(_ message: String) { template = message }
}
