/// A failure to load, train or apply a feature encoder. Renders as one line, which tools print as `TOOL: error: <description>`.
public struct FeatureError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}
