import ArgumentParser
import Foundation
import Shared

struct Fid: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fid",
        abstract: "Frechet distance between two feature sets (streams or cached statistics); also KID, PRDC and low-level image statistics.",
        discussion: """
        Each input is a tensor stream whose records carry `feat` [B, D] (as `embed` writes them), a \
        statistics file written by `fid stats`, or a pytorch-fid / clean-fid `.npz` (mu, sigma). \
        A is the reference (real) set, B the generated one; FD and KID are symmetric, PRDC is not. \
        Statistics are float64; the square-root trace uses two symmetric eigen-decompositions.

        Examples:
          fid real.tzst gen.tzst
          fid stats -i real.tzst -o real-stats.safetensors
          fid real-stats.safetensors gen.tzst --json
          fid real.tzst gen.tzst --kid --prdc --threads 2
        """,
        version: Toolkit.version,
        subcommands: [Compare.self, Stats.self],
        defaultSubcommand: Compare.self
    )
}

/// Stream reads share one limit on record size (no `-i` here: the inputs are arguments).
private let limits = RecordCodec.Limits()

func loadSide(_ path: String, label: String, keepFeatures: Bool, progress: ProgressOptions) throws -> FeatureSet {
    let kind = try FeatureSet.kind(of: path)
    let shown = path == "-" ? "standard input" : path
    switch kind {
    case .stream:
        let reader = try TensorStreamReader(path: path, limits: limits)
        let bar = Progress(label: "\(label) \(shown)", enabled: progress.showProgress)
        return try FeatureSet.read(reader, name: shown, keepFeatures: keepFeatures, progress: bar)
    case .statistics, .npz:
        if keepFeatures {
            throw ToolError("--kid and --prdc need the features themselves, but \(shown) is a statistics file")
        }
        let stats = kind == .npz ? try NPZ.statistics(path) : try FeatureStatistics.read(path)
        return FeatureSet(name: shown, statistics: stats)
    }
}

func warnIfSingular(_ side: FeatureSet, label: String) {
    let s = side.statistics
    if s.count > 0 && s.count <= s.dim {
        ToolMain.warn("fid", "\(label) (\(side.name)) has n = \(s.count) <= d = \(s.dim): its covariance is singular (rank <= \(s.count - 1)) and the FD is biased and unreliable; use more samples than dimensions")
    }
}

