import CZstd
#if canImport(Glibc)
import Glibc
#endif

/// Thrown when the reader of our output has gone away (EPIPE). Tools exit quietly on it.
public struct BrokenPipe: Error { public init() {} }

/// Reads the decompressed bytes of a zstd stream from a file descriptor. Concatenated frames
/// (and skippable frames) decode as one stream; input that ends inside a frame is an error.
public final class ZstdReader {
    private let fd: Int32
    private let closeOnDeinit: Bool
    private let stream: OpaquePointer
    private var input: UnsafeMutableRawPointer
    private let inputCapacity: Int
    private var inputSize = 0
    private var inputPos = 0
    private var insideFrame = false
    private var sawAnyInput = false
    private var startsWithFrameMagic = false
    private var finished = false
    /// Compressed bytes consumed so far.
    public private(set) var compressedBytes = 0

    public init(fd: Int32, closeOnDeinit: Bool = false) {
        self.fd = fd
        self.closeOnDeinit = closeOnDeinit
        self.stream = ZSTD_createDStream()
        ZSTD_initDStream(stream)
        // Refuse frames that ask for windows beyond 1 GiB: a hostile header must not make us allocate.
        ZSTD_DCtx_setParameter(stream, ZSTD_d_windowLogMax, 30)
        self.inputCapacity = ZSTD_DStreamInSize()
        self.input = UnsafeMutableRawPointer.allocate(byteCount: inputCapacity, alignment: 16)
    }

    deinit {
        ZSTD_freeDStream(stream)
        input.deallocate()
        if closeOnDeinit { close(fd) }
    }

    private func refill() throws -> Bool {
        while true {
            let n = Glibc.read(fd, input, inputCapacity)
            if n < 0 {
                if errno == EINTR { continue }
                throw StreamError.io("read failed: \(String(cString: strerror(errno)))")
            }
            if compressedBytes == 0 && n > 0 {
                // A zstd frame (0xFD2FB528) or skippable frame (0x184D2A5?), little-endian.
                let b = input.assumingMemoryBound(to: UInt8.self)
                startsWithFrameMagic = n >= 4 && ((b[0] == 0x28 && b[1] == 0xB5 && b[2] == 0x2F && b[3] == 0xFD)
                    || (b[0] & 0xF0 == 0x50 && b[1] == 0x2A && b[2] == 0x4D && b[3] == 0x18))
            }
            inputSize = n
            inputPos = 0
            compressedBytes += n
            return n > 0
        }
    }

    /// Fills `count` bytes at `destination`. Returns fewer only when the stream ends cleanly
    /// at a frame boundary; throws if the compressed data ends inside a frame or is corrupt.
    public func read(into destination: UnsafeMutableRawPointer, count: Int) throws -> Int {
        var produced = 0
        while produced < count {
            if finished { return produced }
            var out = ZSTD_outBuffer(dst: destination + produced, size: count - produced, pos: 0)
            var inb = ZSTD_inBuffer(src: input, size: inputSize, pos: inputPos)
            let ret = ZSTD_decompressStream(stream, &out, &inb)
            if ZSTD_isError(ret) != 0 {
                let code = ZSTD_getErrorCode(ret)
                if !sawAnyInput && !startsWithFrameMagic { throw StreamError.notZstd }
                if code == ZSTD_error_prefix_unknown && !insideFrame {
                    throw StreamError.corruptZstd("bytes that are not a zstd frame follow a complete frame")
                }
                throw StreamError.corruptZstd(String(cString: ZSTD_getErrorName(ret)))
            }
            if inb.pos > inputPos { insideFrame = true; sawAnyInput = true }
            inputPos = inb.pos
            produced += out.pos
            if ret == 0 { insideFrame = false }
            if produced == count { break }
            if out.pos == 0 && inputPos == inputSize {
                if try !refill() {
                    if insideFrame { throw StreamError.truncatedZstd }
                    finished = true
                }
            }
        }
        return produced
    }
}

/// Writes a zstd stream to a file descriptor. Each record is followed by a flush so that the
/// next stage of a pipeline sees it at once; `finish` closes the frame (with a checksum), so a
/// killed writer leaves a stream that readers reject as truncated rather than one that looks whole.
public final class ZstdWriter {
    private let fd: Int32
    private let stream: OpaquePointer
    private let output: UnsafeMutableRawPointer
    private let outputCapacity: Int
    private var finished = false
    /// Compressed bytes written so far.
    public private(set) var compressedBytes = 0

    public init(fd: Int32, level: Int = 1, threads: Int = 0) throws {
        self.fd = fd
        self.stream = ZSTD_createCCtx()
        self.outputCapacity = ZSTD_CStreamOutSize()
        self.output = UnsafeMutableRawPointer.allocate(byteCount: outputCapacity, alignment: 16)
        try check(ZSTD_CCtx_setParameter(stream, ZSTD_c_compressionLevel, Int32(level)))
        try check(ZSTD_CCtx_setParameter(stream, ZSTD_c_checksumFlag, 1))
        if threads > 1 { _ = ZSTD_CCtx_setParameter(stream, ZSTD_c_nbWorkers, Int32(threads)) }
    }

    deinit {
        ZSTD_freeCCtx(stream)
        output.deallocate()
    }

    private func check(_ ret: Int) throws {
        if ZSTD_isError(ret) != 0 { throw StreamError.io("zstd: \(String(cString: ZSTD_getErrorName(ret)))") }
    }

    private func emit(_ count: Int) throws {
        var done = 0
        while done < count {
            let n = Glibc.write(fd, output + done, count - done)
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EPIPE { throw BrokenPipe() }
                throw StreamError.io("write failed: \(String(cString: strerror(errno)))")
            }
            done += n
        }
        compressedBytes += count
    }

    private func compress(_ data: UnsafeRawPointer?, _ count: Int, _ mode: ZSTD_EndDirective) throws {
        var inb = ZSTD_inBuffer(src: data, size: count, pos: 0)
        while true {
            var out = ZSTD_outBuffer(dst: output, size: outputCapacity, pos: 0)
            let remaining = ZSTD_compressStream2(stream, &out, &inb, mode)
            try check(remaining)
            if out.pos > 0 { try emit(out.pos) }
            let inputDone = inb.pos == inb.size
            if mode == ZSTD_e_continue ? inputDone : (inputDone && remaining == 0) { return }
        }
    }

    public func write(_ data: UnsafeRawBufferPointer) throws {
        precondition(!finished)
        if data.count > 0 { try compress(data.baseAddress, data.count, ZSTD_e_continue) }
    }

    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }

    /// Makes everything written so far decodable by the reader at the other end of a pipe.
    public func flush() throws {
        try compress(nil, 0, ZSTD_e_flush)
    }

    /// Ends the current frame; later writes start a new one (concatenated frames are one
    /// stream). Used to give each record its own frame, so records re-concatenate byte for byte.
    public func endFrame() throws {
        precondition(!finished)
        try compress(nil, 0, ZSTD_e_end)
    }

    /// Marks the writer finished without writing anything (every frame already ended).
    public func close() { finished = true }

    /// Ends the frame. Without it, readers reject the output as truncated.
    public func finish() throws {
        guard !finished else { return }
        finished = true
        try compress(nil, 0, ZSTD_e_end)
    }
}
