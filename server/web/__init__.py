"""HTML pages (Jinja + htmx partials), static files and the plot-data endpoint.

``mount_web(app)`` is the only public name: ``server.app`` calls it once.
"""

from __future__ import annotations

from phaseboard.server.web.routes import mount_web

__all__ = ["mount_web"]