extension Fid {
    struct Compare: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "compare",
            abstract: "Compare A (reference) and B (generated): `fid A B` (the default subcommand)."
        )

        @Argument(help: "Reference set: feature stream, `fid stats` file or .npz (`-` for standard input).")
        var a: String
        @Argument(help: "Generated set: feature stream, `fid stats` file or .npz.")
        var b: String

        @Flag(name: .customLong("kid"), help: "Kernel distance (KID): unbiased MMD^2, cubic polynomial kernel, over random subsets.")
        var kid = false
        @Option(name: .customLong("kid-subsets"), help: "Number of KID subsets.")
        var kidSubsets = 100
        @Option(name: .customLong("kid-subset-size"), help: "KID subset size (capped by both set sizes).")
        var kidSubsetSize = 1000
        @Option(name: .customLong("seed"), help: "Seed for the KID subsets.")
        var seed: UInt64 = 0

        @Flag(name: .customLong("prdc"), help: "Precision/recall (k = 3) and density/coverage (k = 5), Naeem et al. 2020.")
        var prdc = false

        @Flag(name: .customLong("json"), help: "One JSON object on stdout instead of the table.")
        var json = false
        @Flag(name: .customLong("ignore-encoder"), help: "Compare even when only one side names its encoder (different encoders are always refused).")
        var ignoreEncoder = false

        @Option(name: .customLong("route"), help: "How tr sqrt is computed: auto (Cholesky factor of C_A when it is positive definite, else eigen), eigen, cholesky.")
        var route: FrechetDistance.Route = .auto

        @OptionGroup var threads: ThreadOptions
        @OptionGroup var progress: ProgressOptions

        func validate() throws {
            if a == "-" && b == "-" { throw ValidationError("only one of A and B can be standard input") }
            if kidSubsets < 1 { throw ValidationError("--kid-subsets must be at least 1") }
            if kidSubsetSize < 2 { throw ValidationError("--kid-subset-size must be at least 2") }
        }

        func run() throws {
            threads.apply()
            let keep = kid || prdc
            let start = Date()
            let sideA = try loadSide(a, label: "A", keepFeatures: keep, progress: progress)
            let sideB = try loadSide(b, label: "B", keepFeatures: keep, progress: progress)
            let loaded = Date()
            let sa = sideA.statistics, sb = sideB.statistics
            guard sa.dim == sb.dim else {
                throw ToolError("feature dimensions differ: \(sideA.name) has d = \(sa.dim), \(sideB.name) has d = \(sb.dim)")
            }
            try FrechetDistance.checkEncoders(sa.encoder, sb.encoder, nameA: sideA.name, nameB: sideB.name, allowUnknown: ignoreEncoder)
            warnIfSingular(sideA, label: "A")
            warnIfSingular(sideB, label: "B")
            let fd = try FrechetDistance.compute(sa, sb, route: route)
            var kidResult: KernelDistanceResult?
            var prdcResult: PRDCResult?
            if kid, let fa = sideA.features, let fb = sideB.features {
                kidResult = try KernelDistance.compute(fa, fb, subsetCount: kidSubsets, maxSubsetSize: kidSubsetSize, seed: seed)
            }
            if prdc, let fa = sideA.features, let fb = sideB.features {
                prdcResult = try PRDC.compute(real: fa, fake: fb)
            }
            let done = Date()
            let report = Report(a: sideA, b: sideB, fd: fd, kid: kidResult, prdc: prdcResult,
                                loadSeconds: loaded.timeIntervalSince(start), metricSeconds: done.timeIntervalSince(loaded))
            try printLine(json ? report.json() : report.table(), terminator: "")
        }
    }

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "stats",
            abstract: "Cache a feature set's statistics: mu F64 [D], sigma F64 [D, D], n, and the encoder digest.",
            discussion: "The output is one plain safetensors file (like a checkpoint), written atomically; `fid` reads it in place of the stream."
        )

        @OptionGroup var input: InputOptions
        @Option(name: [.short, .customLong("output")], help: "Statistics file to write (.safetensors).")
        var output: String
        @OptionGroup var threads: ThreadOptions
        @OptionGroup var progress: ProgressOptions

        func run() throws {
            threads.apply()
            let reader = try input.reader()
            let bar = Progress(label: "stats", enabled: progress.showProgress)
            let side = try FeatureSet.read(reader, name: reader.name, imageStatistics: false, progress: bar)
            warnIfSingular(side, label: "input")
            var meta = ["tool": "fid stats", "version": Toolkit.version, "source": reader.name]
            meta["dtype"] = "F64"
            try side.statistics.write(to: output, extraMetadata: meta)
        }
    }
}

/// The human table and the JSON object of one comparison.
struct Report {
    var a: FeatureSet
    var b: FeatureSet
    var fd: FrechetResult
    var kid: KernelDistanceResult?
    var prdc: PRDCResult?
    var loadSeconds: Double
    var metricSeconds: Double

    func g(_ v: Double) -> String { String(format: "%.10g", v) }

