"""Storage SCU: send stored objects to a remote AE in one association (``pacs send``, C-MOVE).

Each object's data set is sent exactly as stored when the peer accepts its transfer syntax.
When it does not, but accepts Explicit or Implicit VR Little Endian for the SOP class, the
object is decoded with pydicom (decompressing pixel data where needed) and sent in that
syntax; otherwise that object is counted as failed. Nothing here logs patient identifiers.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from io import BytesIO
from typing import Protocol, cast

from pydicom import dcmread
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import PresentationContext

from pacs.config import Settings
from pacs.dimse.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from pacs.dimse.pynetdicom_internals import exchange_c_store
from pacs.dimse.status import STORE_WARNINGS, SUCCESS
from pacs.dimse.tls import peer_tls_args
from pacs.errors import PacsError

logger = logging.getLogger(__name__)

NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
CARRIERS: dict[str, tuple[str, ...]] = {
    "1.2.840.10008.1.2.4.90": ("1.2.840.10008.1.2.4.91",),  # J2K lossless in J2K
    "1.2.840.10008.1.2.4.92": ("1.2.840.10008.1.2.4.93",),  # J2K Part 2 likewise
    "1.2.840.10008.1.2.4.201": ("1.2.840.10008.1.2.4.203",),  # HTJ2K lossless in HTJ2K
    "1.2.840.10008.1.2.4.202": ("1.2.840.10008.1.2.4.203",),  # HTJ2K RPCL in HTJ2K
    "1.2.840.10008.1.2.4.80": ("1.2.840.10008.1.2.4.81",),  # JPEG-LS lossless in near-lossless
    "1.2.840.10008.1.2.4.70": ("1.2.840.10008.1.2.4.57",),  # JPEG process 14 SV1 in process 14
}
"""Transfer syntaxes whose encoding also carries the stored bytes of another unchanged (a
lossless bitstream is a valid one of the syntax that allows lossless or lossy): an object
stored in a key is sent as it is on a context of one of its carriers."""
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255


class SendError(PacsError):
    """The association could not be set up (peer unreachable, rejected, too many contexts)."""


class Peer(Protocol):
    """Where to send: anything with a title, host and port (e.g. a registry entry)."""

    @property
    def title(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...


@dataclass(frozen=True, slots=True)
class StoreItem:
    """One object to send; ``load`` returns its stored Part-10 bytes."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    load: Callable[[], bytes]


class Outcome(StrEnum):
    """How one C-STORE sub-operation ended."""

    SENT = "sent"
    WARNING = "warning"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class ItemResult:
    """The result of sending one object (``status`` is -1 when no response came)."""

    sop_instance_uid: str
    outcome: Outcome
    status: int
    transfer_syntax_uid: str = ""
    transcoded: bool = False
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MoveOriginator:
    """The C-MOVE on whose behalf the C-STOREs are sent (PS3.7 9.3.1.1)."""

    ae_title: str
    message_id: int


@dataclass(slots=True)
class SendSummary:
    """Counts over a whole send, plus the per-object results (in sending order)."""

    total: int = 0
    results: list[ItemResult] = field(default_factory=list)
    cancelled: bool = False

    @property
    def remaining(self) -> int:
        """Objects not attempted (the send was cancelled or the association ended)."""
        return self.total - len(self.results)

    def count(self, outcome: Outcome) -> int:
        """How many objects ended with ``outcome``."""
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def transcoded(self) -> int:
        """How many objects were sent in another transfer syntax than stored."""
        return sum(1 for r in self.results if r.transcoded and r.outcome is not Outcome.FAILED)


def split_part10(data: bytes) -> bytes:
    """The data set of a Part-10 object (after preamble and File Meta group), unchanged."""
    if data[128:132] != b"DICM":
        raise ValueError("not a Part-10 object (no DICM prefix)")
    pos = 132
    while data[pos : pos + 2] == b"\x02\x00":  # group 0002 is explicit VR little endian
        if data[pos + 4 : pos + 6] in (b"OB", b"OW", b"UN", b"UT", b"UC", b"UR", b"SQ"):
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return data[pos:]


def decodable(transfer_syntax: str) -> bool:
    """True when an object stored in ``transfer_syntax`` can be re-encoded in a native
    syntax: it is not encapsulated, or pydicom has a working decoder for it."""
    try:
        uid = UID(transfer_syntax)
        return not uid.is_compressed or bool(get_decoder(uid).is_available)
    except (NotImplementedError, ValueError):
        return False


