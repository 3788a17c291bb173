"""The generic tasks: per-head weight groups of Hugging Face / TransformerLens models, token
data, the torch_module factory, and LLC estimates through them (vmap over chains)."""

from __future__ import annotations

import io
import itertools
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save, save_file

from phaseboard.analysis.llc import LLCConfig, estimate_llc, estimate_llc_many
from phaseboard.analysis.restrict import estimate_llc_restricted
from phaseboard.analysis.tasks import get_task
from phaseboard.analysis.tasks.hf_heads import hf_head_masks
from phaseboard.analysis.tokens import (
    TokenDataError,
    load_token_file,
    scan_token_file,
    token_windows,
)
from tests.generic_models import CTX, HF_CONFIGS, VOCAB, hf_model, token_stream

HEAD_NAMES = {f"prefix_matching/l{i}.h{h}" for i in range(2) for h in range(4)}

FAMILIES = list(HF_CONFIGS)
TINY_LLC = {"num_chains": 2, "num_draws": 4, "batch_size": 8, "lr": 1e-4}


def _hf_task(family: str, **extra: object):  # type: ignore[no-untyped-def]
    task = get_task("hf_causal_lm", {"hf_config": HF_CONFIGS[family], "seq_len": CTX, **extra})
    task.set_token_data({"train": token_stream(1200), "code": token_stream(400, seed=1)})
    return task


# --- per-head masks ---------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_head_masks_tile_the_attention_weights_without_overlap(family: str) -> None:
    """Union over heads = the whole Q/K/V/O weight of a layer; no entry in two heads (GQA
    K/V rows excepted: a KV head is shared by its group of query heads)."""
    model = hf_model(family)
    masks = hf_head_masks(model)
    assert sorted(masks) == [f"l{i}.h{h}" for i in range(2) for h in range(4)]
    params = dict(model.named_parameters())
    layer0 = [m for k, m in masks.items() if k.startswith("l0.")]
    names = set().union(*(m.keys() for m in layer0))
    for name in names:
        stack = torch.stack([m[name] for m in layer0])  # (H, *shape)
        assert stack.shape[1:] == params[name].shape
        assert stack.any(dim=0).all(), f"{name}: some entries belong to no head"
        shared = family == "llama" and ("k_proj" in name or "v_proj" in name)
        expected_owners = 2 if shared else 1  # 4 query heads over 2 KV heads
        assert (stack.sum(dim=0) == expected_owners).all(), name


@pytest.mark.parametrize("family", FAMILIES)
def test_perturbing_one_heads_slice_changes_only_that_heads_attention(family: str) -> None:
    """Functional check of the fused layouts (GPT-2 c_attn thirds, NeoX per-head interleaving):
    noise on head h's entries of layer 0 moves head h's attention pattern and no other's."""
    model = hf_model(family).eval()
    tokens = token_stream(2 * CTX).view(2, CTX)
    masks = hf_head_masks(model)
    with torch.no_grad():
        before = model(input_ids=tokens, output_attentions=True).attentions[0]  # (B, H, T, T)
        params = dict(model.named_parameters())
        for name, mask in masks["l0.h2"].items():
            if family == "llama" and ("k_proj" in name or "v_proj" in name):
                continue  # shared with head 3 (GQA): tested by the tiling test above
            params[name].add_(torch.randn(params[name].shape) * mask)
        after = model(input_ids=tokens, output_attentions=True).attentions[0]
    moved = (after - before).abs().amax(dim=(0, 2, 3))  # per head
    assert moved[2] > 1e-3
    assert torch.all(moved[[0, 1, 3]] < 1e-6), moved


# --- tasks: loss, groups, LLC through vmap ------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_task_estimates_full_per_head_and_data_restricted_llcs(family: str) -> None:
    task = _hf_task(family)
    model = task.build_model()
    assert not model.training  # dropout off: the loss is deterministic at fixed weights
    assert task.data_subsets() == ["code"]
    groups = task.weight_groups(model)
    assert {"embed", "l0", "l1", "l0.h0", "l1.h3"} <= set(groups)
    cfg = LLCConfig(**TINY_LLC, num_samples=task.num_train)
    full = estimate_llc(model, task.loss, task.batches("train", 8), cfg)
    assert np.isfinite(full.mean) and not full.diverged
    heads = {k: v for k, v in groups.items() if ".h" in k}
    restricted = estimate_llc_restricted(model, task.loss, task.batches("train", 8), cfg, heads)
    assert all(np.isfinite(r.mean) for r in restricted.values())
    # A head frees 4 x (d_head x d_model) of the attention weights (plus biases).
    assert 0 < restricted["l0.h0"].num_params_free < full.num_params_free / 8
    many = estimate_llc_many([model, model], task.loss, task.batches("train", 8), cfg)
    assert many[0].mean == pytest.approx(full.mean, rel=1e-4, abs=1e-6)


