"""A budget for a pickle, checked by reading its opcodes before torch unpickles anything.

torch's weights-only unpickler refuses every global outside its allow-list, but some allowed
callables allocate from a count written in the file (``bytearray(10**9)``,
``torch.Tensor(10**10)``, ``set(huge_array)``), a tensor's strides can claim far more
elements than its storage holds (``torch.zeros(1).expand(2**40)``: 1.5 KB on disk), and a
compressed pickle of five million ``{}`` opcodes is 5.8 KB. ``scan_pickle`` walks the opcodes
the way that unpickler would (the same opcode set; a symbolic stack: literals, globals,
objects, storages) without building anything, and refuses, naming why:

- more opcodes than the file has bytes (plus a little slack): only a compressed pickle can,
- more estimated memory for the unpickled objects than ``LoadLimits.max_pickle_memory``,
- a call that would allocate or iterate from a count or an object instead of data written
  in the file (tensor and storage constructors, ``bytearray(n)``, ``set(obj)``, a numpy
  array whose shape outgrows its data),
- storages whose declared sizes add up to more bytes than the file has,
- a tensor whose shape needs more elements than its storage holds (expanded, stride-0 or
  overlapping strides), and sparse, nested, quantized, meta-device and subclass tensors.

Nothing here imports torch; the storage element sizes come from the storage class names.
"""

from __future__ import annotations

import math
import struct
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from dataclasses import dataclass, field

from .errors import CheckpointTooComplex, CorruptCheckpoint, UnsafeCheckpoint

__all__ = ["PickleBudget", "scan_pickle"]

OP_SLACK = 65_536
"""Opcodes allowed beyond one per byte of the file (an uncompressed pickle never needs them)."""

# Bytes of one storage element, by the storage class a persistent id names.
_ELEMENT_BYTES = {
    "Double": 8, "Float": 4, "Half": 2, "BFloat16": 2, "Long": 8, "Int": 4, "Short": 2,
    "Char": 1, "Byte": 1, "Bool": 1, "ComplexDouble": 16, "ComplexFloat": 8, "QInt8": 1,
    "QUInt8": 1, "QInt32": 4, "QUInt4x2": 1, "QUInt2x4": 1, "Untyped": 1,
}  # fmt: skip

