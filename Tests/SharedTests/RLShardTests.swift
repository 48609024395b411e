import Foundation
import XCTest
import Shared

/// K threads as a DataParallelGroup: every `sum` waits for all members and adds their buffers in
/// rank order (as MPI's reduction of two ranks does), with a time limit so a member that skipped
/// a collective fails the test instead of hanging it.
final class ThreadHub {
    let size: Int
    private let cond = NSCondition()
    private var slots: [[Double]]
    private var arrived = 0, generation = 0
    private var result: [[Double]] = []

    init(size: Int) { self.size = size; slots = [[Double]](repeating: [], count: size) }

    /// Every member's values, in rank order, once all have arrived.
    func exchange(_ values: [Double], rank: Int) throws -> [[Double]] {
        cond.lock()
        defer { cond.unlock() }
        let gen = generation
        slots[rank] = values
        arrived += 1
        if arrived == size {
            result = slots
            arrived = 0
            generation += 1
            cond.broadcast()
        } else {
            let deadline = Date().addingTimeInterval(60)
            while generation == gen {
                if !cond.wait(until: deadline) { throw RLError("rank \(rank) waited 60 s in a sum: another member skipped it") }
            }
        }
        guard result.allSatisfy({ $0.count == values.count }) else { throw RLError("members summed buffers of different sizes") }
        return result
    }
}

final class ThreadMember: DataParallelGroup {
    let rank: Int
    let hub: ThreadHub
    var size: Int { hub.size }
    init(rank: Int, hub: ThreadHub) { self.rank = rank; self.hub = hub }

    // Float buffers travel as Double (exact) and are added as Float in rank order, like MPI_FLOAT.
    func sum(_ buffer: UnsafeMutablePointer<Float>, count: Int) throws {
        let all = try hub.exchange((0..<count).map { Double(buffer[$0]) }, rank: rank)
        for i in 0..<count {
            var s = Float(all[0][i])
            for r in 1..<size { s += Float(all[r][i]) }
            buffer[i] = s
        }
    }

    func sum(_ buffer: UnsafeMutablePointer<Double>, count: Int) throws {
        let all = try hub.exchange(Array(UnsafeBufferPointer(start: buffer, count: count)), rank: rank)
        for i in 0..<count {
            var s = all[0][i]
            for r in 1..<size { s += all[r][i] }
            buffer[i] = s
        }
    }
}

/// The data-parallel `rlstep` round (RLShard) in one process, two threads standing for two
/// ranks, so `make test` checks what `make test-mpi` checks under mpirun: each objective's round
/// on a sharded buffer against the single-process round on the whole one.
final class RLShardTests: XCTestCase {
    var dir = ""
    var savedThreads = 1

    override func setUpWithError() throws {
        dir = try TestSupport.temporaryDirectory()
        savedThreads = BLAS.threads
        BLAS.setThreads(1)
        let net = try VelocityNet.make(RLGradientTests.config, seed: 1)
        var g = GradCheck()
        for p in net.params.all { p.values = p.values.map { $0 + Float(g.randoms(1, std: 0.05)[0]) } }
        try net.save(to: dir + "/cur.safetensors", metadata: ["step": "0"])
        for kind in [SamplerKind.memorylessLL, .flowgrpo] {
            let sampler = try Sampler(kind: kind, steps: 6)
            let writer = try TensorStreamWriter(path: dir + "/\(kind.rawValue).tzst", level: 1)
            let D = net.sampleDimension
            for part in 0..<5 {
                let n = 6
                let ids = (0..<n).map { Int64(part * n + $0) }
                let labels = ids.map { Int($0 % 2) }
                let res = sampler.sample(model: net, labels: labels, ids: ids, seed: 3, record: true)
                var r = Record()
                r["x"] = Tensor(res.x, shape: [n, 1, 1, D])
                r["y"] = Tensor(labels.map(Int64.init), shape: [n])
                r["id"] = Tensor(ids, shape: [n])
                r["group"] = Tensor(ids.map { $0 / 4 }, shape: [n])
                r["traj.x"] = Tensor(res.trajectory!, shape: [n, 7, 1, 1, D])
                r["traj.t"] = Tensor(res.times, shape: [7])
                r["traj.logp"] = Tensor(res.logProbs!, shape: [n, 6])
                r["reward"] = Tensor((0..<n).map { b in res.x[b * D] - res.x[b * D + 1] + 0.3 * res.x[b * D + 2] * res.x[b * D + 2] }, shape: [n])
                r["reward.grad"] = Tensor((0..<n).flatMap { b in [Float(1), -1, 0.6 * res.x[b * D + 2]] }, shape: [n, 1, 1, D])
                r.metadata = sampler.settings
                r.metadata["per_record"] = "traj.t"
                try writer.write(r)
            }
            try writer.finish()
        }
    }

