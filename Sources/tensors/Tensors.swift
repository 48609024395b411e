import ArgumentParser
import Shared

struct Tensors: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tensors",
        abstract: "Inspect, convert and slice zstd tensor streams.",
        discussion: """
        A tensor stream is zstd-compressed bytes holding a sequence of records; each record is a \
        safetensors file (one batch). `cat a.tzst b.tzst` is a valid stream of both.

        Examples:
          tensors from-idx /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \\
                           /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz > train.tzst
          tensors head -n 64 < train.tzst | tensors to-png --grid 8x8 -o grid.png
          tensors info train.tzst
        """,
        version: Toolkit.version,
        subcommands: [Info.self, Stats.self, Head.self, Cat.self, FromIDX.self, FromPNG.self, ToPNG.self, Reward.self]
    )
}
