"""Checkpoints as researchers have them: wrappers, prefixes, training state, bounded work."""

from __future__ import annotations

import argparse
import io
import json
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from phaseboard.analysis.checkpoints import (
    CheckpointTooComplex,
    CorruptCheckpoint,
    KeyMapping,
    LoadLimits,
    ModelMismatch,
    NotAStateDict,
    UnsafeCheckpoint,
    apply_key_mapping,
    load_state_dict_file,
    prepare_checkpoint,
    resolve_prefix,
    save_safetensors_bytes,
    write_safetensors,
)
from phaseboard.analysis.tasks import get_task

DLN = {"widths": [3, 3, 2], "num_samples": 16, "num_test": 8, "true_rank": 2}


def _task_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return get_task("dln", DLN).build_model().state_dict()


def _expected() -> dict[str, tuple[int, ...]]:
    return get_task("dln", DLN).expected_shapes()


def _prefixed(prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in _task_state().items()}


def _optimizer_state() -> dict:
    model = get_task("dln", DLN).build_model()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    return opt.state_dict()


def lightning_checkpoint() -> dict:
    """The layout ``Trainer.save_checkpoint`` writes for a LightningModule with ``self.model``."""
    return {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": OrderedDict(_prefixed("model.")),
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4}}}},
        "callbacks": {"ModelCheckpoint{'monitor': None}": {"best_model_score": None}},
        "optimizer_states": [_optimizer_state()],
        "lr_schedulers": [],
        "hparams_name": "hparams",
        "hyper_parameters": argparse.Namespace(lr=1e-3, widths=[3, 3, 2], name="dln"),
        "numpy_rng": np.random.get_state(),
        "best_loss": np.float64(0.25),
        "dtype": np.dtype("float32"),
        "shape": torch.Size([3, 3]),
    }


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


@pytest.mark.parametrize(
    "layout, nesting, prefix",
    [
        ("lightning", "state_dict", "model."),
        ("ddp", None, "module."),
        ("compiled", None, "_orig_mod."),
        ("ddp_compiled", None, "module._orig_mod."),
        ("ema_only", "ema", ""),
        ("model_and_ema", "model", ""),
        ("plain", None, ""),
    ],
)
def test_layouts_map_onto_the_task_model(tmp_path: Path, layout: str, nesting, prefix) -> None:
    sd = _task_state()
    obj = {
        "lightning": lightning_checkpoint(),
        "ddp": _prefixed("module."),
        "compiled": _prefixed("_orig_mod."),
        "ddp_compiled": _prefixed("module._orig_mod."),
        "ema_only": {"ema": sd, "step": 10, "optimizer": _optimizer_state()},
        "model_and_ema": {"model": sd, "ema": {k: v + 1 for k, v in sd.items()}, "step": 1},
        "plain": sd,
    }[layout]
    prepared = prepare_checkpoint(_save(obj, tmp_path / "c.ckpt"), _expected())
    assert prepared.mapping.nesting == nesting
    assert prepared.mapping.strip_prefix == prefix
    assert prepared.shapes == _expected()
    assert prepared.weights is not None
    mapped = apply_key_mapping(prepared.weights, prepared.mapping)
    assert all(torch.equal(mapped[k], sd[k]) for k in sd)  # the model's weights, not the EMA's
    if layout == "lightning":
        assert "optimizer_states" in prepared.mapping.dropped
        assert (
            "dropped" in prepared.mapping.describe() and "'model.'" in prepared.mapping.describe()
        )


