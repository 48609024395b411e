import CKernels

/// Branch-free float32 exp that the compiler can vectorise (glibc's expf/tanhf are scalar calls
/// and dominated the GELU/SiLU/softmax time). Cephes `expf`: n = round(x log2 e), r = x - n ln 2
/// in two parts, degree-5 polynomial, scale by 2^n through the exponent bits. Relative error
/// about 2e-7 over the clamped range [-87.3, 88.3] (outside it: ~1e-38 or ~2e38, never Inf/NaN).
@inline(__always)
public func fastExp(_ v: Float) -> Float {
    let x0 = v < -87.3 ? -87.3 : (v > 88.3 ? 88.3 : v)
    // round to nearest by the 1.5 * 2^23 trick (a floor() call would block vectorisation)
    let n = (x0 * 1.44269504088896341 + 12582912.0) - 12582912.0
    let x = x0 - n * 0.693359375 + n * 2.12194440e-4
    let z = x * x
    var y: Float = 1.9875691500e-4
    y = y * x + 1.3981999507e-3
    y = y * x + 8.3334519073e-3
    y = y * x + 4.1665795894e-2
    y = y * x + 1.6666665459e-1
    y = y * x + 5.0000001201e-1
    y = y * z + x + 1
    let bits = UInt32(truncatingIfNeeded: Int32(n) &+ 127) << 23
    return y * Float(bitPattern: bits)
}

/// tanh through fastExp: 1 - 2 / (1 + e^{2u}); absolute error ~3e-7, exactly +-1 in the tails.
@inline(__always)
public func fastTanh(_ u: Float) -> Float {
    1 - 2 / (1 + fastExp(2 * u))
}

// Reductions with eight independent lanes (SIMD8), so sums vectorise; float addition order then
// differs from a sequential loop by normal rounding.

/// sum p[0..<n]
@inline(__always)
public func vsum(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = SIMD8<Float>(repeating: 0)
    let raw = UnsafeRawPointer(p)
    var i = 0
    while i + 8 <= n {
        acc += raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
        i += 8
    }
    var s = acc.sum()
    while i < n { s += p[i]; i += 1 }
    return s
}

/// sum a[i] * b[i]
@inline(__always)
public func vdot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = SIMD8<Float>(repeating: 0)
    let ra = UnsafeRawPointer(a), rb = UnsafeRawPointer(b)
    var i = 0
    while i + 8 <= n {
        acc += ra.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) * rb.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self)
        i += 8
    }
    var s = acc.sum()
    while i < n { s += a[i] * b[i]; i += 1 }
    return s
}

/// sum (p[i] - m)^2
@inline(__always)
public func vsumSquaredDeviation(_ p: UnsafePointer<Float>, _ m: Float, _ n: Int) -> Float {
    var acc = SIMD8<Float>(repeating: 0)
    let mv = SIMD8<Float>(repeating: m)
    let raw = UnsafeRawPointer(p)
    var i = 0
    while i + 8 <= n {
        let d = raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD8<Float>.self) - mv
        acc += d * d
        i += 8
    }
    var s = acc.sum()
    while i < n { let d = p[i] - m; s += d * d; i += 1 }
    return s
}

/// max p[0..<n] (n >= 1); in C (CKernels, AVX-512/AVX2 lanes): a maximum is exact in any order.
@inline(__always)
public func vmax(_ p: UnsafePointer<Float>, _ n: Int) -> Float {
    drl_max(p, n)
}
