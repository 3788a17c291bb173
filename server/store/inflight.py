"""In-flight markers: which temp files and fresh blobs a live process may still need.

Everything a blob store writes in flight carries its process's *token*: host name, process
id and the process's start time (so a reused pid is another token). A token whose process is
gone (same host, no such pid, or one started at another time) is dead, however it died.

- Staged uploads are ``<tmp>/upload-<token>-*.part``: a crash leaves them, and the next start
  (or ``phaseboard gc``) removes them at once, whatever their age; the temp files of live
  processes (another server, a worker) are left alone.
- A blob between its commit and the row that references it is *held*: a marker
  ``<inflight>/hold-<token>-<sha256>`` exists for that window (``hold``, released after the
  insert). A lens result's blob, whose row comes later, is *pinned*
  (``pin-<token>-<sha256>``) while its process lives. Garbage collection spares exactly
  these, so it can run right after a disk-full instead of sparing everything written in the
  last hour.

Liveness is known on this machine only: another host's tokens count as live (their temp
files fall back to an age rule), and a store shared between machines keeps its age rule in
``server.blob_gc``.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import psutil

__all__ = ["Inflight", "is_here", "is_live", "process_token"]

_TOKEN = re.compile(r"^([A-Za-z0-9_.]+)-([0-9]+)-([0-9]+)$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:40] or "host"


def _started(pid: int) -> int | None:
    """The process's start time in hundredths of a second, or None if there is none."""
    try:
        return int(psutil.Process(pid).create_time() * 100)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


@lru_cache(maxsize=8)
def process_token(pid: int | None = None) -> str:
    """``<host>-<pid>-<start time>`` of ``pid``'s process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return f"{_host()}-{pid}-{_started(pid) or 0}"


def is_here(token: str) -> bool:
    """Whether ``token`` names a process of this machine (whose liveness we can see)."""
    m = _TOKEN.match(token)
    return m is not None and m.group(1) == _host()


def is_live(token: str) -> bool:
    """Whether the process that ``token`` names still runs (another host's: assumed so)."""
    m = _TOKEN.match(token)
    if m is None:
        return False
    if not is_here(token):
        return True
    return _started(int(m.group(2))) == int(m.group(3))


class Inflight:
    """This process's markers in ``directory`` and the liveness of everyone's."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def token(self) -> str:
        return process_token(os.getpid())  # after a fork the child has its own

    @property
    def temp_prefix(self) -> str:
        return f"upload-{self.token}-"

    is_live = staticmethod(is_live)
    is_here = staticmethod(is_here)

    # --- blobs in flight ----------------------------------------------------------------

    @contextmanager
    def hold(self, sha256: str) -> Iterator[None]:
        """Mark ``sha256`` as in flight for the ``with`` block (commit, then insert the row)."""
        marker = self.dir / f"hold-{self.token}-{sha256}"
        marker.touch()
        try:
            yield
        finally:
            marker.unlink(missing_ok=True)

    def pin(self, sha256: str) -> None:
        """Mark ``sha256`` in flight while this process lives (a blob whose row is written
        later, by code that does not say when; ``unpin`` once it is referenced)."""
        (self.dir / f"pin-{self.token}-{sha256}").touch()

    def unpin(self, sha256: str) -> None:
        """Drop every pin of ``sha256`` (its row exists now, or the blob is gone)."""
        for marker in self.dir.glob(f"pin-*-{sha256}"):
            marker.unlink(missing_ok=True)

    def held(self) -> tuple[set[str], set[str]]:
        """``(held, pinned)``: blobs a live process holds or has pinned; removes the
        markers of dead processes on the way."""
        found: dict[str, set[str]] = {"hold": set(), "pin": set()}
        for kind, shas in found.items():
            for marker in self.dir.glob(f"{kind}-*"):
                token, _, sha = marker.name.removeprefix(f"{kind}-").rpartition("-")
                if is_live(token):
                    shas.add(sha)
                else:
                    marker.unlink(missing_ok=True)
        return found["hold"], found["pin"]

    # --- temp files -----------------------------------------------------------------------

    @staticmethod
    def owner_of(temp: Path) -> str | None:
        """The token in a staged file's name (``upload-<token>-*.part``), if it has one."""
        parts = temp.name.removeprefix("upload-").split("-")
        token = "-".join(parts[:3])
        return token if len(parts) > 3 and _TOKEN.match(token) else None
