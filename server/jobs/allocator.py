"""glibc's malloc told to reuse freed tensors rather than hand their pages back to the OS.

A vectorised SGLD step allocates and frees tensors of a few MB dozens of times. glibc
serves an allocation above its mmap threshold (dynamic, from 128 kB) with fresh pages
and unmaps it when freed, so every step faults its whole working set in again, and
worker threads of one process queue on the kernel's lock for their address space. On
the demo's restricted LLCs (16 checkpoints per batch, two worker threads) that meant
millions of minor faults and much of the time spent in the kernel (bench/RESULTS.md, "Where
the restricted-LLC time went"). With the
threshold at glibc's maximum (32 MB) such tensors come from the heap, and a top pad
bounds how much free memory an arena keeps (returned to the OS beyond it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("phaseboard.jobs")

M_TOP_PAD = -2  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's cap on 64-bit systems


def release_free_memory() -> bool:
    """Hand the free memory of every malloc arena back to the OS (``malloc_trim(0)``):
    after a job, so a finished job's freed tensors do not stay resident (with several
    worker threads each arena keeps its own, and a server held 2 GB between jobs).
    False where there is no glibc ``malloc_trim``."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def reuse_freed_memory(top_pad_mb: int) -> bool:
    """Tune this process's malloc (process-wide, for good); False where there is no glibc
    ``mallopt`` (macOS, musl refuses it) or ``top_pad_mb`` is 0 (keep the defaults)."""
    if top_pad_mb <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    ok = ok and mallopt(M_TOP_PAD, top_pad_mb * 1024 * 1024) == 1
    if not ok:
        log.info("malloc left at its defaults: mallopt refused")
    return ok
