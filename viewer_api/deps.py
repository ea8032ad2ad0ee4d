"""FastAPI dependencies: settings, database session, current user (the auth seam)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from pacs.config import Settings
from pacs.ingest import IngestService


@dataclass(frozen=True, slots=True)
class User:
    """An authenticated caller."""

    name: str
    roles: tuple[str, ...]


LOCAL_ADMIN = User(name="local-admin", roles=("admin",))


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """A database session for one request."""
    with request.app.state.sessions() as session:
        yield session


def get_ingest(request: Request) -> IngestService:
    """The app's one ingest service (the same path as C-STORE); its calls block."""
    ingest: IngestService = request.app.state.ingest
    return ingest


def get_current_user(request: Request) -> User:
    """The caller. The embedded default trusts the local machine and returns a local admin;
    real authentication (OIDC / tokens) replaces this function, not its callers."""
    return LOCAL_ADMIN


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
CurrentUser = Annotated[User, Depends(get_current_user)]
IngestDep = Annotated[IngestService, Depends(get_ingest)]
