"""Index tables of the FHIR store: current versions, history, and one table per search type.

Search index rows point at ``fhir_resource.pk`` and carry the resource type and search
parameter name, so a search is one indexed lookup per parameter. Dates are stored as UTC
strings ``YYYY-MM-DDTHH:MM:SS.ffffff`` (a range ``low``..``high``, both inclusive), which sort
and compare the same way on SQLite and PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from pacs.index.models import Base, utcnow


class _Version:
    """The columns of one version of a resource, current or historical (first in the table)."""

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, sort_order=-1)
    resource_type: Mapped[str] = mapped_column(String(64), sort_order=-1)
    id: Mapped[str] = mapped_column(String(64), sort_order=-1)
    version_id: Mapped[int] = mapped_column(Integer, sort_order=-1)
    last_updated: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, sort_order=-1
    )
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, sort_order=-1)


class FhirResource(_Version, Base):
    """The current version of a resource (a deleted one keeps its row with ``deleted``)."""

    __tablename__ = "fhir_resource"
    __table_args__ = (
        UniqueConstraint("resource_type", "id", name="uq_fhir_resource"),
        Index("ix_fhir_resource_type_updated", "resource_type", "last_updated"),
    )

    content: Mapped[str] = mapped_column(Text)


class FhirResourceHistory(_Version, Base):
    """Every version of every resource, including deletions (``deleted``, empty content)."""

    __tablename__ = "fhir_resource_history"
    __table_args__ = (
        UniqueConstraint("resource_type", "id", "version_id", name="uq_fhir_resource_history"),
    )

    method: Mapped[str] = mapped_column(String(8))  # POST, PUT, DELETE
    content: Mapped[str] = mapped_column(Text)


class _SearchValue:
    """The columns every search index row has (first in the table): the resource it belongs
    to, its type and the search parameter."""

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, sort_order=-1)
    resource_pk: Mapped[int] = mapped_column(
        ForeignKey("fhir_resource.pk", ondelete="CASCADE"), index=True, sort_order=-1
    )
    resource_type: Mapped[str] = mapped_column(String(64), sort_order=-1)
    param: Mapped[str] = mapped_column(String(64), sort_order=-1)


class FhirToken(_SearchValue, Base):
    """A token value (code, identifier, coding, boolean) of a resource's search parameter."""

    __tablename__ = "fhir_token"
    __table_args__ = (Index("ix_fhir_token_lookup", "resource_type", "param", "code", "system"),)

    system: Mapped[str] = mapped_column(String(255), default="")
    code: Mapped[str] = mapped_column(String(255))


class FhirReference(_SearchValue, Base):
    """A reference value ``target_type/target_id`` of a resource's search parameter."""

    __tablename__ = "fhir_reference"
    __table_args__ = (
        Index("ix_fhir_reference_lookup", "resource_type", "param", "target_id", "target_type"),
        Index("ix_fhir_reference_target", "target_type", "target_id"),
    )

    target_type: Mapped[str] = mapped_column(String(64))
    target_id: Mapped[str] = mapped_column(String(64))


class FhirDate(_SearchValue, Base):
    """A date, dateTime, instant or Period of a search parameter, as an inclusive UTC range."""

    __tablename__ = "fhir_date"
    __table_args__ = (Index("ix_fhir_date_lookup", "resource_type", "param", "low", "high"),)

    low: Mapped[str] = mapped_column(String(26))
    high: Mapped[str] = mapped_column(String(26))


class FhirString(_SearchValue, Base):
    """A string of a search parameter: ``value`` normalised (case-folded, accents removed)
    for the default and ``:contains`` searches, ``exact`` as written for ``:exact``."""

    __tablename__ = "fhir_string"
    __table_args__ = (Index("ix_fhir_string_lookup", "resource_type", "param", "value"),)

    value: Mapped[str] = mapped_column(String(255))
    exact: Mapped[str] = mapped_column(String(255), default="")
