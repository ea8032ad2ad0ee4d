"""Helpers of the end-to-end DIMSE tests: DCMTK runners, a recording proxy, index/store views.

``DicomProxy`` sits between a real SCU (storescu) and the archive and records every C-STORE
exactly as it crossed the wire: the data set bytes the sender put in its P-DATA PDUs and the
status (and ErrorComment) the archive answered. DCMTK re-encodes a file's data set when it
sends it (it drops group lengths, rewrites deflate streams, ...), so "stored byte-exact" over
DIMSE means "the stored data set is the byte string that was sent", which only the wire shows.
It can also cut the connection in the middle of a data set, like a sender that vanishes.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import subprocess
import threading
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pynetdicom import AE, _config
from pynetdicom.dsutils import decode
from sqlalchemy import Engine, select

from pacs.config import Settings
from pacs.index.engine import create_index_engine, session_factory
from pacs.index.models import Instance, Series, Study
from pacs.ingest.acceptance import STORAGE_SOP_CLASSES
from pacs.storage import is_valid_uid, open_store
from pacs.storage.base import ObjectStore
from tests.conftest import data_file

PYDICOM_TEST_FILES = Path(str(get_testdata_file("CT_small.dcm"))).parent


def blank_uid_ct() -> Path:
    """The real 20-slice JPEG 2000 CT whose UIDs are blank (test data)."""
    return data_file("totalsegmentator", "example_ct_dicom")


def highdicom_objects() -> Path:
    """highdicom's reference SEG and SR objects (test data)."""
    return data_file("highdicom")


C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
SUCCESS = 0x0000


# ---------------------------------------------------------------- the test corpus


@dataclass(frozen=True)
class CorpusFile:
    """One file of the corpus and what the test expects of it."""

    path: Path
    part10: bool  # 'DICM' prefix and file meta with a Transfer Syntax UID
    uids_valid: bool  # SOP Class/Instance, Study, Series Instance UIDs all valid
    complete: bool  # every top-level element as long as its header says (not truncated)
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str  # from the meta; Implicit VR LE for a bare data set

    @property
    def valid(self) -> bool:
        """A storable Part-10 object of a storage SOP class: what ``pacs import`` must store
        (pacs/ingest/acceptance.py)."""
        storage = self.sop_class_uid in STORAGE_SOP_CLASSES
        return self.part10 and self.uids_valid and self.complete and storage


def _whole(ds: pydicom.Dataset) -> bool:
    """True when no top-level value pydicom read is shorter than its header says."""
    tags = list(ds.keys())  # iterating the Dataset itself would convert the raw elements
    for tag in tags:
        raw = ds.get_item(tag)
        if not isinstance(raw, RawDataElement) or raw.value is None:
            continue
        if raw.length != 0xFFFFFFFF and len(raw.value) != raw.length:
            return False
    return True


def classify(path: Path) -> CorpusFile:
    """Read ``path`` with pydicom and decide whether the archive must accept it."""
    head = path.read_bytes()[:132]
    part10 = len(head) == 132 and head[128:132] == b"DICM"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, force=not part10)
        meta = getattr(ds, "file_meta", None)
        ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
        keywords = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
        uids_valid = all(is_valid_uid(str(ds.get(k, ""))) for k in keywords)
        sop_uid, sop_class = str(ds.get("SOPInstanceUID", "")), str(ds.get("SOPClassUID", ""))
        complete = _whole(ds)  # a File Meta naming other UIDs does not matter (stored, warned)
    except Exception:
        return CorpusFile(path, False, False, False, "", "", "")
    part10 = part10 and is_valid_uid(ts)
    ts = ts or "1.2.840.10008.1.2"
    return CorpusFile(path, part10, uids_valid, complete, sop_uid, sop_class, ts)


def corpus_paths() -> list[Path]:
    """pydicom's test corpus (with subfolders), highdicom's objects and the blank-UID CT."""
    files = sorted(p for p in PYDICOM_TEST_FILES.rglob("*") if p.is_file())
    files += sorted(highdicom_objects().glob("*.dcm"))
    files += sorted(blank_uid_ct().iterdir())
    return files


def dataset_part(data: bytes) -> bytes:
    """The data set of a Part-10 object (after preamble and meta), or ``data`` if bare."""
    if data[128:132] != b"DICM":
        return data
    pos = 132
    while data[pos : pos + 2] == b"\x02\x00":  # file meta elements: explicit VR little endian
        if data[pos + 4 : pos + 6] in (b"OB", b"UN", b"UT", b"UC", b"UR", b"SQ"):
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return data[pos:]


