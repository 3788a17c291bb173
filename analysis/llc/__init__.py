"""Local learning coefficient (LLC) estimation with SGLD, vectorised over chains.

At a checkpoint w* we run SGLD chains localized at w*:

    w <- w - (eps/2) * (n_beta * grad L_m(w) + gamma * (w - w*)) + N(0, eps)

and estimate ``llc = n_beta * (mean over chains and draws of L_m(w) - L(w*))``.

Unlike devinterp (one chain at a time) every chain - and, in ``estimate_llc_many``,
every checkpoint, in ``analysis.restrict`` every weight group, in ``calibrate`` every
hyperparameter setting - advances in one ``torch.func.vmap``-ed gradient step over
stacked parameters. Internally everything is a "row": one (checkpoint, group, chain)
triple; a row holds its own copy of only the tensors its group frees, the frozen rest is
one copy per checkpoint. Every chain draws its own minibatches (chain c of every
checkpoint/group/setting the same ones), so the chains are independent and std /
sqrt(chains) is an honest standard error. Each checkpoint's w* is also evaluated
(forward only, at draw steps) on exactly chain c's minibatches; chain c's LLC is n_beta
x (its mean loss - that mean L_m(w*)), a paired (lower-variance) difference, and
``init_loss`` is their mean.

Sampling runs in eval mode on a structural copy of the model (``_structure_copy``): the
caller's module is never moved, switched or written to. Each result carries a verdict
(``analysis.verdict``) and downsampled per-chain diagnostics (distance from w*, gradient
norm). ``LLCConfig.sampler`` picks plain SGLD or devinterp's RMSprop-preconditioned SGLD.

Noise is drawn outside vmap from seeded ``torch.Generator``s (one per parameter) with shape
(num_chains, *param_shape) and shared by every checkpoint/group/setting of a call
(common random numbers): the result for a checkpoint does not depend on what else is
in the batch, so ``estimate_llc_many`` reproduces ``estimate_llc`` per checkpoint.

Every full-model estimate also runs its chains at lr / 2 and at localization / 2 in the
same call (``LLCConfig.bias_checks``); its verdict says when they disagree.

The package by role: ``config`` (hyperparameters), ``result`` (what an estimate returns),
``sampler`` (the vectorised SGLD kernel), ``budgets`` (rows and checkpoints per call),
``summary`` (a sampler run into results, with their bias checks), ``estimate`` (the
public estimators), ``calibration`` and ``devinterp`` (compatibility).
"""

from .budgets import (
    CPU_ACTIVATION_BYTES,
    CPU_BATCH_BYTES,
    activation_bytes,
    checkpoints_per_call,
    chunk_checkpoints,
    default_max_rows,
    first_batch,
    replayable,
    rows_for_budget,
)
from .calibration import (
    CalibrationEntry,
    CalibrationReport,
    calibrate,
    calibration_points,
    recommend,
)
from .config import DIAGNOSTIC_POINTS, SAMPLERS, LLCConfig, LossFn, ParamMask, Progress
from .devinterp import devinterp_init_loss
from .estimate import checkpoint_tensors, estimate_llc, estimate_llc_many, warm_up
from .result import LLCResult
from .sampler import diagnostic_draws, largest_pass_rows, row_equivalents

__all__ = [
    "CPU_ACTIVATION_BYTES",
    "CPU_BATCH_BYTES",
    "CalibrationEntry",
    "CalibrationReport",
    "DIAGNOSTIC_POINTS",
    "LLCConfig",
    "LLCResult",
    "LossFn",
    "ParamMask",
    "Progress",
    "SAMPLERS",
    "activation_bytes",
    "calibrate",
    "calibration_points",
    "checkpoint_tensors",
    "checkpoints_per_call",
    "chunk_checkpoints",
    "default_max_rows",
    "devinterp_init_loss",
    "diagnostic_draws",
    "estimate_llc",
    "estimate_llc_many",
    "first_batch",
    "largest_pass_rows",
    "recommend",
    "replayable",
    "row_equivalents",
    "rows_for_budget",
    "warm_up",
]
