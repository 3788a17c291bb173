"""Hand a run's uploaded token datasets to a task that analyses on them.

The generic tasks (``hf_causal_lm``, ``transformer_lens``, ``torch_module``) have no data of
their own: ``attach_token_data`` loads the run's ``datasets`` rows from the blob store into
tensors and gives them to ``task.set_token_data``. Other tasks are left untouched, so
``analysis`` never learns about the store.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from phaseboard.server.db import Database
from phaseboard.server.models import Dataset
from phaseboard.server.store.blobs import BlobStore


def attach_token_data(task: Any, db: Database, store: BlobStore, run_id: int) -> None:
    """``task.set_token_data({name: tensor})`` from the run's datasets, if the task wants it.

    Raises ``ValueError`` (e.g. ``analysis.tokens.TokenDataError``) when the data cannot
    serve the task, such as a run without a ``train`` dataset.
    """
    if not getattr(task, "uses_token_data", False):
        return
    from phaseboard.analysis.tokens import load_token_file

    with db.session() as s:
        rows = s.execute(
            sa.select(Dataset.name, Dataset.sha256).where(Dataset.run_id == run_id)
        ).all()
    task.set_token_data({name: load_token_file(store.open_path(sha)) for name, sha in rows})
    task.datasets()  # cut the windows now: bad data fails the job here, with its message
