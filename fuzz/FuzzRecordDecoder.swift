// libFuzzer entry point for the record decoder: any byte string must either decode or throw,
// never trap, hang or allocate without bound. Built by scripts/fuzz.sh with -sanitize=fuzzer.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRecordDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var limits = RecordCodec.Limits()
    limits.maxHeaderBytes = 1 << 16
    limits.maxRecordBytes = 1 << 20
    if let record = try? RecordCodec.decode(bytes, limits: limits) {
        // A record that decodes must re-encode to canonical bytes that decode to the same bytes.
        let canonical = RecordCodec.encode(record)
        let again = try? RecordCodec.decode(canonical, limits: limits)
        precondition(again.map(RecordCodec.encode) == canonical, "re-encoded record differs")
    }
    return 0
}
