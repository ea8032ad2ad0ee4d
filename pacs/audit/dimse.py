"""Audit records of DIMSE services: who (calling AE, its organisation, its address), which
service, which patient and study, with which status.

Granularity (IHE BALP / DICOM PS3.15 A.5.3 allow one event per study transfer):

- C-STORE: one record per study per association (:class:`StudyTransfers`), written when the
  association ends, with the number of instances received and the first failure status (or
  success); ingest itself writes nothing more.
- C-FIND (Query/Retrieve and Modality Worklist), C-GET, C-MOVE: one record per request,
  written when its responses end (:meth:`DimseAudit.responses`), with the number of matches or
  sub-operations and the final status the handler answered.

The identifier's PatientID and StudyInstanceUID name the patient and study when they are
single values without wildcards; no other attribute of an identifier (names!) is recorded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import Engine

from pacs.audit.access import Access, Protocol
from pacs.audit.lookup import patient_of_study
from pacs.audit.writer import record_on

SUCCESS = 0x0000
CANCEL = 0xFE00
PENDING = (0xFF00, 0xFF01)
UNABLE_TO_PROCESS = 0xC000
IDENTIFIER_DOES_NOT_MATCH = 0xA900
MOVE_DESTINATION_UNKNOWN = 0xA801


@dataclass(frozen=True, slots=True)
class Peer:
    """The calling AE of an association."""

    title: str
    host: str
    organisation: str = ""


def _key(identifier: Dataset | None, keyword: str) -> str:
    """A single, wildcard-free value of ``keyword`` in the identifier ('' otherwise)."""
    try:
        value = identifier.get(keyword) if identifier is not None else None
    except Exception:  # a deferred element that does not decode
        return ""
    text = str(value or "").strip()
    return "" if not text or any(c in text for c in "*?\\") else text[:64]


def _status(value: Any) -> int | None:
    if isinstance(value, Dataset):
        return int(value.get("Status", UNABLE_TO_PROCESS))
    return value if isinstance(value, int) else None


class DimseAudit:
    """Writes the DIMSE audit records of one worker process (its own engine; never raises)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(
        self,
        service: str,
        peer: Peer,
        outcome: int,
        *,
        patient: str = "",
        study: str = "",
        detail: str = "",
        action: str = "read",
    ) -> None:
        """One record of ``service`` (``C-FIND``, ``C-STORE``, ...) for ``peer``."""
        if study and not patient:
            patient = patient_of_study(self.engine, study)
        access = Access(
            peer.title,
            action,
            service,
            query=detail,
            client_address=peer.host,
            outcome=outcome,
            protocol=Protocol.DIMSE,
            subject_kind="ae",
            organisation=peer.organisation,
            patient=patient,
            study=study,
        )
        record_on(self.engine, access)

    def transfers(self, peer: Peer) -> StudyTransfers:
        """The C-STORE record of one association (call ``close`` when it ends)."""
        return StudyTransfers(self, peer)

    def responses(
        self,
        service: str,
        peer: Peer,
        identifier: Callable[[], Dataset | None],
        responses: Iterator[Any],
        action: str = "read",
    ) -> Iterator[Any]:
        """``responses`` (a pynetdicom C-FIND/C-GET/C-MOVE handler's yields) passed on, and
        one record once they end: the final status (0xFE00 when abandoned), the number of
        pending responses (matches or sub-operations)."""
        pending, final, answered = 0, SUCCESS, False
        try:
            for item in responses:
                if isinstance(item, tuple) and len(item) == 2:
                    status = _status(item[0])
                    if item[0] is None:
                        final, answered = MOVE_DESTINATION_UNKNOWN, True
                    elif status in PENDING:
                        pending += 1
                    elif status is not None:
                        final, answered = status, True
                yield item
        except GeneratorExit:  # pynetdicom drops a handler once it answered its final status
            final = final if answered else CANCEL
            raise
        except ValueError:
            final = IDENTIFIER_DOES_NOT_MATCH
            raise
        except Exception:
            final = UNABLE_TO_PROCESS
            raise
        finally:
            try:
                ident = identifier()
            except Exception:
                ident = None
            level = _key(ident, "QueryRetrieveLevel")
            detail = f"level={level} responses={pending}" if level else f"responses={pending}"
            self.record(
                service,
                peer,
                final,
                patient=_key(ident, "PatientID"),
                study=_key(ident, "StudyInstanceUID"),
                detail=detail,
                action=action,
            )


@dataclass
class StudyTransfers:
    """The instances one association stored, per study: one record each at ``close``."""

    audit: DimseAudit
    peer: Peer
    studies: dict[str, list[int]] = field(default_factory=dict)  # study -> [count, status]

    def add(self, study: str, status: int) -> None:
        """One C-STORE of ``study`` answered with ``status``."""
        entry = self.studies.setdefault(study, [0, SUCCESS])
        entry[0] += 1
        if entry[1] == SUCCESS and status != SUCCESS:
            entry[1] = status

    def close(self) -> None:
        """Write the records (once)."""
        studies, self.studies = self.studies, {}
        for study, (count, status) in studies.items():
            self.audit.record(
                "C-STORE",
                self.peer,
                status,
                study=study,
                detail=f"instances={count}",
                action="create",
            )
