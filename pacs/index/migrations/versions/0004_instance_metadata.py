"""per-instance metadata documents and frame indexes (WADO-RS)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 23:55:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instance_metadata",
        sa.Column("instance_pk", sa.Integer(), nullable=False),
        sa.Column("format_version", sa.Integer(), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("frame_index", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(["instance_pk"], ["instance.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("instance_pk"),
    )


def downgrade() -> None:
    op.drop_table("instance_metadata")
