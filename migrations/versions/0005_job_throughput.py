"""job throughput: chain-steps and chain-steps/s of finished jobs (time-to-completion)

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chain_steps", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("chain_steps_per_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("chain_steps_per_s")
        batch_op.drop_column("chain_steps")
