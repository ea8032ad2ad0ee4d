"""``pacs retrieve``: C-MOVE SCU asking a registered remote AE to send a study to this archive.

The remote sends the objects with C-STORE to this archive's AE title (it must know that title,
host and port as a move destination); they arrive through the DICOM server and the one ingest
path like any other object, so ``pacs serve`` (or ``pacs scp``) must be running.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
)
from rich.console import Console

from pacs.aes import AERegistryError, get_ae, migrated_session
from pacs.config import Settings
from pacs.dimse.status import PENDING_STATUSES, SUCCESS
from pacs.errors import InvalidDicomError, PacsError
from pacs.index.models import RemoteAE
from pacs.storage.keys import require_uid


class MoveError(PacsError):
    """The C-MOVE could not be carried out (association refused, no response)."""


@dataclass(frozen=True, slots=True)
class MoveResult:
    """The final C-MOVE response: status and sub-operation counts."""

    status: int
    completed: int
    failed: int
    warning: int

    @property
    def ok(self) -> bool:
        """True when every sub-operation succeeded."""
        return self.status == SUCCESS and not self.failed and not self.warning


def _identifier(study_uid: str, series_uid: str | None) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES" if series_uid else "STUDY"
    identifier.StudyInstanceUID = study_uid
    if series_uid:
        identifier.SeriesInstanceUID = series_uid
    return identifier


def move(
    settings: Settings,
    peer: RemoteAE,
    study_uid: str,
    series_uid: str | None = None,
    on_pending: Callable[[int, int], None] | None = None,
) -> MoveResult:
    """Ask ``peer`` to C-STORE the study (or one series) to ``settings.ae_title``.

    ``on_pending(completed, remaining)`` is called for each pending response.
    """
    ae = AE(ae_title=settings.ae_title)
    ae.acse_timeout = settings.acse_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.title)
    if not assoc.is_established:
        raise MoveError(f"{peer.title} at {peer.host}:{peer.port} refused the association")
    last: Dataset | None = None
    try:
        responses = assoc.send_c_move(
            _identifier(study_uid, series_uid),
            settings.ae_title,
            StudyRootQueryRetrieveInformationModelMove,
        )
        for status, _ in responses:
            if not status:
                raise MoveError(f"no C-MOVE response from {peer.title} (timeout or abort)")
            last = status
            if status.Status in PENDING_STATUSES and on_pending is not None:
                on_pending(
                    int(status.get("NumberOfCompletedSuboperations", 0)),
                    int(status.get("NumberOfRemainingSuboperations", 0)),
                )
    finally:
        if assoc.is_established:
            assoc.release()
    if last is None:
        raise MoveError(f"no C-MOVE response from {peer.title}")
    return MoveResult(
        status=int(last.Status),
        completed=int(last.get("NumberOfCompletedSuboperations", 0)),
        failed=int(last.get("NumberOfFailedSuboperations", 0)),
        warning=int(last.get("NumberOfWarningSuboperations", 0)),
    )


def run_retrieve(
    settings: Settings,
    study_uid: str,
    title: str,
    series_uid: str | None = None,
    console: Console | None = None,
) -> int:
    """Retrieve; print a summary; 0 if everything arrived, 1 on failed or warning
    sub-operations (or a failure status), 2 if the move could not be made at all."""
    console = console or Console(stderr=True)
    try:
        require_uid("StudyInstanceUID", study_uid)
        if series_uid:
            require_uid("SeriesInstanceUID", series_uid)
        with migrated_session(settings) as session:
            peer = get_ae(session, title)
    except (AERegistryError, InvalidDicomError) as exc:
        console.print(f"[red]error[/red] {exc}", highlight=False)
        return 2
    with console.status(f"retrieving from {peer.title}") as status_line:

        def pending(completed: int, remaining: int) -> None:
            status_line.update(f"retrieving from {peer.title}: {completed} done, {remaining} left")

        try:
            result = move(settings, peer, study_uid, series_uid, pending)
        except MoveError as exc:
            console.print(f"[red]error[/red] {exc}", highlight=False)
            return 2
    console.print(
        f"pacs retrieve from {peer.title}: status 0x{result.status:04X}, "
        f"completed {result.completed}, warning {result.warning}, failed {result.failed}",
        highlight=False,
    )
    return 0 if result.ok else 1
