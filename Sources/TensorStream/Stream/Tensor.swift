/// A named array's payload: dtype, shape and little-endian C-order bytes, exactly as the
/// safetensors record carries it. Numeric code converts to typed arrays through the accessors.
public struct Tensor: Sendable, Equatable {
    public let dtype: DType
    public let shape: [Int]
    public internal(set) var bytes: [UInt8]

    /// Number of elements (1 for a 0-rank scalar).
    public var count: Int { shape.reduce(1, *) }

    public init(dtype: DType, shape: [Int], bytes: [UInt8]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension")
        precondition(bytes.count == shape.reduce(1, *) * dtype.size, "byte count does not match shape")
        self.dtype = dtype
        self.shape = shape
        self.bytes = bytes
    }

    public init(_ values: [Float], shape: [Int]) { self.init(copying: values, dtype: .f32, shape: shape) }
    public init(_ values: [Double], shape: [Int]) { self.init(copying: values, dtype: .f64, shape: shape) }
    public init(_ values: [Int64], shape: [Int]) { self.init(copying: values, dtype: .i64, shape: shape) }
    public init(_ values: [Int32], shape: [Int]) { self.init(copying: values, dtype: .i32, shape: shape) }
    public init(_ values: [UInt8], shape: [Int]) { self.init(dtype: .u8, shape: shape, bytes: values) }

    private init<T>(copying values: [T], dtype: DType, shape: [Int]) {
        precondition(MemoryLayout<T>.size == dtype.size)
        precondition(values.count == shape.reduce(1, *), "value count does not match shape")
        self.dtype = dtype
        self.shape = shape
        self.bytes = values.withUnsafeBytes { Array($0) }
    }

    /// Values as Float. F32 is a copy; F16, BF16, F64 and integer types are converted.
    public func floats() throws -> [Float] {
        switch dtype {
        case .f32: return reinterpreted(Float.self)
        case .f64: return reinterpreted(Double.self).map { Float($0) }
        case .f16: return reinterpreted(UInt16.self).map { Float(Float16(bitPattern: $0)) }
        case .bf16: return reinterpreted(UInt16.self).map { Float(bitPattern: UInt32($0) << 16) }
        case .i64: return reinterpreted(Int64.self).map { Float($0) }
        case .i32: return reinterpreted(Int32.self).map { Float($0) }
        case .u8: return bytes.map { Float($0) }
        default: throw StreamError.wrongDType(expected: "a numeric dtype", got: dtype)
        }
    }

    /// Values as Double (statistics are computed in float64).
    public func doubles() throws -> [Double] {
        switch dtype {
        case .f64: return reinterpreted(Double.self)
        case .f32: return reinterpreted(Float.self).map { Double($0) }
        case .i64: return reinterpreted(Int64.self).map { Double($0) }   // exact to 2^53, not Float's 2^24
        case .i32: return reinterpreted(Int32.self).map { Double($0) }
        default: return try floats().map { Double($0) }
        }
    }

    /// Values as Int64 from any integer dtype.
    public func int64s() throws -> [Int64] {
        switch dtype {
        case .i64: return reinterpreted(Int64.self)
        case .i32: return reinterpreted(Int32.self).map { Int64($0) }
        case .u8: return bytes.map { Int64($0) }
        case .i8: return reinterpreted(Int8.self).map { Int64($0) }
        case .i16: return reinterpreted(Int16.self).map { Int64($0) }
        case .u16: return reinterpreted(UInt16.self).map { Int64($0) }
        case .u32: return reinterpreted(UInt32.self).map { Int64($0) }
        default: throw StreamError.wrongDType(expected: "an integer dtype", got: dtype)
        }
    }

    private func reinterpreted<T>(_: T.Type) -> [T] {
        let n = bytes.count / MemoryLayout<T>.stride
        return [T](unsafeUninitializedCapacity: n) { buffer, initialized in
            bytes.withUnsafeBytes { raw in
                if n > 0 { UnsafeMutableRawPointer(buffer.baseAddress!).copyMemory(from: raw.baseAddress!, byteCount: n * MemoryLayout<T>.stride) }
            }
            initialized = n
        }
    }

    /// Direct read access to an F32 payload without a copy.
    public func withFloats<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) throws -> R {
        guard dtype == .f32 else { throw StreamError.wrongDType(expected: "F32", got: dtype) }
        return try bytes.withUnsafeBytes { raw in try body(raw.bindMemory(to: Float.self)) }
    }

    /// Samples [start, start+n) along the leading dimension.
    public func rows(_ start: Int, _ n: Int) -> Tensor {
        precondition(!shape.isEmpty && start >= 0 && n >= 0 && start + n <= shape[0])
        let rowBytes = shape.dropFirst().reduce(1, *) * dtype.size
        var newShape = shape
        newShape[0] = n
        return Tensor(dtype: dtype, shape: newShape, bytes: Array(bytes[(start * rowBytes)..<((start + n) * rowBytes)]))
    }

    /// Joins tensors along the leading dimension; all must share dtype and trailing shape.
    public static func concatenate(_ parts: [Tensor]) throws -> Tensor {
        guard let first = parts.first else { throw StreamError.invalid("nothing to concatenate") }
        var total = 0
        var bytes = [UInt8]()
        bytes.reserveCapacity(parts.reduce(0) { $0 + $1.bytes.count })
        for part in parts {
            guard part.dtype == first.dtype, part.shape.count == first.shape.count, !part.shape.isEmpty,
                  part.shape.dropFirst().elementsEqual(first.shape.dropFirst())
            else { throw StreamError.invalid("cannot join tensors of shape \(first.shape) \(first.dtype.rawValue) and \(part.shape) \(part.dtype.rawValue)") }
            total += part.shape[0]
            bytes.append(contentsOf: part.bytes)
        }
        var shape = first.shape
        shape[0] = total
        return Tensor(dtype: first.dtype, shape: shape, bytes: bytes)
    }
}