def test_prefixed_safetensors_from_a_compiled_model_map_by_prefix(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    path.write_bytes(save_safetensors_bytes(_prefixed("_orig_mod.")))
    prepared = prepare_checkpoint(path, _expected())
    assert prepared.mapping == KeyMapping(strip_prefix="_orig_mod.")
    assert prepared.weights is None  # safetensors files are stored as uploaded
    state = apply_key_mapping(load_state_dict_file(path), prepared.mapping)
    get_task("dln", DLN).load_state_dict(get_task("dln", DLN).build_model(), state)


def test_wrapper_prefixes_are_stripped_without_a_task_but_attribute_prefixes_are_not() -> None:
    assert resolve_prefix(["module.a.w", "module.b.w"]) == "module."
    assert resolve_prefix(["model.a.w", "model.b.w"]) == ""
    assert resolve_prefix(["model.a.w", "model.b.w"], ["a.w", "b.w"]) == "model."
    assert resolve_prefix(["model.a.w", "model.b.w"], ["x.w"]) == ""  # no fit: left as is
    # a model whose own names start with "module." keeps them
    assert resolve_prefix(["module.w"], ["module.w"]) == ""


def test_mismatch_names_missing_unexpected_and_misshaped_with_counts(tmp_path: Path) -> None:
    sd = _task_state()
    sd.pop("layers.0.weight")
    sd["layers.1.weight"] = torch.zeros(5, 5)
    sd.update({f"extra.{i}": torch.zeros(1) for i in range(7)})
    with pytest.raises(ModelMismatch) as err:
        prepare_checkpoint(_save(sd, tmp_path / "bad.pt"), _expected())
    msg = str(err.value)
    assert "1 missing from the checkpoint: layers.0.weight" in msg
    assert "7 unexpected: extra.0" in msg and "(+2 more)" in msg
    assert "1 with the wrong shape: layers.1.weight [5, 5] vs model [2, 3]" in msg


def test_training_state_globals_load_but_code_is_still_refused(tmp_path: Path) -> None:
    weights = load_state_dict_file(_save(lightning_checkpoint(), tmp_path / "l.ckpt"))
    assert set(weights) == set(_prefixed("model."))
    evil = {"state_dict": _task_state(), "x": _Evil()}
    with pytest.raises(UnsafeCheckpoint, match=r"(posix|os)\.system"):
        load_state_dict_file(_save(evil, tmp_path / "evil.ckpt"))


class _Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, ("true",))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64, torch.bool])
def test_write_safetensors_streams_a_file_the_real_loader_reads(tmp_path: Path, dtype) -> None:
    w = torch.arange(12).reshape(3, 4).to(dtype)
    sd = {"w": w, "tied": w, "t": w.t(), "empty": torch.zeros(0, dtype=dtype)}
    path = tmp_path / "w.safetensors"
    with open(path, "wb") as fh:
        size = write_safetensors(sd, fh)
    assert size == path.stat().st_size
    back = load_file(str(path))
    assert all(torch.equal(back[k], v) for k, v in sd.items())


# --- bounded work: each test pins a bound on work done, not a time ----------------------------


def test_shared_children_pickle_is_refused_after_linear_work(tmp_path: Path) -> None:
    x: dict = {}
    for _ in range(40):  # 2**40 paths if walked naively
        x = {"a": x, "b": x}
    path = _save({"w": torch.ones(1), "x": x}, tmp_path / "shared.pt")
    budget = LoadLimits(max_objects=200)  # 40 dicts of 2 entries: far below, if walked once
    with pytest.raises(NotAStateDict, match="a dict met before"):
        prepare_checkpoint(path, limits=budget)


def test_a_weights_dict_saved_twice_is_not_refused(tmp_path: Path) -> None:
    sd = _task_state()
    prepared = prepare_checkpoint(_save({"model": sd, "best": sd}, tmp_path / "twice.pt"))
    assert prepared.mapping.nesting == "model" and set(prepared.shapes) == set(sd)


def test_self_referencing_dict_is_refused(tmp_path: Path) -> None:
    d: dict = {"w": torch.ones(1)}
    d["self"] = d
    with pytest.raises(NotAStateDict, match="'self' \\(a dict met before"):
        prepare_checkpoint(_save(d, tmp_path / "self.pt"))


