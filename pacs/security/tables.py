"""The tables of the identity feature: local accounts (``PACS_AUTH=local``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from pacs.index.models import Base, utcnow


class UserAccount(Base):
    """A local account: who may log in to the archive and as what.

    ``roles`` holds role names comma-separated (see :class:`pacs.security.subject.Role`);
    ``password_hash`` an argon2id hash (PHC string), never the password."""

    __tablename__ = "user_account"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    roles: Mapped[str] = mapped_column(String(255))
    organisation: Mapped[str] = mapped_column(String(128), default="")
    practitioner: Mapped[str] = mapped_column(String(64), default="")
    patient: Mapped[str] = mapped_column(String(64), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
