"""Induction-head formation on attention_lm: the prefix-matching score marks it.

Default config trained for 1300 steps, checkpoints log-spaced to 600 then every 50 steps
(measured: repeated-token test accuracy ~0.25 at step ~890, ~0.83 at ~1160; the best
layer-1 head's prefix-matching score ~0.04-0.14 before, ~0.63 after). The most expensive
science test: ~2 min on an idle core, hence its own timeout.
"""

from __future__ import annotations

import math

import pytest

from phaseboard.analysis.phases import measure_jumps
from phaseboard.analysis.tasks import get_task

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def trajectory() -> list[tuple[int, float, float]]:
    """(step, repeated-token test accuracy, best prefix-matching score) per checkpoint."""
    task = get_task("attention_lm", {"steps": 1300, "eval_every": 100})
    steps = sorted({int(round(10 ** (x / 8))) for x in range(0, 23)} | set(range(650, 1301, 50)))
    model = task.build_model()
    out = []
    for point in task.train(checkpoint_steps=steps):
        if point.is_checkpoint and point.step > 0:
            task.load_state_dict(model, point.state_dict)
            measures = task.progress_measures(model)
            out.append((point.step, point.metrics["test_acc"], measures["prefix_matching"]))
    return out


def test_prefix_matching_score_jumps_where_the_induction_transition_is(trajectory) -> None:
    """Tolerances: before the transition (test accuracy < 0.3) the score is < 0.25, after
    it (accuracy > 0.7) > 0.4; a jump of the score lies within 0.15 decades of the first
    checkpoint with accuracy >= 0.5."""
    before = [pm for _, acc, pm in trajectory if acc < 0.3]
    after = [pm for _, acc, pm in trajectory if acc > 0.7]
    assert before and after, trajectory
    assert max(before) < 0.25 and min(after) > 0.4, trajectory
    transition = next(step for step, acc, _ in trajectory if acc >= 0.5)
    jumps = measure_jumps([t[0] for t in trajectory], [t[2] for t in trajectory], name="pm")
    dist = [abs(math.log10(b.step) - math.log10(transition)) for b in jumps]
    assert dist and min(dist) <= 0.15, (transition, jumps)
