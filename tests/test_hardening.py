"""No file and no request can break the server, the reader or the CLI, and a constructor that
fails leaves the disk as it was. Real sockets on 127.0.0.1 only; every loop is bounded."""

from __future__ import annotations

import errno
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gradsonic import GradientSonifier
from gradsonic.accents import Accents
from gradsonic.cli import main
from gradsonic.errors import ConfigError
from gradsonic.recording import RecordingError, RecordSink, read_recording
from gradsonic.server import Server
from gradsonic.server import app as app_module

from .fixtures.models import TinyMLP, small_recording, train_steps
from .test_serve import SSE, Writer, get, noisy

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return small_recording(tmp_path_factory.mktemp("good") / "good.gsr", steps=20)


def with_header(raw: bytes, edit) -> bytes:
    n = struct.unpack("<I", raw[8:12])[0]
    header = json.loads(raw[12:12 + n])
    body = edit(header)
    if not isinstance(body, bytes):
        body = json.dumps(header).encode()
    return raw[:8] + struct.pack("<I", len(body)) + body + raw[12 + n:]


def old(path: Path) -> Path:
    """Age a file past the moment a starting job's header may still be coming."""
    st = path.stat()
    os.utime(path, (st.st_atime - 60, st.st_mtime - 60))
    return path


# ---- the reader -------------------------------------------------------------------------------


