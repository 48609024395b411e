#if canImport(Glibc)
import Glibc
#endif

/// A checkpoint is one plain (uncompressed) safetensors file: parameter tensors named as the
/// equivalent PyTorch module names them, and `__metadata__` with the architecture config (JSON),
/// the step, and the digest of the parent checkpoint. Writes are atomic.
public enum Checkpoint {
    public static func write(_ record: Record, to path: String) throws {
        try prepare(record, to: path).commit()
    }

    /// The encoded record written piece by piece (length, header, each tensor's bytes): the same
    /// bytes as `RecordCodec.encode` without assembling a second copy of a checkpoint that can
    /// be hundreds of MB.
    static func write(_ record: Record, into file: AtomicFile) throws {
        let (json, order) = RecordCodec.header(for: stamped(record))
        try file.write(withUnsafeBytes(of: UInt64(json.count).littleEndian) { Array($0) })
        try file.write(json)
        for (_, tensor) in order { try file.write(tensor.bytes) }
    }

    /// The record with metadata `version` (Toolkit.version) next to its `tool`, when missing.
    static func stamped(_ record: Record) -> Record {
        guard record.metadata["tool"] != nil, record.metadata["version"] == nil else { return record }
        var r = record
        r.metadata["version"] = Toolkit.version
        return r
    }

    /// Whether the file at `path` is a plain safetensors file (a checkpoint) rather than a zstd
    /// stream: no zstd magic, and a header length followed by `{`.
    public static func isCheckpoint(_ path: String) -> Bool {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: 9)
        let n = head.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, 9) }
        guard n == 9 else { return false }
        if head[0...3] == [0x28, 0xB5, 0x2F, 0xFD] { return false }
        return head[8] == UInt8(ascii: "{")
    }

    /// Writes the checkpoint under a temporary name; it appears at `path` on `commit()` (and
    /// never, if the file is dropped uncommitted), so a tool can finish its other outputs first.
    public static func prepare(_ record: Record, to path: String) throws -> AtomicFile {
        let file = try AtomicFile(path: path)
        try write(record, into: file)   // dropped uncommitted on a throw: the temporary goes
        return file
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

    /// `read` and `digest` from one read of the file (a checkpoint of 145 MB read twice cost
    /// rlstep a quarter of its start-up).
    public static func readDigested(_ path: String, limits: RecordCodec.Limits = .init()) throws -> (record: Record, digest: String) {
        let bytes = try readFile(path)
        do {
            return (try RecordCodec.decode(bytes, limits: limits), SHA256.hex(bytes))
        } catch let error as StreamError {
            throw StreamError.invalid("\(path) is not a valid safetensors checkpoint: \(error)")
        }
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
    // Straight into the array for the size fstat gives; a file that grows meanwhile is read on
    // in chunks.
    let size = Int(st.st_size)
    var failure: Int32 = 0
    var out = [UInt8](unsafeUninitializedCapacity: size) { p, count in
        count = 0
        while count < size {
            let n = Glibc.read(fd, p.baseAddress! + count, size - count)
            if n < 0 { if errno == EINTR { continue }; failure = errno; return }
            if n == 0 { break }
            count += n
        }
    }
    if failure != 0 { throw StreamError.io("cannot read \(path): \(String(cString: strerror(failure)))") }
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
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
