"""Query/Retrieve SCP, MOVE and GET: send the instances an identifier names.

The identifier's unique keys (PatientID, StudyInstanceUID, SeriesInstanceUID,
SOPInstanceUID, lists of UIDs allowed) down to its QueryRetrieveLevel select the instances
in the index; their stored objects are sent as C-STORE sub-operations, to a registered
Move Destination (C-MOVE) or back on the requesting association (C-GET). The handlers are
generators in pynetdicom's protocol and raise only to refuse a bad C-MOVE identifier (see
``on_c_move``); no patient identifier is logged.

Each sub-operation carries the stored data set bytes untouched when the peer accepted the
stored transfer syntax: the handlers yield a :class:`StoredDataset` (a ``Dataset`` that only
names the instance and holds its encoded bytes) and the sub-operation association's
``send_c_store`` is wrapped to send those bytes as they are (``pacs.dimse.scu``'s raw
C-STORE). An object is decoded only when the peer needs a native syntax. A C-MOVE with a
bad identifier is refused (0xA900) before the destination is contacted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, cast

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID
from pynetdicom import evt
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from pacs.aes import AERegistryError, get_ae
from pacs.dimse.policy import CallingAE
from pacs.dimse.pynetdicom_internals import answer_instead, replace_send_c_store
from pacs.dimse.scu import (
    MoveOriginator,
    StoreItem,
    choose_syntax,
    requested_contexts,
    send_dataset,
    sends_as_stored,
    split_part10,
    transcode,
)
from pacs.dimse.status import (
    CANCEL,
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
    PENDING,
    UNABLE_TO_PROCESS,
)
from pacs.dimse.tls import TlsArgs
from pacs.errors import PacsError
from pacs.index.models import Instance, Patient, Series, Study
from pacs.security.imaging import imaging_scope
from pacs.security.policy import Action, Resource, decide
from pacs.security.subject import Subject
from pacs.storage.base import ObjectStore

log = logging.getLogger(__name__)


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


class IdentifierError(PacsError, ValueError):
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
    """C-MOVE and C-GET handlers of one worker process, on its index and object store.

    Only instances within the calling AE's reach are sent (``pacs.dimse.policy.CallingAE``,
    filtered in the query); a C-MOVE goes only to a registered AE of the caller's
    organisation or one of its ``routes`` (``PACS_MOVE_ROUTES``), any registered AE for an
    unrestricted caller."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        store: ObjectStore,
        callers: CallingAE,
        routes: Mapping[str, Sequence[str]] | None = None,
        tls_args: Callable[[str, str], TlsArgs | None] | None = None,
    ) -> None:
        self.sessions = sessions
        self.store = store
        self.callers = callers
        self.routes = dict(routes or {})
        self.tls_args = tls_args
        """(title, host) -> pynetdicom ``tls_args`` of a C-MOVE destination (None: plain)."""

    def locate(self, identifier: Dataset, subject: Subject) -> list[StoreItem]:
        """The stored instances ``identifier`` names within the reach of ``subject`` (raise
        :class:`IdentifierError`)."""
        query = instance_query(identifier)
        if not decide(subject, Action.READ, Resource.IMAGING):
            return []
        scope = imaging_scope(subject)
        if scope is not None:
            query = query.where(scope.series())
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
            subject = self.callers.of(event)
            with self.sessions() as session:
                peer = get_ae(session, destination)
                address = (peer.host, peer.port)
                allowed = self._may_move_to(subject, peer.title, peer.organisation)
        except AERegistryError:
            log.warning("C-MOVE to unregistered destination %r", destination)
            yield None, None
            return
        except Exception as exc:
            log.error("C-MOVE: registry lookup failed: %s", type(exc).__name__)
            yield None, None
            return
        if not allowed:
            log.warning("C-MOVE to %r refused: not a destination of the caller", destination)
            yield None, None  # answered as an unknown destination (0xA801)
            return
        items, failure = self._locate(event, subject)
        sub_association: list[Any] = []  # pynetdicom's association to the destination
        requestor = str(event.assoc.requestor.ae_title).strip()
        handler = _raw_sender(sub_association, requestor)
        options: dict[str, Any] = {"evt_handlers": [(evt.EVT_ACCEPTED, handler)]}
        contexts = requested_contexts_safe(items)
        if contexts:
            options["contexts"] = contexts
        tls = self.tls_args(destination, address[0]) if self.tls_args else None
        if tls is not None:
            options["tls_args"] = tls
        yield (*address, options)
        if failure is not None:
            # refuse without associating with the destination: pynetdicom would associate
            # before a pending yield, so the final status replaces its "unable to process"
            answer_instead(event.assoc, failure)
            raise IdentifierError("retrieve identifier refused")
        yield len(items)
        yield from self._datasets(
            event, items, lambda: _accepted(sub_association[0]) if sub_association else {}
        )

    def _may_move_to(self, subject: Subject, title: str, organisation: str) -> bool:
        """Whether ``subject`` may send to the registered AE ``title`` of ``organisation``."""
        if imaging_scope(subject) is None:
            return True  # an unrestricted caller: any registered destination
        own = subject.organisation
        return bool(own) and (organisation == own or title in self.routes.get(own, ()))

    def on_c_get(self, event: Any) -> Iterator[Any]:
        """EVT_C_GET: number of sub-operations, then one dataset per instance."""
        try:
            subject = self.callers.of(event)
        except Exception as exc:
            log.error("C-GET: caller lookup failed: %s", type(exc).__name__)
            yield 1
            yield UNABLE_TO_PROCESS, None
            return
        items, failure = self._locate(event, subject)
        if failure is not None:
            yield 1
            yield failure, None
            return
        yield len(items)
        _raw_sender([])(event)
        yield from self._datasets(event, items, lambda: _accepted(event.assoc))

    def _locate(self, event: Any, subject: Subject) -> tuple[list[StoreItem], int | None]:
        try:
            return self.locate(event.identifier, subject), None
        except IdentifierError as exc:
            log.warning("retrieve identifier refused: %s", exc)
            return [], IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
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


