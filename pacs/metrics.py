"""Prometheus metrics of the archive.

Each DICOM server process is a separate OS process, so metrics use prometheus_client's
multiprocess mode when ``PROMETHEUS_MULTIPROC_DIR`` is set (``pacs serve`` sets it).
"""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram

INSTANCES_RECEIVED = Counter(
    "pacs_instances_received_total",
    "Objects offered to ingest, by channel and outcome.",
    ["channel", "status"],
)
BYTES_RECEIVED = Counter(
    "pacs_bytes_received_total", "Bytes of objects stored (new or replaced).", ["channel"]
)
REJECTED = Counter(
    "pacs_instances_rejected_total", "Objects refused (any non-success outcome).", ["channel"]
)
INGEST_SECONDS = Histogram(
    "pacs_ingest_seconds",
    "Time from a complete object to its durable, indexed storage.",
    ["channel"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ASSOCIATIONS = Counter(
    "pacs_associations_total", "DICOM associations requested, by result.", ["result"]
)


def record_ingest(channel: str, status: str, size: int, started: float) -> None:
    """Count one ingest call and its latency."""
    INSTANCES_RECEIVED.labels(channel, status).inc()
    INGEST_SECONDS.labels(channel).observe(time.perf_counter() - started)
    if status in {"stored", "replaced"}:
        BYTES_RECEIVED.labels(channel).inc(size)
    elif status != "duplicate":
        REJECTED.labels(channel).inc()
