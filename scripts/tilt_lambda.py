#!/usr/bin/env python3
"""Which reward weight lambda would make the tilt p_base * exp(lambda * r) match the data, judged
from a discriminator's held-out logits alone (docs/results.md section 0.6)?

Self-normalised importance weights exp(lambda * r) on scored base samples estimate the tilted
distribution's mean logit; the lambda at which it equals the held-out real images' mean logit is
printed, with the effective sample size of the weights at a few lambdas (a handful of samples
carrying all the weight means the estimate is not to be trusted).

    python3 scripts/tilt_lambda.py FAKE_SCORED.tzst REAL_SCORED.tzst     (streams with `reward`)

Needs numpy, zstandard and safetensors (pip); never needed by the tools or the tests.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stream_interop import read_stream  # noqa: E402


def rewards(path):
    with open(path, "rb") as f:
        return np.concatenate([t["reward"] for t, _ in read_stream(f.read())]).astype(np.float64)


def tilted(fake, lam):
    w = np.exp(lam * fake - (lam * fake).max())
    w /= w.sum()
    return float(np.dot(w, fake)), float(1 / (w ** 2).sum())


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    fake, real = rewards(sys.argv[1]), rewards(sys.argv[2])
    print(f"n fake {len(fake)} real {len(real)}; mean logit fake {fake.mean():.3f} real {real.mean():.3f}")
    for lam in [0.5, 1, 2, 3, 5, 10]:
        mean, ess = tilted(fake, lam)
        print(f"lambda {lam:4}: tilted mean logit {mean:.3f}, effective sample size {ess:.0f}")
    lo, hi = 0.0, 20.0  # the tilted mean rises with lambda: bisect
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tilted(fake, mid)[0] < real.mean() else (lo, mid)
    print(f"moment-matching lambda: {lo:.2f}")


if __name__ == "__main__":
    main()
