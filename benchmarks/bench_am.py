"""One adjoint-matching round, `rlstep --algo am --profile` against a PyTorch twin, stage by stage.

    python3 benchmarks/bench_am.py --bin .build/release --model base.safetensors --buffer am.tzst

The twin does what rlstep does (Sources/RL/AdjointMatching.swift, docs/algorithms.md), on the
same checkpoint (benchmarks/torch_models.py, strict load) and the same buffer of memoryless
rollouts with `reward.grad`:
  read       the two checkpoints (policy, reference) and the buffer stream
  prepare    the lean adjoint backward from a_S = -lambda grad r: S reference VJPs over the
             whole buffer, a_k = Phi_k (a_{k+1} - 2 h_k [dv/dx]^T a_{k+1}), plus the base
             velocities; then the path KL (the policy's velocity at the S - 1 stochastic steps)
  gradients  per minibatch: the policy's forward and backward on (sample, step) rows of
             ceil(f S) stratified steps per sample, loss |(2/sigma)(v - v_base) - sigma a|^2
  optimizer  gradient-norm clip, AdamW, EMA of the weights
  write      the next checkpoint (weights, AdamW moments, EMA) as safetensors
Then a parity run (one update on the whole buffer, every step, the outlier rule off: nothing
random left) compares rlstep's metrics with the twin's: the terminal and t = 1 adjoint norms,
the path KL, the loss and the gradient norm (goal: 1e-4 relative).
"""

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_engine import read_stream  # noqa: E402  (the README's ten-line stream reader)


def swift_round(args, extra, out):
    """Runs rlstep --profile; returns (stage seconds, metrics)."""
    metrics = out + ".jsonl"
    if os.path.exists(metrics):
        os.remove(metrics)
    cmd = [os.path.join(args.bin, "rlstep"), "--algo", "am", "--model", args.model, "--ref", args.model,
           "--threads", str(args.threads), "--profile", "-o", out, "--metrics", metrics] + extra + [args.buffer]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_am: rlstep failed: {r.stderr.strip()}")
    line = next(l for l in r.stderr.splitlines() if l.startswith("rlstep: profile: "))
    stages = {m.group(1): float(m.group(2)) for m in re.finditer(r"([a-z_]+) ([0-9.]+)", line[len("rlstep: profile: "):])}
    with open(metrics) as f:
        return stages, json.loads(f.readline())


