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
