import XCTest
import Shared

final class StreamRoundTripTests: XCTestCase {
    func testRecordEncodeDecode() throws {
        let record = Record([("x", Tensor([1, 2, 3, 4] as [Float], shape: [2, 2])), ("y", Tensor([7, 8] as [Int64], shape: [2]))],
                            metadata: ["tool": "test"])
        let bytes = RecordCodec.encode(record)
        let back = try RecordCodec.decode(bytes)
        XCTAssertEqual(back["x"], record["x"])
        XCTAssertEqual(back["y"], record["y"])
        XCTAssertEqual(back.metadata, record.metadata)
    }
}

final class DigestTests: XCTestCase {
    func testSHA256KnownVectors() {
        XCTAssertEqual(SHA256.hex([]), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        XCTAssertEqual(SHA256.hex(Array("abc".utf8)), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let long = Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8)
        XCTAssertEqual(SHA256.hex(long), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        XCTAssertEqual(SHA256.hex([UInt8](repeating: 0x61, count: 1_000_000)), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }
}

final class FileReadTests: XCTestCase {
    /// `readFile` reads a file whole (empty, below and above its 64 KiB chunk), and
    /// `Checkpoint.readDigested` gives what `read` and `digest` give from one read.
    func testReadFileAndReadDigested() throws {
        let dir = try TestSupport.temporaryDirectory()
        for n in [0, 1, 65_535, 65_536, 1_000_003] {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            let path = dir + "/f\(n)"
            FileManager.default.createFile(atPath: path, contents: Data(bytes))
            XCTAssertEqual(try readFile(path), bytes, "\(n) bytes")
        }
        let record = Record([("w", Tensor([1, 2, 3] as [Float], shape: [3]))], metadata: ["config": "{}"])
        try Checkpoint.write(record, to: dir + "/c.safetensors")
        let (back, digest) = try Checkpoint.readDigested(dir + "/c.safetensors")
        XCTAssertEqual(back["w"], record["w"])
        XCTAssertEqual(back.metadata["config"], "{}")
        XCTAssertEqual(digest, try Checkpoint.digest(dir + "/c.safetensors"))
        XCTAssertThrowsError(try Checkpoint.readDigested(dir + "/f1"))
        XCTAssertThrowsError(try readFile(dir + "/missing"))
        XCTAssertThrowsError(try readFile(dir))
    }
}
