"""Benchmark: Phaseboard's vectorised LLC against devinterp 2.0.1, in one process.

Both estimate the LLC of the same small attention-only transformer on the same data
with the same SGLD hyperparameters. We check the estimates agree within their chain
spread and print chain-steps/s for each and the speed ratio (ours / devinterp).

    .venv/bin/python bench/llc_vs_devinterp.py                       # CPU, small model
    .venv/bin/python bench/llc_vs_devinterp.py --device cuda --vocab 5000 --ctx 64 \
        --d-model 256 --n-heads 8 --chains 8 --draws 200 --lr 1e-4 --n 50000
    .venv/bin/python bench/llc_vs_devinterp.py --trajectory 100      # estimate_llc_many

devinterp is a bench-only dependency (pip install devinterp==2.0.1).

``--case neox`` is devinterp's home turf: a GPT-NeoX-style Hugging Face causal LM (~200k
parameters, context 32; ``--size 3m`` for ~3M on a GPU) that devinterp takes as it is, and
Phaseboard through its generic ``hf_causal_lm`` task; same tokens and SGLD settings (8 chains x
200 draws, batch 32). It also times a 20-checkpoint trajectory through ``estimate_llc_many``
against devinterp called once per checkpoint, and profiles the floor set by the arithmetic
(one chain's forward + backward, times the number of chains):

    .venv/bin/python bench/llc_vs_devinterp.py --case neox --threads 1
    .venv/bin/python bench/llc_vs_devinterp.py --case neox --size 3m --device cuda
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phaseboard.analysis.llc import LLCConfig, estimate_llc, estimate_llc_many  # noqa: E402


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


# ---------------------------------------------------------------- case "neox" (hf_causal_lm)

NEOX_SIZES = {  # name -> GPT-NeoX config (~params)
    "200k": {"vocab_size": 500, "hidden_size": 64, "num_hidden_layers": 3,
             "num_attention_heads": 4, "intermediate_size": 256},
    "3m": {"vocab_size": 2500, "hidden_size": 256, "num_hidden_layers": 3,
           "num_attention_heads": 8, "intermediate_size": 512},
}  # fmt: skip


def _best_time(fn, device: str, rounds: int = 3, reps: int = 5) -> float:  # type: ignore[no-untyped-def]
    """Seconds per call of ``fn``: the best of ``rounds`` means of ``reps`` calls (warmed)."""
    for _ in range(2):
        fn()
    best = math.inf
    for _ in range(rounds):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_neox_case(args: argparse.Namespace) -> None:
    from phaseboard.analysis.tasks import get_task

    hf_config = {"model_type": "gpt_neox", "max_position_embeddings": args.ctx,
                 "bos_token_id": 0, "eos_token_id": 0, **NEOX_SIZES[args.size]}  # fmt: skip
    vocab = hf_config["vocab_size"]
    data = make_data(args.n, vocab, args.ctx)  # (n, ctx) induction sequences
    task = get_task("hf_causal_lm", {"hf_config": hf_config, "seq_len": args.ctx,
                                     "num_sequences": args.n})  # fmt: skip
    task.set_token_data({"train": data, "test": make_data(256, vocab, args.ctx, seed=1)})
    torch.manual_seed(0)
    model = task.build_model().to(args.device)
    n_params = sum(q.numel() for q in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # a short run: a non-trivial w*
    for batch in itertools.islice(task.batches("train", args.batch, seed=1), args.train_steps):
        opt.zero_grad()
        task.loss(model, task.to(batch, args.device)).backward()
        opt.step()
    model.eval()
    n_beta = args.n / math.log(args.n)
    print(
        f"case neox ({args.size}): GPT-NeoX {n_params:,} params, ctx {args.ctx}, device "
        f"{args.device}, threads {torch.get_num_threads()}, n_beta {n_beta:.1f}"
    )
    cfg = LLCConfig(
        lr=args.lr, n_beta=n_beta, localization=args.localization, num_chains=args.chains,
        num_draws=args.draws, batch_size=args.batch, device=args.device,
    )  # fmt: skip
    chain_steps = args.chains * args.draws

    def ours(m: nn.Module, c: LLCConfig):  # type: ignore[no-untyped-def]
        return estimate_llc(m, task.loss, task.batches("train", args.batch, seed=0), c)

    ours(model, LLCConfig(**{**cfg.to_dict(), "num_draws": 3}))  # warm-up
    _sync(args.device)
    mine = ours(model, cfg)
    print(
        f"ours      llc {mine.mean:8.3f} ± {mine.std:.3f}  {mine.elapsed_s:7.2f} s  "
        f"{chain_steps / mine.elapsed_s:8.1f} chain-steps/s  diverged {mine.diverged}"
    )

    # The arithmetic floor. Every SGLD sampler pays one forward + backward per chain-step;
    # ours also pays one forward at w* per chain-step (the paired reference loss L_m(w*) on
    # the chain's own minibatch, see analysis/llc.py). Best of 3 rounds of 5 (noisy host).
    batch = task.to(next(task.batches("train", args.batch, seed=3)), args.device)

    def fwd_bwd() -> None:
        model.zero_grad()
        task.loss(model, batch).backward()

    def fwd() -> None:
        with torch.no_grad():
            task.loss(model, batch)

    fb, f = _best_time(fwd_bwd, args.device), _best_time(fwd, args.device)
    per_chain_step = mine.elapsed_s / chain_steps
    print(
        f"profile   one chain-step: fwd+bwd {fb * 1e3:.1f} ms, reference fwd {f * 1e3:.1f} ms; "
        f"ours {per_chain_step * 1e3:.1f} ms = {per_chain_step / (fb + f):.2f}x its floor "
        f"(fwd+bwd+fwd)"
    )

    if args.skip_devinterp:
        return
    from datasets import Dataset
    from devinterp.slt.llc import llc

    ds = Dataset.from_dict({"input_ids": data.tolist()}).with_format("torch")

    def devinterp(m: nn.Module, num_draws: int):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        res = llc(
            m, ds, {}, lr=args.lr, n_beta=n_beta, localization=args.localization,
            num_chains=args.chains, num_draws=num_draws, batch_size=args.batch,
            device=args.device,
        )  # fmt: skip
        _sync(args.device)
        per_chain = [float(x) for x in res.llc_per_chain.values]
        return float(res.llc_mean), float(torch.tensor(per_chain).std()), time.perf_counter() - t0

    devinterp(model, 3)  # warm-up
    di_mean, di_std, di_s = devinterp(model, args.draws)
    di_chain_step = di_s / chain_steps
    print(
        f"devinterp llc {di_mean:8.3f} ± {di_std:.3f}  {di_s:7.2f} s  "
        f"{chain_steps / di_s:8.1f} chain-steps/s  ({di_chain_step * 1e3:.1f} ms per chain-step "
        f"= {di_chain_step / fb:.2f}x the fwd+bwd floor)"
    )
    print(
        f"bound     a sampler at our floor would be {di_chain_step / (fb + f):.2f}x devinterp; "
        f"one with no reference forward at all {di_chain_step / fb:.2f}x"
    )
    tol = 2 * math.hypot(mine.std, di_std)
    print(
        f"agreement: |diff| = {abs(mine.mean - di_mean):.3f} <= 2*combined chain spread "
        f"{tol:.3f}: {abs(mine.mean - di_mean) <= tol}"
    )
    print(
        f"speed ratio per estimate (ours / devinterp chain-steps/s): {di_s / mine.elapsed_s:.2f}x"
    )

    if not args.trajectory:
        return
    ckpts = []
    for i in range(args.trajectory):  # a trajectory stand-in: small perturbations of w*
        g = torch.Generator().manual_seed(100 + i)
        ckpts.append({k: v + 1e-3 * torch.randn(v.shape, generator=g).to(v)
                      for k, v in model.state_dict().items()})  # fmt: skip
    tcfg = LLCConfig(**{**cfg.to_dict(), "num_draws": args.trajectory_draws})
    t0 = time.perf_counter()
    estimate_llc_many(
        ckpts, task.loss, task.batches("train", args.batch, seed=0), tcfg, model=model
    )
    _sync(args.device)
    ours_traj = time.perf_counter() - t0
    probe = copy.deepcopy(model)
    measured = min(args.trajectory_devinterp, args.trajectory)
    t0 = time.perf_counter()
    for sd in ckpts[:measured]:  # devinterp has no cross-checkpoint batching: one call each
        probe.load_state_dict(sd)
        devinterp(probe, args.trajectory_draws)
    di_traj = (time.perf_counter() - t0) * args.trajectory / measured
    note = "" if measured == args.trajectory else f" (measured on {measured}, scaled linearly)"
    print(
        f"trajectory: {args.trajectory} checkpoints x {args.chains} chains x "
        f"{args.trajectory_draws} draws: estimate_llc_many {ours_traj:.1f} s, devinterp loop "
        f"{di_traj:.1f} s{note}; ratio {di_traj / ours_traj:.2f}x"
    )
    steps = args.trajectory * args.chains * args.trajectory_draws
    print(
        f"bound     per chain-step: ours {ours_traj / steps * 1e3:.1f} ms "
        f"({ours_traj / steps / (fb + f):.2f}x our floor), devinterp {di_traj / steps * 1e3:.1f} "
        f"ms; at our floor the ratio would be {di_traj / steps / (fb + f):.2f}x, with no "
        f"reference forward {di_traj / steps / fb:.2f}x"
    )


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
    p.add_argument("--case", choices=["attn", "neox"], default="attn")
    p.add_argument("--size", choices=sorted(NEOX_SIZES), default="200k", help="case neox")
    p.add_argument("--trajectory-draws", type=int, default=None, help="default: --draws")
    p.add_argument(
        "--trajectory-devinterp", type=int, default=1 << 30,
        help="devinterp calls actually timed in the trajectory (then scaled)",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.trajectory_draws is None:
        args.trajectory_draws = args.draws
    if args.case == "neox":
        run_neox_case(args)
        return

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
