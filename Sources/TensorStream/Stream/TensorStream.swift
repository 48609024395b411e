#if canImport(Glibc)
import Glibc
#endif

/// Reads records one at a time from a zstd tensor stream (a file, or stdin for nil or "-").
/// Only the current record is held in memory.
public final class TensorStreamReader: Sequence, IteratorProtocol {
    public let name: String
    private let zstd: ZstdReader
    public let limits: RecordCodec.Limits
    public private(set) var recordsRead = 0
    public private(set) var decompressedBytes = 0
    /// Set when iterating with `for record in reader`, which cannot throw; check it afterwards
    /// (or use `next() throws`, which every tool does).
    public private(set) var iterationError: Error?

    public init(path: String?, limits: RecordCodec.Limits = .init()) throws {
        if let path, path != "-" {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw StreamError.io("cannot open \(path): \(String(cString: strerror(errno)))") }
            var st = stat()
            if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
                close(fd)
                throw StreamError.io("\(path) is a folder, not a tensor stream")
            }
            self.zstd = ZstdReader(fd: fd, closeOnDeinit: true)
            self.name = path
        } else {
            self.zstd = ZstdReader(fd: 0)
            self.name = "standard input"
        }
        self.limits = limits
    }

    /// Compressed bytes consumed so far.
    public var compressedBytes: Int { zstd.compressedBytes }

    /// The next record, or nil at the end of the stream.
    public func read() throws -> Record? {
        let record = try RecordCodec.read(limits: limits) { dst, n in
            let got = try zstd.read(into: dst, count: n)
            decompressedBytes += got
            return got
        }
        if record != nil { recordsRead += 1 }
        return record
    }

    public func next() -> Record? {
        guard iterationError == nil else { return nil }
        do { return try read() } catch { iterationError = error; return nil }
    }
}

/// Writes records to a zstd tensor stream: stdout (refusing a terminal) or a file that appears
/// under its name only once the stream is complete. Call `finish()` at the end.
public final class TensorStreamWriter {
    private let zstd: ZstdWriter
    private let file: AtomicFile?
    public private(set) var recordsWritten = 0
    public private(set) var payloadBytes = 0
    /// When set (before the first write), every record is a complete zstd frame of its own and
    /// `finish` adds nothing (an empty stream is zero bytes). Then the compressed bytes of a
    /// record depend only on the record, so streams whose records match join with `cat` into
    /// exactly the bytes of one stream holding all of them (`sample --offset` shards).
    public var framePerRecord = false

    /// Writes to `path` (atomically), or to stdout for nil or "-".
    public init(path: String?, level: Int = 1, threads: Int = 0) throws {
        if let path, path != "-" {
            let file = try AtomicFile(path: path)
            self.file = file
            self.zstd = try ZstdWriter(fd: file.fd, level: level, threads: threads)
        } else {
            guard isatty(1) == 0 else {
                throw StreamError.io("refusing to write a binary tensor stream to a terminal; redirect stdout or use -o FILE")
            }
            self.file = nil
            self.zstd = try ZstdWriter(fd: 1, level: level, threads: threads)
        }
    }

    /// Writes to an already open descriptor (tests, fuzzing).
    public init(fd: Int32, level: Int = 1) throws {
        self.file = nil
        self.zstd = try ZstdWriter(fd: fd, level: level)
    }

    public func write(_ record: Record) throws {
        let (json, order) = RecordCodec.header(for: record)
        var length = UInt64(json.count).littleEndian
        try withUnsafeBytes(of: &length) { try zstd.write($0) }
        try zstd.write(json)
        for (_, tensor) in order { try zstd.write(tensor.bytes) }
        if framePerRecord { try zstd.endFrame() } else { try zstd.flush() }
        recordsWritten += 1
        payloadBytes += record.payloadBytes
    }

    /// Closes the zstd frame and, for a file, moves it to its real name.
    public func finish() throws {
        if framePerRecord { zstd.close() } else { try zstd.finish() }
        try file?.commit()
    }

    public var compressedBytes: Int { zstd.compressedBytes }
}
