import Foundation
import XCTest
import Shared

/// pipelines/shard.sh under GNU parallel (Debian's `parallel`, installed by `make deps`): the
/// shards of `sample | embed | discrim score`, joined with `cat`, are byte for byte one run.
final class ShardToolTests: XCTestCase {
    var dir = ""
    var model = ""
    var disc = ""
    let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../pipelines/shard.sh").standardized.path
    let sampleFlags = "--sampler memoryless-ll --steps 4 --record"

    override func setUpWithError() throws {
        let which = try TestSupport.shell("command -v parallel")
        XCTAssertEqual(which.status, 0, "GNU parallel is missing: `make deps` installs Debian's `parallel`")
        dir = try TestSupport.temporaryDirectory()
        model = try EngineTestSupport.randomModel(in: dir)
        // A small discriminator on pixel features: real = seed 5, fake = seed 6 of the same model.
        disc = dir + "/d.safetensors"
        let r = try TestSupport.shell("""
            set -e; cd '\(dir)'
            sample --model m.safetensors --n 96 --seed 5 --threads 1 --quiet | embed --pixels --quiet > real.tzst
            sample --model m.safetensors --n 96 --seed 6 --threads 1 --quiet | embed --pixels --quiet > fake.tzst
            discrim train --real real.tzst --fake fake.tzst -o d.safetensors --width 8 --batch 32 --buffer-batches 1 \
              --buffer-epochs 1 --max-steps 4 --holdout 0 --threads 1 --quiet > /dev/null
            """)
        XCTAssertEqual(r.status, 0, r.stderr)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    /// One process: the reference the shards must equal.
    func single(n: Int, batch: Int) throws -> [UInt8] {
        let r = try TestSupport.shell("""
            set -eo pipefail
            sample --model '\(model)' --n \(n) --batch \(batch) --seed 3 --threads 1 --quiet \(sampleFlags) \
              | embed --pixels --threads 1 --quiet | discrim score --model '\(disc)' --grad --threads 1
            """)
        XCTAssertEqual(r.status, 0, r.stderr)
        return r.stdout
    }

    func shard(_ settings: String, sub: String = "") throws -> TestSupport.Result {
        try TestSupport.shell("cd '\(dir)' && \(settings) bash '\(script)' \(sub)", timeout: 120)
    }

    /// N = 100 in 3 and 4 shards (48+48+4, 32+32+32+4: batch-aligned, the last one short) and
    /// N = 40 in 4 shards (16+16+8+0: an empty shard), local jobs in parallel: the joined stream is
    /// byte for byte the single run's. Then --sshlogin ':' (parallel's name for this machine) goes
    /// through the remote plumbing (--env, --workdir) to the same bytes.
    func testParallelShardsJoinToTheBytesOfOneRun() throws {
        let one = try single(n: 100, batch: 16)
        XCTAssertGreaterThan(one.count, 0)
        XCTAssertEqual(try TestSupport.readAll(one).count, 7)
        let common = "MODEL=m.safetensors BATCH=16 SEED=3 SAMPLE_FLAGS='\(sampleFlags)' ENCODER=pixels DISC=d.safetensors SCORE_FLAGS=--grad"
        for (shards, extra) in [(3, "JOBS=3"), (4, "JOBS=2"), (2, "SSHLOGIN=:")] {
            let out = "j\(shards).tzst"
            let r = try shard("OUT=\(out) N=100 SHARDS=\(shards) \(extra) \(common)")
            XCTAssertEqual(r.status, 0, r.stderr)
            let joined = try readFile(dir + "/" + out)
            XCTAssertTrue(joined == one, "\(shards) shards (\(extra)): \(joined.count) bytes differ from one run's \(one.count)")
        }
        let plan = try shard("OUT=x N=100 SHARDS=3 \(common)", sub: "plan")
        XCTAssertEqual(String(decoding: plan.stdout, as: UTF8.self), "0 0 48\n1 48 48\n2 96 4\n")

        let small = try single(n: 40, batch: 16)
        let r = try shard("OUT=j40.tzst N=40 SHARDS=4 JOBS=4 \(common)")
        XCTAssertEqual(r.status, 0, r.stderr)
        let joined = try readFile(dir + "/j40.tzst")
        XCTAssertTrue(joined == small, "4 shards of 40: \(joined.count) bytes differ from one run's \(small.count)")
        XCTAssertEqual(try readFile(dir + "/j40.tzst.shards/0003.tzst"), [], "the shard past the end is an empty stream")
    }

    /// INPUT: an existing stream with records of BATCH samples, split with `tensors head` and
    /// embedded in shards, joins to the bytes of one `embed` over it.
    func testInputStreamShardsEqualOneEmbed() throws {
        let r = try TestSupport.shell("""
            set -eo pipefail; cd '\(dir)'
            sample --model m.safetensors --n 70 --batch 10 --seed 1 --threads 1 --quiet > in.tzst
            embed --pixels --threads 1 --quiet < in.tzst > one.tzst
            OUT=joined.tzst INPUT=in.tzst BATCH=10 SHARDS=3 ENCODER=pixels bash '\(script)'
            """)
        XCTAssertEqual(r.status, 0, r.stderr)
        let joined = try readFile(dir + "/joined.tzst"), one = try readFile(dir + "/one.tzst")
        XCTAssertTrue(joined == one, "\(joined.count) joined bytes differ from one embed's \(one.count)")
    }

    /// A shard that fails stops the run: non-zero exit, the shard's error and one line naming it,
    /// no joined stream and no partial shard file.
    func testFailingShardLeavesNoOutput() throws {
        let r = try shard("OUT=bad.tzst MODEL=m.safetensors N=64 BATCH=16 SHARDS=4 JOBS=1 ENCODER=pixels DISC=missing.safetensors")
        XCTAssertNotEqual(r.status, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/bad.tzst"))
        XCTAssertTrue(r.stderr.contains("discrim: error:"), r.stderr)
        XCTAssertTrue(r.stderr.contains("shard: error: GNU parallel: a shard failed"), r.stderr)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: dir + "/bad.tzst.shards")
        XCTAssertFalse(leftovers.contains { $0.contains(".part") }, "no partial shard file: \(leftovers)")
    }
}
