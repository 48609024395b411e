import Foundation

/// The JSON-lines metrics file of `train`: one object per logged step,
/// `{"step":K,"loss":L,"lr":R,"grad_norm":G,"images_per_s":S}` (loss and grad_norm before
/// clipping, in Swift's shortest round-trip form, so two runs' lines compare exactly).
public enum MetricsLog {
    /// Opens the file for appending. A fresh run (step 0) starts it empty; a resumed run keeps
    /// the lines up to and including `step` and drops later ones (written by the interrupted run
    /// after its last checkpoint), so the file always holds one line per logged step.
    public static func open(_ path: String, keepingThrough step: Int) throws -> FileHandle {
        var kept = ""
        if step > 0, let text = try? String(contentsOfFile: path, encoding: .utf8) {
            for line in text.split(separator: "\n") {
                if let k = stepOf(line), k <= step { kept += line + "\n" }
            }
        }
        guard FileManager.default.createFile(atPath: path, contents: kept.data(using: .utf8)),
              let handle = FileHandle(forWritingAtPath: path) else {
            throw FlowError("cannot write the metrics file \(path)")
        }
        handle.seekToEndOfFile()
        return handle
    }

    static func stepOf(_ line: Substring) -> Int? {
        guard let r = line.range(of: "\"step\":") else { return nil }
        return Int(line[r.upperBound...].prefix { $0.isNumber })
    }

    public static func line(_ s: TrainStepStats, imagesPerSecond: Double) -> String {
        "{\"step\":\(s.step),\"loss\":\(s.loss),\"lr\":\(s.lr),\"grad_norm\":\(s.gradNorm),\"images_per_s\":\(String(format: "%.1f", imagesPerSecond))}\n"
    }

    /// Peak resident memory of this process (getrusage), MiB.
    public static func peakResidentMiB() -> Double {
        var usage = rusage()
        getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
        return Double(usage.ru_maxrss) / 1024
    }
}
