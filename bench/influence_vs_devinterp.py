"""Our BIF and susceptibilities against devinterp 2.0.1's on the same tiny model and settings.

A 2-layer attention-only transformer (bench/llc_vs_devinterp.py's ``trained_attn``, cached
under bench/out/) trained on an induction task (sequences whose second half repeats the
first) until its loss is well below chance: at a w* near chance (the 300 steps this bench
once trained) the chains drift away from w* for the whole run. Both libraries sample its
local posterior with the same SGLD settings and record the same observed sequences' per-token
losses at every draw:

- BIF: the (32 x 32) sequence-level correlation matrix of 32 held-out sequences
  (``bayesian_influence`` vs devinterp's ``bif(correlation_method="sequence")``);
- susceptibilities of every attention head (4 weight restrictions, plus the full model) to
  two observable sets, held-out induction sequences and sequences without repetition, with a
  reference set from the training distribution (``susceptibilities`` vs devinterp's, whose
  per-token values are averaged per set).

Both run ``--burnin`` steps before the first draw and give every chain its own minibatches
(devinterp's ``match_sampling_input_ids_across_chains=False``: with one shared minibatch
sequence its chains are correlated and their spread understates its error); ours runs
without its bias-check groups (devinterp has none). Two Monte Carlo estimates of one
quantity differ by their sampling noise: each entry's difference is divided by sqrt(2) x our
standard error (devinterp's chains have the same settings, so the same error) and should be
within 2 for the share Student's t with (chains - 1) degrees of freedom puts there (91 % at 8
chains). For the BIF that error is the jackknife over chains of the stacked matrix
(``InfluenceResult.matrix_se``): these chains do not mix within a run, so the stacked
matrix carries their offsets, which the spread of the per-chain matrices never sees (the
share within 2 of that spread is printed too, against devinterp and against our own second
run). The matrix's entries vary little beside that noise at these settings, so the
Pearson r of the two matrices is printed beside the r of ours with a second run of ours
(another seed): the r that agreement can reach. Prints those shares, the r's and the times.

Susceptibilities subtract an L(w*) from the reference loss (phi = L - L(w*)). devinterp takes
the mean loss of 32 training minibatches at w*; we take the reference set's own loss, so
that phi is exactly the rise of L. On a 32-sequence reference set the two differ by its
sampling error, and chi moves by that difference times E_C[L - l] - E_full[L - l]: the
comparison passes devinterp's value (recomputed here as devinterp computes it) as
``reference_init``, and also prints ours with the default.
devinterp is a bench-only dependency (``.venv/bin/pip install 'torch==2.13.0'
devinterp==2.0.1``); without it this prints a line and exits.

    .venv/bin/python bench/influence_vs_devinterp.py
    .venv/bin/python bench/influence_vs_devinterp.py --chains 16 --draws 200
    .venv/bin/python bench/influence_vs_devinterp.py --bif-only    # the BIF half alone
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from llc_vs_devinterp import batches, lm_loss, make_data, trained_attn  # noqa: E402

from phaseboard.analysis.influence import (  # noqa: E402
    bayesian_influence,
    influence_matrix,
    susceptibilities,
)
from phaseboard.analysis.llc import LLCConfig  # noqa: E402
from phaseboard.analysis.restrict import attention_head_masks  # noqa: E402


def per_token_loss(model: nn.Module, input_ids: Tensor) -> Tensor:
    """(B, T - 1) next-token cross-entropy, devinterp's ``loss_fn`` convention."""
    logits = model(input_ids)[:, :-1]
    return F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")


def expected_share(chains: int) -> tuple[float, float]:
    """Share within 2 and median |z| when z follows Student's t with chains - 1 d.o.f.
    (an error estimated from ``chains`` chains); the normal's 95 % and 0.67 without scipy."""
    try:
        from scipy.stats import t
    except ImportError:
        return 0.954, 0.674
    dof = max(chains - 1, 1)
    return float(t.cdf(2, dof) - t.cdf(-2, dof)), float(t.ppf(0.75, dof))


