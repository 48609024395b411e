#!/usr/bin/env python3
"""Where a model's features sit against the real ones (docs/results.md section 0.7): total and
within-class variance, the Frechet distance split into its mean and covariance terms, the
class-mean error, precision (k = 3, Kynkaenniemi et al.) overall and per class, and the median
distance to the nearest real feature.

    python3 scripts/dispersion.py REAL_FEATS.tzst NAME=GEN_FEATS.tzst [NAME=GEN_FEATS.tzst ...]

Each stream holds `feat` [B, D] and `y` [B] (the output of `embed`). Needs numpy, scipy and
safetensors, zstandard (pip); never needed by the tools or the tests.
"""
import os
import sys

import numpy as np
from scipy import linalg
from scipy.spatial.distance import cdist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stream_interop import read_stream  # noqa: E402


def read(path):
    with open(path, "rb") as f:
        records = [t for t, _ in read_stream(f.read())]
    return (np.concatenate([t["feat"] for t in records]).astype(np.float64),
            np.concatenate([t["y"] for t in records]).astype(np.int64))


def within(f, y):
    return sum(np.trace(np.cov(f[y == c].T)) * (y == c).mean() for c in np.unique(y))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    r, yr = read(sys.argv[1])
    mr, cr = r.mean(0), np.cov(r.T)
    d = cdist(r, r)
    np.fill_diagonal(d, np.inf)
    radius = np.sort(d, 1)[:, 2]                 # each real feature's 3rd-nearest real neighbour
    classes = np.unique(yr)
    print(f"real: n {len(r)}, total variance {np.trace(cr):.0f}, within-class {within(r, yr):.0f}")
    print("name\ttotal_var\twithin_var\tfd_mean\tfd_cov\tclass_mean_err\tprecision\tnn_median\t"
          + "\t".join(f"precision_{c}" for c in classes))
    for arg in sys.argv[2:]:
        name, path = arg.split("=", 1)
        f, y = read(path)
        mf, cf = f.mean(0), np.cov(f.T)
        fd_cov = np.trace(cr + cf - 2 * linalg.sqrtm(cr @ cf).real)
        err = np.mean([((f[y == c].mean(0) - r[yr == c].mean(0)) ** 2).sum() for c in classes])
        dist = cdist(f, r)
        inside = (dist <= radius[None, :]).any(1)
        per = "\t".join(f"{inside[y == c].mean():.3f}" for c in classes)
        print(f"{name}\t{np.trace(cf):.0f}\t{within(f, y):.0f}\t{((mr - mf) ** 2).sum():.1f}\t{fd_cov:.1f}\t"
              f"{err:.1f}\t{inside.mean():.3f}\t{np.median(dist.min(1)):.2f}\t{per}")


if __name__ == "__main__":
    main()
