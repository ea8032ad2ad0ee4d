"""One HL7 v2 order in, one acknowledgement out: ``AA`` only once the ServiceRequest is
committed (``pacs.worklist.orders.store_order``), ``AE``/``AR`` with an ERR segment otherwise.
Never raises; never logs patient data (only the message type and control ID)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from pacs.config import Settings
from pacs.fhir.errors import FhirError
from pacs.fhir.store import FhirStore
from pacs.hl7.messages import (
    APPLICATION_INTERNAL_ERROR,
    HL7Error,
    Received,
    acknowledgement,
    decode,
    field,
    message_type,
)
from pacs.hl7.mllp import MLLPListener
from pacs.hl7.orders import order_of
from pacs.index.engine import create_index_engine
from pacs.worklist.orders import OrderError, StoredOrder, store_order

log = logging.getLogger(__name__)


def store_message(store: FhirStore, received: Received) -> StoredOrder:
    """Store the order of a decoded message; raise :class:`HL7Error` when it is refused."""
    order = order_of(received.message)
    try:
        return store_order(store, order.item, order.status)
    except (OrderError, FhirError) as exc:
        raise HL7Error(f"order not stored: {exc}", "102", "AE") from None


def receive(store: FhirStore, raw: bytes) -> str:
    """The acknowledgement of ``raw`` after storing its order (if it is one)."""
    try:
        received = decode(raw)
    except HL7Error as exc:
        log.warning("HL7 message refused: %s", exc)
        return acknowledgement(None, exc)
    kind, control = message_type(received.message), field(received.message, "MSH.10")
    try:
        stored = store_message(store, received)
    except HL7Error as exc:
        log.warning("HL7 %s %s refused (%s): %s", kind, control, exc.ack, exc)
        return acknowledgement(received, exc)
    except Exception:
        log.exception("HL7 %s %s not stored", kind, control)
        error = HL7Error("the archive could not store the order", APPLICATION_INTERNAL_ERROR, "AR")
        return acknowledgement(received, error)
    log.info(
        "HL7 %s %s stored as ServiceRequest/%s (%s)",
        kind,
        control,
        stored.service_request["id"],
        "created" if stored.created else "updated",
    )
    return acknowledgement(received)


def start_hl7_listener(settings: Settings) -> Callable[[], None]:
    """Start the MLLP listener on ``settings.hl7_port`` (on ``settings.host``); the function
    that stops it."""
    engine = create_index_engine(settings)
    store = FhirStore(engine)
    listener = MLLPListener(settings.host, settings.hl7_port, lambda raw: receive(store, raw))
    listener.start()

    def stop() -> None:
        listener.stop()
        engine.dispose()

    return stop
