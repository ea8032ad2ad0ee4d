"""``/api/changes``: the change feed, read from a sequence number on."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError

from pacs.changes import KINDS, last_seq, read_since
from viewer_api.audit import record_access
from viewer_api.deps import CurrentUser, SessionDep

router = APIRouter(tags=["changes"])

Kind = Annotated[
    list[str] | None,
    Query(description="Only these kinds (repeatable): " + ", ".join(sorted(KINDS))),
]


@router.get("/api/changes")
def changes(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    since: Annotated[
        int, Query(ge=0, description="Last seq already seen (0: from the start).")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    kind: Kind = None,
) -> dict[str, Any]:
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
    with request.app.state.engine.connect() as conn:
        events = read_since(conn, since, limit, set(kind) if kind else None)
        newest = last_seq(conn)
    record_access(session, request, user, "search")
    last = events[-1].seq if events else since
    return {
        "changes": [e.as_json() for e in events],
        "last": last,
        "done": len(events) < limit,
        "newest": newest,
    }
