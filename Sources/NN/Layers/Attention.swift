import Foundation
import Numerics

/// Multi-head self-attention as timm's `Attention` (used by DiT): a fused `qkv` Linear
/// [3*width, width] whose output columns are laid out (3, heads, headDim), scaled dot-product
/// softmax attention per (sample, head), heads concatenated, then a `proj` Linear.
/// Names: `<name>.qkv.weight/bias`, `<name>.proj.weight/bias`.
///
/// Input [batch * tokens, width]; all tokens of all samples go through the two Linears in one
/// sgemm each; the per-(sample, head) products use strided sgemm on the qkv buffer, no copies.
public final class MultiHeadAttention {
    public let width: Int
    public let heads: Int
    public let headDim: Int
    public let qkv: Linear
    public let proj: Linear
    private var batch = 0, tokens = 0
    private var qkvOut: UnsafeMutablePointer<Float>?
    private let probs = Buffer()      // [batch, heads, tokens, tokens] softmax(QK^T * scale)
    private let context = Buffer()    // [batch * tokens, width] heads concatenated
    private let dContext = Buffer()
    private let dQKV = Buffer()
    private let dScores = Buffer()    // [workers, tokens, tokens] scratch

    public init(_ ps: ParameterSet, _ name: String, width: Int, heads: Int) {
        precondition(width % heads == 0, "width \(width) is not divisible by \(heads) heads")
        self.width = width
        self.heads = heads
        headDim = width / heads
        qkv = Linear(ps, name + ".qkv", in: width, out: 3 * width)
        proj = Linear(ps, name + ".proj", in: width, out: width)
    }

    @discardableResult
    public func forward(_ x: UnsafePointer<Float>, batch: Int, tokens: Int) -> UnsafeMutablePointer<Float> {
        self.batch = batch
        self.tokens = tokens
        let rows = batch * tokens, T = tokens, W = width, hd = headDim
        let q = qkv.forward(x, rows: rows)
        qkvOut = q
        let p = probs.ensure(batch * heads * T * T)
        let ctx = context.ensure(rows * W)
        let scale = 1 / Float(hd).squareRoot()
        let heads = heads
        // samples are independent; their small GEMMs run single-threaded inside OpenBLAS, so the
        // workers split the samples between them
        Parallel.forRanges(batch, grain: 2) { range in
            for b in range {
                for h in 0..<heads {
                    let base = q + b * T * 3 * W + h * hd
                    let P = p + (b * heads + h) * T * T
                    BLAS.sgemm(transB: true, m: T, n: T, k: hd, alpha: scale, a: base, lda: 3 * W, b: base + W, ldb: 3 * W, beta: 0, c: P, ldc: T)
                    for i in 0..<T {
                        let row = P + i * T
                        let mx = vmax(row, T)
                        for j in 0..<T { row[j] = fastExp(row[j] - mx) }  // vectorises
                        let inv = 1 / vsum(row, T)
                        for j in 0..<T { row[j] *= inv }
                    }
                    BLAS.sgemm(m: T, n: hd, k: T, a: P, lda: T, b: base + 2 * W, ldb: 3 * W, beta: 0, c: ctx + b * T * W + h * hd, ldc: W)
                }
            }
        }
        return proj.forward(ctx, rows: rows)
    }

    @discardableResult
    public func backward(_ dy: UnsafePointer<Float>, paramGrads: Bool = true) -> UnsafeMutablePointer<Float> {
        guard let q = qkvOut else { preconditionFailure("MultiHeadAttention.backward before forward") }
        let rows = batch * tokens, T = tokens, W = width, hd = headDim
        let dctx = dContext.ensure(rows * W)
        proj.backward(dy, into: dctx, paramGrads: paramGrads)
        let dq = dQKV.ensure(rows * 3 * W)
        let dSAll = dScores.ensure(Parallel.workers * T * T)  // one scratch per worker
        let p = probs.pointer
        let scale = 1 / Float(hd).squareRoot()
        let heads = heads
        Parallel.forRangesIndexed(batch, grain: 2) { worker, range in
          let dS = dSAll + worker * T * T
          for b in range {
            for h in 0..<heads {
                let base = q + b * T * 3 * W + h * hd
                let dbase = dq + b * T * 3 * W + h * hd
                let P = p + (b * heads + h) * T * T
                let dO = dctx + b * T * W + h * hd
                // dP = dO V^T ; dV = P^T dO
                BLAS.sgemm(transB: true, m: T, n: T, k: hd, a: dO, lda: W, b: base + 2 * W, ldb: 3 * W, beta: 0, c: dS, ldc: T)
                BLAS.sgemm(transA: true, m: T, n: hd, k: T, a: P, lda: T, b: dO, ldb: W, beta: 0, c: dbase + 2 * W, ldc: 3 * W)
                // softmax backward: dS = P * (dP - rowsum(dP * P))
                for i in 0..<T {
                    let pr = P + i * T, dr = dS + i * T
                    let s = vdot(pr, dr, T)
                    for j in 0..<T { dr[j] = pr[j] * (dr[j] - s) }
                }
                // dQ = scale dS K ; dK = scale dS^T Q
                BLAS.sgemm(m: T, n: hd, k: T, alpha: scale, a: dS, lda: T, b: base + W, ldb: 3 * W, beta: 0, c: dbase, ldc: 3 * W)
                BLAS.sgemm(transA: true, m: T, n: hd, k: T, alpha: scale, a: dS, lda: T, b: base, ldb: 3 * W, beta: 0, c: dbase + W, ldc: 3 * W)
            }
          }
        }
        return qkv.backward(dq, paramGrads: paramGrads)
    }
}