def agreement(ours: np.ndarray, theirs: np.ndarray, se: np.ndarray) -> tuple[float, float, float]:
    """Share of entries within 2 combined s.e., median |z|, Pearson r of the entries."""
    z = (ours - theirs) / (math.sqrt(2) * np.maximum(se, 1e-12))
    keep = np.isfinite(z)
    r = float(np.corrcoef(ours[keep], theirs[keep])[0, 1])
    return float((np.abs(z[keep]) <= 2).mean()), float(np.median(np.abs(z[keep]))), r


def devinterp_init_loss(model: nn.Module, data: Tensor, batch: int, chains: int) -> float:
    """The L(w*) devinterp's susceptibilities subtract: per chain, the mean per-token loss of
    the first 32 minibatches its data loader draws (seeded 100 + chain when chains do not
    share minibatches), averaged over chains (devinterp 2.0.1 ``_write_init_loss``)."""
    from datasets import Dataset
    from torch.utils.data import DataLoader

    ds = Dataset.from_dict({"input_ids": data.tolist()}).with_format("torch")
    per_chain = []
    with torch.no_grad():
        for c in range(chains):
            gen = torch.Generator().manual_seed(100 + c)
            loader = DataLoader(ds, batch_size=batch, shuffle=True, generator=gen, drop_last=True)
            it = iter(loader)
            total = 0.0
            for _ in range(32):
                try:
                    b = next(it)
                except StopIteration:  # devinterp cycles the loader
                    it = iter(loader)
                    b = next(it)
                total += float(per_token_loss(model, b["input_ids"]).mean()) / 32
            per_chain.append(total)
    return float(np.mean(per_chain))


def mean_off_diagonal(res: Any) -> tuple[float, float]:
    """The mean off-diagonal entry of ``res.matrix`` and its jackknife-over-chains s.e.: a
    summary measured far more precisely than any one entry (the matrix's common level)."""
    used = res.draws[res.chains]
    off = ~torch.eye(used.shape[2], dtype=torch.bool)
    loo = np.array(
        [
            float(influence_matrix(torch.cat([used[:k], used[k + 1 :]]).flatten(0, 1))[off].mean())
            for k in range(len(res.chains))
        ]
    )
    c = len(loo)
    return float(res.matrix[off].mean()), float(loo.std() * math.sqrt(c - 1))


