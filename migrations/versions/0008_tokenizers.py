"""tokenizers: a run's tokenizer.json, to show token ids as text

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tokenizers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("vocab_size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tokenizers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tokenizers_run_id"), ["run_id"], unique=True)
        batch_op.create_index(batch_op.f("ix_tokenizers_sha256"), ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("tokenizers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tokenizers_sha256"))
        batch_op.drop_index(batch_op.f("ix_tokenizers_run_id"))
    op.drop_table("tokenizers")
