import Foundation
import XCTest
import Shared

/// pipelines/refine-cron.sh run as cron would, on a tiny run folder (10x10 two-class toy images,
/// a small MLP base, tiny random encoders, a discriminator trained for a few steps): the lock, a
/// killed run's leftovers, promotion and the stop rule. Each invocation is a real one: the script
/// calls evaluate.sh and the built tools.
final class RefineCronToolTests: XCTestCase {
    static let pipelines = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../pipelines").standardized.path
    static let script = pipelines + "/refine-cron.sh"
    static let model = ModelConfig(arch: "mlp", channels: 1, height: 10, width: 10, numClasses: 2,
                                   hidden: 32, depth: 2, mlpRatio: 2, timeScale: 1, frequencyDim: 16)
    /// Small settings: 32 rollouts of 4 steps, evaluations on 128 Euler-4 samples, one thread.
    static let settings = ["THREADS": "1", "N": "32", "STEPS": "4", "MINIBATCH": "16", "EPOCHS": "1", "LR": "1e-3",
                           "LAMBDA": "1", "EVAL_N": "128", "EVAL_STEPS": "4"]
    nonisolated(unsafe) static var template: String?

    var run = ""
    var exp: String { run + "/cron" }

    /// The run folder the script needs, built once and copied for each test.
    static func makeTemplate() throws -> String {
        if let t = template { return t }
        let dir = try TestSupport.temporaryDirectory()
        let (x, y) = EncoderTests.toyImages(400, side: 10)
        let all = Record([("x", Tensor(x, shape: [400, 1, 10, 10])), ("y", Tensor(y.map { Int64($0) }, shape: [400]))])
        try AtomicFile.write(TestSupport.streamBytes([all.samples(0, 200)]), to: dir + "/train.tzst")
        try AtomicFile.write(TestSupport.streamBytes([all.samples(200, 200)]), to: dir + "/test.tzst")
        var enc = EncoderTests.smallConfig("classifier")
        enc.numClasses = 2
        // two briefly trained classifiers (a freshly initialised one maps every image to nearly
        // the same features: FDs round to 0): the held-out space and the discriminator's
        for (name, seed) in [("enc-eval", UInt64(1)), ("enc-disc", 2)] {
            let e = try ConvEncoder(config: enc, seed: seed)
            var o = EncoderTrainingOptions(steps: 40, batch: 16, lr: 1e-2, seed: seed)
            o.warmup = 5
            try EncoderTrainer.train(e, images: Array(x[0..<(200 * 100)]), labels: Array(y[0..<200]), options: o) { _ in }
            try e.save(to: dir + "/\(name).safetensors", metadata: ["step": "40"])
        }
        let net = try VelocityNet.make(model, seed: 1)
        var g = GradCheck()
        for p in net.params.all { p.values = p.values.map { $0 + Float(g.randoms(1, std: 0.05)[0]) } }
        try net.save(to: dir + "/base.safetensors", metadata: ["step": "0"])
        // drl.sh stage 1 in miniature: base samples against training images, in enc-disc's space
        let r = try TestSupport.shell("""
            set -e; cd \(dir)
            sample --model base.safetensors -n 200 --steps 4 --threads 1 --quiet | embed --encoder enc-disc.safetensors --threads 1 > fake.tzst
            embed --encoder enc-disc.safetensors --threads 1 -i train.tzst -o real.tzst
            discrim train --real real.tzst --fake fake.tzst --width 16 --batch 64 --buffer-batches 2 --buffer-epochs 1 \
              --holdout 0 --max-steps 20 --lr 3e-3 --threads 1 --quiet -o disc-linear-r1_0.safetensors
            rm fake.tzst real.tzst
            """)
        guard r.status == 0 else { throw XCTSkip("cannot build the run folder: \(r.stderr)") }
        template = dir
        return dir
    }

    override func setUpWithError() throws {
        for tool in ["flock", "jq"] where try TestSupport.shell("command -v \(tool)").status != 0 {
            throw XCTSkip("\(tool) is not installed")
        }
        let t = try Self.makeTemplate()
        run = try TestSupport.temporaryDirectory()
        XCTAssertEqual(try TestSupport.shell("cp -a \(t)/. \(run)/").status, 0)
    }

    override func tearDown() { try? FileManager.default.removeItem(atPath: run) }

