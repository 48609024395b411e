import Foundation

/// Philox4x32-10 (Salmon et al., SC'11), the counter-based generator PyTorch and JAX use:
/// a keyed bijection of a 128-bit counter. Randomness is a pure function of (key, counter), so
/// the noise of sample `id` depends only on (seed, id), whatever the batch size or thread count.
@inline(__always)
public func philox4x32(_ counter: (UInt32, UInt32, UInt32, UInt32), key: (UInt32, UInt32)) -> (UInt32, UInt32, UInt32, UInt32) {
    var (c0, c1, c2, c3) = counter
    var (k0, k1) = key
    for round in 0..<10 {
        if round > 0 {
            k0 &+= 0x9E37_79B9
            k1 &+= 0xBB67_AE85
        }
        let p0 = UInt64(0xD251_1F53) &* UInt64(c0)
        let p1 = UInt64(0xCD9E_8D57) &* UInt64(c2)
        let n0 = UInt32(truncatingIfNeeded: p1 >> 32) ^ c1 ^ k0
        let n1 = UInt32(truncatingIfNeeded: p1)
        let n2 = UInt32(truncatingIfNeeded: p0 >> 32) ^ c3 ^ k1
        let n3 = UInt32(truncatingIfNeeded: p0)
        (c0, c1, c2, c3) = (n0, n1, n2, n3)
    }
    return (c0, c1, c2, c3)
}

/// The toolkit's noise: standard normal and uniform variates addressed by
/// (seed, sample id, stream, element index). `stream` separates independent uses for one
/// sample (stream 0: the initial noise; stream k + 1: the noise injected at sampling step k;
/// other tools pick their own streams and document them).
public struct CounterNoise: Sendable {
    public let seed: UInt64

    public init(seed: UInt64) { self.seed = seed }

    @inline(__always)
    func block(id: UInt64, stream: UInt32, index: UInt64) -> (UInt32, UInt32, UInt32, UInt32) {
        // Counter: (block index, stream, id low, id high); key: the seed. The block index is
        // 32 bits: 2^32 blocks of 4 variates per (id, stream) is far beyond any image.
        philox4x32((UInt32(truncatingIfNeeded: index), stream, UInt32(truncatingIfNeeded: id), UInt32(truncatingIfNeeded: id >> 32)),
                   key: (UInt32(truncatingIfNeeded: seed), UInt32(truncatingIfNeeded: seed >> 32)))
    }

    /// Uniform in (0, 1), never 0, so it can be logged.
    @inline(__always)
    static func open01(_ x: UInt32) -> Double { (Double(x) + 0.5) * (1.0 / 4_294_967_296.0) }

    /// Fills `out` with N(0, 1) variates: element i of (id, stream). Box-Muller on each block's
    /// two pairs, computed in Double, so the values do not depend on how the caller splits work.
    public func fillNormal(id: UInt64, stream: UInt32, into out: UnsafeMutableBufferPointer<Float>, startIndex: Int = 0) {
        var i = 0
        let n = out.count
        while i < n {
            let element = startIndex + i
            let blockIndex = element / 4
            let r = block(id: id, stream: stream, index: UInt64(blockIndex))
            let radius0 = (-2 * log(Self.open01(r.0))).squareRoot()
            let angle0 = 2 * Double.pi * Self.open01(r.1)
            let radius1 = (-2 * log(Self.open01(r.2))).squareRoot()
            let angle1 = 2 * Double.pi * Self.open01(r.3)
            let values = (Float(radius0 * cos(angle0)), Float(radius0 * sin(angle0)),
                          Float(radius1 * cos(angle1)), Float(radius1 * sin(angle1)))
            var lane = element % 4
            while lane < 4 && i < n {
                switch lane {
                case 0: out[i] = values.0
                case 1: out[i] = values.1
                case 2: out[i] = values.2
                default: out[i] = values.3
                }
                lane += 1
                i += 1
            }
        }
    }

    public func normals(id: UInt64, stream: UInt32, count: Int) -> [Float] {
        [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            fillNormal(id: id, stream: stream, into: buffer)
            initialized = count
        }
    }

    /// Uniform (0, 1) variates: element i of (id, stream).
    public func uniforms(id: UInt64, stream: UInt32, count: Int) -> [Double] {
        var out = [Double](repeating: 0, count: count)
        for b in 0..<(count + 3) / 4 {
            let r = block(id: id, stream: stream, index: UInt64(b))
            let lanes = [r.0, r.1, r.2, r.3]
            for lane in 0..<4 where b * 4 + lane < count { out[b * 4 + lane] = Self.open01(lanes[lane]) }
        }
        return out
    }
}

/// A sequential generator for training-time choices (minibatch order, timesteps, dropout):
/// Philox driven by an incrementing counter, so a run that records (seed, draws so far) can
/// resume exactly.
public struct CounterRNG: RandomNumberGenerator, Sendable {
    public let seed: UInt64
    public let stream: UInt32
    /// Number of draws made; save it to resume the sequence exactly.
    public private(set) var position: UInt64

    public init(seed: UInt64, stream: UInt32 = 0, position: UInt64 = 0) {
        self.seed = seed
        self.stream = stream
        self.position = position
    }

    public mutating func next() -> UInt64 {
        let r = philox4x32((UInt32(truncatingIfNeeded: position), UInt32(truncatingIfNeeded: position >> 32), stream, 0x5EED),
                           key: (UInt32(truncatingIfNeeded: seed), UInt32(truncatingIfNeeded: seed >> 32)))
        position += 1
        return UInt64(r.0) << 32 | UInt64(r.1)
    }

    /// Uniform in [0, 1).
    public mutating func uniform() -> Double { Double(next() >> 11) * (1.0 / 9_007_199_254_740_992.0) }

    /// Standard normal (Box-Muller, one of the pair).
    public mutating func normal() -> Double {
        let u1 = (Double(next() >> 11) + 0.5) * (1.0 / 9_007_199_254_740_992.0)
        let u2 = uniform()
        return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }
}
