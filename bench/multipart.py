"""Streaming ``multipart/related`` parsers: ours (``viewer_api.multipart``) against maintained
libraries, on a STOW-RS-shaped body (parts of ``application/dicom`` with no
Content-Disposition) fed in 64 KiB chunks, as an ASGI server delivers it.

    .venv/bin/python -m bench.multipart [--parts 40] [--part-size 524288] [--runs 5]

Libraries that are not installed are reported as such (install them into a scratch folder
and put it on PYTHONPATH: ``pip install --target /tmp/mp python-multipart multipart
requests-toolbelt``). Prints one line per parser: its best CPU time of ``--runs`` (the
parsers take turns, so load from other work hits each alike), throughput, whether it
streams, whether it ignores a preamble (RFC 2046 5.1.1) and refuses a body cut before its
closing boundary (a truncated upload), and the error when it cannot parse the body.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable, Iterator

from viewer_api.multipart import MultipartParser, PartData, PartStart

CHUNK = 64 * 1024
BOUNDARY = b"bench-boundary-7d1f3c"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY.decode()}'


def conformance(parse: Callable[[bytes], tuple[int, int]]) -> str:
    """Whether ``parse`` ignores a preamble and refuses a body without its closing boundary."""
    whole = body(2, 1000)
    try:
        preamble = parse(b"preamble to ignore\r\n" + whole + b"epilogue") == (2, 2000)
    except ImportError:
        raise
    except Exception:
        preamble = False
    try:
        parse(whole[:-30])
        refuses_truncation = False
    except ImportError:
        raise
    except Exception:
        refuses_truncation = True
    return f"preamble: {'ok' if preamble else 'NO'}  truncation refused: " + (
        "yes" if refuses_truncation else "NO"
    )


def body(parts: int, size: int) -> bytes:
    """``parts`` parts of ``size`` random bytes, each with only a Content-Type header."""
    pieces = []
    for _ in range(parts):
        pieces += [b"--", BOUNDARY, b"\r\nContent-Type: application/dicom\r\n\r\n"]
        pieces += [os.urandom(size), b"\r\n"]
    pieces += [b"--", BOUNDARY, b"--\r\n"]
    return b"".join(pieces)


def chunks(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)
    for at in range(0, len(data), CHUNK):
        yield bytes(view[at : at + CHUNK])


def ours(data: bytes) -> tuple[int, int]:
    parser = MultipartParser(BOUNDARY)
    parts = size = 0
    for chunk in chunks(data):
        for event in parser.feed(chunk):
            if isinstance(event, PartStart):
                parts += 1
            elif isinstance(event, PartData):
                size += len(event.data)
    parser.close()
    return parts, size


def python_multipart(data: bytes) -> tuple[int, int]:
    from python_multipart.multipart import MultipartParser as Parser

    counts = [0, 0]

    def on_part_begin() -> None:
        counts[0] += 1

    def on_part_data(buffer: bytes, start: int, end: int) -> None:
        counts[1] += end - start

    parser = Parser(BOUNDARY, {"on_part_begin": on_part_begin, "on_part_data": on_part_data})
    for chunk in chunks(data):
        parser.write(chunk)
    parser.finalize()
    return counts[0], counts[1]


def multipart_push(data: bytes) -> tuple[int, int]:
    from multipart import MultipartSegment, PushMultipartParser

    parts = size = 0
    with PushMultipartParser(BOUNDARY.decode()) as parser:
        for chunk in [*chunks(data), b""]:
            for event in parser.parse(chunk):
                if isinstance(event, MultipartSegment):
                    parts += 1
                elif event:
                    size += len(event)
    return parts, size


def toolbelt(data: bytes) -> tuple[int, int]:
    from requests_toolbelt.multipart.decoder import MultipartDecoder

    decoded = MultipartDecoder(data, CONTENT_TYPE)  # the whole body at once: no streaming
    return len(decoded.parts), sum(len(p.content) for p in decoded.parts)


PARSERS: dict[str, tuple[Callable[[bytes], tuple[int, int]], str]] = {
    "viewer_api.multipart": (ours, "yes"),
    "python-multipart": (python_multipart, "yes"),
    "multipart (PushMultipartParser)": (multipart_push, "yes"),
    "requests-toolbelt": (toolbelt, "no: whole body in memory"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", type=int, default=40)
    p.add_argument("--part-size", type=int, default=512 * 1024)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    logging.getLogger("python_multipart").setLevel(logging.CRITICAL)  # its parse errors
    data = body(args.parts, args.part_size)
    expected = (args.parts, args.parts * args.part_size)
    print(f"body: {args.parts} parts x {args.part_size} bytes ({len(data) / 1e6:.1f} MB)")
    best = dict.fromkeys(PARSERS, float("inf"))
    outcome: dict[str, str] = {}
    for _ in range(args.runs):  # round-robin, so a busy machine slows every parser alike
        for name, (parse, _streams) in PARSERS.items():
            if name in outcome and not outcome[name].startswith(("ok", "WRONG")):
                continue
            try:
                started = time.process_time()
                got = parse(data)
                best[name] = min(best[name], time.process_time() - started)
            except ImportError:
                outcome[name] = "not installed"
                continue
            except Exception as exc:
                outcome[name] = f"cannot parse it: {type(exc).__name__}: {exc}"
                continue
            outcome[name] = "ok" if got == expected else f"WRONG {got}"
    for name, (_parse, streams) in PARSERS.items():
        if not outcome[name].startswith(("ok", "WRONG")):
            print(f"{name:34} {outcome[name]}")
            continue
        rate = len(data) / best[name] / 1e6
        print(
            f"{name:34} {best[name] * 1e3:8.1f} ms CPU {rate:7.0f} MB/s  "
            f"streams: {streams:26} {outcome[name]}  {conformance(PARSERS[name][0])}"
        )


if __name__ == "__main__":
    main()
