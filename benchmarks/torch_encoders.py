"""PyTorch twin of the toolkit's feature encoders (Sources/Shared/Encoders/ConvEncoder.swift).

A checkpoint written by `embed train` loads with `load_state_dict(strict=True)`:

    enc = load_encoder("/work/runs/enc-simclr.safetensors")
    feat = enc(x)                 # x [B, C, H, W] float32 in [-1, 1] -> phi(x) [B, D]
    logits = enc.head(feat)       # classifier kind only
    z = enc.proj(feat)            # simclr kind only (the contrastive projection)

Architecture (metadata "config", JSON): 3x3 convs (padding 1, stride strides[i]), activation
(GELU with the tanh approximation, or SiLU), optional 2x2 average pool after conv i; global
average pool (or flatten(1) with readout "flatten"); Linear to feature_dim; activation. Those are the features.
"""

import json

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file


def activation(name):
    return nn.GELU(approximate="tanh") if name == "gelu" else nn.SiLU()


class ConvEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        c = config["channels"]
        self.convs = nn.ModuleList()
        for w, s in zip(config["widths"], config["strides"]):
            self.convs.append(nn.Conv2d(c, w, 3, stride=s, padding=1))
            c = w
        self.pool = list(config["pool"])
        self.act = activation(config["activation"])
        self.flatten = config.get("readout") == "flatten"
        if self.flatten:  # spatial size of the last map
            h, w = config["height"], config["width"]
            for s, p in zip(config["strides"], config["pool"]):
                h, w = (h - 1) // s + 1, (w - 1) // s + 1
                if p:
                    h, w = h // 2, w // 2
            c = c * h * w
        self.fc = nn.Linear(c, config["feature_dim"])
        d = config["feature_dim"]
        if config["kind"] == "classifier":
            self.head = nn.Linear(d, config["num_classes"])
        else:
            self.proj = nn.Sequential(nn.Linear(d, d), activation(config["activation"]), nn.Linear(d, config["projection_dim"]))

    def forward(self, x):
        h = x
        for conv, pool in zip(self.convs, self.pool):
            h = self.act(conv(h))
            if pool:
                h = F.avg_pool2d(h, 2)
        h = h.flatten(1) if self.flatten else h.mean(dim=(2, 3))
        return self.act(self.fc(h))


def read_config(path):
    with safe_open(path, framework="pt") as f:
        return json.loads(f.metadata()["config"])


def load_encoder(path):
    enc = ConvEncoder(read_config(path))
    enc.load_state_dict(load_file(path), strict=True)
    return enc.eval()
