import XCTest
import Shared
import CZlib

/// End-to-end: the `tensors` executable on good and bad input, as a user runs it.
final class TensorsToolTests: XCTestCase {
    func sampleStream(_ n: Int, batch: Int) throws -> [UInt8] {
        var records: [Record] = []
        var start = 0
        while start < n {
            let b = min(batch, n - start)
            let x = (0..<(b * 4)).map { Float($0 % 7) / 3 - 1 }
            records.append(Record([("x", Tensor(x, shape: [b, 1, 2, 2])),
                                   ("y", Tensor((0..<b).map { Int64(($0 + start) % 10) }, shape: [b])),
                                   ("id", Tensor((start..<(start + b)).map { Int64($0) }, shape: [b]))],
                                  metadata: ["tool": "test"]))
            start += b
        }
        return try TestSupport.streamBytes(records)
    }

    func testInfoSummarises() throws {
        let r = try TestSupport.run("tensors", ["info", "--json"], stdin: try sampleStream(10, batch: 4))
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = String(decoding: r.stdout, as: UTF8.self).split(separator: "\n")
        XCTAssertEqual(lines.count, 4)
        XCTAssertTrue(lines.last!.contains("\"records\":3,\"samples\":10"), String(lines.last!))
    }

    func testHeadSplitsRecords() throws {
        let r = try TestSupport.run("tensors", ["head", "-n", "6"], stdin: try sampleStream(10, batch: 4))
        XCTAssertEqual(r.status, 0, r.stderr)
        let records = try TestSupport.readAll(r.stdout)
        XCTAssertEqual(records.map { $0.batchSize! }, [4, 2])
        XCTAssertEqual(try records[1]["id"]!.int64s(), [4, 5])
        XCTAssertEqual(records[1].metadata["tool"], "test")
    }

    /// `--skip K` drops the first K samples across record boundaries; without -n the rest follows.
    func testHeadSkipsAcrossRecords() throws {
        let r = try TestSupport.run("tensors", ["head", "--skip", "5", "-n", "4"], stdin: try sampleStream(10, batch: 4))
        XCTAssertEqual(r.status, 0, r.stderr)
        let records = try TestSupport.readAll(r.stdout)
        XCTAssertEqual(try records.flatMap { try $0["id"]!.int64s() }, [5, 6, 7, 8])
        let rest = try TestSupport.run("tensors", ["head", "--skip", "8"], stdin: try sampleStream(10, batch: 4))
        XCTAssertEqual(try TestSupport.readAll(rest.stdout).flatMap { try $0["id"]!.int64s() }, [8, 9])
        let all = try TestSupport.run("tensors", ["head", "--skip", "20"], stdin: try sampleStream(10, batch: 4))
        XCTAssertEqual(all.status, 0, all.stderr)
        XCTAssertEqual(try TestSupport.readAll(all.stdout).count, 0)
    }

