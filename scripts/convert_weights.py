#!/usr/bin/env python3
"""Convert PyTorch weights you already have into the toolkit's encoder checkpoints.

    python3 scripts/convert_weights.py inception pt_inception-2015-12-05-6726825d.pth -o inception-fid.safetensors
    python3 scripts/convert_weights.py dinov2 dinov2_vits14_pretrain.pth -o dinov2-vits14.safetensors   # torch hub
    python3 scripts/convert_weights.py dinov2 facebook-dinov2-small/ -o dinov2-vits14.safetensors       # transformers folder

Nothing is downloaded. The output is one safetensors file: tensors under the names the Swift
encoders read (torchvision's Inception names; the DINOv2 torch hub names) and metadata `arch`
("inception-v3-fid" or "dinov2") plus `config` (JSON), which `embed --encoder FILE` reads.

Inception: pytorch-fid's FID checkpoint (torchvision naming) or the state dict of pytorch-fid's
`InceptionV3` wrapper (`blocks.N.M.*`); `fc.*`, `AuxLogits.*` and `num_batches_tracked` are dropped,
batch norm is kept as is (the Swift loader folds it, eval mode, eps 0.001).

DINOv2: a torch hub state dict (`blocks.0.attn.qkv.weight`, ...) or a transformers Dinov2Model
(old `attention.attention.query` or new `attention.q_proj` naming); q, k, v are fused into qkv.
Needs torch (and safetensors); transformers only to read a transformers folder's config.json.
"""
import argparse
import json
import math
import os
import re
import sys

import torch
from safetensors.torch import save_file, load_file

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

_FID_BLOCKS = [  # pytorch-fid InceptionV3 wrapper: blocks.i.j -> torchvision module names
    ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", None],
    ["Conv2d_3b_1x1", "Conv2d_4a_3x3", None],
    ["Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"],
    ["Mixed_7a", "Mixed_7b", "Mixed_7c", None],
]


def _load_any(path):
    if os.path.isdir(path):
        for name in ("model.safetensors", "pytorch_model.bin"):
            p = os.path.join(path, name)
            if os.path.exists(p):
                return _load_any(p)
        sys.exit(f"{path}: no model.safetensors or pytorch_model.bin")
    if path.endswith(".safetensors"):
        return load_file(path)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def inception_state(sd, resize=299):
    out = {}
    for k, v in sd.items():
        m = re.match(r"blocks\.(\d+)\.(\d+)\.(.*)", k)
        if m:
            name = _FID_BLOCKS[int(m.group(1))][int(m.group(2))]
            if name is None:
                continue
            k = f"{name}.{m.group(3)}"
        if k.startswith(("fc.", "AuxLogits.")) or k.endswith("num_batches_tracked"):
            continue
        out[k] = v.detach().float().contiguous()
    if "Conv2d_1a_3x3.conv.weight" not in out:
        sys.exit("not an Inception-v3 state dict (no Conv2d_1a_3x3.conv.weight)")
    meta = {"arch": "inception-v3-fid", "kind": "inception-fid", "format": "pt",
            "config": json.dumps({"resize": resize, "bn_eps": 0.001}, sort_keys=True)}
    return out, meta


def dinov2_state(sd, hf_config=None, image_size=224, resize="bicubic"):
    """Returns (tensors in hub names, metadata)."""
    sd = {k.removeprefix("dinov2."): v.detach().float() for k, v in sd.items()}
    if "embeddings.cls_token" in sd:  # transformers
        out = {"cls_token": sd["embeddings.cls_token"], "pos_embed": sd["embeddings.position_embeddings"],
               "patch_embed.proj.weight": sd["embeddings.patch_embeddings.projection.weight"],
               "patch_embed.proj.bias": sd["embeddings.patch_embeddings.projection.bias"],
               "norm.weight": sd["layernorm.weight"], "norm.bias": sd["layernorm.bias"]}
        depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
        for i in range(depth):
            p = f"encoder.layer.{i}."
            g = lambda s: sd[p + s]
            if p + "attention.q_proj.weight" in sd:
                q, kk, v, o = "attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj"
            else:
                q, kk, v, o = ("attention.attention.query", "attention.attention.key", "attention.attention.value", "attention.output.dense")
            b = f"blocks.{i}."
            out[b + "attn.qkv.weight"] = torch.cat([g(q + ".weight"), g(kk + ".weight"), g(v + ".weight")], 0)
            out[b + "attn.qkv.bias"] = torch.cat([g(q + ".bias"), g(kk + ".bias"), g(v + ".bias")], 0)
            out[b + "attn.proj.weight"], out[b + "attn.proj.bias"] = g(o + ".weight"), g(o + ".bias")
            for n in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                out[b + n + ".weight"], out[b + n + ".bias"] = g(n + ".weight"), g(n + ".bias")
            out[b + "ls1.gamma"], out[b + "ls2.gamma"] = g("layer_scale1.lambda1"), g("layer_scale2.lambda1")
        pos_interp, heads = "size", (hf_config or {}).get("num_attention_heads")
    else:  # torch hub
        out = {k: v for k, v in sd.items() if k != "mask_token"}
        if any(k.startswith("register_tokens") for k in out):
            sys.exit("register-token DINOv2 variants are not supported")
        depth = 1 + max(int(m.group(1)) for k in out if (m := re.match(r"blocks\.(\d+)\.", k)))
        pos_interp, heads = "offset", (hf_config or {}).get("num_attention_heads")  # --heads
    D = out["cls_token"].shape[-1]
    if heads is None:
        heads = {384: 6, 768: 12, 1024: 16, 1536: 24}.get(D)
        if heads is None:
            sys.exit(f"embed_dim {D}: say --heads")
    config = {"image_size": image_size, "patch_size": out["patch_embed.proj.weight"].shape[-1], "embed_dim": D,
              "depth": depth, "heads": heads, "mlp_hidden": out["blocks.0.mlp.fc1.weight"].shape[0],
              "layer_norm_eps": 1e-6, "pos_interpolation": pos_interp, "interpolate_offset": 0.1,
              "resize_interpolation": resize, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    meta = {"arch": "dinov2", "kind": "dinov2", "format": "pt", "config": json.dumps(config, sort_keys=True)}
    return {k: v.contiguous() for k, v in out.items()}, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["inception", "dinov2"])
    ap.add_argument("src", help="a .pth / .bin / .safetensors state dict, or a transformers model folder")
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--heads", type=int, help="DINOv2 attention heads (default: from the width)")
    ap.add_argument("--image-size", type=int, default=224, help="DINOv2 input resize (default 224)")
    ap.add_argument("--resize", choices=["bicubic", "bilinear"], default="bicubic", help="DINOv2 input interpolation")
    a = ap.parse_args()
    sd = _load_any(a.src)
    if a.kind == "inception":
        tensors, meta = inception_state(sd)
    else:
        hf = None
        cfg = os.path.join(a.src, "config.json") if os.path.isdir(a.src) else None
        if cfg and os.path.exists(cfg):
            hf = json.load(open(cfg))
        if a.heads:
            hf = dict(hf or {}, num_attention_heads=a.heads)
        tensors, meta = dinov2_state(sd, hf, a.image_size, a.resize)
    save_file(tensors, a.output, metadata=meta)
    n = sum(t.numel() for t in tensors.values())
    print(f"{a.output}: {len(tensors)} tensors, {n} parameters, arch {meta['arch']}")


if __name__ == "__main__":
    main()
