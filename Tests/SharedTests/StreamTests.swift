import XCTest
import Shared

final class StreamTests: XCTestCase {
    func randomBytes(_ n: Int, seed: UInt64) -> [UInt8] {
        var g = CounterRNG(seed: seed)
        return (0..<n).map { _ in UInt8(truncatingIfNeeded: g.next()) }
    }

    func testEveryDTypeRoundTrips() throws {
        var record = Record()
        for (i, dtype) in DType.allCases.enumerated() {
            record["t.\(dtype.rawValue)"] = Tensor(dtype: dtype, shape: [2, 3], bytes: randomBytes(6 * dtype.size, seed: UInt64(i)))
        }
        record["scalar"] = Tensor([3.5] as [Double], shape: [])
        record["empty"] = Tensor([Float](), shape: [0, 5])
        record["empty2"] = Tensor([Int64](), shape: [4, 0])
        record.metadata = ["k": "v", "quote\"s": "line\nbreak \u{1F600} \\ /", "": ""]
        let back = try TestSupport.readAll(try TestSupport.streamBytes([record, record]))
        XCTAssertEqual(back.count, 2)
        for r in back {
            XCTAssertEqual(r.metadata, record.metadata)
            XCTAssertEqual(Set(r.names), Set(record.names))
            for name in record.names { XCTAssertEqual(r[name], record[name], name) }
        }
    }

    func testTypedAccessors() throws {
        let t = Tensor([1.5, -2, 3] as [Float], shape: [3])
        XCTAssertEqual(try t.floats(), [1.5, -2, 3])
        XCTAssertEqual(try t.doubles(), [1.5, -2, 3])
        let half = Tensor(dtype: .f16, shape: [2], bytes: [0x00, 0x3C, 0x00, 0xC0])  // 1.0, -2.0
        XCTAssertEqual(try half.floats(), [1, -2])
        let bf = Tensor(dtype: .bf16, shape: [2], bytes: [0x80, 0x3F, 0x40, 0xC0])  // 1.0, -3.0
        XCTAssertEqual(try bf.floats(), [1, -3])
        XCTAssertEqual(try Tensor([5, -6] as [Int32], shape: [2]).int64s(), [5, -6])
        XCTAssertThrowsError(try t.int64s())
    }

    func testEmptyStreamsAndConcatenation() throws {
        XCTAssertEqual(try TestSupport.readAll([]).count, 0)  // zero bytes: no records
        XCTAssertEqual(try TestSupport.readAll(try TestSupport.streamBytes([])).count, 0)  // an empty frame
        let a = Record([("x", Tensor([1, 2] as [Float], shape: [2]))])
        let b = Record([("x", Tensor([3] as [Float], shape: [1]))])
        let joined = try TestSupport.streamBytes([a]) + TestSupport.streamBytes([]) + TestSupport.streamBytes([b, a])
        let back = try TestSupport.readAll(joined)
        XCTAssertEqual(back.map { $0["x"]! }, [a["x"]!, b["x"]!, a["x"]!])
    }

    func testRecordOver64MiB() throws {
        let n = 17_000_000  // 68 MB of F32: exercises the chunked large-tensor path
        var values = [Float](repeating: 0, count: n)
        for i in stride(from: 0, to: n, by: 4099) { values[i] = Float(i) }
        let record = Record([("x", Tensor(values, shape: [n])), ("y", Tensor([1] as [Int64], shape: [1]))])
        let back = try TestSupport.readAll(try TestSupport.streamBytes([record]))
        XCTAssertEqual(back.count, 1)
        XCTAssertEqual(back[0]["x"], record["x"])
        XCTAssertThrowsError(try TestSupport.readAll(try TestSupport.streamBytes([record]), limits: .init(maxRecordBytes: 1 << 20))) { error in
            XCTAssertTrue("\(error)".contains("exceeds the limit"), "\(error)")
        }
    }

    func testCanonicalBytesAndHeaderPadding() throws {
        let r1 = Record([("b", Tensor([1] as [Float], shape: [1])), ("a", Tensor([2] as [Int64], shape: [1]))], metadata: ["z": "1", "a": "2"])
        let r2 = Record([("a", Tensor([2] as [Int64], shape: [1])), ("b", Tensor([1] as [Float], shape: [1]))], metadata: ["a": "2", "z": "1"])
        let bytes = RecordCodec.encode(r1)
        XCTAssertEqual(bytes, RecordCodec.encode(r2))
        let n = bytes.withUnsafeBytes { $0.load(as: UInt64.self) }
        XCTAssertEqual(n % 8, 0)
    }

    func testSplittingKeepsPerRecordTensors() throws {
        var r = Record([("x", Tensor([Float](repeating: 1, count: 12), shape: [3, 4])),
                        ("traj.t", Tensor([1, 0.5, 0] as [Float], shape: [3]))])
        r.metadata[Record.perRecordKey] = "traj.t"
        let head = r.samples(0, 2)
        XCTAssertEqual(head["x"]!.shape, [2, 4])
        XCTAssertEqual(head["traj.t"]!.shape, [3])
    }

