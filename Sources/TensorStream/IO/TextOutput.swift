#if canImport(Glibc)
import Glibc
#endif

/// Checked text output. `print` and `FileHandle.write` are not enough for a tool: stdio drops a
/// write error at exit (a full disk leaves an empty report and status 0), and FileHandle traps
/// on EPIPE or ENOSPC. Here a closed pipe throws `BrokenPipe` (the tool stops quietly, status 0)
/// and any other failure a one-line error.
public enum TextOutput {
    /// Writes all of `bytes` to `fd`; `name` names the destination in errors.
    public static func write(_ bytes: [UInt8], fd: Int32, name: String) throws {
        try bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    if errno == EPIPE { throw BrokenPipe() }
                    throw StreamError.io("cannot write \(name): \(String(cString: strerror(errno)))")
                }
                done += n
            }
        }
    }

    /// Text on standard output (stdio's buffer is flushed first, so output keeps its order).
    public static func standardOutput(_ text: String) throws {
        fflush(stdout)
        try write(Array(text.utf8), fd: 1, name: "standard output")
    }
}

/// A line on standard output, checked (`print` with errors).
public func printLine(_ text: String, terminator: String = "\n") throws {
    try TextOutput.standardOutput(text + terminator)
}

/// A text file written line by line with checked writes (metrics JSON lines).
public final class TextFile {
    public let path: String
    private var fd: Int32

    /// Opens `path` for appending (`truncate`: starting empty), creating it if needed.
    public init(path: String, truncate: Bool = false) throws {
        self.path = path
        fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (truncate ? O_TRUNC : O_APPEND), 0o644)
        guard fd >= 0 else { throw StreamError.io("cannot open \(path): \(String(cString: strerror(errno)))") }
    }

    public func write(_ text: String) throws {
        guard fd >= 0 else { throw StreamError.io("\(path) is already closed") }
        try TextOutput.write(Array(text.utf8), fd: fd, name: path)
    }

    /// Closes the file; a failed close (a delayed write error) is an error too.
    public func close() throws {
        guard fd >= 0 else { return }
        let r = Glibc.close(fd)
        fd = -1
        if r != 0 && errno != EINTR { throw StreamError.io("cannot write \(path): \(String(cString: strerror(errno)))") }
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }
}