# ---------------------------------------------------------------- DCMTK


def storescu_profile(files: Iterable[CorpusFile], path: Path) -> Path:
    """A storescu ``-xf`` configuration with one presentation context per (class, syntax).

    Plain storescu proposes uncompressed syntaxes only and cannot send a JPEG/RLE file;
    one context per pair makes it send every file in the syntax it is encoded in.
    """
    pairs = sorted({(f.sop_class_uid, f.transfer_syntax_uid) for f in files if f.sop_class_uid})
    syntaxes = sorted({ts for _, ts in pairs})
    assert len(pairs) <= 128, "storescu proposes at most 128 presentation contexts"
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Corpus]"]
    for i, (sop_class, ts) in enumerate(pairs, 1):
        lines.append(f"PresentationContext{i} = {sop_class}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", "[Corpus]", "PresentationContexts = Corpus"]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class StorescuResult:
    """What one storescu run said, per file."""

    returncode: int
    output: str
    message_ids: dict[Path, int] = field(default_factory=dict)  # files it sent
    statuses: dict[Path, str] = field(default_factory=dict)  # "Success", "Error: ..."
    not_sent: dict[Path, str] = field(default_factory=dict)  # files it refused, with why

    @property
    def succeeded(self) -> set[Path]:
        """Files acknowledged with success."""
        return {p for p, s in self.statuses.items() if s == "Success"}


_SENDING = re.compile(r"^I: Sending file: (.+)$")
_REQUEST = re.compile(r"^I: Sending Store Request \(MsgID (\d+)")
_RESPONSE = re.compile(r"^I: Received Store Response \((.*)\)$")
_IGNORED = re.compile(r"^W: (.*) in file: (.+), ignoring file$")


def parse_storescu(returncode: int, output: str) -> StorescuResult:
    """Parse ``storescu -v`` output into per-file message ids and statuses."""
    result = StorescuResult(returncode, output)
    current: Path | None = None
    for line in output.splitlines():
        if m := _SENDING.match(line):
            current = Path(m.group(1))
        elif (m := _REQUEST.match(line)) and current is not None:
            result.message_ids[current] = int(m.group(1))
        elif (m := _RESPONSE.match(line)) and current is not None:
            result.statuses[current] = m.group(1)
            current = None
        elif m := _IGNORED.match(line):
            result.not_sent[Path(m.group(2))] = m.group(1)
        elif line.startswith("E: ") and current is not None and current not in result.message_ids:
            result.not_sent.setdefault(current, line[3:])  # it cannot read or propose the file
    for path in result.message_ids.keys() - result.statuses.keys():
        result.not_sent.setdefault(path, "no response")
    return result


def storescu(
    port: int,
    inputs: Iterable[str | Path],
    *options: str,
    aet: str = "STORESCU",
    timeout: float = 120,
) -> StorescuResult:
    """Run ``storescu -v -nh`` (one association, go on after a failure) and parse it."""
    args = ["storescu", "-v", "-nh", "-aet", aet, "-aec", "PACS", *options]
    args += ["127.0.0.1", str(port), *map(str, inputs)]
    run = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    return parse_storescu(run.returncode, run.stdout + run.stderr)