    /// Malformed records (uncompressed), each with the words its error must contain.
    static var corruptRecords: [(String, [UInt8], String)] {
        let f4 = [UInt8](repeating: 0, count: 16)
        return [
            ("header past end", TestSupport.rawRecord(header: "{}", payload: [], lengthOverride: 1000), "record cut short"),
            ("invalid JSON", TestSupport.rawRecord(header: "{\"x\":", payload: []), "invalid JSON"),
            ("invalid UTF-8", TestSupport.rawRecord(header: "{\"x\":{}}", payload: []).enumerated().map { $0.offset == 10 ? 0xFF : $0.element }, "UTF-8"),
            ("not an object", TestSupport.rawRecord(header: "[1, 2]  ", payload: []), "does not start with '{'"),
            ("unknown dtype", TestSupport.rawRecord(header: #"{"x":{"dtype":"Q7","shape":[4],"data_offsets":[0,16]}}"#, payload: f4), "unknown dtype"),
            ("negative dim", TestSupport.rawRecord(header: #"{"x":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}"#, payload: f4), "non-negative integer"),
            ("overflowing dims", TestSupport.rawRecord(header: #"{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}}"#, payload: f4), "overflows"),
            ("size mismatch", TestSupport.rawRecord(header: #"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#, payload: f4), "needs 12"),
            ("offsets reversed", TestSupport.rawRecord(header: #"{"x":{"dtype":"F32","shape":[0],"data_offsets":[16,0]}}"#, payload: f4), "end before they begin"),
            ("overlap", TestSupport.rawRecord(header: #"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"y":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#, payload: f4), "overlaps"),
            ("hole", TestSupport.rawRecord(header: #"{"x":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#, payload: f4), "hole"),
            ("offsets past data", TestSupport.rawRecord(header: #"{"x":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#, payload: f4), "record cut short"),
            ("duplicate key", TestSupport.rawRecord(header: #"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#, payload: f4), "duplicate key"),
            ("metadata not strings", TestSupport.rawRecord(header: #"{"__metadata__":{"a":1}}"#, payload: []), "not a string"),
            ("missing field", TestSupport.rawRecord(header: #"{"x":{"dtype":"F32","shape":[4]}}"#, payload: f4), "needs dtype, shape and data_offsets"),
            ("huge header length", TestSupport.rawRecord(header: "{}", payload: [], lengthOverride: 1 << 62), "exceeds the limit"),
            ("huge tensor", TestSupport.rawRecord(header: #"{"x":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}"#, payload: f4), "exceeds the limit"),
            ("short length field", [1, 2, 3], "record cut short"),
        ]
    }

    /// Every malformed record is refused with a message naming the problem, never a trap.
    func testCorruptRecordsAreRefused() throws {
        for (name, raw, expected) in Self.corruptRecords {
            XCTAssertThrowsError(try TestSupport.readAll(try TestSupport.compress(raw)), name) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(name): got \"\(error)\"")
            }
        }
    }

    func testCorruptZstdIsRefused() throws {
        let good = try TestSupport.streamBytes([Record([("x", Tensor([Float](repeating: 0.25, count: 1000), shape: [1000]))])])
        let cases: [(String, [UInt8], String)] = [
            ("not zstd", Array("hello, this is plain text and not a stream".utf8), "not a zstd-compressed"),
            ("truncated", Array(good.dropLast(7)), "truncated"),
            ("garbage after frame", good + Array("trailing garbage".utf8), "corrupt zstd"),
            ("flipped byte", good.enumerated().map { $0.offset == good.count / 2 ? $0.element ^ 0x5A : $0.element }, "corrupt zstd"),
        ]
        for (name, raw, expected) in cases {
            XCTAssertThrowsError(try TestSupport.readAll(raw), name) { error in
                XCTAssertTrue("\(error)".contains(expected), "\(name): got \"\(error)\"")
            }
        }
    }

    func testJSONParserEdgeCases() throws {
        XCTAssertEqual(try JSON.parse(Array(#"{"a":[1,2.5,-3,"\u00e9\ud83d\ude00"],"b":{"c":null,"d":true}}"#.utf8)),
                       .object([("a", .array([.integer(1), .number(2.5), .number(-3), .string("é😀")])),
                                ("b", .object([("c", .null), ("d", .bool(true))]))]))
        XCTAssertEqual(try JSON.parse(Array("18446744073709551615".utf8)), .integer(UInt64.max))
        XCTAssertEqual(try JSON.parse(Array("18446744073709551616".utf8)), .number(18446744073709551616))
        for bad in ["", "{", "{\"a\"}", "[1,]", "01", "\"\\x\"", "\"\\ud800\"", "{\"a\":1}x", String(repeating: "[", count: 100)] {
            XCTAssertThrowsError(try JSON.parse(Array(bad.utf8)), bad)
        }
    }
}
