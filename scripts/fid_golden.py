#!/usr/bin/env python3
"""Golden reference numbers for `fid` (FD, KID, PRDC, low-level image statistics).

Writes small feature streams in the toolkit's format (zstd of concatenated safetensors records)
and the reference numbers computed the way the Python tools compute them:

  * FD: numpy mean / np.cov on float64 features, then pytorch-fid's `calculate_frechet_distance`
    (scipy.linalg.sqrtm of sigma1 @ sigma2, eps retry, real part), copied below verbatim in
    substance;
  * KID: straightforward numpy unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, on subsets whose
    indices are written into the golden JSON (so the Swift test uses the same ones), and on the
    full sets (the deterministic case `fid` uses when the subset size covers both sets);
  * PRDC: the `prdc` package's algorithm (Naeem et al. 2020) with exact pairwise distances;
    precision/recall with k = 3, density/coverage with k = 5;
  * low-level image statistics of docs/algorithms.md section 3.8 on a tiny RGB and grey set.

Usage: python3 scripts/fid_golden.py [OUT_DIR]   (default Tests/SharedTests/Golden)
Needs numpy, scipy, safetensors, zstandard.
"""
import json
import os
import sys

import numpy as np
from scipy import linalg


def stream_bytes(records):
    """records: list of (dict name -> np.ndarray, metadata dict). Returns one zstd stream."""
    import zstandard
    from safetensors.numpy import save

    raw = b"".join(save(t, metadata=m) for t, m in records)
    return zstandard.ZstdCompressor(level=3).compress(raw)


def write_stream(path, arrays, metadata, record_rows):
    """Splits per-sample arrays (leading dimension B) into records of `record_rows` samples."""
    n = next(iter(arrays.values())).shape[0]
    records = []
    for s in range(0, n, record_rows):
        records.append(({k: np.ascontiguousarray(v[s:s + record_rows]) for k, v in arrays.items()}, metadata))
    with open(path, "wb") as f:
        f.write(stream_bytes(records))


