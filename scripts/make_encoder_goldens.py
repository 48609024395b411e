#!/usr/bin/env python3
"""Golden files for the Swift Inception-v3 (pytorch-fid) and DINOv2 encoders, from randomly
initialised PyTorch models built offline (no weights are downloaded).

    nice python3 scripts/make_encoder_goldens.py            # writes Tests/SharedTests/Golden/enc_*.safetensors
    nice python3 scripts/make_encoder_goldens.py --only inception   # just the Inception pair
    nice python3 scripts/make_encoder_goldens.py --full OUT # full-width random Inception + ViT-S/14 for a by-hand check

Inception: pytorch-fid's FID network restated below (torchvision's Inception-v3 trunk, names and
hyper-parameters, with pytorch-fid's FIDInceptionA/C/E_1/E_2 pooling), every width divided by
--divisor (32 for the committed golden: the same topology at ~1/1000 of the parameters, so the
weights are small enough to commit). DINOv2: transformers' Dinov2Model from a small Dinov2Config
(image_size 266: a 19x19 position grid interpolated to 16x16, as the 37x37 of the released models is).
The reference preprocessing is pytorch-fid's / DINOv2's on x in [-1, 1]: (x + 1) / 2, grey repeated
to RGB, F.interpolate(..., align_corners=False), then 2x - 1 (Inception) or ImageNet normalisation.
The random Inception's batch norms are calibrated on a few images (`live_batch_norm`) so that it is
live, and its reference features and VJPs are computed in float64 (PyTorch's float32 ones are
stored beside them): `write_inception_golden` says why.
"""
import argparse
import copy
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(__file__))
from convert_weights import inception_state, dinov2_state, IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "Tests", "SharedTests", "Golden")


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def cat(*xs):
    return torch.cat(xs, 1)


class A(nn.Module):  # FIDInceptionA
    def __init__(s, cin, pool, w):
        super().__init__()
        s.branch1x1 = BasicConv2d(cin, w(64), kernel_size=1)
        s.branch5x5_1 = BasicConv2d(cin, w(48), kernel_size=1)
        s.branch5x5_2 = BasicConv2d(w(48), w(64), kernel_size=5, padding=2)
        s.branch3x3dbl_1 = BasicConv2d(cin, w(64), kernel_size=1)
        s.branch3x3dbl_2 = BasicConv2d(w(64), w(96), kernel_size=3, padding=1)
        s.branch3x3dbl_3 = BasicConv2d(w(96), w(96), kernel_size=3, padding=1)
        s.branch_pool = BasicConv2d(cin, pool, kernel_size=1)
        s.out = w(64) + w(64) + w(96) + pool

    def forward(s, x):
        p = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return cat(s.branch1x1(x), s.branch5x5_2(s.branch5x5_1(x)),
                   s.branch3x3dbl_3(s.branch3x3dbl_2(s.branch3x3dbl_1(x))), s.branch_pool(p))


class B(nn.Module):  # torchvision InceptionB
    def __init__(s, cin, w):
        super().__init__()
        s.branch3x3 = BasicConv2d(cin, w(384), kernel_size=3, stride=2)
        s.branch3x3dbl_1 = BasicConv2d(cin, w(64), kernel_size=1)
        s.branch3x3dbl_2 = BasicConv2d(w(64), w(96), kernel_size=3, padding=1)
        s.branch3x3dbl_3 = BasicConv2d(w(96), w(96), kernel_size=3, stride=2)
        s.out = w(384) + w(96) + cin

    def forward(s, x):
        return cat(s.branch3x3(x), s.branch3x3dbl_3(s.branch3x3dbl_2(s.branch3x3dbl_1(x))), F.max_pool2d(x, 3, stride=2))


class C(nn.Module):  # FIDInceptionC
    def __init__(s, cin, c7, w):
        super().__init__()
        s.branch1x1 = BasicConv2d(cin, w(192), kernel_size=1)
        s.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        s.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        s.branch7x7_3 = BasicConv2d(c7, w(192), kernel_size=(7, 1), padding=(3, 0))
        s.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        s.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        s.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        s.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        s.branch7x7dbl_5 = BasicConv2d(c7, w(192), kernel_size=(1, 7), padding=(0, 3))
        s.branch_pool = BasicConv2d(cin, w(192), kernel_size=1)
        s.out = 4 * w(192)

    def forward(s, x):
        d = x
        for n in range(1, 6):
            d = getattr(s, f"branch7x7dbl_{n}")(d)
        p = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return cat(s.branch1x1(x), s.branch7x7_3(s.branch7x7_2(s.branch7x7_1(x))), d, s.branch_pool(p))


