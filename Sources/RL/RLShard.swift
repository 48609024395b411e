import Foundation
import NN
import Numerics

/// One rank's part of a data-parallel `rlstep` round (docs/scaleout.md).
///
/// The single-process round is the reference: its buffer is the concatenation of the stream's
/// records, sample i being the i-th of that order (the *global* index). Under K ranks, rank r
/// holds the samples of records j with j % K == r only (its local buffer), and knows for each the
/// global index. Every rank draws the same minibatches of global indices and the same per-sample
/// random numbers; each computes the rows of the samples it holds; the gradients, and every batch
/// statistic a loss needs (AM's per-sample losses for the outlier quantile, CRD's implicit rewards
/// for the group centring, the rewards for the advantages), are summed over the ranks, so every
/// rank takes the single-process step up to float rounding of the sums.
///
/// Gathers of per-sample values are exact: each value has one non-zero addend (its owner's), so
/// the sum over ranks reproduces it bit for bit.
public final class RLShard {
    public let group: DataParallelGroup
    /// Samples over every rank.
    public let total: Int
    /// Local buffer index -> global index.
    public let globalIndex: [Int]
    private let localOf: [Int]
    /// Every sample's reward and group, in global order (set by the trainer before `prepare`;
    /// nil when some rank's records lack them, as one process treats a tensor missing from some
    /// records).
    public internal(set) var rewards: [Float]?
    public internal(set) var groups: [Int64]?

    public init(group: DataParallelGroup, total: Int, globalIndex: [Int]) {
        self.group = group
        self.total = total
        self.globalIndex = globalIndex
        var l = [Int](repeating: -1, count: total)
        for (i, g) in globalIndex.enumerated() { l[g] = i }
        localOf = l
    }

    /// The local index of global sample `g`; nil when another rank holds it.
    @inline(__always)
    public func local(_ g: Int) -> Int? { let l = localOf[g]; return l >= 0 ? l : nil }

    public func sum(_ v: inout [Double]) throws {
        guard !v.isEmpty else { return }
        try v.withUnsafeMutableBufferPointer { try group.sum($0.baseAddress!, count: $0.count) }
    }

    public func sum(_ x: Double) throws -> Double {
        var v = [x]
        try sum(&v)
        return v[0]
    }

    /// This rank's per-sample values (local order) -> every sample's (global order), exactly.
    public func gather(_ values: [Double]) throws -> [Double] {
        var all = [Double](repeating: 0, count: total)
        for (i, g) in globalIndex.enumerated() { all[g] = values[i] }
        try sum(&all)
        return all
    }

    /// One row of `values.count` numbers per rank, in rank order (exact).
    public func perRank(_ values: [Double]) throws -> [[Double]] {
        let n = values.count, K = group.size
        var all = [Double](repeating: 0, count: n * K)
        for j in 0..<n { all[group.rank * n + j] = values[j] }
        try sum(&all)
        return (0..<K).map { Array(all[($0 * n)..<(($0 + 1) * n)]) }
    }

    /// Largest / smallest over the ranks (NaN propagates, as in the single-process fold).
    public func max(_ x: Double) throws -> Double { try perRank([x]).map { $0[0] }.reduce(-Double.infinity) { $0.isNaN || $1.isNaN ? .nan : Swift.max($0, $1) } }
    public func min(_ x: Double) throws -> Double { try perRank([x]).map { $0[0] }.reduce(Double.infinity) { $0.isNaN || $1.isNaN ? .nan : Swift.min($0, $1) } }

    /// One collective phase (DataParallelGroup.collective).
    public func phase<T>(_ body: () throws -> T) throws -> T { try group.collective(body) }
}

extension RLContext {
    /// Samples of the whole round (over every rank).
    public var total: Int { shard?.total ?? buffer.count }

    /// The local buffer index of global sample `i` (the identity in one process); nil when
    /// another rank holds it.
    @inline(__always)
    public func local(_ i: Int) -> Int? { shard == nil ? i : shard!.local(i) }

    /// Every sample's reward and group, in global order.
    public var rewards: [Float]? { shard == nil ? buffer.rewards : shard!.rewards }
    public var groups: [Int64]? { shard == nil ? buffer.groups : shard!.groups }

    /// `body` as one collective phase under a shard (a failure on any rank stops all); else `body()`.
    public func phase<T>(_ body: () throws -> T) throws -> T {
        if let shard { return try shard.phase(body) }
        return try body()
    }

    /// Sums over the ranks (the value itself in one process).
    public func sum(_ x: Double) throws -> Double { try shard?.sum(x) ?? x }
    public func sum(_ v: inout [Double]) throws { try shard?.sum(&v) }
    public func max(_ x: Double) throws -> Double { try shard?.max(x) ?? x }
    public func min(_ x: Double) throws -> Double { try shard?.min(x) ?? x }
}
