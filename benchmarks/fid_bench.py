#!/usr/bin/env python3
"""FD speed, d = 2048, n = 50,000 per side, float64, from features to the number.

Writes two feature streams (toolkit format: zstd of safetensors records, `feat` F32 [B, 2048])
once into a work folder, then in the same run times:

  1. pytorch-fid's path: np.mean / np.cov (float64) per side + scipy.linalg.sqrtm(sigma1 @ sigma2);
  2. torch-fidelity's eigenvalue route: same statistics + np.linalg.eigvals(sigma1 @ sigma2);
  3. our `fid A B --threads 2 --json` (reads and decompresses the streams itself, so its time
     includes I/O that the Python paths, given the arrays in memory, do not pay).

Usage: python3 benchmarks/fid_bench.py [--fid .build/release/fid] [--work /tmp/fid_bench] [--n 50000] [--d 2048]
For a fair numpy run, unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for this command only
(see docs/metrics.md); the script prints the BLAS kernel numpy uses.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from scipy import linalg

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from fid_golden import calculate_frechet_distance  # noqa: E402  (pytorch-fid's function)


def write_features(path, n, d, seed, shift, rows=1000):
    import zstandard
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    mix = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32)
    mean = (shift + 0.1 * rng.standard_normal(d)).astype(np.float32)
    cctx = zstandard.ZstdCompressor(level=1, threads=2)
    with open(path + ".tmp", "wb") as f, cctx.stream_writer(f) as w:
        for s in range(0, n, rows):
            b = min(rows, n - s)
            z = rng.standard_normal((b, d), dtype=np.float32)
            feat = np.maximum(z @ mix + mean, 0).astype(np.float32)  # ReLU-like, like pooled CNN features
            w.write(save({"feat": feat}, metadata={"encoder": "bench-synthetic"}))
    os.replace(path + ".tmp", path)


def read_features(path):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
    from fid_golden import read_stream
    return np.concatenate([r["feat"] for r in read_stream(path)])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fid", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".build", "release", "fid"))
    ap.add_argument("--work", default="/tmp/fid_bench")
    ap.add_argument("--n", type=int, default=50000)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--skip-sqrtm", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    pa = os.path.join(args.work, f"a_{args.n}_{args.d}.tzst")
    pb = os.path.join(args.work, f"b_{args.n}_{args.d}.tzst")
    for p, seed, shift in ((pa, 1, 0.5), (pb, 2, 0.6)):
        if not os.path.exists(p):
            t = time.time()
            write_features(p, args.n, args.d, seed, shift)
            print(f"wrote {p} in {time.time() - t:.1f} s", flush=True)

    try:
        import threadpoolctl
        info = [(i["internal_api"], i.get("architecture"), i["num_threads"], i["version"]) for i in threadpoolctl.threadpool_info()]
    except ImportError:
        info = "threadpoolctl not installed"
    print(f"numpy {np.__version__}, scipy {__import__('scipy').__version__}, BLAS {info}")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE')} OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE')}")

    t0 = time.time()
    fa = read_features(pa)
    fb = read_features(pb)
    t_load = time.time() - t0
    print(f"features: {fa.shape} {fa.dtype} and {fb.shape}; reading both streams in Python took {t_load:.2f} s", flush=True)

    results = {}
    # Statistics, as pytorch-fid computes them (float64).
    t0 = time.time()
    mu1, s1 = np.mean(fa, axis=0, dtype=np.float64), np.cov(fa, rowvar=False)
    mu2, s2 = np.mean(fb, axis=0, dtype=np.float64), np.cov(fb, rowvar=False)
    t_stats = time.time() - t0
    print(f"numpy statistics (mean + np.cov, both sides): {t_stats:.2f} s", flush=True)

    # torch-fidelity's eigenvalue route.
    t0 = time.time()
    diff = mu1 - mu2
    tr = np.sum(np.sqrt(np.linalg.eigvals(s1.dot(s2)).astype("complex128")).real)
    fd_eig = float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr)
    t_eig = time.time() - t0
    results["eigvals"] = (fd_eig, t_stats + t_eig)
    print(f"eigvals route: FD {fd_eig:.10f}  distance {t_eig:.2f} s, total {t_stats + t_eig:.2f} s", flush=True)

    if not args.skip_sqrtm:
        t0 = time.time()
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fd_sqrtm = calculate_frechet_distance(mu1, s1, mu2, s2)
        t_sqrtm = time.time() - t0
        results["sqrtm"] = (fd_sqrtm, t_stats + t_sqrtm)
        print(f"pytorch-fid sqrtm: FD {fd_sqrtm:.10f}  distance {t_sqrtm:.2f} s, total {t_stats + t_sqrtm:.2f} s", flush=True)
    del fa, fb

    t0 = time.time()
    out = subprocess.run([args.fid, pa, pb, "--threads", "2", "--json", "--quiet"], check=True, capture_output=True, text=True)
    t_ours = time.time() - t0
    ours = json.loads(out.stdout)
    results["ours"] = (ours["fd"], t_ours)
    print(f"ours (fid --threads 2, OpenBLAS {ours['blas']['core']}): FD {ours['fd']:.10f}  total {t_ours:.2f} s "
          f"(read + statistics {ours['seconds']['read']:.2f} s, distance {ours['seconds']['metrics']:.2f} s, "
          f"route {ours['fd_terms']['route']})", flush=True)

    ref = results.get("sqrtm", results["eigvals"])[0]
    print("\nPython times start from arrays in memory; '+ read' adds reading the same streams in Python,"
          " which is where ours starts.")
    print("\n| implementation | FD | rel. diff vs sqrtm | seconds (from arrays) | ours faster by | seconds (+ read) | ours faster by |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, (fd, sec) in results.items():
        if name == "ours":
            print(f"| ours (`fid --threads 2`, from the stream files) | {fd:.10f} | {abs(fd - ref) / abs(ref):.1e} | {sec:.2f} | 1.00x | {sec:.2f} | 1.00x |")
        else:
            label = {"sqrtm": "pytorch-fid: np.cov + scipy sqrtm", "eigvals": "torch-fidelity: np.cov + eigvals(s1 s2)"}[name]
            print(f"| {label} | {fd:.10f} | {abs(fd - ref) / abs(ref):.1e} | {sec:.2f} | {sec / t_ours:.2f}x "
                  f"| {sec + t_load:.2f} | {(sec + t_load) / t_ours:.2f}x |")


if __name__ == "__main__":
    main()
