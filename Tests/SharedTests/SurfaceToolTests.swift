import Foundation
import XCTest
import Shared

/// One command-line surface for every tool (issue #13): the input as FILE, -i FILE or stdin;
/// -o; --version; closed choices as enums; checkpoints in `tensors info`.
final class SurfaceToolTests: XCTestCase {
    var dir = ""
    override func setUpWithError() throws { dir = try TestSupport.temporaryDirectory() }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    static let tools = ["tensors", "fid", "train", "sample", "discrim", "rlstep", "embed"]

    /// Library errors name settings by key (`{batch}`), read as `batch` by library users and
    /// printed as `--batch` by the tools; no library source names one of its tool's flags.
    func testLibraryErrorsNameSettingsAndToolsPrintFlags() throws {
        XCTAssertEqual(FlowError("{batch} must be positive").description, "batch must be positive")
        XCTAssertEqual(SettingNames.flags("{t_dist} and {weight_decay}"), "--t-dist and --weight-decay")
        for untouched in [#"settings {"batch":1}"#, "{Batch}", "{}", "a { b", "{1x}"] {
            XCTAssertEqual(SettingNames.flags(untouched), untouched)
        }
        XCTAssertEqual(StreamError.recordTooLarge(9, limit: 8).description, "record of 9 bytes exceeds the limit of 8 bytes (raise it with max_record_mib)")
        let data = try TestSupport.streamBytes([Record([("x", Tensor([Float](repeating: 0, count: 8), shape: [4, 2, 1, 1])),
                                                        ("y", Tensor([Int64](repeating: 0, count: 4), shape: [4]))])])
        let toy = #"{"arch":"mlp","channels":2,"height":1,"width":1,"num_classes":1,"hidden_size":8,"depth":1}"#
        let r = try TestSupport.run("train", ["--config", toy, "--t-dist", "beta", "--steps", "1", "-o", dir + "/m.safetensors"], stdin: data)
        EngineTestSupport.assertOneLineError(r, "train", contains: "--t-dist must be uniform")
        // The library layers' sources: a string literal naming `--flag` must be a hint at the
        // producing tool (`sample --record`), never the library's own setting.
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../Sources").standardized
        for layer in ["Numerics", "TensorStream", "Formats", "NN", "Flow", "Features", "Discriminator", "Metrics", "RL"] {
            let folder = sources.appendingPathComponent(layer)
            for case let file as String in FileManager.default.enumerator(atPath: folder.path)! where file.hasSuffix(".swift") {
                let text = try String(contentsOfFile: folder.appendingPathComponent(file).path, encoding: .utf8)
                for line in text.split(separator: "\n") where !line.trimmingCharacters(in: .whitespaces).hasPrefix("//") {
                    for literal in line.split(separator: "\"", omittingEmptySubsequences: false).enumerated().filter({ $0.offset % 2 == 1 }).map(\.element) {
                        guard literal.range(of: #"(^|[\s(`])--[a-z]"#, options: .regularExpression) != nil else { continue }
                        let hint = ["`sample --", "`discrim score --", "(`sample --"].contains { literal.contains($0) }
                        XCTAssertTrue(hint, "\(layer)/\(file) names a flag: \(literal)")
                    }
                }
            }
        }
    }

    func testEveryToolPrintsTheToolkitVersion() throws {
        for tool in Self.tools {
            let r = try TestSupport.run(tool, ["--version"])
            XCTAssertEqual(r.status, 0, "\(tool): \(r.stderr)")
            XCTAssertEqual(String(decoding: r.stdout, as: UTF8.self), Toolkit.version + "\n", tool)
        }
    }

    /// Images x [B,1,4,4] with labels, as a file.
    func images(_ n: Int) throws -> String {
        var rng = CounterRNG(seed: 2, stream: 3)
        let x = (0..<(n * 16)).map { _ in Float(rng.uniform() * 2 - 1) }
        let path = dir + "/x.tzst"
        try AtomicFile.write(try TestSupport.streamBytes([Record([("x", Tensor(x, shape: [n, 1, 4, 4])),
                                                                   ("y", Tensor((0..<n).map { Int64($0 % 3) }, shape: [n]))])]), to: path)
        return path
    }

    func testStreamReadersTakeAPositionalFile() throws {
        let data = try images(12)
        // the same output from FILE, -i FILE and stdin
        let stdin = try readFile(data)
        for (tool, args) in [("tensors", ["head", "-n", "5"]), ("tensors", ["head", "--n", "5"]), ("embed", ["--pixels"]), ("embed", ["apply", "--pixels"])] {
            let a = try TestSupport.run(tool, args + [data])
            let b = try TestSupport.run(tool, args + ["-i", data])
            let c = try TestSupport.run(tool, args, stdin: stdin)
            XCTAssertEqual(a.status, 0, "\(tool) \(args) FILE: \(a.stderr)")
            XCTAssertEqual(a.stdout, b.stdout, "\(tool) \(args)")
            XCTAssertEqual(a.stdout, c.stdout, "\(tool) \(args)")
            XCTAssertEqual(try TestSupport.run(tool, args + [data, "-i", data]).status, 64, "FILE and -i: a usage error")
        }
        // fid stats, discrim score, train, sample logprob accept FILE
        let feat = dir + "/feat.tzst"
        XCTAssertEqual(try TestSupport.run("embed", ["--pixels", data, "-o", feat]).status, 0)
        let st = try TestSupport.run("fid", ["stats", feat, "-o", dir + "/st.safetensors", "--threads", "1"])
        XCTAssertEqual(st.status, 0, st.stderr)
        let model = try EngineTestSupport.randomModel(in: dir)
        let ckpt = dir + "/t.safetensors"
        let tr = try TestSupport.run("train", [data, "--init-from", model, "--steps", "1", "--batch", "4", "-o", ckpt, "--quiet", "--threads", "1"])
        XCTAssertEqual(tr.status, 0, tr.stderr)
        let rollouts = dir + "/r.tzst"
        XCTAssertEqual(try TestSupport.run("sample", ["--model", model, "-n", "4", "--steps", "3", "--sampler", "flowgrpo", "--record", "-o", rollouts]).status, 0)
        let lp = try TestSupport.run("sample", ["logprob", rollouts, "--model", model])
        XCTAssertEqual(lp.status, 0, lp.stderr)
        try Checkpoint.write(try ProjectionHead(config: DiscriminatorConfig(featureDim: 16, width: 4, numClasses: 3)).checkpointRecord(encoder: "pixels"), to: dir + "/d.safetensors")
        let ds = try TestSupport.run("discrim", ["score", feat, "--model", dir + "/d.safetensors"])
        XCTAssertEqual(ds.status, 0, ds.stderr)
    }

    func testClosedChoicesAreUsageErrorsAndListedInHelp() throws {
        for (tool, args, flag) in [("rlstep", ["--algo", "amm", "--model", "m", "--ref", "r", "-o", "o"], "--algo"),
                                   ("sample", ["--model", "m", "--sampler", "eulr"], "--sampler"),
                                   ("sample", ["--model", "m", "--weights", "emma"], "--weights"),
                                   ("discrim", ["train", "--real", "a", "--fake", "b", "-o", "o", "--head", "mpl"], "--head"),
                                   ("embed", ["train", "--kind", "clasifier", "-o", "o"], "--kind")] {
            let r = try TestSupport.run(tool, args)
            XCTAssertEqual(r.status, 64, "\(tool) \(args): \(r.stderr)")
            XCTAssertTrue(r.stderr.contains(flag), r.stderr)
        }
        let help = String(decoding: try TestSupport.run("rlstep", ["--help"]).stdout, as: UTF8.self)
        XCTAssertTrue(help.contains("am, grpo, crd, nft"), help)
        let sampleHelp = String(decoding: try TestSupport.run("sample", ["--help"]).stdout, as: UTF8.self)
        XCTAssertTrue(sampleHelp.contains("memoryless-ll"), "sample --help lists the samplers: \(sampleHelp)")
        XCTAssertTrue(sampleHelp.contains("--record"), "sample --help shows the generation options")
        XCTAssertTrue(sampleHelp.contains("logprob"), "and the subcommand")
    }

    func testTensorsInfoReadsCheckpoints() throws {
        let model = try EngineTestSupport.randomModel(in: dir)
        let r = try TestSupport.run("tensors", ["info", model])
        XCTAssertEqual(r.status, 0, r.stderr)
        let text = String(decoding: r.stdout, as: UTF8.self)
        XCTAssertTrue(text.contains("checkpoint \(model)"), text)
        XCTAssertTrue(text.contains("@config = "), text)
        XCTAssertTrue(text.contains("@step = 3"), text)
        XCTAssertTrue(text.contains("@version = \(Toolkit.version)"), "checkpoints carry the version: \(text)")
        let meta = try TestSupport.run("tensors", ["info", "--meta", "step", model])
        XCTAssertEqual(String(decoding: meta.stdout, as: UTF8.self), "3\n")
        let absent = try TestSupport.run("tensors", ["info", "--meta", "rl.algo", model])
        XCTAssertEqual(absent.status, 0)
        XCTAssertEqual(String(decoding: absent.stdout, as: UTF8.self), "\n")
        let json = try TestSupport.run("tensors", ["info", "--json", model])
        XCTAssertNoThrow(try JSON.parse(Array(String(decoding: json.stdout, as: UTF8.self).utf8.dropLast())))
        // pipelines/lib.sh's ckpt_meta calls it
        let lib = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../pipelines/lib.sh").standardized.path
        let sh = try TestSupport.shell("source \(lib); echo \"[$(ckpt_meta \(model) step)] [$(ckpt_meta \(model) nothing)]\"")
        XCTAssertEqual(String(decoding: sh.stdout, as: UTF8.self), "[3] []\n", sh.stderr)
    }

    /// Renamed flags keep their old spellings.
    func testOldSpellingsStillWork() throws {
        let data = try images(8)
        let model = try EngineTestSupport.randomModel(in: dir)
        for flags in [["--ema", "0.9", "--grad-clip", "0.5"], ["--ema-decay", "0.9", "--max-grad-norm", "0.5"]] {
            let r = try TestSupport.run("train", [data, "--model", "mlp-small", "--classes", "3", "--steps", "1", "--batch", "4", "-o", dir + "/a.safetensors", "--quiet", "--threads", "1"] + flags)
            XCTAssertEqual(r.status, 0, "\(flags): \(r.stderr)")
        }
        let r = try TestSupport.run("train", [data, "--model", "mlp-small", "--num-classes", "3", "--steps", "1", "--batch", "4", "-o", dir + "/b.safetensors", "--quiet"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(try TestSupport.run("sample", ["--model", model, "--n", "2", "--no-ema", "-o", dir + "/s.tzst"]).status, 0)
        XCTAssertEqual(try TestSupport.run("sample", ["--model", model, "-n", "2", "--weights", "raw", "-o", dir + "/t.tzst"]).stdout, [])
        XCTAssertEqual(try readFile(dir + "/s.tzst"), try readFile(dir + "/t.tzst"), "--no-ema is --weights raw")
    }
}

extension RLToolTests {
    /// rlstep reads the buffer as FILE too, writes -o/--output (--out stays) and --batch is --minibatch.
    func testRLStepTakesAFileAndOutput() throws {
        let f = try files()
        let buf = f.dir + "/buf.tzst"
        try AtomicFile.write(try buffer(model: f.model, kind: .memorylessLL), to: buf)
        var outputs: [[UInt8]] = []
        for spelling in [["-o"], ["--output"], ["--out"]] {
            let out = f.dir + "/next\(outputs.count).safetensors"
            let r = try TestSupport.run("rlstep", [buf, "--algo", "am", "--model", f.model, "--ref", f.ref, "--threads", "1", "--batch", "4", "--lr", "1e-3"] + spelling + [out])
            XCTAssertEqual(r.status, 0, "\(spelling): \(r.stderr)")
            outputs.append(try readFile(out))
        }
        let old = try rlstep(f, algo: "am", stdin: try readFile(buf), out: f.dir + "/old.safetensors")
        XCTAssertEqual(old.status, 0, old.stderr)
        XCTAssertEqual(outputs[0], outputs[2])
        XCTAssertEqual(outputs[0], try readFile(f.dir + "/old.safetensors"), "--minibatch 4 is --batch 4")
        let ck = try Checkpoint.read(f.dir + "/old.safetensors")
        XCTAssertEqual(ck.metadata["version"], Toolkit.version)
    }
}