def echoscu(
    port: int, aet: str = "ECHOSCU", timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``echoscu`` against the archive."""
    return subprocess.run(
        ["echoscu", "-aet", aet, "-aec", "PACS", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---------------------------------------------------------------- a recording TCP proxy


@dataclass
class StoreExchange:
    """One C-STORE as seen on the wire."""

    message_id: int
    sop_instance_uid: str
    dataset: bytes = b""
    complete: bool = False  # the last data set fragment was forwarded
    status: int | None = None
    error_comment: str = ""


class _PduReader:
    """Reassembles the DIMSE messages of one direction of an association."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.command = bytearray()
        self.data = bytearray()
        self.commands: list[Any] = []  # decoded command sets, in order
        self.datasets: list[bytes] = []  # complete data sets, in order
        self.partial_data = 0  # bytes of the data set being received
        self.pdu_types: list[int] = []  # every PDU type seen (0x03 A-ASSOCIATE-RJ, 0x07 A-ABORT)

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        while len(self.buffer) >= 6:
            pdu_type = self.buffer[0]
            (length,) = struct.unpack(">I", self.buffer[2:6])
            if len(self.buffer) < 6 + length:
                return
            body = bytes(self.buffer[6 : 6 + length])
            del self.buffer[: 6 + length]
            self.pdu_types.append(pdu_type)
            if pdu_type == 0x04:  # P-DATA-TF
                self._p_data(body)

    def _p_data(self, body: bytes) -> None:
        offset = 0
        while offset + 6 <= len(body):
            (length,) = struct.unpack(">I", body[offset : offset + 4])
            header = body[offset + 5]
            value = body[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if header & 0x01:
                self.command += value
                if header & 0x02:
                    self.commands.append(decode(BytesIO(bytes(self.command)), True, True))
                    self.command.clear()
            else:
                self.data += value
                self.partial_data = len(self.data)
                if header & 0x02:
                    self.datasets.append(bytes(self.data))
                    self.data.clear()
                    self.partial_data = 0


class DicomProxy:
    """A TCP relay to the archive that records C-STOREs and can cut a connection.

    ``cut_message``/``cut_after``: once the data set of C-STORE number ``cut_message`` (1-based,
    per connection) has more than ``cut_after`` bytes forwarded, both sockets are reset.
    """

    def __init__(
        self, target_port: int, cut_message: int | None = None, cut_after: int = 0
    ) -> None:
        self.target_port = target_port
        self.cut_message = cut_message
        self.cut_after = cut_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.exchanges: list[StoreExchange] = []
        self.from_archive: list[_PduReader] = []  # what the archive sent, per connection
        self.cut = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> DicomProxy:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._closed = True
        self.listener.close()
        for thread in self._threads[1:]:
            thread.join(timeout=30)

    def archive_pdu_types(self) -> list[int]:
        """Types of the PDUs the archive sent, over all connections."""
        return [t for reader in self.from_archive for t in reader.pdu_types]

    def by_message_id(self) -> dict[int, StoreExchange]:
        """Exchanges of a single-association run, keyed by message id."""
        return {e.message_id: e for e in self.exchanges}

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            requests, responses = _PduReader(), _PduReader()
            self.from_archive.append(responses)
            exchanges: list[StoreExchange] = []
            up = threading.Thread(
                target=self._relay_up, args=(client, server, requests, exchanges), daemon=True
            )
            down = threading.Thread(
                target=self._relay_down, args=(server, client, responses, exchanges), daemon=True
            )
            self._threads += [up, down]
            up.start()
            down.start()

    def _relay_up(
        self,
        src: socket.socket,
        dst: socket.socket,
        reader: _PduReader,
        exchanges: list[StoreExchange],
    ) -> None:
        try:
            while chunk := src.recv(65536):
                reader.feed(chunk)
                with self._lock:
                    for command in reader.commands[len(exchanges) :]:
                        if command.CommandField == C_STORE_RQ:
                            exchange = StoreExchange(
                                int(command.MessageID), str(command.AffectedSOPInstanceUID)
                            )
                            exchanges.append(exchange)
                            self.exchanges.append(exchange)
                    for exchange, data in zip(exchanges, reader.datasets, strict=False):
                        if not exchange.complete:
                            exchange.dataset, exchange.complete = data, True
                cutting = (
                    self.cut_message is not None
                    and len(exchanges) == self.cut_message
                    and not exchanges[-1].complete
                    and reader.partial_data > self.cut_after
                )
                dst.sendall(chunk)
                if cutting:
                    self.cut.set()
                    _reset(dst)
                    _reset(src)
                    return
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def _relay_down(
        self,
        src: socket.socket,
        dst: socket.socket,
        reader: _PduReader,
        exchanges: list[StoreExchange],
    ) -> None:
        seen = 0
        try:
            while chunk := src.recv(65536):
                reader.feed(chunk)
                with self._lock:
                    by_id = {e.message_id: e for e in exchanges}
                    for command in reader.commands[seen:]:
                        seen += 1
                        if command.CommandField != C_STORE_RSP:
                            continue
                        exchange = by_id.get(int(command.MessageIDBeingRespondedTo))
                        if exchange is not None:
                            exchange.status = int(command.Status)
                            exchange.error_comment = str(command.get("ErrorComment", ""))
                dst.sendall(chunk)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): the peer sees the connection drop, not a clean end.

    ``shutdown(SHUT_RD)`` first wakes the relay thread blocked in ``recv`` on this socket.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    sock.close()


# ---------------------------------------------------------------- index and object store


@dataclass
class ArchiveView:
    """A read-only look at an archive's index and object store."""

    settings: Settings
    engine: Engine = field(init=False)
    store: ObjectStore = field(init=False)

    def __post_init__(self) -> None:
        self.engine = create_index_engine(self.settings)
        self.store = open_store(self.settings)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()

    def instances(self) -> dict[str, Instance]:
        """Every instance row by SOP Instance UID."""
        with session_factory(self.engine)() as session:
            return {row.sop_instance_uid: row for row in session.scalars(select(Instance))}

    def studies(self) -> dict[str, Study]:
        """Every study row by Study Instance UID."""
        with session_factory(self.engine)() as session:
            return {row.study_instance_uid: row for row in session.scalars(select(Study))}

    def series(self) -> dict[str, Series]:
        """Every series row by Series Instance UID."""
        with session_factory(self.engine)() as session:
            return {row.series_instance_uid: row for row in session.scalars(select(Series))}

    def object_keys(self) -> set[str]:
        """Every key in the object store (temporary files included: there must be none)."""
        root = getattr(self.store, "root", None)
        if root is not None:
            return {p.relative_to(root).as_posix() for p in Path(root).rglob("*") if p.is_file()}
        client, bucket, prefix = self.store.client, self.store.bucket, self.store.prefix  # type: ignore[attr-defined]
        names = client.list_objects(bucket, prefix=prefix, recursive=True)
        return {str(o.object_name)[len(prefix) :] for o in names}

    def read(self, sop_instance_uid: str) -> bytes:
        """The stored object of an instance."""
        return self.store.get(self.instances()[sop_instance_uid].object_key)

    def assert_consistent(self, orphans_allowed: bool = False) -> dict[str, Instance]:
        """Every row points to a complete object (size, digest); no object without a row."""
        import hashlib

        rows = self.instances()
        keys = self.object_keys()
        for uid, row in rows.items():
            assert row.object_key in keys, f"index row {uid} points at a missing object"
            data = self.store.get(row.object_key)
            assert len(data) == row.size_bytes, f"{uid}: stored size differs from the index"
            assert hashlib.sha256(data).hexdigest() == row.sha256, f"{uid}: digest differs"
        if not orphans_allowed:
            unindexed = keys - {row.object_key for row in rows.values()}
            assert not unindexed, f"objects without an index row: {sorted(unindexed)[:5]}"
        return rows


@contextlib.contextmanager
def archive_view(settings: Settings) -> Iterator[ArchiveView]:
    """An ``ArchiveView`` that is closed afterwards."""
    view = ArchiveView(settings)
    try:
        yield view
    finally:
        view.close()


def wait_until(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def port_is_closed(port: int) -> bool:
    """True when nothing accepts connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) != 0


# ---------------------------------------------------------------- pynetdicom as the SCU


@contextlib.contextmanager
def raw_file_sending() -> Iterator[None]:
    """Let pynetdicom send a file's data set bytes as they are (never decoded or re-encoded)."""
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous


def status_of(response: Any) -> tuple[int, str]:
    """(Status, ErrorComment) of a C-STORE response; (-1, '') when none came back."""
    if response is None or "Status" not in response:
        return -1, ""
    return int(response.Status), str(response.get("ErrorComment", ""))


def pynetdicom_store(
    port: int,
    items: Iterable[Path | pydicom.Dataset],
    contexts: Iterable[tuple[str, str]],
    aet: str = "PYNETDICOM",
) -> list[tuple[int, str]]:
    """C-STORE files (sent raw) or data sets in one association; (status, comment) of each."""
    ae = AE(ae_title=aet)
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established, "association with the archive failed"
    try:
        with raw_file_sending():
            return [status_of(assoc.send_c_store(item)) for item in items]
    finally:
        assoc.release()


# ---------------------------------------------------------------- synthetic objects


def part10_bytes(ds: pydicom.Dataset) -> bytes:
    """``ds`` written as a Part-10 file."""
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def write_part10(path: Path, ds: pydicom.Dataset) -> Path:
    """Write ``ds`` to ``path`` as a Part-10 file; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(part10_bytes(ds))
    return path
