"""PyTorch twins of the toolkit's velocity networks (Sources/Flow/Models): SiT, MLPVelocity, UNet.

The modules follow the Swift code line by line and facebookresearch/DiT `models.py`.
`benchmarks/bench_engine.sh` checks SiT and the MLP against the Swift velocity on every run (about
4e-6); the U-Net's golden file comes from `scripts/make_unet_golden.py` (ModelTests). Tolerance
~1e-4 relative: the timestep sinusoid of t * 1000 amplifies float32 rounding of the frequencies.

Conventions (same as the toolkit):
  * x: [B, C, H, W] float32 (the MLP flattens it); t: [B] in [0, 1], t = 1 is noise, t = 0 data;
    the network predicts v = eps - x0.
  * t is multiplied by config["time_scale"] (default 1000) before DiT's timestep embedding.
  * y: [B] int64 in 0..num_classes; num_classes is the null label (classifier-free guidance);
    label dropout is the trainer's job (it passes the null label), not the module's.
  * Checkpoint: one safetensors file, PyTorch names, metadata "config" (JSON). Optimizer and EMA
    state, when present, live under "optim." and "ema." prefixes and are skipped by
    `load_checkpoint` (EMA weights load with `load_checkpoint(path, ema=True)`).

Usage:
    model = load_checkpoint("model.safetensors")
    v = model(x, t, y)
"""

import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x, shift, scale):
    """DiT's modulate; x is [B, T, D] (tokens) or [B, D]."""
    if x.dim() == 3:
        return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """DiT's TimestepEmbedder: sinusoid of the raw value (cos half, then sin half) -> MLP."""

    def __init__(self, hidden_size, frequency_embedding_size=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t, dim, max_period=10000):
        half = dim // 2
        # float32 as DiT, unless t is float64 (the golden scripts' float64 reference runs)
        dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
        freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=dtype) / half).to(t.device)
        args = t[:, None].to(dtype) * freqs[None]
        embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        if dim % 2:
            embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
        return embedding

    def forward(self, t):
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Label table with num_classes + 1 rows; the last row is the null label."""

    def __init__(self, num_classes, hidden_size):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)
        self.num_classes = num_classes

    def forward(self, labels):
        return self.embedding_table(labels)


class Attention(nn.Module):
    """timm.models.vision_transformer.Attention (qkv_bias=True, no qk-norm, no dropout)."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Mlp(nn.Module):
    """timm Mlp with GELU(tanh): fc1 -> act -> fc2."""

    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class PatchEmbed(nn.Module):
    """timm PatchEmbed: Conv2d(kernel = stride = patch), flatten to tokens."""

    def __init__(self, in_chans, embed_dim, patch_size):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DiTBlock(nn.Module):
    def __init__(self, hidden_size, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, out_features):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, out_features, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def get_2d_sincos_pos_embed(embed_dim, grid_size):
    """MAE / DiT fixed 2-D sin-cos embedding, [grid_size**2, embed_dim] (float64 numpy math)."""
    import numpy as np

    def one_d(dim, pos):
        omega = np.arange(dim // 2, dtype=np.float64)
        omega /= dim / 2.0
        omega = 1.0 / 10000 ** omega
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    return np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)


