"""An operator's installed model package, as the factory allow-list tests see it.

``make_mlp`` is a real factory. ``system`` is imported into this module from ``os``: a pattern
allowing ``...user_models:*`` must still not reach it (it is not defined here).
"""

from __future__ import annotations

from os import system  # noqa: F401 - what the allow-list must not reach

from torch import nn


def make_mlp(d_in: int = 3, hidden: int = 4) -> nn.Module:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 1))
