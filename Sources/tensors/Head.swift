import ArgumentParser
import Shared

extension Tensors {
    struct Head: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pass on the first N samples, splitting a record when needed.",
            discussion: """
            Per-sample tensors (leading dimension B) are cut; per-record ones (such as `traj.t`) are kept.
              tensors head -n 64 < train.tzst | tensors to-png --grid 8x8 -o first64.png
            """)

        @Option(name: [.short, .customLong("n")], help: "Number of samples.")
        var n: Int

        @OptionGroup var input: InputOptions
        @OptionGroup var output: OutputOptions

        func validate() throws {
            guard n >= 0 else { throw ValidationError("-n must be non-negative") }
        }

        func run() throws {
            let reader = try input.reader()
            let writer = try output.writer()
            var remaining = n
            while remaining > 0, let record = try reader.read() {
                guard let b = record.batchSize else { try writer.write(record); continue }
                if b <= remaining {
                    try writer.write(record)
                    remaining -= b
                } else {
                    try writer.write(record.samples(0, remaining))
                    remaining = 0
                }
            }
            try writer.finish()
        }
    }
}
