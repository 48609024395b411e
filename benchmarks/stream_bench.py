#!/usr/bin/env python3
"""Stream codec speed: `tensors` against Python's zstandard + safetensors, same files, same run.

Two kinds of F32 payload, about 1 GB each: Fashion-MNIST images (compressible, ratio ~0.3) and
standard normal noise (incompressible, like features or latents). For each:
  decode+validate  `tensors info --summary FILE`     vs python: decompress, safetensors.load
  encode           `tensors cat FILE > /dev/null`    minus the decode time, vs python: save+compress
Then `tensors info` on a ~2 GB-payload stream: peak RSS.
Needs: pip install numpy zstandard safetensors; dataset-fashion-mnist for the images.
Usage: benchmarks/stream_bench.py [BIN_DIR] [WORK_DIR]
"""
import io, json, os, subprocess, sys, time
import numpy as np
import zstandard
from safetensors.numpy import load, save

BIN = sys.argv[1] if len(sys.argv) > 1 else subprocess.check_output(
    ["swift", "build", "-c", "release", "--show-bin-path"], text=True).strip()
WORK = sys.argv[2] if len(sys.argv) > 2 else "/tmp/stream-bench"
TENSORS = os.path.join(BIN, "tensors")
os.makedirs(WORK, exist_ok=True)


def timed(cmd, stdout=subprocess.DEVNULL):
    """Runs cmd, returns (seconds, peak RSS in MB). RSS comes from GNU time: a child's own
    ru_maxrss would also count the Python parent's pages it shared between fork and exec."""
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stdout=stdout, stderr=subprocess.PIPE, text=True, check=True)
    return time.perf_counter() - t, int(r.stderr.strip().splitlines()[-1]) / 1024


def best(f, n=3):
    return min(f() for _ in range(n))


def python_decode(path):
    payload = 0
    with open(path, "rb") as fh:
        f = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        while (head := f.read(8)):
            n = int.from_bytes(head, "little")
            header = f.read(n)
            size = max(v["data_offsets"][1] for k, v in json.loads(header).items() if k != "__metadata__")
            tensors = load(head + header + f.read(size))
            payload += sum(t.nbytes for t in tensors.values())
    return payload


def python_encode(records, path, level=1):
    with open(path, "wb") as fh:
        w = zstandard.ZstdCompressor(level=level, write_checksum=True).stream_writer(fh)
        for r in records:
            w.write(save(r))
            w.flush(zstandard.FLUSH_BLOCK)
        w.flush(zstandard.FLUSH_FRAME)


def read_records(path):
    out = []
    with open(path, "rb") as fh:
        f = zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
        while (head := f.read(8)):
            n = int.from_bytes(head, "little")
            header = f.read(n)
            size = max(v["data_offsets"][1] for k, v in json.loads(header).items() if k != "__metadata__")
            out.append(load(head + header + f.read(size)))
    return out


def main():
    images = os.path.join(WORK, "images.tzst")
    noise = os.path.join(WORK, "noise.tzst")
    d = "/usr/share/datasets/fashion-mnist"
    if not os.path.exists(images):
        one = os.path.join(WORK, "train.tzst")
        with open(one, "wb") as out:
            subprocess.check_call([TENSORS, "from-idx", f"{d}/train-images-idx3-ubyte.gz",
                                   f"{d}/train-labels-idx1-ubyte.gz"], stdout=out)
        with open(images, "wb") as out:  # 5 x 189 MB of payload; cat of streams is a stream
            for _ in range(5):
                out.write(open(one, "rb").read())
    if not os.path.exists(noise):
        rng = np.random.default_rng(0)
        recs = [{"x": rng.standard_normal((1000, 1, 28, 28), dtype=np.float32),
                 "id": np.arange(i * 1000, (i + 1) * 1000, dtype=np.int64)} for i in range(300)]
        python_encode(recs, noise)
    rows = []
    for name, path in [("images", images), ("noise", noise)]:
        payload = python_decode(path)
        gb = payload / 1e9
        t_dec = best(lambda: timed([TENSORS, "info", "--summary", path])[0])
        t_cat = best(lambda: timed([TENSORS, "cat", path])[0])
        t_enc = max(t_cat - t_dec, 1e-9)
        t_pdec = best(lambda: (lambda t: (python_decode(path), time.perf_counter() - t)[1])(time.perf_counter()), 2)
        recs = read_records(path)
        out = os.path.join(WORK, "py-out.tzst")
        t_penc = best(lambda: (lambda t: (python_encode(recs, out), time.perf_counter() - t)[1])(time.perf_counter()), 2)
        del recs
        rows.append((name, gb, os.path.getsize(path) / 1e9, gb / t_dec, gb / t_pdec, gb / t_enc, gb / t_penc))
    print(f"{'payload':8} {'GB':>6} {'zstd GB':>8} {'decode GB/s':>12} {'python':>8} {'ratio':>6} {'encode GB/s':>12} {'python':>8} {'ratio':>6}")
    for name, gb, zgb, d_s, d_p, e_s, e_p in rows:
        print(f"{name:8} {gb:6.2f} {zgb:8.2f} {d_s:12.2f} {d_p:8.2f} {d_s / d_p:6.1f} {e_s:12.2f} {e_p:8.2f} {e_s / e_p:6.1f}")
    big = os.path.join(WORK, "big.tzst")
    if not os.path.exists(big):
        with open(big, "wb") as out:
            for _ in range(2):
                out.write(open(noise, "rb").read())
    t, rss = timed([TENSORS, "info", "--summary", big])
    print(f"tensors info on {2 * rows[1][1]:.2f} GB of payload: {t:.1f} s, peak RSS {rss:.0f} MB")
    print("tensors decodes and encodes on one core; load average at the end:", os.getloadavg())


if __name__ == "__main__":
    main()
