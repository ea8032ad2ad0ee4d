"""WADO-RS benchmark: series metadata of 1,000 instances, retrieve of a 300-slice series.

Compared with Orthanc from Debian (1.10.1, which has no DICOMweb plugin) through its REST API:
``/series/{id}/instances-tags`` for metadata (the tags of every instance of a series),
``/series/{id}/archive`` (ZIP) and ``/instances/{id}/file`` one by one for retrieval; and both
servers over DIMSE C-GET with DCMTK ``getscu``. The archive runs ``pacs serve`` on the embedded
default (SQLite + filesystem). Data: synthetic CT from ``bench/dataset.py`` (cached under
``bench/out/data``), loaded into the archive through its ingest path and into Orthanc by REST.

    .venv/bin/python -m bench.wado             # full run, writes the WADO-RS section
    .venv/bin/python -m bench.wado --quick     # 200 + 50 slices, 3 runs, no write
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pydicom import dcmread

from bench.dataset import StudySet, study_set
from bench.host import cpu_model
from bench.report import write_section
from bench.targets import serve_archive
from pacs.config import FsyncPolicy, Settings
from pacs.index.engine import create_index_engine
from pacs.index.migrate import upgrade
from pacs.ingest import Source
from pacs.runtime import build_ingest
from testkit.net import free_port
from testkit.orthanc import running_orthanc

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "bench" / "out"
BEGIN = "<!-- wado-bench:begin -->"
END = "<!-- wado-bench:end -->"
ANY = 'multipart/related; type="application/dicom"; transfer-syntax=*'


Measure = Callable[[], int]
"""One request (or transfer); returns the bytes received."""


def interleaved(measures: dict[str, tuple[Measure, int]], runs: int) -> dict[str, object]:
    """Run every measure once to warm up, then ``runs`` rounds in which each measure runs
    its number of times in turn, so that every server sees the same load over the rounds.
    name -> (wall times in s, bytes of the last call), or None when a call failed."""
    results: dict[str, object] = {}
    times: dict[str, list[float]] = {name: [] for name in measures}
    sizes: dict[str, int] = {}
    failed: set[str] = set()
    for round_no in range(runs + 1):
        for name, (fn, repeat) in measures.items():
            if name in failed:
                continue
            for _ in range(repeat if round_no else 1):
                try:
                    start = time.perf_counter()
                    sizes[name] = fn()
                    elapsed = time.perf_counter() - start
                except Exception as exc:
                    print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                    failed.add(name)
                    break
                if round_no:
                    times[name].append(elapsed)
    for name in measures:
        results[name] = None if name in failed else (times[name], sizes[name])
    return results


def p(times: list[float], q: float) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load_archive(data_dir: Path, sets: list[StudySet]) -> None:
    settings = Settings(data_dir=data_dir, storage_fsync=FsyncPolicy.NEVER)
    engine = create_index_engine(settings)
    upgrade(engine)
    engine.dispose()
    ingest = build_ingest(settings)
    for files in sets:
        for path in files.files:
            outcome = ingest.store_part10(path.read_bytes(), Source(channel="import"))
            assert outcome.status.ok, outcome.reason


def getscu(port: int, called: str, study: str, series: str, out: Path) -> int:
    """C-GET a series with DCMTK into ``out`` (emptied first); bytes received."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    args = ["getscu", "-aet", "GETSCU", "-aec", called, "-od", str(out), "-k"]
    args += ["QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}"]
    args += ["-k", f"SeriesInstanceUID={series}", "127.0.0.1", str(port)]
    env = {**os.environ, "TCP_NODELAY": "1"}
    subprocess.run(args, check=True, capture_output=True, env=env, timeout=600)
    return sum(f.stat().st_size for f in out.iterdir())


