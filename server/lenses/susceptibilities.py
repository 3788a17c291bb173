"""The ``susceptibilities`` lens: how each weight group responds to each data subset, over
training (``analysis.influence.susceptibilities``; Baker et al. 2025, appendix C.4).

Per checkpoint, for every weight group the task declares (layers, attention heads) and
every observable set (the task's data subsets and the test split), the susceptibility chi:
negative where the group serves that data (moving it to fit the training distribution
lowers that data's loss more than average), positive where they compete. The full model's
posterior and every group's restricted one are sampled in one batched SGLD run per rerun
(with the run's LLC settings), every checkpoint not sampled before together. On token tasks
chi is per token; the per-token vectors over the groups are clustered (scikit-learn
k-means, k by silhouette) and projected to 2-D (PCA) at each checkpoint; each token's text
is its last few tokens and the one predicted, decoded with the run's tokenizer where it has
one.

Over training, intervals where (group, subset) susceptibilities flip sign beyond two
standard errors are stage-boundary candidates (``turning_points``, source
``susceptibilities``). Inline per step: the (groups x sets) matrix, its standard errors
and the full model's LLC from the same run; the ``data_blob`` (.npz) holds per step the
per-example (per-token) values and, on token tasks, the clusters and their projection.
"""

from __future__ import annotations

from typing import Any

from phaseboard.server.jobs.handlers import JobContext, ResultRows, finite
from phaseboard.server.jobs.planning import PlanContext
from phaseboard.server.lenses._registry import Lens, LensView
from phaseboard.server.lenses._sampled import (
    attach_decoder,
    lens_config,
    npz_blob,
    progress_for,
    token_texts,
    trajectory,
)
from phaseboard.server.lenses.llc import max_rows, sampler_config, train_batches

# observe_every: the example sets' losses are taken at every 5th draw. The susceptibilities
# are covariances of slowly varying losses, so thinning the correlated draws leaves them
# and their standard errors as they are, at a fifth of the observed forward passes
# (bench/RESULTS.md, "Influence lenses").
DEFAULTS: dict[str, Any] = {
    "reference_examples": 64,
    "observable_examples": 32,
    "clusters": None,
    "observe_every": 5,
}
SIGN_Z = 2.0


def susceptibilities_config(plan: PlanContext) -> dict[str, Any]:
    """The run's LLC settings and the example counts (``analysis_config.susceptibilities``)."""
    return lens_config(plan, "susceptibilities", DEFAULTS)


def _observables(task: Any, n: int) -> dict[str, Any]:
    """The task's data subsets and its test split, the first ``n`` examples of each."""
    data = task.datasets()
    names = [*task.data_subsets(), *(["test"] if "test" in data else [])]
    return {name: data[name][:n] for name in names if len(data[name]) > 0}


