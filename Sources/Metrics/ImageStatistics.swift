import Foundation

/// The low-level image statistics DRL tracks for reward hacking (docs/algorithms.md section 3.8),
/// each computed per image on values mapped from [-1, 1] to [0, 1] (clamped), then averaged
/// over images:
///   brightness   = mean(L),  L = 0.299 R + 0.587 G + 0.114 B  (grey: L = the channel)
///   contrast     = std(L) (population std over the image's pixels)
///   whiteness    = mean(min_c)                               (grey: equals brightness)
///   saturation   = mean((max_c - min_c) / max_c), 0 where max_c = 0          (colour only)
///   colorfulness = sqrt(sd(rg)^2 + sd(yb)^2) + 0.3 sqrt(mean(rg)^2 + mean(yb)^2),
///                  rg = R - G, yb = (R + G) / 2 - B (Hasler-Suesstrunk on the [0, 1] scale; colour only)
public struct ImageStatistics: Sendable, Equatable {
    public private(set) var images = 0
    public private(set) var channels: Int?
    private var sums = [Double](repeating: 0, count: 5)

    public init() {}

    /// Whether `ImageStatistics` applies to a tensor of this shape: [B, C, H, W] with C = 1 or 3.
    public static func applies(to shape: [Int]) -> Bool {
        shape.count == 4 && (shape[1] == 1 || shape[1] == 3) && shape[2] > 0 && shape[3] > 0
    }

    /// Adds a batch x [B, C, H, W] (C = 1 or 3), values in [-1, 1].
    public mutating func add(_ x: UnsafeBufferPointer<Float>, shape: [Int]) throws {
        try add(terms: Self.terms(x, shape: shape), channels: shape[1])
    }

    /// What each image of a batch adds to the five sums (package: data-parallel `rlstep` gathers
    /// them from every rank and adds them in the single-process order).
    package static func terms(_ x: UnsafeBufferPointer<Float>, shape: [Int]) throws -> [[Double]] {
        guard Self.applies(to: shape) else { throw MetricsError("image statistics need x of shape [B, 1 or 3, H, W], got \(shape)") }
        let b = shape[0], c = shape[1], hw = shape[2] * shape[3]
        @inline(__always) func u(_ v: Float) -> Double { min(1, max(0, (Double(v) + 1) * 0.5)) }
        let np = Double(hw)
        var out: [[Double]] = []
        out.reserveCapacity(b)
        for i in 0..<b {
            let base = x.baseAddress! + i * c * hw
            var sl = 0.0, sl2 = 0.0, smin = 0.0, ssat = 0.0
            var srg = 0.0, srg2 = 0.0, syb = 0.0, syb2 = 0.0
            if c == 1 {
                for p in 0..<hw { let v = u(base[p]); sl += v; sl2 += v * v }
                smin = sl
            } else {
                for p in 0..<hw {
                    let r = u(base[p]), g = u(base[hw + p]), bl = u(base[2 * hw + p])
                    let l = 0.299 * r + 0.587 * g + 0.114 * bl
                    sl += l; sl2 += l * l
                    let mx = max(r, g, bl), mn = min(r, g, bl)
                    smin += mn
                    if mx > 0 { ssat += (mx - mn) / mx }
                    let rg = r - g, yb = 0.5 * (r + g) - bl
                    srg += rg; srg2 += rg * rg; syb += yb; syb2 += yb * yb
                }
            }
            let ml = sl / np
            var t = [ml, max(0, sl2 / np - ml * ml).squareRoot(), smin / np, 0, 0]
            if c == 3 {
                t[3] = ssat / np
                let mrg = srg / np, myb = syb / np
                let vrg = max(0, srg2 / np - mrg * mrg), vyb = max(0, syb2 / np - myb * myb)
                t[4] = (vrg + vyb).squareRoot() + 0.3 * (mrg * mrg + myb * myb).squareRoot()
            }
            out.append(t)
        }
        return out
    }

    /// Adds images given by their `terms`, in order.
    package mutating func add(terms: [[Double]], channels c: Int) throws {
        if let channels, channels != c { throw MetricsError("images change channel count within a stream (\(channels) then \(c))") }
        channels = c
        for t in terms {
            sums[0] += t[0]; sums[1] += t[1]; sums[2] += t[2]
            if c == 3 { sums[3] += t[3]; sums[4] += t[4] }
        }
        images += terms.count
    }

    /// Named averages: brightness, contrast, whiteness, and for colour saturation and colorfulness.
    public var values: [(name: String, value: Double)] {
        guard images > 0 else { return [] }
        let n = Double(images)
        var out = [("brightness", sums[0] / n), ("contrast", sums[1] / n), ("whiteness", sums[2] / n)]
        if channels == 3 { out += [("saturation", sums[3] / n), ("colorfulness", sums[4] / n)] }
        return out
    }
}
