import ArgumentParser
import Foundation
import Shared

extension ForwardProcessObjective.RewardStd: ExpressibleByArgument {}

/// Flags of the forward-process objectives (`--algo crd`, `--algo nft`); defaults are CRD's
/// (docs/algorithms.md 4.5) or DiffusionNFT's where they differ.
struct ForwardProcessFlags: ParsableArguments {
    @Option(name: .customLong("timesteps"), help: "crd/nft: training times per sample per update (stratified).") var timesteps = 20
    @Option(name: .customLong("timestep-range"), help: "crd/nft: times are shift(range * u), u stratified in [0, 1).") var timestepRange = 0.99
    @Option(name: .customLong("time-shift"), help: "crd/nft: time shift s of shift(t) = s t / (1 + (s - 1) t).") var timeShift = 3.0
    @Option(name: .customLong("reward-std"), help: "crd/nft: advantage std: global (of the group-centred rewards over the buffer) or group.") var rewardStd: ForwardProcessObjective.RewardStd = .global
    @Option(name: .customLong("kl-weight"), help: "crd/nft: KL weight to the reference (default: crd 0.1, nft 0).") var klWeight: Double?
    @Option(name: .customLong("kl-cfg"), help: "crd/nft: CFG scale of the reference velocity in the KL (default: crd 4.5, nft 1).") var klCFG: Double?
    @Option(name: .customLong("old-decay"), help: "crd/nft: decay schedule start_step-start_value-slope-end_value of the old snapshot (default: crd 0-0.25-0.005-0.999, nft 0-0-0.001-0.5).") var oldDecay: String?
    @Option(name: .customLong("sampling-decay"), help: "crd: decay schedule of the sampling snapshot.") var samplingDecay = "75-0-0.0075-0.999"
    @Option(name: .customLong("crd-beta"), help: "crd: scale beta of the implicit reward.") var crdBeta = 1.0
    @Flag(name: .customLong("no-adaptive-weighting"), help: "crd: plain squared errors in the implicit reward (no self-normalised weights).") var noAdaptiveWeighting = false
    @Flag(name: .customLong("no-reward-adaptive-kl"), help: "crd: the same KL weight for every sample.") var noRewardAdaptiveKL = false
    @Option(name: .customLong("kl-floor"), help: "crd: KL weight of the lowest-reward sample with the reward-adaptive KL.") var klFloor = 1e-4
    @Option(name: .customLong("nft-beta"), help: "nft: distance beta of the implicit policies from the old one.") var nftBeta = 1.0

    func validate(algo: String) throws {
        guard algo == "crd" || algo == "nft" else { return }
        if timesteps < 1 || !(timestepRange > 0 && timestepRange <= 1) || !(timeShift > 0) { throw ValidationError("--timesteps >= 1, --timestep-range in (0, 1], --time-shift > 0") }
        if let w = klWeight, !(w >= 0) { throw ValidationError("--kl-weight must be >= 0") }
        if let w = klCFG, !w.isFinite { throw ValidationError("--kl-cfg must be finite") }
        if !(crdBeta > 0) || !(nftBeta > 0) || !(klFloor >= 0) { throw ValidationError("--crd-beta and --nft-beta must be > 0, --kl-floor >= 0") }
        do {
            if let d = oldDecay { _ = try DecaySchedule(parsing: d) }
            _ = try DecaySchedule(parsing: samplingDecay)
        } catch { throw ValidationError("\(error)") }
    }

    /// The objective, with snapshots restored from a continuing checkpoint (`record`).
    func objective(algo: String, advClip: Double, record: Record?, config: ModelConfig) throws -> RLObjective & RLSnapshotHolder {
        var c = ForwardProcessObjective.Common()
        c.timesteps = timesteps; c.timestepRange = timestepRange; c.timeShift = timeShift
        c.rewardStd = rewardStd; c.advantageClip = advClip
        let o: RLObjective & RLSnapshotHolder
        if algo == "crd" {
            var opt = CRD.Options()
            c.klWeight = klWeight ?? opt.common.klWeight
            c.klCFG = klCFG ?? opt.common.klCFG
            c.oldDecay = try oldDecay.map { try DecaySchedule(parsing: $0) } ?? opt.common.oldDecay
            opt.common = c
            opt.beta = crdBeta; opt.adaptiveWeighting = !noAdaptiveWeighting; opt.rewardAdaptiveKL = !noRewardAdaptiveKL
            opt.klFloor = klFloor; opt.samplingDecay = try DecaySchedule(parsing: samplingDecay)
            o = CRD(options: opt)
        } else {
            var opt = DiffusionNFT.Options()
            c.klWeight = klWeight ?? 0
            c.klCFG = klCFG ?? 1
            c.oldDecay = try oldDecay.map { try DecaySchedule(parsing: $0) } ?? opt.common.oldDecay
            opt.common = c
            opt.beta = nftBeta
            o = DiffusionNFT(options: opt)
        }
        if let record { try o.loadSnapshots(from: record, config: config) }
        return o
    }

    /// `rl.options` text for the checkpoint.
    func describe(_ o: RLObjective) -> String {
        if let crd = o as? CRD {
            let p = crd.options, c = p.common
            return "timesteps=\(c.timesteps) timestep_range=\(c.timestepRange) time_shift=\(c.timeShift) reward_std=\(c.rewardStd.rawValue) adv_clip=\(c.advantageClip) kl_weight=\(c.klWeight) kl_cfg=\(c.klCFG) old_decay=\(c.oldDecay) sampling_decay=\(p.samplingDecay) crd_beta=\(p.beta) adaptive_weighting=\(p.adaptiveWeighting) reward_adaptive_kl=\(p.rewardAdaptiveKL) kl_floor=\(p.klFloor)"
        }
        if let nft = o as? DiffusionNFT {
            let c = nft.options.common
            return "timesteps=\(c.timesteps) timestep_range=\(c.timestepRange) time_shift=\(c.timeShift) reward_std=\(c.rewardStd.rawValue) adv_clip=\(c.advantageClip) kl_weight=\(c.klWeight) kl_cfg=\(c.klCFG) old_decay=\(c.oldDecay) nft_beta=\(nft.options.beta)"
        }
        return ""
    }
}