    /// The shell lines that export the settings (and `extra`) for one or more runs of the script.
    func environment(_ extra: [String: String] = [:]) -> String {
        Self.settings.merging(["RUN": run]) { a, _ in a }.merging(extra) { _, b in b }
            .sorted { $0.key < $1.key }.map { "export \($0.key)='\($0.value)'" }.joined(separator: "; ")
    }

    /// One run of the script, as cron runs it.
    func cron(_ extra: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line) throws -> TestSupport.Result {
        try TestSupport.shell("\(environment(extra)); bash \(Self.script)", timeout: 180)
    }

    /// The JSON lines of a file in the experiment folder (none when it is absent).
    func lines(_ name: String) throws -> [[String: JSONValue]] {
        guard let text = try? String(contentsOfFile: exp + "/" + name, encoding: .utf8) else { return [] }
        return try text.split(separator: "\n").map { line in
            guard case .object(let o) = try JSON.parse(Array(line.utf8)) else { throw XCTSkip("not a JSON object: \(line)") }
            return Dictionary(o, uniquingKeysWith: { a, _ in a })
        }
    }

    /// state.json, one (pretty-printed) JSON object.
    func state() throws -> [String: JSONValue] {
        guard case .object(let o) = try JSON.parse(try readFile(exp + "/state.json")) else { throw XCTSkip("state.json is not an object") }
        return Dictionary(o, uniquingKeysWith: { a, _ in a })
    }

    func number(_ v: JSONValue?) -> Double? {
        switch v { case .number(let d)?: return d; case .integer(let i)?: return Double(i); default: return nil }
    }
    func bool(_ v: JSONValue?) -> Bool? { if case .bool(let b)? = v { return b }; return nil }
    func string(_ v: JSONValue?) -> String? { if case .string(let s)? = v { return s }; return nil }
    func exists(_ name: String) -> Bool { FileManager.default.fileExists(atPath: exp + "/" + name) }
    func digest(_ name: String) throws -> String { try Checkpoint.digest(exp + "/" + name) }

    /// A checkpoint that rlstep could have written from `parent`: its weights plus Gaussian noise
    /// of `std` (0: the same weights), with the parent's digest and `rl.algo`.
    func makeCandidate(from parent: String, std: Float, seed: UInt64 = 7) throws {
        let net = try VelocityNet.load(path: parent)
        var g = GradCheck()
        g.rng = CounterRNG(seed: seed, stream: 77)
        if std > 0 { for p in net.params.all { p.values = p.values.map { $0 + Float(g.randoms(1, std: Double(std))[0]) } } }
        try net.save(to: exp + "/candidate.safetensors", metadata: ["step": "1", "rl.algo": "am", "parent_sha256": try Checkpoint.digest(parent)])
    }

    // MARK: drl.sh with a hackable reward

    /// A hackable reward needs neither a discriminator nor its encoder: drl.sh with
    /// REWARD=brightness runs a GRPO round in a run folder that has neither (it used to demand
    /// enc-disc.safetensors and stop before the first round).
    func testHackableRewardNeedsNoDiscriminatorEncoder() throws {
        XCTAssertEqual(try TestSupport.shell("rm -f \(run)/enc-disc.safetensors \(run)/disc-*.safetensors").status, 0)
        let r = try TestSupport.shell("\(environment(["REWARD": "brightness", "ALGO": "grpo", "GROUP": "16", "ROUNDS": "1", "EVAL_EVERY": "0", "NAME": "bright"])); bash \(Self.pipelines)/drl.sh", timeout: 180)
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(FileManager.default.fileExists(atPath: run + "/bright/rounds/0001.safetensors"), r.stderr)
        XCTAssertFalse(r.stderr.contains("missing"), r.stderr)
        // a second stage from that rlstep checkpoint starts fresh AdamW state (rlstep --new-stage)
        let first = try Checkpoint.read(run + "/bright/rounds/0001.safetensors")
        let r2 = try TestSupport.shell("\(environment(["REWARD": "brightness", "ALGO": "grpo", "GROUP": "16", "ROUNDS": "1", "EVAL_EVERY": "0", "NAME": "bright2", "BASE": run + "/bright/rounds/0001.safetensors"])); bash \(Self.pipelines)/drl.sh", timeout: 180)
        XCTAssertEqual(r2.status, 0, r2.stderr)
        let second = try Checkpoint.read(run + "/bright2/rounds/0001.safetensors")
        XCTAssertEqual(second.metadata["optim.step"], first.metadata["optim.step"], "a new stage, not a resumed optimizer")
        XCTAssertEqual(second.metadata["parent_sha256"], try Checkpoint.digest(run + "/bright/rounds/0001.safetensors"))
    }

