"""Peak memory of a server's whole process tree, sampled from /proc in a background thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (via /proc/PID/task/TID/children)."""
    seen: list[int] = []
    stack = [root]
    while stack:
        pid = stack.pop()
        seen.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{pid}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            stack.extend(int(c) for c in children if int(c) not in seen)
    return seen


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages divided among sharers) of one process."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


class TreeMemory:
    """Samples the summed RSS and PSS of a process tree until stopped; keeps the peaks."""

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss = 0
        self.peak_pss = 0
        self.max_processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)

    def sample(self) -> None:
        """Take one sample now."""
        pids = process_tree(self.root)
        self.max_processes = max(self.max_processes, len(pids))
        self.peak_rss = max(self.peak_rss, sum(rss_bytes(p) for p in pids))
        self.peak_pss = max(self.peak_pss, sum(pss_bytes(p) for p in pids))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
