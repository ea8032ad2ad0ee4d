"""Prometheus metrics of the study lifecycle, the job queue and webhooks.

Queue gauges are read from the database by each process's sweeper (every few seconds); in
multiprocess mode ``/metrics`` shows the largest value of the live processes, which all see
the same queue.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

JOB_SECONDS = Histogram(
    "pacs_job_seconds",
    "Run time of a job attempt, by analysis and outcome.",
    ["analysis", "status"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
JOBS_FINISHED = Counter(
    "pacs_jobs_finished_total",
    "Job attempts ended, by analysis and outcome (failed, dead = failures).",
    ["analysis", "status"],
)
QUEUE_DEPTH = Gauge("pacs_jobs", "Jobs by status.", ["status"], multiprocess_mode="livemax")
OLDEST_READY = Gauge(
    "pacs_jobs_oldest_ready_seconds",
    "Age of the oldest job ready to run (0 when none waits).",
    multiprocess_mode="livemax",
)
STUDIES_STABLE = Counter("pacs_studies_stable_total", "Studies (versions) that became stable.")
WEBHOOK_DELIVERIES = Counter(
    "pacs_webhook_deliveries_total", "Webhook POST attempts, by result.", ["result"]
)
WEBHOOK_EVENTS = Counter("pacs_webhook_events_total", "Change events delivered to webhooks.")


def record_job(analysis: str, status: str, seconds: float) -> None:
    """Count one job attempt and its duration."""
    JOB_SECONDS.labels(analysis, status).observe(seconds)
    JOBS_FINISHED.labels(analysis, status).inc()


def set_queue(stats: dict[str, Any]) -> None:
    """Publish ``queue_stats`` as gauges."""
    for status, count in stats["by_status"].items():
        QUEUE_DEPTH.labels(status).set(count)
    OLDEST_READY.set(stats["oldest_ready_seconds"])