    // MARK: (a) the lock

    /// While one run holds the lock (held up in its first `sample` by a gate), a second run exits
    /// 0 at once with one line and touches nothing; the first then finishes its round.
    func testSecondRunWhileTheLockIsHeldDoesNothing() throws {
        let gate = run + "/gate", bin = run + "/gate-bin"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try """
            #!/bin/bash
            touch \(gate).waiting; while [ ! -e \(gate) ]; do sleep 0.05; done
            exec \(TestSupport.productsDirectory.path)/sample "$@"
            """.write(toFile: bin + "/sample", atomically: true, encoding: .utf8)
        chmod(bin + "/sample", 0o755)
        let r = try TestSupport.shell("""
            \(environment())
            PATH=\(bin):$PATH bash \(Self.script) > \(run)/a.out 2> \(run)/a.err & a=$!
            for i in $(seq 1200); do [ -e \(gate).waiting ] && break; sleep 0.05; done
            [ -e \(gate).waiting ] || { echo "the first run never reached sample"; kill $a; exit 1; }
            bash \(Self.script) > \(run)/b.out 2> \(run)/b.err; echo "second $?"
            echo "state $([ -e \(exp)/state.json ] && echo present || echo absent)"
            echo "metrics $(cat \(exp)/cron-metrics.jsonl 2>/dev/null | wc -l)"
            touch \(gate); wait $a; echo "first $?"
            """, timeout: 180)
        let out = String(decoding: r.stdout, as: UTF8.self)
        XCTAssertEqual(r.status, 0, out + r.stderr)
        let first = (try? String(contentsOfFile: run + "/a.err", encoding: .utf8)) ?? ""
        let secondErr = (try? String(contentsOfFile: run + "/b.err", encoding: .utf8)) ?? ""
        XCTAssertEqual(out, "second 0\nstate absent\nmetrics 0\nfirst 0\n", "first run's stderr: \(first)\nsecond run's stderr: \(secondErr)")
        XCTAssertTrue(secondErr.contains("another run holds"), secondErr)
        XCTAssertEqual(secondErr.split(separator: "\n").count, 1, secondErr)
        XCTAssertEqual((try? String(contentsOfFile: run + "/b.out", encoding: .utf8)) ?? "?", "", "the refused run prints nothing on stdout")
        // only the first run made a round
        XCTAssertEqual(try lines("cron-metrics.jsonl").count, 1, first)
        XCTAssertEqual(try lines("rl-metrics.jsonl").count, 1, first)
        // and its lock went with it: the next run goes ahead
        let next = try cron(["TOLERANCE": "1e9"])
        XCTAssertEqual(next.status, 0, next.stderr)
        XCTAssertEqual(try lines("cron-metrics.jsonl").count, 2, next.stderr)
    }

    // MARK: (b) a killed run

