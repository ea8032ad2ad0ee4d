"""Study lifecycle: ``receiving`` while instances arrive, ``stable`` after a quiet period.

``StudyLifecycle.on_instance`` subscribes to ingest's events (``pacs.ingest.events``) and so
runs inside ingest's index transaction, after the instance row: it files a new series' routing
attributes, pushes the study's stable deadline, re-opens a stable study as its next version and
records ``study.reopened`` (the change feed announces ``instance.stored`` / ``series.added``
itself, lifecycle or not). Its study_state row lock comes last in that transaction (after the
study, series and instance rows that the indexer locks top down), and the sweeper locks only
study_state rows, so the two never wait on each other in a cycle. Derived objects
(``pacs.ingest.derived``: the AI's results, verified SRs, any SR, SEG, KOS or PR) never touch
the study: a study version means "new source images arrived", so nothing the archive derives
can start an analysis again.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Table,
    bindparam,
    case,
    literal_column,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from pacs.changes import record
from pacs.config import Settings
from pacs.geometry import slice_normal
from pacs.index.models import utcnow
from pacs.index.prepared import Prepared, db_timestamp
from pacs.ingest.attributes import InstanceAttributes
from pacs.ingest.events import IngestEvent, SeriesAdded
from pacs.jobs import JobError
from pacs.jobs.models import SeriesRouting, StudyState

STATE: Table = StudyState.__table__  # type: ignore[assignment]
ROUTING: Table = SeriesRouting.__table__  # type: ignore[assignment]

RECEIVING = "receiving"
STABLE = "stable"

_ONE: ColumnElement[int] = literal_column("1")
_REOPENING = STATE.c.state == literal_column(f"'{STABLE}'")
_TOUCH = Prepared(
    update(STATE)
    .where(STATE.c.study_instance_uid == bindparam("uid"))
    .values(
        version=STATE.c.version + case((_REOPENING, _ONE), else_=literal_column("0")),
        received_in_version=case((_REOPENING, _ONE), else_=STATE.c.received_in_version + _ONE),
        state=literal_column(f"'{RECEIVING}'"),
        stable_deadline=bindparam("deadline"),
        last_instance_at=bindparam("now"),
    )
    .returning(STATE.c.version, STATE.c.received_in_version)
)


def orientation(image_orientation_patient: str, image_type: str) -> str:
    """AXIAL, CORONAL or SAGITTAL from ImageOrientationPatient (the plane whose normal is
    within about 30 degrees of an axis), else from ImageType's third value; "" if neither."""
    try:
        r = [float(v) for v in image_orientation_patient.split("\\")]
    except ValueError:
        r = []
    if len(r) == 6:
        try:
            normal = slice_normal(r)
        except ValueError:
            return "OBLIQUE"
        axis = max(range(3), key=lambda i: abs(normal[i]))
        return ("SAGITTAL", "CORONAL", "AXIAL")[axis] if abs(normal[axis]) >= 0.866 else "OBLIQUE"
    values = [v.strip().upper() for v in image_type.split("\\")]
    for plane in ("AXIAL", "CORONAL", "SAGITTAL"):
        if plane in values:
            return plane
    return ""


class StudyLifecycle:
    """The ingest side of the lifecycle: what every stored instance changes."""

    def __init__(self, stable_after_seconds: float, by_ae: dict[str, float] | None = None):
        if stable_after_seconds < 0:
            raise JobError("stable_after_seconds must be >= 0")
        self.stable_after = timedelta(seconds=stable_after_seconds)
        self.by_ae = {title: timedelta(seconds=s) for title, s in (by_ae or {}).items()}

    @classmethod
    def from_settings(cls, settings: Settings) -> StudyLifecycle:
        """The lifecycle configured by ``stable_after_seconds[_by_ae]``."""
        return cls(settings.stable_after_seconds, dict(settings.stable_after_seconds_by_ae))

    def quiet_period(self, ae_title: str) -> timedelta:
        """The quiet period after an instance from ``ae_title``."""
        return self.by_ae.get(ae_title.strip(), self.stable_after)

    def on_instance(self, conn: Connection, event: IngestEvent) -> None:
        """Follow one ingest event in the caller's transaction (see the module docstring)."""
        if isinstance(event, SeriesAdded):
            self._series_added(conn, event.attrs)
            return
        if event.derived:
            return
        study = event.attrs.study_instance_uid
        now = utcnow()
        deadline = now + self.quiet_period(event.source.ae_title)
        params: dict[str, Any] = {
            "uid": study,
            "deadline": db_timestamp(conn, deadline),
            "now": db_timestamp(conn, now),
        }
        row = _TOUCH.execute(conn, params).fetchone()
        if row is None and self._insert(conn, study, now, deadline):
            return  # the study's first instance
        if row is None:  # a concurrent first instance inserted the row: touch it now
            row = _TOUCH.execute(conn, params).fetchone()
        version, received = row
        if version > 1 and received == 1:
            record(conn, "study.reopened", study_instance_uid=study, payload={"version": version})

    def _insert(self, conn: Connection, study: str, now: datetime, deadline: datetime) -> bool:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        inserted = conn.execute(
            dialect.insert(STATE)
            .values(
                study_instance_uid=study,
                state=RECEIVING,
                version=1,
                received_in_version=1,
                stable_deadline=deadline,
                last_instance_at=now,
            )
            .on_conflict_do_nothing(index_elements=["study_instance_uid"])
            .returning(STATE.c.pk)
        )
        return inserted.first() is not None

    def _series_added(self, conn: Connection, attrs: InstanceAttributes) -> None:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        conn.execute(
            dialect.insert(ROUTING)
            .values(
                series_instance_uid=attrs.series_instance_uid,
                study_instance_uid=attrs.study_instance_uid,
                sop_class_uid=attrs.sop_class_uid,
                image_type=attrs.image_type[:128],
                slice_thickness=attrs.slice_thickness,
                orientation=orientation(attrs.image_orientation_patient, attrs.image_type),
            )
            .on_conflict_do_nothing(index_elements=["series_instance_uid"])
        )
