"""AI results of the CT analysis (inference.records)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 00:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "ai_result",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_version", sa.Integer(), nullable=False),
        sa.Column("analysis", sa.String(length=64), nullable=False),
        sa.Column("source_series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("model_versions", sa.JSON(), nullable=False),
        sa.Column("measurements", sa.JSON(), nullable=False),
        sa.Column("seg_sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("seg_series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sr_sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sr_series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint(
            "study_instance_uid", "study_version", "analysis", name="uq_ai_result_version"
        ),
    )
    with op.batch_alter_table("ai_result", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_result_study_instance_uid"), ["study_instance_uid"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("ai_result", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_result_study_instance_uid"))
    op.drop_table("ai_result")