def test_five_hundred_header_mutants_never_escape_as_anything_but_a_clear_refusal(good, tmp_path):
    """Reader, tail, info/render/plot and a live server over 500 mutants, in a child process
    held to 1 GiB of address space and 10 minutes."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    proc = subprocess.run([sys.executable, str(HERE / "fuzz_child.py"), str(good),
                           str(tmp_path / "mutants"), "500", "20261130"],
                          capture_output=True, text=True, timeout=600, preexec_fn=limit)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["failures"] == []
    assert result["refused"] >= 300 and result["accepted"] + result["refused"] == 500
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda h: b"[" * 1000 + b"]" * 1000, r"nests|not an object"),
    (lambda h: h["settings"]["accents"].update(window=10 ** 8),
     r"Accents.window must be an integer in 1..100000"),
    (lambda h: h["settings"].update(every=2 ** 63), r"every is .* not in 1..2147483648"),
    (lambda h: h.update(layer_names=[f"l{i}" for i in range(100_000)]),
     r"has 100000 names, more than 4096"),
    (lambda h: h.update(layer_names=["x" * 1_000_000] + h["layer_names"][1:]),
     r"longer than 512 characters"),
    (lambda h: h.update(layer_names=h["layer_names"] + ["extra"]), r"rows have"),
    (lambda h: h.update(format="something-else"), r"names format 'something-else'"),
    (lambda h: h.update(version=2), r"version 2"),
    (lambda h: h.update(part=-1), r"part '-1', not a number in 1..9999"),
])
def test_header_values_out_of_bounds_are_refused_quickly(good, tmp_path, edit, message):
    bad = tmp_path / "bad.gsr"
    bad.write_bytes(with_header(good.read_bytes(), edit))
    t0 = time.monotonic()
    with pytest.raises(RecordingError, match=message):
        read_recording(bad)
    assert time.monotonic() - t0 < 30  # (a bound on runaway work, not a timing claim)


def test_rows_whose_steps_go_back_are_refused(good, tmp_path):
    raw = bytearray(good.read_bytes())
    n = struct.unpack("<I", raw[8:12])[0]
    first_row = 12 + n
    raw[first_row:first_row + 8] = struct.pack("<q", 10 ** 6)  # step 0 -> 1,000,000
    (tmp_path / "r.gsr").write_bytes(bytes(raw))
    with pytest.raises(RecordingError, match="step numbers that do not grow"):
        read_recording(tmp_path / "r.gsr")


# ---- the server -------------------------------------------------------------------------------


@pytest.fixture
def runs(tmp_path, good):
    """A folder with a good run, a corrupted one (1,000 nested arrays), one with unusable
    settings, a later part whose first part is gone, and a file outside the folder."""
    root = tmp_path / "runs"
    for name in ("good", "nested", "settings", "orphan"):
        (root / name).mkdir(parents=True)
    raw = good.read_bytes()
    (root / "good" / "run.gsr").write_bytes(raw)
    (root / "nested" / "run.gsr").write_bytes(with_header(raw, lambda h: b"[" * 1000 + b"]" * 1000))
    (root / "settings" / "run.gsr").write_bytes(
        with_header(raw, lambda h: h["settings"].update(sample_rate=-5)))
    (root / "orphan" / "run-002.gsr").write_bytes(with_header(raw, lambda h: h.update(part=2)))
    for p in root.rglob("*.gsr"):
        old(p)
    (tmp_path / "secret.gsr").write_bytes(raw)
    return root


def test_one_bad_run_is_listed_with_its_reason_and_affects_no_other(runs, capsys):
    with Server(runs, port=0) as srv:
        status, body = get(srv.port, "/api/runs")
        assert status == 200
        listing = json.loads(body)
        assert [r["id"] for r in listing["runs"]] == ["good/run.gsr"]
        problems = {p["id"]: p["error"] for p in listing["problems"]}
        assert set(problems) == {"nested/run.gsr", "settings/run.gsr", "orphan/run-002.gsr"}
        assert "first part is missing" in problems["orphan/run-002.gsr"]
        assert "settings are not usable" in problems["settings/run.gsr"]
        assert get(srv.port, "/api/run?run=good/run.gsr")[0] == 200
        assert get(srv.port, "/api/run?run=nested/run.gsr")[0] == 404
        # no absolute path in any answer
        for path in ("/api/runs", "/api/run?run=nope", "/nothing"):
            assert str(runs.parent).encode() not in get(srv.port, path)[1]
    capsys.readouterr()
    for argv in (["info", str(runs / "nested")], ["render", str(runs / "nested"), "-o",
                                                   str(runs / "x.wav")]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.parametrize("path, headers", [
    ("/api/rows?run=good/run.gsr&from=%C2%B2", {}),
    ("/api/rows?run=good/run.gsr&from=0&to=%C2%B2", {}),
    ("/api/stream?run=good/run.gsr", {"Last-Event-ID": "\u00b2"}),
    ("/api/stream?run=good/run.gsr", {"Last-Event-ID": "9" * 5000}),
    ("/api/rows?run=good/run.gsr&from=" + "9" * 5000, {}),
])
def test_bad_parameters_are_400s_naming_them(runs, path, headers):
    with Server(runs, port=0) as srv:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.putrequest("GET", path)
        for k, v in headers.items():
            conn.putheader(k, v.encode("utf-8"))
        conn.endheaders()
        r = conn.getresponse()
        body = r.read()
        conn.close()
        assert r.status == 400, body
        assert b"must be a row number" in body and b"Traceback" not in body


@pytest.mark.parametrize("host", ["evil.com@localhost", "localhost/evil", "localhost:99999",
                                  "[::1", "localhost evil", "evil.example"])
def test_host_headers_that_are_not_a_loopback_name_are_refused(runs, host):
    with Server(runs, port=0) as srv:
        assert get(srv.port, "/api/runs", {"Host": host})[0] in (400, 403)  # Tornado: 400
        assert get(srv.port, "/api/runs", {"Host": f"[::1]:{srv.port}"})[0] == 200


def test_a_body_is_never_read_as_a_request(runs):
    smuggled = b"GET /api/runs HTTP/1.1\r\nHost: evil.com\r\n\r\n"
    with Server(runs, port=0) as srv, socket.create_connection(("127.0.0.1", srv.port),
                                                               timeout=10) as s:
        s.sendall(b"POST /api/runs HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
                  + str(len(smuggled)).encode() + b"\r\n\r\n" + smuggled)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 405") and reply.count(b"HTTP/1.1 ") == 1
    assert b'"runs"' not in reply


def test_every_response_carries_the_security_headers(runs):
    import http.client

    with Server(runs, port=0) as srv:
        cases = [("GET", "/", 200), ("GET", "/app.js", 200), ("GET", "/api/runs", 200),
                 ("GET", "/nothing", 404), ("POST", "/api/runs", 405), ("GET", "/%ff", 400),
                 ("GET", "/api/stream?run=good/run.gsr", 200)]
        for method, path, code in cases:
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
            conn.request(method, path)
            r = conn.getresponse()
            assert r.status == code, (path, r.status)
            h = {k.lower(): v for k, v in r.getheaders()}
            assert "frame-ancestors 'none'" in h["content-security-policy"], path
            assert h["x-content-type-options"] == "nosniff" and h["cache-control"] == "no-store"
            assert h["x-frame-options"] == "DENY" and h["referrer-policy"] == "no-referrer"
            assert "server" not in h or "Tornado" not in h["server"]
            conn.close()
        assert get(srv.port, "/api/runs", {"Host": "evil.example"})[0] == 403


def test_idle_and_half_sent_requests_are_closed_and_cost_no_thread(runs, monkeypatch):
    monkeypatch.setattr(app_module, "IDLE_SECONDS", 0.5)
    with Server(runs, port=0) as srv:
        threads = threading.active_count()
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(200)]
        half = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        half.sendall(b"GET /api/runs HTTP/1.1\r\nHost: loc")
        assert threading.active_count() == threads  # one event loop serves them all
        for s in idle[:5] + [half]:
            assert s.recv(100) == b""  # closed by the server (within IDLE_SECONDS)
            s.close()
        for s in idle[5:]:
            s.close()
        assert get(srv.port, "/api/runs")[0] == 200


def test_a_symlink_swapped_in_after_the_listing_is_not_followed(runs):
    with Server(runs, port=0) as srv:
        assert get(srv.port, "/api/runs")[0] == 200  # listed (and cached for a second)
        target = runs / "good" / "run.gsr"
        target.unlink()
        os.symlink(runs.parent / "secret.gsr", target)
        for path in ("/api/run?run=good/run.gsr", "/api/rows?run=good/run.gsr&from=0"):
            status, body = get(srv.port, path)
            assert status == 404 and b"layer_names" not in body and b"batches" not in body


def test_a_client_leaving_mid_stream_leaves_no_traceback(tmp_path, capfd):
    path = tmp_path / "run.gsr"
    w = Writer(path, [f"v{i}" for i in range(64)])
    w.write(noisy(20000, 64))
    w.close()
    with Server(path, port=0) as srv:
        for _ in range(3):
            client = SSE(srv.port, "run.gsr")
            client.wait_rows(1)
            client.close()
        assert get(srv.port, "/api/runs")[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_serve_imports_no_torch_and_idles_small(tmp_path):
    code = ("import sys; import gradsonic.cli, gradsonic.server, gradsonic.render, "
            "gradsonic.plot; print('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    proc = subprocess.Popen([sys.executable, "-m", "gradsonic.cli", "serve", str(tmp_path),
                             "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        assert "gradsonic serve:" in proc.stderr.readline()
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss_kb = int(next(l for l in status.splitlines() if l.startswith("VmRSS")).split()[1])
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.terminate()
        proc.wait(30)
    assert "libtorch" not in maps
    assert rss_kb < 150 * 1024, f"gradsonic serve idles at {rss_kb / 1024:.0f} MB"


# ---- constructors and options ---------------------------------------------------------------


def test_a_constructor_that_fails_on_a_full_disk_leaves_nothing(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(RecordSink, "_start", full)
    with pytest.raises(ConfigError, match="cannot be written: .*No space left"):
        GradientSonifier(TinyMLP(), run_dir=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="No space left"):
        GradientSonifier(TinyMLP(), quiet=True)  # the default per-run folder
    assert list((tmp_path / "gradsonic-runs").iterdir()) == []


def test_an_unwritable_working_directory_is_a_config_error_naming_the_folder(monkeypatch):
    monkeypatch.chdir("/sys")  # read-only even for root
    with pytest.raises(ConfigError, match=r"cannot create the run folder under "
                                          r"'/sys/gradsonic-runs'.*pass run_dir="):
        GradientSonifier(TinyMLP(), quiet=True)


def test_resume_past_the_recorded_steps_is_refused(tmp_path):
    model = TinyMLP()
    with GradientSonifier(model, run_dir=tmp_path / "run", quiet=True) as son:
        train_steps(model, son.wrap(torch.optim.SGD(model.parameters(), lr=0.1)), 20)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()}
    with pytest.raises(ConfigError, match=r"resume=1000: .* holds steps up to 19"):
        GradientSonifier(model, run_dir=tmp_path / "run", resume=1000, quiet=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir()} == before
    with GradientSonifier(model, run_dir=tmp_path / "run", resume=20, quiet=True) as son:
        assert son.steps == 20


def test_a_mapping_of_the_wrong_shape_and_a_huge_accent_window_are_refused_at_once():
    with pytest.raises(ConfigError, match=r"returned shape \(\) for norms of shape \(4,\)"):
        GradientSonifier(TinyMLP(), wav=None, mapping=lambda n: 440.0)
    with pytest.raises(ConfigError, match=r"returned shape \(2,\)"):
        GradientSonifier(TinyMLP(), wav=None, mapping=lambda n: np.array([1.0, 2.0]))
    with pytest.raises(ConfigError, match=r"Accents.window must be an integer in 1..100000"):
        Accents(window=10 ** 9)


# ---- found by a fault probe of the server ------------------------------------------------------


def big_run(path: Path, rows: int = 400_000, value: float | None = None) -> None:
    """A run larger than the sockets' buffers, so most of it is read after a change."""
    w = Writer(path, ["a", "b"])
    norms = noisy(rows, 2) if value is None else np.full((rows, 2), value, np.float32)
    w.write(norms)
    w.close()


