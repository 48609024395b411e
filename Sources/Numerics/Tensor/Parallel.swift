import Dispatch

/// Splits a layer's hand loop over the tool's threads (the `--threads` OpenBLAS also gets).
/// Without it every element-wise layer ran on one core while OpenBLAS's other threads only spun
/// waiting for the next GEMM: about 45% of a sit-tiny training step on 2 cores (docs/engine.md).
///
/// Work items are contiguous ranges of independent items (elements, rows or samples), and each
/// item is computed exactly as the single loop computes it, so results are bitwise the same for
/// every thread count. Reductions across items (parameter gradients summed over rows) stay in
/// one sequential loop for the same reason.
public enum Parallel {
    nonisolated(unsafe) public private(set) static var workers = 1

    /// Set by `BLAS.setThreads`, so one setting governs both.
    public static func setWorkers(_ n: Int) { workers = max(1, n) }

    /// Calls `body` on a partition of 0..<count into at most `workers` contiguous ranges, no
    /// smaller than `grain` items each (below that the dispatch costs more than it saves). The
    /// ranges run concurrently: `body` must only write to its own items.
    @inline(__always)
    public static func forRanges(_ count: Int, grain: Int, _ body: (Range<Int>) -> Void) {
        let parts = min(workers, count / max(1, grain))
        if parts <= 1 {
            if count > 0 { body(0..<count) }
            return
        }
        DispatchQueue.concurrentPerform(iterations: parts) { p in
            body(count * p / parts ..< count * (p + 1) / parts)
        }
    }

    /// `forRanges` that also passes the range's index (0..<workers), for per-worker scratch.
    @inline(__always)
    public static func forRangesIndexed(_ count: Int, grain: Int, _ body: (Int, Range<Int>) -> Void) {
        let parts = min(workers, count / max(1, grain))
        if parts <= 1 {
            if count > 0 { body(0, 0..<count) }
            return
        }
        DispatchQueue.concurrentPerform(iterations: parts) { p in
            body(p, count * p / parts ..< count * (p + 1) / parts)
        }
    }
}