def test_hf_checkpoint_without_tied_lm_head_loads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """save_pretrained writes GPT-2's tied lm_head once; the task still loads it strictly."""
    from safetensors.torch import load_file

    trained = hf_model("gpt2", seed=3)
    trained.save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert "lm_head.weight" not in state
    task = _hf_task("gpt2")
    model = task.load_state_dict(task.build_model(), state)
    assert torch.equal(model.lm_head.weight, trained.transformer.wte.weight)


def test_hf_task_refuses_out_of_vocab_tokens_and_custom_code() -> None:
    task = _hf_task("gpt_neox")
    task.set_token_data({"train": torch.full((400,), VOCAB)})
    with pytest.raises(TokenDataError, match=f"token id {VOCAB}.*vocabulary has {VOCAB}"):
        task.datasets()
    with pytest.raises(ValueError, match="custom code"):
        get_task("hf_causal_lm", {"hf_config": {**HF_CONFIGS["llama"], "auto_map": {"x": "y"}}})
    with pytest.raises(TokenDataError, match="needs a token dataset named 'train'"):
        get_task("hf_causal_lm", {"hf_config": HF_CONFIGS["llama"]}).datasets()


@pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")
def test_transformer_lens_task_has_per_head_groups_and_an_llc() -> None:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=CTX, d_head=8, n_heads=4, d_vocab=VOCAB, act_fn="gelu"
    )
    user_model = HookedTransformer(cfg)
    tl_config = json.loads(json.dumps(cfg.to_dict(), default=str))  # as stored in the DB
    task = get_task("transformer_lens", {"tl_config": tl_config, "seq_len": CTX})
    task.set_token_data({"train": token_stream(800)})
    model = task.load_state_dict(task.build_model(), user_model.state_dict())
    groups = task.weight_groups(model)
    head = groups["l1.h2"]
    assert set(head) == {
        f"blocks.1.attn.{w}" for w in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
    }
    assert int(head["blocks.1.attn.W_Q"].sum()) == 32 * 8
    assert head["blocks.1.attn.W_Q"][2].all() and not head["blocks.1.attn.W_Q"][1].any()
    llc_cfg = LLCConfig(**TINY_LLC, num_samples=task.num_train)
    res = estimate_llc_restricted(
        model, task.loss, task.batches("train", 8), llc_cfg, {"l1.h2": head}
    )
    assert np.isfinite(res["l1.h2"].mean)


ALLOW_TESTS = ["tests.generic_models:make_*"]  # what an operator would list


def test_torch_module_builds_an_installed_factory_on_tokens_or_its_own_data() -> None:
    lm = get_task(
        "torch_module",
        {"factory": "tests.generic_models:make_lm", "kwargs": {"d": 8}},
        allowed_factories=ALLOW_TESTS,
    )
    lm.set_token_data({"train": token_stream(600), "test": token_stream(200, seed=2)})
    model = lm.build_model()
    assert sum(p.numel() for p in model.parameters()) > 0
    cfg = LLCConfig(**TINY_LLC, num_samples=lm.num_train)
    assert np.isfinite(estimate_llc(model, lm.loss, lm.batches("train", 8), cfg).mean)

    reg = get_task(
        "torch_module",
        {"factory": "tests.generic_models:make_regressor", "loss": "mse",
         "data_factory": "tests.generic_models:make_regression_data"},
        allowed_factories=ALLOW_TESTS,
    )  # fmt: skip
    assert not reg.uses_token_data and reg.data_subsets() == ["positive"]
    model = reg.build_model()
    assert reg.accuracy(model, reg.full_batch("test")) is None
    cfg = LLCConfig(**TINY_LLC, num_samples=reg.num_train)
    assert np.isfinite(estimate_llc(model, reg.loss, reg.batches("train", 8), cfg).mean)


def test_torch_module_names_what_it_cannot_import() -> None:
    allow = ["no_such_pkg.models:*", "tests.generic_models:*"]
    with pytest.raises(ValueError, match="cannot import 'no_such_pkg.models'"):
        get_task("torch_module", {"factory": "no_such_pkg.models:make"}, allowed_factories=allow)
    with pytest.raises(ValueError, match="has no attribute 'nope'"):
        get_task("torch_module", {"factory": "tests.generic_models:nope"}, allowed_factories=allow)
    with pytest.raises(ValueError, match="loss 'mse' needs a data_factory"):
        get_task(
            "torch_module",
            {"factory": "tests.generic_models:make_lm", "loss": "mse"},
            allowed_factories=allow,
        )