def _rows_of(ids: np.ndarray, probe: Tensor) -> list[int]:
    """Which row of ``probe`` each of devinterp's observed sequences is."""
    index = {tuple(row): i for i, row in enumerate(probe.tolist())}
    return [index[tuple(row)] for row in ids.tolist()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--n-heads", type=int, default=2)
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--draws", type=int, default=100)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--localization", type=float, default=100.0)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--train-steps", type=int, default=3000)
    ap.add_argument("--burnin", type=int, default=100)
    ap.add_argument("--bif-only", action="store_true", help="skip the susceptibilities half")
    args = ap.parse_args()
    load = os.getloadavg()  # a shared machine: read the ratios, not the seconds
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (1, 5, 15 min)", flush=True)
    try:
        from datasets import Dataset
        from devinterp.slt.bif import bif
        from devinterp.slt.susceptibilities import susceptibilities as di_susceptibilities
    except ImportError as exc:
        print(f"devinterp not installed ({exc}): nothing to compare (pip install devinterp==2.0.1)")
        return

    data = make_data(args.n, args.vocab, args.ctx)
    model = trained_attn(argparse.Namespace(**vars(args), n_layers=2, device="cpu"), data)
    with torch.no_grad():
        w_star_loss = float(lm_loss(model, data[:512]))
    held = make_data(args.batch * 2, args.vocab, args.ctx, seed=7)
    probe, reference = held[: args.batch], data[: args.batch]
    g = torch.Generator().manual_seed(11)
    random_seqs = torch.randint(0, args.vocab, (args.batch, args.ctx), generator=g)
    observed = {"induction": held[args.batch :], "no_repeat": random_seqs}
    n_beta = args.n / math.log(args.n)
    cfg = LLCConfig(
        lr=args.lr, n_beta=n_beta, localization=args.localization, num_chains=args.chains,
        num_draws=args.draws, num_burnin_steps=args.burnin, batch_size=args.batch,
        bias_checks=False,
    )  # fmt: skip
    d_head = args.d_model // args.n_heads
    heads: dict[str, Any] = {}
    for layer in range(2):
        heads.update(
            attention_head_masks(
                model, qkv_param=f"qkv.{layer}.weight", out_param=f"out.{layer}.weight",
                n_heads=args.n_heads, d_head=d_head, prefix=f"l{layer}.",
            )
        )  # fmt: skip
    print(
        f"model: {sum(p.numel() for p in model.parameters()):,} params; {args.chains} chains x "
        f"{args.draws} draws, lr {args.lr}, localization {args.localization}, "
        f"n_beta {n_beta:.1f}, batch {args.batch}; {len(heads)} heads; training loss at w* "
        f"{w_star_loss:.3f} (chance {math.log(args.vocab):.3f})"
    )

    # --- ours
    t0 = time.perf_counter()
    ours_bif = bayesian_influence(
        model, lm_loss, batches(data, args.batch, 0), probe, cfg, per_example_loss=per_token_loss
    )
    ours_bif_s = time.perf_counter() - t0
    if not args.bif_only:
        di_init = devinterp_init_loss(model, data, args.batch, args.chains)
        ours_sus = susceptibilities(
            model, lm_loss, batches(data, args.batch, 0), cfg, weight_groups=heads,
            observables=observed, reference=reference, per_example_loss=per_token_loss,
            reference_init=di_init,
        )  # fmt: skip
    ours_s = time.perf_counter() - t0
    print(f"ours: BIF in {ours_bif_s:.1f} s, both lenses in {ours_s:.1f} s", flush=True)
    ours_again = bayesian_influence(
        model, lm_loss, batches(data, args.batch, 1), probe, dataclasses.replace(cfg, seed=1),
        per_example_loss=per_token_loss,
    )  # fmt: skip
    if not args.bif_only:
        ours_default = susceptibilities(
            model, lm_loss, batches(data, args.batch, 0), cfg, weight_groups=heads,
            observables=observed, reference=reference, per_example_loss=per_token_loss,
        )  # fmt: skip
        sus_again = susceptibilities(
            model, lm_loss, batches(data, args.batch, 1), dataclasses.replace(cfg, seed=1),
            weight_groups=heads, observables=observed, reference=reference,
            per_example_loss=per_token_loss, reference_init=di_init,
        )  # fmt: skip

    # --- devinterp
    def ds(x: Tensor) -> Any:
        return Dataset.from_dict({"input_ids": x.tolist()}).with_format("torch")

    common = dict(
        lr=args.lr, n_beta=n_beta, localization=args.localization, num_chains=args.chains,
        num_draws=args.draws, num_burnin_steps=args.burnin, batch_size=args.batch,
        loss_fn=per_token_loss, device="cpu", match_sampling_input_ids_across_chains=False,
    )  # fmt: skip
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        di_bif = bif(
            model, ds(data), {"probe": (ds(probe), 1)}, correlation_method="sequence",
            output_path=Path(tmp) / "bif.zarr", **common,
        )  # fmt: skip
        di_bif_s = time.perf_counter() - t0
        # printed before devinterp's susceptibilities start (a long run on a shared machine)
        # BIF: devinterp's observed order -> ours
        rows = _rows_of(np.asarray(di_bif["input_ids"].values), probe)
        theirs = np.full((args.batch, args.batch), np.nan)
        theirs[np.ix_(rows, rows)] = np.asarray(di_bif["influences"].values)
        mine = ours_bif.matrix.numpy()
        se = ours_bif.matrix_se().numpy()
        off = ~np.eye(args.batch, dtype=bool)
        share, med, r = agreement(mine[off], theirs[off], se[off])
        self_share, self_med, self_r = agreement(mine[off], ours_again.matrix.numpy()[off], se[off])
        exp_share, exp_med = expected_share(len(ours_bif.chains))
        print(
            f"BIF ({args.batch} x {args.batch}, off-diagonal, s.e. by jackknife over chains): "
            f"{share:.0%} of entries within 2 combined s.e. (expected {exp_share:.0%}), median "
            f"|z| {med:.2f} (expected {exp_med:.2f}), r = {r:.3f}; ours against a second run "
            f"of ours: {self_share:.0%}, median |z| {self_med:.2f}, r = {self_r:.3f} "
            f"(devinterp's bif: {di_bif_s:.1f} s)",
            flush=True,
        )
        level, level_se = mean_off_diagonal(ours_bif)
        print(
            f"  mean off-diagonal entry: ours {level:+.4f} ± {level_se:.4f}, devinterp "
            f"{np.nanmean(theirs[off]):+.4f} (z = "
            f"{(level - np.nanmean(theirs[off])) / (math.sqrt(2) * level_se):+.2f})",
            flush=True,
        )
        spread = (ours_bif.chain_matrices().std(dim=0) / math.sqrt(len(ours_bif.chains))).numpy()
        print(
            f"  with the per-chain matrices' spread as s.e. instead: "
            f"{agreement(mine[off], theirs[off], spread[off])[0]:.0%} (against devinterp), "
            f"{agreement(mine[off], ours_again.matrix.numpy()[off], spread[off])[0]:.0%} "
            f"(against our second run); median s.e. jackknife {np.median(se[off]):.3f}, "
            f"spread {np.median(spread[off]):.3f}",
            flush=True,
        )
        if args.bif_only:
            print("load average at the end {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
            return

        di_tree = di_susceptibilities(
            model, ds(data),
            {"reference": (ds(reference), 1), **{k: (ds(v), 1) for k, v in observed.items()}},
            {"full": None, **heads}, sampling_task="reference",
            output_path=Path(tmp) / "sus.zarr", **common,
        )  # fmt: skip
        di_s = time.perf_counter() - t0

    # susceptibilities: devinterp's per-token values averaged per (restriction, set)
    sus = di_tree["susceptibilities"].dataset
    names = sus.attrs["dataset_id_to_name"]
    ids = np.asarray(sus["dataset_id"].values)
    values = np.asarray(sus["sus"].values)  # (flat, restrictions)
    wrs = [str(w) for w in sus["wr"].values]
    di_matrix = np.array(
        [[np.nanmean(values[ids == names.index(p), wrs.index(g)]) for p in ours_sus.probes]
         for g in ours_sus.groups]
    )  # fmt: skip
    share, med, r = agreement(ours_sus.matrix.numpy(), di_matrix, ours_sus.matrix_se.numpy())
    print(
        f"susceptibilities ({len(heads)} heads x {len(observed)} sets): {share:.0%} within 2 "
        f"combined s.e., median |z| {med:.2f}, r = {r:.3f}; ours against a second run of ours: "
        "{:.0%}, median |z| {:.2f}, r = {:.3f} (s.e. from the chain spread, expected {:.0%} "
        "and {:.2f})".format(
            *agreement(
                ours_sus.matrix.numpy(), sus_again.matrix.numpy(), ours_sus.matrix_se.numpy()
            ),
            *expected_share(args.chains),
        )
    )
    print(
        f"  L(w*) subtracted: devinterp's {di_init:.4f} (32 training minibatches), the "
        f"reference set's own {ours_default.reference_init:.4f} (our default)"
    )
    for gi, g in enumerate(ours_sus.groups):
        cells = "  ".join(
            f"{p}: {ours_sus.matrix[gi, pi]:+.2e} ± {ours_sus.matrix_se[gi, pi]:.1e} "
            f"(devinterp {di_matrix[gi, pi]:+.2e}; ours by default "
            f"{ours_default.matrix[gi, pi]:+.2e})"
            for pi, p in enumerate(ours_sus.probes)
        )
        print(f"  {g:6s} {cells}")
    print(
        f"time: ours {ours_s:.1f} s, devinterp {di_s:.1f} s "
        f"(ratio {di_s / ours_s:.1f}x; both lenses, one checkpoint)"
    )
    print("load average at the end {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
