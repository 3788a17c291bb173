"""tracker fields: run config, summary, status, heartbeat; wall time of metric points

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("config", sa.JSON(), server_default="{}", nullable=False))
        batch_op.add_column(sa.Column("summary", sa.JSON(), server_default="{}", nullable=False))
        batch_op.add_column(
            sa.Column("status", sa.String(length=20), server_default="created", nullable=False)
        )
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("metric_points", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wall_time", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("metric_points", schema=None) as batch_op:
        batch_op.drop_column("wall_time")
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("status")
        batch_op.drop_column("summary")
        batch_op.drop_column("config")