# --- token files ----------------------------------------------------------------------------


def test_token_files_load_from_npy_safetensors_and_weights_only_torch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    tokens = torch.arange(40, dtype=torch.int32).view(4, 10)
    np.save(tmp_path / "a.npy", tokens.numpy())
    save_file({"input_ids": tokens, "mask": tokens.bool()}, str(tmp_path / "b.safetensors"))
    torch.save({"tokens": tokens.long()}, tmp_path / "c.pt")
    for name, fmt in (("a.npy", "npy"), ("b.safetensors", "safetensors"), ("c.pt", "torch")):
        assert torch.equal(load_token_file(tmp_path / name), tokens.long())
        info = scan_token_file(tmp_path / name)
        assert (info.shape, info.n_tokens, info.max_token, info.format) == ((4, 10), 40, 39, fmt)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=array.dtype == object)
    return buf.getvalue()


BAD_TOKEN_FILES = {
    "without pickle": _npy(np.array([{"a": 1}], dtype=object)),
    "must be integers": _npy(np.zeros(8, dtype=np.float32)),
    "1-D token stream": _npy(np.zeros((2, 2, 2), dtype=np.int64)),
    ">= 0": _npy(np.array([3, -1])),
    "holds 2 tensors": save({"a": torch.zeros(2), "b": torch.zeros(2)}),
    "not token data": b"hello",
}


