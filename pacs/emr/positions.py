"""Where a change-feed consumer (the EMR link, IAN) stands: its ``feed_position`` row, read and
advanced with a compare-and-set so that nodes running the same consumer never go back."""

from __future__ import annotations

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from pacs.emr.tables import FeedPosition
from pacs.index.engine import WRITE, writer_turn
from pacs.index.models import utcnow


def load_position(engine: Engine, consumer: str) -> int:
    """The last ``seq`` ``consumer`` handled (0 before its first)."""
    with engine.connect() as conn:
        seq = conn.scalar(select(FeedPosition.seq).where(FeedPosition.consumer == consumer))
    return int(seq or 0)


def save_position(engine: Engine, consumer: str, before: int, after: int) -> None:
    """Move ``consumer`` from ``before`` to ``after``; no change if another node moved it."""
    with writer_turn(engine), engine.execution_options(**WRITE).begin() as conn:
        changed = conn.execute(
            update(FeedPosition)
            .where(FeedPosition.consumer == consumer, FeedPosition.seq == before)
            .values(seq=after, updated_at=utcnow())
        ).rowcount
        if not changed and before == 0:
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(FeedPosition).values(
                            consumer=consumer, seq=after, updated_at=utcnow()
                        )
                    )
            except IntegrityError:
                pass  # another node saved a position first: its position stands
