"""MLLP listener (HL7 v2 Minimal Lower Layer Protocol): ``<VT> message <FS><CR>`` frames in,
one acknowledgement frame out per message, on ``PACS_HL7_PORT`` (``pacs serve``)."""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""A frame longer than this closes the connection."""


def frame(message: str | bytes, encoding: str = "utf-8") -> bytes:
    """``message`` in an MLLP frame."""
    data = message.encode(encoding) if isinstance(message, str) else message
    return START_BLOCK + data + END_BLOCK


def read_frames(sock: socket.socket) -> Callable[[], bytes | None]:
    """A reader of the messages arriving on ``sock``: the next message, None at the end."""
    buffer = bytearray()

    def next_message() -> bytes | None:
        while True:
            start = buffer.find(START_BLOCK)
            end = buffer.find(END_BLOCK, start + 1) if start >= 0 else -1
            if start >= 0 and end >= 0:
                message = bytes(buffer[start + 1 : end])
                del buffer[: end + len(END_BLOCK)]
                return message
            if len(buffer) > MAX_MESSAGE_BYTES:
                raise ValueError("MLLP frame larger than the limit")
            chunk = sock.recv(65536)
            if not chunk:
                return None
            buffer.extend(chunk)

    return next_message


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(self.server.idle_timeout)
        next_message = read_frames(sock)
        try:
            while (message := next_message()) is not None:
                sock.sendall(frame(self.server.answer(message)))
        except (OSError, ValueError) as exc:
            log.warning("MLLP connection from %s closed: %s", self.client_address[0], exc)


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], answer: Callable[[bytes], str], idle_timeout: float
    ) -> None:
        super().__init__(address, _Handler)
        self.answer = answer
        self.idle_timeout = idle_timeout


class MLLPListener:
    """Serves MLLP connections on a thread; ``answer(message) -> acknowledgement``."""

    def __init__(
        self, host: str, port: int, answer: Callable[[bytes], str], idle_timeout: float = 300
    ) -> None:
        self._server = _Server((host, port), answer, idle_timeout)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="hl7-mllp", daemon=True
        )

    def start(self) -> None:
        """Start accepting connections."""
        self._thread.start()
        log.info("HL7 MLLP listening on port %d", self.port)

    def stop(self) -> None:
        """Stop accepting and close the listening socket."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