    func testCorruptInputGivesOneLineAndStatus1() throws {
        let good = try sampleStream(3, batch: 3)
        let cases: [(String, [UInt8], String)] = [
            ("not zstd", Array("plain text".utf8), "tensors: error: input is not a zstd-compressed tensor stream"),
            ("truncated", Array(good.dropLast(5)), "tensors: error: truncated stream"),
            ("bad header", try TestSupport.compress(TestSupport.rawRecord(header: #"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#, payload: [UInt8](repeating: 0, count: 16))), "tensors: error: bad record header"),
            ("huge header", try TestSupport.compress(TestSupport.rawRecord(header: "{}", payload: [], lengthOverride: 1 << 40)), "tensors: error: record header of"),
        ]
        // The whole corrupt-record corpus too: status 1, one line naming the problem.
        let records = try StreamTests.corruptRecords.map { ($0.0, try TestSupport.compress($0.1), "tensors: error: ", $0.2) }
        for (name, input, expected, words) in cases.map({ ($0.0, $0.1, $0.2, "") }) + records {
            let r = try TestSupport.run("tensors", ["info"], stdin: input, timeout: 20)
            XCTAssertEqual(r.status, 1, name)
            XCTAssertTrue(r.stderr.hasPrefix(expected) && (words.isEmpty || r.stderr.contains(words)), "\(name): \(r.stderr)")
            XCTAssertEqual(r.stderr.split(separator: "\n").count, 1, "\(name): \(r.stderr)")
        }
    }

    func testUsageErrorsAndMissingFiles() throws {
        let missing = try TestSupport.run("tensors", ["info", "/nonexistent/stream.tzst"])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.contains("cannot open /nonexistent/stream.tzst"), missing.stderr)
        let usage = try TestSupport.run("tensors", ["head", "-n", "-3"])
        XCTAssertEqual(usage.status, 64, usage.stderr)
        let help = try TestSupport.run("tensors", ["--help"])
        XCTAssertEqual(help.status, 0)
        XCTAssertTrue(String(decoding: help.stdout, as: UTF8.self).contains("tensors head -n 64"))
    }

    func testProgressOnlyWhenAsked() throws {
        let input = try sampleStream(10, batch: 4)
        let quiet = try TestSupport.run("tensors", ["cat"], stdin: input)
        XCTAssertEqual(quiet.status, 0)
        XCTAssertEqual(quiet.stderr, "")  // stderr is not a terminal here
        let forced = try TestSupport.run("tensors", ["cat", "--progress"], stdin: input)
        XCTAssertEqual(forced.status, 0)
        XCTAssertTrue(forced.stderr.contains("records") && forced.stderr.contains("3"), forced.stderr)
        XCTAssertEqual(try TestSupport.readAll(forced.stdout).count, 3)
    }

    /// Under a pseudo-terminal (util-linux `script`), a binary stream is refused.
    func testRefusesToWriteToATerminal() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/script") else { throw XCTSkip("no /usr/bin/script") }
        let dir = try TestSupport.temporaryDirectory()
        try AtomicFile.write(try sampleStream(2, batch: 2), to: dir + "/in.tzst")
        let tool = TestSupport.productsDirectory.appendingPathComponent("tensors").path
        let r = try TestSupport.run("/usr/bin/script", ["-qec", "\(tool) head -n 1 -i \(dir)/in.tzst", "/dev/null"])
        XCTAssertNotEqual(r.status, 0)
        XCTAssertTrue(String(decoding: r.stdout, as: UTF8.self).contains("refusing to write a binary tensor stream to a terminal"))
    }

    func testFailedRunLeavesNoOutputFile() throws {
        let dir = try TestSupport.temporaryDirectory()
        let out = dir + "/out.tzst"
        let r = try TestSupport.run("tensors", ["head", "-n", "5", "-o", out], stdin: Array(try sampleStream(3, batch: 3).dropLast(4)))
        XCTAssertEqual(r.status, 1)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [])
    }

    func testIDXGzippedAndPlain() throws {
        let dir = try TestSupport.temporaryDirectory()
        // 3 images of 2x2 and their labels, IDX big-endian headers.
        let images: [UInt8] = [0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2] + [0, 255, 128, 1, 2, 3, 4, 5, 250, 251, 252, 253]
        let labels: [UInt8] = [0, 0, 8, 1, 0, 0, 0, 3, 9, 0, 4]
        try AtomicFile.write(images, to: dir + "/img")
        try AtomicFile.write(labels, to: dir + "/lab")
        let gz = Process()
        gz.executableURL = URL(fileURLWithPath: "/bin/gzip")
        gz.arguments = ["-k", dir + "/img"]
        try gz.run(); gz.waitUntilExit()
        for imagePath in [dir + "/img", dir + "/img.gz"] {
            let r = try TestSupport.run("tensors", ["from-idx", imagePath, dir + "/lab", "--batch", "2"])
            XCTAssertEqual(r.status, 0, r.stderr)
            let records = try TestSupport.readAll(r.stdout)
            XCTAssertEqual(records.count, 2)
            XCTAssertEqual(records[0]["x"]!.shape, [2, 1, 2, 2])
            XCTAssertEqual(try records[0]["x"]!.floats()[0...2], [-1, 1, Float(128) / 127.5 - 1])
            XCTAssertEqual(try records.flatMap { try $0["y"]!.int64s() }, [9, 0, 4])
            XCTAssertEqual(try records.flatMap { try $0["id"]!.int64s() }, [0, 1, 2])
        }
        try AtomicFile.write(labels + [7], to: dir + "/lab-bad")
        try AtomicFile.write([0, 0, 8, 1, 0, 0, 0, 4, 9, 0, 4], to: dir + "/lab-short")
        let short = try TestSupport.run("tensors", ["from-idx", dir + "/img", dir + "/lab-short"])
        XCTAssertEqual(short.status, 1)
        XCTAssertTrue(short.stderr.contains("truncated"), short.stderr)
        let notIDX = try TestSupport.run("tensors", ["from-idx", dir + "/lab-bad-missing"])
        XCTAssertEqual(notIDX.status, 1)
    }

