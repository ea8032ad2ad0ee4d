"""The ``pacs`` command line: serve, scp, import, send, ae, db, users, token."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from inference.models_cli import models_app
from pacs.archive_location import Init, describe, open_archive
from pacs.audit.cli import audit_app
from pacs.config import Settings
from pacs.jobs.cli import jobs_app, worker
from pacs.quarantine_cli import quarantine_app
from pacs.users_cli import token, users_app
from pacs.worklist_cli import worklist_app

app = typer.Typer(help="Regional imaging archive.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Index database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
ae_app = typer.Typer(help="Registry of remote AEs (destinations).", no_args_is_help=True)
app.add_typer(ae_app, name="ae")
app.add_typer(jobs_app, name="jobs")
app.add_typer(models_app, name="models")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(audit_app, name="audit")
app.add_typer(users_app, name="users")
app.add_typer(worklist_app, name="worklist")
app.command("worker")(worker)
app.command("token")(token)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory \\[env PACS_DATA_DIR].")
]
Host = Annotated[str | None, typer.Option("--host", help="Bind address \\[env PACS_HOST].")]
DicomPort = Annotated[
    int | None, typer.Option("--dicom-port", help="DICOM port \\[env PACS_DICOM_PORT].")
]
HttpPort = Annotated[
    int | None, typer.Option("--http-port", help="HTTP port \\[env PACS_HTTP_PORT].")
]
Processes = Annotated[
    int | None,
    typer.Option("--scp-processes", help="DICOM server processes \\[env PACS_SCP_PROCESSES]."),
]


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings.load(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


def _archive(init: bool, **overrides: Any) -> Settings:
    """The settings of an existing archive (or a new one with ``--init``); see
    ``pacs.archive_location``."""
    return open_archive(_settings(**overrides), init)


def _prepare_metrics_dir(settings: Settings) -> None:
    """Multiprocess Prometheus metrics need a fresh directory before any process starts."""
    path = (settings.data_dir / "metrics").resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Host = None,
    dicom_port: DicomPort = None,
    http_port: HttpPort = None,
    scp_processes: Processes = None,
) -> None:
    """Run the archive in one command: DICOM SCP, HTTP API, migrations applied."""
    settings = _settings(
        data_dir=data_dir,
        host=host,
        dicom_port=dicom_port,
        http_port=http_port,
        scp_processes=scp_processes,
    )
    _prepare_metrics_dir(settings)
    from pacs.serve import run_serve

    run_serve(settings, http=True)


@app.command()
def scp(
    data_dir: DataDir = None,
    host: Host = None,
    dicom_port: DicomPort = None,
    scp_processes: Processes = None,
) -> None:
    """Run only the DICOM SCP (for scale-out nodes behind a TCP load balancer)."""
    settings = _settings(
        data_dir=data_dir, host=host, dicom_port=dicom_port, scp_processes=scp_processes
    )
    _prepare_metrics_dir(settings)
    from pacs.serve import run_serve

    run_serve(settings, http=False)


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (recursive).")],
    data_dir: DataDir = None,
) -> None:
    """Import Part-10 files through the ingest path; files that are not DICOM are skipped;
    exit 1 if a DICOM object was rejected."""
    from pacs.importer import run_import

    settings = _settings(data_dir=data_dir)
    typer.echo(f"pacs: {describe(settings)}", err=True)
    sys.exit(run_import(settings, paths))


@app.command()
def send(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    title: Annotated[str, typer.Argument(help="Registered remote AE title.")],
    series: Annotated[
        str | None, typer.Option("--series", help="Send only this Series Instance UID.")
    ] = None,
    data_dir: DataDir = None,
    init: Init = False,
) -> None:
    """C-STORE a stored study to a registered remote AE; exit 1 if any instance failed."""
    from pacs.sender import run_send

    sys.exit(run_send(_archive(init, data_dir=data_dir), study_uid, title, series))


@app.command()
def retrieve(
    study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
    source: Annotated[str, typer.Option("--from", help="Registered remote AE to pull from.")],
    series: Annotated[
        str | None, typer.Option("--series", help="Retrieve only this Series Instance UID.")
    ] = None,
    data_dir: DataDir = None,
    init: Init = False,
) -> None:
    """C-MOVE a study from a registered remote AE into this archive (pacs serve must run)."""
    from pacs.retriever import run_retrieve

    sys.exit(run_retrieve(_archive(init, data_dir=data_dir), study_uid, source, series))


@ae_app.command("add")
def ae_add(
    title: Annotated[str, typer.Argument(help="AE title (1-16 characters).")],
    host: Annotated[str, typer.Argument(help="Host name or IP address.")],
    port: Annotated[int, typer.Argument(help="TCP port.")],
    organisation: Annotated[
        str, typer.Option("--organisation", help="Organisation it belongs to.")
    ] = "",
    description: Annotated[str, typer.Option("--description", help="Free text.")] = "",
    data_dir: DataDir = None,
    init: Init = False,
) -> None:
    """Register a remote AE (or update the one registered under TITLE)."""
    from pacs.aes import AESpec, InvalidAEError, migrated_session, put_ae

    try:
        spec = AESpec(title, host, port, organisation, description)
    except InvalidAEError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    with migrated_session(_archive(init, data_dir=data_dir)) as session:
        entry, created = put_ae(session, spec)
    verb = "added" if created else "updated"
    typer.echo(f"{verb} {entry.title} {entry.host}:{entry.port}")


@ae_app.command("list")
def ae_list(data_dir: DataDir = None, init: Init = False) -> None:
    """List the registered remote AEs."""
    from rich.console import Console
    from rich.table import Table

    from pacs.aes import list_aes, migrated_session

    with migrated_session(_archive(init, data_dir=data_dir)) as session:
        entries = list_aes(session)
    table = Table(title=f"remote AEs: {len(entries)}")
    for column in ("title", "host", "port", "organisation", "description"):
        table.add_column(column, justify="right" if column == "port" else "left")
    for e in entries:
        table.add_row(e.title, e.host, str(e.port), e.organisation, e.description)
    Console().print(table)


@ae_app.command("remove")
def ae_remove(
    title: Annotated[str, typer.Argument(help="AE title.")],
    data_dir: DataDir = None,
    init: Init = False,
) -> None:
    """Remove a registered remote AE; exit 1 if TITLE is not registered."""
    from pacs.aes import AERegistryError, migrated_session, remove_ae

    try:
        with migrated_session(_archive(init, data_dir=data_dir)) as session:
            remove_ae(session, title)
    except AERegistryError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"removed {title.strip()}")


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    data_dir: DataDir = None,
    init: Init = False,
) -> None:
    """Apply the index migrations (Alembic) up to REVISION."""
    from pacs.index.engine import create_index_engine
    from pacs.index.migrate import current_revision, upgrade

    engine = create_index_engine(_archive(init, data_dir=data_dir))
    upgrade(engine, revision)
    typer.echo(f"index at revision {current_revision(engine)}")


@db_app.command("current")
def db_current(data_dir: DataDir = None) -> None:
    """Print the index schema revision (of an existing archive: this never creates one)."""
    from pacs.index.engine import create_index_engine
    from pacs.index.migrate import current_revision

    typer.echo(current_revision(create_index_engine(_archive(False, data_dir=data_dir))) or "empty")


if __name__ == "__main__":
    app()
