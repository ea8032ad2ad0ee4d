"""FHIR resources: current versions, history, search index tables

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25 23:52:04.338767
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fhir_resource",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("resource_type", "id", name="uq_fhir_resource"),
    )
    with op.batch_alter_table("fhir_resource", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_resource_type_updated", ["resource_type", "last_updated"], unique=False
        )

    op.create_table(
        "fhir_resource_history",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("resource_type", "id", "version_id", name="uq_fhir_resource_history"),
    )
    op.create_table(
        "fhir_date",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("resource_pk", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("low", sa.String(length=26), nullable=False),
        sa.Column("high", sa.String(length=26), nullable=False),
        sa.ForeignKeyConstraint(["resource_pk"], ["fhir_resource.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
    )
    with op.batch_alter_table("fhir_date", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_date_lookup", ["resource_type", "param", "low", "high"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_fhir_date_resource_pk"), ["resource_pk"], unique=False)

    op.create_table(
        "fhir_reference",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("resource_pk", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("target_type", sa.String(length=64), nullable=False),
        sa.Column("target_id", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["resource_pk"], ["fhir_resource.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
    )
    with op.batch_alter_table("fhir_reference", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_reference_lookup",
            ["resource_type", "param", "target_id", "target_type"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_fhir_reference_resource_pk"), ["resource_pk"], unique=False
        )
        batch_op.create_index(
            "ix_fhir_reference_target", ["target_type", "target_id"], unique=False
        )

    op.create_table(
        "fhir_string",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("resource_pk", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["resource_pk"], ["fhir_resource.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
    )
    with op.batch_alter_table("fhir_string", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_string_lookup", ["resource_type", "param", "value"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_fhir_string_resource_pk"), ["resource_pk"], unique=False
        )

    op.create_table(
        "fhir_token",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("resource_pk", sa.Integer(), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("param", sa.String(length=64), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=False),
        sa.Column("code", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["resource_pk"], ["fhir_resource.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
    )
    with op.batch_alter_table("fhir_token", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fhir_token_lookup", ["resource_type", "param", "code", "system"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_fhir_token_resource_pk"), ["resource_pk"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("fhir_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fhir_token_resource_pk"))
        batch_op.drop_index("ix_fhir_token_lookup")

    op.drop_table("fhir_token")
    with op.batch_alter_table("fhir_string", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fhir_string_resource_pk"))
        batch_op.drop_index("ix_fhir_string_lookup")

    op.drop_table("fhir_string")
    with op.batch_alter_table("fhir_reference", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_reference_target")
        batch_op.drop_index(batch_op.f("ix_fhir_reference_resource_pk"))
        batch_op.drop_index("ix_fhir_reference_lookup")

    op.drop_table("fhir_reference")
    with op.batch_alter_table("fhir_date", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fhir_date_resource_pk"))
        batch_op.drop_index("ix_fhir_date_lookup")

    op.drop_table("fhir_date")
    op.drop_table("fhir_resource_history")
    with op.batch_alter_table("fhir_resource", schema=None) as batch_op:
        batch_op.drop_index("ix_fhir_resource_type_updated")

    op.drop_table("fhir_resource")