    func testPNGRoundTripGridAndFolders() throws {
        let dir = try TestSupport.temporaryDirectory()
        // Exact rounding: values chosen to sit on and beside the rounding boundaries.
        let values: [Float] = [-1, 1, 0, -0.5, 2, -3, Float.nan, 0.001, -1 + 1 / 255, 1 - 2 / 255, 0.5, -0.999]
        XCTAssertEqual(values.map { ImageConversion.byte($0) }, [0, 255, 128, 64, 255, 0, 0, 128, 1, 254, 191, 0])
        // Two grey images in class folders, one RGB stream for the grid.
        let grey = Record([("x", Tensor((0..<8).map { Float($0) / 3.5 - 1 }, shape: [2, 1, 2, 2])),
                           ("id", Tensor([5, 6] as [Int64], shape: [2]))])
        let r = try TestSupport.run("tensors", ["to-png", "--dir", dir + "/shirt"], stdin: try TestSupport.streamBytes([grey]))
        XCTAssertEqual(r.status, 0, r.stderr)
        let png = try PNGFile.read(dir + "/shirt/000005.png")
        XCTAssertEqual([png.width, png.height, png.channels, png.bitDepth], [2, 2, 1, 8])
        XCTAssertEqual(png.samples, [0, 36, 73, 109])
        try FileManager.default.createDirectory(atPath: dir + "/coat", withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: dir + "/shirt/000006.png", toPath: dir + "/coat/a.png")
        let back = try TestSupport.run("tensors", ["from-png", "--labels", dir])
        XCTAssertEqual(back.status, 0, back.stderr)
        let records = try TestSupport.readAll(back.stdout)
        XCTAssertEqual(try records[0]["y"]!.int64s(), [0, 1, 1])  // coat/a.png, shirt/000005, shirt/000006
        XCTAssertEqual(records[0].metadata["labels"], #"{"coat":0,"shirt":1}"#)
        // 8-bit round trip is exact: to-png(from-png(p)) == p.
        let xs = try records[0]["x"]!.floats()
        XCTAssertEqual(xs[4...7].map { ImageConversion.byte($0) }, png.samples.map { UInt8($0) })
        // RGB grid of 3 images in a 2x2 grid with padding 1.
        let rgb = Record([("x", Tensor([Float](repeating: 1, count: 3 * 3 * 2 * 2), shape: [3, 3, 2, 2]))])
        let g = try TestSupport.run("tensors", ["to-png", "--grid", "2x2", "--padding", "1", "-o", dir + "/grid.png"], stdin: try TestSupport.streamBytes([rgb]))
        XCTAssertEqual(g.status, 0, g.stderr)
        let grid = try PNGFile.read(dir + "/grid.png")
        XCTAssertEqual([grid.width, grid.height, grid.channels], [7, 7, 3])
        XCTAssertEqual(grid.samples[(1 * 7 + 1) * 3], 255)  // inside the first cell
        XCTAssertEqual(grid.samples[(4 * 7 + 4) * 3], 0)    // the empty fourth cell
        // A file that is not a PNG is refused in one line.
        try AtomicFile.write(Array("not a png".utf8), to: dir + "/coat/bad.png")
        let bad = try TestSupport.run("tensors", ["from-png", dir + "/coat"])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("is not a PNG file"), bad.stderr)
    }

    /// A PNG built by hand (signature, IHDR, zlib IDAT, IEND with CRCs), so 16-bit input is
    /// tested without any other image tool.
    func handMadePNG(width: Int, height: Int, colorType: UInt8, samples: [UInt16]) -> [UInt8] {
        func be32(_ v: Int) -> [UInt8] { [UInt8(v >> 24 & 255), UInt8(v >> 16 & 255), UInt8(v >> 8 & 255), UInt8(v & 255)] }
        func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
            let body = Array(type.utf8) + data
            let crc = body.withUnsafeBufferPointer { Int(crc32(0, $0.baseAddress, UInt32($0.count))) }
            return be32(data.count) + body + be32(crc)
        }
        let channels = colorType == 2 ? 3 : 1
        var raw: [UInt8] = []
        for y in 0..<height {
            raw.append(0)  // filter: none
            for i in 0..<(width * channels) { let v = samples[y * width * channels + i]; raw += [UInt8(v >> 8), UInt8(v & 255)] }
        }
        var destLength = compressBound(UInt(raw.count))
        var compressed = [UInt8](repeating: 0, count: Int(destLength))
        _ = compressed.withUnsafeMutableBufferPointer { d in raw.withUnsafeBufferPointer { s in compress(d.baseAddress, &destLength, s.baseAddress, UInt(s.count)) } }
        let ihdr = be32(width) + be32(height) + [16, colorType, 0, 0, 0]
        return [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunk("IHDR", ihdr)
            + chunk("IDAT", Array(compressed[0..<Int(destLength)])) + chunk("IEND", [])
    }

