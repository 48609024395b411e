import Foundation
import TensorStream

/// A one-line progress bar on stderr, redrawn at most ten times a second.
public final class Progress: ProgressSink {
    private let label: String
    private let total: Int?
    private let enabled: Bool
    private let start = Date()
    private var lastDraw = Date.distantPast
    public private(set) var done = 0
    /// Extra text shown after the rate (e.g. the current loss).
    public var note = ""

    public init(label: String, total: Int? = nil, enabled: Bool) {
        self.label = label
        self.total = total
        self.enabled = enabled
    }

    public func advance(_ n: Int = 1, unit: String = "") {
        done += n
        guard enabled else { return }
        let now = Date()
        if now.timeIntervalSince(lastDraw) >= 0.1 || (total != nil && done >= total!) {
            lastDraw = now
            draw(unit: unit)
        }
    }

    private func draw(unit: String) {
        let elapsed = max(Date().timeIntervalSince(start), 1e-9)
        let rate = Double(done) / elapsed
        var line = "\r\(label) "
        if let total, total > 0 {
            let width = 30
            let filled = min(width, done * width / total)
            line += "[" + String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled) + "] \(done)/\(total)"
        } else {
            line += "\(done)"
        }
        line += String(format: " %.1f%@/s ", rate, unit)
        if !note.isEmpty { line += note + " " }
        FileHandle.standardError.write(line.data(using: .utf8)!)
    }

    public func finish() {
        guard enabled else { return }
        draw(unit: "")
        FileHandle.standardError.write("\n".data(using: .utf8)!)
    }
}
