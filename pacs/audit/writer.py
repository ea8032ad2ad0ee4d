"""Writing audit rows: one access in a transaction of its own (:func:`record`, HTTP),
through an engine (:func:`record_on`, DIMSE); both export the committed row (syslog)."""

from __future__ import annotations

import logging

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from pacs.audit import export
from pacs.audit.access import Access
from pacs.audit.chain import append
from pacs.audit.tables import AuditEvent
from pacs.index.engine import WRITE, writer_turn

log = logging.getLogger(__name__)


def record(session: Session, access: Access) -> None:
    """Write one audit row in a transaction of its own and commit."""
    # End the caller's read transaction first: on SQLite a deferred transaction that has
    # read cannot take the write lock once another process (ingest, the EMR feed, a job
    # worker) committed after its snapshot ("database is locked" at once, no busy wait).
    session.commit()
    bind = session.get_bind()
    with writer_turn(bind if isinstance(bind, Engine) else bind.engine):
        session.connection(execution_options=WRITE)
        pk = append(session, access)
        session.commit()
    _export(session, pk)


def record_on(engine: Engine, access: Access) -> None:
    """Write one audit row through ``engine`` and commit; never raises (an audit failure is
    logged, the access it describes has already been answered)."""
    try:
        with writer_turn(engine), Session(engine) as session:
            session.connection(execution_options=WRITE)
            pk = append(session, access)
            session.commit()
            _export(session, pk)
    except Exception as exc:  # the type only: the SQL parameters name the patient
        log.error("audit record could not be written: %s", type(exc).__name__)


def _export(session: Session, pk: int) -> None:
    if export.installed():
        row = session.execute(select(AuditEvent.__table__).where(AuditEvent.pk == pk)).one()
        export.emit(row._mapping)
