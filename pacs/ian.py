"""Instance Availability Notification SCU: each ``study.stable`` becomes an N-CREATE of an
IAN SOP Instance (PS3.4 R) at every AE named in ``PACS_IAN_DESTINATIONS`` (registered with
``pacs ae add``).

A change-feed consumer (its position in ``feed_position`` under ``ian``): the position moves
past a study only once every destination answered success, so a receiver that is down gets
the notification when it is back (at least once; a study that changes and becomes stable
again is notified again, with all its instances).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError

from pacs.changes import read_since
from pacs.config import Settings
from pacs.dimse.scu import archive_ae
from pacs.emr.positions import load_position, save_position
from pacs.index.engine import create_index_engine
from pacs.index.models import Instance, RemoteAE, Series, Study

log = logging.getLogger(__name__)

INSTANCE_AVAILABILITY_NOTIFICATION = "1.2.840.10008.5.1.4.33"
"""Instance Availability Notification SOP Class."""
CONSUMER = "ian"
BATCH = 100


def notification(engine: Engine, study_instance_uid: str, ae_title: str) -> Dataset | None:
    """The IAN of a study's stored instances (None if it has none)."""
    query = (
        select(Series.series_instance_uid, Instance.sop_class_uid, Instance.sop_instance_uid)
        .join(Instance, Instance.series_pk == Series.pk)
        .join(Study, Study.pk == Series.study_pk)
        .where(Study.study_instance_uid == study_instance_uid)
        .order_by(Series.pk, Instance.pk)
    )
    series: dict[str, list[Dataset]] = {}
    with engine.connect() as conn:
        for series_uid, sop_class, sop_instance in conn.execute(query):
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            item.InstanceAvailability = "ONLINE"
            item.RetrieveAETitle = ae_title
            series.setdefault(series_uid, []).append(item)
    if not series:
        return None
    ian = Dataset()
    ian.ReferencedPerformedProcedureStepSequence = Sequence()
    ian.StudyInstanceUID = study_instance_uid
    items = []
    for series_uid, instances in series.items():
        item = Dataset()
        item.SeriesInstanceUID = series_uid
        item.ReferencedSOPSequence = Sequence(instances)
        items.append(item)
    ian.ReferencedSeriesSequence = Sequence(items)
    return ian


class IanFeed:
    """Sends an IAN per ``study.stable`` event to the configured destinations."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.settings = settings
        self.engine = engine

    def position(self) -> int:
        """The last handled change ``seq``."""
        return load_position(self.engine, CONSUMER)

    def run_once(self) -> int:
        """Notify the next stable studies; how many events were handled (stops at the first
        study a destination did not take, to retry it next time)."""
        since = self.position()
        with self.engine.connect() as conn:
            events = read_since(conn, since, limit=BATCH, kinds={"study.stable"})
        handled = since
        count = 0
        for event in events:
            if not self._notify(event.study_instance_uid):
                break
            handled, count = event.seq, count + 1
        if handled != since:
            save_position(self.engine, CONSUMER, since, handled)
        return count

    def _notify(self, study_instance_uid: str) -> bool:
        dataset = notification(self.engine, study_instance_uid, self.settings.ae_title)
        if dataset is None:
            return True  # deleted meanwhile: nothing to announce
        return all(self._send(title, dataset) for title in self.settings.ian_destinations)

    def _send(self, title: str, dataset: Dataset) -> bool:
        with self.engine.connect() as conn:
            peer = conn.execute(
                select(RemoteAE.host, RemoteAE.port).where(RemoteAE.title == title)
            ).first()
        if peer is None:
            log.error("IAN: destination %s is not registered (pacs ae add)", title)
            return False
        ae = archive_ae(self.settings)
        ae.add_requested_context(INSTANCE_AVAILABILITY_NOTIFICATION)
        assoc = ae.associate(peer.host, peer.port, ae_title=title)
        if not assoc.is_established:
            log.warning("IAN: cannot associate with %s", title)
            return False
        try:
            status, _ = assoc.send_n_create(
                dataset, INSTANCE_AVAILABILITY_NOTIFICATION, generate_uid()
            )
        finally:
            assoc.release()
        ok = bool(status) and status.get("Status") == 0x0000
        if not ok:
            log.warning("IAN to %s answered %s", title, status.get("Status") if status else None)
        return ok

    def run(self, stop: threading.Event, interval: float) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            try:
                busy = self.run_once() == BATCH
            except SQLAlchemyError as exc:
                log.warning("IAN: index unavailable (%s); retrying", type(exc).__name__)
                busy = False
            except Exception:
                log.exception("IAN: batch failed; retrying")
                busy = False
            if not busy:
                stop.wait(interval)


def start_ian(settings: Settings) -> Callable[[], None]:
    """Run the notifier on a daemon thread (a no-op without destinations); the function that
    stops it."""
    if not settings.ian_destinations:
        return lambda: None
    engine = create_index_engine(settings)
    feed = IanFeed(settings, engine)
    stop = threading.Event()
    thread = threading.Thread(
        target=feed.run, args=(stop, settings.emr_feed_interval), name="ian", daemon=True
    )
    thread.start()

    def halt() -> None:
        stop.set()
        thread.join(timeout=10)
        engine.dispose()

    return halt
