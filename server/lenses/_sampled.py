"""What the ``influence`` and ``susceptibilities`` lenses share: trajectory bookkeeping.

Both are run-scope lenses rerun as checkpoints arrive, yet each checkpoint is sampled once:
a rerun reads the newest result of the same lens and config on the run and keeps the
per-checkpoint arrays of every checkpoint whose weights (sha256) it already covered; only
the new checkpoints go through the sampler, all of them in one batched run (a checkpoint's
numbers do not depend on which others share its batch: ``analysis.influence``). A result
holds one ``.npz`` blob with the arrays of every checkpoint, stacked in step order.

The examples' texts are decoded with the run's tokenizer (``task_config["tokenizer"]``, else
its stored ``tokenizer.json``): the job config names it (``tokenizer``), so a new tokenizer
plans a new job, and the arrays, which do not depend on it, are reused whole.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from phaseboard.server.errors import PhaseboardError
from phaseboard.server.jobs.handlers import (
    JobContext,
    WaitForCheckpoints,
    load_checkpoint,
    shared_progress,
    usable_checkpoint_filter,
)
from phaseboard.server.jobs.planning import PlanContext, config_hash
from phaseboard.server.lenses.llc import llc_config
from phaseboard.server.models import Checkpoint, Dataset, Result, Tokenizer
from phaseboard.server.store.blobs import BlobStore

log = logging.getLogger(__name__)
# The job-config key naming the tokenizer the texts are decoded with (absent: token ids).
TOKENIZER_KEY = "tokenizer"
_STORED = "sha256:"


def lens_config(plan: PlanContext, key: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """``{"llc": the run's LLC settings, **defaults < analysis_config[key] < request[key]}``,
    and ``tokenizer`` where the run has one (``tokenizer_of``)."""
    cfg = {
        "llc": llc_config(plan),
        **defaults,
        **plan.run_config(key),
        **(plan.override.get(key) or {}),
    }
    tokenizer = tokenizer_of(plan)
    if tokenizer is not None:
        cfg[TOKENIZER_KEY] = tokenizer
    return cfg


def tokenizer_of(plan: PlanContext) -> str | None:
    """How the run's token ids become text: ``"bytes"`` (its task config says so),
    ``"sha256:<hex>"`` (its stored tokenizer.json), or None (ids)."""
    chosen = (plan.run.task_config or {}).get("tokenizer")
    if chosen is not None:
        return str(chosen)
    sha = plan.session.scalar(sa.select(Tokenizer.sha256).where(Tokenizer.run_id == plan.run.id))
    return f"{_STORED}{sha}" if sha else None


def attach_decoder(ctx: JobContext, task: Any) -> None:
    """Hand a token task the stored tokenizer its job names (``"bytes"`` is the task's own
    config). A blob gone or unreadable leaves ids, with a warning: texts are never worth a
    failed job."""
    name = str(ctx.config.get(TOKENIZER_KEY) or "")
    if not name.startswith(_STORED) or not hasattr(task, "set_decoder"):
        return
    from phaseboard.analysis.tokenizer import TokenizerError, parse_tokenizer

    try:
        text = ctx.store.open_path(name.removeprefix(_STORED)).read_text(encoding="utf-8")
        task.set_decoder(parse_tokenizer(text).decode)
    except (OSError, UnicodeDecodeError, TokenizerError, PhaseboardError) as exc:
        log.warning(
            "run %s: tokenizer %s not used (%s); texts show token ids", ctx.run_id, name, exc
        )


def _without_tokenizer(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k != TOKENIZER_KEY}


@dataclass
class Trajectory:
    """A run's usable checkpoints, split into those a previous result covers and new ones."""

    config_hash: str  # the job's config, the run's task and config and its datasets
    steps: list[int] = field(default_factory=list)  # every usable, finite checkpoint
    shas: list[str] = field(default_factory=list)
    reused: dict[str, int] = field(default_factory=dict)  # sha -> row in ``previous``
    previous: dict[str, Any] = field(default_factory=dict)  # its arrays (npz)
    previous_values: dict[str, Any] = field(default_factory=dict)
    new: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)  # step, sha, state
    skipped: list[int] = field(default_factory=list)  # non-finite checkpoints


