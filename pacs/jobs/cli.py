"""``pacs worker`` and ``pacs jobs list|show|cancel|retry``."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from pacs.archive_location import Init, open_archive
from pacs.config import Settings

jobs_app = typer.Typer(help="Analysis jobs: list, inspect, cancel, re-run.", no_args_is_help=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory \\[env PACS_DATA_DIR].")
]


def _settings(data_dir: Path | None, **overrides: Any) -> Settings:
    values = {"data_dir": data_dir, **overrides}
    try:
        return Settings.load(**{k: v for k, v in values.items() if v is not None})
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", min=1, help="Jobs at once \\[env PACS_WORKER_CONCURRENCY]."),
    ] = None,
    limit: Annotated[
        list[str] | None,
        typer.Option(
            "--limit",
            help="ANALYSIS=N: at most N at once (repeatable) \\[env PACS_WORKER_ANALYSIS_LIMITS].",
        ),
    ] = None,
    data_dir: DataDir = None,
    init: Init = False,
) -> None:
    """Run analysis jobs (and the sweeper and webhook sender) until SIGTERM/SIGINT."""
    from pacs.emr.feed import start_emr_feed
    from pacs.index.engine import create_index_engine
    from pacs.index.migrate import upgrade
    from pacs.jobs.background import Background
    from pacs.jobs.rules import RulesError
    from pacs.logging import configure_logging
    from pacs.runtime import build_ingest

    overrides: dict[str, Any] = {"worker_concurrency": concurrency}
    if limit:
        overrides["worker_analysis_limits"] = ",".join(limit)
    settings = open_archive(_settings(data_dir, **overrides), init)
    configure_logging(settings)
    engine = create_index_engine(settings)
    upgrade(engine)
    engine.dispose()
    try:
        background = Background(settings, worker=True, ingest=build_ingest(settings))
    except (ValueError, RulesError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    background.start()
    stop_emr_feed = start_emr_feed(settings)  # EMR link: ImagingStudy / AI report projection
    typer.echo(f"worker {background.owner}: {settings.worker_concurrency} slot(s)")
    stop.wait()
    stop_emr_feed()
    background.stop()


def _engine(data_dir: Path | None) -> Any:
    from pacs.index.engine import create_index_engine

    return create_index_engine(open_archive(_settings(data_dir), init=False))


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option("--status", help="Only this status.")] = None,
    analysis: Annotated[str | None, typer.Option("--analysis", help="Only this analysis.")] = None,
    study: Annotated[
        str | None, typer.Option("--study", help="Only this StudyInstanceUID.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    data_dir: DataDir = None,
) -> None:
    """List jobs, newest first."""
    from rich.console import Console
    from rich.table import Table

    from pacs.jobs.queue import STATUSES, list_jobs

    if status and status not in STATUSES:
        typer.echo(f"error: status must be one of {', '.join(STATUSES)}", err=True)
        raise typer.Exit(2)
    rows = list_jobs(
        _engine(data_dir), status=status, analysis=analysis, study_instance_uid=study, limit=limit
    )
    table = Table(title=f"jobs: {len(rows)}")
    for column in ("id", "analysis", "study", "version", "status", "attempts", "error"):
        table.add_column(column)
    for j in rows:
        table.add_row(
            str(j["id"]),
            j["analysis"],
            j["study_instance_uid"],
            str(j["study_version"]),
            j["status"],
            f"{j['attempts']}/{j['max_attempts']}",
            j["error"][:60],
        )
    Console().print(table)


def _one(action: str, job_id: int, data_dir: Path | None) -> None:
    from pacs.jobs import queue

    operation = {"show": queue.get_job, "cancel": queue.cancel, "retry": queue.retry}[action]
    try:
        job = operation(_engine(data_dir), job_id)
    except queue.JobNotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except queue.JobStateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(3) from None
    json.dump(job, sys.stdout, indent=2)
    sys.stdout.write("\n")


@jobs_app.command("show")
def jobs_show(job_id: Annotated[int, typer.Argument()], data_dir: DataDir = None) -> None:
    """Print one job as JSON; exit 1 if there is no such job."""
    _one("show", job_id, data_dir)


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[int, typer.Argument()], data_dir: DataDir = None) -> None:
    """Cancel a job (a running one stops at its next heartbeat); exit 3 if it already ended."""
    _one("cancel", job_id, data_dir)


@jobs_app.command("retry")
def jobs_retry(job_id: Annotated[int, typer.Argument()], data_dir: DataDir = None) -> None:
    """Queue an ended job again from attempt 1; exit 3 if it is queued or running."""
    _one("retry", job_id, data_dir)
