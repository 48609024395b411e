"""Speed and parity of the engine (`train`, `sample`) against PyTorch CPU, in one run.

    python3 benchmarks/bench_engine.py --bin .build/release --data train.tzst \
        --checkpoint mlp=/work/runs/base-mlp.safetensors --checkpoint sit=/work/runs/base-sit.safetensors

For every checkpoint (its architecture is read from the checkpoint):
  * parity: `sample --steps 4 --sampler euler --record --no-clamp` gives the states x_k at
    t_k = 1, .75, .5, .25; the Swift velocity is (x_k - x_{k+1}) / (t_k - t_{k+1}); PyTorch
    (benchmarks/torch_models.py, strict load of the same checkpoint) computes v(x_k, t_k, y) and
    the max abs difference is reported (goal <= 1e-4); once with balanced labels, once with the
    null label.
  * training images/s at batch 256: Swift = median `images_per_s` of `train --metrics` (steps
    after the first 3; each step is forward + backward + clip + AdamW + EMA), PyTorch = median
    time of the same step (MSE flow-matching loss, clip_grad_norm_, AdamW).
  * sampling images/s (one NFE): Swift = `sample --steps 1` of 20 records of 256, minus a run
    of 1 record (start-up and checkpoint loading); PyTorch = median of model(x, t, y) under
    no_grad at batch 256.
  * GFLOP/s from an analytic FLOP count (torch forward hooks on Linear/Conv2d plus attention
    matmuls; training = 3 x forward), against the sgemm peak of Debian's OpenBLAS (the library
    the Swift tools use, same core type) and of PyTorch's torch.mm, both 2 threads, 2048^3.
  * peak memory (max RSS) of training: Swift from train's summary line, PyTorch from
    getrusage of a child process that only trains.
"""

import argparse
import io
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def read_stream(data):
    """The ten-line stream reader of the README: zstd frames -> safetensors records."""
    import zstandard
    from safetensors.numpy import load

    raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    records, pos = [], 0
    while pos < len(raw):
        (n,) = struct.unpack("<Q", raw[pos:pos + 8])
        header = json.loads(raw[pos + 8:pos + 8 + n])
        end = pos + 8 + n + max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"] + [0])
        records.append((load(raw[pos:end]), header.get("__metadata__", {})))
        pos = end
    return records


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, **kw)


def parity(bin_dir, ckpt, threads):
    import torch
    import torch_models

    model = torch_models.load_checkpoint(ckpt, ema=False).eval()
    cfg = model.config
    worst = 0.0
    for labels in ([], ["--label", str(cfg["num_classes"])]):
        out = run([f"{bin_dir}/sample", "--model", ckpt, "--no-ema", "--n", "64", "--steps", "4", "--sampler", "euler",
                   "--record", "--no-clamp", "--threads", str(threads), "--quiet"] + labels).stdout
        for rec, meta in read_stream(out):
            traj, times, y = rec["traj.x"], rec["traj.t"], rec["y"]
            for k in range(len(times) - 1):
                v_swift = (traj[:, k].astype(np.float64) - traj[:, k + 1]) / (float(times[k]) - float(times[k + 1]))
                with torch.no_grad():
                    v_torch = model(torch.from_numpy(np.ascontiguousarray(traj[:, k])),
                                    torch.full((len(y),), float(times[k])), torch.from_numpy(y)).double().numpy()
                worst = max(worst, float(np.abs(v_torch - v_swift).max()))
    return worst


