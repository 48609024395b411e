#if canImport(Glibc)
import Glibc
#endif

/// A checkpoint is one plain (uncompressed) safetensors file: parameter tensors named as the
/// equivalent PyTorch module names them, and `__metadata__` with the architecture config (JSON),
/// the step, and the digest of the parent checkpoint. Writes are atomic.
public enum Checkpoint {
    public static func write(_ record: Record, to path: String) throws {
        try AtomicFile.write(RecordCodec.encode(record), to: path)
    }

    public static func read(_ path: String, limits: RecordCodec.Limits = .init()) throws -> Record {
        let bytes = try readFile(path)
        do {
            return try RecordCodec.decode(bytes, limits: limits)
        } catch let error as StreamError {
            throw StreamError.invalid("\(path) is not a valid safetensors checkpoint: \(error)")
        }
    }

    /// SHA-256 of the file's bytes, hex: how streams and children name a checkpoint.
    public static func digest(_ path: String) throws -> String {
        SHA256.hex(try readFile(path))
    }
}

/// Reads a whole file.
public func readFile(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw StreamError.io("cannot open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var st = stat()
    guard fstat(fd, &st) == 0 else { throw StreamError.io("cannot stat \(path)") }
    if (st.st_mode & S_IFMT) == S_IFDIR { throw StreamError.io("\(path) is a folder, not a file") }
    var out = [UInt8]()
    out.reserveCapacity(Int(st.st_size))
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            throw StreamError.io("cannot read \(path): \(String(cString: strerror(errno)))")
        }
        if n == 0 { break }
        out.append(contentsOf: buffer[0..<n])
    }
    return out
}
