"""Safe checkpoint loading: formats by content, refusals that run nothing, clear errors."""

from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from phaseboard.analysis.checkpoints import (
    CorruptCheckpoint,
    NotAStateDict,
    UnsafeCheckpoint,
    detect_format,
    inspect_state_dict,
    load_state_dict_file,
    save_safetensors_bytes,
    scan_checkpoint_file,
)


def _sd() -> dict[str, torch.Tensor]:
    return {"layer.weight": torch.randn(3, 4), "layer.bias": torch.zeros(3)}


class _Evil:
    """Unpickling this with plain pickle would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_safetensors_round_trip_detected_by_content(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.bin"  # misleading extension on purpose
    path.write_bytes(save_safetensors_bytes(_sd()))
    assert detect_format(path) == "safetensors"
    loaded = load_state_dict_file(path)
    assert set(loaded) == {"layer.weight", "layer.bias"}
    info = scan_checkpoint_file(path)
    assert (info.n_tensors, info.n_params, info.non_finite, info.format) == (
        2, 15, [], "safetensors",
    )  # fmt: skip


def test_torch_zip_file_loads_and_wrappers_are_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"  # again the name lies
    torch.save({"model": _sd(), "optimizer": {"param_groups": [{"lr": 0.1}]}, "step": 3}, path)
    assert detect_format(path) == "torch"
    assert set(load_state_dict_file(path)) == {"layer.weight", "layer.bias"}
    assert scan_checkpoint_file(path).format == "torch"


def test_nested_dicts_are_flattened_with_dots(tmp_path: Path) -> None:
    path = tmp_path / "nested.pt"
    torch.save({"state_dict": {"enc": {"w": torch.ones(2)}, "dec.w": torch.ones(1)}}, path)
    assert set(load_state_dict_file(path)) == {"enc.w", "dec.w"}


def test_legacy_torch_format_loads(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(OrderedDict(_sd()), path, _use_new_zipfile_serialization=False)
    assert set(load_state_dict_file(path)) == {"layer.weight", "layer.bias"}


@pytest.mark.parametrize("container", ["torch_zip", "raw_pickle"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path: Path, container: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"w": torch.ones(1), "x": _Evil(marker)}
    if container == "torch_zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafeCheckpoint, match=r"refused.*(posix|os)\.system"):
        load_state_dict_file(path)
    with pytest.raises(UnsafeCheckpoint):
        scan_checkpoint_file(path)
    assert not marker.exists()


def test_truncated_files_are_corrupt(tmp_path: Path) -> None:
    st = tmp_path / "a.safetensors"
    data = save_safetensors_bytes({"w": torch.randn(1000)})
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCheckpoint, match="truncated"):
        scan_checkpoint_file(st)
    with pytest.raises(CorruptCheckpoint):
        load_state_dict_file(st)
    pt = tmp_path / "b.pt"
    torch.save(_sd(), pt)
    pt.write_bytes(pt.read_bytes()[:200])
    with pytest.raises(CorruptCheckpoint, match="corrupt torch checkpoint"):
        scan_checkpoint_file(pt)


@pytest.mark.parametrize("data", [b"", b"hello world, not a checkpoint", b"\x00" * 64])
def test_garbage_is_corrupt(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "junk"
    path.write_bytes(data)
    with pytest.raises(CorruptCheckpoint):
        load_state_dict_file(path)
    with pytest.raises(CorruptCheckpoint):
        scan_checkpoint_file(path)


@pytest.mark.parametrize(
    "obj, match",
    [
        (torch.ones(3), "single tensor"),
        ([torch.ones(3)], "list"),
        ({"a": 1, "b": "x"}, "not tensors"),
        ({"w": torch.ones(1), "note": "hi"}, "'note'"),
        ({}, "no tensors"),
    ],
)
def test_non_tensor_content_is_not_a_state_dict(tmp_path: Path, obj: object, match: str) -> None:
    path = tmp_path / "x.pt"
    torch.save(obj, path)
    with pytest.raises(NotAStateDict, match=match):
        load_state_dict_file(path)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_non_finite_tensors_are_named(tmp_path: Path, dtype: torch.dtype) -> None:
    sd = {"ok": torch.ones(5, dtype=dtype), "nan": torch.ones(5, dtype=dtype),
          "inf": torch.ones(5, dtype=dtype), "ints": torch.arange(4)}  # fmt: skip
    sd["nan"][2] = float("nan")
    sd["inf"][4] = float("-inf")
    assert inspect_state_dict(sd).non_finite == ["nan", "inf"]
    path = tmp_path / "x.safetensors"
    path.write_bytes(save_safetensors_bytes(sd))
    assert sorted(scan_checkpoint_file(path).non_finite) == ["inf", "nan"]
    pt = tmp_path / "x.pt"
    torch.save(sd, pt)
    assert sorted(scan_checkpoint_file(pt).non_finite) == ["inf", "nan"]


def test_safetensors_whose_header_length_starts_like_a_pickle(tmp_path: Path) -> None:
    """A u64 header length of 128..255 begins with byte 0x80, a pickle's first byte."""
    import json

    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})
    header += " " * (0x80 + 8 - len(header))
    path = tmp_path / "x"
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\0" * 8)
    assert path.read_bytes()[0] == 0x88  # starts like a protocol-2+ pickle
    assert detect_format(path) == "safetensors"
    assert scan_checkpoint_file(path).n_params == 2
