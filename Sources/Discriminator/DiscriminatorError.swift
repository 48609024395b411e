/// A failure to load, train or score with a discriminator. Renders as one line, which tools print as `TOOL: error: <description>`.
public struct DiscriminatorError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}
