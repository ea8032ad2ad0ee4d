"""mpps: Modality Performed Procedure Steps (pacs.mpps.tables)

Revision ID: 0015
Revises: 0011
Create Date: 2026-12-03 11:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mpps",
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("service_request_id", sa.String(length=64), nullable=False),
        sa.Column("procedure_id", sa.String(length=64), nullable=False),
        sa.Column("holds_step", sa.Boolean(), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sop_instance_uid"),
    )
    with op.batch_alter_table("mpps", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_mpps_service_request_id"), ["service_request_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("mpps", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mpps_service_request_id"))
    op.drop_table("mpps")
