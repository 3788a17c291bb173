"""Benchmark: Phaseboard's vectorised LLC against devinterp 2.0.1, in one process.

Both estimate the LLC of the same small attention-only transformer on the same data
with the same SGLD hyperparameters. We check the estimates agree within their chain
spread and print chain-steps/s for each and the speed ratio (ours / devinterp).

    .venv/bin/python bench/llc_vs_devinterp.py                       # CPU, small model
    .venv/bin/python bench/llc_vs_devinterp.py --device cuda --vocab 5000 --ctx 64 \
        --d-model 256 --n-heads 8 --chains 8 --draws 200 --lr 1e-4 --n 50000
    .venv/bin/python bench/llc_vs_devinterp.py --trajectory 100      # estimate_llc_many

devinterp is a bench-only dependency (pip install devinterp==2.0.1).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.llc import LLCConfig, estimate_llc, estimate_llc_many  # noqa: E402


class AttnOnly(nn.Module):
    """Attention-only transformer: embed -> n_layers x (multi-head causal attention) -> unembed.
    forward(input_ids (B, T)) -> logits (B, T, vocab), as devinterp expects."""

    def __init__(self, vocab: int, ctx: int, d_model: int, n_heads: int, n_layers: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(ctx, d_model) * 0.02)
        self.qkv = nn.ModuleList(
            nn.Linear(d_model, 3 * d_model, bias=False) for _ in range(n_layers)
        )
        self.out = nn.ModuleList(nn.Linear(d_model, d_model, bias=False) for _ in range(n_layers))
        self.unembed = nn.Linear(d_model, vocab, bias=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        B, T = input_ids.shape
        x = self.embed(input_ids) + self.pos[:T]  # (B, T, d)
        for qkv, out in zip(self.qkv, self.out, strict=True):
            q, k, v = qkv(x).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, T, dh)
            # Explicit causal attention rather than F.scaled_dot_product_attention: torch has no
            # vmap batching rule for the fused CPU kernel and falls back to a per-sample loop.
            # Both samplers run this same model, so the comparison stays like for like.
            att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
            z = att @ v  # (B, H, T, dh)
            x = x + out(z.transpose(1, 2).reshape(B, T, -1))
        return self.unembed(x)


def lm_loss(model: nn.Module, input_ids: Tensor) -> Tensor:
    logits = model(input_ids)  # (B, T, V)
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), input_ids[:, 1:].flatten())


def make_data(n: int, vocab: int, ctx: int, seed: int = 0) -> Tensor:
    """Sequences whose second half repeats the first: an induction task."""
    g = torch.Generator().manual_seed(seed)
    first = torch.randint(0, vocab, (n, ctx // 2), generator=g)
    return torch.cat([first, first], dim=1)[:, :ctx]


def train(model: nn.Module, data: Tensor, steps: int, batch: int, device: str) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=g)
        opt.zero_grad()
        lm_loss(model, data[idx].to(device)).backward()
        opt.step()


def batches(data: Tensor, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield data[torch.randint(0, len(data), (batch,), generator=g)]


def run_devinterp(model: nn.Module, data: Tensor, args: argparse.Namespace, n_beta: float):
    from datasets import Dataset
    from devinterp.slt.llc import llc

    ds = Dataset.from_dict({"input_ids": data.tolist()}).with_format("torch")

    def call(num_draws: int):  # type: ignore[no-untyped-def]
        return llc(
            model, ds, {},  # no extra observables: LLC comes from the SGLD-step losses
            lr=args.lr, n_beta=n_beta, localization=args.localization,
            num_chains=args.chains, num_draws=num_draws, batch_size=args.batch,
            device=args.device,
        )  # fmt: skip

    call(3)  # warm-up, as ours gets one: the timed call pays no first-call costs
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = call(args.draws)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    per_chain = [float(x) for x in res.llc_per_chain.values]
    return float(res.llc_mean), float(torch.tensor(per_chain).std()), elapsed


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--vocab", type=int, default=500)
    p.add_argument("--ctx", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--localization", type=float, default=100.0)
    p.add_argument("--n", type=int, default=5000, help="training-set size; n_beta = n / log n")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--trajectory", type=int, default=0, help="also time K checkpoints")
    p.add_argument("--skip-devinterp", action="store_true")
    args = p.parse_args()

    torch.manual_seed(0)
    model = AttnOnly(args.vocab, args.ctx, args.d_model, args.n_heads, args.n_layers).to(
        args.device
    )
    n_params = sum(q.numel() for q in model.parameters())
    data = make_data(args.n, args.vocab, args.ctx)
    train(model, data, args.train_steps, args.batch, args.device)
    n_beta = args.n / math.log(args.n)
    print(f"model: {n_params:,} params, device {args.device}, n_beta {n_beta:.1f}")
    chain_steps = args.chains * args.draws

    cfg = LLCConfig(
        lr=args.lr, n_beta=n_beta, localization=args.localization, num_chains=args.chains,
        num_draws=args.draws, batch_size=args.batch, device=args.device,
    )  # fmt: skip
    # Warm-up (first-call vmap/CUDA setup), then the timed run.
    estimate_llc(
        model, lm_loss, batches(data, args.batch, 0), LLCConfig(**{**cfg.to_dict(), "num_draws": 3})
    )
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    ours = estimate_llc(model, lm_loss, batches(data, args.batch, 0), cfg)
    print(
        f"ours      llc {ours.mean:8.3f} ± {ours.std:.3f}  {ours.elapsed_s:7.2f} s  "
        f"{chain_steps / ours.elapsed_s:8.1f} chain-steps/s  diverged {ours.diverged}"
    )
    if not args.skip_devinterp:
        di_mean, di_std, di_s = run_devinterp(model, data, args, n_beta)
        print(
            f"devinterp llc {di_mean:8.3f} ± {di_std:.3f}  {di_s:7.2f} s  "
            f"{chain_steps / di_s:8.1f} chain-steps/s"
        )
        tol = 2 * math.hypot(ours.std, di_std)
        agree = abs(ours.mean - di_mean) <= tol
        print(
            f"agreement: |diff| = {abs(ours.mean - di_mean):.3f} "
            f"<= 2*combined spread {tol:.3f}: {agree}"
        )
        print(f"speed ratio (ours / devinterp): {di_s / ours.elapsed_s:.2f}x")

    if args.trajectory:
        ckpts = []
        for i in range(args.trajectory):  # a fake trajectory: small perturbations of w*
            g = torch.Generator().manual_seed(100 + i)
            ckpts.append(
                {
                    k: v + 1e-3 * torch.randn(v.shape, generator=g).to(v)
                    for k, v in model.state_dict().items()
                }
            )
        t0 = time.perf_counter()
        res = estimate_llc_many(ckpts, lm_loss, batches(data, args.batch, 0), cfg, model=model)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(
            f"trajectory: {args.trajectory} checkpoints in {dt:.1f} s "
            f"({dt / args.trajectory:.2f} s each; "
            f"single estimate_llc {ours.elapsed_s:.2f} s); llc range "
            f"{min(r.mean for r in res):.2f}..{max(r.mean for r in res):.2f}"
        )


if __name__ == "__main__":
    main()
