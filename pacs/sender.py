"""``pacs send``: push a stored study (or one of its series) to a registered remote AE."""

from __future__ import annotations

from functools import partial

from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from pacs.aes import AERegistryError, get_ae, migrated_session
from pacs.config import Settings
from pacs.dimse.scu import ItemResult, Outcome, SendError, StoreItem, send
from pacs.index.models import Instance, Series, Study
from pacs.storage import ObjectStore, open_store


def study_items(
    session: Session, store: ObjectStore, study_uid: str, series_uid: str | None = None
) -> list[StoreItem]:
    """Every stored instance of the study (or of one of its series), in series and instance
    order; each item reads its bytes from ``store`` only when sent."""
    query = (
        select(Instance)
        .join(Series, Instance.series_pk == Series.pk)
        .join(Study, Series.study_pk == Study.pk)
        .where(Study.study_instance_uid == study_uid)
        .order_by(Series.series_number, Series.pk, Instance.instance_number, Instance.pk)
    )
    if series_uid is not None:
        query = query.where(Series.series_instance_uid == series_uid)
    return [
        StoreItem(
            sop_class_uid=row.sop_class_uid,
            sop_instance_uid=row.sop_instance_uid,
            transfer_syntax_uid=row.transfer_syntax_uid,
            load=partial(store.get, row.object_key),
        )
        for row in session.scalars(query)
    ]


def run_send(
    settings: Settings,
    study_uid: str,
    title: str,
    series_uid: str | None = None,
    console: Console | None = None,
) -> int:
    """Send; print a summary; 0 if all were sent (warnings included), 1 if any failed,
    2 if nothing could be sent (unknown AE or study, association refused)."""
    console = console or Console(stderr=True)
    try:
        with migrated_session(settings) as session:
            peer = get_ae(session, title)
            items = study_items(session, open_store(settings), study_uid, series_uid)
    except AERegistryError as exc:
        console.print(f"[red]error[/red] {exc}", highlight=False)
        return 2
    if not items:
        what = f"series {series_uid} of study" if series_uid else "study"
        console.print(f"[red]error[/red] no stored instances of {what} {study_uid}")
        return 2
    failures: list[ItemResult] = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"sending to {peer.title}", total=len(items))

        def advance(result: ItemResult) -> None:
            progress.advance(task)
            if result.outcome is not Outcome.SENT:
                failures.append(result)

        try:
            summary = send(settings, peer, items, advance)
        except SendError as exc:
            console.print(f"[red]error[/red] {exc}", highlight=False)
            return 2
    table = Table(title=f"pacs send: {len(items)} instances to {peer.title}")
    table.add_column("result")
    table.add_column("instances", justify="right")
    for outcome in Outcome:
        table.add_row(str(outcome), str(summary.count(outcome)))
    table.add_row("(transcoded)", str(summary.transcoded))
    console.print(table)
    for result in failures:
        colour = "yellow" if result.outcome is Outcome.WARNING else "red"
        console.print(
            f"[{colour}]{result.outcome}[/{colour}] {result.sop_instance_uid}: {result.reason}",
            highlight=False,
        )
    return 1 if summary.count(Outcome.FAILED) else 0