def stream_after(srv, run: str, change) -> list[float]:
    """Open a stream, take its first bytes, ``change()`` the files, then read the rest."""
    import base64

    s = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    s.sendall(f"GET /api/stream?run={run} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = s.recv(4096)
    change()
    s.settimeout(60)
    try:
        while b"event: reset" not in data[-4096:] and b"event: bye" not in data[-4096:]:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    s.close()
    norms: list[float] = []
    for line in data.split(b"\n"):
        if line.startswith(b'data: {"first"'):
            try:
                norms.extend(np.frombuffer(base64.b64decode(json.loads(line[6:])["norms"]), "<f4"))
            except ValueError:
                pass  # (a line cut by the chunked framing)
    return norms


def test_a_symlink_swapped_in_during_a_stream_never_leaks_the_outside_file(tmp_path, capfd):
    root = tmp_path / "runs"
    (root / "big").mkdir(parents=True)
    big_run(root / "big" / "run.gsr")
    big_run(tmp_path / "evil.gsr", value=777.0)

    def swap():
        os.symlink(tmp_path / "evil.gsr", root / "big" / "tmp.lnk")
        os.replace(root / "big" / "tmp.lnk", root / "big" / "run.gsr")

    with Server(root, port=0) as srv:
        norms = stream_after(srv, "big/run.gsr", swap)
        assert norms and 777.0 not in norms
        status, body = get(srv.port, "/api/rows?run=big/run.gsr&from=0&to=10")
        assert status == 404 and b"777" not in body
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("change", ["remove", "truncate"])
def test_a_run_removed_or_cut_back_mid_stream_ends_it_without_made_up_rows(tmp_path, capfd,
                                                                           change):
    root = tmp_path / "runs"
    (root / "big").mkdir(parents=True)
    path = root / "big" / "run.gsr"
    big_run(path, value=0.5)

    def act():
        if change == "remove":
            path.rename(tmp_path / "moved.gsr")
        else:
            with open(path, "r+b") as f:
                f.truncate(path.stat().st_size // 10)

    with Server(root, port=0) as srv:
        norms = stream_after(srv, "big/run.gsr", act)
        assert norms and set(np.unique(norms)) == {np.float32(0.5)}  # no NaN rows made up
        assert get(srv.port, "/api/runs")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


def test_bad_rows_and_bad_settings_are_problems_said_once_without_the_absolute_path(good, tmp_path,
                                                                                  capfd):
    root = tmp_path / "runs"
    raw = good.read_bytes()
    n = struct.unpack("<I", raw[8:12])[0]
    rows = bytearray(raw)
    rows[12 + n:12 + n + 8] = struct.pack("<q", 10 ** 6)  # the first step after the later ones
    for name, data in (("rows", bytes(rows)),
                       ("nan", with_header(raw, lambda h: h["settings"].update(extra="NaN")
                                           ) .replace(b'"NaN"', b"NaN"))):
        (root / name).mkdir(parents=True)
        old_file = root / name / "run.gsr"
        old_file.write_bytes(data)
        old(old_file)
    with Server(root, port=0) as srv:
        for _ in range(3):
            listing = json.loads(get(srv.port, "/api/runs")[1])
            srv.catalogue._runs = None  # look again, as a second later
        problems = {p["id"]: p["error"] for p in listing["problems"]}
        assert "step numbers that do not grow" in problems["rows/run.gsr"]
        assert "NaN is not a JSON number" in problems["nan/run.gsr"]
        assert listing["runs"] == []
        for body in (get(srv.port, "/api/run?run=rows/run.gsr")[1], json.dumps(listing).encode()):
            assert str(tmp_path).encode() not in body
    err = capfd.readouterr().err
    assert err.count("skipping rows/run.gsr") == 1 and err.count("skipping nan/run.gsr") == 1
