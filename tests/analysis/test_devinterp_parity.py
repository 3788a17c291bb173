"""Against devinterp 2.0.1 itself, where it is installed (it is not a dependency): its
L(w*) is exactly ``devinterp_init_loss`` over its own loader's minibatches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

devinterp_llc = pytest.importorskip("devinterp.slt.llc", reason="devinterp not installed")
datasets = pytest.importorskip("datasets")

from phaseboard.analysis.llc import devinterp_init_loss  # noqa: E402

V, T, N = 8, 6, 128


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.out = nn.Linear(16, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.emb(ids)))


def _loss(m: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy: devinterp's per-token loss, averaged."""
    logits = m(ids)
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), ids[:, 1:].reshape(-1))


@pytest.mark.slow
def test_devinterp_init_loss_is_the_mean_over_its_first_32_minibatches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyLM()
    tokens = torch.randint(V, (N, T))
    ds = datasets.Dataset.from_dict({"input_ids": tokens.tolist()}).with_format("torch")
    out = devinterp_llc.llc(
        model, ds, {}, lr=1e-4, n_beta=20.0, localization=100.0, num_chains=2, num_draws=3,
        batch_size=16, device="cpu", output_path=str(tmp_path / "samples.zarr"),
    )  # fmt: skip
    # Its loader: shuffled with a generator seeded init_seed (100), shared by the chains
    # (match_sampling_input_ids_across_chains), iterated again (reshuffled) when exhausted.
    gen = torch.Generator().manual_seed(100)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=16, shuffle=True, generator=gen, drop_last=True
    )
    stream = [b["input_ids"] for _ in range(4) for b in loader]  # 4 epochs of 8 batches
    ours = devinterp_init_loss(_loss, model, stream, num_batches=32)
    assert ours == pytest.approx(float(out.init_loss), rel=1e-6)
