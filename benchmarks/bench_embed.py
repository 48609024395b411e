"""`embed` images/s against the same encoder in PyTorch (CPU), with a feature-agreement check.

    python3 benchmarks/bench_embed.py --embed .build/release/embed \
        --encoder /work/runs/enc-simclr.safetensors --data /work/runs/test.tzst --threads 2

Swift is timed end to end as a user runs it (process start, reading and decompressing the
stream, features, compressing and writing the output). PyTorch is timed on the forward passes
only (torch.inference_mode, the stream already decoded into one tensor, batches of --batch), which
favours PyTorch. Both use --threads threads. Besides images/s (wall clock, best of --repeats) it
reports CPU time per image (user + system; for Swift the whole process), which is the steadier
figure on a machine shared with other jobs. Features must agree to 1e-4 (max abs difference).
"""

import argparse
import io
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import zstandard
from safetensors.numpy import load as st_load

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def read_stream(path):
    """The ten-line reader of a tensor stream: zstd frames -> safetensors records."""
    with open(path, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    records, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        header = json.loads(data[pos + 8:pos + 8 + n])
        end = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"] + [0])
        records.append((st_load(bytes(data[pos:pos + 8 + n + end])), header.get("__metadata__", {})))
        pos += 8 + n + end
    return records


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--embed", default=".build/release/embed")
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import torch
    from torch_encoders import load_encoder

    torch.set_num_threads(args.threads)
    records = read_stream(args.data)
    x = np.concatenate([r["x"] for r, _ in records]).astype(np.float32)
    n = x.shape[0]

    # Swift, end to end
    out = tempfile.NamedTemporaryFile(suffix=".tzst", delete=False).name
    swift_times, swift_cpu = [], []
    for _ in range(args.repeats):
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run([args.embed, "--encoder", args.encoder, "--threads", str(args.threads), "-i", args.data, "-o", out, "--quiet"], check=True)
        swift_times.append(time.perf_counter() - t0)
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        swift_cpu.append(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime)
    feats = np.concatenate([r["feat"] for r, _ in read_stream(out)])
    os.unlink(out)

    # PyTorch, forward only
    enc = load_encoder(args.encoder)
    xt = torch.from_numpy(x)
    torch_times, torch_cpu = [], []
    with torch.inference_mode():
        enc(xt[: args.batch])  # warm-up
        for _ in range(args.repeats):
            c0 = time.process_time()
            t0 = time.perf_counter()
            parts = [enc(xt[i:i + args.batch]) for i in range(0, n, args.batch)]
            torch_times.append(time.perf_counter() - t0)
            torch_cpu.append(time.process_time() - c0)
    ref = torch.cat(parts).numpy()
    diff = float(np.abs(ref - feats).max())
    swift_ips = n / min(swift_times)
    torch_ips = n / min(torch_times)
    result = {
        "encoder": os.path.basename(args.encoder), "kind": enc.config["kind"], "images": n, "threads": args.threads,
        "swift_images_per_s": round(swift_ips, 1), "torch_images_per_s": round(torch_ips, 1),
        "speedup": round(swift_ips / torch_ips, 2), "max_abs_feature_diff": diff,
        "swift_cpu_ms_per_image": round(1000 * min(swift_cpu) / n, 4), "torch_cpu_ms_per_image": round(1000 * min(torch_cpu) / n, 4),
        "cpu_speedup": round(min(torch_cpu) / min(swift_cpu), 2),
        "torch": torch.__version__, "agree_1e-4": diff <= 1e-4,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['encoder']} ({result['kind']}), {n} images, {args.threads} threads:"
              f" embed {swift_ips:.0f} img/s (end to end), PyTorch {torch_ips:.0f} img/s (forward only),"
              f" speedup {swift_ips / torch_ips:.2f}x; CPU time per image: embed {result['swift_cpu_ms_per_image']} ms,"
              f" PyTorch {result['torch_cpu_ms_per_image']} ms ({result['cpu_speedup']}x); max |feat diff| {diff:.2e}")
    if diff > 1e-4:
        sys.exit("features disagree beyond 1e-4")


if __name__ == "__main__":
    main()
