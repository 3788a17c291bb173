"""Benchmark: Phaseboard's vectorised LLC against devinterp 2.0.1, in one process.

Both estimate the LLC of the same trained model on the same data with the same SGLD
hyperparameters. We check the estimates agree within their chain spread and print
chain-steps/s for each and the speed ratio. Timed in ``--rounds`` interleaved rounds
(Phaseboard, the floor, devinterp; medians printed): the floor is what the arithmetic
costs, one chain's forward + backward (and Phaseboard's paired reference forward), timed
in each round between the two samplers so that it sees the same machine load.

The models are trained until their loss is well below chance (cached under bench/out/):
sampling at a w* near chance measures transients, not the posterior. Phaseboard runs
without its bias-check groups (``--bias-checks`` to include them): devinterp has none.

    .venv/bin/python bench/llc_vs_devinterp.py                       # CPU, small model
    .venv/bin/python bench/llc_vs_devinterp.py --device cuda --vocab 5000 --ctx 64 \
        --d-model 256 --n-heads 8 --chains 8 --draws 200 --lr 1e-4 --n 50000
    .venv/bin/python bench/llc_vs_devinterp.py --trajectory 100      # estimate_llc_many

devinterp is a bench-only dependency (pip install 'phaseboard[bench]').

``--case neox`` is devinterp's home turf: a GPT-NeoX-style Hugging Face causal LM (~200k
parameters, context 32; ``--size 3m`` for ~3M on a GPU; ``bench/cases.py``) that devinterp
takes as it is, and Phaseboard through its generic ``hf_causal_lm`` task; same tokens and
SGLD settings (8 chains x 200 draws, batch 32). ``--trajectory K`` also times K checkpoints
through ``estimate_llc_many`` against devinterp called once per checkpoint:

    .venv/bin/python bench/llc_vs_devinterp.py --case neox --threads 1
    .venv/bin/python bench/llc_vs_devinterp.py --case neox --size 3m --device cuda
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cases import NEOX_SIZES, OUT, _cached, neox_case  # noqa: E402

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
    """Adam (lr 3e-3) on random minibatches of ``data``."""
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        idx = torch.randint(0, len(data), (batch,), generator=g)
        opt.zero_grad()
        lm_loss(model, data[idx].to(device)).backward()
        opt.step()


def trained_attn(args: argparse.Namespace, data: Tensor) -> nn.Module:
    """The attention-only model after ``--train-steps`` of Adam at batch 64, cached under
    bench/out/: by 3,000 steps its loss is well below chance (the induction head forms
    near step 2,000; the floor is 15/31 of ln(vocab), the random first halves)."""
    torch.manual_seed(0)
    model = AttnOnly(args.vocab, args.ctx, args.d_model, args.n_heads, args.n_layers)
    key = (
        f"attn_v{args.vocab}_c{args.ctx}_d{args.d_model}_h{args.n_heads}_l{args.n_layers}_"
        f"n{args.n}_steps{args.train_steps or 3000}"
    )

    def build() -> dict[str, Tensor]:
        train(model, data, args.train_steps or 3000, 64, "cpu")
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    model.load_state_dict(_cached(OUT / f"{key}.pt", build))
    return model.to(args.device).eval()


def batches(data: Tensor, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        yield data[torch.randint(0, len(data), (batch,), generator=g)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:  # type: ignore[no-untyped-def]
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


class Compare:
    """Phaseboard and devinterp on one model, and the floor, timed round by round."""

    def __init__(self, args: argparse.Namespace, model: nn.Module, loss_fn, data, stream) -> None:  # type: ignore[no-untyped-def]
        self.args, self.model, self.loss_fn, self.data, self.stream = (
            args, model, loss_fn, data, stream,
        )  # fmt: skip
        self.n_beta = args.n / math.log(args.n)
        extra = {} if args.bias_checks else {"bias_checks": False}
        fields = {f.name for f in dataclasses.fields(LLCConfig)}
        self.cfg = LLCConfig(
            lr=args.lr, n_beta=self.n_beta, localization=args.localization,
            num_chains=args.chains, num_draws=args.draws, batch_size=args.batch,
            device=args.device, **{k: v for k, v in extra.items() if k in fields},
        )  # fmt: skip
        batch = next(stream(3))

        def fwd_bwd() -> None:
            model.zero_grad()
            loss_fn(model, batch).backward()

        def fwd() -> None:
            with torch.no_grad():
                loss_fn(model, batch)

        self.fwd_bwd, self.fwd = fwd_bwd, fwd

    def ours(self, seed: int, draws: int | None = None, model: nn.Module | None = None):  # type: ignore[no-untyped-def]
        draws = draws or self.args.draws
        cfg = LLCConfig(**{**self.cfg.to_dict(), "seed": seed, "num_draws": draws})
        _sync(self.args.device)
        res = estimate_llc(model or self.model, self.loss_fn, self.stream(seed), cfg)
        _sync(self.args.device)
        return res.mean, res.std, res.elapsed_s

    def devinterp(self, seed: int, draws: int | None = None, model: nn.Module | None = None):  # type: ignore[no-untyped-def]
        from datasets import Dataset
        from devinterp.slt.llc import llc

        if not hasattr(self, "_ds"):
            self._ds = Dataset.from_dict({"input_ids": self.data.tolist()}).with_format("torch")
        a = self.args
        with tempfile.TemporaryDirectory() as tmp:  # devinterp never removes its own
            t0 = time.perf_counter()
            res = llc(
                model or self.model, self._ds, {}, lr=a.lr, n_beta=self.n_beta,
                localization=a.localization, num_chains=a.chains, num_draws=draws or a.draws,
                batch_size=a.batch, device=a.device, init_seed=seed,
                output_path=f"{tmp}/samples.zarr",
            )  # fmt: skip
            _sync(a.device)
            seconds = time.perf_counter() - t0
            per_chain = [float(x) for x in res.llc_per_chain.values]
            return float(res.llc_mean), float(torch.tensor(per_chain).std()), seconds

    def floor(self) -> tuple[float, float]:
        """Seconds of one chain-step's forward + backward and of one forward (each the
        mean of ``chains`` calls)."""
        reps = self.args.chains
        fb = _timed(lambda: [self.fwd_bwd() for _ in range(reps)], self.args.device) / reps
        f = _timed(lambda: [self.fwd() for _ in range(reps)], self.args.device) / reps
        return fb, f

    def run(self) -> None:
        a = self.args
        chain_steps = a.chains * a.draws
        self.ours(99, 3)  # warm-up: first-call costs (torch.func's imports)
        self.floor()
        if not a.skip_devinterp:
            self.devinterp(99, 3)
        rows: dict[str, list] = {"ours": [], "floor": [], "devinterp": []}
        for r in range(a.rounds):
            rows["ours"].append(self.ours(r))
            rows["floor"].append(self.floor())
            if not a.skip_devinterp:
                rows["devinterp"].append(self.devinterp(r))
            done = [f"ours {rows['ours'][-1][2]:.1f} s"]
            if rows["devinterp"]:
                done.append(f"devinterp {rows['devinterp'][-1][2]:.1f} s")
            print(f"round {r + 1}/{a.rounds}: " + ", ".join(done), flush=True)
        med = statistics.median
        ours_s = med(x[2] for x in rows["ours"])
        fb, f = med(x[0] for x in rows["floor"]), med(x[1] for x in rows["floor"])
        mine = rows["ours"][0]
        print(
            f"ours      llc {mine[0]:8.3f} ± {mine[1]:.3f} (seed 0)  {ours_s:7.2f} s (median)  "
            f"{chain_steps / ours_s:8.1f} chain-steps/s"
        )
        per = ours_s / chain_steps
        print(
            f"floor     one chain-step: fwd+bwd {fb * 1e3:.1f} ms, reference fwd {f * 1e3:.1f} ms "
            f"(medians of {a.rounds} rounds, between the samplers); ours {per * 1e3:.1f} ms = "
            f"{per / (fb + f):.2f}x its floor (fwd+bwd+fwd)"
        )
        if not rows["devinterp"]:
            return
        di = rows["devinterp"]
        di_s = med(x[2] for x in di)
        di_per = di_s / chain_steps
        print(
            f"devinterp llc {di[0][0]:8.3f} ± {di[0][1]:.3f} (seed 0)  {di_s:7.2f} s (median)  "
            f"{chain_steps / di_s:8.1f} chain-steps/s  ({di_per * 1e3:.1f} ms per chain-step "
            f"= {di_per / fb:.2f}x the fwd+bwd floor)"
        )
        print(
            f"bound     a sampler at our floor would be {di_per / (fb + f):.2f}x devinterp; "
            f"one with no reference forward at all {di_per / fb:.2f}x"
        )
        diff = abs(mine[0] - di[0][0])
        tol = 2 * math.hypot(mine[1], di[0][1])
        print(f"agreement: |diff| = {diff:.3f} <= 2*combined chain spread {tol:.3f}: {diff <= tol}")
        ratios = [d[2] / o[2] for d, o in zip(di, rows["ours"], strict=True)]
        print(
            f"speed ratio per estimate (devinterp s / ours s): {di_s / ours_s:.2f}x "
            f"(per round: {', '.join(f'{x:.2f}' for x in ratios)})"
        )

    def trajectory(self) -> None:
        a = self.args
        model = self.model
        ckpts = []
        for i in range(a.trajectory):  # a trajectory stand-in: small perturbations of w*
            g = torch.Generator().manual_seed(100 + i)
            ckpts.append({k: v + 1e-3 * torch.randn(v.shape, generator=g).to(v)
                          for k, v in model.state_dict().items()})  # fmt: skip
        tcfg = LLCConfig(**{**self.cfg.to_dict(), "num_draws": a.trajectory_draws})
        t0 = time.perf_counter()
        estimate_llc_many(ckpts, self.loss_fn, self.stream(0), tcfg, model=model)
        _sync(a.device)
        ours_traj = time.perf_counter() - t0
        if a.skip_devinterp:
            print(f"trajectory: {a.trajectory} checkpoints: estimate_llc_many {ours_traj:.1f} s")
            return
        probe = copy.deepcopy(model)
        measured = min(a.trajectory_devinterp, a.trajectory)
        t0 = time.perf_counter()
        for sd in ckpts[:measured]:  # devinterp has no cross-checkpoint batching: one call each
            probe.load_state_dict(sd)
            self.devinterp(0, a.trajectory_draws, probe)
        di_traj = (time.perf_counter() - t0) * a.trajectory / measured
        note = "" if measured == a.trajectory else f" (measured on {measured}, scaled linearly)"
        print(
            f"trajectory: {a.trajectory} checkpoints x {a.chains} chains x "
            f"{a.trajectory_draws} draws: estimate_llc_many {ours_traj:.1f} s, devinterp loop "
            f"{di_traj:.1f} s{note}; ratio {di_traj / ours_traj:.2f}x"
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
    p.add_argument(
        "--train-steps", type=int, default=None,
        help="training steps of the model (default: attn 3000, neox 1500; cached)",
    )  # fmt: skip
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    p.add_argument("--bias-checks", action="store_true", help="Phaseboard's default groups")
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
        case = neox_case(
            args.size, ctx=args.ctx, n=args.n, train_steps=args.train_steps or 1500,
            device=args.device,
        )  # fmt: skip
        model, loss_fn, data = case.model, case.loss, case.inputs
        stream = case.batches
        full, chance = case.full_loss(), case.chance_loss
    else:
        data = make_data(args.n, args.vocab, args.ctx)
        model = trained_attn(args, data)
        loss_fn = lm_loss

        def stream(seed: int):  # type: ignore[no-untyped-def]
            return (b.to(args.device) for b in batches(data, args.batch, seed))

        with torch.no_grad():
            full = float(lm_loss(model, data[:1024].to(args.device)))
        chance = math.log(args.vocab)
    n_params = sum(q.numel() for q in model.parameters())
    print(
        f"case {args.case}: {n_params:,} params, L(w*) {full:.3f} (chance {chance:.3f}), "
        f"device {args.device}, threads {torch.get_num_threads()}, {args.chains} chains x "
        f"{args.draws} draws, batch {args.batch}"
    )
    compare = Compare(args, model, loss_fn, data, stream)
    compare.run()
    if args.trajectory:
        compare.trajectory()


if __name__ == "__main__":
    main()
