"""query indexes: lower(patient_name) text_pattern_ops on PostgreSQL

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26 00:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX ix_patient_name_lower ON patient (lower(patient_name) text_pattern_ops)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX ix_patient_name_lower")
