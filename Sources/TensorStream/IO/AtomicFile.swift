#if canImport(Glibc)
import Glibc
#endif

/// A file that appears under its real name only when complete: written to a temporary name in
/// the same folder, fsync'd, then renamed. If it is dropped without `commit`, the temporary is
/// removed, so a failed or killed run never leaves a half-written file under the real name.
public final class AtomicFile {
    public let path: String
    public let temporaryPath: String
    public let fd: Int32
    private var done = false
    /// Devices and pipes (/dev/null, a FIFO) are written in place: they cannot be renamed over.
    private let inPlace: Bool

    public init(path: String) throws {
        self.path = path
        var st = stat()
        if stat(path, &st) == 0, (st.st_mode & S_IFMT) != S_IFREG {
            guard (st.st_mode & S_IFMT) != S_IFDIR else { throw StreamError.io("\(path) is a folder") }
            let fd = open(path, O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else { throw StreamError.io("cannot open \(path): \(String(cString: strerror(errno)))") }
            self.fd = fd
            self.temporaryPath = path
            self.inPlace = true
            return
        }
        self.inPlace = false
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { String(path[..<$0]) } ?? "."
        let base = slash.map { String(path[path.index(after: $0)...]) } ?? path
        self.temporaryPath = (dir.isEmpty ? "" : dir + "/") + ".\(base).tmp-\(getpid())"
        let fd = open(temporaryPath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw StreamError.io("cannot create \(path): \(String(cString: strerror(errno)))")
        }
        self.fd = fd
    }

    /// Flushes to disk and moves the file to its real name.
    public func commit() throws {
        guard !done else { return }
        done = true
        if inPlace { close(fd); return }
        if fsync(fd) != 0 {
            let why = String(cString: strerror(errno))
            close(fd); unlink(temporaryPath)
            throw StreamError.io("cannot write \(path): \(why)")
        }
        close(fd)
        if rename(temporaryPath, path) != 0 {
            let why = String(cString: strerror(errno))
            unlink(temporaryPath)
            throw StreamError.io("cannot move the finished file to \(path): \(why)")
        }
        // Make the rename itself durable.
        let slash = path.lastIndex(of: "/")
        let dir = slash.map { String(path[..<$0]) } ?? "."
        let dfd = open(dir.isEmpty ? "/" : dir, O_RDONLY | O_DIRECTORY)
        if dfd >= 0 { fsync(dfd); close(dfd) }
    }

    /// Removes the temporary file.
    public func abandon() {
        guard !done else { return }
        done = true
        close(fd)
        if inPlace { return }
        unlink(temporaryPath)
    }

    deinit { abandon() }

    /// Writes a whole byte array atomically.
    public static func write(_ bytes: [UInt8], to path: String) throws {
        let file = try AtomicFile(path: path)
        try file.write(bytes)
        try file.commit()
    }

    /// Writes bytes to the (not yet committed) file.
    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw StreamError.io("cannot write \(path): \(String(cString: strerror(errno)))")
                }
                done += n
            }
        }
    }
}