    /// A run killed right after rlstep wrote the candidate (rlstep wrapped so that it kills the
    /// script once done), plus the temporaries a kill at other points leaves: the next run removes
    /// the temporaries and evaluates the orphaned candidate without redoing the round. Then the
    /// state update of a promotion is lost (as if killed between the rename and the state write)
    /// and a stale candidate of an older parent lies around: the next run re-evaluates the model
    /// it finds, numbers the round on, and trains a fresh candidate from the current model.
    func testKilledRunIsResumedAndItsLeftoversRemoved() throws {
        let bin = run + "/kill-bin"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        try """
            #!/bin/bash
            \(TestSupport.productsDirectory.path)/rlstep "$@"; status=$?
            kill -KILL $PPID; exit $status
            """.write(toFile: bin + "/rlstep", atomically: true, encoding: .utf8)
        chmod(bin + "/rlstep", 0o755)
        let killed = try TestSupport.shell("\(environment(["TOLERANCE": "1e9"])); PATH=\(bin):$PATH bash \(Self.script); echo \"status $?\"", timeout: 180)
        XCTAssertEqual(String(decoding: killed.stdout, as: UTF8.self), "status 137\n", killed.stderr)
        XCTAssertTrue(exists("candidate.safetensors"), "rlstep finished before the kill")
        XCTAssertEqual(try lines("cron-metrics.jsonl").count, 0, "the killed run logged nothing")
        XCTAssertEqual(try lines("rl-metrics.jsonl").count, 1)
        let orphan = try digest("candidate.safetensors")
        let base = try digest("current.safetensors")
        XCTAssertEqual(base, try Checkpoint.digest(run + "/base.safetensors"))
        // what kills at other moments leave: rlstep's temporary checkpoint, a half copy of the
        // base, a temporary state file
        let leftovers = [".candidate.safetensors.tmp-99999", "current.safetensors.tmp", "state.json.AbC123"]
        for name in leftovers { try Data("partial".utf8).write(to: URL(fileURLWithPath: exp + "/" + name)) }

        let resumed = try cron(["TOLERANCE": "1e9"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        for name in leftovers { XCTAssertFalse(exists(name), "\(name) is left behind") }
        XCTAssertEqual(try lines("rl-metrics.jsonl").count, 1, "the orphaned candidate was evaluated, not redone")
        XCTAssertEqual(try digest("current.safetensors"), orphan, "the orphan is what got promoted")
        XCTAssertFalse(exists("candidate.safetensors"))
        let m = try lines("cron-metrics.jsonl")
        guard m.count == 1, let fdBase = number(m[0]["fd_before"]) else { return XCTFail("expected one metrics line: \(m) \(resumed.stderr)") }
        XCTAssertEqual(number(m.last?["round"]), 1)
        XCTAssertEqual(bool(m.last?["promoted"]), true)
        let st = try state()
        XCTAssertEqual(string(st["digest"]), orphan)
        XCTAssertEqual(number(st["round"]), 1)

        // a promotion whose state update was lost, and a stale candidate (parent: the base)
        try """
            {"digest":"\(base)","fd_eval":\(fdBase),"round":0}
            """.write(toFile: exp + "/state.json", atomically: true, encoding: .utf8)
        try makeCandidate(from: run + "/base.safetensors", std: 0.5)
        let stale = try digest("candidate.safetensors")
        let again = try cron(["TOLERANCE": "1e9"])
        XCTAssertEqual(again.status, 0, again.stderr)
        XCTAssertEqual(try lines("rl-metrics.jsonl").count, 2, "the stale candidate was replaced by a fresh round")
        let now = try digest("current.safetensors")
        XCTAssertNotEqual(now, stale)
        XCTAssertEqual(try Checkpoint.read(exp + "/current.safetensors").metadata["parent_sha256"], orphan,
                       "the fresh candidate was trained from the model the run found")
        let m2 = try lines("cron-metrics.jsonl")
        XCTAssertEqual(m2.count, 2)
        XCTAssertEqual(number(m2.last?["round"]), 2, "the state said round 0, the model was round 1's: this is round 2")
        XCTAssertEqual(number(try state()["round"]), 2)
        // the lost promotion's model was measured again, as round 1
        let rows = try String(contentsOfFile: exp + "/results.tsv", encoding: .utf8).split(separator: "\n").map { $0.split(separator: "\t") }
        XCTAssertTrue(rows.contains { $0.count > 1 && $0[0] == "current" && $0[1] == "1" }, "\(rows)")
    }

    // MARK: (c) promotion

    /// The rule: promote when FD(candidate) <= FD(current) * (1 + TOLERANCE). A candidate with
    /// the current weights (the same FD) passes at TOLERANCE 0; a noisy one (a worse FD) fails at
    /// 0 and leaves everything as it was; the same noisy candidate passes once TOLERANCE covers it.
    func testCandidateIsPromotedOnlyWhenItPassesTheRule() throws {
        try FileManager.default.createDirectory(atPath: exp, withIntermediateDirectories: true)
        let base = run + "/base.safetensors"
        try makeCandidate(from: base, std: 0)
        let equal = try digest("candidate.safetensors")
        var r = try cron(["TOLERANCE": "0"])
        XCTAssertEqual(r.status, 0, r.stderr)
        var m = try lines("cron-metrics.jsonl")
        guard m.count == 1 else { return XCTFail("expected one metrics line: \(m) \(r.stderr)") }
        XCTAssertEqual(number(m[0]["fd_candidate"]), number(m[0]["fd_before"]), "same weights, same samples, same FD")
        XCTAssertEqual(bool(m[0]["promoted"]), true, "equal FD passes at tolerance 0")
        XCTAssertEqual(try digest("current.safetensors"), equal)
        XCTAssertEqual(try lines("rl-metrics.jsonl").count, 0, "no round was trained: the candidate was given")

        let current = exp + "/current.safetensors"
        let kept = try String(contentsOfFile: exp + "/state.json", encoding: .utf8)
        try makeCandidate(from: current, std: 0.5)
        r = try cron(["TOLERANCE": "0"])
        XCTAssertEqual(r.status, 0, r.stderr)
        m = try lines("cron-metrics.jsonl")
        guard m.count == 2 else { return XCTFail("expected a second metrics line: \(m) \(r.stderr)") }
        let before = try XCTUnwrap(number(m[1]["fd_before"])), worse = try XCTUnwrap(number(m[1]["fd_candidate"]))
        XCTAssertGreaterThan(worse, before, "noise in the weights makes the FD worse")
        XCTAssertEqual(bool(m[1]["promoted"]), false)
        XCTAssertEqual(try digest("current.safetensors"), equal, "the current model is kept")
        XCTAssertEqual(try String(contentsOfFile: exp + "/state.json", encoding: .utf8), kept, "and its state")
        XCTAssertFalse(exists("candidate.safetensors"), "a rejected candidate is removed")
        XCTAssertTrue(exists("STOPPED"))

        // with a tolerance just above the candidate's excess, the same candidate is promoted
        try FileManager.default.removeItem(atPath: exp + "/STOPPED")
        try makeCandidate(from: current, std: 0.5)
        let noisy = try digest("candidate.safetensors")
        r = try cron(["TOLERANCE": String(worse / before - 1 + 1e-3)])
        XCTAssertEqual(r.status, 0, r.stderr)
        m = try lines("cron-metrics.jsonl")
        guard m.count == 3 else { return XCTFail("expected a third metrics line: \(m) \(r.stderr)") }
        XCTAssertEqual(number(m[2]["fd_candidate"]), worse, "the same candidate, the same FD")
        XCTAssertEqual(bool(m[2]["promoted"]), true)
        XCTAssertEqual(try digest("current.safetensors"), noisy)
        XCTAssertEqual(number(try state()["fd_eval"]), worse, "the state holds the promoted model's FD")
        XCTAssertFalse(exists("STOPPED"))
    }

    // MARK: (d) the stop rule

    /// Cron's cycle under a rule no candidate can pass (TOLERANCE -1: the FD would have to reach
    /// 0): the first run trains a round, rejects it and writes STOPPED; the runs after it do
    /// nothing. Removing STOPPED starts the cycle again.
    func testStopRuleEndsTheCycle() throws {
        let r = try TestSupport.shell("""
            \(environment(["TOLERANCE": "-1"]))
            for i in 1 2 3 4; do bash \(Self.script) > /dev/null 2>> \(run)/cycle.err; echo "run $i: $?"; done
            """, timeout: 300)
        let err = (try? String(contentsOfFile: run + "/cycle.err", encoding: .utf8)) ?? ""
        XCTAssertEqual(String(decoding: r.stdout, as: UTF8.self), "run 1: 0\nrun 2: 0\nrun 3: 0\nrun 4: 0\n", err)
        let m = try lines("cron-metrics.jsonl")
        XCTAssertEqual(m.count, 1, "only the first run did anything: \(err)")
        XCTAssertEqual(bool(m.first?["promoted"]), false)
        XCTAssertEqual(try lines("rl-metrics.jsonl").count, 1, "one round trained")
        XCTAssertEqual(err.components(separatedBy: "refine-cron: stopped").count - 1, 3, err)
        let stopped = try String(contentsOfFile: exp + "/STOPPED", encoding: .utf8)
        XCTAssertTrue(stopped.hasPrefix("round 1: held-out FD "), stopped)
        XCTAssertEqual(try digest("current.safetensors"), try Checkpoint.digest(run + "/base.safetensors"))
        XCTAssertFalse(exists("candidate.safetensors"))

        try FileManager.default.removeItem(atPath: exp + "/STOPPED")
        let resumed = try cron(["TOLERANCE": "1e9"])
        XCTAssertEqual(resumed.status, 0, resumed.stderr)
        let m2 = try lines("cron-metrics.jsonl")
        XCTAssertEqual(m2.count, 2)
        XCTAssertEqual(number(m2.last?["round"]), 1)
        XCTAssertEqual(bool(m2.last?["promoted"]), true)
        XCTAssertNotEqual(try digest("current.safetensors"), try Checkpoint.digest(run + "/base.safetensors"))
    }
}