def npz_blob(store: BlobStore, arrays: Mapping[str, Any]) -> str:
    """The arrays as one ``.npz`` (no pickles) in the blob store; its sha256."""
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return store.put_bytes(buf.getvalue())


def read_npz(store: BlobStore, sha: str) -> dict[str, Any]:
    import numpy as np

    with store.open_path(sha).open("rb") as fh, np.load(fh, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def trajectory(ctx: JobContext, kind: str, blob_key: str) -> Trajectory:
    """The run's checkpoints for lens ``kind``: reused from its newest result of the same
    config (its ``blob_key`` npz), or loaded (finite ones only) to be sampled."""
    import torch

    with ctx.db.session() as s:
        datasets = s.execute(
            sa.select(Dataset.name, Dataset.sha256)
            .where(Dataset.run_id == ctx.run_id)
            .order_by(Dataset.name)
        ).all()
    run = ctx.run()
    # What the arrays of a checkpoint depend on besides its weights: a previous result is
    # reused only where all of it is the same.
    found = Trajectory(
        config_hash(
            {
                "job": _without_tokenizer(ctx.config),  # texts only: the arrays are the same
                "task": run.task,
                "task_config": _without_tokenizer(run.task_config or {}),
                "datasets": [list(d) for d in datasets],
            }
        )
    )
    with ctx.db.session() as s:
        rows = s.execute(
            sa.select(Checkpoint.id, Checkpoint.step, Checkpoint.sha256)
            .where(usable_checkpoint_filter(ctx.run_id))
            .order_by(Checkpoint.step)
        ).all()
        previous = s.scalars(
            sa.select(Result.values)
            .where(Result.run_id == ctx.run_id, Result.kind == kind)
            .order_by(Result.id.desc())
            .limit(8)
        ).all()
    if not rows:
        raise WaitForCheckpoints(1, 0)
    prev = next((v for v in previous if v.get("config_hash") == found.config_hash), None)
    prev_rows: dict[str, int] = {}
    if prev is not None and prev.get(blob_key):
        try:
            found.previous = read_npz(ctx.store, prev[blob_key])
            found.previous_values = prev
            prev_rows = {sha: i for i, sha in enumerate(prev.get("checkpoint_sha256", []))}
        except Exception:  # noqa: BLE001 - a missing or unreadable blob: sample again
            prev_rows = {}
    task = ctx.task()
    template = task.build_model()
    expected = template.state_dict()
    for ckpt_id, step, sha in rows:
        if sha in prev_rows:
            found.reused[sha] = prev_rows[sha]
        else:
            state = load_checkpoint(ctx.db, ctx.store, ckpt_id, expected)
            model = task.load_state_dict(task.build_model(), state)
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                found.skipped.append(int(step))
                continue
            tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
            found.new.append((int(step), sha, {k: v.detach() for k, v in tensors.items()}))
        found.steps.append(int(step))
        found.shas.append(sha)
    return found


def progress_for(ctx: JobContext) -> Any:
    return shared_progress([ctx])


def concat_batches(a: Any, b: Any) -> Any:
    """Two batches of one structure (tensors, or tuples of tensors) as one."""
    import torch

    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    return type(a)(torch.cat([x, y]) for x, y in zip(a, b, strict=True))


def batch_size(batch: Any) -> int:
    return len(batch) if not isinstance(batch, list | tuple) else len(batch[0])


def token_texts(batch: Any, positions: int, decode: Any = None) -> list[list[str]]:
    """Per example and predicted position t: the last few tokens up to t and the one
    predicted there, decoded where ``decode`` is given (``analysis.tokenizer.token_contexts``)."""
    from phaseboard.analysis.tokenizer import token_contexts

    tokens = (batch[0] if isinstance(batch, list | tuple) else batch).tolist()
    return token_contexts(tokens, positions, decode)
