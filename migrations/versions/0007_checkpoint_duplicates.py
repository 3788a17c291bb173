"""checkpoints.duplicate_of_step: a step whose weights another step of the run also holds

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.add_column(sa.Column("duplicate_of_step", sa.BigInteger(), nullable=True))
    # Checkpoints stored before this revision: flag every step of a run that shares its blob
    # with a higher step of the same run.
    op.execute(
        """
        UPDATE checkpoints SET duplicate_of_step = (
            SELECT max(other.step) FROM checkpoints AS other
            WHERE other.run_id = checkpoints.run_id AND other.sha256 = checkpoints.sha256
        )
        WHERE step < (
            SELECT max(other.step) FROM checkpoints AS other
            WHERE other.run_id = checkpoints.run_id AND other.sha256 = checkpoints.sha256
        )
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("checkpoints", schema=None) as batch_op:
        batch_op.drop_column("duplicate_of_step")
