import Foundation

/// The sampling time grid: `steps + 1` decreasing times from t = 1 (noise) to t = 0 (data).
///
/// Uniform in t, optionally shifted with t' = s t / (1 + (s - 1) t) (s > 1 spends more steps
/// near the noise end, as SD3/FLUX "time shift" does). Computed in Double and rounded once to
/// Float: the Float grid is what `traj.t` stores and what every step's coefficients are computed
/// from, so a process that rebuilds a sampler from a recorded `traj.t` gets bit-identical steps.
public enum TimeGrid {
    public static func make(steps: Int, shift: Double = 1) -> [Float] {
        precondition(steps >= 1, "TimeGrid: steps must be >= 1")
        precondition(shift > 0 && shift.isFinite, "TimeGrid: shift must be positive")
        return (0...steps).map { k in
            if k == 0 { return 1 }
            if k == steps { return 0 }
            let t = 1 - Double(k) / Double(steps)
            return Float(shifted(t, shift: shift))
        }
    }

    /// t' = s t / (1 + (s - 1) t); maps [0, 1] onto itself, monotone, fixes both ends.
    @inline(__always)
    public static func shifted(_ t: Double, shift s: Double) -> Double {
        s == 1 ? t : s * t / (1 + (s - 1) * t)
    }

    /// Checks that `times` is a usable grid: at least two entries, all in [0, 1], strictly
    /// decreasing. (Grids recorded by `sample` start at 1 and end at 0; the samplers accept any
    /// such segment so tests can probe single steps.)
    public static func validate(_ times: [Float]) -> String? {
        guard times.count >= 2 else { return "time grid needs at least 2 times" }
        for (i, t) in times.enumerated() {
            guard t.isFinite, t >= 0, t <= 1 else { return "time \(i) = \(t) is outside [0, 1]" }
            if i > 0, !(t < times[i - 1]) { return "times must strictly decrease (t[\(i - 1)] = \(times[i - 1]), t[\(i)] = \(t))" }
        }
        return nil
    }
}