    func table() -> String {
        var lines: [String] = []
        func row(_ k: String, _ v: String) { lines.append(k.padding(toLength: 22, withPad: " ", startingAt: 0) + v) }
        row("A", "\(a.name): n = \(a.statistics.count > 0 ? String(a.statistics.count) : "?"), d = \(a.statistics.dim)")
        row("B", "\(b.name): n = \(b.statistics.count > 0 ? String(b.statistics.count) : "?"), d = \(b.statistics.dim)")
        row("encoder", a.statistics.encoder ?? b.statistics.encoder ?? "(not named)")
        row("FD", g(fd.distance))
        row("  |mu_A - mu_B|^2", g(fd.meanTerm))
        row("  tr C_A, tr C_B", "\(g(fd.traceA)), \(g(fd.traceB))")
        row("  tr sqrt(...)", g(fd.traceSqrt))
        row("  rank C_A", "\(fd.rankA) of \(a.statistics.dim) (\(fd.route) route)")
        if let kid {
            row("KID", "\(g(kid.mean)) +- \(g(kid.standardError)) (s.e.; std \(g(kid.std)); \(kid.subsets) subsets of \(kid.subsetSize))")
            row("KID x 1000", String(format: "%.4f +- %.4f", kid.mean * 1000, kid.standardError * 1000))
        }
        if let prdc {
            row("precision (k=\(prdc.kPR))", g(prdc.precision))
            row("recall (k=\(prdc.kPR))", g(prdc.recall))
            row("density (k=\(prdc.kDC))", g(prdc.density))
            row("coverage (k=\(prdc.kDC))", g(prdc.coverage))
        }
        let ia = a.images?.values ?? [], ib = b.images?.values ?? []
        if !ia.isEmpty || !ib.isEmpty {
            lines.append("low-level image statistics (images in [0, 1]):")
            let names = (ia.count >= ib.count ? ia : ib).map(\.name)
            row("", "A".padding(toLength: 14, withPad: " ", startingAt: 0) + "B")
            for name in names {
                let va = ia.first { $0.name == name }.map { String(format: "%.6f", $0.value) } ?? "-"
                let vb = ib.first { $0.name == name }.map { String(format: "%.6f", $0.value) } ?? "-"
                row("  " + name, va.padding(toLength: 14, withPad: " ", startingAt: 0) + vb)
            }
        }
        row("time", String(format: "%.2f s reading and statistics, %.2f s metrics (OpenBLAS %@, %d threads)", loadSeconds, metricSeconds, BLAS.coreName, BLAS.threads))
        return lines.joined(separator: "\n") + "\n"
    }

    func json() -> String {
        func num(_ v: Double) -> String { v.isFinite ? String(format: "%.17g", v) : "null" }
        func str(_ s: String?) -> String { s.map { JSON.quote($0) } ?? "null" }
        func side(_ s: FeatureSet) -> String {
            var parts = ["\"name\":\(str(s.name))", "\"n\":\(s.statistics.count)", "\"dim\":\(s.statistics.dim)",
                         "\"encoder\":\(str(s.statistics.encoder))"]
            if let img = s.images {
                parts.append("\"images\":\(img.images)")
                parts.append("\"lowlevel\":{" + img.values.map { "\"\($0.name)\":\(num($0.value))" }.joined(separator: ",") + "}")
            }
            return "{" + parts.joined(separator: ",") + "}"
        }
        var parts = [
            "\"a\":\(side(a))", "\"b\":\(side(b))",
            "\"fd\":\(num(fd.distance))",
            "\"fd_terms\":{\"mean\":\(num(fd.meanTerm)),\"trace_a\":\(num(fd.traceA)),\"trace_b\":\(num(fd.traceB)),\"trace_sqrt\":\(num(fd.traceSqrt)),\"rank_a\":\(fd.rankA),\"route\":\(str(fd.route))}",
        ]
        if let kid {
            parts.append("\"kid\":{\"mean\":\(num(kid.mean)),\"std\":\(num(kid.std)),\"se\":\(num(kid.standardError)),\"subsets\":\(kid.subsets),\"subset_size\":\(kid.subsetSize)}")
        }
        if let prdc {
            parts.append("\"prdc\":{\"precision\":\(num(prdc.precision)),\"recall\":\(num(prdc.recall)),\"density\":\(num(prdc.density)),\"coverage\":\(num(prdc.coverage)),\"k_pr\":\(prdc.kPR),\"k_dc\":\(prdc.kDC)}")
        }
        parts.append("\"seconds\":{\"read\":\(num(loadSeconds)),\"metrics\":\(num(metricSeconds))}")
        parts.append("\"blas\":{\"core\":\(str(BLAS.coreName)),\"threads\":\(BLAS.threads)}")
        return "{" + parts.joined(separator: ",") + "}\n"
    }
}

extension FrechetDistance.Route: ExpressibleByArgument {}
