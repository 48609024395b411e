import Foundation
import TensorStream

/// The JSON-lines metrics file of `train`: one object per logged step,
/// `{"step":K,"loss":L,"lr":R,"grad_norm":G,"images_per_s":S}` (loss and grad_norm before
/// clipping, in Swift's shortest round-trip form, so two runs' lines compare exactly).
public enum MetricsLog {
    /// Opens the file for appending. A fresh run (step 0) starts it empty; a resumed run keeps
    /// the lines up to and including `step` and drops later ones (written by the interrupted run
    /// after its last checkpoint), so the file always holds one line per logged step.
    public static func open(_ path: String, keepingThrough step: Int) throws -> TextFile {
        var kept = ""
        if step > 0, let text = try? String(contentsOfFile: path, encoding: .utf8) {
            for line in text.split(separator: "\n") {
                if let k = stepOf(line), k <= step { kept += line + "\n" }
            }
        }
        // Checked writes: a metrics file that cannot be written (full disk) is an error.
        let file = try TextFile(path: path, truncate: true)
        try file.write(kept)
        return file
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