# Callables that build a container by iterating their argument: it must be a container
# written in the file (its size is already paid for), never an object or a string.
_ITERATING = frozenset(
    {
        "builtins.list", "builtins.tuple", "builtins.set", "builtins.frozenset",
        "builtins.dict", "collections.deque", "collections.Counter",
        "collections.OrderedDict", "torch.Size",
    }
)  # fmt: skip
_REBUILD_STRIDED = frozenset(
    {"torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2",
     "torch._utils._rebuild_tensor_v3"}
)  # fmt: skip
_UNSUPPORTED = {
    "torch._utils._rebuild_sparse_tensor": "a sparse tensor",
    "torch._utils._rebuild_nested_tensor": "a nested tensor",
    "torch._utils._rebuild_qtensor": "a quantized tensor",
    "torch._utils._rebuild_meta_tensor_no_storage": "a meta-device tensor (no data)",
    "torch._utils._rebuild_wrapper_subclass": "a tensor subclass without storage",
}
_RECONSTRUCT = frozenset(
    {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"}
)
_SMALL = 64  # tuples up to this many items keep their items (call arguments, shapes)


@dataclass(frozen=True)
class PickleBudget:
    """Bounds on one pickle: estimated bytes of the objects it builds, and the file's size
    (opcodes and declared storage bytes may not exceed it)."""

    max_memory: int
    file_bytes: int


# --- symbolic values ----------------------------------------------------------------------
# ("lit", kind, size, value): something written in the file (kind: scalar, int, str, bytes,
#   list, tuple, dict, set; value: the int, the short str, or the items of a small tuple)
# ("global", name) · ("obj", name): what calling / instantiating ``name`` returned
# ("storage", key, numel): a persistent-load result


_SCALAR = ("lit", "scalar", 0, None)
_OTHER_OBJ = ("obj", "", 0, None)


def _lit(kind: str, size: int = 0, value: object = None) -> tuple:
    return ("lit", kind, size, value)


class _Refused(Exception):
    pass


@dataclass
class _State:
    budget: PickleBudget
    ops: int = 0
    memory: int = 0
    storages: dict[object, int] = field(default_factory=dict)  # key -> declared bytes

    def spend(self, nbytes: int) -> None:
        self.memory += nbytes
        if self.memory > self.budget.max_memory:
            raise CheckpointTooComplex(
                f"refused: unpickling the file would build more than "
                f"{self.budget.max_memory // (1024 * 1024)} MB of objects"
            )


def scan_pickle(data: bytes | memoryview, budget: PickleBudget, start: int = 0) -> int:
    """Walk one pickle from ``start``; return the offset after its STOP opcode.

    Raises ``CheckpointTooComplex`` past a budget, ``UnsafeCheckpoint`` for a call that
    would allocate from a count or an opcode torch's weights-only unpickler does not support
    (torch would refuse it too), ``CorruptCheckpoint`` for a pickle cut off or malformed.
    """
    return _scan(memoryview(data), budget, start, _State(budget))


def scan_pickles(data: bytes | memoryview, budget: PickleBudget, count: int) -> int:
    """``count`` pickles one after another (a legacy ``torch.save`` file); the end offset."""
    view, state, pos = memoryview(data), _State(budget), 0
    for _ in range(count):
        pos = _scan(view, budget, pos, state)
    return pos


def _scan(data: memoryview, budget: PickleBudget, pos: int, state: _State) -> int:
    max_ops = budget.file_bytes + OP_SLACK
    stack: list[tuple] = []
    metastack: list[list[tuple]] = []
    memo: dict[int, tuple] = {}
    n = len(data)

    def need(k: int) -> memoryview:
        nonlocal pos
        if pos + k > n:
            raise _Refused("the pickle ends in the middle of an opcode")
        chunk = data[pos : pos + k]
        pos += k
        return chunk

    def pop_mark() -> list[tuple]:
        nonlocal stack
        if not metastack:
            raise _Refused("a container opcode without its MARK")
        items, stack = stack, metastack.pop()
        return items

    try:
        while True:
            if pos >= n:
                raise _Refused("the pickle ends without a STOP opcode")
            op = data[pos]
            pos += 1
            state.ops += 1
            if state.ops > max_ops:
                raise CheckpointTooComplex(
                    f"refused: the pickle has more opcodes than the file has bytes "
                    f"({budget.file_bytes}); only a compressed pickle can, and it would "
                    "inflate without bound"
                )
            if op == 0x80:  # PROTO
                need(1)
            elif op == 0x2E:  # STOP
                return pos
            elif op == 0x28:  # MARK
                state.spend(64)
                metastack.append(stack)
                stack = []
            elif op in (0x4E, 0x88, 0x89):  # NONE, NEWTRUE, NEWFALSE
                stack.append(_SCALAR)
            elif op == 0x4A:  # BININT
                state.spend(32)
                stack.append(_lit("int", 0, struct.unpack("<i", need(4))[0]))
            elif op == 0x4B:  # BININT1
                stack.append(_lit("int", 0, need(1)[0]))
            elif op == 0x4D:  # BININT2
                stack.append(_lit("int", 0, struct.unpack("<H", need(2))[0]))
            elif op == 0x8A:  # LONG1
                k = need(1)[0]
                state.spend(32 + k)
                stack.append(_lit("int", 0, int.from_bytes(need(k), "little", signed=True)))
            elif op == 0x47:  # BINFLOAT
                need(8)
                state.spend(24)
                stack.append(_lit("float"))
            elif op == 0x58:  # BINUNICODE
                k = struct.unpack("<I", need(4))[0]
                raw = need(k)
                state.spend(56 + k)
                text = bytes(raw).decode("utf-8", "surrogatepass") if k <= 256 else None
                stack.append(_lit("str", k, text))
            elif op == 0x55:  # SHORT_BINSTRING
                k = need(1)[0]
                raw = need(k)
                state.spend(40 + k)
                stack.append(_lit("str", k, bytes(raw).decode("latin-1")))
            elif op == 0x29:  # EMPTY_TUPLE
                stack.append(_lit("tuple", 0, ()))
            elif op == 0x5D:  # EMPTY_LIST
                state.spend(56)
                stack.append(_lit("list"))
            elif op == 0x7D:  # EMPTY_DICT
                state.spend(64)
                stack.append(_lit("dict"))
            elif op == 0x8F:  # EMPTY_SET
                state.spend(216)
                stack.append(_lit("set"))
            elif op == 0x74:  # TUPLE
                items = pop_mark()
                state.spend(56 + 8 * len(items))
                stack.append(_tuple(items))
            elif op in (0x85, 0x86, 0x87):  # TUPLE1, TUPLE2, TUPLE3
                k = op - 0x84
                if len(stack) < k:
                    raise _Refused("a tuple opcode on a short stack")
                items = stack[-k:]
                del stack[-k:]
                state.spend(56 + 8 * k)
                stack.append(_tuple(items))
            elif op == 0x61:  # APPEND
                _pop(stack)
                _grow(stack, 1, state, 8, "list")
            elif op == 0x65:  # APPENDS
                items = pop_mark()
                _grow(stack, len(items), state, 8, "list")
            elif op == 0x73:  # SETITEM
                _pop(stack)
                _pop(stack)
                _grow(stack, 1, state, 48, "dict")
            elif op == 0x75:  # SETITEMS
                items = pop_mark()
                _grow(stack, len(items) // 2, state, 48, "dict")
            elif op == 0x63:  # GLOBAL
                module = _line(data, pos)
                pos += len(module) + 1
                name = _line(data, pos)
                pos += len(name) + 1
                stack.append(("global", _global_name(module, name)))
            elif op == 0x52:  # REDUCE
                args = _pop(stack)
                func = _pop(stack)
                state.spend(128)
                stack.append(_reduce(func, args, state))
            elif op == 0x81:  # NEWOBJ
                args = _pop(stack)
                cls = _pop(stack)
                state.spend(128)
                stack.append(_newobj(cls, args))
            elif op == 0x62:  # BUILD
                build_state = _pop(stack)
                if not stack:
                    raise _Refused("BUILD on an empty stack")
                _build(stack[-1], build_state, state)
            elif op == 0x51:  # BINPERSID
                pid = _pop(stack)
                state.spend(256)
                stack.append(_storage(pid, state))
            elif op in (0x68, 0x6A):  # BINGET, LONG_BINGET
                idx = need(1)[0] if op == 0x68 else struct.unpack("<I", need(4))[0]
                if idx not in memo:
                    raise _Refused(f"memo entry {idx} is read before it is written")
                state.spend(8)
                stack.append(memo[idx])
            elif op in (0x71, 0x72):  # BINPUT, LONG_BINPUT
                idx = need(1)[0] if op == 0x71 else struct.unpack("<I", need(4))[0]
                if not stack:
                    raise _Refused("PUT on an empty stack")
                state.spend(104)
                memo[idx] = stack[-1]
            else:
                raise UnsafeCheckpoint(
                    f"refused: pickle opcode 0x{op:02x} at byte {pos - 1} is not one that "
                    "torch.load(weights_only=True) supports"
                )
    except _Refused as exc:
        raise CorruptCheckpoint(f"corrupt torch checkpoint: a malformed pickle ({exc})") from None


def _line(data: memoryview, pos: int) -> str:
    end = bytes(data[pos : pos + 512]).find(b"\n")
    if end < 0:
        raise _Refused("a GLOBAL name without its newline")
    return bytes(data[pos : pos + end]).decode("utf-8", "replace")


def _global_name(module: str, name: str) -> str:
    if (module, name) in NAME_MAPPING:
        module, name = NAME_MAPPING[(module, name)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{name}"


def _pop(stack: list[tuple]) -> tuple:
    if not stack:
        raise _Refused("an opcode on an empty stack")
    return stack.pop()


def _tuple(items: list[tuple]) -> tuple:
    return _lit("tuple", len(items), tuple(items) if len(items) <= _SMALL else None)


def _grow(stack: list[tuple], k: int, state: _State, each: int, kind: str) -> None:
    if not stack:
        raise _Refused(f"adding to a {kind} on an empty stack")
    state.spend(each * k)
    top = stack[-1]
    if top[0] == "lit" and top[1] in ("list", "dict", "set"):
        stack[-1] = _lit(top[1], top[2] + k)


def _ints(sym: tuple) -> list[int] | None:
    """The integers of a small literal tuple (a shape, a stride), else None."""
    if sym[0] != "lit" or sym[1] != "tuple" or sym[3] is None:
        return None
    values = [s[3] for s in sym[3]]
    return values if all(s[1] == "int" for s in sym[3]) else None


def _refuse_call(name: str, why: str) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(
        f"refused: the pickle calls {name} {why}; only tensors with their data in the file "
        "(and plain training-state values) are accepted"
    )


def _is_tensor_class(name: str) -> bool:
    tail = name.rsplit(".", 1)[-1]
    return name.startswith("torch.") and (
        tail == "Tensor" or tail.endswith("Tensor") or tail.endswith("Storage")
    )


def _reduce(func: tuple, args: tuple, state: _State) -> tuple:
    if func[0] != "global":
        raise UnsafeCheckpoint("refused: the pickle calls something that is not a named global")
    name = func[1]
    items = args[3] if args[0] == "lit" and args[1] == "tuple" else None
    if items is None:
        raise _refuse_call(name, "with arguments that are not a short tuple written in the file")
    if name in _UNSUPPORTED:
        raise UnsafeCheckpoint(
            f"refused: the file holds {_UNSUPPORTED[name]}, which Phaseboard does not load; "
            "save dense CPU tensors (tensor.to_dense().cpu())"
        )
    if _is_tensor_class(name) or name in ("numpy.ndarray", "builtins.range"):
        raise _refuse_call(name, "to allocate from a size written in the file")
    if name in _ITERATING:
        for i, arg in enumerate(items):
            ok = arg[0] == "global" or (
                arg[0] == "lit" and arg[1] in ("list", "tuple", "dict", "set", "scalar")
            )
            maxlen = name == "collections.deque" and i == 1 and arg[1] == "int"
            if not (ok or maxlen):
                raise _refuse_call(name, "on something other than a container in the file")
    elif name == "builtins.bytearray":
        if not all(a[0] == "lit" and a[1] in ("str", "bytes") for a in items):
            raise _refuse_call(name, "with a size instead of its bytes")
    elif name == "_codecs.encode":
        size = items[0][2] if items and items[0][0] == "lit" else 0
        return _lit("bytes", size)
    elif name in _RECONSTRUCT:
        shape = _ints(items[1]) if len(items) > 1 else None
        if shape is None and len(items) > 1 and items[1][1] == "int":
            shape = [items[1][3]]
        if shape is None or math.prod(shape) > 1:
            raise _refuse_call(name, "with a shape instead of the array's data")
    elif name in _REBUILD_STRIDED:
        _check_geometry(items, state, name)
        return ("obj", "tensor", 0, None)
    elif name == "torch._tensor._rebuild_from_type_v2":  # calls items[0](*items[2])
        if len(items) < 3:
            raise _refuse_call(name, "without the function and arguments it calls")
        return _reduce(items[0], items[2], state)
    return ("obj", name, 0, None)


def _newobj(cls: tuple, args: tuple) -> tuple:
    if cls[0] != "global":
        raise UnsafeCheckpoint("refused: the pickle instantiates something that is not a class")
    name = cls[1]
    if name == "torch.nn.parameter.Parameter":
        return ("obj", "tensor", 0, None)
    if _is_tensor_class(name) or name == "numpy.ndarray":
        raise _refuse_call(name, "to allocate from a size written in the file")
    return ("obj", name, 0, None)


def _build(inst: tuple, build_state: tuple, state: _State) -> None:
    if inst[0] != "obj":
        return  # torch refuses BUILD on anything it did not construct itself
    items = build_state[3] if build_state[0] == "lit" and build_state[1] == "tuple" else None
    if inst[1] in _RECONSTRUCT:  # numpy's (version, shape, dtype, is_fortran, data)
        shape = _ints(items[1]) if items is not None and len(items) == 5 else None
        data = items[4] if shape is not None else None
        if shape is None or data is None or data[0] != "lit":
            raise _refuse_call("numpy.ndarray.__setstate__", "with a state that is not its data")
        if math.prod(shape) > max(1, data[2]):
            raise _refuse_call(
                "numpy.ndarray.__setstate__",
                f"with shape {shape} but only {data[2]} bytes of data",
            )
    elif inst[1] == "tensor" and items is not None and len(items) == 4:
        _check_geometry(items, state, "torch.Tensor.set_")


def _storage(pid: tuple, state: _State) -> tuple:
    items = pid[3] if pid[0] == "lit" and pid[1] == "tuple" else None
    if not items or len(items) < 5 or items[0][3] not in ("storage", b"storage"):
        raise UnsafeCheckpoint("refused: a persistent id that is not a storage")
    cls, key, numel = items[1], items[2][3], items[4][3]
    if items[4][1] != "int" or not isinstance(numel, int) or numel < 0:
        raise UnsafeCheckpoint("refused: a storage whose size is not a non-negative integer")
    kind = cls[1].rsplit(".", 1)[-1].removesuffix("Storage") if cls[0] == "global" else ""
    nbytes = numel * _ELEMENT_BYTES.get(kind, 1)
    view = _ints(items[5]) if len(items) > 5 and items[5][1] == "tuple" else None
    if view is None and len(items) > 5 and items[5][0] == "lit" and items[5][3] is not None:
        view = [v[3] for v in items[5][3][1:]]  # legacy (view_key, offset, size)
    visible = view[-1] if view and isinstance(view[-1], int) else numel
    if key not in state.storages:
        state.storages[key] = nbytes
        declared = sum(state.storages.values())
        if declared > state.budget.file_bytes:
            raise CheckpointTooComplex(
                f"refused: the file declares {declared} bytes of tensor storage but has only "
                f"{state.budget.file_bytes} bytes"
            )
    return ("storage", key, min(numel, visible), None)


def _check_geometry(items: tuple, state: _State, where: str) -> None:
    """``(storage, offset, size, stride, ...)``: the view must fit in its storage, with no
    element counted twice (expanded or overlapping strides)."""
    if len(items) < 4 or items[0][0] != "storage":
        raise _refuse_call(where, "without a storage from the file")
    offset = items[1][3] if items[1][1] == "int" else None
    size, stride = _ints(items[2]), _ints(items[3])
    if offset is None or size is None or stride is None or len(size) != len(stride):
        raise _refuse_call(where, "with a shape or strides that are not short integer tuples")
    numel = math.prod(size)
    if numel == 0:
        return
    if any(d < 0 for d in size) or any(s < 0 for s in stride) or offset < 0:
        raise _refuse_call(where, "with a negative size, stride or offset")
    if any(s == 0 and d > 1 for d, s in zip(size, stride, strict=True)):
        raise UnsafeCheckpoint(
            f"refused: a tensor of shape {size} has stride 0 (an expanded view): it claims "
            f"{numel} elements but stores far fewer; save tensor.contiguous() instead"
        )
    span = offset + 1 + sum((d - 1) * s for d, s in zip(size, stride, strict=True))
    stored = items[0][2]
    if numel > stored or span > stored:
        raise UnsafeCheckpoint(
            f"refused: a tensor of shape {size} (strides {stride}) needs {max(numel, span)} "
            f"elements but its storage holds {stored} (overlapping strides or cut off)"
        )
