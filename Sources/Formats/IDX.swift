import CZlib
import TensorStream

/// The IDX format of MNIST and Fashion-MNIST (big-endian header: two zero bytes, a type code,
/// the rank, then one u32 per dimension; then the data), gzipped or plain: zlib's gzread
/// reads both transparently.
public struct IDXFile {
    public let shape: [Int]
    public let bytes: [UInt8]

    public init(path: String, maxBytes: Int = 1 << 31) throws {
        guard let file = gzopen(path, "rb") else { throw StreamError.io("cannot open \(path)") }
        defer { gzclose(file) }
        func readExactly(_ n: Int, into pointer: UnsafeMutableRawPointer) throws {
            var done = 0
            while done < n {
                let got = gzread(file, pointer + done, UInt32(min(n - done, 1 << 30)))
                if got < 0 {
                    var code: Int32 = 0
                    let message = String(cString: gzerror(file, &code))
                    throw StreamError.io("\(path): \(message)")
                }
                if got == 0 { throw StreamError.invalid("\(path) is truncated: expected \(n) more bytes, got \(done)") }
                done += Int(got)
            }
        }
        var magic = [UInt8](repeating: 0, count: 4)
        try magic.withUnsafeMutableBytes { try readExactly(4, into: $0.baseAddress!) }
        guard magic[0] == 0, magic[1] == 0 else { throw StreamError.invalid("\(path) is not an IDX file (bad magic)") }
        guard magic[2] == 0x08 else { throw StreamError.invalid("\(path): only unsigned-byte IDX data (type 0x08) is supported, found 0x\(String(magic[2], radix: 16))") }
        let rank = Int(magic[3])
        guard (1...4).contains(rank) else { throw StreamError.invalid("\(path): IDX rank \(rank) is not supported") }
        var dims = [UInt8](repeating: 0, count: 4 * rank)
        try dims.withUnsafeMutableBytes { try readExactly(4 * rank, into: $0.baseAddress!) }
        var shape: [Int] = []
        var total = 1
        for i in 0..<rank {
            let d = Int(dims[4 * i]) << 24 | Int(dims[4 * i + 1]) << 16 | Int(dims[4 * i + 2]) << 8 | Int(dims[4 * i + 3])
            shape.append(d)
            total *= d
            guard total <= maxBytes else { throw StreamError.invalid("\(path): IDX data of shape \(shape) is too large") }
        }
        self.shape = shape
        self.bytes = try [UInt8](unsafeUninitializedCapacity: total) { buffer, initialized in
            if total > 0 { try readExactly(total, into: buffer.baseAddress!) }
            initialized = total
        }
    }
}
