import ArgumentParser
import Shared

extension Tensors {
    struct Head: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pass on the first N samples (after skipping K), splitting a record when needed.",
            discussion: """
            Per-sample tensors (leading dimension B) are cut; per-record ones (such as `traj.t`) are kept.
              tensors head -n 64 < train.tzst | tensors to-png --grid 8x8 -o first64.png
              tensors head --skip 30000 < train.tzst > second-half.tzst     (samples 30000 to the end)
            """)

        @Option(name: [.short, .customLong("n")], help: "Number of samples (default: all that follow --skip).")
        var n: Int?

        @Option(name: .customLong("skip"), help: "Samples to drop first.")
        var skip = 0

        @OptionGroup var input: InputOptions
        @OptionGroup var output: OutputOptions

        func validate() throws {
            guard (n ?? 0) >= 0 else { throw ValidationError("-n must be non-negative") }
            guard skip >= 0 else { throw ValidationError("--skip must be non-negative") }
        }

        func run() throws {
            let reader = try input.reader()
            let writer = try output.writer()
            var remaining = n ?? Int.max
            var toSkip = skip
            while remaining > 0, var record = try reader.read() {
                guard let b = record.batchSize else { try writer.write(record); continue }
                if toSkip > 0 {
                    if toSkip >= b { toSkip -= b; continue }
                    record = record.samples(toSkip, b - toSkip)
                    toSkip = 0
                }
                let kept = record.batchSize ?? 0
                if kept <= remaining {
                    try writer.write(record)
                    remaining -= kept
                } else {
                    try writer.write(record.samples(0, remaining))
                    remaining = 0
                }
            }
            try writer.finish()
        }
    }
}