def torch_flops(model, cfg, batch):
    """Forward FLOPs (multiply-add = 2) of one batch: Linear/Conv2d via hooks, plus attention."""
    import torch
    import torch.nn as nn

    total = [0]

    def linear(mod, inp, out):
        total[0] += 2 * inp[0].numel() // mod.in_features * mod.in_features * mod.out_features

    def conv(mod, inp, out):
        k = mod.kernel_size[0] * mod.kernel_size[1]
        total[0] += 2 * out.numel() * mod.in_channels * k

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv))
    x = torch.randn(batch, cfg["channels"], cfg["height"], cfg["width"])
    with torch.no_grad():
        model(x, torch.rand(batch), torch.zeros(batch, dtype=torch.long))
    for h in hooks:
        h.remove()
    if cfg["arch"] == "sit":
        tokens = (cfg["height"] // cfg.get("patch", 4)) * (cfg["width"] // cfg.get("patch", 4))
        total[0] += cfg["depth"] * batch * 4 * tokens * tokens * cfg["hidden_size"]  # QK^T and AV
    return total[0]


def torch_train_child(ckpt, batch, threads, iters, queue_path):
    """Runs in a child process: times PyTorch training steps; writes JSON with times and max RSS."""
    import torch
    import torch_models

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch_models.load_checkpoint(ckpt).train()
    cfg = model.config
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0)
    x0 = torch.rand(batch, cfg["channels"], cfg["height"], cfg["width"]) * 2 - 1
    y = torch.randint(0, cfg["num_classes"], (batch,))
    times = []
    for i in range(iters + 2):
        t = torch.rand(batch)
        eps = torch.randn_like(x0)
        tt = t.view(-1, 1, 1, 1)
        xt = (1 - tt) * x0 + tt * eps
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(xt, t, y), eps - x0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(queue_path, "w") as f:
        json.dump({"step_s": statistics.median(times), "max_rss_mib": rss}, f)


def torch_sample_speed(ckpt, batch, threads, iters):
    import torch
    import torch_models

    torch.set_num_threads(threads)
    model = torch_models.load_checkpoint(ckpt, ema=True).eval()
    cfg = model.config
    x = torch.randn(batch, cfg["channels"], cfg["height"], cfg["width"])
    y = torch.arange(batch) % cfg["num_classes"]
    t = torch.full((batch,), 0.5)
    times = []
    with torch.no_grad():
        for i in range(iters + 2):
            start = time.perf_counter()
            model(x, t, y)
            if i >= 2:
                times.append(time.perf_counter() - start)
    return statistics.median(times), torch_flops(model, cfg, batch)


def swift_train_speed(bin_dir, ckpt, data, batch, threads, steps):
    cfg = json.loads(checkpoint_metadata(ckpt)["config"])
    with tempfile.TemporaryDirectory() as tmp:
        metrics = f"{tmp}/m.jsonl"
        with open(data, "rb") as f:
            res = run([f"{bin_dir}/train", "--config", json.dumps(cfg), "--steps", str(steps), "--batch", str(batch),
                       "--warmup", "0", "--lr", "1e-4", "--threads", str(threads), "--metrics", metrics,
                       "-o", f"{tmp}/c.safetensors"], stdin=f)
        rates = [json.loads(l)["images_per_s"] for l in open(metrics)][3:]
        summary = res.stderr.decode().strip().splitlines()[-1]
        rss = float(summary.split("peak memory ")[1].split(" MiB")[0])
        core = summary.split("BLAS core ")[1]
    return statistics.median(rates), rss, core


def swift_sample_speed(bin_dir, ckpt, batch, threads, records=20):
    def timed(n):
        start = time.perf_counter()
        run([f"{bin_dir}/sample", "--model", ckpt, "--n", str(n), "--steps", "1", "--batch", str(batch),
             "--threads", str(threads), "--quiet", "-o", "/dev/null"])
        return time.perf_counter() - start

    timed(batch)  # warm the page cache
    small = min(timed(batch) for _ in range(2))
    big = min(timed(batch * records) for _ in range(2))
    return batch * (records - 1) / (big - small)


def checkpoint_metadata(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__", {})


SGEMM_C = r"""
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
int main(void) {
    int n = 2048; float *a = malloc(4L*n*n), *b = malloc(4L*n*n), *c = malloc(4L*n*n);
    for (long i = 0; i < (long)n*n; i++) { a[i] = (i % 7) * 0.1f; b[i] = (i % 5) * 0.1f; }
    double best = 1e9;
    for (int r = 0; r < 6; r++) {
        struct timespec s, e; clock_gettime(CLOCK_MONOTONIC, &s);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1, a, n, b, n, 0, c, n);
        clock_gettime(CLOCK_MONOTONIC, &e);
        double t = (e.tv_sec - s.tv_sec) + 1e-9 * (e.tv_nsec - s.tv_nsec); if (t < best) best = t;
    }
    printf("%f %s\n", 2.0 * n * n * n / best / 1e9, openblas_get_corename());
    return 0;
}
"""


def sgemm_peaks(threads):
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        with open(f"{tmp}/s.c", "w") as f:
            f.write(SGEMM_C)
        run(["cc", "-O2", f"{tmp}/s.c", "-o", f"{tmp}/s", "-lopenblas"])
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads))
        env.setdefault("OPENBLAS_CORETYPE", "SkylakeX")
        gf, core = run([f"{tmp}/s"], env=env).stdout.decode().split()
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = min(timeit(lambda: a @ b) for _ in range(6))
    return float(gf), core, 2 * 2048 ** 3 / best / 1e9


