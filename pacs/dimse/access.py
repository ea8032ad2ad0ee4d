"""The access-policy rule of every DIMSE service the archive serves: the (action, resource)
:func:`pacs.security.policy.decide` is asked for the calling AE's subject
(:class:`pacs.dimse.policy.CallingAE`), as ``viewer_api.access.ROUTES`` is for HTTP.

``SERVICES`` names each service; ``EVENTS`` the services behind each pynetdicom event the
handlers bind (``pacs.dimse.handlers.Handlers.bindings``). A new service without a row here
fails tests/test_access_dimse_services.py.
"""

from __future__ import annotations

from pacs.security.policy import Action, Decision, Resource, decide
from pacs.security.subject import Subject

A, R = Action, Resource

SERVICES: dict[str, tuple[Action, Resource]] = {
    "C-STORE": (A.WRITE, R.IMAGING),
    "C-FIND": (A.SEARCH, R.IMAGING),
    "C-GET": (A.READ, R.IMAGING),
    "C-MOVE": (A.READ, R.IMAGING),
    "MWL C-FIND": (A.SEARCH, R.WORKLIST),
    "MPPS N-CREATE": (A.WRITE, R.WORKLIST),
    "MPPS N-SET": (A.WRITE, R.WORKLIST),
    "Storage Commitment N-ACTION": (A.WRITE, R.IMAGING),
}
"""DIMSE service -> the (action, resource) it performs."""

EVENTS: dict[str, tuple[str, ...]] = {
    "EVT_C_STORE": ("C-STORE",),
    "EVT_C_FIND": ("C-FIND", "MWL C-FIND"),
    "EVT_C_GET": ("C-GET",),
    "EVT_C_MOVE": ("C-MOVE",),
    "EVT_N_CREATE": ("MPPS N-CREATE",),
    "EVT_N_SET": ("MPPS N-SET",),
    "EVT_N_ACTION": ("Storage Commitment N-ACTION",),
}
"""pynetdicom intervention event -> the services it carries (C-ECHO carries no data)."""


def permitted(subject: Subject, service: str) -> Decision:
    """Whether ``subject`` may use the DIMSE ``service`` at all (its data reach aside)."""
    return decide(subject, *SERVICES[service])
