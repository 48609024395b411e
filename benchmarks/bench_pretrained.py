#!/usr/bin/env python3
"""Speed of the Swift pretrained encoders (Inception-v3 as pytorch-fid, DINOv2) against PyTorch,
batch 64, the same number of threads, full-size architectures with random weights (no weights are
downloaded; speed does not depend on their values).

    swift build -c release
    nice python3 benchmarks/bench_pretrained.py [--threads 2] [--batch 64] [--repeats 1] [--encoders inception,vits14]

What is timed, on batch of grey 28x28 images in [-1, 1] (the toolkit's data; both sides resize them):
  PyTorch forward  features of the batch, torch.inference_mode (resize + network)
  PyTorch VJP      the same forward with autograd on the input, then backward of <cot, features>
  embed            `embed --encoder E --threads T` (its default chunk, 8 per worker) on a one-record stream of the batch,
                   minus the same command on an empty record (process start, weight load, zstd)
  score --grad     `discrim score --grad --encoder E --threads T` (features and the VJP through the
                   encoder: what adjoint matching and R1 use), minus the same on an empty record
Best of --repeats (default 1: on 2 cores one batch-64 VJP of full-size Inception takes minutes);
wall clock and CPU time are both reported (CPU time is the fairer figure on a shared machine).
PyTorch warms up on the first 8 images; the tools read weights the script has just written. Needs torch, transformers, safetensors, zstandard. The models and streams go to
a temporary folder (the full-size checkpoints are ~90 MB each: never commit them).
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))
import make_encoder_goldens as g  # noqa: E402
from convert_weights import inception_state, dinov2_state  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from stream_interop import write_stream  # noqa: E402


def best(fn, warm, repeats):
    """(wall seconds, CPU seconds) of the fastest of `repeats` calls, after one call of `warm`."""
    warm()
    ts = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        ts.append((time.perf_counter() - t0, time.process_time() - c0))
    return min(ts)


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(cmd, stdin_path):
    with open(stdin_path, "rb") as f:
        t0, c0 = time.perf_counter(), children_cpu()
        subprocess.run(cmd, stdin=f, stdout=subprocess.DEVNULL, check=True)
        return time.perf_counter() - t0, children_cpu() - c0


def tool_time(cmd, full, empty, repeats):
    """(wall, CPU) seconds of the command on the batch minus on an empty record (start-up, load)."""
    a, b = min(run(cmd, full) for _ in range(repeats)), min(run(cmd, empty) for _ in range(repeats))
    return a[0] - b[0], a[1] - b[1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--encoders", default="inception,vits14", help="inception, vits14, vitb14")
    ap.add_argument("--bin", default=os.path.join(HERE, "..", ".build", "release"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    B, T = a.batch, a.threads
    tmp = tempfile.mkdtemp(prefix="bench-pretrained-")
    rng = np.random.default_rng(0)
    x = (rng.random((B, 1, 28, 28), dtype=np.float32) * 2 - 1)
    y = (np.arange(B) % 10).astype(np.int64)
    full, empty = os.path.join(tmp, "x.tzst"), os.path.join(tmp, "empty.tzst")
    open(full, "wb").write(write_stream([({"x": x, "y": y}, {})]))
    open(empty, "wb").write(write_stream([({"x": x[:0], "y": y[:0]}, {})]))
    xt = torch.from_numpy(x)
    print(f"batch {B}, {T} threads, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at the start")
    rows = []
    for name in a.encoders.split(","):
        if name == "inception":
            model = g.inception_model(1, 7)
            tensors, meta = inception_state(model.state_dict())
            fwd = lambda inp: g.inception_ref(model, inp)
        else:
            hidden, layers, heads = {"vits14": (384, 12, 6), "vitb14": (768, 12, 12)}[name]
            model, cfg = g.dinov2_model(8, hidden=hidden, layers=layers, heads=heads, image_size=518)
            tensors, meta = dinov2_state(model.state_dict(), {"num_attention_heads": heads})
            fwd = lambda inp: g.dinov2_ref(model, inp)
        for p in model.parameters():
            p.requires_grad_(False)
        weights = os.path.join(tmp, f"{name}.safetensors")
        save_file(tensors, weights, metadata=meta)

        def torch_forward(n=B):
            with torch.inference_mode():
                fwd(xt[:n])

        cot = torch.randn((B, 2048 if name == "inception" else model.config.hidden_size))

        def torch_vjp(n=B):
            xi = xt[:n].clone().requires_grad_(True)
            (dx,) = torch.autograd.grad(fwd(xi), xi, cot[:n])

        warm = min(8, B)  # warm-up on a slice: the allocator and kernels, not a whole extra batch
        t_tf = best(torch_forward, lambda: torch_forward(warm), a.repeats)
        t_tv = best(torch_vjp, lambda: torch_vjp(warm), a.repeats)
        emb = [os.path.join(a.bin, "embed"), "--encoder", weights, "--threads", str(T), "--quiet"]
        t_emb = tool_time(emb, full, empty, a.repeats)
        # a discriminator on these features (two steps: only its shape matters for the timing)
        feats = os.path.join(tmp, f"feat-{name}.tzst")
        with open(full, "rb") as f, open(feats, "wb") as o:
            subprocess.run(emb, stdin=f, stdout=o, check=True)
        disc = os.path.join(tmp, f"d-{name}.safetensors")
        subprocess.run([os.path.join(a.bin, "discrim"), "train", "--real", feats, "--fake", feats, "-o", disc, "--max-steps", "2",
                        "--batch", "16", "--holdout", "0", "--threads", str(T), "--quiet"], stdout=subprocess.DEVNULL, check=True)
        score = [os.path.join(a.bin, "discrim"), "score", "--model", disc, "--grad", "--encoder", weights, "--threads", str(T)]
        t_sg = tool_time(score, full, empty, a.repeats)
        rows.append((name, t_tf, t_emb, t_tv, t_sg))
        print(f"{name}: (wall s, CPU s) PyTorch forward {t_tf}, embed {t_emb}, PyTorch VJP {t_tv}, score --grad {t_sg}", flush=True)
    print()
    print("images/s (wall clock) and CPU ms per image; ratio = PyTorch time / ours (> 1: ours is faster)")
    print()
    print("| encoder | PyTorch forward | embed | ratio | PyTorch VJP | discrim score --grad | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    cell = lambda t: f"{B / t[0]:.2f} img/s, {1000 * t[1] / B:.0f} CPU ms"
    for name, tf, te, tv, ts in rows:
        print(f"| {name} | {cell(tf)} | {cell(te)} | {tf[0] / te[0]:.2f}x | {cell(tv)} | {cell(ts)} | {tv[0] / ts[0]:.2f}x |")
    print(f"load average {os.getloadavg()[0]:.1f} at the end; models and streams in {tmp}")


if __name__ == "__main__":
    main()
