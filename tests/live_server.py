"""A real Phaseboard server on a free loopback port, for tests of HTTP clients.

Uvicorn serves ``create_app`` in a thread from a temp SQLite home; the socket is bound
before the thread starts, so there is no port race.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import uvicorn

from phaseboard.server.app import create_app
from phaseboard.server.migrate import upgrade
from phaseboard.server.settings import Settings


@contextmanager
def serve(
    home: Path, token: str | None = None, queue: str = "none", start_workers: bool = True
) -> Iterator[str]:
    """Yield the base URL of a migrated, empty server; stop it afterwards.

    ``queue="local", start_workers=False`` accepts analyses (job rows) without running them.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings(home=home, api_token=token, queue=queue, port=port)  # type: ignore[arg-type]
    upgrade(settings)
    config = uvicorn.Config(
        create_app(settings, start_workers=start_workers), log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
