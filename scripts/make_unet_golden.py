#!/usr/bin/env python3
"""Golden files for the Swift U-Net velocity model ("unet"), from the PyTorch twin in
benchmarks/torch_models.py, randomly initialised offline.

    nice python3 scripts/make_unet_golden.py     # writes Tests/SharedTests/Golden/unet_small*.safetensors

Every parameter is redrawn at random (the zero-initialised conv2 of each block and conv_out too,
so no path of the network is trivially zero). The reference velocity and its vector-Jacobian
product u^T dv/dx are computed in float64 (float32 results of PyTorch are stored beside them, to
show how far float32 rounding alone moves them); the Swift side runs in float32.
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "benchmarks"))
from torch_models import UNet, save_checkpoint  # noqa: E402

GOLDEN = os.path.join(here, "..", "Tests", "SharedTests", "Golden")

CONFIG = {
    "arch": "unet", "channels": 1, "height": 8, "width": 8, "num_classes": 3,
    "hidden_size": 8, "depth": 1, "mlp_ratio": 2.0, "heads": 4, "patch": 4,
    "time_scale": 1000.0, "frequency_embedding_size": 16, "channel_mult": [1, 2], "groups": 2,
}


def main():
    torch.manual_seed(20261204)
    model = UNet(CONFIG)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.3 if p.dim() >= 2 else 0.1
            p.copy_(torch.randn_like(p) * std)
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)
    os.makedirs(GOLDEN, exist_ok=True)
    save_checkpoint(model, os.path.join(GOLDEN, "unet_small.safetensors"))

    B, C, H, W = 3, CONFIG["channels"], CONFIG["height"], CONFIG["width"]
    x = torch.randn(B, C, H, W)
    u = torch.randn(B, C, H, W)
    t = torch.tensor([0.05, 0.5, 0.97])
    y = torch.tensor([0, 2, CONFIG["num_classes"]])   # the null label too

    def run(dtype):
        m = UNet(CONFIG).to(dtype)
        m.load_state_dict({k: v.to(dtype) for k, v in model.state_dict().items()})
        xx = x.to(dtype).requires_grad_(True)
        v = m(xx, t.to(dtype), y)
        (dx,) = torch.autograd.grad((v * u.to(dtype)).sum(), xx)
        return v.detach().float(), dx.detach().float()

    v64, dx64 = run(torch.float64)
    v32, dx32 = run(torch.float32)
    tensors = {"x": x, "t": t, "y": y, "u": u, "v": v64, "dx": dx64, "v_float32": v32, "dx_float32": dx32}
    meta = {"config": json.dumps(CONFIG, sort_keys=True),
            "float32_rel_v": f"{float((v32 - v64).abs().max() / v64.abs().max()):.3g}",
            "float32_rel_dx": f"{float((dx32 - dx64).abs().max() / dx64.abs().max()):.3g}"}
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(GOLDEN, "unet_small_golden.safetensors"), metadata=meta)
    print("unet golden:", sum(p.numel() for p in model.parameters()), "parameters; |v| max", float(v64.abs().max()),
          "float32 vs float64:", meta["float32_rel_v"], meta["float32_rel_dx"])


if __name__ == "__main__":
    main()
