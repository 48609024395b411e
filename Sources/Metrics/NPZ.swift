import CZlib
import Foundation
import TensorStream

/// Reads `.npz` archives (a ZIP of `.npy` members, stored or deflated, zip64 allowed) as written
/// by `numpy.savez` / `numpy.savez_compressed`: how pytorch-fid and clean-fid cache `mu`/`sigma`.
public enum NPZ {
    /// One `.npy` array: shape and values as float64 (from <f8, <f4, <f2, <i8, <i4).
    public struct Array: Sendable {
        public var shape: [Int]
        public var values: [Double]
    }

    /// All members of the archive by name (without the `.npy` suffix).
    public static func read(_ path: String) throws -> [String: Array] {
        let bytes = try readFile(path)
        var out: [String: Array] = [:]
        for (name, data) in try members(bytes, path: path) where name.hasSuffix(".npy") {
            out[String(name.dropLast(4))] = try parseNPY(data, name: "\(path):\(name)")
        }
        return out
    }

    /// Statistics from an `.npz` holding `mu` [d] and `sigma` [d, d] (n unknown: 0).
    public static func statistics(_ path: String) throws -> FeatureStatistics {
        let arrays = try read(path)
        guard let mu = arrays["mu"], let sigma = arrays["sigma"] else {
            throw MetricsError("\(path) has no `mu` and `sigma` arrays (members: \(arrays.keys.sorted().joined(separator: ", ")))")
        }
        guard mu.shape.count == 1, mu.shape[0] > 0, sigma.shape == [mu.shape[0], mu.shape[0]] else {
            throw MetricsError("\(path): `mu` \(mu.shape) and `sigma` \(sigma.shape) do not fit together")
        }
        guard mu.values.allSatisfy({ $0.isFinite }), sigma.values.allSatisfy({ $0.isFinite }) else {
            throw MetricsError("\(path): the statistics contain NaN or Inf")
        }
        return FeatureStatistics(count: 0, dim: mu.shape[0], mean: mu.values, covariance: sigma.values)
    }

    static func u16(_ b: [UInt8], _ o: Int) -> Int { Int(b[o]) | Int(b[o + 1]) << 8 }
    static func u32(_ b: [UInt8], _ o: Int) -> Int { u16(b, o) | u16(b, o + 2) << 16 }
    static func u64(_ b: [UInt8], _ o: Int) -> Int { u32(b, o) | u32(b, o + 4) << 32 }

    /// (name, uncompressed bytes) of every member, through the central directory.
    static func members(_ b: [UInt8], path: String) throws -> [(String, [UInt8])] {
        let bad = MetricsError("\(path) is not a valid .npz (ZIP) file")
        guard b.count >= 22 else { throw bad }
        var eocd = -1
        var p = b.count - 22
        while p >= max(0, b.count - 22 - 65_535) {
            if b[p] == 0x50 && b[p + 1] == 0x4B && b[p + 2] == 0x05 && b[p + 3] == 0x06 { eocd = p; break }
            p -= 1
        }
        guard eocd >= 0 else { throw bad }
        var entries = u16(b, eocd + 10)
        var cdOffset = u32(b, eocd + 16)
        // zip64 end-of-central-directory locator just before the EOCD.
        if (entries == 0xFFFF || cdOffset == 0xFFFF_FFFF), eocd >= 20, u32(b, eocd - 20) == 0x0706_4B50 {
            let z64 = u64(b, eocd - 12)
            guard z64 + 56 <= b.count, u32(b, z64) == 0x0606_4B50 else { throw bad }
            entries = u64(b, z64 + 32)
            cdOffset = u64(b, z64 + 48)
        }
        var out: [(String, [UInt8])] = []
        var q = cdOffset
        for _ in 0..<entries {
            guard q + 46 <= b.count, u32(b, q) == 0x0201_4B50 else { throw bad }
            let method = u16(b, q + 10)
            var compSize = u32(b, q + 20), size = u32(b, q + 24)
            let nameLen = u16(b, q + 28), extraLen = u16(b, q + 30), commentLen = u16(b, q + 32)
            var localOffset = u32(b, q + 42)
            guard q + 46 + nameLen + extraLen <= b.count else { throw bad }
            let name = String(decoding: b[(q + 46)..<(q + 46 + nameLen)], as: UTF8.self)
            // zip64 extended information: the 0xFFFFFFFF fields, in order.
            var e = q + 46 + nameLen
            let extraEnd = e + extraLen
            while e + 4 <= extraEnd {
                let id = u16(b, e), len = u16(b, e + 2)
                if id == 1 {
                    var f = e + 4
                    if size == 0xFFFF_FFFF { size = u64(b, f); f += 8 }
                    if compSize == 0xFFFF_FFFF { compSize = u64(b, f); f += 8 }
                    if localOffset == 0xFFFF_FFFF { localOffset = u64(b, f); f += 8 }
                }
                e += 4 + len
            }
            guard localOffset + 30 <= b.count, u32(b, localOffset) == 0x0403_4B50 else { throw bad }
            let dataStart = localOffset + 30 + u16(b, localOffset + 26) + u16(b, localOffset + 28)
            guard compSize >= 0, dataStart + compSize <= b.count, size >= 0, size < 1 << 36 else { throw bad }
            let raw = b[dataStart..<(dataStart + compSize)]
            switch method {
            case 0: out.append((name, Swift.Array(raw)))
            case 8: out.append((name, try inflate(Swift.Array(raw), size: size, path: path)))
            default: throw MetricsError("\(path): member \(name) uses ZIP method \(method); only stored and deflated are supported")
            }
            q += 46 + nameLen + extraLen + commentLen
        }
        return out
    }

