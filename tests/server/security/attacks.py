"""Small files that grew large on the server before the pickle budget and the tensor checks.

Each builder returns the bytes an attacker would upload. Pickles are written opcode by opcode
(protocol 2, the opcodes torch's weights-only unpickler reads); torch archives are a real
``torch.save`` file with its ``data.pkl`` (and optionally data records) replaced.
"""

from __future__ import annotations

import io
import json
import struct
import zipfile
from collections.abc import Callable

import torch

PROTO = b"\x80\x02"
STOP = b"."
MARK = b"("
TUPLE = b"t"
TUPLE1 = b"\x85"
REDUCE = b"R"
EMPTY_DICT = b"}"
SETITEM = b"s"


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def long1(n: int) -> bytes:
    raw = n.to_bytes((n.bit_length() + 8) // 8 or 1, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def text(s: str) -> bytes:
    raw = s.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def call(func: bytes, *args: bytes) -> bytes:
    return func + MARK + b"".join(args) + TUPLE + REDUCE


def as_state_dict(value: bytes) -> bytes:
    """``{"w": value}`` as a whole pickle."""
    return PROTO + EMPTY_DICT + text("w") + value + SETITEM + STOP


def torch_bytes(obj: object, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def rezip(
    archive: bytes,
    pickle: bytes | None = None,
    *,
    compress: Callable[[str], bool] = lambda name: False,
    extra: dict[str, bytes] | None = None,
) -> bytes:
    """A torch archive with its ``data.pkl`` replaced and chosen members deflated."""
    src = zipfile.ZipFile(io.BytesIO(archive))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if pickle is not None and info.filename.endswith("data.pkl"):
                data = pickle
            kind = zipfile.ZIP_DEFLATED if compress(info.filename) else zipfile.ZIP_STORED
            dst.writestr(info.filename, data, compress_type=kind)
        prefix = src.infolist()[0].filename.split("/")[0]
        for name, data in (extra or {}).items():
            dst.writestr(f"{prefix}/{name}", data)
    return out.getvalue()


def in_archive(pickle: bytes, **kwargs: object) -> bytes:
    return rezip(torch_bytes({"w": torch.zeros(1)}), pickle, **kwargs)  # type: ignore[arg-type]


# --- the attacks ----------------------------------------------------------------------------


def list_of_range(n: int = 20_000_000) -> bytes:
    """``list(range(n))``: 51 bytes that allocated +749 MB (as a raw pickle)."""
    rng = call(glob("__builtin__", "range"), long1(n))
    return PROTO + glob("__builtin__", "list") + MARK + rng + TUPLE + REDUCE + STOP


def set_of_range(n: int = 20_000_000) -> bytes:
    rng = call(glob("__builtin__", "range"), long1(n))
    return as_state_dict(glob("__builtin__", "set") + MARK + rng + TUPLE + REDUCE)


def bytearray_of(n: int = 1_000_000_000) -> bytes:
    """``bytearray(n)``: torch's own allow-list has ``bytearray``; it zeroes n bytes."""
    return as_state_dict(call(glob("__builtin__", "bytearray"), long1(n)))


def tensor_of(n: int = 10_000_000_000) -> bytes:
    """``torch.Tensor(n)``: an allowed global that allocates n floats."""
    return as_state_dict(call(glob("torch", "Tensor"), long1(n)))


def tensor_via_rebuild_from_type(n: int = 10_000_000_000) -> bytes:
    """``_rebuild_from_type_v2(torch.Tensor, torch.Tensor, (n,), {})``: the call hidden one
    level down."""
    args = MARK + long1(n) + TUPLE
    inner = glob("torch", "Tensor") + glob("torch", "Tensor") + args + EMPTY_DICT
    return as_state_dict(
        glob("torch._tensor", "_rebuild_from_type_v2") + MARK + inner + TUPLE + REDUCE
    )


def empty_dicts(n: int = 5_000_000) -> bytes:
    """``[{}, {}, ...]``: one byte per dict, 5.8 KB once deflated."""
    return PROTO + b"]" + MARK + EMPTY_DICT * n + b"e" + STOP


def deflated_empty_dicts(n: int = 5_000_000) -> bytes:
    """``empty_dicts`` as the ``data.pkl`` of a torch archive, deflated."""
    return in_archive(empty_dicts(n), compress=lambda name: name.endswith(".pkl"))


def declared_storage(numel: int = 1_000_000_000) -> bytes:
    """A storage that claims ``numel`` floats; the archive's record holds 4 bytes."""
    pid = MARK + text("storage") + glob("torch", "FloatStorage") + text("0") + text("cpu")
    pid += long1(numel) + TUPLE + b"Q"  # BINPERSID
    size = MARK + long1(numel) + TUPLE
    rebuild = glob("torch._utils", "_rebuild_tensor_v2") + MARK + pid + b"K\x00" + size
    rebuild += MARK + b"K\x01" + TUPLE + b"\x89" + glob("collections", "OrderedDict")
    rebuild += b")R" + TUPLE + REDUCE
    return in_archive(as_state_dict(rebuild))


def expanded(n: int = 375_000_000) -> bytes:
    """``torch.zeros(1).expand(n)``: 1.5 KB on disk, stored as n floats before the check."""
    return torch_bytes({"w": torch.zeros(1).expand(n)})


def overlapping(rows: int = 20_000, cols: int = 20_000) -> bytes:
    """A view with strides (1, 1): ``rows * cols`` elements over ``rows + cols`` stored."""
    base = torch.zeros(rows + cols)
    return torch_bytes({"w": base.as_strided((rows, cols), (1, 1))})


def tokens_inflating(nbytes: int = 64 * 1024 * 1024) -> bytes:
    """A token tensor whose data record is deflated: ~0.1 % of ``nbytes`` on the wire."""
    return rezip(
        torch_bytes(torch.zeros(nbytes // 4, dtype=torch.int32)),
        compress=lambda name: "/data/" in name,
    )


def safetensors_many_entries(n: int) -> bytes:
    """A safetensors file of ``n`` empty tensors: the header is all there is."""
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


ALL: dict[str, Callable[[], bytes]] = {
    "list(range(2e7)) raw pickle": list_of_range,
    "set(range(2e7)) in an archive": lambda: in_archive(set_of_range()),
    "bytearray(1e9)": lambda: in_archive(bytearray_of()),
    "torch.Tensor(1e10)": lambda: in_archive(tensor_of()),
    "rebuild_from_type(torch.Tensor, 1e10)": lambda: in_archive(tensor_via_rebuild_from_type()),
    "5M empty dicts, deflated": deflated_empty_dicts,
    "storage declaring 1e9 floats": declared_storage,
    "zeros(1).expand(375M)": expanded,
    "strides (1, 1) over 40k floats": overlapping,
    "1.2M empty safetensors entries": lambda: safetensors_many_entries(1_200_000),
}
"""Every attack, by what it is: each must be refused (422) within the budget."""
