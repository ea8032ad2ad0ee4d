"""``pacs users add|list|disable`` and ``pacs token``: the local accounts of
``PACS_AUTH=local`` and the bearer tokens the archive signs for them."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from pacs.archive_location import Init, open_archive
from pacs.config import Settings

users_app = typer.Typer(help="Local accounts (PACS_AUTH=local).", no_args_is_help=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory \\[env PACS_DATA_DIR].")
]


def _archive(data_dir: Path | None, init: bool) -> Settings:
    overrides: dict[str, Any] = {"data_dir": data_dir} if data_dir is not None else {}
    try:
        settings = Settings.load(**overrides)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    return open_archive(settings, init)


def _fail(message: object) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="Account name (log-in name).")],
    role: Annotated[
        list[str],
        typer.Option(
            "--role",
            help="admin, radiologist, clinician, patient, modality, registrar, analyst or "
            "system (repeat for several).",
        ),
    ],
    organisation: Annotated[
        str, typer.Option("--organisation", help="Organisation the account acts for.")
    ] = "",
    practitioner: Annotated[
        str, typer.Option("--practitioner", help="FHIR Practitioner id of the person.")
    ] = "",
    patient: Annotated[
        str, typer.Option("--patient", help="Patient identifier (role patient).")
    ] = "",
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
    data_dir: DataDir = None,
    init: Init = False,
) -> None:
    """Add an account; without --password-stdin a random password is printed on stdout."""
    from pacs.aes import migrated_session
    from pacs.security.accounts import add_account, generate_password, parse_roles
    from pacs.security.errors import AccountError

    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else generate_password()
    try:
        roles = parse_roles(role)
        with migrated_session(_archive(data_dir, init)) as session:
            account = add_account(
                session, name, roles, password, organisation, practitioner, patient
            )
    except AccountError as exc:
        raise _fail(exc) from None
    typer.echo(f"added account {account.name} ({', '.join(sorted(account.roles))})", err=True)
    if not password_stdin:
        typer.echo(password)


@users_app.command("list")
def users_list(data_dir: DataDir = None, init: Init = False) -> None:
    """List the accounts."""
    from rich.console import Console
    from rich.table import Table

    from pacs.aes import migrated_session
    from pacs.security.accounts import list_accounts

    with migrated_session(_archive(data_dir, init)) as session:
        accounts = list_accounts(session)
    table = Table(title=f"accounts: {len(accounts)}")
    for column in ("name", "roles", "organisation", "practitioner", "patient", "state"):
        table.add_column(column)
    for a in accounts:
        state = "disabled" if a.disabled else "enabled"
        roles = ", ".join(sorted(a.roles))
        table.add_row(a.name, roles, a.organisation, a.practitioner, a.patient, state)
    Console().print(table)


@users_app.command("disable")
def users_disable(
    name: Annotated[str, typer.Argument(help="Account name.")],
    data_dir: DataDir = None,
    init: Init = False,
) -> None:
    """Disable an account: its tokens and web sessions stop working at once."""
    from pacs.aes import migrated_session
    from pacs.security.accounts import disable_account
    from pacs.security.errors import AccountError

    try:
        with migrated_session(_archive(data_dir, init)) as session:
            disable_account(session, name)
    except AccountError as exc:
        raise _fail(exc) from None
    typer.echo(f"disabled {name}")


def token(
    user: Annotated[str, typer.Option("--user", help="Local account name.")],
    ttl: Annotated[
        int | None,
        typer.Option("--ttl", min=60, help="Lifetime in seconds \\[env PACS_TOKEN_TTL_SECONDS]."),
    ] = None,
    data_dir: DataDir = None,
    init: Init = False,
) -> None:
    """Print a bearer token for a local account (Authorization: Bearer ...)."""
    from pacs.aes import migrated_session
    from pacs.security.authn import account_token
    from pacs.security.errors import AccountError

    settings = _archive(data_dir, init)
    try:
        with migrated_session(settings) as session:
            typer.echo(account_token(settings, session, user, ttl))
    except AccountError as exc:
        raise _fail(exc) from None