def sends_as_stored(syntax: str, stored: str) -> bool:
    """True when an object stored in ``stored`` goes out in ``syntax`` byte for byte."""
    return syntax == stored or syntax in CARRIERS.get(stored, ())


def requested_contexts(items: Iterable[StoreItem]) -> list[PresentationContext]:
    """Per SOP class: one context per stored transfer syntax, then Explicit and Implicit VR
    Little Endian each alone (so the peer can accept any of them independently) when an
    object of the class can be sent in them (none is proposed that could not be served)."""
    wanted: dict[str, list[str]] = {}
    native: set[str] = set()
    for item in items:
        syntaxes = wanted.setdefault(item.sop_class_uid, [])
        if item.transfer_syntax_uid not in syntaxes:
            syntaxes.append(item.transfer_syntax_uid)
            if decodable(item.transfer_syntax_uid):
                native.add(item.sop_class_uid)
    contexts = []
    for sop_class, syntaxes in wanted.items():
        extra = [s for s in NATIVE_SYNTAXES if s not in syntaxes] if sop_class in native else []
        for syntax in [*syntaxes, *extra]:
            contexts.append(build_context(sop_class, [syntax]))
    if len(contexts) > MAX_CONTEXTS:
        raise SendError(
            f"{len(contexts)} presentation contexts needed, at most {MAX_CONTEXTS} per association"
        )
    return contexts


def choose_syntax(accepted: dict[str, list[str]], item: StoreItem) -> str:
    """The accepted transfer syntax to send ``item`` in: the stored one (or one of its
    :data:`CARRIERS`) if the peer accepted it for the SOP class, else Explicit, else
    Implicit VR Little Endian when the object can be decoded; "" if none."""
    syntaxes = accepted.get(item.sop_class_uid, [])
    stored = item.transfer_syntax_uid
    for syntax in (stored, *CARRIERS.get(stored, ())):
        if syntax in syntaxes:
            return syntax
    if decodable(stored):
        for syntax in NATIVE_SYNTAXES:
            if syntax in syntaxes:
                return syntax
    return ""


SENDING_PREFERENCE = (*NATIVE_SYNTAXES, *(c for carried in CARRIERS.values() for c in carried))
"""Transfer syntaxes the archive prefers, in this order, for a presentation context in which
it sends (C-GET with SCP/SCU role selection) and the requestor offers several: any object
can be sent natively (decoded when needed), and a carrier serves more stored objects as
they are than the syntax it carries."""


def sending_syntax(offered: Sequence[str], supported: Sequence[str]) -> str | None:
    """The transfer syntax to accept for a context in which the archive sends: the first of
    :data:`SENDING_PREFERENCE` offered, else the first offered it supports."""
    for syntax in (*SENDING_PREFERENCE, *offered):
        if syntax in offered and syntax in supported:
            return syntax
    return None


def transcode(data: bytes, syntax: str) -> bytes:
    """Decode a Part-10 object and encode its data set in a native ``syntax``."""
    ds = dcmread(BytesIO(data))
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)  # the same instance, only re-encoded
    target = UID(syntax)
    encoded = encode(ds, target.is_implicit_VR, target.is_little_endian, target.is_deflated)
    if encoded is None:
        raise ValueError(f"cannot encode the data set in {target.name}")
    return encoded


def _classify(status: int) -> Outcome:
    if status == SUCCESS:
        return Outcome.SENT
    if status in STORE_WARNINGS:
        return Outcome.WARNING
    return Outcome.FAILED


def send_dataset(
    assoc: Association,
    context_id: int,
    item: StoreItem,
    dataset: bytes,
    message_id: int,
    originator: MoveOriginator | None,
) -> int:
    """Send one C-STORE-RQ carrying ``dataset`` bytes as they are; the response status.

    ``Association.send_c_store`` would decode and re-encode a data set given in memory;
    this builds the request primitive itself so the stored bytes go out untouched.
    """
    req = C_STORE()
    req.MessageID = message_id
    req.Priority = 0x0002  # low, as pynetdicom's default
    req.AffectedSOPClassUID = UID(item.sop_class_uid)
    req.AffectedSOPInstanceUID = UID(item.sop_instance_uid)
    req.DataSet = BytesIO(dataset)
    if originator is not None:
        req.MoveOriginatorApplicationEntityTitle = originator.ae_title
        req.MoveOriginatorMessageID = originator.message_id
    status = exchange_c_store(assoc, req, context_id)
    return int(status.Status) if status is not None and "Status" in status else -1


