"""audit_event as a BALP AuditEvent (subject, organisation, protocol, patient, study,
outcome code, break-glass) with a hash chain; audit_chain, the chain head

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-03 11:30:00.000000

Rows written before this revision keep ``seq``/``hash`` NULL: the chain starts with the
first row written after it (``pacs audit verify`` counts them as unchained).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TEXT = (
    ("subject_kind", 16),
    ("roles", 128),
    ("organisation", 128),
    ("practitioner", 128),
    ("patient_identifier", 64),
    ("study_instance_uid", 64),
    ("break_glass_reason", 255),
)


def upgrade() -> None:
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        for name, length in _TEXT:
            batch_op.add_column(
                sa.Column(name, sa.String(length=length), server_default="", nullable=False)
            )
        batch_op.add_column(
            sa.Column("protocol", sa.String(length=16), server_default="http", nullable=False)
        )
        batch_op.add_column(
            sa.Column("outcome_code", sa.String(length=2), server_default="0", nullable=False)
        )
        batch_op.add_column(
            sa.Column("break_glass", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("hash", sa.String(length=64), nullable=True))
    op.execute(
        "UPDATE audit_event SET outcome_code = CASE WHEN outcome >= 500 THEN '8' "
        "WHEN outcome >= 400 THEN '4' ELSE '0' END"
    )
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        for name, _length in _TEXT:
            batch_op.alter_column(name, server_default=None)
        for name in ("protocol", "outcome_code", "break_glass"):
            batch_op.alter_column(name, server_default=None)
        batch_op.create_index(
            "ix_audit_event_patient", ["patient_identifier", "recorded_at"], unique=False
        )
        batch_op.create_index("ix_audit_event_seq", ["seq"], unique=True)
    chain = op.create_table(
        "audit_chain",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.bulk_insert(chain, [{"pk": 1, "seq": 0, "hash": ""}])


def downgrade() -> None:
    op.drop_table("audit_chain")
    with op.batch_alter_table("audit_event", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_event_seq")
        batch_op.drop_index("ix_audit_event_patient")
        for name in ("hash", "seq", "break_glass", "outcome_code", "protocol"):
            batch_op.drop_column(name)
        for name, _length in reversed(_TEXT):
            batch_op.drop_column(name)
