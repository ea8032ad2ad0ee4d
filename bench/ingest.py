"""C-STORE ingest benchmark: this archive against Orthanc and DCMTK storescp.

Run from the repository root (as root: the peers run in a network namespace)::

    .venv/bin/python -m bench.ingest            # full run: 3 runs, all targets, updates docs
    .venv/bin/python -m bench.ingest --quick    # smoke check: small data, 1 run, docs untouched

Sends a 300-slice CT study over one association (``storescu``) and a batch of 20 studies x 100
slices over 4 parallel ``storescu`` processes, to every target in turn, each started fresh for
every run; reports instances/s and MB/s (median of the runs), the ratios to Orthanc and the
peak memory of the server's process tree, and writes the table into ``docs/performance.md``.
See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bench.dataset import StudySet, study_set
from bench.host import cpu_model, git_version, loadavg, ram_gib
from bench.procmon import TreeMemory
from bench.report import write_section
from bench.targets import (
    NODELAY_ENV,
    TARGETS,
    BenchError,
    PacsTarget,
    Target,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
DOC = ROOT / "docs" / "performance.md"
BEGIN = "<!-- bench/ingest.py: begin (generated, do not edit by hand) -->"
END = "<!-- bench/ingest.py: end -->"
MB = 1_000_000
MODES = ("single", "parallel")

# The criteria of issue 2 (this 2-core machine).
TARGET_RATIO = 1.2
TARGET_PEAK_MB = 500


@dataclass
class Run:
    """One timed transfer into one freshly started target."""

    target: str
    mode: str
    run: int
    instances: int
    bytes: int
    seconds: float
    stored: int
    peak_rss: int
    peak_pss: int
    processes: int
    client_errors: list[str] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """All instances stored and every client exited cleanly."""
        return self.stored == self.instances and not self.client_errors

    @property
    def rate(self) -> float:
        """Instances per second."""
        return self.instances / self.seconds

    @property
    def mbps(self) -> float:
        """Megabytes (10^6) per second."""
        return self.bytes / MB / self.seconds


@dataclass
class Summary:
    """Median over the successful runs of one target and mode."""

    target: str
    mode: str
    rate: float | None
    mbps: float | None
    runs: list[float]
    failed: int
    peak_rss_mb: float
    peak_pss_mb: float


def storescu(files: list[Path], target: Target) -> list[str]:
    """One ``storescu`` command (one association) sending ``files`` to ``target``."""
    argv = ["storescu", "-aet", "BENCHSCU", "-aec", target.ae_title, "127.0.0.1", str(target.port)]
    return target.client_prefix() + argv + [str(f) for f in files]


def send(groups: list[list[Path]], target: Target, logdir: Path) -> tuple[float, list[str]]:
    """Run one storescu per group in parallel; wall time and error lines of the clients."""
    logs = [(logdir / f"storescu-{i}.log").open("wb") for i in range(len(groups))]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            storescu(group, target),
            env=NODELAY_ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        for group, log in zip(groups, logs, strict=True)
    ]
    codes = [p.wait() for p in procs]
    elapsed = time.perf_counter() - start
    errors = []
    for i, (code, log) in enumerate(zip(codes, logs, strict=True)):
        log.close()
        text = Path(log.name).read_text(errors="replace").splitlines()
        bad = [line for line in text if line.startswith(("E:", "F:"))]
        if code != 0 or bad:
            errors.append(f"storescu #{i} exit {code}: " + " | ".join(bad[:3]))
    return elapsed, errors


def make_target(name: str, workdir: Path, scp_processes: int | None) -> Target:
    """A fresh instance of target ``name``."""
    cls = TARGETS[name]
    if issubclass(cls, PacsTarget):
        return cls(workdir, scp_processes)
    return cls(workdir)


def one_run(
    name: str,
    mode: str,
    run: int,
    data: StudySet,
    parallel: int,
    scp_processes: int | None,
    logs: Path,
    pacs_env: dict[str, str],
) -> Run:
    """Start ``name`` fresh, send ``data``, check what it stored, stop it."""
    groups = [data.files] if mode == "single" else data.split(parallel)
    target = make_target(name, OUT / "tmp", scp_processes)
    if isinstance(target, PacsTarget):
        target.user_env = pacs_env
    target.parallel = mode == "parallel"
    target.logs_dir = logs
    # Write back what earlier targets left dirty (Orthanc and storescp do not fsync): an
    # fsync of this target must not pay for another target's gigabyte in the page cache.
    os.sync()
    with target:
        with TreeMemory(target.pid) as memory:
            seconds, client_errors = send(groups, target, target.root)
        stored = target.count()
        server_errors = target.problems()
    return Run(
        target=name,
        mode=mode,
        run=run,
        instances=data.count,
        bytes=data.total_bytes,
        seconds=seconds,
        stored=stored,
        peak_rss=memory.peak_rss,
        peak_pss=memory.peak_pss,
        processes=memory.max_processes,
        client_errors=client_errors,
        server_errors=server_errors[:20],
    )


def summarise(runs: list[Run], targets: list[str], modes: list[str]) -> list[Summary]:
    """Medians per target and mode (successful runs only); peak memory is the maximum."""
    out = []
    for name in targets:
        for mode in modes:
            mine = [r for r in runs if r.target == name and r.mode == mode]
            good = [r for r in mine if r.ok]
            out.append(
                Summary(
                    target=name,
                    mode=mode,
                    rate=statistics.median(r.rate for r in good) if good else None,
                    mbps=statistics.median(r.mbps for r in good) if good else None,
                    runs=[round(r.rate, 1) for r in good],
                    failed=len(mine) - len(good),
                    peak_rss_mb=max((r.peak_rss for r in mine), default=0) / MB,
                    peak_pss_mb=max((r.peak_pss for r in mine), default=0) / MB,
                )
            )
    return out


# ---------------------------------------------------------------- environment


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def _dcmtk_version(line: str) -> str:
    """'$dcmtk: storescu v3.6.7 2022-04-22 $' -> '3.6.7 (2022-04-22)'."""
    match = re.search(r"v(\d[\w.]*)\s+(\S+)", line)
    return f"{match.group(1)} ({match.group(2)})" if match else line.strip("$ ")


def machine() -> dict[str, str]:
    """CPU, cores, RAM and load from /proc; software versions."""
    from importlib.metadata import version

    postgres = "unknown"
    try:
        from sqlalchemy import create_engine, text

        from bench.targets import DEFAULT_POSTGRES_URL

        url = os.environ.get("PACS_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL)
        engine = create_engine(url)
        with engine.connect() as conn:
            postgres = str(conn.execute(text("SHOW server_version")).scalar())
        engine.dispose()
    except Exception as exc:  # the PostgreSQL target may not be selected at all
        postgres = f"unreachable ({type(exc).__name__})"
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "ram": f"{ram_gib():.1f} GiB",
        "kernel": platform.release(),
        "orthanc": _first_line(["Orthanc", "--version"]),
        "dcmtk": _dcmtk_version(_first_line(["storescu", "--version"])),
        "python": platform.python_version(),
        "pynetdicom": version("pynetdicom"),
        "pydicom": version("pydicom"),
        "postgresql": postgres,
        "moto": version("moto"),
        "archive": git_version(),
    }


# ---------------------------------------------------------------- report


LABELS = {name: cls.label for name, cls in TARGETS.items()}


def _num(value: float | None, digits: int = 0) -> str:
    return "failed" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None, ref: float | None) -> str:
    return f"{value / ref:.2f}x" if value is not None and ref else "n/a"


def table(summaries: list[Summary], data: dict[str, StudySet], parallel: int) -> str:
    """A Markdown table: one row per target, single and parallel columns."""
    by = {(s.target, s.mode): s for s in summaries}
    names = list(dict.fromkeys(s.target for s in summaries))
    ref = {m: by[("orthanc", m)].rate if ("orthanc", m) in by else None for m in MODES}
    single, batch = data["single"], data["batch"]
    head = (
        f"| target | 1 association: inst/s | MB/s | vs Orthanc "
        f"| {parallel} parallel: inst/s | MB/s | vs Orthanc "
        f"| peak RSS, batch (MB) | peak PSS, batch (MB) |"
    )
    lines = [
        f"Single: {single.count} instances, {single.total_bytes / MB:.1f} MB over one association. "
        f"Batch: {len(batch.studies)} studies, {batch.count} instances, "
        f"{batch.total_bytes / MB:.1f} MB over {parallel} parallel storescu processes "
        "(whole studies dealt round-robin, one association each).",
        "",
        head,
        "|" + "---|" * 9,
    ]
    for name in names:
        cells = [LABELS.get(name, name)]
        for mode in MODES:
            s = by.get((name, mode))
            if s is None:
                cells += ["-", "-", "-"]
                continue
            rate = _num(s.rate) + (f" ({s.failed} failed)" if s.failed else "")
            cells += [rate, _num(s.mbps, 1), _ratio(s.rate, ref[mode])]
        batch_s = by.get((name, "parallel"))
        cells += [
            f"{batch_s.peak_rss_mb:.0f}" if batch_s else "-",
            f"{batch_s.peak_pss_mb:.0f}" if batch_s else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdicts(summaries: list[Summary]) -> list[str]:
    """The issue's criteria for the embedded archive, met or missed."""
    by = {(s.target, s.mode): s for s in summaries}
    out = []
    for name in ("pacs", "pacs-pg-s3"):
        for mode, what in (("single", "single association"), ("parallel", "parallel")):
            mine, ref = by.get((name, mode)), by.get(("orthanc", mode))
            if mine is None or ref is None or mine.rate is None or ref.rate is None:
                continue
            ratio = mine.rate / ref.rate
            ok = "met" if ratio >= TARGET_RATIO else "MISSED"
            out.append(f"{LABELS[name]}, {what} >= {TARGET_RATIO}x Orthanc: {ratio:.2f}x, {ok}")
        batch = by.get((name, "parallel"))
        if batch is not None and batch.peak_rss_mb:
            ok = "met" if batch.peak_rss_mb < TARGET_PEAK_MB else "MISSED"
            out.append(
                f"{LABELS[name]}, server peak RSS during the batch < {TARGET_PEAK_MB} MB: "
                f"{batch.peak_rss_mb:.0f} MB, {ok}"
            )
    return out


