import Foundation
import Flow
import Numerics
import TensorStream

/// A snapshot decay schedule "start_step-start_value-slope-end_value" (CRD, docs/algorithms.md 4.3):
/// d(step) = start_value for step < start_step, else min(start_value + slope (step - start_step), end_value).
/// A snapshot is blended toward the policy as s <- d s + (1 - d) theta (d = 0: copy, d = 1: frozen).
public struct DecaySchedule: Equatable, CustomStringConvertible {
    public var startStep: Int
    public var startValue: Double
    public var slope: Double
    public var endValue: Double

    public init(startStep: Int, startValue: Double, slope: Double, endValue: Double) {
        self.startStep = startStep
        self.startValue = startValue
        self.slope = slope
        self.endValue = endValue
    }

    public init(parsing s: String) throws {
        let parts = s.split(separator: "-", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 4, let a = Int(parts[0]), a >= 0, let b = Double(parts[1]), let c = Double(parts[2]), let d = Double(parts[3]),
              b.isFinite, c.isFinite, d.isFinite, (0...1).contains(b), (0...1).contains(d), c >= 0 else {
            throw RLError("decay schedule `\(s)` must be start_step-start_value-slope-end_value (values in [0, 1], slope >= 0), e.g. 0-0.25-0.005-0.999")
        }
        self.init(startStep: a, startValue: b, slope: c, endValue: d)
    }

    public func value(at step: Int) -> Double {
        if step < startStep { return startValue }
        return min(startValue + Double(step - startStep) * slope, endValue)
    }

    public var description: String { "\(startStep)-\(startValue)-\(slope)-\(endValue)" }
}

/// A frozen copy of the policy's weights kept across rounds (CRD's "old" and "sampling" models,
/// DiffusionNFT's old policy), stored in the checkpoint as `<prefix>.<param name>` tensors.
public final class PolicySnapshot {
    public let prefix: String
    public let net: VelocityNet

    public init(prefix: String, copying policy: VelocityNet) throws {
        self.prefix = prefix
        net = try VelocityNet.uninitialized(policy.config)  // copyValues overwrites every parameter
        net.params.copyValues(from: policy.params)
        net.inferenceChunk = max(policy.inferenceChunk, 256)
    }

    /// The snapshot stored in `record`, or nil when the record has none of its tensors.
    public static func load(prefix: String, from record: Record, config: ModelConfig) throws -> PolicySnapshot? {
        guard record.names.contains(where: { $0.hasPrefix(prefix + ".") }) else { return nil }
        let net = try VelocityNet.uninitialized(config)
        do { try net.params.load(from: record, prefix: prefix + ".") } catch { throw RLError("snapshot `\(prefix)`: \(error)") }
        let s = try PolicySnapshot(prefix: prefix, copying: net)
        return s
    }

    /// s <- d s + (1 - d) theta, in float64 per element, rounded to float32.
    public func blend(toward policy: VelocityNet, decay d: Double) {
        for p in net.params.all {
            guard let q = policy.params[p.name] else { continue }
            if d <= 0 { p.value.update(from: q.value, count: p.count); continue }
            if d >= 1 { continue }
            for j in 0..<p.count { p.value[j] = Float(d * Double(p.value[j]) + (1 - d) * Double(q.value[j])) }
        }
    }

    public var tensors: [(String, Tensor)] { net.params.tensors(prefix: prefix + ".") }
}

extension VelocityNet {
    /// A network whose weights are the `<prefix><name>` tensors of a checkpoint (e.g. "crd.sampling.").
    public static func load(from record: Record, prefix: String) throws -> VelocityNet {
        guard let json = record.metadata["config"] else {
            throw StreamError.invalid("checkpoint has no `config` metadata; it is not a velocity model")
        }
        let net = try uninitialized(try ModelConfig.from(json: json))
        try net.params.load(from: record, prefix: prefix)
        return net
    }
}

/// Objectives that keep snapshots in the checkpoint: `rlstep` restores them from a continuing
/// checkpoint (else they start as copies of the starting policy) and saves them after the round.
public protocol RLSnapshotHolder: AnyObject {
    /// Restores snapshots stored in a continuing checkpoint (absent ones start from the policy).
    func loadSnapshots(from record: Record, config: ModelConfig) throws
    /// Tensors to add to the next checkpoint.
    var snapshotTensors: [(String, Tensor)] { get }
    /// Tensor prefix (with trailing dot) of the weights the next rollouts should come from
    /// (`sample --weights sampling`), stored as checkpoint metadata `rl.sampling_weights`.
    var samplingPrefix: String { get }
}

/// What CRD and DiffusionNFT share: forward-process training on the final samples `x` only,
/// group-normalised advantages mapped to [0, 1], minibatches of whole groups, stratified
/// training times with a shift, and the old snapshot that follows a decay schedule.
public class ForwardProcessObjective {
    public enum RewardStd: String, CaseIterable, Sendable { case global, group }

