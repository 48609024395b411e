import Foundation
import XCTest
import Shared

/// Data-parallel `train` under `mpirun -np 2` (OpenMPI). The default build has no MPI, so these
/// run from `make test-mpi`, which builds the tools with DRL_MPI=1 into .build-mpi and points
/// DRL_MPI_TOOLS at them; elsewhere they are skipped.
final class TrainMPIToolTests: XCTestCase {
    var tools = ""
    var dir = ""
    let config = #"{"arch":"mlp","channels":1,"height":4,"width":4,"num_classes":3,"hidden_size":32,"depth":2}"#

    override func setUpWithError() throws {
        guard let t = ProcessInfo.processInfo.environment["DRL_MPI_TOOLS"], !t.isEmpty else {
            throw XCTSkip("DRL_MPI_TOOLS is not set: `make test-mpi` builds the MPI tools and runs these")
        }
        tools = t
        dir = try TestSupport.temporaryDirectory()
        var rng = CounterRNG(seed: 11)
        let n = 96
        let x = (0..<(n * 16)).map { _ in Float(max(-1, min(1, rng.normal() * 0.5))) }
        let r = Record([("x", Tensor(x, shape: [n, 1, 4, 4])), ("y", Tensor((0..<n).map { Int64($0 % 3) }, shape: [n]))])
        try AtomicFile.write(try TestSupport.streamBytes([r]), to: dir + "/data.tzst")
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    let mpirun = "mpirun --allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none"

    func train(_ args: String, ranks: Int?) throws -> TestSupport.Result {
        let cmd = "'\(tools)/train' --config '\(config)' --batch 16 --threads 1 --quiet --seed 4 \(args)"
        let line = ranks.map { "\(mpirun) -np \($0) \(cmd)" } ?? cmd
        return try TestSupport.shell("cd '\(dir)' && \(line)", timeout: 120)
    }

    /// Largest |a - b| over every tensor of two checkpoints (weights, EMA, Adam moments), and
    /// their metadata must agree exactly (step, data cursor, RNG position).
    func maxDifference(_ a: String, _ b: String) throws -> Float {
        let ra = try Checkpoint.read(dir + "/" + a), rb = try Checkpoint.read(dir + "/" + b)
        XCTAssertEqual(ra.names, rb.names)
        XCTAssertEqual(ra.metadata, rb.metadata)
        var worst: Float = 0
        for name in ra.names {
            let x = try ra[name]!.floats(), y = try rb[name]!.floats()
            XCTAssertEqual(x.count, y.count, name)
            for (u, v) in zip(x, y) { worst = max(worst, abs(u - v)) }
        }
        return worst
    }

    /// 12 steps of minibatch 16 on 2 ranks (8 rows each) against one process on the same data:
    /// equal to float rounding (the gradient sums run in another order), within 1e-5 on every
    /// value; the MPI build run without mpirun writes the bytes of the default build's `train`.
    /// A 2-rank run resumed at step 6 continues to exactly the bytes of an uninterrupted one.
    func testTwoRanksEqualOneProcessToRounding() throws {
        var r = try train("--steps 12 -o one.safetensors data.tzst", ranks: nil)
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try TestSupport.shell("cd '\(dir)' && train --config '\(config)' --batch 16 --threads 1 --quiet --seed 4 --steps 12 -o default.safetensors data.tzst")
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(try readFile(dir + "/one.safetensors") == readFile(dir + "/default.safetensors"), "the MPI build alone differs from the default build")
        r = try train("--steps 12 -o two.safetensors data.tzst", ranks: 2)
        XCTAssertEqual(r.status, 0, r.stderr)
        let diff = try maxDifference("one.safetensors", "two.safetensors")
        XCTAssertLessThanOrEqual(diff, 1e-5, "2 ranks vs 1 process")
        print("TrainMPIToolTests: max |1 process - 2 ranks| over every checkpoint value after 12 steps: \(diff)")

        r = try train("--steps 6 -o half.safetensors data.tzst", ranks: 2)
        XCTAssertEqual(r.status, 0, r.stderr)
        r = try TestSupport.shell("cd '\(dir)' && \(mpirun) -np 2 '\(tools)/train' --resume half.safetensors --steps 12 --threads 1 --quiet -o half.safetensors data.tzst", timeout: 120)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(try readFile(dir + "/half.safetensors") == readFile(dir + "/two.safetensors"), "resumed 2-rank run differs from the uninterrupted one")
    }

    /// A rank that fails ends every rank: rank 1 cannot read its data (mpirun's MPMD form gives
    /// it another input), or rank 0 cannot write the checkpoint. mpirun exits non-zero, the tool
    /// prints one line, and no checkpoint appears.
    func testFailingRankStopsEveryRank() throws {
        let cmd = "'\(tools)/train' --config '\(config)' --batch 16 --threads 1 --quiet --steps 3 -o out.safetensors"
        var r = try TestSupport.shell("cd '\(dir)' && \(mpirun) -np 1 \(cmd) data.tzst : -np 1 \(cmd) missing.tzst", timeout: 120)
        XCTAssertNotEqual(r.status, 0)
        var lines = r.stderr.split(separator: "\n").filter { $0.hasPrefix("train:") }
        XCTAssertEqual(lines.count, 1, r.stderr)
        XCTAssertTrue(lines.first?.hasPrefix("train: error: rank 1 of 2: ") ?? false, r.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/out.safetensors"))

        r = try train("--steps 3 -o no/such/dir/out.safetensors data.tzst", ranks: 2)
        XCTAssertNotEqual(r.status, 0)
        lines = r.stderr.split(separator: "\n").filter { $0.hasPrefix("train:") }
        XCTAssertEqual(lines.count, 1, r.stderr)
        XCTAssertTrue(lines.first?.hasPrefix("train: error: ") ?? false, r.stderr)
    }
}
