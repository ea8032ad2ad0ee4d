"""``pacs models list|verify|register``: the model registry from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from inference.registry import ModelRegistry, ModelRegistryError

models_app = typer.Typer(
    help="ONNX model registry (models/<name>/<version>/).", no_args_is_help=True
)

RootOption = Annotated[
    Path | None, typer.Option("--models-dir", help="Registry root \\[env PACS_MODELS_DIR].")
]


def _registry(root: Path | None) -> ModelRegistry:
    return ModelRegistry(root)


@models_app.command("list")
def list_models(models_dir: RootOption = None) -> None:
    """Every registered model version with its task, labels and digest."""
    from rich.console import Console
    from rich.table import Table

    registry = _registry(models_dir)
    table = Table("name", "version", "task", "labels", "sha256")
    for m in registry.list():
        labels = ", ".join(f"{lab.name} (SCT {lab.code.value})" for lab in m.output.labels)
        table.add_row(m.name, m.version, m.task, labels, m.sha256[:16] + "…")
    Console().print(table)


@models_app.command("verify")
def verify(
    name: Annotated[str | None, typer.Argument(help="Model name; default every model.")] = None,
    version: Annotated[str | None, typer.Argument(help="Version; default the newest.")] = None,
    models_dir: RootOption = None,
) -> None:
    """Check model files against the SHA-256 of their manifests (exit 1 on any mismatch)."""
    registry = _registry(models_dir)
    targets = [(name, version)] if name else [(m.name, m.version) for m in registry.list()]
    failed = 0
    for model_name, model_version in targets:
        try:
            m = registry.verify(model_name, model_version)
            typer.echo(f"ok {m.name} {m.version} sha256={m.sha256}")
        except ModelRegistryError as exc:
            failed += 1
            typer.echo(f"FAILED {exc}", err=True)
    if not targets:
        typer.echo("no models registered", err=True)
    raise typer.Exit(1 if failed or not targets else 0)


@models_app.command("register")
def register(
    model: Annotated[
        Path, typer.Argument(help="The model.onnx file.", exists=True, dir_okay=False)
    ],
    manifest: Annotated[
        Path,
        typer.Argument(help="Manifest JSON (sha256 may be empty).", exists=True, dir_okay=False),
    ],
    replace: Annotated[bool, typer.Option(help="Replace an existing version.")] = False,
    models_dir: RootOption = None,
) -> None:
    """Copy a model and its manifest into the registry (the digest is computed here)."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
        m = _registry(models_dir).register(model, data, replace=replace)
    except (ModelRegistryError, ValueError) as exc:
        typer.echo(f"refused: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"registered {m.name} {m.version} sha256={m.sha256}")