def _deep_dict_pickle(depth: int) -> bytes:
    """``{"k": {"k": ... {} ...}}`` nested ``depth`` deep, written as opcodes (pickling it
    would recurse): EMPTY_DICT, key, ... then SETITEM ``depth`` times."""
    key = b"X\x01\x00\x00\x00k"
    return b"\x80\x02" + (b"}" + key) * depth + b"}" + b"s" * depth + b"."


def _torch_zip_with_pickle(data_pkl: bytes, compress: bool = False) -> bytes:
    """A torch zip archive whose data.pkl is replaced (other members kept)."""
    buf = io.BytesIO()
    torch.save({}, buf)
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            if info.filename.endswith("data.pkl"):
                method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
                dst.writestr(info.filename, data_pkl, compress_type=method)
            else:
                dst.writestr(info, src.read(info))
    return out.getvalue()


def test_dict_nested_5000_deep_is_refused_at_the_depth_limit(tmp_path: Path) -> None:
    assert pickle.loads(_deep_dict_pickle(50))  # the crafted pickle is a real one
    path = tmp_path / "deep.pt"
    path.write_bytes(_torch_zip_with_pickle(_deep_dict_pickle(5000)))
    with pytest.raises(CheckpointTooComplex, match="nested more than 64 deep") as err:
        prepare_checkpoint(path)
    assert err.value.visited <= 2 * 64 + 2


def test_object_count_is_bounded(tmp_path: Path) -> None:
    path = _save({f"k{i}": torch.ones(1) for i in range(500)}, tmp_path / "many.pt")
    with pytest.raises(CheckpointTooComplex, match="more than 100 objects") as err:
        prepare_checkpoint(path, limits=LoadLimits(max_objects=100))
    assert err.value.visited <= 600


def test_zip_bomb_is_refused_before_inflating_anything(tmp_path: Path) -> None:
    pkl = pickle.dumps({"w": 1}, protocol=2) + b"\0" * (8 * 1024 * 1024)  # padding past STOP
    data = _torch_zip_with_pickle(pkl, compress=True)
    assert len(data) < 64 * 1024
    path = tmp_path / "bomb.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointTooComplex, match="inflate") as err:
        prepare_checkpoint(path, limits=LoadLimits(max_inflated_bytes=1024 * 1024))
    assert err.value.inflated == 0


def _st(header: object, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


_W = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    "data, needle",
    [
        (_st(b'{"a":' * 100_000 + b"1" + b"}" * 100_000), "recursion limit"),
        (_st({"w": {**_W, "dtype": ["F32"]}}, b"\0" * 8), "invalid type"),
        (_st({"w": {**_W, "data_offsets": [0.0, 8.0]}}, b"\0" * 8), "floating point"),
        (_st({"w": {**_W, "shape": [-2]}}, b"\0" * 8), "invalid value"),
        (_st({"w": {**_W, "shape": ["2"]}}, b"\0" * 8), "invalid type"),
        (_st({"w": _W}, b"\0" * 12), "4 trailing bytes"),
        (_st({"w": {**_W, "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8), "invalid offset"),
        (_st({"w": _W, "v": {**_W, "data_offsets": [4, 12]}}, b"\0" * 12), "invalid offset"),
    ],
    ids=[
        "deep",
        "list_dtype",
        "float_offsets",
        "negative",
        "string_shape",
        "trailing",
        "gap",
        "overlap",
    ],  # fmt: skip
)
def test_safetensors_headers_follow_the_real_loaders_rules(tmp_path: Path, data, needle) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    with pytest.raises(CorruptCheckpoint, match=needle):
        prepare_checkpoint(path)
    with pytest.raises(CorruptCheckpoint):
        load_state_dict_file(path)


def test_walk_stops_at_its_deadline(tmp_path: Path) -> None:
    path = _save({"w": torch.ones(1)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointTooComplex, match="took more than"):
        prepare_checkpoint(path, limits=LoadLimits(max_seconds=-1.0))