def _send_one(
    assoc: Association,
    contexts: dict[tuple[str, str], int],
    accepted: dict[str, list[str]],
    item: StoreItem,
    message_id: int,
    originator: MoveOriginator | None,
) -> ItemResult:
    syntax = choose_syntax(accepted, item)
    uid = item.sop_instance_uid
    if not syntax:
        return ItemResult(uid, Outcome.FAILED, -1, reason="no accepted presentation context")
    try:
        data = item.load()
        transcoded = not sends_as_stored(syntax, item.transfer_syntax_uid)
        dataset = transcode(data, syntax) if transcoded else split_part10(data)
    except Exception as exc:  # a decoder or store failure fails this object only
        logger.warning("cannot prepare instance %s: %s", uid, type(exc).__name__)
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        return ItemResult(uid, Outcome.FAILED, -1, syntax, reason=f"cannot prepare: {detail}")
    if not assoc.is_established:
        return ItemResult(uid, Outcome.FAILED, -1, syntax, transcoded, "association ended")
    context_id = contexts[(item.sop_class_uid, syntax)]
    status = send_dataset(assoc, context_id, item, dataset, message_id, originator)
    outcome = _classify(status)
    reason = "" if outcome is Outcome.SENT else f"status 0x{status & 0xFFFF:04X}"
    if status == -1:
        reason = "no response (association aborted or timed out)"
    return ItemResult(uid, outcome, status, syntax, transcoded, reason)


def archive_ae(settings: Settings) -> AE:
    """An AE with the archive's identity (title, implementation class UID and version name)
    and its network, DIMSE and ACSE timeouts; the acceptor and the requestor start from it."""
    ae = AE(ae_title=settings.ae_title)
    ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ae.network_timeout = settings.network_timeout
    ae.dimse_timeout = settings.dimse_timeout
    ae.acse_timeout = settings.acse_timeout
    return ae


def build_scu(settings: Settings, items: Sequence[StoreItem]) -> AE:
    """A requestor AE with the archive's identity and the contexts ``items`` need."""
    ae = archive_ae(settings)
    ae.requested_contexts = requested_contexts(items)
    return ae


def send(
    settings: Settings,
    peer: Peer,
    items: Sequence[StoreItem],
    on_result: Callable[[ItemResult], None] | None = None,
    originator: MoveOriginator | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> SendSummary:
    """C-STORE every item to ``peer`` in one association (over TLS when the peer is one of
    ``dicom_tls_peers``); never raises for one object.

    ``on_result`` is called after each object; ``cancelled`` is polled before each one and
    stops the send when true (C-CANCEL of a C-MOVE). Raises :class:`SendError` when the
    association cannot be established.
    """
    summary = SendSummary(total=len(items))
    if not items:
        return summary
    ae = build_scu(settings, items)
    tls_args = peer_tls_args(settings, peer.title, peer.host)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.title, tls_args=tls_args)
    if not assoc.is_established:
        raise SendError(
            f"association with {peer.title} at {peer.host}:{peer.port} "
            f"{'rejected' if assoc.is_rejected else 'failed'}"
        )
    accepted: dict[str, list[str]] = {}
    contexts: dict[tuple[str, str], int] = {}
    for cx in assoc.accepted_contexts:
        syntax = str(cx.transfer_syntax[0])
        accepted.setdefault(str(cx.abstract_syntax), []).append(syntax)
        contexts.setdefault((str(cx.abstract_syntax), syntax), cast(int, cx.context_id))
    try:
        for number, item in enumerate(items, start=1):
            if cancelled is not None and cancelled():
                summary.cancelled = True
                break
            message_id = (number - 1) % 0xFFFF + 1
            result = _send_one(assoc, contexts, accepted, item, message_id, originator)
            summary.results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if assoc.is_established:
            assoc.release()
    logger.info(
        "C-STORE to %s: %d sent, %d warning, %d failed",
        peer.title,
        summary.count(Outcome.SENT),
        summary.count(Outcome.WARNING),
        summary.count(Outcome.FAILED),
    )
    return summary
