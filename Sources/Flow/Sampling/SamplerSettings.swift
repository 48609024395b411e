import Foundation

/// Provenance: a sampler writes its settings as string metadata (docs/design.md: every record says
/// what made it), and `rlstep` rebuilds the identical sampler from that metadata plus the
/// recorded `traj.t`, so it can recompute log-probs with exactly the same step coefficients.
///
/// Keys: `sampler` (kind), `sampler.eta`, `sampler.steps`, `sampler.shift` (if known),
/// `sampler.sde_window` ("lo..<hi" or "all"), `sampler.cfg_scale`, `sampler.cfg_interval`
/// ("lo,hi" or "all"), `sampler.null_label`, `sampler.memoryless_offset`, and
/// `logprob_reduction` ("mean": mean over dimensions). Doubles are written with Swift's
/// shortest round-trip formatting, so parsing gives back the same bits.
extension Sampler {
    public var settings: [String: String] {
        var m: [String: String] = [
            "sampler": kind.rawValue,
            "sampler.eta": "\(eta)",
            "sampler.steps": "\(steps)",
            "sampler.sde_window": sdeWindow.map { "\($0.lowerBound)..<\($0.upperBound)" } ?? "all",
            "sampler.memoryless_offset": "\(memorylessOffset)",
            "logprob_reduction": GaussianLogProb.reduction,
        ]
        if let shift { m["sampler.shift"] = "\(shift)" }
        if let g = guidance {
            m["sampler.cfg_scale"] = "\(g.scale)"
            m["sampler.null_label"] = "\(g.nullLabel)"
            m["sampler.cfg_interval"] = g.interval.map { "\($0.lowerBound),\($0.upperBound)" } ?? "all"
        }
        return m
    }

    /// Rebuilds a sampler from `settings` metadata and the recorded time grid.
    public init(settings m: [String: String], times: [Float]) throws {
        guard let name = m["sampler"] else { throw SamplerError("metadata has no `sampler` key") }
        guard let kind = SamplerKind(rawValue: name) else { throw SamplerError("unknown sampler '\(name)'") }
        func double(_ key: String) throws -> Double? {
            guard let s = m[key] else { return nil }
            guard let v = Double(s) else { throw SamplerError("metadata \(key) = '\(s)' is not a number") }
            return v
        }
        if let r = m["logprob_reduction"], r != GaussianLogProb.reduction {
            throw SamplerError("log-prob reduction '\(r)' is not supported (only '\(GaussianLogProb.reduction)')")
        }
        if let s = m["sampler.steps"], Int(s) != times.count - 1 {
            throw SamplerError("metadata says \(s) steps but the time grid has \(times.count - 1)")
        }
        var window: Range<Int>?
        if let w = m["sampler.sde_window"], w != "all" {
            window = try Self.parseRange(w)
        }
        var guidance: Guidance?
        if let s = m["sampler.cfg_scale"] {
            guard let scale = Float(s) else { throw SamplerError("metadata sampler.cfg_scale = '\(s)' is not a number") }
            guard let nl = m["sampler.null_label"], let nullLabel = Int(nl) else { throw SamplerError("metadata has cfg_scale but no valid sampler.null_label") }
            var interval: ClosedRange<Float>?
            if let i = m["sampler.cfg_interval"], i != "all" { interval = try Self.parseInterval(i) }
            guidance = Guidance(scale: scale, nullLabel: nullLabel, interval: interval)
        }
        try self.init(kind: kind, times: times, eta: try double("sampler.eta"), sdeWindow: window, guidance: guidance,
                      memorylessOffset: try double("sampler.memoryless_offset"), shift: try double("sampler.shift"))
    }

    /// "lo..<hi" (also "lo:hi", "lo-hi") -> lo..<hi.
    public static func parseRange(_ s: String) throws -> Range<Int> {
        for sep in ["..<", ":", "-"] {
            let parts = s.components(separatedBy: sep)
            if parts.count == 2, let lo = Int(parts[0].trimmingCharacters(in: .whitespaces)),
               let hi = Int(parts[1].trimmingCharacters(in: .whitespaces)), lo <= hi {
                return lo..<hi
            }
        }
        throw SamplerError("cannot read step range '\(s)' (expected lo..<hi)")
    }

    /// "lo,hi" -> lo...hi.
    public static func parseInterval(_ s: String) throws -> ClosedRange<Float> {
        let parts = s.split(separator: ",")
        guard parts.count == 2, let lo = Float(parts[0].trimmingCharacters(in: .whitespaces)),
              let hi = Float(parts[1].trimmingCharacters(in: .whitespaces)), lo <= hi else {
            throw SamplerError("cannot read interval '\(s)' (expected lo,hi with lo <= hi)")
        }
        return lo...hi
    }
}