    func test16BitGreyAndRGBPNG() throws {
        let dir = try TestSupport.temporaryDirectory()
        try AtomicFile.write(handMadePNG(width: 3, height: 1, colorType: 0, samples: [0, 32768, 65535]), to: dir + "/g16.png")
        let grey = try PNGFile.read(dir + "/g16.png")
        XCTAssertEqual([grey.width, grey.height, grey.channels, grey.bitDepth], [3, 1, 1, 16])
        XCTAssertEqual(grey.samples, [0, 32768, 65535])
        let r = try TestSupport.run("tensors", ["from-png", dir + "/g16.png"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let x = try TestSupport.readAll(r.stdout)[0]["x"]!
        XCTAssertEqual(x.shape, [1, 1, 1, 3])
        let v = try x.floats()
        XCTAssertEqual(v[0], -1); XCTAssertEqual(v[2], 1); XCTAssertEqual(v[1], Float(32768.0 / 65535 * 2 - 1), accuracy: 1e-7)
        try AtomicFile.write(handMadePNG(width: 1, height: 2, colorType: 2, samples: [65535, 0, 0, 0, 0, 65535]), to: dir + "/rgb16.png")
        let rgb = try TestSupport.run("tensors", ["from-png", dir + "/rgb16.png"])
        XCTAssertEqual(rgb.status, 0, rgb.stderr)
        let xr = try TestSupport.readAll(rgb.stdout)[0]["x"]!
        XCTAssertEqual(xr.shape, [1, 3, 2, 1])
        XCTAssertEqual(try xr.floats(), [1, -1, -1, -1, -1, 1])  // planar: R plane, G plane, B plane
    }

    func testStatsMatchesTheWholeStreamAcrossRecords() throws {
        // 10 samples in records of 4, 4, 2: the merged figures equal the direct ones over all values.
        let input = try sampleStream(10, batch: 4)
        let all = try TestSupport.readAll(input).flatMap { try $0["x"]!.doubles() }
        let mean = all.reduce(0, +) / Double(all.count)
        let std = (all.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(all.count)).squareRoot()
        let r = try TestSupport.run("tensors", ["stats", "--json", "--tensor", "x", "--tensor", "id"], stdin: input)
        XCTAssertEqual(r.status, 0, r.stderr)
        let lines = String(decoding: r.stdout, as: UTF8.self).split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.count, 2)
        let x = try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as! [String: Any]
        XCTAssertEqual(x["tensor"] as? String, "x")
        XCTAssertEqual(x["count"] as? Int, 40)
        XCTAssertEqual(x["mean"] as! Double, mean, accuracy: 1e-12)
        XCTAssertEqual(x["std"] as! Double, std, accuracy: 1e-12)
        XCTAssertEqual(x["min"] as? Double, all.min())
        XCTAssertEqual(x["max"] as? Double, all.max())
        let id = try JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as! [String: Any]
        XCTAssertEqual(id["mean"] as! Double, 4.5, accuracy: 1e-12)
        XCTAssertEqual(id["max"] as? Double, 9)
    }

    func testStatsCountsNonFiniteApartAndRefusesUnknownTensors() throws {
        let record = Record([("reward", Tensor([1, Float.nan, 3, Float.infinity], shape: [4]))])
        var s = TensorSummary(name: "reward", dtype: .f32)
        try s.add(record["reward"]!)
        XCTAssertEqual(s.count, 2); XCTAssertEqual(s.nonFinite, 2)
        XCTAssertEqual(s.mean, 2); XCTAssertEqual(s.std, 1)
        let missing = try TestSupport.run("tensors", ["stats", "--tensor", "reward"], stdin: try sampleStream(3, batch: 3))
        XCTAssertEqual(missing.status, 1)
        XCTAssertEqual(missing.stderr, "tensors: error: no tensor `reward` in the stream\n")
    }
}
