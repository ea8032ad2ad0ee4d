"""EMR link: change-feed positions, AI reports, review decisions (pacs.emr.tables)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 00:30:00.000000
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
        "feed_position",
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer"),
    )
    op.create_table(
        "ai_report",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("result_pk", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("diagnostic_report_id", sa.String(length=64), nullable=False),
        sa.Column("provenance_id", sa.String(length=64), nullable=False),
        sa.Column("observation_ids", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("result_pk"),
    )
    with op.batch_alter_table("ai_report", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ai_report_study_instance_uid"), ["study_instance_uid"], unique=False
        )
    op.create_table(
        "review_decision",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("result_pk", sa.Integer(), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("conclusion", sa.Text(), nullable=False),
        sa.Column("signer", sa.String(length=128), nullable=False),
        sa.Column("practitioner", sa.String(length=128), nullable=False),
        sa.Column("organisation", sa.String(length=128), nullable=False),
        sa.Column("sr_sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("result_pk"),
    )


def downgrade() -> None:
    op.drop_table("review_decision")
    with op.batch_alter_table("ai_report", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ai_report_study_instance_uid"))
    op.drop_table("ai_report")
    op.drop_table("feed_position")
