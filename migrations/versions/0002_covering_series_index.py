"""covering index for series reads

The unique constraint already indexes (run_id, name, step); the old ``ix_metric_series``
repeated it. Its replacement also holds ``value``, so downsampled reads never touch the table.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("metric_points", schema=None) as batch_op:
        batch_op.drop_index("ix_metric_series")
        batch_op.create_index(
            "ix_metric_series_values", ["run_id", "name", "step", "value"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("metric_points", schema=None) as batch_op:
        batch_op.drop_index("ix_metric_series_values")
        batch_op.create_index("ix_metric_series", ["run_id", "name", "step"], unique=False)
