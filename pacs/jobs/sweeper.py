"""The sweeper: moves studies past their quiet period to ``stable`` and queues their jobs.

One transaction per batch: lock due study_state rows (``FOR UPDATE SKIP LOCKED`` on PostgreSQL,
so several archive processes split the work and never both take one study; the single write
lock on SQLite), mark each stable, record ``study.stable``, route its series and queue the
jobs. Either all of that commits or none of it: no stable study without its jobs, no job
without its event. The deadline lives in the database, so a restarted process carries on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, Table, select, update

from pacs.changes import record
from pacs.index.models import Series, Study, utcnow
from pacs.jobs.lifecycle import RECEIVING, ROUTING, STABLE, STATE
from pacs.jobs.queue import enqueue, write
from pacs.jobs.rules import RuleSet, SeriesFacts

log = logging.getLogger(__name__)

STUDY: Table = Study.__table__  # type: ignore[assignment]
SERIES: Table = Series.__table__  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Stabilised:
    """A study this sweep made stable, and the jobs it queued."""

    study_instance_uid: str
    version: int
    job_ids: list[int]


def series_facts(conn: Connection, study_instance_uid: str) -> list[SeriesFacts]:
    """What routing rules see of each series of a study."""
    query = (
        select(
            SERIES.c.series_instance_uid,
            SERIES.c.modality,
            SERIES.c.body_part_examined,
            STUDY.c.study_description,
            SERIES.c.series_description,
            ROUTING.c.image_type,
            ROUTING.c.orientation,
            ROUTING.c.slice_thickness,
            SERIES.c.number_of_series_related_instances,
            ROUTING.c.sop_class_uid,
            SERIES.c.source_ae_title,
            SERIES.c.source_organisation,
        )
        .join(STUDY, STUDY.c.pk == SERIES.c.study_pk)
        .outerjoin(ROUTING, ROUTING.c.series_instance_uid == SERIES.c.series_instance_uid)
        .where(STUDY.c.study_instance_uid == study_instance_uid)
        .order_by(SERIES.c.series_number, SERIES.c.pk)
    )
    return [
        SeriesFacts(
            series_instance_uid=r[0],
            modality=r[1],
            body_part_examined=r[2],
            study_description=r[3],
            series_description=r[4],
            image_type=r[5] or "",
            orientation=r[6] or "",
            slice_thickness=r[7],
            instances=r[8],
            sop_class_uid=r[9] or "",
            source_ae_title=r[10],
            source_organisation=r[11],
        )
        for r in conn.execute(query)
    ]


def _due(now: object) -> object:
    return select(STATE.c.pk).where(STATE.c.state == RECEIVING, STATE.c.stable_deadline <= now)


def sweep(engine: Engine, rules: RuleSet, max_attempts: int, limit: int = 50) -> list[Stabilised]:
    """Make the due studies stable and queue their jobs; returns what it did."""
    now = utcnow()
    with engine.connect() as conn:  # a cheap read first: idle sweeps take no write lock
        if conn.scalar(_due(now).limit(1)) is None:  # type: ignore[attr-defined]
            return []
    done: list[Stabilised] = []
    with write(engine) as conn:
        rows = conn.execute(
            select(STATE.c.pk, STATE.c.study_instance_uid, STATE.c.version)
            .where(STATE.c.state == RECEIVING, STATE.c.stable_deadline <= now)
            .order_by(STATE.c.stable_deadline)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).fetchall()
        for pk, study, version in rows:
            conn.execute(update(STATE).where(STATE.c.pk == pk).values(state=STABLE, stable_at=now))
            record(conn, "study.stable", study_instance_uid=study, payload={"version": version})
            job_ids = []
            for route in rules.route(series_facts(conn, study)):
                job_id = enqueue(
                    conn,
                    analysis=route.analysis,
                    study_instance_uid=study,
                    study_version=version,
                    series_instance_uids=route.series_instance_uids,
                    priority=route.priority,
                    options=route.options,
                    rule=route.rule,
                    max_attempts=max_attempts,
                )
                if job_id is not None:
                    job_ids.append(job_id)
            done.append(Stabilised(study, version, job_ids))
    for item in done:
        log.info(
            "study %s version %d stable, %d job(s) queued",
            item.study_instance_uid,
            item.version,
            len(item.job_ids),
        )
    return done


def study_state(engine: Engine, study_instance_uid: str) -> dict[str, object] | None:
    """The lifecycle state of one study (API and tests)."""
    with engine.connect() as conn:
        row = conn.execute(
            select(STATE).where(STATE.c.study_instance_uid == study_instance_uid)
        ).fetchone()
    if row is None:
        return None
    return {
        "study_instance_uid": row.study_instance_uid,
        "state": row.state,
        "version": row.version,
        "stable_deadline": row.stable_deadline,
        "stable_at": row.stable_at,
    }
