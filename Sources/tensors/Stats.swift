import ArgumentParser
import Shared

extension Tensors {
    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print count, mean, std, min and max of each numeric tensor over the whole stream.",
            discussion: """
            Reads one record at a time (bounded memory). The standard deviation is the population one \
            (ddof 0); NaN and Inf are counted apart and left out of the other figures.
              sample --model m.safetensors --n 1000 | discrim score --model d.safetensors | tensors stats --tensor reward
              tensors stats --json --tensor x train.tzst
            """)

        @OptionGroup var input: InputOptions

        @Option(name: .customLong("tensor"), help: "Summarise only this tensor (repeatable; default: every numeric tensor).")
        var names: [String] = []

        @Flag(help: "Print one JSON object per tensor (JSON lines).")
        var json = false

        func run() throws {
            let summaries = try StreamSummary.summarise(try input.reader(), names: names)
            for s in summaries {
                if json { try printLine(s.json); continue }
                func g(_ v: Double) -> String { String(format: "%.6g", v) }
                try printLine("\(s.name.padding(toLength: max(12, s.name.count), withPad: " ", startingAt: 0)) \(s.dtype.rawValue.padding(toLength: 5, withPad: " ", startingAt: 0))"
                      + " count \(s.count)  mean \(g(s.mean))  std \(g(s.std))  min \(g(s.min))  max \(g(s.max))"
                      + (s.nonFinite > 0 ? "  nonfinite \(s.nonFinite)" : ""))
            }
        }
    }
}
