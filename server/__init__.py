"""Phaseboard's server (``phaseboard.server``): web app, SQL store, blob store and job queue.

Everything that does I/O lives here; the numerical library is ``phaseboard.analysis`` and the
client training scripts import is ``phaseboard`` itself.
"""

from phaseboard import __version__

__all__ = ["__version__"]
