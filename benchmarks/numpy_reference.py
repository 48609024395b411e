"""float64 numpy re-implementation of benchmarks/torch_models.py's forward, used to check that the
Swift models compute what the PyTorch modules would (layouts, chunk orders, unpatchify,
timestep embedding), without PyTorch.

    mkdir -p /tmp/parity
    DRL_PARITY_DIR=/tmp/parity swift test -c release --disable-testable-imports \
        --disable-swift-testing --filter ModelTests.testDumpForNumpyParity
    python3 benchmarks/numpy_reference.py /tmp/parity

Checks v = net(x, t, y) against the Swift output, and u^T dv/dx against central finite
differences of the float64 reference along random directions.
"""

import json
import math
import struct
import sys

import numpy as np


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    dtypes = {"F32": np.float32, "I64": np.int64, "F64": np.float64}
    out = {}
    for name, info in header.items():
        a, b = info["data_offsets"]
        out[name] = np.frombuffer(data[base + a : base + b], dtype=dtypes[info["dtype"]]).reshape(info["shape"]).astype(
            np.float64 if info["dtype"] != "I64" else np.int64
        )
    return out, meta


def linear(p, name, x):
    return x @ p[name + ".weight"].T + p[name + ".bias"]


def layer_norm(x, eps=1e-6):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps)


def silu(x):
    return x / (1 + np.exp(-x))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def modulate(x, shift, scale):
    if x.ndim == 3:
        return x * (1 + scale[:, None]) + shift[:, None]
    return x * (1 + scale) + shift


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = np.exp(-math.log(max_period) * np.arange(half) / half)
    args = t[:, None] * freqs[None]
    return np.concatenate([np.cos(args), np.sin(args)], axis=-1)


def conditioning(p, cfg, t, y):
    te = timestep_embedding(t * cfg["time_scale"], cfg["frequency_embedding_size"])
    te = linear(p, "t_embedder.mlp.2", silu(linear(p, "t_embedder.mlp.0", te)))
    return te + p["y_embedder.embedding_table.weight"][y]


def final_layer(p, h, c):
    shift, scale = np.split(linear(p, "final_layer.adaLN_modulation.1", silu(c)), 2, axis=1)
    return linear(p, "final_layer.linear", modulate(layer_norm(h), shift, scale))


def mlp_forward(p, cfg, x, t, y):
    B = x.shape[0]
    h = linear(p, "input_proj", x.reshape(B, -1))
    c = conditioning(p, cfg, t, y)
    for i in range(cfg["depth"]):
        b = f"blocks.{i}"
        shift, scale, gate = np.split(linear(p, b + ".adaLN_modulation.1", silu(c)), 3, axis=1)
        h = h + gate * linear(p, b + ".fc2", silu(linear(p, b + ".fc1", modulate(layer_norm(h), shift, scale))))
    return final_layer(p, h, c).reshape(x.shape)


def attention(p, name, x, heads):
    B, N, C = x.shape
    hd = C // heads
    qkv = linear(p, name + ".qkv", x).reshape(B, N, 3, heads, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    a = (q * hd**-0.5) @ k.transpose(0, 1, 3, 2)
    a = np.exp(a - a.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    o = (a @ v).transpose(0, 2, 1, 3).reshape(B, N, C)
    return linear(p, name + ".proj", o)


def sit_forward(p, cfg, x, t, y):
    B, C, H, W = x.shape
    P, D = cfg["patch"], cfg["hidden_size"]
    h_, w_ = H // P, W // P
    # Conv2d(kernel = stride = P) as patches @ weight
    patches = x.reshape(B, C, h_, P, w_, P).transpose(0, 2, 4, 1, 3, 5).reshape(B, h_ * w_, C * P * P)
    tok = patches @ p["x_embedder.proj.weight"].reshape(D, -1).T + p["x_embedder.proj.bias"]
    h = tok + p["pos_embed"]
    c = conditioning(p, cfg, t, y)
    for i in range(cfg["depth"]):
        b = f"blocks.{i}"
        sm, cm, gm, sf, cf, gf = np.split(linear(p, b + ".adaLN_modulation.1", silu(c)), 6, axis=1)
        h = h + gm[:, None] * attention(p, b + ".attn", modulate(layer_norm(h), sm, cm), cfg["heads"])
        f = linear(p, b + ".mlp.fc2", gelu_tanh(linear(p, b + ".mlp.fc1", modulate(layer_norm(h), sf, cf))))
        h = h + gf[:, None] * f
    out = final_layer(p, h, c)
    out = out.reshape(B, h_, w_, P, P, C)
    return np.einsum("nhwpqc->nchpwq", out).reshape(B, C, H, W)


def main(d):
    ok = True
    for arch in ["mlp", "sit"]:
        p, meta = read_safetensors(f"{d}/{arch}.safetensors")
        cfg = json.loads(meta["config"])
        io, _ = read_safetensors(f"{d}/{arch}.io.safetensors")
        fwd = mlp_forward if arch == "mlp" else sit_forward
        x, t, y = io["x"], io["t"], io["y"]
        v = fwd(p, cfg, x, t, y)
        err = np.abs(v - io["v"]).max() / max(1e-12, np.abs(v).max())
        # u^T dv/dx along random directions, by central differences in float64
        rng = np.random.default_rng(0)
        worst = 0.0
        for _ in range(3):
            d_ = rng.standard_normal(x.shape)
            h = 1e-5
            num = ((fwd(p, cfg, x + h * d_, t, y) - fwd(p, cfg, x - h * d_, t, y)) * io["u"]).sum() / (2 * h)
            ana = (io["dx"] * d_).sum()
            worst = max(worst, abs(num - ana) / max(abs(num), 1e-12))
        print(f"{arch}: forward max rel err {err:.2e}; vjp directional rel err {worst:.2e}")
        ok &= err < 1e-4 and worst < 1e-3
    print("PARITY OK" if ok else "PARITY FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
