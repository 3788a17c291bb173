"""Count the kernel-like operations a piece of code runs (the bench's GPU proxy).

A *kernel-like op* is a leaf ``aten::`` operation in a ``torch.profiler`` trace (one that
calls no other aten op) that touches tensor data: views and metadata ops (``view``,
``expand``, ``transpose``, ``split``, ``empty``, ...) launch nothing on a GPU and are not
counted. On a GPU each counted op is about one kernel launch, so where per-launch overhead
dominates (small models, few chains) time follows this count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from torch.profiler import ProfilerActivity, profile

# Ops that only make views or allocate: no kernel on a GPU.
NOT_KERNELS = {
    "aten::view", "aten::_unsafe_view", "aten::as_strided", "aten::reshape", "aten::expand",
    "aten::expand_as", "aten::t", "aten::transpose", "aten::permute", "aten::unsqueeze",
    "aten::squeeze", "aten::select", "aten::slice", "aten::split", "aten::split_with_sizes",
    "aten::unbind", "aten::alias", "aten::detach", "aten::detach_", "aten::empty",
    "aten::empty_like", "aten::empty_strided", "aten::resolve_conj", "aten::resolve_neg",
    "aten::lift_fresh", "aten::_reshape_alias", "aten::unflatten", "aten::flatten",
    "aten::narrow", "aten::chunk", "aten::numpy_T", "aten::movedim", "aten::diagonal",
    "aten::_to_copy_noop", "aten::is_nonzero", "aten::item", "aten::_local_scalar_dense",
    "aten::result_type", "aten::broadcast_tensors", "aten::contiguous", "aten::to",
    "aten::set_", "aten::_has_compatible_shallow_copy_type", "aten::view_as", "aten::unfold",
    "aten::_conj", "aten::conj", "aten::positive", "aten::requires_grad_",
}  # fmt: skip


def kernel_ops(fn: Callable[[], Any]) -> tuple[int, Counter[str]]:
    """Run ``fn`` under the profiler; the number of kernel-like ops and a count by name."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts: Counter[str] = Counter()
    for event in prof.events():
        name = event.name
        if not name.startswith("aten::") or name in NOT_KERNELS:
            continue
        if any(child.name.startswith("aten::") for child in event.cpu_children):
            continue  # a composite op: its children are counted
        counts[name] += 1
    return sum(counts.values()), counts