def read_stream(path):
    """The ten-line reader of docs/design.md: zstd -dc, then safetensors records back to back."""
    import struct
    import zstandard
    from safetensors.numpy import load

    data = zstandard.ZstdDecompressor().decompressobj().decompress(open(path, "rb").read())
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        header = json.loads(data[pos + 8:pos + 8 + n])
        end = max([v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"] + [0])
        out.append(load(data[pos:pos + 8 + n + end]))
        pos += 8 + n + end
    return out


# ---- pytorch-fid's Frechet distance (src/pytorch_fid/fid_score.py) ----------------------------
def calculate_frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    mu1 = np.atleast_1d(mu1)
    mu2 = np.atleast_1d(mu2)
    sigma1 = np.atleast_2d(sigma1)
    sigma2 = np.atleast_2d(sigma2)
    assert mu1.shape == mu2.shape
    assert sigma1.shape == sigma2.shape
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False) if "disp" in linalg.sqrtm.__code__.co_varnames else (linalg.sqrtm(sigma1.dot(sigma2)), None)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            m = np.max(np.abs(covmean.imag))
            raise ValueError("Imaginary component {}".format(m))
        covmean = covmean.real
    tr_covmean = np.trace(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def stats(feats):
    f = feats.astype(np.float64)
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


# ---- KID ---------------------------------------------------------------------------------------
def mmd2_unbiased(x, y):
    d = x.shape[1]
    m = x.shape[0]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    return float((kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.sum() / (m * m))


# ---- PRDC (clovaai/generative-evaluation-prdc, exact distances) ---------------------------------
def pairwise(a, b):
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def kth(unsorted, k):
    idx = np.argpartition(unsorted, k, axis=-1)[..., :k]
    return np.take_along_axis(unsorted, idx, axis=-1).max(axis=-1)


def prdc(real, fake, k):
    rr = kth(pairwise(real, real), k + 1)
    ff = kth(pairwise(fake, fake), k + 1)
    drf = pairwise(real, fake)
    precision = (drf < rr[:, None]).any(axis=0).mean()
    recall = (drf < ff[None, :]).any(axis=1).mean()
    density = (1.0 / k) * (drf < rr[:, None]).sum(axis=0).mean()
    coverage = (drf.min(axis=1) < rr).mean()
    return dict(precision=float(precision), recall=float(recall), density=float(density), coverage=float(coverage))


# ---- low-level image statistics (docs/algorithms.md 3.8) --------------------------------------------
def lowlevel(x):
    u = np.clip((x.astype(np.float64) + 1) / 2, 0, 1)
    if u.shape[1] == 1:
        lum = u[:, 0]
        flat = lum.reshape(len(u), -1)
        return dict(brightness=float(flat.mean(1).mean()), contrast=float(flat.std(1).mean()),
                    whiteness=float(flat.mean(1).mean()))
    r, g, b = u[:, 0], u[:, 1], u[:, 2]
    lum = (0.299 * r + 0.587 * g + 0.114 * b).reshape(len(u), -1)
    mx, mn = u.max(1), u.min(1)
    sat = np.where(mx > 0, (mx - mn) / np.where(mx > 0, mx, 1), 0).reshape(len(u), -1)
    rg = (r - g).reshape(len(u), -1)
    yb = (0.5 * (r + g) - b).reshape(len(u), -1)
    colorful = np.sqrt(rg.std(1) ** 2 + yb.std(1) ** 2) + 0.3 * np.sqrt(rg.mean(1) ** 2 + yb.mean(1) ** 2)
    return dict(brightness=float(lum.mean(1).mean()), contrast=float(lum.std(1).mean()),
                whiteness=float(mn.reshape(len(u), -1).mean(1).mean()), saturation=float(sat.mean(1).mean()),
                colorfulness=float(colorful.mean()))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "Tests", "SharedTests", "Golden")
    os.makedirs(out, exist_ok=True)
    rng = np.random.RandomState(20261122)
    d = 24
    # Correlated, offset features (an offset of 5 exercises the centring of the covariance).
    mix_a = rng.randn(d, d) / np.sqrt(d)
    mix_b = mix_a + 0.3 * rng.randn(d, d) / np.sqrt(d)
    a = (rng.randn(500, d) @ mix_a + 5.0).astype(np.float32)
    b = (rng.randn(400, d) @ mix_b + 5.2 + 0.1 * rng.randn(d)).astype(np.float32)
    meta = {"encoder": "golden-encoder-v1", "tool": "fid_golden.py"}
    write_stream(os.path.join(out, "fid_a.tzst"), {"feat": a}, meta, record_rows=128)
    write_stream(os.path.join(out, "fid_b.tzst"), {"feat": b}, meta, record_rows=77)

    mu_a, s_a = stats(a)
    mu_b, s_b = stats(b)
    np.savez_compressed(os.path.join(out, "fid_b_stats.npz"), mu=mu_b, sigma=s_b)
    fd = calculate_frechet_distance(mu_a, s_a, mu_b, s_b)
    fd_self = calculate_frechet_distance(mu_a, s_a, mu_a, s_a)

    # KID on 10 subsets of 100 (indices written out) and on the full sets a[:400] vs b.
    ks = np.random.RandomState(7)
    idx_a = [ks.choice(500, 100, replace=False).tolist() for _ in range(10)]
    idx_b = [ks.choice(400, 100, replace=False).tolist() for _ in range(10)]
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    vals = [mmd2_unbiased(a64[ia], b64[ib]) for ia, ib in zip(idx_a, idx_b)]
    kid_sub = dict(mean=float(np.mean(vals)), std=float(np.std(vals, ddof=1)), values=vals, idx_a=idx_a, idx_b=idx_b)
    kid_full = mmd2_unbiased(a64[:400], b64)

    p3 = prdc(a64, b64, 3)
    p5 = prdc(a64, b64, 5)
    prdc_ref = dict(precision=p3["precision"], recall=p3["recall"], density=p5["density"], coverage=p5["coverage"])

    # Tiny image sets: RGB [12, 3, 6, 5] and grey [9, 1, 7, 7] in [-1, 1] (some values outside, clamped).
    x_rgb = np.clip(rng.randn(12, 3, 6, 5) * 0.6 + rng.randn(12, 3, 1, 1) * 0.3, -1.2, 1.2).astype(np.float32)
    x_grey = np.tanh(rng.randn(9, 1, 7, 7)).astype(np.float32)
    write_stream(os.path.join(out, "fid_images_rgb.tzst"), {"x": x_rgb, "feat": rng.randn(12, 3).astype(np.float32)},
                 {"encoder": "pixels"}, record_rows=5)
    write_stream(os.path.join(out, "fid_images_grey.tzst"), {"x": x_grey, "feat": rng.randn(9, 3).astype(np.float32)},
                 {"encoder": "pixels"}, record_rows=4)

    golden = dict(
        fd=fd, fd_self=fd_self, trace_a=float(np.trace(s_a)), trace_b=float(np.trace(s_b)),
        mu_a=mu_a.tolist(), sigma_a=s_a.ravel().tolist(),
        kid_subsets=kid_sub, kid_full=kid_full, prdc=prdc_ref,
        lowlevel_rgb=lowlevel(x_rgb), lowlevel_grey=lowlevel(x_grey),
        versions=dict(numpy=np.__version__, scipy=__import__("scipy").__version__),
    )
    with open(os.path.join(out, "fid_golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
    # Self-check: the stream reads back.
    back = np.concatenate([r["feat"] for r in read_stream(os.path.join(out, "fid_a.tzst"))])
    assert np.array_equal(back, a)
    print(f"FD {fd!r}  KID(subsets) {kid_sub['mean']!r}  KID(full) {kid_full!r}  PRDC {prdc_ref}")


if __name__ == "__main__":
    main()