class D(nn.Module):  # torchvision InceptionD
    def __init__(s, cin, w):
        super().__init__()
        s.branch3x3_1 = BasicConv2d(cin, w(192), kernel_size=1)
        s.branch3x3_2 = BasicConv2d(w(192), w(320), kernel_size=3, stride=2)
        s.branch7x7x3_1 = BasicConv2d(cin, w(192), kernel_size=1)
        s.branch7x7x3_2 = BasicConv2d(w(192), w(192), kernel_size=(1, 7), padding=(0, 3))
        s.branch7x7x3_3 = BasicConv2d(w(192), w(192), kernel_size=(7, 1), padding=(3, 0))
        s.branch7x7x3_4 = BasicConv2d(w(192), w(192), kernel_size=3, stride=2)
        s.out = w(320) + w(192) + cin

    def forward(s, x):
        b = s.branch7x7x3_4(s.branch7x7x3_3(s.branch7x7x3_2(s.branch7x7x3_1(x))))
        return cat(s.branch3x3_2(s.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2))


class E(nn.Module):  # FIDInceptionE_1 (average pool) / FIDInceptionE_2 (max pool)
    def __init__(s, cin, w, max_pool):
        super().__init__()
        s.max_pool = max_pool
        s.branch1x1 = BasicConv2d(cin, w(320), kernel_size=1)
        s.branch3x3_1 = BasicConv2d(cin, w(384), kernel_size=1)
        s.branch3x3_2a = BasicConv2d(w(384), w(384), kernel_size=(1, 3), padding=(0, 1))
        s.branch3x3_2b = BasicConv2d(w(384), w(384), kernel_size=(3, 1), padding=(1, 0))
        s.branch3x3dbl_1 = BasicConv2d(cin, w(448), kernel_size=1)
        s.branch3x3dbl_2 = BasicConv2d(w(448), w(384), kernel_size=3, padding=1)
        s.branch3x3dbl_3a = BasicConv2d(w(384), w(384), kernel_size=(1, 3), padding=(0, 1))
        s.branch3x3dbl_3b = BasicConv2d(w(384), w(384), kernel_size=(3, 1), padding=(1, 0))
        s.branch_pool = BasicConv2d(cin, w(192), kernel_size=1)
        s.out = w(320) + 4 * w(384) + w(192)

    def forward(s, x):
        b = s.branch3x3_1(x)
        d = s.branch3x3dbl_2(s.branch3x3dbl_1(x))
        if s.max_pool:
            p = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            p = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return cat(s.branch1x1(x), s.branch3x3_2a(b), s.branch3x3_2b(b), s.branch3x3dbl_3a(d), s.branch3x3dbl_3b(d), s.branch_pool(p))


