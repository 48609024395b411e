import Foundation
import Numerics

/// DiT's `TimestepEmbedder`: a GLIDE sinusoid of `frequencyDim` (256) dimensions with
/// max_period 10000 (cos half first, then sin half) of the time value AS GIVEN, then
/// `mlp` = Linear(256, D) -> SiLU -> Linear(D, D). Names `<name>.mlp.0.*`, `<name>.mlp.2.*`.
/// The caller decides the time scale (our models pass t * timeScale, see `ModelConfig`).
/// Time carries no gradient here; backward only accumulates parameter gradients.
public final class TimestepEmbedder {
    public let dim: Int
    public let frequencyDim: Int
    public let fc1: Linear
    public let act = SiLU()
    public let fc2: Linear
    private let freq = Buffer()

    public init(_ ps: ParameterSet, _ name: String, dim: Int, frequencyDim: Int = 256) {
        self.dim = dim
        self.frequencyDim = frequencyDim
        fc1 = Linear(ps, name + ".mlp.0", in: frequencyDim, out: dim)
        fc2 = Linear(ps, name + ".mlp.2", in: dim, out: dim)
    }

    /// The sinusoidal features [batch, frequencyDim] of `t`, in float32 as PyTorch computes them.
    public static func frequencyEmbedding(_ t: [Float], dim: Int, maxPeriod: Float = 10000, into out: UnsafeMutablePointer<Float>) {
        let half = dim / 2
        for (b, tv) in t.enumerated() {
            let row = out + b * dim
            for i in 0..<half {
                let f = expf(-logf(maxPeriod) * Float(i) / Float(half))
                let a = tv * f
                row[i] = cosf(a)
                row[half + i] = sinf(a)
            }
            if dim % 2 == 1 { row[dim - 1] = 0 }
        }
    }

    /// DiT init: N(0, 0.02) weights, zero biases.
    public func initDiT(rng: inout CounterRNG) {
        fc1.weight.normal(std: 0.02, rng: &rng)
        fc1.bias?.fill(0)
        fc2.weight.normal(std: 0.02, rng: &rng)
        fc2.bias?.fill(0)
    }

    @discardableResult
    public func forward(_ t: [Float]) -> UnsafeMutablePointer<Float> {
        let f = freq.ensure(t.count * frequencyDim)
        Self.frequencyEmbedding(t, dim: frequencyDim, into: f)
        let h = fc1.forward(f, rows: t.count)
        let a = act.forward(h, count: t.count * dim)
        return fc2.forward(a, rows: t.count)
    }

    public func backward(_ dy: UnsafePointer<Float>) {
        let da = fc2.backward(dy)
        let dh = act.backward(da)
        fc1.backward(dh, into: nil)
    }
}

/// MAE / DiT fixed 2-D sin-cos positional embedding [gridSize*gridSize, dim]: for token
/// (row i, col j) the first dim/2 entries encode j, the last dim/2 encode i, each as
/// [sin(pos * omega), cos(pos * omega)] with omega_k = 1 / 10000^(k / (dim/4)). Computed in
/// float64 like numpy, then rounded.
public func sinCosPositionalEmbedding2D(dim: Int, gridSize: Int) -> [Float] {
    precondition(dim % 4 == 0, "sin-cos positional embedding needs a width divisible by 4")
    let quarter = dim / 4
    var out = [Float](repeating: 0, count: gridSize * gridSize * dim)
    for i in 0..<gridSize {
        for j in 0..<gridSize {
            let base = (i * gridSize + j) * dim
            for (half, pos) in [(0, Double(j)), (1, Double(i))] {
                for k in 0..<quarter {
                    let omega = 1 / pow(10000.0, Double(k) / Double(quarter))
                    out[base + half * dim / 2 + k] = Float(sin(pos * omega))
                    out[base + half * dim / 2 + quarter + k] = Float(cos(pos * omega))
                }
            }
        }
    }
    return out
}
