import ArgumentParser
import Shared

extension Tensors {
    struct Cat: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Validate streams and write them as one, re-compressed at --level.",
            discussion: """
            Plain `cat a.tzst b.tzst` already joins streams; this also checks every record and
            re-compresses them, e.g. for archiving at a higher level:
              tensors cat --level 19 shard-*.tzst -o all.tzst
            """)

        @Argument(help: "Streams to read in order (default: standard input).")
        var files: [String] = []

        @Option(name: [.short, .customLong("input")], help: "Input stream (the same as one FILE).")
        var input: String?

        @OptionGroup var limits: RecordLimitOptions
        @OptionGroup var output: OutputOptions
        @OptionGroup var progress: ProgressOptions

        func validate() throws {
            if !files.isEmpty && input != nil { throw ValidationError("give the inputs as FILEs or as -i FILE, not both") }
        }

        func run() throws {
            let writer = try output.writer()
            let bar = Progress(label: "records", enabled: progress.showProgress)
            for path in files.isEmpty ? [input ?? "-"] : files {
                let reader = try limits.reader(path)
                while let record = try reader.read() {
                    try writer.write(record)
                    bar.advance()
                }
            }
            try writer.finish()
            bar.finish()
        }
    }
}