def uids(files: StudySet) -> tuple[str, str]:
    ds = dcmread(files.files[0], stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def read_stream(client: httpx.Client, url: str, headers: dict[str, str] | None = None) -> int:
    total = 0
    with client.stream("GET", url, headers=headers) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            total += len(chunk)
    return total


def archive_measures(
    client: httpx.Client, base: str, dicom_port: int, meta: StudySet, big: StudySet, work: Path
) -> dict[str, tuple[Measure, int]]:
    study, series = uids(meta)
    url = f"{base}/dicomweb/studies/{study}/series/{series}/metadata"
    assert len(client.get(url).json()) == meta.count  # checked once, not timed
    etag = client.get(url).headers["etag"]

    def metadata(encoding: str) -> Measure:
        def call() -> int:
            response = client.get(url, headers={"Accept-Encoding": encoding})
            response.raise_for_status()
            return len(response.content)

        return call

    def not_modified() -> int:
        response = client.get(url, headers={"If-None-Match": etag})
        assert response.status_code == 304
        return 0

    big_study, big_series = uids(big)
    series_url = f"{base}/dicomweb/studies/{big_study}/series/{big_series}"
    return {
        "pacs_meta": (metadata("identity"), 2),
        "pacs_meta_gzip": (metadata("gzip"), 2),
        "pacs_304": (not_modified, 2),
        "pacs_retrieve": (lambda: read_stream(client, series_url, {"Accept": ANY}), 1),
        "pacs_cget": (
            lambda: getscu(dicom_port, "PACS", big_study, big_series, work / "got-pacs"),
            1,
        ),
    }


def orthanc_measures(
    client: httpx.Client, base: str, dicom_port: int, meta: StudySet, big: StudySet, work: Path
) -> dict[str, tuple[Measure, int]]:
    for files in (meta, big):
        for path in files.files:
            for attempt in range(3):  # Orthanc may close a kept-alive connection meanwhile
                try:
                    client.post(f"{base}/instances", content=path.read_bytes()).raise_for_status()
                    break
                except httpx.TransportError:
                    if attempt == 2:
                        raise

    def series_id(files: StudySet) -> str:
        found = client.post(f"{base}/tools/lookup", content=uids(files)[1]).json()
        return str(next(item["ID"] for item in found if item["Type"] == "Series"))

    tags_url = f"{base}/series/{series_id(meta)}/instances-tags"
    assert len(client.get(tags_url).json()) == meta.count  # checked once, not timed

    def tags() -> int:
        response = client.get(tags_url)
        response.raise_for_status()
        return len(response.content)

    big_id = series_id(big)

    big_study, big_series = uids(big)
    return {
        "orthanc_meta": (tags, 2),
        "orthanc_archive": (lambda: read_stream(client, f"{base}/series/{big_id}/archive"), 1),
        "orthanc_cget": (
            lambda: getscu(dicom_port, "ORTHANC", big_study, big_series, work / "got-orthanc"),
            1,
        ),
    }


def run_all(meta: StudySet, big: StudySet, runs: int, work: Path) -> dict[str, object]:
    """Load both servers, then measure them interleaved."""
    load_archive(work / "pacs", [meta, big])
    process, base, pacs_dicom = serve_archive(work / "pacs", timeout=60)
    orthanc_dicom, orthanc_http = free_port(), free_port()
    peers = {"getscu": ("GETSCU", "127.0.0.1", 1)}
    try:
        with (
            running_orthanc("Orthanc", work / "orthanc", orthanc_dicom, orthanc_http, peers) as ob,
            httpx.Client(timeout=600) as client,
        ):
            measures = archive_measures(client, base, pacs_dicom, meta, big, work)
            measures |= orthanc_measures(client, ob, orthanc_dicom, meta, big, work)
            return interleaved(measures, runs)
    finally:
        process.terminate()
        process.wait(30)


def machine() -> str:
    return f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def ms(result: object) -> str:
    if result is None:
        return "failed"
    times = result[0]  # type: ignore[index]
    return f"{statistics.median(times) * 1000:.0f} / {p(times, 0.95) * 1000:.0f}"


def size_of(result: object) -> str:
    return "-" if result is None else str(result[1])  # type: ignore[index]


def mbps(result: object) -> float | None:
    if result is None:
        return None
    times, size = result  # type: ignore[misc]
    return float(size) / 1e6 / statistics.median(times)


def report(results: dict[str, object], meta: StudySet, big: StudySet, load: str) -> str:
    rows = [
        ("archive: WADO-RS series, transfer-syntax=*", results["pacs_retrieve"]),
        ("archive: C-GET (getscu)", results["pacs_cget"]),
        ("Orthanc: REST /series/{id}/archive (ZIP)", results["orthanc_archive"]),
        ("Orthanc: C-GET (getscu)", results["orthanc_cget"]),
    ]
    orthanc_rates = [r for r in (mbps(v) for label, v in rows if "Orthanc" in label) if r]
    best = max(orthanc_rates, default=None)
    lines = [
        BEGIN,
        "## WADO-RS",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()} by `bench/wado.py`; "
        f"load average before/after: {load}. Orthanc 1.10.1 from Debian has no DICOMweb "
        "plugin, so it is measured through its REST API and C-GET. The archive runs "
        "`pacs serve` on the embedded default (SQLite + filesystem); both read from the page "
        "cache (data loaded just before). Times are client wall times, responses read whole; "
        "the measures run interleaved, round after round, so both servers see the same load.",
        "",
        f"Series metadata, {meta.count} instances:",
        "",
        "| request | ms (median / p95) | bytes |",
        "|---|---|---|",
        f"| archive: WADO-RS `metadata` | {ms(results['pacs_meta'])} | "
        f"{size_of(results['pacs_meta'])} |",
        f"| archive: WADO-RS `metadata`, gzip | {ms(results['pacs_meta_gzip'])} | (decoded) |",
        f"| archive: WADO-RS `metadata`, If-None-Match -> 304 | {ms(results['pacs_304'])} | 0 |",
        f"| Orthanc: REST `/series/{{id}}/instances-tags` | {ms(results['orthanc_meta'])} | "
        f"{size_of(results['orthanc_meta'])} |",
        "",
        f"Retrieve of a {big.count}-slice series ({big.total_bytes / 1e6:.1f} MB of Part-10 "
        "files; MB/s of payload received, median run; ratio to the fastest Orthanc way):",
        "",
        "| transfer | s (median) | MB/s | vs fastest Orthanc |",
        "|---|---|---|---|",
    ]
    for label, result in rows:
        rate = mbps(result)
        if result is None or rate is None:
            lines.append(f"| {label} | failed | | |")
            continue
        ratio = f"{rate / best:.2f}x" if best else "-"
        seconds = statistics.median(result[0])  # type: ignore[index]
        lines.append(f"| {label} | {seconds:.2f} | {rate:.0f} | {ratio} |")
    lines += ["", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, no doc update")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    data = OUT / "data"
    if args.quick:
        meta = study_set(data, "wado-meta-200x64", 1, 200, 64)
        big = study_set(data, "quick-single", 1, 50, 512)
        args.runs = 3
    else:
        meta = study_set(data, "wado-meta-1000x64", 1, 1000, 64)
        big = study_set(data, "single-300x512", 1, 300, 512)
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with tempfile.TemporaryDirectory(dir=OUT) as tmp:
        results = run_all(meta, big, args.runs, Path(tmp))
    load_after = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    text = report(results, meta, big, f"{load_before} / {load_after}")
    print(text)
    if not (args.quick or args.no_write):
        write_section(BEGIN, END, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
