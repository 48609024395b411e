import TensorStream
/// A failure to load, train or score with a discriminator. Renders as one line, which tools print as `TOOL: error: <description>`.
public struct DiscriminatorError: Error, NamesSettings {
    public let template: String
    public init(_ message: String) { template = message }
}
