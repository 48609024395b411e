#!/usr/bin/env python3
"""A drop-in replacement for `embed`, in Python: PCA features of the pixels.

It shows that the stream contract is all a custom stage needs (docs/stream.md): read zstd
safetensors records from stdin, add `feat` F32 [B, D], name the feature space in the metadata key
`encoder`, pass every other tensor and metadata key through, write records to stdout.

    python3 examples/pca_embed.py fit -o pca.safetensors --dim 64 < train.tzst
    python3 examples/pca_embed.py --encoder pca.safetensors < samples.tzst > samples-feat.tzst

Needs numpy, safetensors and zstandard (pip install numpy safetensors zstandard). The encoder's
digest is the SHA-256 of its file, as for the Swift encoders, so `discrim` and `fid` refuse to mix
its features with another space's.
"""
import argparse
import hashlib
import io
import json
import sys

import numpy as np
import zstandard
from safetensors.numpy import load, save


def read_stream(f):
    """Yields (tensors, metadata) per record of a zstd tensor stream."""
    z = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
    while True:
        head = z.read(8)
        if not head:
            return
        if len(head) < 8:
            sys.exit("pca_embed: truncated record header")
        header = z.read(int.from_bytes(head, "little"))
        meta = json.loads(header)
        size = max((v["data_offsets"][1] for k, v in meta.items() if k != "__metadata__"), default=0)
        data = z.read(size)
        if len(data) < size:
            sys.exit("pca_embed: truncated record data")
        yield load(head + header + data), meta.get("__metadata__", {})


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", nargs="?", default="apply", choices=["apply", "fit"])
    p.add_argument("--encoder", help="PCA file written by `fit` (apply)")
    p.add_argument("-o", "--output", help="PCA file to write (fit)")
    p.add_argument("--dim", type=int, default=64, help="number of components (fit)")
    p.add_argument("--limit", type=int, default=20000, help="images to fit on (fit)")
    a = p.parse_args()
    stdin = sys.stdin.buffer

    if a.command == "fit":
        if not a.output:
            sys.exit("pca_embed: fit needs -o FILE")
        xs, n = [], 0
        for tensors, _ in read_stream(stdin):
            x = tensors["x"].reshape(len(tensors["x"]), -1).astype(np.float64)
            xs.append(x)
            n += len(x)
            if n >= a.limit:
                break
        x = np.concatenate(xs)[: a.limit]
        mean = x.mean(0)
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        comps = vt[: a.dim]
        # sign convention: the largest-magnitude entry of each component is positive (deterministic)
        comps *= np.sign(comps[np.arange(a.dim), np.abs(comps).argmax(1)])[:, None]
        blob = save({"mean": mean.astype(np.float32), "components": comps.astype(np.float32)},
                    metadata={"kind": "pca", "dim": str(a.dim), "fit_images": str(len(x))})
        with open(a.output, "wb") as f:
            f.write(blob)
        return

    if not a.encoder:
        sys.exit("pca_embed: give --encoder FILE (from `fit`)")
    raw = open(a.encoder, "rb").read()
    digest = hashlib.sha256(raw).hexdigest()
    enc = load(raw)
    mean, comps = enc["mean"], enc["components"]
    out = zstandard.ZstdCompressor(level=1).stream_writer(sys.stdout.buffer, closefd=False)
    for tensors, meta in read_stream(stdin):
        if "x" not in tensors:
            sys.exit("pca_embed: a record has no `x`")
        x = tensors["x"].reshape(len(tensors["x"]), -1)
        if x.shape[1] != mean.shape[0]:
            sys.exit(f"pca_embed: images have {x.shape[1]} values, the PCA expects {mean.shape[0]}")
        tensors["feat"] = ((x - mean) @ comps.T).astype(np.float32)
        meta = dict(meta, encoder=digest)
        out.write(save(tensors, metadata=meta))
        out.flush(zstandard.FLUSH_BLOCK)  # the next stage sees each record at once
    out.flush(zstandard.FLUSH_FRAME)


if __name__ == "__main__":
    main()
