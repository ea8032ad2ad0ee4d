"""The consent lists a request resolves (``pacs.security.resolved``): a Consent written or
withdrawn changes the next answer (the cache follows the FHIR store's history), and a set
too large to list falls back to the subquery."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.orm import Session

from pacs.fhir.store import FhirStore
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from pacs.security import resolved
from pacs.security.resolved import consent_lists
from tests.conftest import Backend


def _consent(patient: str, actor: str | None) -> dict[str, Any]:
    provision: dict[str, Any] = {"type": "deny"}
    if actor:
        provision["actor"] = [
            {"role": {"coding": [{"code": "IRCP"}]}, "reference": {"reference": actor}}
        ]
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"code": "patient-privacy"}]},
        "category": [{"coding": [{"code": "INFA"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "provision": provision,
    }


def test_lists_follow_consent_writes(db_backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_index_engine(db_backend.settings)
    try:
        upgrade(engine)
        store = FhirStore(engine)
        store.update("Organization", "OrgA", {"resourceType": "Organization", "id": "OrgA"})
        one, two = (
            store.create(
                {"resourceType": "Patient", "identifier": [{"system": "urn:pid", "value": v}]}
            )
            for v in ("P-1", "P-2")
        )
        with Session(engine) as session:
            assert consent_lists(session, "OrgA") == ((), ())
        refusal = store.create(_consent(one["id"], "Organization/OrgA"))
        store.create(_consent(two["id"], None))
        with Session(engine) as session:
            assert consent_lists(session, "OrgA") == (("P-1",), ("P-2",))
            assert consent_lists(session, "OrgB") == ((), ("P-2",))
        store.update("Consent", refusal["id"], {**refusal, "status": "inactive"})
        with Session(engine) as session:
            assert consent_lists(session, "OrgA") == ((), ("P-2",))
        monkeypatch.setattr(resolved, "MAX_LISTED", 0)
        store.create(_consent(one["id"], "Organization/OrgA"))
        with Session(engine) as session:
            assert consent_lists(session, "OrgA") == (None, None)
    finally:
        engine.dispose()
