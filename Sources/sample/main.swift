import ArgumentParser
import Foundation
import Shared

// `sample --help` is the default subcommand's help (the generation options), then the
// subcommands: the root's own help would hide every generation option behind `help generate`.
if [["--help"], ["-h"], ["help"]].contains(Array(CommandLine.arguments.dropFirst())) {
    print(Sample.helpMessage(for: Sample.Generate.self))
    print("""

    SUBCOMMANDS:
      generate (default)      \(Sample.Generate.configuration.abstract)
      logprob                 \(Sample.LogProb.configuration.abstract)

      See 'sample help logprob' for its options.
    """)
    exit(0)
}
ToolMain.run(Sample.self)
