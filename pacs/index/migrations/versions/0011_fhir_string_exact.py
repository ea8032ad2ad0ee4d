"""fhir_string.exact: the string as written, for the :exact search modifier

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 08:30:00.000000

Existing string rows are rebuilt from their resources so that ``:exact`` finds them too.
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("fhir_string", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("exact", sa.String(length=255), server_default="", nullable=False)
        )
    _rebuild_strings()
    with op.batch_alter_table("fhir_string", schema=None) as batch_op:
        batch_op.alter_column("exact", server_default=None)


def _rebuild_strings() -> None:
    from pacs.fhir.indexer import extract

    conn = op.get_bind()
    resource = sa.table(
        "fhir_resource",
        sa.column("pk", sa.Integer),
        sa.column("resource_type", sa.String),
        sa.column("content", sa.Text),
    )
    string = sa.table(
        "fhir_string",
        sa.column("resource_pk", sa.Integer),
        sa.column("resource_type", sa.String),
        sa.column("param", sa.String),
        sa.column("value", sa.String),
        sa.column("exact", sa.String),
    )
    indexed = sa.select(string.c.resource_pk).distinct().scalar_subquery()
    rows = conn.execute(
        sa.select(resource.c.pk, resource.c.resource_type, resource.c.content).where(
            resource.c.pk.in_(indexed)
        )
    ).fetchall()
    for pk, rtype, content in rows:
        values = [
            {"resource_pk": pk, "resource_type": rtype, "param": p, "value": v, "exact": x}
            for p, v, x in set(extract(json.loads(content)).strings)
        ]
        conn.execute(sa.delete(string).where(string.c.resource_pk == pk))
        if values:
            conn.execute(sa.insert(string), values)


def downgrade() -> None:
    with op.batch_alter_table("fhir_string", schema=None) as batch_op:
        batch_op.drop_column("exact")
