"""The blob store's former module, kept so existing imports work.

New code imports ``phaseboard.server.store.blobs``: the ``BlobStore`` interface, its local and
S3 backends and ``open_blob_store(settings)``. ``BlobStore`` *here* is the local directory
store, as it always was (``BlobStore(root)``).
"""

from phaseboard.server.store.blobs import BlobInfo, StagedBlob, open_blob_store
from phaseboard.server.store.blobs import LocalBlobStore as BlobStore

__all__ = ["BlobInfo", "BlobStore", "StagedBlob", "open_blob_store"]