class StoredDataset(Dataset):
    """Names one instance to send and holds its encoded data set (``encoded``) in the
    transfer syntax of ``file_meta``; ``reason`` (instead) says why it cannot be sent."""

    def __init__(self, item: StoreItem, syntax: str, encoded: bytes = b"", reason: str = ""):
        super().__init__()
        self.file_meta = FileMetaDataset()
        self.file_meta.TransferSyntaxUID = UID(syntax or item.transfer_syntax_uid)
        self.SOPClassUID = UID(item.sop_class_uid)
        self.SOPInstanceUID = UID(item.sop_instance_uid)
        self._item = item
        self._encoded = encoded
        self._reason = reason


def _prepare(item: StoreItem, accepted: dict[str, list[str]]) -> StoredDataset:
    """The stored data set bytes as they are, or decoded to the native syntax the peer
    accepted; a dataset with a reason (counted failed, listed in FailedSOPInstanceUIDList)
    when it cannot be prepared."""
    syntax = choose_syntax(accepted, item)
    if not syntax:
        return StoredDataset(item, "", reason="no accepted presentation context")
    try:
        data = item.load()
        if sends_as_stored(syntax, item.transfer_syntax_uid):
            return StoredDataset(item, syntax, split_part10(data))
        return StoredDataset(item, syntax, transcode(data, syntax))
    except Exception as exc:
        log.warning("cannot prepare instance for retrieve: %s", type(exc).__name__)
        return StoredDataset(item, syntax, reason=f"cannot prepare: {type(exc).__name__}")


def _raw_sender(sink: list[Any], move_originator: str = "") -> Callable[[Any], None]:
    """An EVT_ACCEPTED handler (also called directly for C-GET) that makes the association's
    ``send_c_store`` send a :class:`StoredDataset`'s bytes untouched. ``move_originator`` is
    the AE title of the C-MOVE's requestor (PS3.7 9.3.1.1; pynetdicom would put its own)."""

    def wrap(event: Any) -> None:
        assoc = event.assoc
        sink.append(assoc)

        def raw(original: Callable[..., Any]) -> Callable[..., Dataset]:
            def send_c_store(dataset: Any, msg_id: int = 1, **kwargs: Any) -> Dataset:
                if not isinstance(dataset, StoredDataset):
                    return cast(Dataset, original(dataset, msg_id=msg_id, **kwargs))
                originator = None
                if kwargs.get("originator_id") is not None:
                    title = move_originator or str(kwargs.get("originator_aet") or "")
                    originator = MoveOriginator(title, int(kwargs["originator_id"]))
                return _send_stored(assoc, dataset, msg_id, originator)

            return send_c_store

        replace_send_c_store(assoc, raw)

    return wrap


def _send_stored(
    assoc: Any, dataset: StoredDataset, msg_id: int, originator: MoveOriginator | None
) -> Dataset:
    """One C-STORE sub-operation with the stored bytes; raising counts it as failed."""
    if dataset._reason:
        raise ValueError(dataset._reason)
    item: StoreItem = dataset._item
    syntax = str(dataset.file_meta.TransferSyntaxUID)
    context_id = next(
        (
            cx.context_id
            for cx in assoc.accepted_contexts
            if cx.as_scu
            and str(cx.abstract_syntax) == item.sop_class_uid
            and str(cx.transfer_syntax[0]) == syntax
        ),
        None,
    )
    if context_id is None:
        raise ValueError("no accepted presentation context")
    status = send_dataset(assoc, context_id, item, dataset._encoded, msg_id, originator)
    if status < 0:
        raise ConnectionError("no C-STORE response")
    result = Dataset()
    result.Status = status
    return result