class FIDInception(nn.Module):
    """pytorch-fid's InceptionV3 up to the 2048-d pool, torchvision names; widths / divisor."""

    def __init__(s, divisor=1, resize=299):
        super().__init__()
        s.resize = resize
        w = lambda c: max(1, c // divisor)
        s.Conv2d_1a_3x3 = BasicConv2d(3, w(32), kernel_size=3, stride=2)
        s.Conv2d_2a_3x3 = BasicConv2d(w(32), w(32), kernel_size=3)
        s.Conv2d_2b_3x3 = BasicConv2d(w(32), w(64), kernel_size=3, padding=1)
        s.Conv2d_3b_1x1 = BasicConv2d(w(64), w(80), kernel_size=1)
        s.Conv2d_4a_3x3 = BasicConv2d(w(80), w(192), kernel_size=3)
        s.Mixed_5b = A(w(192), w(32), w)
        s.Mixed_5c = A(s.Mixed_5b.out, w(64), w)
        s.Mixed_5d = A(s.Mixed_5c.out, w(64), w)
        s.Mixed_6a = B(s.Mixed_5d.out, w)
        s.Mixed_6b = C(s.Mixed_6a.out, w(128), w)
        s.Mixed_6c = C(s.Mixed_6b.out, w(160), w)
        s.Mixed_6d = C(s.Mixed_6c.out, w(160), w)
        s.Mixed_6e = C(s.Mixed_6d.out, w(192), w)
        s.Mixed_7a = D(s.Mixed_6e.out, w)
        s.Mixed_7b = E(s.Mixed_7a.out, w, max_pool=False)
        s.Mixed_7c = E(s.Mixed_7b.out, w, max_pool=True)

    def forward(s, x):  # x in [-1, 1], 3 channels, any size: pytorch-fid's resize_input + normalize_input
        if x.shape[-2:] != (s.resize, s.resize):  # F.interpolate to the same size is the identity too
            x = F.interpolate((x + 1) / 2, size=(s.resize, s.resize), mode="bilinear", align_corners=False) * 2 - 1
        x = F.max_pool2d(s.Conv2d_2b_3x3(s.Conv2d_2a_3x3(s.Conv2d_1a_3x3(x))), 3, stride=2)
        x = F.max_pool2d(s.Conv2d_4a_3x3(s.Conv2d_3b_1x1(x)), 3, stride=2)
        for n in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(s, "Mixed_" + n)(x)
        return F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


def calibration_images(n, g, size=32):
    """Smooth random images in [-1, 1] (low-resolution noise upsampled, per-image offset and
    contrast), unlike the golden inputs, so the calibrated statistics are not fitted to them."""
    lo = torch.rand((n, 3, 6, 6), generator=g) * 2 - 1
    x = F.interpolate(lo, size=(size, size), mode="bilinear", align_corners=False)
    x = x * (0.5 + torch.rand((n, 1, 1, 1), generator=g)) + (torch.rand((n, 1, 1, 1), generator=g) - 0.5) * 0.6
    return (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def live_batch_norm(model, g, n=16):
    """Makes a random Inception *live* in eval mode. With random running statistics (the earlier
    generator) or PyTorch's defaults (mean 0, var 1), the conv outputs are not centred, so the
    input-dependent part of every activation shrinks block after block against a constant
    offset: features identical to ~1e-3 across images and a VJP near zero, which makes a parity
    check vacuous. Here the affine part is random (gamma in [0.5, 1.5], beta ~ N(0, 0.2^2)) and
    the running mean and variance of every BN are *measured*: one pass in train mode, momentum
    None (a plain average), over n calibration images (a data-dependent init, as LSUV). In eval
    mode each pre-ReLU activation is then ~ gamma * N(0, 1) + beta on such images, so about half
    of every layer's units are on and the signal keeps its scale to the 2048-d (or 64-d) pool."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        model(calibration_images(n, g))
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def inception_model(divisor, seed):
    torch.manual_seed(seed)
    m = FIDInception(divisor)
    for mod in m.modules():  # torchvision's init_weights (truncated normal, std 0.1) at full width, He-scaled at reduced
        if isinstance(mod, nn.Conv2d):  # width (the calibrated batch norm below removes the scale either way)
            fan_in = mod.weight[0].numel()
            std = 0.1 if divisor == 1 else (2 / fan_in) ** 0.5
            nn.init.trunc_normal_(mod.weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
    return live_batch_norm(m, torch.Generator().manual_seed(seed + 1))


def inception_ref(model, x):
    x3 = x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x
    return model(x3)


def dinov2_model(seed, hidden=16, layers=2, heads=2, image_size=266):
    from transformers import Dinov2Config, Dinov2Model
    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       image_size=image_size, patch_size=14, layerscale_value=1.0)
    m = Dinov2Model(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # everything random, so layer scale, norms and biases all matter
        for n, p in m.named_parameters():
            if "mask_token" in n:
                continue
            if n.endswith("lambda1") or (("norm" in n) and n.endswith("weight")):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 1 else 1 / max(1, p.shape[-1]) ** 0.5))
    return m, cfg


def dinov2_ref(model, x, size=224):
    x01 = (x + 1) / 2
    if x01.shape[1] == 1:
        x01 = x01.repeat(1, 3, 1, 1)
    x01 = F.interpolate(x01, size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return model(pixel_values=(x01 - mean) / std).pooler_output


def golden_case(fn, shapes, feat_dim, seed):
    g = torch.Generator().manual_seed(seed)
    out = {}
    for tag, shape in shapes.items():
        x = (torch.rand(shape, generator=g) * 2 - 1).requires_grad_(True)
        f = fn(x)
        cot = torch.randn(f.shape, generator=g)
        (dx,) = torch.autograd.grad(f, x, cot)
        out[f"x_{tag}"], out[f"feat_{tag}"] = x.detach(), f.detach()
        out[f"cot_{tag}"], out[f"vjp_{tag}"] = cot, dx
    return {k: v.contiguous().float() for k, v in out.items()}


def check_live(gold, tag):
    """Refuses a dead network (the earlier golden's failure): the features of the two grey images
    must differ by more than 10% of their scale, and the VJP must be of the order of cot / pixels."""
    f, v, x = gold[f"feat_{tag}"], gold[f"vjp_{tag}"], gold[f"x_{tag}"]
    scale = f.abs().mean().item()
    spread = (f[0] - f[1]).abs().mean().item() / scale if f.shape[0] > 1 else float("nan")
    alive = (f.std(0) > 1e-3 * scale).float().mean().item() if f.shape[0] > 1 else float("nan")
    vjp_rms = v.pow(2).mean().sqrt().item()
    print(f"inception {tag}: feature scale {scale:.4g}, spread across images {spread:.3g} (relative), "
          f"features varying {alive:.2f}, vjp rms {vjp_rms:.3g}, max {v.abs().max().item():.3g} over {x[0].numel()} pixels")
    assert f.shape[0] == 1 or (spread > 0.1 and alive > 0.9), "degenerate random Inception: features barely depend on the image"
    assert vjp_rms > 1e-4, "degenerate random Inception: the VJP is (nearly) zero"


def write_user_checkpoints(folder):
    """The committed golden networks in the forms users have: pytorch-fid's pt_inception .pth
    (torchvision names, a 1008-way `fc` and no `num_batches_tracked`, as that file), a DINOv2 torch
    hub state dict (.pth, hub names with `mask_token`) and a transformers folder (save_pretrained).
    scripts/convert_weights.py turns each back into Tests/SharedTests/Golden/enc_*.safetensors."""
    os.makedirs(folder, exist_ok=True)
    inc = inception_model(32, 3)
    sd = {k: v for k, v in inc.state_dict().items() if not k.endswith("num_batches_tracked")}
    feat = inc.Mixed_7c.out
    g = torch.Generator().manual_seed(9)
    sd["fc.weight"], sd["fc.bias"] = torch.randn((1008, feat), generator=g) * 0.01, torch.zeros(1008)
    torch.save(sd, os.path.join(folder, "pt_inception-tiny.pth"))
    dm, cfg = dinov2_model(4)
    dm.save_pretrained(os.path.join(folder, "dinov2-tiny-hf"))
    hub, _ = dinov2_state(dm.state_dict(), {"num_attention_heads": cfg.num_attention_heads})
    hub["mask_token"] = torch.zeros((1, cfg.hidden_size))
    torch.save(hub, os.path.join(folder, "dinov2-tiny-hub.pth"))
    print(f"{folder}: pt_inception-tiny.pth, dinov2-tiny-hub.pth, dinov2-tiny-hf/")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", help="folder for a full-width random Inception and a ViT-S/14-sized DINOv2 (not committed)")
    ap.add_argument("--only", choices=["inception", "dinov2"], help="regenerate one encoder's golden files only")
    ap.add_argument("--user-checkpoints", metavar="DIR",
                    help="write the two golden networks as a user has them (pytorch-fid .pth, torch hub .pth, "
                         "transformers folder), for scripts/convert_weights.py; nothing else is written")
    a = ap.parse_args()
    torch.set_num_threads(2)
    shapes = {"grey": (2, 1, 28, 28), "rgb": (1, 3, 32, 32)}
    if a.full:
        os.makedirs(a.full, exist_ok=True)
        inc = inception_model(1, 7)
        t, meta = inception_state(inc.state_dict())
        save_file(t, os.path.join(a.full, "inception-random.safetensors"), metadata=meta)
        gold = golden_case(lambda x: inception_ref(inc, x), shapes, 2048, 5)
        check_live(gold, "grey")
        save_file(gold, os.path.join(a.full, "inception-random-golden.safetensors"))
        dm, cfg = dinov2_model(8, hidden=384, layers=12, heads=6, image_size=518)
        t, meta = dinov2_state(dm.state_dict(), {"num_attention_heads": 6})
        save_file(t, os.path.join(a.full, "dinov2-random.safetensors"), metadata=meta)
        save_file(golden_case(lambda x: dinov2_ref(dm, x), shapes, 384, 6), os.path.join(a.full, "dinov2-random-golden.safetensors"))
        return
    if a.user_checkpoints:
        return write_user_checkpoints(a.user_checkpoints)
    if a.only != "dinov2":
        write_inception_golden(shapes)
    if a.only != "inception":
        write_dinov2_golden(shapes)


def inception_golden(model, shapes, seed):
    """golden_case with the reference in float64 (a double copy of the model): `feat_*`, `vjp_*`
    are float64 results rounded to float32, `feat32_*`, `vjp32_*` PyTorch's own float32 ones, so
    the test can tell an error of ours from float32 rounding amplified by the network."""
    m64 = copy.deepcopy(model).double()
    g = torch.Generator().manual_seed(seed)
    out = {}
    for tag, (shape, resize) in shapes.items():
        model.resize = m64.resize = resize
        x = torch.rand(shape, generator=g) * 2 - 1
        x32 = x.clone().requires_grad_(True)
        f32 = inception_ref(model, x32)
        cot = torch.randn(f32.shape, generator=g)
        (dx32,) = torch.autograd.grad(f32, x32, cot)
        x64 = x.double().requires_grad_(True)
        f64 = inception_ref(m64, x64)
        (dx64,) = torch.autograd.grad(f64, x64, cot.double())
        out[f"x_{tag}"], out[f"cot_{tag}"] = x, cot
        out[f"feat_{tag}"], out[f"vjp_{tag}"] = f64.detach(), dx64
        if resize != shape[-1]:  # (at native size the two agree to < 1e-6; not stored, to keep the file small)
            out[f"feat32_{tag}"], out[f"vjp32_{tag}"] = f32.detach(), dx32
        rel = lambda a, b: ((a.double() - b).abs().max() / b.abs().max()).item()
        print(f"inception {tag} {tuple(shape)} -> {resize}: PyTorch float32 vs float64: features {rel(f32, f64):.2e}, vjp {rel(dx32, dx64):.2e} (max abs, relative)")
    model.resize = m64.resize = 299
    return {k: v.detach().contiguous().float() for k, v in out.items()}


def write_inception_golden(shapes):
    inc = inception_model(32, 3)
    t, meta = inception_state(inc.state_dict())
    save_file(t, os.path.join(GOLDEN, "enc_inception_w32.safetensors"), metadata=meta)
    # grey and RGB images resized to 299 as pytorch-fid does, and RGB images at the network's
    # input size (no resampling) through the same weights with `resize` 75 (torchvision's
    # smallest Inception input). Bilinear upsampling by ~10x makes piecewise-linear images whose
    # ridges put near-ties into the max pools, so the input gradient of *any* float32
    # implementation is ill-conditioned there (PyTorch's own float32 VJP is a few % off its
    # float64 one; see the printout); at native size it is not, and the VJP is checked tightly.
    cases = {"grey": (shapes["grey"], 299), "rgb": (shapes["rgb"], 299), "native": ((1, 3, 75, 75), 75)}
    gold = inception_golden(inc, cases, 1)
    for tag in cases:
        check_live(gold, tag)
    save_file(gold, os.path.join(GOLDEN, "enc_inception_w32_golden.safetensors"), metadata={"native_resize": "75"})


def write_dinov2_golden(shapes):
    dm, cfg = dinov2_model(4)
    t, meta = dinov2_state(dm.state_dict(), {"num_attention_heads": cfg.num_attention_heads})
    save_file(t, os.path.join(GOLDEN, "enc_dinov2_tiny.safetensors"), metadata=meta)
    save_file(golden_case(lambda x: dinov2_ref(dm, x), shapes, None, 2), os.path.join(GOLDEN, "enc_dinov2_tiny_golden.safetensors"))


if __name__ == "__main__":
    main()