class SiT(nn.Module):
    """DiT/SiT with learn_sigma=False; mirrors Sources/Shared/Models/SiTVelocity.swift."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        C, H, W = config["channels"], config["height"], config["width"]
        D, p = config["hidden_size"], config["patch"]
        self.in_channels = self.out_channels = C
        self.patch_size = p
        self.time_scale = config["time_scale"]
        self.x_embedder = PatchEmbed(C, D, p)
        self.t_embedder = TimestepEmbedder(D, config["frequency_embedding_size"])
        self.y_embedder = LabelEmbedder(config["num_classes"], D)
        num_patches = (H // p) * (W // p)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, D), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(D, config["heads"], config["mlp_ratio"]) for _ in range(config["depth"])])
        self.final_layer = FinalLayer(D, p * p * C)
        self.initialize_weights()

    def initialize_weights(self):
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)

        self.apply(_basic_init)
        grid = int(self.pos_embed.shape[1] ** 0.5)
        self.pos_embed.data.copy_(torch.from_numpy(get_2d_sincos_pos_embed(self.pos_embed.shape[-1], grid)).float().unsqueeze(0))
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x):
        c, p = self.out_channels, self.patch_size
        h = self.config["height"] // p
        w = self.config["width"] // p
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y):
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t * self.time_scale) + self.y_embedder(y)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


class MLPBlock(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width, bias=True))
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, h, c):
        shift, scale, gate = self.adaLN_modulation(c).chunk(3, dim=1)
        return h + gate * self.fc2(self.act(self.fc1(modulate(self.norm(h), shift, scale))))


class MLPVelocity(nn.Module):
    """Residual MLP over flattened pixels; mirrors Sources/Shared/Models/MLPVelocity.swift."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        D = config["channels"] * config["height"] * config["width"]
        W = config["hidden_size"]
        self.time_scale = config["time_scale"]
        self.input_proj = nn.Linear(D, W)
        self.t_embedder = TimestepEmbedder(W, config["frequency_embedding_size"])
        self.y_embedder = LabelEmbedder(config["num_classes"], W)
        self.blocks = nn.ModuleList([MLPBlock(W, int(W * config["mlp_ratio"])) for _ in range(config["depth"])])
        self.final_layer = FinalLayer(W, D)
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                torch.nn.init.xavier_uniform_(m.weight)
                nn.init.constant_(m.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def forward(self, x, t, y):
        B = x.shape[0]
        h = self.input_proj(x.reshape(B, -1))
        c = self.t_embedder(t * self.time_scale) + self.y_embedder(y)
        for block in self.blocks:
            h = block(h, c)
        return self.final_layer(h, c).reshape(x.shape)


class ResBlock(nn.Module):
    """The U-Net's residual block; mirrors ResBlock in Sources/NN/Layers/UNet.swift."""

    def __init__(self, cin, cout, emb_dim, groups):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=1e-5)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x, e):
        """e is SiLU(t_emb + y_emb), [B, E]."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(e)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.skip is None else self.skip(x)) + h


class UNetLevel(nn.Module):
    def __init__(self, res, resample=None):
        super().__init__()
        self.res = nn.ModuleList(res)
        if resample is not None:
            setattr(self, resample[0], resample[1])


class UNet(nn.Module):
    """Class-conditional U-Net ("unet"); mirrors Sources/Flow/Models/UNetVelocity.swift.

    ch_l = hidden_size * channel_mult[l]; E = hidden_size * mlp_ratio; depth residual blocks per
    level on each side, two in the middle; stride-2 conv down, nearest x2 + conv up, skips by
    concatenation; conv2 of every block and conv_out start at zero."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        C = config["channels"]
        hid = config["hidden_size"]
        mult = config.get("channel_mult") or [1, 2, 4]
        groups = config.get("groups") or 8
        N = config["depth"]
        E = int(hid * config.get("mlp_ratio", 4))
        ch = [hid * m for m in mult]
        L = len(ch)
        self.time_scale = config["time_scale"]
        self.conv_in = nn.Conv2d(C, ch[0], 3, padding=1)
        self.t_embedder = TimestepEmbedder(E, config["frequency_embedding_size"])
        self.y_embedder = LabelEmbedder(config["num_classes"], E)
        self.down = nn.ModuleList()
        for l in range(L):
            res = [ResBlock(ch[l] if i else ch[max(l - 1, 0)], ch[l], E, groups) for i in range(N)]
            ds = ("downsample", nn.Conv2d(ch[l], ch[l], 3, stride=2, padding=1)) if l < L - 1 else None
            self.down.append(UNetLevel(res, ds))
        self.mid = nn.ModuleList([ResBlock(ch[-1], ch[-1], E, groups) for _ in range(2)])
        self.up = nn.ModuleList()
        for l in range(L):
            res = [ResBlock(2 * ch[l] if i == 0 else ch[l], ch[l], E, groups) for i in range(N)]
            us = ("upsample", nn.Conv2d(ch[l], ch[l - 1], 3, padding=1)) if l > 0 else None
            self.up.append(UNetLevel(res, us))
        self.norm_out = nn.GroupNorm(groups, ch[0], eps=1e-5)
        self.conv_out = nn.Conv2d(ch[0], C, 3, padding=1)
        self.initialize_weights()

    def initialize_weights(self):
        # PyTorch defaults elsewhere; DiT's embedder init; zero conv2 and conv_out
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.constant_(lin.bias, 0)
        for m in self.modules():
            if isinstance(m, ResBlock):
                nn.init.constant_(m.conv2.weight, 0)
                nn.init.constant_(m.conv2.bias, 0)
        nn.init.constant_(self.conv_out.weight, 0)
        nn.init.constant_(self.conv_out.bias, 0)

    def forward(self, x, t, y):
        e = F.silu(self.t_embedder(t * self.time_scale) + self.y_embedder(y))
        h = self.conv_in(x)
        skips = []
        for level in self.down:
            for block in level.res:
                h = block(h, e)
            skips.append(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h, e)
        for l in reversed(range(len(self.up))):
            level = self.up[l]
            h = torch.cat([h, skips[l]], dim=1)
            for block in level.res:
                h = block(h, e)
            if hasattr(level, "upsample"):
                h = level.upsample(F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


def build(config):
    if config["arch"] == "sit":
        return SiT(config)
    if config["arch"] == "mlp":
        return MLPVelocity(config)
    if config["arch"] == "unet":
        return UNet(config)
    raise ValueError(f"unknown arch {config['arch']!r}")


def load_checkpoint(path, ema=False):
    """Builds the model from the checkpoint's `config` metadata and loads it with strict=True."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
    if "config" not in metadata:
        raise ValueError(f"{path} has no `config` metadata; it is not a toolkit velocity model")
    model = build(json.loads(metadata["config"]))
    tensors = load_file(path)
    if ema:
        state = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    else:
        state = {k: v for k, v in tensors.items() if not k.startswith(("optim.", "ema."))}
    model.load_state_dict(state, strict=True)
    return model


def save_checkpoint(model, path, extra_metadata=None):
    """Writes a checkpoint the Swift tools read (contiguous float32 tensors, config metadata)."""
    from safetensors.torch import save_file

    metadata = {"config": json.dumps(model.config, sort_keys=True), "arch": model.config["arch"], "format": "pt"}
    metadata.update(extra_metadata or {})
    save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, path, metadata=metadata)


if __name__ == "__main__":
    import sys

    m = load_checkpoint(sys.argv[1])
    cfg = m.config
    x = torch.randn(4, cfg["channels"], cfg["height"], cfg["width"])
    t = torch.rand(4)
    y = torch.tensor([0, 1, 2, cfg["num_classes"]])
    with torch.no_grad():
        v = m(x, t, y)
    print(type(m).__name__, sum(p.numel() for p in m.parameters()), "parameters; v", tuple(v.shape), float(v.abs().mean()))
