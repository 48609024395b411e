/// Library errors name a setting by its key in braces, `{batch}`, never by a command-line flag
/// (docs/architecture.md): their `description` reads `batch`, and the CLI layer prints the same
/// message with `--batch` (ToolMain), so only the tools know their flags.
public protocol NamesSettings: CustomStringConvertible {
    /// The message, with `{key}` where a setting is named (key: lower-case letters, digits, `_`).
    var template: String { get }
}

extension NamesSettings {
    public var description: String { SettingNames.plain(template) }
}

public enum SettingNames {
    /// Replaces every `{key}` by `name(key)`; braces around anything else are left alone.
    public static func render(_ template: String, _ name: (String) -> String) -> String {
        guard template.contains("{") else { return template }
        var out = "", rest = Substring(template)
        while let open = rest.firstIndex(of: "{") {
            out += rest[..<open]
            let after = rest[rest.index(after: open)...]
            if let close = after.firstIndex(of: "}"), isKey(after[..<close]) {
                out += name(String(after[..<close]))
                rest = after[after.index(after: close)...]
            } else {
                out += "{"
                rest = after
            }
        }
        return out + rest
    }

    /// The library's reading: `{batch}` -> `batch`.
    public static func plain(_ template: String) -> String { render(template) { $0 } }

    /// The tools' reading: `{t_dist}` -> `--t-dist`.
    public static func flags(_ template: String) -> String {
        render(template) { "--" + $0.replacingOccurrences(of: "_", with: "-") }
    }

    static func isKey(_ s: Substring) -> Bool {
        guard let first = s.first, first.isASCII, first.isLowercase else { return false }
        return s.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "_") }
    }
}
