"""The workers' malloc tuning: freed tensors are reused instead of faulted in again."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from server.jobs import allocator

# 20 "steps", each holding six 8 MB tensors at once and freeing them, as an SGLD step does
# with its activations; the process's minor page faults over the loop.
_PROBE = textwrap.dedent(
    """
    import json, resource, sys, torch
    from server.jobs import allocator
    tuned = allocator.reuse_freed_memory(int(sys.argv[1]))
    step = [torch.ones(2 * 1024 * 1024) for _ in range(6)]  # a first step: the heap grows
    del step
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        step = [torch.ones(2 * 1024 * 1024) for _ in range(6)]
        del step
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"tuned": tuned, "faults": faults}))
    """
)


def _faults(top_pad_mb: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(top_pad_mb)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_tuned_malloc_reuses_freed_tensors_instead_of_faulting_them_in() -> None:
    default, tuned = _faults(0), _faults(64)
    assert default["tuned"] is False and tuned["tuned"] is True
    # Untuned: the freed 48 MB goes back to the OS and is faulted in again every step
    # (2,048 faults of 4 kB pages per tensor).
    assert default["faults"] > 20 * 6 * 1000
    assert tuned["faults"] < default["faults"] / 20


def test_zero_leaves_malloc_alone() -> None:
    assert allocator.reuse_freed_memory(0) is False