def run_susceptibilities(ctx: JobContext) -> ResultRows:
    import numpy as np

    from phaseboard.analysis.influence import (
        cluster_vectors,
        sign_change_boundaries,
        susceptibilities_many,
    )

    task = ctx.task()
    attach_decoder(ctx, task)  # token tasks: per-token texts decoded
    config = sampler_config(ctx, ctx.config["llc"])
    reference = task.datasets()["train"][: int(ctx.config["reference_examples"])]
    observables = _observables(task, int(ctx.config["observable_examples"]))
    template = task.build_model()
    groups = task.weight_groups(template)
    token_level = bool(getattr(task, "has_tokens", False))
    per_example = task.per_token_loss if token_level else task.per_example_loss
    found = trajectory(ctx, "susceptibilities", "data_blob")
    group_names, probe_names = list(groups), list(observables)
    new_rows: dict[str, dict[str, Any]] = {}
    if found.new:
        results = susceptibilities_many(
            [state for _, _, state in found.new],
            task.loss,
            train_batches(ctx, "train", config),
            config,
            weight_groups=groups,
            observables=observables,
            reference=reference,
            per_example_loss=per_example,
            model=template,
            observe_every=int(ctx.config.get("observe_every", DEFAULTS["observe_every"])),
            max_rows=max_rows(ctx, template, config),
            progress=progress_for(ctx),
            chance_loss=task.chance_loss(),
        )
        for (_, sha, _), res in zip(found.new, results, strict=True):
            # (G, M): every observable set's examples (tokens) side by side
            chi = np.concatenate(
                [res.per_example[p].flatten(1).numpy() for p in probe_names], axis=1
            ).astype(np.float32)
            new_rows[sha] = {
                "matrix": res.matrix.numpy(),
                "se": res.matrix_se.numpy(),
                "chi": chi,
                "llc": [finite(res.full_llc.mean), finite(res.full_llc.std)],
                "verdict": res.full_llc.verdict,
            }
    K, G, P = len(found.steps), len(group_names), len(probe_names)
    items = _items(task, observables, probe_names, per_example, template)
    M = len(items["set"])
    matrix = np.full((K, G, P), np.nan)
    se = np.full((K, G, P), np.nan)
    chi = np.full((K, G, M), np.nan, dtype=np.float32)
    llc, verdicts = [], []
    prev, prev_values = found.previous, found.previous_values
    for k, sha in enumerate(found.shas):
        if sha in new_rows:
            row = new_rows[sha]
            matrix[k], se[k], chi[k] = row["matrix"], row["se"], row["chi"]
            llc.append(row["llc"])
            verdicts.append(row["verdict"])
        else:
            i = found.reused[sha]
            matrix[k] = prev_values["matrix"][i]
            se[k] = prev_values["se"][i]
            chi[k] = prev["chi"][i]
            llc.append(prev_values["llc"][i])
            verdicts.append(prev_values["verdict"][i])
    arrays: dict[str, Any] = {"chi": chi}
    clusters: list[dict[str, Any]] = []
    if token_level:
        labels = np.full((K, M), -1, dtype=np.int32)
        coords = np.full((K, M, 2), np.nan, dtype=np.float32)
        for k in range(K):
            found_k = cluster_vectors(chi[k].T, n_clusters=ctx.config.get("clusters"))
            labels[k, found_k.kept] = found_k.labels
            coords[k, found_k.kept] = found_k.coords
            clusters.append(
                {
                    "k": found_k.k,
                    "silhouette": found_k.silhouette,
                    "explained_variance": found_k.explained_variance,
                    "centers": [[finite(x) for x in c] for c in found_k.centers.tolist()],
                }
            )
        arrays.update(labels=labels, coords=coords)
    names = [f"{g} × {p}" for g in group_names for p in probe_names]
    boundaries = sign_change_boundaries(
        found.steps, matrix.reshape(K, -1).T, se.reshape(K, -1).T,
        source="susceptibilities", names=names, z=SIGN_Z,
    )  # fmt: skip
    arrays.update(texts=np.array(items.pop("text"), dtype=str))
    values = {
        "steps": found.steps,
        "checkpoint_sha256": found.shas,
        "config_hash": found.config_hash,
        "groups": group_names,
        "sets": probe_names,
        "token_level": token_level,
        "matrix": _json(matrix),  # (steps, groups, sets)
        "se": _json(se),
        "items": items,  # per column of the blob's chi: its set, example and position
        "clusters": clusters if token_level else None,
        "llc": llc,  # the full model's [mean, std] from the same run, per step
        "verdict": verdicts,
        "data_blob": npz_blob(ctx.store, arrays),
        "turning_points": [b.to_dict() for b in boundaries],
        "skipped_steps": found.skipped,
        "sampled_now": len(new_rows),
    }
    return [{"restriction": "", "values": values}]


def _items(
    task: Any,
    observables: dict[str, Any],
    names: list[str],
    per_example: Any,
    template: Any,
) -> dict[str, list[Any]]:
    """What each column of the per-example (per-token) array is: set, example, position
    (-1: the whole example) and a short text."""
    import torch

    out: dict[str, list[Any]] = {"set": [], "example": [], "position": [], "text": []}
    token_level = bool(getattr(task, "has_tokens", False))
    for name in names:
        batch = observables[name]
        if token_level:
            with torch.no_grad():  # positions of the per-token loss, from one example
                first = tuple(t[:1] for t in batch) if isinstance(batch, tuple) else batch[:1]
                positions = int(per_example(template, first).shape[-1])
            decode = getattr(task, "decoder", None)
            for i, row in enumerate(token_texts(batch, positions, decode)):
                for t, text in enumerate(row):
                    out["set"].append(name)
                    out["example"].append(i)
                    out["position"].append(t)
                    out["text"].append(text)
        else:
            for i, text in enumerate(task.describe_examples(batch)):
                out["set"].append(name)
                out["example"].append(i)
                out["position"].append(-1)
                out["text"].append(text)
    return out


def _json(a: Any) -> list[Any]:
    import numpy as np

    return np.vectorize(finite, otypes=[object])(a).tolist() if a.size else a.tolist()


LENSES = (
    Lens(
        name="susceptibilities",
        title="susceptibilities",
        scope="run",
        description="How each weight group (layer, attention head) responds to a shift "
        "towards each data subset, at every checkpoint (per token on token tasks), and where "
        "the responses change sign.",
        handler=run_susceptibilities,
        config=susceptibilities_config,
        lane="heavy",
        min_checkpoints=1,
        rerun="checkpoints",
        result_blobs=("data_blob",),
        feeds_phases=True,  # its sign changes are boundary candidates
        view=LensView("_susceptibilities.html", "susceptibilities.js", order=40),
    ),
)
