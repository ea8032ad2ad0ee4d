"""The ``pacs`` command line: serve, scp, import, db."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pacs.config import Settings

app = typer.Typer(help="Regional imaging archive.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Index database.", no_args_is_help=True)
app.add_typer(db_app, name="db")

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
    return Settings(**{k: v for k, v in overrides.items() if v is not None})


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
    """Import Part-10 files through the ingest path; exit 1 if anything was rejected."""
    from pacs.importer import run_import

    settings = _settings(data_dir=data_dir)
    sys.exit(run_import(settings, paths))


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    data_dir: DataDir = None,
) -> None:
    """Apply the index migrations (Alembic) up to REVISION."""
    from pacs.index.engine import create_index_engine
    from pacs.index.migrate import current_revision, upgrade

    engine = create_index_engine(_settings(data_dir=data_dir))
    upgrade(engine, revision)
    typer.echo(f"index at revision {current_revision(engine)}")


@db_app.command("current")
def db_current(data_dir: DataDir = None) -> None:
    """Print the index schema revision."""
    from pacs.index.engine import create_index_engine
    from pacs.index.migrate import current_revision

    typer.echo(current_revision(create_index_engine(_settings(data_dir=data_dir))) or "empty")


if __name__ == "__main__":
    app()
