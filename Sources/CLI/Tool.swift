import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import Numerics
import TensorStream

/// An error a tool reports as one line, `TOOL: error: message`, with exit status 1.
public struct ToolError: Error, CustomStringConvertible {
    public let description: String
    public init(_ message: String) { description = message }
}

/// The entry point every tool uses, so all of them behave alike:
/// - usage errors print as swift-argument-parser prints them (exit 64), `--help` exits 0;
/// - any other failure prints `TOOL: error: <one line>` on stderr and exits 1;
/// - when the reader downstream closes the pipe, the tool exits quietly with status 0.
public enum ToolMain {
    public static func run<Command: ParsableCommand>(_ type: Command.Type) -> Never {
        // Before any BLAS call: Debian's OpenBLAS misdetects some CPUs and falls back to slow
        // generic kernels; this re-executes the tool with native ones (see BLAS).
        BLAS.preferNativeKernels()
        signal(SIGPIPE, SIG_IGN)  // a closed pipe arrives as EPIPE, handled below
        let name = Command.configuration.commandName ?? "tool"
        var command: ParsableCommand
        do {
            command = try Command.parseAsRoot()
        } catch {
            Command.exit(withError: error)
        }
        do {
            try command.run()
            // A report printed through stdio that could not be written (a full disk) is an
            // error, not status 0 with an empty file; a closed pipe still exits quietly.
            if fflush(stdout) != 0 || ferror(stdout) != 0 {
                if errno == EPIPE { exit(0) }
                fail(name, "cannot write standard output: \(String(cString: strerror(errno)))")
            }
            exit(0)
        } catch is BrokenPipe {
            exit(0)
        } catch let error as ToolError {
            fail(name, error.description)
        } catch let error as NamesSettings {
            // Library errors name settings by key; the tools print them as flags.
            fail(name, SettingNames.flags(error.template))
        } catch let error as ExitCode {
            exit(error.rawValue)
        } catch let error as ValidationError {
            Command.exit(withError: error)
        } catch let error as CleanExit {
            Command.exit(withError: error)
        } catch {
            // Help requests and parser errors surface from run() for commands with subcommands.
            if String(reflecting: Swift.type(of: error)).hasPrefix("ArgumentParser.") { Command.exit(withError: error) }
            fail(name, "\(error)")
        }
    }

    public static func fail(_ tool: String, _ message: String) -> Never {
        let line = message.replacingOccurrences(of: "\n", with: " ")
        printError("\(tool): error: \(line)")
        exit(1)
    }

    public static func warn(_ tool: String, _ message: String) {
        printError("\(tool): warning: \(message)")
    }
}

/// The input stream, netpbm's way: an optional positional FILE, or `-i FILE`, or stdin (also
/// for `-`); and the record-size cap.
public struct InputOptions: ParsableArguments {
    @Argument(help: "Input stream (default: -i FILE, else standard input).")
    public var file: String?

    @Option(name: [.short, .customLong("input")], help: "Input stream (the same as FILE).")
    public var input: String?

    @OptionGroup public var limits: RecordLimitOptions

    public init() {}

    /// The path given (FILE or -i), nil for stdin.
    public var path: String? { file ?? input }

    public func reader(_ path: String? = nil) throws -> TensorStreamReader {
        try limits.reader(path ?? self.path)
    }

    public func validate() throws {
        if file != nil && input != nil { throw ValidationError("give the input as FILE or as -i FILE, not both") }
    }
}

/// `--max-record-mib`: the cap on one record's data when reading streams.
public struct RecordLimitOptions: ParsableArguments {
    @Option(name: .customLong("max-record-mib"), help: "Refuse records whose data exceed this many MiB.")
    public var maxRecordMiB: Int = 8192

    public init() {}

    public func reader(_ path: String?) throws -> TensorStreamReader {
        try TensorStreamReader(path: path, limits: RecordCodec.Limits(maxRecordBytes: maxRecordMiB << 20))
    }

    public func validate() throws {
        guard maxRecordMiB > 0 else { throw ValidationError("--max-record-mib must be positive") }
    }
}

/// `-o FILE` (default: stdout) and the zstd level.
public struct OutputOptions: ParsableArguments {
    @Option(name: [.short, .customLong("output")], help: "Output stream (default: standard output; never a terminal). A file appears only once complete.")
    public var output: String?

    @Option(name: .customLong("level"), help: "zstd compression level (1 is fast; 3 to 19 trade speed for size; negative is faster still).")
    public var level: Int = 1

    public init() {}

    public func writer() throws -> TensorStreamWriter {
        try TensorStreamWriter(path: output, level: level)
    }

    public func validate() throws {
        guard (-7...22).contains(level) else { throw ValidationError("--level must be between -7 and 22") }
    }
}

/// `--progress` / `--quiet`: the progress bar shows on stderr only when stderr is a terminal,
/// unless forced either way.
public struct ProgressOptions: ParsableArguments {
    @Flag(name: .customLong("progress"), help: "Show a progress bar on stderr even when it is not a terminal.")
    public var forceProgress = false

    @Flag(name: .customLong("quiet"), help: "No progress bar.")
    public var quiet = false

    public init() {}

    public var showProgress: Bool { quiet ? false : (forceProgress || isatty(2) != 0) }
}

/// `--threads N` (default: all cores).
public struct ThreadOptions: ParsableArguments {
    @Option(name: .customLong("threads"), help: "Compute threads (default: all cores). Set it per stage when pipeline stages share the machine.")
    public var threads: Int?

    public init() {}

    public var count: Int { threads ?? Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))) }

    public func apply() { BLAS.setThreads(count) }

    public func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads must be at least 1") }
    }
}

/// Writes one line to stderr (unbuffered, so it is never lost at exit).
public func printError(_ line: String) {
    var text = line
    if !text.hasSuffix("\n") { text += "\n" }
    _ = text.withCString { write(2, $0, strlen($0)) }
}
