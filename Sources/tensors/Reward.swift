import ArgumentParser
import Shared

extension Tensors {
    struct Reward: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a simple analytic `reward` to every record (a deliberately hackable one for experiments).",
            discussion: """
            --brightness: reward = mean pixel value of `x` per sample (images in [-1, 1]); with --grad \
            also reward.grad = 1/D everywhere. Everything else passes through.
              sample --model m.safetensors --n 256 --group 8 | tensors reward --brightness | rlstep --algo crd ...
            """)

        @Flag(help: "Reward = mean pixel value of x.") var brightness = false
        @Flag(help: "Also write reward.grad (d reward / d x).") var grad = false
        @OptionGroup var input: InputOptions
        @OptionGroup var output: OutputOptions

        func validate() throws {
            guard brightness else { throw ValidationError("choose a reward: --brightness") }
        }

        func run() throws {
            let reader = try input.reader()
            let writer = try output.writer()
            while let record = try reader.read() { try writer.write(try BrightnessReward.apply(record, grad: grad)) }
            try writer.finish()
        }
    }
}