def timeit(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=".build/release")
    ap.add_argument("--data", required=True, help="training stream (x, y) matching the checkpoints' image shape")
    ap.add_argument("--checkpoint", action="append", required=True, help="NAME=PATH")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=12)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    import multiprocessing as mp
    import torch

    peak_blas, core, peak_torch = sgemm_peaks(args.threads)
    print(f"sgemm 2048^3, {args.threads} threads: OpenBLAS ({core}) {peak_blas:.1f} GFLOP/s, torch.mm {peak_torch:.1f} GFLOP/s")
    print(f"torch {torch.__version__}")
    results = {"sgemm_openblas_gflops": peak_blas, "openblas_core": core, "sgemm_torch_gflops": peak_torch, "models": {}}
    print()
    print("| model | params | parity max abs dv | train img/s Swift | train img/s PyTorch | train GFLOP/s Swift / PyTorch | "
          "sample img/s (1 NFE) Swift | sample img/s PyTorch | sample GFLOP/s Swift / PyTorch | train peak RSS MiB Swift / PyTorch |")
    print("|" + " --- |" * 10)
    for spec in args.checkpoint:
        name, path = spec.split("=", 1)
        import torch_models

        params = sum(p.numel() for p in torch_models.load_checkpoint(path).parameters())
        dv = parity(args.bin, path, args.threads)
        t_s, flops = torch_sample_speed(path, args.batch, args.threads, 10)
        with tempfile.TemporaryDirectory() as tmp:
            ctx = mp.get_context("spawn")
            p = ctx.Process(target=torch_train_child, args=(path, args.batch, args.threads, 8, f"{tmp}/r.json"))
            p.start()
            p.join()
            child = json.load(open(f"{tmp}/r.json"))
        sw_train, sw_rss, sw_core = swift_train_speed(args.bin, path, args.data, args.batch, args.threads, args.train_steps)
        sw_sample = swift_sample_speed(args.bin, path, args.batch, args.threads)
        pt_train = args.batch / child["step_s"]
        pt_sample = args.batch / t_s
        per_image = flops / args.batch
        row = {
            "params": params, "parity_max_abs": dv, "forward_gflop_per_image": per_image / 1e9,
            "train_img_s_swift": sw_train, "train_img_s_torch": pt_train,
            "train_gflops_swift": 3 * per_image * sw_train / 1e9, "train_gflops_torch": 3 * per_image * pt_train / 1e9,
            "sample_img_s_swift": sw_sample, "sample_img_s_torch": pt_sample,
            "sample_gflops_swift": per_image * sw_sample / 1e9, "sample_gflops_torch": per_image * pt_sample / 1e9,
            "train_rss_mib_swift": sw_rss, "train_rss_mib_torch": child["max_rss_mib"], "swift_blas": sw_core,
        }
        results["models"][name] = row
        print(f"| {name} | {params / 1e6:.2f}M | {dv:.2e} | {sw_train:.0f} | {pt_train:.0f} | "
              f"{row['train_gflops_swift']:.1f} / {row['train_gflops_torch']:.1f} | {sw_sample:.0f} | {pt_sample:.0f} | "
              f"{row['sample_gflops_swift']:.1f} / {row['sample_gflops_torch']:.1f} | {sw_rss:.0f} / {child['max_rss_mib']:.0f} |")
        sys.stdout.flush()
    print()
    print(f"Swift tools: BLAS core {results['models'][name]['swift_blas']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
