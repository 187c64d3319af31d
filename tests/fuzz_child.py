"""Run by test_hardening in a subprocess with a memory limit: every reading path over header
mutants of one good recording.

    python tests/fuzz_child.py GOOD.gsr FOLDER N SEED

Writes N mutants into FOLDER (each a run folder with its run.gsr), then reads each with the
reader, the tail, ``gradsonic info``/``render``/``plot`` and a live server, and prints one JSON
line: counts of what was accepted and refused, and every failure that was not a clean refusal
(an exception other than RecordingError, a CLI exit that is not 0 or 1 with one ``error:``
line, a server answer of 500). Imports no torch.
"""

from __future__ import annotations

import contextlib
import copy
import http.client
import io
import json
import os
import random
import struct
import sys
import urllib.parse
from pathlib import Path

from gradsonic.cli import main as cli
from gradsonic.follow import Tail
from gradsonic.recording import RecordingError, read_recording
from gradsonic.server import Server

NASTY = [None, True, False, 0, -1, 1, 2 ** 31, 2 ** 63, -2 ** 63, 10 ** 400 // 10 ** 300, 1e308,
         -1e308, 1e-320, 0.5, float("inf"), "", "x" * 1_000_000, "\u0000", "../../etc/passwd",
         [], {}, [[]], {"a": {"b": {"c": {"d": {"e": {}}}}}}, ["a"] * 100_000,
         [str(i) for i in range(100_000)], list(range(10)), "NaN", "1e9", "abc", ["a", "a"]]


def _nested(depth: int) -> object:
    out: object = 0
    for _ in range(depth):
        out = [out]
    return out


def mutate(header: dict, rng: random.Random) -> dict:
    h = copy.deepcopy(header)
    for _ in range(rng.randint(1, 3)):
        target = h
        if rng.random() < 0.6 and isinstance(h.get("settings"), dict):
            target = h["settings"]
            if rng.random() < 0.4:
                sub = rng.choice(["mapping", "accents"])
                if isinstance(target.get(sub), dict):
                    target = target[sub]
        keys = list(target) + ["extra", "window", "every", "part"]
        key = rng.choice(keys)
        roll = rng.random()
        if roll < 0.15:
            target.pop(key, None)
        elif roll < 0.25:
            target[key] = _nested(rng.choice([50, 500, 5000]))
        elif roll < 0.35 and isinstance(target.get(key), (int, float)) and \
                not isinstance(target.get(key), bool):
            target[key] = target[key] * rng.choice([-1, 0, 10 ** 6, 1e-9, 2 ** 40])
        else:
            target[key] = rng.choice(NASTY)
    return h


def write_mutant(raw: bytes, header: dict, path: Path) -> None:
    n = struct.unpack("<I", raw[8:12])[0]
    try:
        body = json.dumps(header, allow_nan=True).encode()
    except (ValueError, RecursionError):
        body = b"[" * 5000
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw[:8] + struct.pack("<I", len(body)) + body + raw[12 + n:])


def check_cli(argv: list[str], failures: list[str]) -> bool:
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli(argv)
    except BaseException as e:  # noqa: BLE001 - any escape is the failure this hunts
        failures.append(f"{argv[0]} {argv[1]}: raised {type(e).__name__}: {str(e)[:200]}")
        return False
    text = err.getvalue()
    if code == 1 and (not text.startswith("error: ") or text.count("\n") != 1
                      or "Traceback" in text):
        failures.append(f"{argv[0]} {argv[1]}: exit 1 but stderr {text[:300]!r}")
    elif code not in (0, 1):
        failures.append(f"{argv[0]} {argv[1]}: exit {code}")
    return code == 0


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def main() -> None:
    good, folder, count, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), \
        int(sys.argv[4])
    raw = good.read_bytes()
    n = struct.unpack("<I", raw[8:12])[0]
    header = json.loads(raw[12:12 + n])
    rng = random.Random(seed)
    failures: list[str] = []
    accepted = refused = 0
    runs = []
    for i in range(count):
        path = folder / f"m{i:04d}" / "run.gsr"
        write_mutant(raw, mutate(header, rng), path)
        runs.append(path)
        try:
            read_recording(path)
            Tail(path).batches(0, 10)
            accepted += 1
        except RecordingError:
            refused += 1
            continue
        except BaseException as e:  # noqa: BLE001
            failures.append(f"{path.parent.name}: reader raised {type(e).__name__}: "
                            f"{str(e)[:200]}")
            continue
        check_cli(["info", str(path)], failures)
        check_cli(["render", str(path), "-o", str(path.with_suffix(".wav")), "-q"], failures)
        if accepted <= 40:  # matplotlib is slow: the first accepted ones
            check_cli(["plot", str(path), "-o", str(path.with_suffix(".png"))], failures)
    for path in runs[:60]:  # the refused ones through the CLI too
        check_cli(["info", str(path)], failures)
    for path in runs:  # older than a starting job's file, whose header may still be coming
        os.utime(path, (path.stat().st_atime - 60, path.stat().st_mtime - 60))
    with Server(folder, port=0) as srv:
        status, body = get(srv.port, "/api/runs")
        if status != 200:
            failures.append(f"/api/runs: {status} {body[:200]!r}")
        else:
            listing = json.loads(body)
            seen = {r["id"] for r in listing["runs"]} | {p["id"] for p in listing["problems"]}
            ids = {p.relative_to(folder).as_posix() for p in runs}
            if ids - seen:
                failures.append(f"{len(ids - seen)} runs neither listed nor a problem, e.g. "
                                f"{sorted(ids - seen)[:3]}")
            for r in listing["runs"]:
                q = urllib.parse.quote(r["id"])
                for api in (f"/api/run?run={q}", f"/api/rows?run={q}&from=0&to=5"):
                    status, body = get(srv.port, api)
                    if status not in (200, 409):
                        failures.append(f"{api}: {status} {body[:200]!r}")
    print(json.dumps({"accepted": accepted, "refused": refused, "failures": failures}))


if __name__ == "__main__":
    main()
