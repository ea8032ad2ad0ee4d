"""Child processes of the test suite: each in a process group of its own, always stopped.

Every server a test starts (``pacs serve``, ``pacs worker``, storescp, Orthanc, storescu
clients that run alongside a test) goes through :func:`spawn`, which starts it as the leader
of a new session. :func:`stop` ends it and everything it started (``pacs serve`` runs its
DICOM workers as children); an ``atexit`` hook stops whatever a crashed fixture left
registered, and :func:`leftover_children` lets the session-end check find any descendant of
the test run that is still alive.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_RUNNING: dict[int, subprocess.Popen[Any]] = {}
_SESSIONS: set[int] = set()  # every session spawn() started, stopped or not

# Python's own helper for multiprocessing (spawn start method); it exits with the interpreter.
_INTERPRETER_HELPERS = ("multiprocessing.resource_tracker",)


def spawn(args: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **popen)`` as the leader of a new process group."""
    process: subprocess.Popen[Any] = subprocess.Popen(args, start_new_session=True, **popen)
    _RUNNING[process.pid] = process
    _SESSIONS.add(process.pid)
    return process


def stop(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM to the process, SIGKILL to its whole group after ``timeout`` seconds (or at
    once if it has exited), then reap it."""
    try:
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        # its children (DICOM workers, ...) may outlive it; the group still names them
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        _wait_for_group_exit(process.pid, timeout=5)
    finally:
        _RUNNING.pop(process.pid, None)


def _wait_for_group_exit(pgid: int, timeout: float) -> None:
    """Wait until no live process is left in group ``pgid`` (SIGKILL takes a moment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any((s := _stat(p)) and s[2] == pgid and s[1] != "Z" for p in _pids()):
            return
        time.sleep(0.02)


@atexit.register
def stop_all() -> None:
    """Stop every process that :func:`spawn` started and nobody stopped."""
    for process in list(_RUNNING.values()):
        stop(process, timeout=5)


def _stat(pid: int) -> tuple[int, str, int, int] | None:
    """(parent pid, state letter, process group, session) of ``pid`` from /proc, or None once
    it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[1]), fields[0], int(fields[2]), int(fields[3])


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def children_of(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    return [p for p in _pids() if (stat := _stat(p)) and stat[0] == pid]


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z"


def command_line(pid: int) -> str:
    """The command line of ``pid`` (empty once it has gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def descendants_of(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, their children, ...)."""
    found, frontier = [], [pid]
    while frontier:
        children = [c for parent in frontier for c in children_of(parent) if pid_alive(c)]
        found += children
        frontier = children
    return found


def _orphans_of_our_sessions() -> list[int]:
    """Live members of the sessions :func:`spawn` started (orphans whose leader has died are
    adopted by init, so they are no descendants any more). The pid of a reaped leader in use
    again belongs to someone else: Linux reuses a session id only once its session is empty."""
    ours = {sid for sid in _SESSIONS if sid in _RUNNING or _stat(sid) is None}
    return [p for p in _pids() if (stat := _stat(p)) and stat[3] in ours and stat[1] != "Z"]


def leftover_children() -> dict[int, str]:
    """Live descendants of this process and orphans of the sessions it started (pid -> command
    line), Python's own helpers excepted."""
    pids = set(descendants_of(os.getpid())) | set(_orphans_of_our_sessions())
    left = {pid: command_line(pid) for pid in sorted(pids)}
    return {
        pid: cmd
        for pid, cmd in left.items()
        if not any(helper in cmd for helper in _INTERPRETER_HELPERS)
    }


def kill(pids: Sequence[int]) -> None:
    """SIGKILL these process ids (descendants of the test run), ignoring the gone ones."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
