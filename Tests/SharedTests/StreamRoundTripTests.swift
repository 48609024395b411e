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
