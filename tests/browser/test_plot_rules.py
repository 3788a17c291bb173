"""Plot rules a researcher relies on, in a real Chromium: the x axis (log step by default
for log-spaced checkpoints, titles that follow the chosen x), per-head lines with a legend,
a compare page that names only the task-config keys that differ, no horizontal overflow at
390 px with a real language model's configs, the upload picker and the "queue analyses" form.
(The LLC's own rules, ok estimates on the line and the rest off it: test_llc_trust.py.)"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import pytest

from phaseboard.server.models import Checkpoint, MetricPoint, Result, Run
from tests.browser.conftest import PHONE, shoot

pytestmark = pytest.mark.browser
TOKEN = "s3cret"
GPT2 = {
    "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "activation_function": "gelu_new",
    "attn_pdrop": 0.1, "bos_token_id": 0, "embd_pdrop": 0.1, "eos_token_id": 0,
    "initializer_range": 0.02, "layer_norm_epsilon": 1e-05, "n_ctx": 64, "n_embd": 64,
    "n_head": 4, "n_inner": None, "n_layer": 2, "n_positions": 64, "reorder_and_upcast_attn":
    False, "resid_pdrop": 0.1, "scale_attn_by_inverse_layer_idx": False, "scale_attn_weights":
    True, "summary_activation": None, "summary_first_dropout": 0.1, "summary_proj_to_labels":
    True, "summary_type": "cls_index", "summary_use_proj": True, "torch_dtype": "float32",
    "transformers_version": "4.57.1", "use_cache": True, "vocab_size": 256,
}  # fmt: skip
HEADS = [f"l{i}.h{h}" for i in range(2) for h in range(4)]


def _own_run(db: Any, name: str, steps: list[int], n_layer: int = 2) -> int:
    """A run as `phaseboard ingest` leaves a Trainer folder of a byte-level GPT-2: its config,
    hyperparameters, metrics with per-head prefix matching, and LLC results."""
    with db.session() as s:
        run = Run(
            name=name, task="hf_causal_lm", status="imported",
            task_config={"hf_config": {**GPT2, "n_layer": n_layer}},
            config={"trainer": {"train_batch_size": 16, "max_steps": 2000,
                                "peak_learning_rate": 0.003, "logging_steps": 500},
                    "model": {"type": "gpt2", "layers": n_layer, "heads": 4, "d_model": 64,
                              "vocab_size": 256, "context": 64},
                    "weight_decay": 0.01, "seed": 0},
            analysis_config={"llc_calibration": {"recommended": {"lr": 1e-4, "localization": 10.0},
                                                 "reason": "recommended lr=0.0001"}},
        )  # fmt: skip
        s.add(run)
        s.flush()
        for i, step in enumerate(steps):
            sha = f"{i + 4000 + 100 * n_layer:064x}"
            c = Checkpoint(run_id=run.id, step=step, sha256=sha, size=500_000,
                           format="safetensors", n_params=120576, n_tensors=30)  # fmt: skip
            s.add(c)
            s.flush()
            x = (i + 1) / len(steps)
            values: dict[str, Any] = {"train_loss": 5.5 - 4 * x, "test_loss": 5.6 - 3.9 * x,
                                      "weight_norm": {"total": 20 + x}, "grad_norm": 1 - x / 2,
                                      "progress/icl_score": -x,
                                      "progress/prefix_matching": x}  # fmt: skip
            for k, head in enumerate(HEADS):
                values[f"progress/prefix_matching/{head}"] = x * (k + 1) / len(HEADS)
            s.add(Result(run_id=run.id, checkpoint_id=c.id, step=step, kind="metrics",
                         values=values))  # fmt: skip
            s.add(Result(run_id=run.id, checkpoint_id=c.id, step=step, kind="llc",
                         values={"mean": 50 + 20 * x, "std": 3.0, "verdict": "ok",
                                 "n_beta": 82.0, "settings_hash": "x"}))  # fmt: skip
        for st in range(1, steps[-1] + 1, max(1, steps[-1] // 200)):
            s.add(MetricPoint(run_id=run.id, name="loss", step=st, value=5.0 / (1 + st / 50)))
        return run.id


@pytest.fixture(scope="module")
def own_runs(site) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    log_steps = [0, 1, 2, 3, 4, 6, 8, 10, 14, 19, 25, 33, 45, 60, 80, 107, 144, 193, 258, 346,
                 464, 621, 832, 1115, 1493, 2000]  # fmt: skip
    linear = list(range(0, 2001, 100))
    return (
        _own_run(site.db, "own-gpt2", log_steps),
        _own_run(site.db, "own-gpt2-linear", linear),
        _own_run(site.db, "own-gpt2-4layers", log_steps, n_layer=4),
    )


def _open(page, site, run_id: int, query: str = "") -> None:  # type: ignore[no-untyped-def]
    page.goto(f"{site.url}/runs/{run_id}{query}")
    page.wait_for_selector("#plots[data-loaded='true']", timeout=20_000)


def _layout(page, plot: str, expr: str):  # type: ignore[no-untyped-def]
    return page.evaluate(f"document.getElementById('plot-{plot}').layout.{expr}")


def test_log_spaced_checkpoints_get_a_log_step_axis_by_default_linear_ones_do_not(
    site, page, own_runs
) -> None:
    log_run, linear_run, _ = own_runs
    _open(page, site, log_run)
    assert page.input_value("#c-x") == "log"
    assert _layout(page, "llc", "xaxis.type") == "log"
    assert _layout(page, "llc", "xaxis.title.text") == "step (log scale)"
    assert "x=" not in page.url  # the default, not written to the address
    _open(page, site, linear_run)
    assert page.input_value("#c-x") == "step" and _layout(page, "llc", "xaxis.type") == "linear"
    # An explicit choice in the address wins over the data's default.
    _open(page, site, log_run, "?x=step")
    assert _layout(page, "loss", "xaxis.type") == "linear"


def test_axis_titles_follow_the_chosen_x(site, page, own_runs) -> None:
    log_run = own_runs[0]
    _open(page, site, log_run)
    for choice, title in (("step", "step"), ("log", "step (log scale)")):
        page.select_option("#c-x", choice)
        for plot in ("loss", "llc", "metrics"):
            assert _layout(page, plot, "xaxis.title.text") == title, (choice, plot)
    page.select_option("#c-x", "series:loss")  # a logged series as the x axis
    page.wait_for_url(re.compile(r"x=series"))
    assert _layout(page, "llc", "xaxis.title.text") == "loss"
    assert "step" not in _layout(page, "loss", "xaxis.title.text")


def test_per_head_prefix_matching_lines_have_a_legend_one_colour_per_head(
    site, page, own_runs
) -> None:
    _open(page, site, own_runs[0])
    page.wait_for_selector("#plot-progress .scatterlayer", timeout=20_000)
    plot = "document.getElementById('plot-progress')"
    assert page.evaluate(f"{plot}.layout.showlegend") is True
    legend = page.evaluate(f"{plot}.data.filter(t => t.showlegend !== false).map(t => t.name)")
    assert legend == ["best head (max over heads)", *HEADS]
    colours = page.evaluate(
        f"{plot}.data.filter(t => t.legendgroup === 'l1.h2').map(t => t.line.color)"
    )
    assert len(colours) == 1 and colours[0] != "#111827"
    assert page.locator("#plot-progress .legend .traces").count() == 1 + len(HEADS)
    shoot(page, "plot-rules-progress-desktop")


def test_compare_names_only_the_task_config_keys_that_differ_briefly(site, page, own_runs) -> None:
    two, _, four = own_runs
    page.goto(f"{site.url}/compare?runs={two},{four}")
    page.wait_for_selector("#plots[data-loaded='true']", timeout=20_000)
    warning = page.locator(".compare-warning").first.inner_text()
    assert "hf_config.n_layer=2" in warning and "hf_config.n_layer=4" in warning
    assert "vocab_size" not in warning and len(warning) < 300, warning


@pytest.mark.parametrize("where", ["run", "compare"])
def test_no_horizontal_overflow_at_390_px_with_a_language_models_configs(
    site, browser, own_runs, where: str
) -> None:
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    try:
        two, linear, four = own_runs
        path = f"/runs/{two}" if where == "run" else f"/compare?runs={two},{linear},{four}"
        page.goto(site.url + path)
        page.wait_for_selector("#plots[data-loaded='true']", timeout=20_000)
        page.wait_for_timeout(500)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], f"{where} page is {width} px wide at 390"
        heights = page.evaluate(  # plots with data (an empty one is a one-line message)
            "Array.from(document.querySelectorAll('#plots .plot')).filter(e => e.data)"
            ".map(e => [e.id, e.getBoundingClientRect().height])"
        )
        assert len(heights) >= 3
        for plot_id, height in heights:
            assert height >= 200, f"{plot_id} is {height} px tall at 390 px"
        shoot(page, f"plot-rules-{where}-phone")
    finally:
        context.close()


def test_upload_picker_accepts_lightning_ckpt_files(site, page, own_runs) -> None:
    _open(page, site, own_runs[0])
    assert ".ckpt" in page.get_attribute("#upload-files", "accept")


def test_queue_analyses_form_posts_lenses_and_settings_and_says_what_happened(
    site, page, own_runs
) -> None:
    run_id = own_runs[1]
    _open(page, site, run_id)
    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type=submit]")
    page.wait_for_function("localStorage.getItem('pb-token') === 's3cret'")
    page.wait_for_selector("#queue-lens-list input[value='llc_restricted']")
    auto = page.eval_on_selector_all(
        "#queue-lens-list input:checked", "els => els.map(e => e.value)"
    )
    assert {"metrics", "llc", "llc_restricted"} <= set(auto)
    page.click("#queue-llc summary")
    # The run's current settings as placeholders (a token task: 8 sequences a minibatch).
    page.wait_for_function("document.getElementById('q-batch_size').placeholder !== ''")
    assert page.get_attribute("#q-lr", "placeholder") == "0.001"
    assert page.get_attribute("#q-batch_size", "placeholder") == "8"
    assert page.get_attribute("#q-num_chains", "placeholder") == "4"
    page.fill("#q-num_draws", "2.5")
    page.click("#queue-submit")
    assert "num_draws" in page.inner_text("#queue-error")  # refused here, nothing sent
    for lens in auto:
        if lens != "llc":
            page.uncheck(f"#queue-lens-list input[value='{lens}']")
    page.fill("#q-num_draws", "30")
    page.fill("#q-lr", "0.0003")
    page.click("#queue-submit")
    page.wait_for_selector("#queue[data-queued]")
    assert "21 job(s) queued" in page.inner_text("#queue-result")
    jobs = httpx.get(f"{site.url}/api/jobs", params={"run_id": run_id}).json()["jobs"]
    configs = {json.dumps({k: j["config"][k] for k in ("lr", "num_draws")}) for j in jobs}
    assert configs == {json.dumps({"lr": 0.0003, "num_draws": 30})}
    shoot(page, "plot-rules-queue-desktop")
    page.set_viewport_size(PHONE)
    page.wait_for_timeout(300)
    page.locator("#queue").screenshot(path="tests/browser/artifacts/plot-rules-queue-phone.png")


def test_run_page_plots_at_390_px_keep_their_plot_area_and_the_whole_legend(
    site, browser, own_runs
) -> None:
    """A legend of several series under a phone-width plot makes the plot taller rather than
    squashing its plot area to a strip or scrolling inside it."""
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    try:
        page.goto(f"{site.url}/runs/{own_runs[0]}")
        page.wait_for_selector("#plots[data-loaded='true']", timeout=20_000)
        page.wait_for_timeout(500)
        plots = page.evaluate(
            """Array.from(document.querySelectorAll('#plots .plot'))
              .filter(e => e.data && e.id !== 'plot-restricted').map(e => {
                const box = e.getBoundingClientRect();
                const legend = e.querySelector('.legend');
                const lb = legend ? legend.getBoundingClientRect() : null;
                return [e.id, e._fullLayout._size.h, legend ? e.querySelectorAll(
                  '.legend .traces').length : 0, lb ? lb.bottom - box.bottom : null];
              })"""
        )
        assert len(plots) >= 3, plots
        for plot_id, area, entries, past_bottom in plots:
            assert area >= 160, f"{plot_id}: plot area {area:.0f} px tall at 390 px"
            if entries:
                assert past_bottom <= 1, f"{plot_id}: legend runs {past_bottom:.0f} px past"
        assert max(entries for _, _, entries, _ in plots) >= 3  # a legend of several rows
    finally:
        context.close()


def test_queue_card_says_when_the_settings_are_the_calibrations_fallback(site, page) -> None:
    run_id = _own_run(site.db, "own-gpt2-fallback", [0, 10, 100])
    with site.db.session() as s:
        run = s.get(Run, run_id)
        run.analysis_config = {
            "llc": {"lr": 1e-4, "localization": 100.0},
            "llc_calibration": {"recommended": {"lr": 1e-4, "localization": 100.0},
                                "fallback": True, "reason": "no setting was ok"},
        }  # fmt: skip
    _open(page, site, run_id)
    page.wait_for_function(
        "document.getElementById('queue-llc-current').textContent.includes('lr')"
    )
    note = page.inner_text("#queue-llc-current")
    assert "fallback: no setting was ok everywhere" in note, note
    assert "calibrated" not in note