@pytest.mark.parametrize("message", list(BAD_TOKEN_FILES))
def test_bad_token_files_are_refused_with_the_reason(tmp_path, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "x.bin"
    path.write_bytes(BAD_TOKEN_FILES[message])
    with pytest.raises(TokenDataError, match=message):
        scan_token_file(path)


def test_token_windows_never_cross_rows() -> None:
    stream = torch.arange(10)
    assert token_windows(stream, 4).tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    rows = torch.arange(20).view(2, 10)
    assert token_windows(rows, 5)[:, 0].tolist() == [0, 5, 10, 15]  # 2 windows per row
    assert len(token_windows(rows, 5, max_sequences=3)) == 3
    with pytest.raises(TokenDataError, match="shorter than seq_len 11"):
        token_windows(rows, 11)


def test_pickled_torch_token_file_is_refused_and_nothing_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    torch.save({"tokens": torch.arange(4), "fn": print}, buf)
    path = tmp_path / "evil.pt"
    path.write_bytes(buf.getvalue())
    with pytest.raises(TokenDataError, match="refused.*builtins.print"):
        scan_token_file(path)


# --- progress measures ------------------------------------------------------------------


def _check_lm_measures(out: dict[str, float]) -> None:
    """ICL score and one prefix-matching score per head (2 layers x 4 heads), and their max."""
    assert set(out) == {"icl_score", "prefix_matching"} | HEAD_NAMES
    assert all(np.isfinite(v) for v in out.values())
    heads = [out[n] for n in HEAD_NAMES]
    assert all(0 <= v <= 1 for v in heads)
    assert out["prefix_matching"] == max(heads)


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_progress_measures_are_the_icl_score_and_every_heads_prefix_matching(
    family: str,
) -> None:
    task = _hf_task(family)
    torch.manual_seed(0)
    out = task.progress_measures(task.build_model())
    _check_lm_measures(out)
    # Random init attends about uniformly: from position 8 + j, 1 / (9 + j) on average.
    uniform = float(np.mean([1 / (CTX // 2 + 1 + j) for j in range(CTX // 2 - 1)]))
    assert all(abs(out[n] - uniform) < 0.02 for n in HEAD_NAMES), out
    assert abs(out["icl_score"]) < 0.1  # an untrained model gains nothing from context


NO_PATTERNS = {  # tiny models of families that return no (B, H, T, T) attention patterns
    "mamba": {"model_type": "mamba", "vocab_size": VOCAB, "hidden_size": 16,
              "num_hidden_layers": 2, "state_size": 4},  # no attention at all
    "rwkv": {"model_type": "rwkv", "vocab_size": VOCAB, "hidden_size": 16,
             "num_hidden_layers": 2, "context_length": CTX, "attention_hidden_size": 16,
             "intermediate_size": 32},  # "attentions" are (B, T, d) states
}  # fmt: skip


@pytest.mark.parametrize("family", ["gpt2-sdpa", *NO_PATTERNS])
def test_hf_model_that_returns_no_attention_patterns_gets_only_the_icl_score(
    family: str,
) -> None:
    import transformers

    if family == "gpt2-sdpa":
        task = _hf_task("gpt2")
        model = transformers.AutoModelForCausalLM.from_config(
            task.build_model().config, attn_implementation="sdpa"
        ).eval()  # fused attention: output_attentions gives an empty tuple
    else:
        task = get_task("hf_causal_lm", {"hf_config": NO_PATTERNS[family], "seq_len": CTX})
        task.set_token_data({"train": token_stream(1200)})
        model = task.build_model()
    out = task.progress_measures(model)
    assert set(out) == {"icl_score"} and np.isfinite(out["icl_score"])


def test_training_on_repeated_sequences_gives_a_prefix_matching_head_and_negative_icl() -> None:
    """Tiny GPT-2, 150 AdamW steps on sequences whose second half repeats the first: the
    second half becomes predictable from context alone, so the loss late in the context
    falls far below the loss early in it (ICL score < -1 nat; a perfect copier reaches
    -ln 50 = -3.9), and some head attends from each repeated token to the token after its
    first occurrence (score > 0.5, vs 0.086 for uniform attention). With the repeat always
    at offset 8 this head may be positional: the score measures where attention goes, not
    by what mechanism. Control: a position-wise model (no attention) trained the same way
    has an ICL score within 0.15 of 0."""
    from phaseboard.analysis.progress import repeated_random_tokens

    data = repeated_random_tokens(VOCAB, CTX, 1000, seed=5)
    split = {"train": data[:800], "test": data[800:]}
    hf = get_task("hf_causal_lm", {"hf_config": HF_CONFIGS["gpt2"], "seq_len": CTX})
    lm = get_task(
        "torch_module",
        {"factory": "tests.generic_models:make_lm", "kwargs": {"d": 16}},
        allowed_factories=ALLOW_TESTS,
    )
    measures = []
    for task in (hf, lm):
        task.set_token_data(split)
        torch.manual_seed(0)
        model = task.build_model().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for batch in itertools.islice(task.batches("train", 32), 150):
            loss = task.loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        measures.append(task.progress_measures(model.eval()))
    trained, position_wise = measures
    assert trained["icl_score"] < -1.0, trained
    assert trained["prefix_matching"] > 0.5, trained
    assert set(position_wise) == {"icl_score"} and abs(position_wise["icl_score"]) < 0.15


@pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")
def test_transformer_lens_progress_measures_read_every_heads_pattern() -> None:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_ctx=CTX, d_head=8, n_heads=4, d_vocab=VOCAB, act_fn="gelu"
    )
    tl_config = json.loads(json.dumps(cfg.to_dict(), default=str))
    task = get_task("transformer_lens", {"tl_config": tl_config, "seq_len": CTX})
    task.set_token_data({"train": token_stream(800)})
    torch.manual_seed(0)
    user_model = HookedTransformer(cfg)
    model = task.load_state_dict(task.build_model(), user_model.state_dict())
    out = task.progress_measures(model)
    _check_lm_measures(out)
    # the same numbers as reading the pattern hook by hand
    from phaseboard.analysis.progress import prefix_matching_from_pattern

    _, cache = user_model.run_with_cache(task.prefix_probe_tokens())
    by_hand = prefix_matching_from_pattern(cache["blocks.1.attn.hook_pattern"])
    assert [out[f"prefix_matching/l1.h{h}"] for h in range(4)] == pytest.approx(by_hand, abs=1e-6)


def test_torch_module_has_an_icl_score_on_tokens_and_nothing_on_its_own_data() -> None:
    lm = get_task(
        "torch_module",
        {"factory": "tests.generic_models:make_lm", "kwargs": {"d": 8}},
        allowed_factories=ALLOW_TESTS,
    )
    lm.set_token_data({"train": token_stream(600), "test": token_stream(200, seed=2)})
    out = lm.progress_measures(lm.build_model())
    assert set(out) == {"icl_score"} and np.isfinite(out["icl_score"])
    reg = get_task(
        "torch_module",
        {"factory": "tests.generic_models:make_regressor", "loss": "mse",
         "data_factory": "tests.generic_models:make_regression_data"},
        allowed_factories=ALLOW_TESTS,
    )  # fmt: skip
    assert reg.progress_measures(reg.build_model()) == {}