class Twin:
    def __init__(self, model_path, buffer_path, threads, raw_policy):
        import torch
        import torch_models

        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        self.policy = torch_models.load_checkpoint(model_path, ema=not raw_policy).train()
        self.reference = torch_models.load_checkpoint(model_path, ema=True).eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        with open(buffer_path, "rb") as f:
            records = read_stream(f.read())
        self.traj = torch.from_numpy(np.concatenate([r["traj.x"] for r, _ in records]))  # [N, S+1, C, H, W]
        self.y = torch.from_numpy(np.concatenate([r["y"] for r, _ in records]))
        self.grad = torch.from_numpy(np.concatenate([r["reward.grad"] for r, _ in records]))
        self.times = [float(t) for t in records[0][0]["traj.t"]]
        meta = records[0][1]
        if meta.get("sampler") not in ("memoryless-ll", "memoryless-em"):
            sys.exit("bench_am: the buffer must hold memoryless rollouts (`sample --sampler memoryless-ll --record`)")
        self.offset = float(meta["sampler.memoryless_offset"])
        self.read_s = time.perf_counter() - t0
        self.N, self.S = self.traj.shape[0], self.traj.shape[1] - 1

    def u(self, t):
        return 1 - t + self.offset

    def sigma(self, t):
        return math.sqrt(2 * (t + self.offset) / self.u(t))

    def prepare(self, lam):
        import torch

        N, S, times = self.N, self.S, self.times
        t0 = time.perf_counter()
        a = (-lam * self.grad.double()).float()
        self.terminal_norm = float(a.flatten(1).norm(dim=1).mean())
        adj = torch.empty((N, S) + tuple(self.traj.shape[2:]))
        vb = torch.empty_like(adj)
        for k in range(S - 1, -1, -1):
            tn = times[k + 1]
            x = self.traj[:, k + 1].clone().requires_grad_(True)
            with torch.enable_grad():
                v = self.reference(x, torch.full((N,), tn), self.y)
                (g,) = torch.autograd.grad(v, x, grad_outputs=a)
            if k + 1 < S:
                vb[:, k + 1] = v.detach()
            phi = self.u(times[k]) / self.u(tn)
            h = times[k] - tn
            a = (phi * (a.double() - 2 * h * g.double())).float()
            adj[:, k] = a
        with torch.no_grad():
            vb[:, 0] = self.reference(self.traj[:, 0], torch.full((N,), times[0]), self.y)
        self.adjoint_s = time.perf_counter() - t0
        self.adj, self.vb = adj, vb
        self.start_norm = float(adj[:, 0].flatten(1).norm(dim=1).mean())
        # Path KL over the stochastic steps (the memoryless sampler's last step is deterministic).
        t1 = time.perf_counter()
        kl = 0.0
        D = float(np.prod(self.traj.shape[2:]))
        with torch.no_grad():
            for k in range(S - 1):
                v = self.policy(self.traj[:, k], torch.full((N,), times[k]), self.y)
                h, c = times[k] - times[k + 1], 2 / self.sigma(times[k])
                kl += h / 2 * float(((c * (v.double() - vb[:, k].double())) ** 2).flatten(1).sum(1).mean()) / D
        self.kl = kl
        self.kl_s = time.perf_counter() - t1

    def steps_for(self, rng, fraction, split):
        """ceil(f S) steps, half with tau = 1 - t < split and half with tau >= split."""
        S = self.S
        m = max(1, math.ceil(fraction * S))
        low = [k for k in range(S) if 1 - self.times[k] < split - 1e-6]
        high = [k for k in range(S) if k not in low]
        n_low = min(len(low), (m + 1) // 2)
        n_high = min(len(high), m - n_low)
        n_low = min(len(low), m - n_high)
        return sorted(list(rng.choice(low, n_low, replace=False)) + list(rng.choice(high, n_high, replace=False)))

    def update(self, epochs, minibatch, fraction, split, lr, ema_decay=0.999, seed=0):
        import torch

        rng = np.random.default_rng(seed)
        params = [p for p in self.policy.parameters()]
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0)
        ema = [p.detach().clone() for p in params]
        grad_s = opt_s = 0.0
        losses, norms = [], []
        for _ in range(epochs):
            order = rng.permutation(self.N)
            for b in range(0, self.N, minibatch):
                t0 = time.perf_counter()
                batch = order[b:b + minibatch]
                rows_i, rows_k, per = [], [], []
                for i in batch:
                    ks = self.steps_for(rng, fraction, split)
                    per.append(len(ks))
                    rows_i += [i] * len(ks)
                    rows_k += ks
                ri, rk = torch.tensor(rows_i), torch.tensor(rows_k)
                x = self.traj[ri, rk]
                t = torch.tensor([self.times[k] for k in rows_k])
                sig = torch.tensor([self.sigma(self.times[k]) for k in rows_k]).view(-1, *[1] * (x.dim() - 1))
                opt.zero_grad(set_to_none=True)
                v = self.policy(x, t, self.y[ri])
                resid = 2 / sig * (v - self.vb[ri, rk]) - sig * self.adj[ri, rk]
                m = torch.tensor([per[j] for j, i in enumerate(batch) for _ in range(per[j])], dtype=torch.float32)
                row_loss = (resid ** 2).flatten(1).sum(1) / (2 * m)
                loss = row_loss.sum() / len(batch)
                loss.backward()
                t1 = time.perf_counter()
                norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                with torch.no_grad():
                    torch._foreach_mul_(ema, ema_decay)
                    torch._foreach_add_(ema, [p.detach() for p in params], alpha=1 - ema_decay)
                t2 = time.perf_counter()
                grad_s += t1 - t0
                opt_s += t2 - t1
                losses.append(float(loss.detach()))
                norms.append(float(norm))
        self.grad_s, self.opt_s = grad_s, opt_s
        self.losses, self.norms = losses, norms
        self.opt, self.ema = opt, ema

    def write(self, path):
        from safetensors.torch import save_file

        t0 = time.perf_counter()
        state = {k: v.detach().contiguous() for k, v in self.policy.state_dict().items()}
        names = [n for n, _ in self.policy.named_parameters()]
        for n, e in zip(names, self.ema):
            state["ema." + n] = e.contiguous()
        for n, p in zip(names, self.policy.parameters()):
            s = self.opt.state[p]
            if not s:  # a parameter without gradient (never stepped)
                continue
            state["optim.exp_avg." + n] = s["exp_avg"].contiguous()
            state["optim.exp_avg_sq." + n] = s["exp_avg_sq"].contiguous()
        save_file(state, path + ".tmp")
        os.replace(path + ".tmp", path)
        self.write_s = time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=".build/release")
    ap.add_argument("--model", required=True, help="a train checkpoint (policy start and reference)")
    ap.add_argument("--buffer", required=True, help="memoryless rollouts with reward.grad")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lambda", dest="lam", type=float, default=1.0)
    ap.add_argument("--minibatch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--timestep-fraction", type=float, default=0.4)
    ap.add_argument("--json")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    common = ["--lambda", str(args.lam), "--weights", "raw"]

    # Timing: drl.sh's round (2 epochs of minibatch 64, f = 0.4).
    timing = ["--epochs", str(args.epochs), "--minibatch", str(args.minibatch), "--timestep-fraction", str(args.timestep_fraction)]
    swift, swift_m = swift_round(args, common + timing, os.path.join(tmp, "swift.safetensors"))
    # PyTorch warmed up: one whole round first in the same process (its first calls pay for
    # lazy initialisation), then the timed round on fresh state. rlstep is timed cold, as a
    # pipeline runs it (one process per round).
    for _ in range(2):
        twin = Twin(args.model, args.buffer, args.threads, raw_policy=True)
        twin.prepare(args.lam)
        twin.update(args.epochs, args.minibatch, args.timestep_fraction, 0.6, 1e-4)
        twin.write(os.path.join(tmp, "torch.safetensors"))
    torch_s = {"read": twin.read_s, "lean_adjoint": twin.adjoint_s, "path_kl": twin.kl_s,
               "gradients": twin.grad_s, "optimizer": twin.opt_s, "write": twin.write_s}

    # Parity: one update on the whole buffer, every step, no outlier rule.
    parity = ["--epochs", "1", "--minibatch", str(twin.N), "--timestep-fraction", "1", "--clip-quantile", "1"]
    _, pm = swift_round(args, common + parity, os.path.join(tmp, "parity.safetensors"))
    ptwin = Twin(args.model, args.buffer, args.threads, raw_policy=True)
    ptwin.prepare(args.lam)
    ptwin.update(1, ptwin.N, 1.0, 0.6, 1e-4)
    pairs = {"adjoint_norm_terminal": (pm["adjoint_norm_terminal"], ptwin.terminal_norm),
             "adjoint_norm_t1": (pm["adjoint_norm_t1"], ptwin.start_norm),
             "kl": (pm["kl"], ptwin.kl),
             "loss": (pm["loss_first"], ptwin.losses[0]),
             "grad_norm": (pm["grad_norm"], ptwin.norms[0])}

    print(f"buffer: {twin.N} rollouts of {twin.S} steps, sample shape {tuple(twin.traj.shape[2:])}; "
          f"{swift_m['updates']:.0f} updates of {args.minibatch}, f = {args.timestep_fraction}, {args.threads} threads")
    print(f"{'stage':<14}{'Swift s':>10}{'PyTorch s':>11}{'ratio':>8}")
    rows = [("read", swift["read"], torch_s["read"]),
            ("lean adjoint", swift["lean_adjoint"], torch_s["lean_adjoint"]),
            ("path KL", swift["path_kl"], torch_s["path_kl"]),
            ("gradients", swift["gradients"], torch_s["gradients"]),
            ("optimizer", swift["optimizer"], torch_s["optimizer"]),
            ("write", swift["write"], torch_s["write"])]
    for name, s, t in rows:
        print(f"{name:<14}{s:>10.3f}{t:>11.3f}{t / s:>7.2f}x")
    compute_s = sum(swift[k] for k in ("lean_adjoint", "path_kl", "gradients", "optimizer"))
    compute_t = sum(torch_s[k] for k in ("lean_adjoint", "path_kl", "gradients", "optimizer"))
    print(f"{'compute':<14}{compute_s:>10.3f}{compute_t:>11.3f}{compute_t / compute_s:>7.2f}x   (prepare + update)")
    print(f"{'whole round':<14}{swift['total']:>10.3f}{sum(torch_s.values()):>11.3f}{sum(torch_s.values()) / swift['total']:>7.2f}x"
          f"   (Swift: also finish {swift['finish']:.3f} s)")
    print("parity (one full-buffer update, every step, no outlier rule): Swift / PyTorch, relative difference")
    worst = 0.0
    for k, (s, t) in pairs.items():
        rel = abs(s - t) / max(abs(t), 1e-30)
        worst = max(worst, rel if k != "kl" or abs(t) > 1e-12 else 0)
        print(f"  {k:<22}{s:>16.9g}{t:>16.9g}{rel:>11.2e}")
    print(f"  worst {worst:.2e} ({'ok' if worst <= 1e-4 else 'ABOVE 1e-4'})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"swift": swift, "torch": torch_s, "parity": pairs, "worst_relative": worst}, f, indent=1)


if __name__ == "__main__":
    main()