    /// Raw-deflate decompression of exactly `size` bytes.
    static func inflate(_ input: [UInt8], size: Int, path: String) throws -> [UInt8] {
        var output = [UInt8](repeating: 0, count: size)
        var stream = z_stream()
        guard inflateInit2_(&stream, -15, zlibVersion(), Int32(MemoryLayout<z_stream>.size)) == Z_OK else {
            throw MetricsError("zlib initialisation failed")
        }
        defer { inflateEnd(&stream) }
        var input = input
        let status: Int32 = input.withUnsafeMutableBufferPointer { ip in
            output.withUnsafeMutableBufferPointer { op in
                stream.next_in = ip.baseAddress
                stream.avail_in = uInt(ip.count)
                stream.next_out = op.baseAddress
                stream.avail_out = uInt(op.count)
                return CZlib.inflate(&stream, Z_FINISH)
            }
        }
        guard status == Z_STREAM_END, Int(stream.total_out) == size else {
            throw MetricsError("\(path): corrupt deflate data in the archive")
        }
        return output
    }

    /// Parses one `.npy` file (versions 1-3, little-endian, C order).
    static func parseNPY(_ b: [UInt8], name: String) throws -> Array {
        let bad = MetricsError("\(name) is not a valid .npy array")
        guard b.count >= 10, b[0] == 0x93, String(decoding: b[1..<6], as: UTF8.self) == "NUMPY" else { throw bad }
        let major = b[6]
        let (headerLen, start) = major == 1 ? (u16(b, 8), 10) : (u32(b, 8), 12)
        guard start + headerLen <= b.count else { throw bad }
        let header = String(decoding: b[start..<(start + headerLen)], as: UTF8.self)
        func field(_ key: String) -> String? {
            guard let r = header.range(of: "'\(key)':") else { return nil }
            return String(header[r.upperBound...]).trimmingCharacters(in: .whitespaces)
        }
        guard let descrField = field("descr"), let q1 = descrField.firstIndex(of: "'") else { throw bad }
        let rest = descrField[descrField.index(after: q1)...]
        guard let q2 = rest.firstIndex(of: "'") else { throw bad }
        let descr = String(rest[..<q2])
        if let fo = field("fortran_order"), fo.hasPrefix("True") {
            throw MetricsError("\(name): Fortran-order arrays are not supported")
        }
        guard let shapeField = field("shape"), let open = shapeField.firstIndex(of: "("), let close = shapeField.firstIndex(of: ")") else { throw bad }
        let shape = shapeField[shapeField.index(after: open)..<close].split(separator: ",").compactMap {
            Int($0.trimmingCharacters(in: .whitespaces))
        }
        let count = shape.reduce(1, *)
        let data = start + headerLen
        let size: Int
        switch descr {
        case "<f8", "<i8": size = 8
        case "<f4", "<i4": size = 4
        case "<f2": size = 2
        default: throw MetricsError("\(name): dtype \(descr) is not supported (need <f8, <f4, <f2, <i8 or <i4)")
        }
        guard data + count * size <= b.count else { throw bad }
        var values = [Double](repeating: 0, count: count)
        b.withUnsafeBytes { raw in
            let p = raw.baseAddress! + data
            switch descr {
            case "<f8": for i in 0..<count { values[i] = Double(bitPattern: UInt64(littleEndian: p.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self))) }
            case "<i8": for i in 0..<count { values[i] = Double(Int64(littleEndian: p.loadUnaligned(fromByteOffset: i * 8, as: Int64.self))) }
            case "<f4": for i in 0..<count { values[i] = Double(Float(bitPattern: UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)))) }
            case "<i4": for i in 0..<count { values[i] = Double(Int32(littleEndian: p.loadUnaligned(fromByteOffset: i * 4, as: Int32.self))) }
            default: for i in 0..<count { values[i] = Double(Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: i * 2, as: UInt16.self))))) }
            }
        }
        return Array(shape: shape, values: values)
    }
}
