/// The toolkit's version, written into every checkpoint and stream record a tool makes
/// (metadata key `version`) next to the tool's name (`tool`).
public enum Toolkit {
    public static let version = "0.1.0"
}
