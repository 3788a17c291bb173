"""Where Phaseboard's and devinterp 2.0.1's LLC differ on one tiny LM (needs devinterp).

Run: PYTHONPATH=. python bench/devinterp_init_loss_check.py
Prints devinterp's llc(), ours, ours on devinterp's shared batch sequence rebased on its
init loss, and the part of devinterp's value due to its unpaired init loss.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from datasets import Dataset
from devinterp.slt.llc import llc
from torch import nn
from torch.utils.data import DataLoader

from phaseboard.analysis.llc import LLCConfig, devinterp_init_loss, estimate_llc

V, T, N, NBETA = 8, 6, 256, 50.0


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.out = nn.Linear(16, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(ids)))


def loss_fn(m: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = m(ids)
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


def devinterp_stream(ds: Dataset, n: int) -> list[torch.Tensor]:
    """devinterp's sampling order: one loader seeded init_seed=100, shared by the chains."""
    loader = DataLoader(
        ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(100),
        drop_last=True,
    )  # fmt: skip
    seq: list[torch.Tensor] = []
    while len(seq) < n:
        seq += [b["input_ids"] for b in loader]
    return seq[:n]


def main() -> None:
    torch.manual_seed(0)
    tokens = torch.randint(V, (N, T))
    tokens[:, 1::2] = (tokens[:, 0::2] + 1) % V  # learnable structure
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for i in range(300):
        opt.zero_grad()
        loss_fn(model, tokens[(i * 32) % N : (i * 32) % N + 32]).backward()
        opt.step()
    ds = Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
    kw = dict(lr=1e-3, n_beta=NBETA, localization=100.0, num_chains=4, num_draws=40)
    out = llc(model, ds, {}, batch_size=16, device="cpu",
              output_path=tempfile.mkdtemp() + "/out.zarr", **kw)  # fmt: skip
    print(f"devinterp llc(): {float(out.llc_mean):.4f} ± {float(out.llc_std):.4f}")
    seq = devinterp_stream(ds, 40)
    init = devinterp_init_loss(loss_fn, model, seq, num_batches=32)
    print(f"init loss: devinterp {float(out.init_loss):.7f}, devinterp_init_loss {init:.7f}")
    cfg = LLCConfig(batch_size=16, **kw)  # type: ignore[arg-type]
    ours = estimate_llc(model, loss_fn, seq, cfg)
    print(f"ours (independent batches): {ours.mean:.4f} ± {ours.std:.4f} ({ours.verdict})")
    shared = estimate_llc(model, loss_fn, [b for b in seq for _ in range(4)], cfg)
    print(f"ours on devinterp's shared batches, rebased: {shared.rebased(init).mean:.4f} ± "
          f"{shared.std:.4f}")  # fmt: skip
    with torch.no_grad():
        ref = [float(loss_fn(model, b)) for b in seq]
    print(f"unpaired init loss offset: {NBETA * (np.mean(ref) - np.mean(ref[:32])):.4f}")


if __name__ == "__main__":
    main()
