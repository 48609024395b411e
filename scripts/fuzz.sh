#!/usr/bin/env bash
# Fuzzes the record decoder with libFuzzer for a bounded time (default 300 s) and reports what it
# found. The decoder's sources are compiled straight into the fuzzer with coverage and
# AddressSanitizer; crashes land in fuzz/artifacts/.
#   scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
mkdir -p .build-fuzz fuzz/corpus fuzz/artifacts
src=Sources/Shared/Stream
swiftc -sanitize=fuzzer,address -parse-as-library -O -module-name FuzzDecoder \
  "$src/DType.swift" "$src/Tensor.swift" "$src/Record.swift" "$src/StreamError.swift" \
  "$src/JSON.swift" "$src/RecordCodec.swift" fuzz/FuzzRecordDecoder.swift \
  -o .build-fuzz/fuzz-record-decoder 2> >(grep -v 'Cannot export local symbol' >&2)
# Seeds: valid records of several dtypes and shapes, written by the seed generator below.
python3 - <<'PY'
import json, struct, os
def rec(tensors, meta=None):
    hdr, buf, off = {}, b"", 0
    if meta: hdr["__metadata__"] = meta
    for name, (dtype, shape, data) in tensors.items():
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        buf += data; off += len(data)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + buf
seeds = {
  "f32": rec({"x": ("F32", [2, 2], bytes(16))}, {"tool": "seed"}),
  "mixed": rec({"x": ("F32", [1, 3], bytes(12)), "y": ("I64", [1], bytes(8)), "s": ("F64", [], bytes(8))}),
  "empty": rec({"e": ("U8", [0, 4], b"")}),
  "none": rec({}),
}
for k, v in seeds.items():
    open(f"fuzz/corpus/seed-{k}", "wb").write(v)
PY
# The Swift backtracer can stall on a sanitizer crash; libFuzzer reports crashes itself.
SWIFT_BACKTRACE=enable=no .build-fuzz/fuzz-record-decoder fuzz/corpus -max_total_time="$seconds" -max_len=4096 \
  -artifact_prefix=fuzz/artifacts/ -print_final_stats=1 2>&1 | tail -n 25
echo "fuzz: corpus $(ls fuzz/corpus | wc -l) inputs; artifacts: $(ls fuzz/artifacts | wc -l)"
