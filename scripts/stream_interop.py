#!/usr/bin/env python3
"""Interop check: Python's safetensors + zstandard are real clients of the tensor stream.

1. `tensors from-idx` writes a stream; Python reads it and compares with the IDX file itself.
2. Python writes a stream of several dtypes; `tensors info --json` and `tensors head` read it,
   and Python reads back what `tensors head` wrote.
Needs: pip install numpy zstandard safetensors. Usage: scripts/stream_interop.py [BIN_DIR]
"""
import gzip, io, json, os, subprocess, sys, tempfile
import numpy as np
import zstandard
from safetensors.numpy import load, save


def read_stream(raw):
    """Yields (tensors, metadata) per record of a stream's bytes. The README's reader: each
    record is an 8-byte header length N, N bytes of JSON, then the data."""
    f = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw), read_across_frames=True)
    while (head := f.read(8)):
        n = int.from_bytes(head, "little")
        header = f.read(n)
        size = max((v["data_offsets"][1] for k, v in json.loads(header).items() if k != "__metadata__"), default=0)
        yield load(head + header + f.read(size)), json.loads(header).get("__metadata__", {})


def write_stream(records):
    """The README's writer: one safetensors blob per record, one zstd frame for all."""
    cctx = zstandard.ZstdCompressor(level=3)
    return cctx.compress(b"".join(save(tensors, metadata=meta) for tensors, meta in records))


def idx(path):
    data = gzip.open(path).read()
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(dims)


def main():
    # Resolved here, not at import: other scripts import read_stream and write_stream.
    bin_dir = sys.argv[1] if len(sys.argv) > 1 else subprocess.check_output(
        ["swift", "build", "-c", "release", "--show-bin-path"], text=True).strip()
    TENSORS = os.path.join(bin_dir, "tensors")
    d = "/usr/share/datasets/fashion-mnist"
    images, labels = f"{d}/t10k-images-idx3-ubyte.gz", f"{d}/t10k-labels-idx1-ubyte.gz"
    if os.path.exists(images):
        raw = subprocess.check_output([TENSORS, "from-idx", images, labels, "--batch", "3000"])
        xs, ys, n = [], [], 0
        for tensors, meta in read_stream(raw):
            xs.append(tensors["x"]); ys.append(tensors["y"]); n += 1
            assert meta["tool"] == "tensors from-idx"
        x, y = np.concatenate(xs), np.concatenate(ys)
        assert n == 4 and x.shape == (10000, 1, 28, 28) and x.dtype == np.float32
        assert np.array_equal(x[:, 0], idx(images).astype(np.float32) / np.float32(127.5) - 1)
        assert np.array_equal(y, idx(labels).astype(np.int64))
        print(f"python read tensors' stream: {n} records, x {x.shape} and y equal to the IDX files")
    else:
        print("skip part 1: dataset-fashion-mnist is not installed")

    rng = np.random.default_rng(0)
    records = [({"x": rng.standard_normal((5, 1, 4, 4)).astype(np.float32),
                 "y": np.arange(5, dtype=np.int64),
                 "h": rng.standard_normal((5, 3)).astype(np.float16),
                 "d": rng.standard_normal(5),
                 "u": np.arange(5, dtype=np.uint8),
                 "i": np.arange(5, dtype=np.int32)}, {"writer": "python"}),
               ({"x": np.zeros((2, 1, 4, 4), np.float32), "y": np.array([7, 8], np.int64),
                 "h": np.zeros((2, 3), np.float16), "d": np.zeros(2), "u": np.zeros(2, np.uint8),
                 "i": np.zeros(2, np.int32)}, {"writer": "python"})]
    raw = write_stream(records)
    info = subprocess.run([TENSORS, "info", "--json"], input=raw, capture_output=True, check=True).stdout
    lines = [json.loads(l) for l in info.decode().splitlines()]
    assert lines[0]["tensors"]["h"] == {"dtype": "F16", "shape": [5, 3]}, lines[0]
    assert lines[0]["metadata"] == {"writer": "python"}
    assert lines[-1]["summary"]["records"] == 2 and lines[-1]["summary"]["samples"] == 7
    head = subprocess.run([TENSORS, "head", "-n", "6"], input=raw, capture_output=True, check=True).stdout
    back = list(read_stream(head))
    assert [len(t["y"]) for t, _ in back] == [5, 1]
    for name in records[0][0]:
        assert np.array_equal(back[0][0][name], records[0][0][name]), name
        assert np.array_equal(back[1][0][name], records[1][0][name][:1]), name
    print("tensors read python's stream (F32, F16, F64, I64, I32, U8) and head's output reads back in python")
    print("interop: ok")


if __name__ == "__main__":
    main()
