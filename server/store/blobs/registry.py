"""Blob backends registered by URL scheme, as MLflow registers its artifact repositories.

``open_blob_store(settings)`` reads ``PHASEBOARD_BLOB_URL``: unset, a path or ``file://``
is the local directory store; ``s3://`` (and ``s3a://``) the S3 store. A third party adds a
scheme with ``register_blob_store`` or an entry point in the group
``phaseboard.blob_stores`` naming a factory ``(url, settings) -> BlobStore``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from phaseboard.server.errors import BadInput
from phaseboard.server.settings import Settings
from phaseboard.server.store.blobs.base import BlobStore

__all__ = ["ENTRY_POINT_GROUP", "blob_url_scheme", "open_blob_store", "register_blob_store"]

ENTRY_POINT_GROUP = "phaseboard.blob_stores"
Factory = Callable[[str, Settings], BlobStore]


def _local(url: str, settings: Settings) -> BlobStore:
    """A path or ``file:///path`` (settings made it ``storage_dir``), or unset."""
    from phaseboard.server.store.blobs.local import LocalBlobStore

    if urlsplit(url).netloc not in ("", "localhost"):
        raise BadInput(f"blob URL {url!r}: a file URL names a local path (file:///path)")
    assert settings.storage_dir is not None
    return LocalBlobStore(settings.storage_dir)


def _s3(url: str, settings: Settings) -> BlobStore:
    from phaseboard.server.store.blobs.s3 import S3BlobStore

    assert settings.storage_dir is not None
    return S3BlobStore(url, settings.storage_dir, settings.blob_cache_mb * 1024 * 1024)


_FACTORIES: dict[str, Factory] = {"": _local, "file": _local, "s3": _s3, "s3a": _s3}


def register_blob_store(scheme: str, factory: Factory) -> None:
    """Serve ``scheme://`` blob URLs with ``factory(url, settings)``."""
    _FACTORIES[scheme.lower()] = factory


def blob_url_scheme(url: str) -> str:
    """The URL's scheme, ``""`` for a plain path (a Windows drive letter is a path too)."""
    scheme = urlsplit(url).scheme.lower()
    return "" if len(scheme) <= 1 else scheme


def _factory(scheme: str) -> Factory:
    if scheme not in _FACTORIES:
        for ep in entry_points(group=ENTRY_POINT_GROUP, name=scheme):
            _FACTORIES[scheme] = ep.load()
    try:
        return _FACTORIES[scheme]
    except KeyError:
        known = ", ".join(sorted(f"{s}://" for s in _FACTORIES if s))
        raise BadInput(
            f"PHASEBOARD_BLOB_URL: no blob store for {scheme}:// (known: {known}, or a path)"
        ) from None


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store ``settings`` name (``blob_url``; unset: the directory ``storage_dir``)."""
    url = settings.blob_url.strip()
    return _factory(blob_url_scheme(url))(url, settings)
