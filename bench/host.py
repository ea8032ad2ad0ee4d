"""Facts about the benchmark machine and the archive's checkout, for the reports."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``platform.processor()`` without one)."""
    cpuinfo = Path("/proc/cpuinfo").read_text()
    return next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )


def ram_gib() -> float:
    """Total memory in GiB from /proc/meminfo."""
    meminfo = Path("/proc/meminfo").read_text().split()
    return int(meminfo[meminfo.index("MemTotal:") + 1]) / 1024**2


def git_version() -> str:
    """``git describe --always --dirty`` of the archive's working tree."""
    return subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def loadavg() -> str:
    """The 1/5/15-minute load averages."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
