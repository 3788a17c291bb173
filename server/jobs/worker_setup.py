"""What a process does once before its workers take jobs.

``prepare_process``: malloc told to reuse freed tensors (``server.jobs.allocator``) and
torch's intra-op threads set, for the local pool's workers. ``start_warm_up``: the sampler
run once on a toy model in the background (``analysis.llc.warm_up``), since torch.func's
first call in a process costs about a second that would otherwise land in the first LLC
job; a worker usually idles that long before its first job (an upload takes longer).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from phaseboard.server.jobs import allocator
from phaseboard.server.settings import Settings

log = logging.getLogger("phaseboard.jobs")


def prepare_process(settings: Settings) -> None:
    """Tune this process's malloc and torch threads for the local pool's workers."""
    allocator.reuse_freed_memory(settings.worker_heap_pad_mb)
    if settings.torch_threads > 0:
        import torch

        torch.set_num_threads(settings.torch_threads)


def start_warm_up(devices: Iterable[str]) -> threading.Thread:
    """Warm the sampler up on each device in a daemon thread (returned, already started)."""
    thread = threading.Thread(
        target=_warm_up, args=(sorted(set(devices)),), name="pb-warm-up", daemon=True
    )
    thread.start()
    return thread


def _warm_up(devices: list[str]) -> None:
    from phaseboard.analysis.llc import warm_up

    for device in devices:
        try:
            log.info("sampler warmed up on %s in %.1f s", device, warm_up(device))
        except Exception:  # noqa: BLE001 - a broken device fails its jobs, with their own error
            log.warning("warming up the sampler on %s failed", device, exc_info=True)