    public struct Common {
        /// Training times per sample per update (stratified).
        public var timesteps = 20
        /// Times are shift(range * u), u stratified in [0, 1).
        public var timestepRange = 0.99
        public var timeShift = 3.0
        /// Advantage clip c; the optimality probability is clip(A, -c, c) / (2c) + 1/2.
        public var advantageClip = 5.0
        /// Std of the advantage: `global` = std of the group-centred rewards over the buffer, `group` = within each group.
        public var rewardStd = RewardStd.global
        /// KL weight to the reference and the CFG scale of the reference's velocity.
        public var klWeight = 0.0
        public var klCFG = 1.0
        public var oldDecay = DecaySchedule(startStep: 0, startValue: 0, slope: 0.001, endValue: 0.5)
        public init() {}
    }

    public let common: Common
    public private(set) var advantages: [Double] = []
    /// Optimality probabilities / normalised advantages in [0, 1].
    public private(set) var probability: [Double] = []
    public private(set) var trainable: [Int] = []
    public var old: PolicySnapshot?
    var groupOf: [Int] = []          // sample -> group index
    var members: [[Int]] = []        // group index -> samples (buffer order)
    var D = 0
    var advClipped = 0
    var lastOldDecay = Double.nan
    /// Tests: reuse the self-normalising weights of the first call (they are stop-gradient, so a
    /// finite-difference check must hold them fixed).
    package var freezeWeights = false
    var frozen: [Double] = []
    var frozenAt = 0

    /// A stop-gradient weight: computed, or replayed when frozen.
    func weight(_ w: Double) -> Double {
        guard freezeWeights else { return w }
        defer { frozenAt += 1 }
        if frozenAt < frozen.count { return frozen[frozenAt] }
        frozen.append(w)
        return w
    }

    init(common: Common) { self.common = common }

    /// Group-normalised advantages A_i = (R_i - mean_g R) / (std + 1e-4) (public for tests).
    public static func advantages(rewards: [Float], groups: [Int64], std: RewardStd) -> [Double] {
        let r = rewards.map(Double.init)
        var byKey: [Int64: [Int]] = [:]
        for i in 0..<r.count { byKey[groups[i], default: []].append(i) }
        var centred = [Double](repeating: 0, count: r.count)
        for idx in byKey.values {
            let m = Stats.mean(idx.map { r[$0] })
            for i in idx { centred[i] = r[i] - m }
        }
        let pooled = (centred.reduce(0) { $0 + $1 * $1 } / Double(max(r.count, 1))).squareRoot()
        var out = [Double](repeating: 0, count: r.count)
        for idx in byKey.values {
            let s = std == .global ? pooled : (idx.reduce(0) { $0 + centred[$1] * centred[$1] } / Double(idx.count)).squareRoot()
            for i in idx { out[i] = centred[i] / (s + 1e-4) }
        }
        return out
    }

    func prepareCommon(_ ctx: RLContext, algo: String) throws {
        // This rank's checks (a rank that fails stops every rank here).
        try ctx.phase {
            let buf = ctx.buffer
            guard buf.rewards != nil else { throw RLError("{algo} \(algo) needs `reward` in every record (score the rollouts, e.g. `discrim score`)") }
            guard buf.groups != nil else { throw RLError("{algo} \(algo) needs `group` in every record (`sample --group G`): advantages and centring are per group") }
            if common.klWeight > 0 && common.klCFG != 1 {
                guard ctx.reference.config.numClasses > 0 else {
                    throw RLError("{kl_cfg} \(common.klCFG) needs a class-conditional reference (this one has no classes); pass {kl_cfg} 1")
                }
            }
            D = buf.dim
        }
        // Advantages, groups and minibatches are over every rank's samples (global indices).
        let rewards = ctx.rewards!, groups = ctx.groups!, N = ctx.total
        advantages = Self.advantages(rewards: rewards, groups: groups, std: common.rewardStd)
        let c = common.advantageClip
        advClipped = advantages.filter { abs($0) > c }.count
        probability = advantages.map { min(max($0, -c), c) / c / 2 + 0.5 }
        var index: [Int64: Int] = [:]
        members = []
        groupOf = [Int](repeating: 0, count: N)
        for i in 0..<N {
            if let g = index[groups[i]] { members[g].append(i); groupOf[i] = g } else {
                index[groups[i]] = members.count; groupOf[i] = members.count; members.append([i])
            }
        }
        trainable = Array(0..<N)
        if old == nil { old = try PolicySnapshot(prefix: "\(algo).old", copying: ctx.model) }
    }

