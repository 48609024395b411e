import CCrypto

/// SHA-256 (FIPS 180-4), for content digests of checkpoints and encoders, through OpenSSL's
/// libcrypto: it picks SHA-NI or AVX2 code at run time, and every tool hashes each checkpoint it
/// reads or writes, so a portable Swift loop was most of a small model's checkpoint I/O.
public enum SHA256 {
    /// The 32-byte digest of `bytes`.
    public static func digest(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var written: UInt32 = 0
        let ok = out.withUnsafeMutableBufferPointer { o in
            // A null base address (an empty buffer) is fine for OpenSSL when the length is 0.
            EVP_Digest(bytes.baseAddress, bytes.count, o.baseAddress, &written, EVP_sha256(), nil)
        }
        // Only a broken libcrypto fails on an in-memory buffer; a wrong digest would be silent.
        precondition(ok == 1 && written == 32, "libcrypto EVP_Digest(SHA-256) failed")
        return out
    }

    /// The digest of `bytes` as 64 lowercase hex digits.
    public static func hex(_ bytes: [UInt8]) -> String {
        let d = bytes.withUnsafeBytes { digest($0) }
        let digits = Array("0123456789abcdef".utf8)
        var s = [UInt8](); s.reserveCapacity(64)
        for b in d { s.append(digits[Int(b >> 4)]); s.append(digits[Int(b & 15)]) }
        return String(decoding: s, as: UTF8.self)
    }
}