    override func tearDown() {
        BLAS.setThreads(savedThreads)
        try? FileManager.default.removeItem(atPath: dir)
    }

    func objective(_ algo: String) -> RLObjective {
        switch algo {
        case "am":
            var o = AdjointMatching.Options()
            o.lambda = 2
            return AdjointMatching(options: o)
        case "grpo":
            var o = GRPO.Options()
            o.clipRange = 0.2; o.beta = 0.05
            return GRPO(options: o)
        case "crd":
            var o = CRD.Options()
            o.common.timesteps = 3; o.common.klWeight = 0.05; o.common.klCFG = 1
            return CRD(options: o)
        default:
            var o = DiffusionNFT.Options()
            o.common.timesteps = 3; o.common.klWeight = 0.05
            return DiffusionNFT(options: o)
        }
    }

    /// One round: the final weights (and EMA, Adam moments) as one array, and the metrics.
    func round(_ algo: String, member: ThreadMember?) throws -> ([Float], [(String, Double)]) {
        let net = try VelocityNet.load(path: dir + "/cur.safetensors")
        let reference = try VelocityNet.load(path: dir + "/cur.safetensors")
        let optimizer = AdamW(net.params, lr: 1e-3, weightDecay: 0)
        let ema = EMA(net.params, decay: 0.999)
        var o = RLTrainOptions()
        o.epochs = 2; o.minibatch = 8; o.lr = 1e-3; o.seed = 5
        let trainer = RLTrainer(model: net, reference: reference, optimizer: optimizer, ema: ema, step: 0, options: o)
        let path = dir + "/" + (algo == "am" ? "memoryless-ll" : "flowgrpo") + ".tzst"
        let final = algo == "crd" || algo == "nft"
        let objective = objective(algo)
        let reader = try TensorStreamReader(path: path)
        let m: [(String, Double)]
        if let member {
            let part = try RolloutBuffer.readShard(reader, nullLabel: 2, rank: member.rank, size: member.size, finalSamples: final)
            XCTAssertEqual(part.total, 30)
            XCTAssertEqual(part.records, 5)
            XCTAssertEqual(part.buffer.count, member.rank == 0 ? 18 : 12)
            m = try trainer.run(objective: objective, buffer: part.buffer, shard: RLShard(group: member, total: part.total, globalIndex: part.globalIndex))
        } else {
            let buffer = final ? try RolloutBuffer.readFinal(reader, nullLabel: 2) : try RolloutBuffer.read(reader, nullLabel: 2)
            m = try trainer.run(objective: objective, buffer: buffer)
        }
        let record = TrainingCheckpoint.record(model: net, optimizer: optimizer, ema: ema, step: trainer.step, parentDigest: nil, metadata: [:])
        return (try record.names.sorted().flatMap { try record[$0]!.floats() }, m)
    }

    func testTwoThreadRanksEqualOneProcessForEveryObjective() throws {
        for algo in ["am", "grpo", "crd", "nft"] {
            let (single, ms) = try round(algo, member: nil)
            let hub = ThreadHub(size: 2)
            final class Box { var result: Result<([Float], [(String, Double)]), Error>? }
            let results = [Box(), Box()]
            let done = DispatchGroup()
            for rank in 0..<2 {
                done.enter()
                let box = results[rank]
                let t = Thread { [self] in
                    box.result = Result { try round(algo, member: ThreadMember(rank: rank, hub: hub)) }
                    done.leave()
                }
                t.stackSize = 16 << 20
                t.start()
            }
            XCTAssertEqual(done.wait(timeout: .now() + 300), .success, "\(algo): the ranks did not finish")
            let r0 = try results[0].result!.get(), r1 = try results[1].result!.get()
            XCTAssertTrue(r0.0 == r1.0, "\(algo): the two ranks' weights differ")
            XCTAssertEqual(single.count, r0.0.count)
            let diff = zip(single, r0.0).map { abs(Double($0) - Double($1)) }.max() ?? 0
            XCTAssertLessThanOrEqual(diff, 1e-6, "\(algo): 2 ranks vs 1 process")
            XCTAssertEqual(ms.map(\.0), r0.1.map(\.0))
            for ((k, a), (_, b)) in zip(ms, r0.1) where k != "logp_old_max_abs_err" {
                let scale = TestSupport.roundingScale(of: k, value: a, in: ms)
                XCTAssertEqual(a, b, accuracy: 1e-6 * max(scale, 1e-6), "\(algo): metric \(k)")
            }
            XCTAssertTrue(r0.1.map(\.1).elementsEqual(r1.1.map(\.1)) { $0 == $1 || ($0.isNaN && $1.isNaN) }, "\(algo): the ranks' metrics differ")
            print("RLShardTests: \(algo): max |1 process - 2 thread ranks| over the checkpoint values: \(diff)")
        }
    }
}
