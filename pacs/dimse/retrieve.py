"""Query/Retrieve SCP, MOVE and GET: send the instances an identifier names.

The identifier's unique keys (PatientID, StudyInstanceUID, SeriesInstanceUID,
SOPInstanceUID, lists of UIDs allowed) down to its QueryRetrieveLevel select the instances
in the index; their stored objects are sent as C-STORE sub-operations, to a registered
Move Destination (C-MOVE) or back on the requesting association (C-GET). The handlers are
generators in pynetdicom's protocol and never raise; no patient identifier is logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import partial
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import evt
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from pacs.aes import AERegistryError, get_ae
from pacs.dimse.scu import StoreItem, choose_syntax, requested_contexts
from pacs.index.models import Instance, Patient, Series, Study
from pacs.storage.base import ObjectStore

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
MOVE_DESTINATION_UNKNOWN = 0xA801
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000

_LEVEL_KEYS: dict[str, tuple[str, ...]] = {
    "PATIENT": ("PatientID",),
    "STUDY": ("PatientID", "StudyInstanceUID"),
    "SERIES": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
"""Unique keys that may narrow a retrieve at each level; the last one is required."""

_COLUMNS = {
    "PatientID": Patient.patient_id,
    "StudyInstanceUID": Study.study_instance_uid,
    "SeriesInstanceUID": Series.series_instance_uid,
    "SOPInstanceUID": Instance.sop_instance_uid,
}


class IdentifierError(ValueError):
    """The identifier does not name instances by the unique keys of its level."""


def _values(identifier: Dataset, keyword: str) -> list[str]:
    element = identifier.get(keyword)
    if element is None:
        return []
    raw = element if isinstance(element, list | tuple) else [element]
    if keyword != "PatientID":  # a UID list (multi-valued UI)
        raw = [v for item in raw for v in str(item).split("\\")]
    return [str(v).strip() for v in raw if str(v).strip()]


def instance_query(identifier: Dataset) -> Select[Any]:
    """The index query for the instances ``identifier`` names; raise :class:`IdentifierError`."""
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in _LEVEL_KEYS:
        raise IdentifierError(f"QueryRetrieveLevel {level or '(none)'} is not supported")
    keys = _LEVEL_KEYS[level]
    query = (
        select(Instance)
        .join(Series, Instance.series_pk == Series.pk)
        .join(Study, Series.study_pk == Study.pk)
        .join(Patient, Study.patient_pk == Patient.pk)
        .order_by(Study.pk, Series.series_number, Series.pk, Instance.instance_number, Instance.pk)
    )
    if not _values(identifier, keys[-1]):
        raise IdentifierError(f"{keys[-1]} is required at the {level} level")
    for keyword in keys:
        values = _values(identifier, keyword)
        if len(values) == 1:
            query = query.where(_COLUMNS[keyword] == values[0])
        elif values:
            query = query.where(_COLUMNS[keyword].in_(values))
    return query


class RetrieveService:
    """C-MOVE and C-GET handlers of one worker process, on its index and object store."""

    def __init__(self, sessions: Callable[[], Session], store: ObjectStore) -> None:
        self.sessions = sessions
        self.store = store

    def locate(self, identifier: Dataset) -> list[StoreItem]:
        """The stored instances ``identifier`` names (raise :class:`IdentifierError`)."""
        query = instance_query(identifier)
        with self.sessions() as session:
            rows = session.scalars(query).all()
        store = self.store
        return [
            StoreItem(
                row.sop_class_uid,
                row.sop_instance_uid,
                row.transfer_syntax_uid,
                partial(store.get, row.object_key),
            )
            for row in rows
        ]

    def on_c_move(self, event: Any) -> Iterator[Any]:
        """EVT_C_MOVE: destination, number of sub-operations, then one dataset per instance."""
        raw = event.move_destination or ""
        destination = (raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw).strip()
        try:
            with self.sessions() as session:
                peer = get_ae(session, destination)
                address = (peer.host, peer.port)
        except AERegistryError:
            log.warning("C-MOVE to unregistered destination %r", destination)
            yield None, None
            return
        except Exception as exc:
            log.error("C-MOVE: registry lookup failed: %s", type(exc).__name__)
            yield None, None
            return
        items, failure = self._locate(event)
        sub_association: list[Any] = []  # pynetdicom's association to the destination
        options: dict[str, Any] = {
            "evt_handlers": [(evt.EVT_ACCEPTED, lambda e: sub_association.append(e.assoc))]
        }
        contexts = requested_contexts_safe(items)
        if contexts:
            options["contexts"] = contexts
        yield (*address, options)
        if failure is not None:
            yield 1
            yield failure, None
            return
        yield len(items)
        yield from self._datasets(
            event, items, lambda: _accepted(sub_association[0]) if sub_association else {}
        )

    def on_c_get(self, event: Any) -> Iterator[Any]:
        """EVT_C_GET: number of sub-operations, then one dataset per instance."""
        items, failure = self._locate(event)
        if failure is not None:
            yield 1
            yield failure, None
            return
        yield len(items)
        yield from self._datasets(event, items, lambda: _accepted(event.assoc))

    def _locate(self, event: Any) -> tuple[list[StoreItem], int | None]:
        try:
            return self.locate(event.identifier), None
        except IdentifierError as exc:
            log.warning("retrieve identifier refused: %s", exc)
            return [], IDENTIFIER_DOES_NOT_MATCH
        except Exception as exc:
            log.error("retrieve: index lookup failed: %s", type(exc).__name__)
            return [], UNABLE_TO_PROCESS

    def _datasets(
        self, event: Any, items: list[StoreItem], accepted: Callable[[], dict[str, list[str]]]
    ) -> Iterator[tuple[int, Any]]:
        """Pending (status, data set) pairs; ``accepted`` is read once the sub-operations'
        association exists (pynetdicom opens a C-MOVE's after the count is yielded)."""
        syntaxes: dict[str, list[str]] | None = None
        for item in items:
            if event.is_cancelled:
                yield CANCEL, None
                return
            if syntaxes is None:
                syntaxes = accepted()
            yield PENDING, _prepare(item, syntaxes)


def _accepted(assoc: Any) -> dict[str, list[str]]:
    """Transfer syntaxes accepted per storage SOP class where we act as the Storage SCU
    (a C-MOVE's own association, or a C-GET's contexts with SCP/SCU role selection)."""
    accepted: dict[str, list[str]] = {}
    for cx in assoc.accepted_contexts:
        if cx.as_scu:
            accepted.setdefault(str(cx.abstract_syntax), []).append(str(cx.transfer_syntax[0]))
    return accepted


def requested_contexts_safe(items: list[StoreItem]) -> list[Any]:
    """The sub-association's contexts: the stored syntaxes and the native ones per SOP class
    (empty, i.e. pynetdicom's defaults, when they exceed one association's limit)."""
    try:
        return requested_contexts(items) if items else []
    except Exception:
        return []


def _prepare(item: StoreItem, accepted: dict[str, list[str]]) -> Dataset | Any:
    """The data set to send: decoded as stored, or decompressed when the peer accepted only
    a native syntax; a bare marker (counted as failed) when it cannot be prepared."""
    syntax = choose_syntax(accepted, item)
    if not syntax:
        return _failed(item)
    try:
        ds = dcmread(BytesIO(item.load()))
        if syntax != item.transfer_syntax_uid:
            if ds.file_meta.TransferSyntaxUID.is_compressed:
                ds.decompress(generate_instance_uid=False)
            ds.file_meta.TransferSyntaxUID = UID(syntax)
        return ds
    except Exception as exc:
        log.warning("cannot prepare instance for retrieve: %s", type(exc).__name__)
        return _failed(item)


def _failed(item: StoreItem) -> Any:
    """pynetdicom counts a pending yield whose data set is not a Dataset as failed."""
    return ["failed", item.sop_instance_uid]
