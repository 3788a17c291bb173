"""HTML pages (Jinja + htmx partials) and static files; what they show comes from ``server.read``.

``mount_web(app)`` is the only public name: ``server.app`` calls it once.
"""

from __future__ import annotations

from phaseboard.server.web.routes import mount_web

__all__ = ["mount_web"]
