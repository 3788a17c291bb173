"""Phaseboard server: web app, SQL store, blob store and job queue (everything that does I/O)."""

__version__ = "0.1.0"
