"""``/api/changes``: the change feed, read from a sequence number on."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel

from pacs.changes import KINDS, ChangeEvent, last_seq, read_since
from viewer_api.deps import AuditDep, EngineDep

router = APIRouter(tags=["changes"])

Kind = Annotated[
    list[str] | None,
    Query(description="Only these kinds (repeatable): " + ", ".join(sorted(KINDS))),
]


class Change(ChangeEvent):
    """One event of the feed."""


class ChangePage(BaseModel):
    """Events after ``since``: ``last`` is the seq to pass as ``since`` next time, ``done``
    true when nothing newer exists yet, ``newest`` the newest seq of the feed."""

    changes: list[Change]
    last: int
    done: bool
    newest: int


@router.get("/api/changes")
def changes(
    engine: EngineDep,
    audit: AuditDep,
    since: Annotated[
        int, Query(ge=0, description="Last seq already seen (0: from the start).")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    kind: Kind = None,
) -> ChangePage:
    """Events with ``seq > since``, oldest first. ``last`` is the seq to pass as ``since``
    next time; ``done`` is true when nothing newer exists yet."""
    unknown = sorted(set(kind or []) - KINDS)
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("query", "kind"),
                    "msg": f"unknown kind(s): {', '.join(unknown)}",
                    "input": unknown,
                }
            ]
        )
    with engine.connect() as conn:
        events = read_since(conn, since, limit, set(kind) if kind else None)
        newest = last_seq(conn)
    audit("search")
    return ChangePage(
        changes=[Change.model_validate(e, from_attributes=True) for e in events],
        last=events[-1].seq if events else since,
        done=len(events) < limit,
        newest=newest,
    )
