"""Per-association speed-ups of pynetdicom's acceptor, applied without changing its protocol.

Storage associations are served by the lean ``acceptor``; the rest (query/retrieve, mixed
proposals) run on pynetdicom, which has two needless costs per message:

- the reactor polls the DIMSE message queue with 1 ms sleeps, so every message waits up to
  a millisecond before it is served;
- the transport reads PDUs 4 KiB at a time, about 130 ``recv`` calls per 512 KiB slice.

Each fix below replaces one method on one association's own objects, so pynetdicom's shared
classes and every other association (e.g. our own SCU) stay untouched.
"""

from __future__ import annotations

import queue
from typing import Any

from pynetdicom.association import Association

IDLE_WAIT = 0.005
"""Longest time the reactor waits for a DIMSE message before its release/abort checks."""

DUL_LOOP_DELAY = 0.0005
"""Sleep of the DUL thread when it has nothing to do (pynetdicom's default: 1 ms)."""


def wake_on_message(assoc: Association) -> None:
    """Serve a DIMSE message as soon as it is complete.

    A non-blocking poll of an empty queue waits on the queue's own condition (up to
    ``IDLE_WAIT``) instead of returning at once into the reactor's 1 ms sleep.
    """
    dimse = assoc.dimse
    messages = dimse.msg_queue

    def get_msg(block: bool = False) -> Any:
        if not block:
            with messages.not_empty:
                if not messages.queue:  # qsize() would take the held mutex again
                    messages.not_empty.wait(IDLE_WAIT)
        try:
            return messages.get(block=block, timeout=dimse.dimse_timeout)
        except queue.Empty:
            return None, None

    dimse.get_msg = get_msg  # type: ignore[method-assign]
    assoc.dul._run_loop_delay = DUL_LOOP_DELAY


def read_whole_pdus(assoc: Association) -> None:
    """Read each PDU with as few ``recv_into`` calls as the kernel allows."""
    transport = assoc.dul.socket
    if transport is None:
        return

    def recv(nr_bytes: int) -> bytearray:
        sock = transport.socket
        buffer = bytearray(nr_bytes)
        read = 0
        with memoryview(buffer) as view:
            while read < nr_bytes and sock is not None:
                count = sock.recv_into(view[read:], nr_bytes - read)
                if not count:  # connection closed: return what arrived, as pynetdicom does
                    break
                read += count
        del buffer[read:]
        return buffer

    transport.recv = recv  # type: ignore[method-assign]


def install(assoc: Association) -> None:
    """Apply every speed-up to a new acceptor association."""
    wake_on_message(assoc)
    read_whole_pdus(assoc)