    /// Whole groups, shuffled, packed greedily up to `size` samples (a larger group is its own minibatch).
    public func minibatches(of samples: [Int], size: Int, rng: inout CounterRNG) -> [[Int]]? {
        let wanted = Set(samples)
        let gs = members.map { $0.filter { wanted.contains($0) } }.filter { !$0.isEmpty }
        let order = shuffledIndices(gs.count, &rng)
        var out: [[Int]] = [], cur: [Int] = []
        for g in order {
            if !cur.isEmpty && cur.count + gs[g].count > size { out.append(cur); cur = [] }
            cur += gs[g]
        }
        if !cur.isEmpty { out.append(cur) }
        return out
    }

    /// Rows (timestep k, sample j) = k * B + j of forward-noised states for a minibatch; under a
    /// shard only this rank's samples, B of them, `positions[j]` being sample j's place in the
    /// minibatch (j itself in one process).
    struct Rows {
        var x: [Float] = [], t: [Float] = [], y: [Int] = [], x0: [Float] = [], u: [Float] = []
        var positions: [Int] = []
        var count: Int { t.count }
    }

    func makeRows(_ ctx: RLContext, samples: [Int], rng: inout CounterRNG) -> Rows {
        let buf = ctx.buffer
        let T = common.timesteps, D = buf.dim
        var r = Rows()
        var mine: [Int] = []
        for (j, i) in samples.enumerated() { if let l = ctx.local(i) { r.positions.append(j); mine.append(l) } }
        let B = mine.count
        r.x = [Float](repeating: 0, count: B * T * D); r.x0 = r.x; r.u = r.x
        r.t = [Float](repeating: 0, count: B * T); r.y = [Int](repeating: 0, count: B * T)
        let s = common.timeShift
        // Each sample draws T times and T D normals (one and two counter positions each): another
        // rank's sample is skipped by moving the counter, so every sample gets its draws of one process.
        let perSample = UInt64(T * (1 + 2 * D))
        var next = 0
        for i in samples.indices {
            guard next < B, r.positions[next] == i else {
                rng = CounterRNG(seed: rng.seed, stream: rng.stream, position: rng.position + perSample)
                continue
            }
            let j = next, o = buf.stateOffset(mine[j], buf.steps)
            next += 1
            for k in 0..<T {
                let u = common.timestepRange * (Double(k) + rng.uniform()) / Double(T)
                let t = Float(s * u / (1 + (s - 1) * u))
                let row = k * B + j
                r.t[row] = t
                r.y[row] = buf.labels[mine[j]]
                for d in 0..<D {
                    let x0 = buf.trajectory[o + d], e = Float(rng.normal())
                    r.x0[row * D + d] = x0
                    r.x[row * D + d] = (1 - t) * x0 + t * e
                    r.u[row * D + d] = e - x0
                }
            }
        }
        return r
    }

    /// What every forward-process loss needs of one minibatch: its noised rows, the old snapshot's
    /// and (with a KL weight) the reference's velocities, and the policy's velocity with its graph
    /// kept for the backward pass.
    struct MinibatchForward {
        let rows: Rows, vOld: [Float], vRef: [Float], useKL: Bool
        let policy: TrainingVelocity, v: [Float]
    }

    func forwardMinibatch(_ ctx: RLContext, samples: [Int], rng: inout CounterRNG) -> MinibatchForward {
        frozenAt = 0
        let rows = makeRows(ctx, samples: samples, rng: &rng)
        let vOld = old!.net.velocity(rows.x, t: rows.t, y: rows.y)
        let useKL = common.klWeight > 0
        let vRef = useKL ? referenceVelocity(ctx.reference, rows) : []
        let policy = TrainingVelocity(model: ctx.model, guidance: nil)
        let v = policy.forward(rows.x, t: rows.t, y: rows.y)
        return MinibatchForward(rows: rows, vOld: vOld, vRef: vRef, useKL: useKL, policy: policy, v: v)
    }

    /// The reference's velocity, guided with `--kl-cfg` (v_u + w (v_c - v_u)) when w != 1.
    func referenceVelocity(_ ref: VelocityNet, _ rows: Rows) -> [Float] {
        var v = ref.velocity(rows.x, t: rows.t, y: rows.y)
        let w = Float(common.klCFG)
        if w != 1 {
            let vu = ref.velocity(rows.x, t: rows.t, y: [Int](repeating: ref.config.numClasses, count: rows.count))
            for i in 0..<v.count { v[i] = vu[i] + w * (v[i] - vu[i]) }
        }
        return v
    }

    func commonDiagnostics() -> [(String, Double)] {
        [("adv_mean", Stats.mean(advantages)), ("adv_std", Stats.std(advantages)),
         ("adv_min", advantages.min() ?? .nan), ("adv_max", advantages.max() ?? .nan),
         ("adv_clip_frac", advantages.isEmpty ? 0 : Double(advClipped) / Double(advantages.count)),
         ("groups", Double(members.count)), ("timesteps", Double(common.timesteps)),
         ("kl_weight", common.klWeight), ("kl_cfg", common.klCFG)]
    }
}
