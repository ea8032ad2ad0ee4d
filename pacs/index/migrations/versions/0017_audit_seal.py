"""audit_event: mark the rows written before the hash chain (migration 0014) with hash ''

Revision ID: 0017
Revises: 0015
Create Date: 2026-12-03 13:00:00.000000

From this revision on, writers insert rows unsealed (``seq`` and ``hash`` NULL) and the sealer
chains them; rows older than the chain must not be sealed, so they get the marker ``hash = ''``
(until now every row written after 0014 was chained at once, so ``seq IS NULL`` means older).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("UPDATE audit_event SET hash = '' WHERE seq IS NULL")


def downgrade() -> None:
    # Rows still unsealed stay unchained: the older code reports them (seal before downgrading).
    op.execute("UPDATE audit_event SET hash = NULL WHERE seq IS NULL")
