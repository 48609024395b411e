import ArgumentParser
import Shared

extension Tensors {
    struct Reward: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add a simple analytic `reward` to every record (a deliberately hackable one for experiments).",
            discussion: """
            --brightness: reward = mean pixel value of `x` per sample (images in [-1, 1]); with --grad \
            also reward.grad = 1/D everywhere.
            --class-confidence: reward = softmax(logits)[y], a classifier's confidence in the class each \
            sample was generated for, from the `logits` that `embed classify` adds (no --grad). \
            Everything else passes through.
              sample --model m.safetensors --n 256 --group 8 | tensors reward --brightness | rlstep --algo crd ...
              sample --model m.safetensors --n 256 --group 8 | embed classify --encoder clf.safetensors \\
                | tensors reward --class-confidence | rlstep --algo grpo ...
            """)

        @Flag(help: "Reward = mean pixel value of x.") var brightness = false
        @Flag(name: .customLong("class-confidence"), help: "Reward = softmax(logits)[y] (the `logits` of `embed classify`).") var classConfidence = false
        @Flag(help: "Also write reward.grad (d reward / d x).") var grad = false
        @OptionGroup var input: InputOptions
        @OptionGroup var output: OutputOptions

        func validate() throws {
            guard brightness != classConfidence else { throw ValidationError("choose one reward: --brightness or --class-confidence") }
            if classConfidence && grad { throw ValidationError("--class-confidence has no image gradient here (the classifier ran in an earlier stage): use it with rlstep --algo grpo, crd or nft, without --grad") }
        }

        func run() throws {
            let reader = try input.reader()
            let writer = try output.writer()
            while let record = try reader.read() {
                try writer.write(classConfidence ? try ClassConfidenceReward.apply(record) : try BrightnessReward.apply(record, grad: grad))
            }
            try writer.finish()
        }
    }
}