def _archive_line(before: str, after: str) -> str:
    if before == after:
        return f"archive at `{after}`."
    return (
        f"archive at `{before}` when the run started and `{after}` when it ended "
        "(the server code changed during the run; every run starts the server anew)."
    )


def section(
    summaries: list[Summary],
    runs: list[Run],
    data: dict[str, StudySet],
    env: dict[str, str],
    meta: dict[str, str],
    parallel: int,
) -> str:
    """The generated section of docs/performance.md."""
    crit = verdicts(summaries)
    problems = [
        f"- {LABELS.get(r.target, r.target)} {r.mode} run {r.run}: stored {r.stored}/{r.instances}"
        + (f"; {'; '.join(r.client_errors)}" if r.client_errors else "")
        + (f"; server logged {len(r.server_errors)} error line(s)" if r.server_errors else "")
        for r in runs
        if not r.ok or r.server_errors
    ]
    load_note = meta["load_note"]
    parts = [
        BEGIN,
        "## C-STORE ingest (`bench/ingest.py`)",
        "",
        f"Measured {meta['date']} with `{meta['command']}`: median of {meta['runs']} run(s) "
        "per cell, each run against a freshly started server with empty storage; "
        "`storescu` from DCMTK as the client, `TCP_NODELAY=1` for every DCMTK tool and Orthanc. "
        "Peak memory is the sum over the server's process tree (the `pacs serve` parent and its "
        "worker processes; Orthanc; storescp and its forked children), sampled every 0.1 s "
        "from /proc during the batch (largest of the runs); RSS counts pages shared between "
        "processes once per process, PSS shares them out.",
        "",
        table(summaries, data, parallel),
        "",
        "Instances/s of every run (successful runs only):",
        "",
    ]
    for s in summaries:
        parts.append(f"- {LABELS.get(s.target, s.target)}, {s.mode}: {s.runs}")
    parts += ["", "Criteria of issue 2 on this machine:", ""]
    parts += [f"- {line}" for line in crit] or ["- (archive or Orthanc not measured)"]
    if problems:
        parts += ["", "Problems seen:", "", *problems]
    parts += [
        "",
        f"Machine: {env['cpu']}, {env['cores']} cores, {env['ram']} RAM, Linux {env['kernel']}. "
        f"Load average {meta['load_before']} before, {meta['load_after']} after. {load_note}",
        "",
        f"Software: {env['orthanc']}; DCMTK {env['dcmtk']}; Python {env['python']}; "
        f"pynetdicom {env['pynetdicom']}; pydicom {env['pydicom']}; "
        f"PostgreSQL {env['postgresql']}; moto {env['moto']} (S3 server mode); "
        + _archive_line(meta["archive_before"], env["archive"]),
        "",
        "Set-up: the archive runs `pacs serve` with its defaults (fsync of every object and "
        f"directory, INFO logging, {meta['scp_processes']} SCP processes"
        + (f"; with `{meta['pacs_env']}`" if meta["pacs_env"] else "")
        + "); the PostgreSQL + S3 "
        "variant stores into moto, a Python S3 emulator that shares the two cores and is much "
        "slower than MinIO, so that row is a lower bound. Orthanc 1.10 runs with its default "
        "SQLite index and storage, no plugins (Orthanc 1.10 does not fsync what it stores). "
        "Every target starts after a `sync`, so none pays for another's unwritten data. "
        "`storescp` writes each object to a file (no fsync) "
        "and forks a process per association in the parallel runs: the raw limit of the machine.",
        END,
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=None, help="runs per target and mode (default 3)")
    p.add_argument("--quick", action="store_true", help="small data, 1 run, docs untouched")
    p.add_argument(
        "--targets", nargs="+", choices=list(TARGETS), default=list(TARGETS), help="subset"
    )
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="subset")
    p.add_argument("--parallel", type=int, default=4, help="storescu processes for the batch")
    p.add_argument("--scp-processes", type=int, default=None, help="pacs serve --scp-processes")
    p.add_argument(
        "--pacs-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for pacs serve, e.g. PACS_STORAGE_FSYNC=never (repeatable)",
    )
    p.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    p.add_argument(
        "--note", default="", help="free text added to the machine line of the doc section"
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Generate (or reuse) the data, run every target and mode, report."""
    args = parse_args(argv)
    runs_n = args.runs or (1 if args.quick else 3)
    if os.geteuid() != 0 and {"orthanc", "storescp"} & set(args.targets):
        print("orthanc and storescp run under `unshare -n`: run this as root", file=sys.stderr)
        return 2
    data_root = OUT / "data"
    if args.quick:
        data = {
            "single": study_set(data_root, "quick-single", 1, 50, 512),
            "batch": study_set(data_root, "quick-batch", 8, 12, 512),
        }
    else:
        data = {
            "single": study_set(data_root, "single-300x512", 1, 300, 512),
            "batch": study_set(data_root, "batch-20x100x512", 20, 100, 512),
        }
    pacs_env = dict(item.split("=", 1) for item in args.pacs_env)
    shutil.rmtree(OUT / "tmp", ignore_errors=True)  # leftovers of an interrupted run
    (OUT / "tmp").mkdir(parents=True, exist_ok=True)
    load_before = loadavg()
    archive_before = git_version()
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    logs = OUT / "logs" / stamp
    runs: list[Run] = []
    # Interleave targets inside each run so slow drifts in machine load hit all of them alike.
    for run in range(1, runs_n + 1):
        for mode in args.modes:
            dataset = data["single" if mode == "single" else "batch"]
            for name in args.targets:
                label = f"[run {run}/{runs_n}] {name:<11} {mode:<8}"
                result = None
                for attempt in (1, 2):  # a server that fails to start gets one more try
                    try:
                        result = one_run(
                            name,
                            mode,
                            run,
                            dataset,
                            args.parallel,
                            args.scp_processes,
                            logs,
                            pacs_env,
                        )
                        break
                    except BenchError as exc:
                        print(f"{label} ERROR (attempt {attempt}): {exc}", flush=True)
                if result is None:
                    continue
                runs.append(result)
                flag = "" if result.ok else f"  FAILED stored {result.stored}/{result.instances}"
                flag += f"  client: {result.client_errors}" if result.client_errors else ""
                flag += (
                    f"  server logged {len(result.server_errors)} error line(s)"
                    if result.server_errors
                    else ""
                )
                print(
                    f"{label} {result.rate:7.1f} inst/s {result.mbps:6.1f} MB/s "
                    f"{result.seconds:6.2f} s  peak RSS {result.peak_rss / MB:6.0f} MB "
                    f"PSS {result.peak_pss / MB:6.0f} MB ({result.processes} procs){flag}",
                    flush=True,
                )
                for line in result.server_errors[:3]:
                    print(f"    server: {line[:200]}", flush=True)
    load_after = loadavg()
    summaries = summarise(runs, args.targets, args.modes)
    env = machine()
    command = "python -m bench.ingest" + (f" {' '.join(argv or sys.argv[1:])}".rstrip())
    # the benchmark itself keeps both cores busy, so only the load before it says anything
    busy = float(load_before.split()[0]) > 1.0
    load_note = (
        "The machine was not idle when the run started, so the numbers may be noisy."
        if busy
        else ""
    )
    if args.note:
        load_note = (load_note + " " + args.note).strip()
    meta = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "runs": str(runs_n),
        "load_before": load_before,
        "load_after": load_after,
        "load_note": load_note,
        "scp_processes": str(args.scp_processes or os.cpu_count()),
        "pacs_env": " ".join(args.pacs_env),
        "archive_before": archive_before,
    }
    print()
    print(table(summaries, data, args.parallel))
    print()
    for line in verdicts(summaries):
        print(line)
    print(f"server logs: {logs.relative_to(ROOT)}")
    results = OUT / f"results-{stamp}.json"
    results.write_text(
        json.dumps(
            {
                "meta": meta,
                "machine": env,
                "summaries": [asdict(s) for s in summaries],
                "runs": [asdict(r) for r in runs],
            },
            indent=2,
        )
    )
    print(f"\nraw results: {results.relative_to(ROOT)}")
    if not args.quick and not args.no_write:
        write_section(BEGIN, END, section(summaries, runs, data, env, meta, args.parallel))
        print(f"updated {DOC.relative_to(ROOT)}")
    failed = sum(1 for r in runs if not r.ok)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
