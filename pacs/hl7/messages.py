"""HL7 v2 messages: decoding (MSH-18 character set), field access, ACK / NACK.

Acknowledgements follow HL7 v2.5 original mode: ``MSA|AA`` once the message is processed,
``MSA|AE`` (with an ``ERR`` segment naming the field and the HL7 table 0357 error code) for
a message whose content is wrong, ``MSA|AR`` for one that is not processed at all
(unsupported type, unparseable, storage unavailable).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import hl7

from pacs.errors import PacsError

CHARSETS = {
    "": "utf-8",
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "latin-1",
    "8859/5": "iso8859_5",
    "CP1251": "cp1251",
}
"""MSH-18 values (HL7 table 0211, plus CP1251 as Russian RIS send it) -> Python codecs."""

REQUIRED_FIELD_MISSING = "101"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
APPLICATION_INTERNAL_ERROR = "207"


class HL7Error(PacsError):
    """A message that is not accepted: its acknowledgement code (``AE`` or ``AR``), the HL7
    table 0357 error code and the location (``SEG^1^field``) of the offending field."""

    def __init__(self, message: str, code: str, ack: str = "AE", location: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.ack = ack
        self.location = location


@dataclass(frozen=True)
class Received:
    """A decoded message."""

    message: Any  # hl7.Message
    text: str


def decode(raw: bytes) -> Received:
    """Decode and parse one message; raise :class:`HL7Error` (``AR``) if it cannot be."""
    text = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r")
    if not text.startswith(b"MSH") or len(text) < 8:
        raise HL7Error("not an HL7 v2 message (no MSH segment)", "100", "AR")
    header = text.split(b"\r", 1)[0].decode("ascii", errors="replace")
    fields = header.split(header[3])
    charset = fields[17].strip().upper() if len(fields) > 17 else ""
    codec = CHARSETS.get(charset, "utf-8")
    try:
        decoded = text.decode(codec)
    except UnicodeDecodeError:
        decoded = text.decode("latin-1")
    try:
        return Received(hl7.parse(decoded), decoded)
    except Exception as exc:  # python-hl7 raises several types for malformed text
        raise HL7Error(f"cannot parse the message: {exc}", "102", "AR") from None


def field(message: Any, path: str) -> str:
    """The value at ``SEG.field.repetition.component`` (python-hl7 accessor), '' if absent."""
    try:
        return str(message[path]).strip()
    except (KeyError, IndexError, ValueError):
        return ""


def has_segment(message: Any, name: str) -> bool:
    """Whether the message has at least one ``name`` segment."""
    try:
        message.segment(name)
    except KeyError:
        return False
    return True


def message_type(message: Any) -> str:
    """``ORM^O01`` from MSH-9."""
    return f"{field(message, 'MSH.9.1.1')}^{field(message, 'MSH.9.1.2')}"


_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\"))


def escape(text: str) -> str:
    """``text`` with the HL7 delimiters escaped (for MSA-3 and ERR text)."""
    for char, code in _ESCAPES:
        text = text.replace(char, code)
    return text.replace("\r", " ").replace("\n", " ")


def _control_id() -> str:
    return datetime.now().strftime("%Y%m%d%H%M%S%f")


def acknowledgement(received: Received | None, error: HL7Error | None = None) -> str:
    """The ACK of a message (``None``: one that could not be parsed): ``AA`` without
    ``error``, else its code with MSA-3 text and an ERR segment."""
    code = "AA" if error is None else error.ack
    if received is not None:
        ack = str(received.message.create_ack(code, message_id=_control_id())).strip("\r")
        control = field(received.message, "MSH.10")
    else:
        ack = f"MSH|^~\\&|PACS||||{datetime.now():%Y%m%d%H%M%S}||ACK|{_control_id()}|P|2.5"
        control = ""
        ack += f"\rMSA|{code}|"
    if error is None:
        return ack + "\r"
    segments = ack.split("\r")
    segments[1] = f"MSA|{code}|{escape(control)}|{escape(str(error))}"
    err = f"ERR||{error.location}|{error.code}^{escape(str(error))}^HL70357|E"
    return "\r".join([*segments, err]) + "\r"
