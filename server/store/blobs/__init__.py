"""The blob store: one small interface (``BlobStore``), backends chosen by URL.

``open_blob_store(settings)`` gives the store ``PHASEBOARD_BLOB_URL`` names: the local
directory (default) or S3-compatible object storage. Everything that keeps bytes — uploads,
lens results, workers reading checkpoints, ``phaseboard gc`` — goes through it.
"""

from phaseboard.server.store.blobs.base import BlobInfo, BlobStore, StagedBlob, check_sha256
from phaseboard.server.store.blobs.local import LocalBlobStore
from phaseboard.server.store.blobs.registry import (
    ENTRY_POINT_GROUP,
    blob_url_scheme,
    open_blob_store,
    register_blob_store,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "BlobInfo",
    "BlobStore",
    "LocalBlobStore",
    "StagedBlob",
    "blob_url_scheme",
    "check_sha256",
    "open_blob_store",
    "register_blob_store",
]
