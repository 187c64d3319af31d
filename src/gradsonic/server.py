"""``gradsonic serve``: hear and see runs in a browser, live, from another machine.

The server follows recordings (:mod:`gradsonic.follow`) - one file, or every run under a folder -
and streams their *norms* to a page (:mod:`gradsonic.web`) that draws them and synthesises the
sound itself with WebAudio, with the run's own mapping, layout and settings. The training process
needs no change and no server: the page reads what the recording already holds, a few bytes per
voice per step.

Why the standard library (``http.server``) and server-sent events: nothing to install on a GPU
server, and the data only flows one way. An ``EventSource`` reconnects by itself and sends the
id of the last event it got (here: the next row it needs), so a page continues without a gap
after a network hiccup or a server restart. One thread per client (there are a handful, not
thousands); every client reads the rows it has not seen *from the file*, so history costs no
memory, and live rows are read and encoded once and handed to each client's bounded queue:
a client whose queue is full loses its oldest batches (counted, and fetched again from the file
by the page when it notices the gap), and a client that stops reading is disconnected after
``STALL_SECONDS`` - neither ever delays the others or the training process.

Safety: binds 127.0.0.1 by default. Any other address needs a token (generated, printed in the
URL as ``?token=...`` like Jupyter, compared in constant time), without which nothing is served;
without a token, requests must name a loopback host (no DNS rebinding). Nothing writes or runs
anything; a run is addressed by its id, which must be one of the recordings found under PATH
(no path from the request ever reaches the file system), symlinks leading outside PATH are not
followed, and a malformed request gets a 4xx.
"""

from __future__ import annotations

import collections
import hmac
import http.server
import importlib.resources
import ipaddress
import json
import os
import secrets
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .files import writer_pid
from .follow import MAX_BATCH, Tail, TailReset, b64
from .recording import RecordingError, read_header

DEFAULT_PORT = 6070
POLL_SECONDS = 0.05  # how often followed recordings are looked at
STALL_SECONDS = 10.0  # a client that takes no bytes for this long is disconnected
STATE_SECONDS = 1.0  # how often a stream tells whether the run is being written (keep-alive)
RUNS_SECONDS = 1.0  # how long the list of runs under the root is reused
QUEUE_BATCHES = 64  # live batches a client may have waiting before the oldest are dropped
STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "synth.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(eq=False)
class _Client:
    """One stream's queue of live batches (bounded: drop-oldest, counted)."""

    queue: collections.deque = field(default_factory=lambda: collections.deque())
    wake: threading.Event = field(default_factory=threading.Event)
    dropped_rows: int = 0
    reset: bool = False

    def push(self, first: int, n: int, voices: int, payload: bytes) -> None:
        if len(self.queue) >= QUEUE_BATCHES:
            self.dropped_rows += self.queue.popleft()[1]
        self.queue.append((first, n, voices, payload))
        self.wake.set()


class _Followed:
    """A run some clients follow: its tail, and their queues."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tail = Tail(path)
        self.known = self.tail.rows
        self.clients: set[_Client] = set()
        self.lock = threading.Lock()

    def poll(self) -> None:
        try:
            rows = self.tail.refresh()
        except TailReset:
            with self.lock:
                for c in self.clients:
                    c.reset = True
                    c.wake.set()
                self.tail = Tail(self.path)
                self.known = self.tail.rows
            return
        if rows <= self.known:
            return
        batches = self.tail.batches(self.known, rows)  # read and encoded once for all clients
        with self.lock:
            for b in batches:
                payload = _event("rows", b, b["first"] + b["n"])
                for c in self.clients:
                    c.push(b["first"], b["n"], b["voices"], payload)
            self.known = rows


def _event(kind: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Server:
    """Serve the runs at ``path`` (a recording, or a folder searched for them) to browsers.

    ``token``: ``None`` (default) - none on a loopback address, a generated one on any other;
    ``"auto"`` - always a generated one; or the token to require. :attr:`url` is the address to
    open (with the token). :meth:`start` serves from a background thread; :meth:`close` stops.
    """

    def __init__(self, path: str | os.PathLike[str], host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, token: str | None = None, check: bool = True) -> None:
        self.root = Path(path).absolute()
        if check and not self.root.exists() and self.root.suffix == ".gsr":
            raise ConfigError(f"serve: {str(path)!r} does not exist; give a recording (.gsr) or "
                              "a folder of runs (e.g. gradsonic-runs/, which may not exist yet)")
        if check and self.root.is_file():
            read_header(self.root)  # a clear error now if it is not a recording
        if not isinstance(host, str) or not host:
            raise ConfigError(f"serve: host must be an address such as 127.0.0.1, not {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"serve: port must be an integer in [0, 65535] (0: any free "
                              f"port), not {port!r}")
        if token == "auto" or (token is None and not is_loopback(host)):
            token = secrets.token_urlsafe(24)
        if token is not None and (not isinstance(token, str) or len(token) < 8):
            raise ConfigError("serve: a token must be a string of at least 8 characters")
        self.token = token
        self.host = host
        self._followed: dict[str, _Followed] = {}
        self._followed_lock = threading.Lock()
        self._closing = threading.Event()
        self._headers: dict[Path, tuple[int, int]] = {}  # path -> (inode, part number)
        self._runs: tuple[float, dict[str, Path]] | None = None
        #: recordings under the root that cannot be read, by id -> why
        self.problems: dict[str, str] = {}
        family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET

        class _HTTPServer(http.server.ThreadingHTTPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        try:
            self._http = _HTTPServer((host.strip("[]"), port), _handler(self))
        except OSError as e:
            raise ConfigError(f"serve: cannot listen on {host}:{port}: {e.strerror or e}"
                              + ("; is another gradsonic serve running? pick another --port"
                                 if e.errno == 98 else "")) from None
        self.port = self._http.server_address[1]
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        shown = self.host if ":" not in self.host else f"[{self.host.strip('[]')}]"
        if shown in ("0.0.0.0", "[::]"):
            shown = socket.gethostname()
        query = f"?token={self.token}" if self.token else ""
        return f"http://{shown}:{self.port}/{query}"

    def start(self) -> "Server":
        for target, name in ((self._http.serve_forever, "gradsonic-serve"),
                             (self._poll, "gradsonic-serve-poll")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def serve_forever(self) -> None:
        self.start()
        try:
            while not self._closing.wait(3600):
                pass
        finally:
            self.close()

    def close(self) -> None:
        """Stop serving; connected pages first get every row written until now."""
        if self._closing.is_set():
            return
        with self._followed_lock:
            followed = list(self._followed.values())
        for f in followed:
            try:
                f.poll()  # the last rows, so a page holds the whole run
            except Exception:
                pass
        self._closing.set()
        for f in followed:
            with f.lock:
                for c in f.clients:
                    c.wake.set()
        deadline = time.monotonic() + 2.0
        while any(f.clients for f in followed) and time.monotonic() < deadline:
            time.sleep(0.01)  # each client thread sends what is queued, then ends
        if self._threads:
            self._http.shutdown()
        self._http.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- runs ------------------------------------------------------------------------------

    def runs(self) -> dict[str, Path]:
        """Every recording under the root, by id (its path relative to the root, with ``/``);
        later parts of a run (``run-002.gsr``) belong to their first part and are not listed.
        Looked up again at most every ``RUNS_SECONDS``."""
        now = time.monotonic()
        if self._runs is None or now - self._runs[0] > RUNS_SECONDS:
            self._runs = (now, self._find_runs())
        return self._runs[1]

    def _find_runs(self) -> dict[str, Path]:
        if self.root.is_file() or self.root.suffix == ".gsr":
            return {self.root.name: self.root}
        if not self.root.is_dir():
            return {}  # not there yet: runs appear when the first job starts
        found: dict[str, Path] = {}
        real_root = os.path.realpath(self.root)
        for folder, dirs, files in os.walk(self.root, followlinks=False):
            dirs.sort()
            for name in sorted(files):
                if not name.endswith(".gsr"):
                    continue
                p = Path(folder) / name
                real = os.path.realpath(p)
                if os.path.commonpath([real, real_root]) != real_root:
                    continue  # a symlink leading outside the root
                run_id = p.relative_to(self.root).as_posix()
                part = self._part_number(p, run_id)
                if part == 1:
                    found[run_id] = p
        return found

    def _part_number(self, p: Path, run_id: str) -> int:
        """The part number in the file's header; 0 if it is not (yet) a readable recording, which
        is then listed among the problems (a file just created by a starting job has no whole
        header yet: that is not a problem)."""
        try:
            inode = p.stat().st_ino
            cached = self._headers.get(p)
            if cached is None or cached[0] != inode:
                header, _ = read_header(p)
                part = header.get("part", 1)
                self._headers[p] = cached = (inode, part if isinstance(part, int) else 1)
            self.problems.pop(run_id, None)
            return cached[1]
        except (RecordingError, OSError) as e:
            try:
                young = time.time() - p.stat().st_mtime < 5.0
            except OSError:
                young = True
            if not young and run_id not in self.problems:
                print(f"gradsonic serve: skipping {run_id}: {e}", file=sys.stderr, flush=True)
            if not young:
                self.problems[run_id] = str(e)
            return 0

    def run_path(self, run_id: str) -> Path | None:
        return self.runs().get(run_id)

    def describe(self, run_id: str, path: Path) -> dict[str, Any]:
        tail = Tail(path)
        rows = tail.rows
        last = tail.read(rows - 1, rows) if rows else None
        name = run_id if self.root.is_dir() else f"{path.parent.name}/{path.name}"
        return {"id": run_id, "name": name, "rows": rows,
                "latest_step": int(last.steps[0]) if last is not None and len(last.steps) else None,
                "voices": len(tail.layer_names), "writing": writer_pid(path) is not None,
                "modified": max(p.path.stat().st_mtime for p in tail.parts)}

    def followed(self, run_id: str, path: Path) -> _Followed:
        with self._followed_lock:
            f = self._followed.get(run_id)
            if f is None or f.path != path:
                f = self._followed[run_id] = _Followed(path)
            return f

    def meta(self, run_id: str, path: Path) -> dict[str, Any]:
        """What the page needs to draw and synthesise a run exactly as gradsonic would."""
        from .mapping import LogMapping, mapping_from_settings, mapping_settings
        from .render import synth_from_settings
        from .synth import OVER_PEAK

        tail = Tail(path)
        settings = tail.settings
        note = None
        try:
            mapping = mapping_from_settings(settings.get("mapping", {"kind": "log"}))
        except ConfigError:
            mapping = LogMapping()
            note = ("this run used a custom mapping, which a page cannot rebuild: it plays "
                    "with the default log mapping")
        synth, _ = synth_from_settings(settings, mapping=mapping)
        return {
            "id": run_id, "layer_names": tail.layer_names, "rows": tail.rows,
            "settings": settings, "created": tail.header.get("created"),
            "writing": writer_pid(path) is not None,
            "mapping": mapping_settings(mapping),
            "mapping_note": note,
            "synth": {"sample_rate": synth.sample_rate, "channels": synth.channels,
                      "layout": synth.layout.value, "tone_samples": synth.tone_samples,
                      "silence_samples": synth.silence_samples, "min_hz": synth.min_hz,
                      "max_hz": synth.max_hz, "over_peak": OVER_PEAK,
                      "every": int(settings.get("every") or 1),
                      **{name: b64(table.astype("<f4"))
                         for name, table in synth.tables().items()}},
        }

    # -- live ------------------------------------------------------------------------------

    def _poll(self) -> None:
        while not self._closing.wait(POLL_SECONDS):
            with self._followed_lock:
                followed = [f for f in self._followed.values() if f.clients]
            for f in followed:
                try:
                    f.poll()
                except Exception as e:  # a file that went bad: tell its clients, keep serving
                    print(f"gradsonic serve: {f.path}: {e}", file=sys.stderr)
                    with f.lock:
                        for c in f.clients:
                            c.reset = True
                            c.wake.set()

    def stream(self, handler: "http.server.BaseHTTPRequestHandler", run_id: str, path: Path,
               start: int) -> None:
        """Server-sent events for one client: history from the file, then live batches."""
        followed = self.followed(run_id, path)
        client = _Client()
        with followed.lock:
            if not followed.clients:  # nobody followed it: no poll has looked at it lately
                try:
                    followed.known = followed.tail.refresh()
                except TailReset:
                    followed.tail = Tail(path)
                    followed.known = followed.tail.rows
            followed.clients.add(client)
            live_from = followed.known
            tail = followed.tail
        try:
            handler.connection.settimeout(STALL_SECONDS)
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Cache-Control", "no-store")
            handler.send_header("X-Accel-Buffering", "no")
            handler.end_headers()
            out = handler.wfile
            writing = writer_pid(path) is not None
            out.write(b"retry: 1000\n\n" + _event("state", {"writing": writing, "dropped": 0}))
            cursor = min(max(0, start), live_from)
            voices = None
            while cursor < live_from and not self._closing.is_set():
                batch = tail.batches(cursor, min(live_from, cursor + MAX_BATCH))[0]
                if batch["voices"] != voices:
                    voices = batch["voices"]
                    out.write(_event("voices", {"layer_names": tail.layer_names[:voices]}))
                out.write(_event("rows", batch, batch["first"] + batch["n"]))
                cursor = batch["first"] + batch["n"]
            out.flush()
            last_state = time.monotonic()
            while True:
                client.wake.wait(STATE_SECONDS)
                client.wake.clear()
                if client.reset:
                    out.write(_event("reset", {}))
                    out.flush()
                    return
                while client.queue:
                    first, n, batch_voices, payload = client.queue.popleft()
                    if first + n <= cursor:
                        continue  # already sent from the file
                    if batch_voices != voices:
                        voices = batch_voices
                        names = followed.tail.layer_names[:voices]
                        out.write(_event("voices", {"layer_names": names}))
                    out.write(payload)
                    cursor = first + n
                if self._closing.is_set():  # everything queued is sent: say goodbye
                    out.write(_event("bye", {}))
                    out.flush()
                    return
                now = time.monotonic()
                if now - last_state >= STATE_SECONDS:  # also the keep-alive
                    out.write(_event("state", {"writing": writer_pid(path) is not None,
                                               "dropped": client.dropped_rows}))
                    last_state = now
                out.flush()
        except (OSError, ValueError):  # the client went away or stalled: just stop
            pass
        finally:
            with followed.lock:
                followed.clients.discard(client)


def _handler(server: Server) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "gradsonic-serve"
        default_request_version = "HTTP/1.0"  # a status line even in answers to garbage
        sys_version = ""
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def send_error(self, code: int, message: str | None = None,
                       explain: str | None = None) -> None:
            if code == 505:  # a malformed request line is the client's fault: a 4xx
                code, message = 400, f"unsupported HTTP version ({message})"
            super().send_error(code, message, explain)

        def do_GET(self) -> None:
            try:
                self._get()
            except (ConnectionError, TimeoutError, socket.timeout):
                self.close_connection = True
            except Exception as e:  # never a traceback to a client, never a dead server
                self.close_connection = True
                print(f"gradsonic serve: {self.path!r}: {''.join(traceback.format_exception(e))}",
                      file=sys.stderr)
                try:
                    self._send(500, "text/plain; charset=utf-8",
                               f"internal error: {type(e).__name__}".encode())
                except OSError:
                    pass

        def do_HEAD(self) -> None:
            self._send(405, "text/plain; charset=utf-8", b"")

        def _refuse(self) -> None:
            self._send(405, "text/plain; charset=utf-8",
                       b"gradsonic serve only reads: use GET\n", allow="GET")

        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

        def _send(self, code: int, ctype: str, body: bytes, **headers: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            for k, v in headers.items():
                self.send_header(k.replace("_", "-").title(), v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data: Any, code: int = 200) -> None:
            self._send(code, "application/json", json.dumps(data).encode())

        def _error(self, code: int, message: str) -> None:
            self._json({"error": message}, code)

        def _authorised(self, query: dict[str, list[str]]) -> bool:
            if server.token is None:
                try:
                    host = urllib.parse.urlsplit("//" + (self.headers.get("Host") or "")).hostname
                except ValueError:
                    host = None
                if not is_loopback(host or "") and host != server.host:
                    self._error(403, f"Host {self.headers.get('Host')!r} refused: this server "
                                "answers loopback names only")
                    return False
                return True
            given = query.get("token", [None])[-1]
            if given is None:
                for part in (self.headers.get("Cookie") or "").split(";"):
                    k, _, v = part.strip().partition("=")
                    if k == "gradsonic_token":
                        given = v
            if given is not None and hmac.compare_digest(given.encode(), server.token.encode()):
                return True
            self._error(403, "a token is required: open the URL gradsonic serve printed "
                             "(it ends in ?token=...)")
            return False

        def _get(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            try:
                query = urllib.parse.parse_qs(url.query, strict_parsing=False,
                                              errors="strict", max_num_fields=16)
                path = urllib.parse.unquote(url.path, errors="strict")
            except (UnicodeDecodeError, ValueError):
                self._error(400, "malformed request")
                return
            if not self._authorised(query):
                return
            name = "index.html" if path == "/" else path.lstrip("/")
            if name in STATIC:
                body = importlib.resources.files("gradsonic.web").joinpath(name).read_bytes()
                extra = {}
                if server.token and "token" in query:
                    extra["Set_Cookie"] = (f"gradsonic_token={server.token}; Path=/; HttpOnly; "
                                           "SameSite=Strict")
                self._send(200, STATIC[name], body, **extra)
                return
            if path == "/favicon.ico":
                self._send(204, "image/x-icon", b"")
                return
            if path == "/api/runs":
                out = []
                for run_id, p in server.runs().items():
                    try:
                        out.append(server.describe(run_id, p))
                    except (RecordingError, OSError, TailReset):
                        continue  # not readable (yet): not listed
                out.sort(key=lambda r: -r["modified"])
                self._json({"root": str(server.root), "runs": out,
                            "problems": [{"id": k, "error": v}
                                         for k, v in sorted(server.problems.items())]})
                return
            if path in ("/api/run", "/api/rows", "/api/stream"):
                run_id = query.get("run", [""])[-1]
                p = server.run_path(run_id)
                if p is None:
                    self._error(404, f"no run {run_id!r} under {str(server.root)!r}")
                    return
                try:
                    if path == "/api/run":
                        self._json(server.meta(run_id, p))
                        return
                    lo = _int(query, "from", 0)
                    if path == "/api/rows":
                        hi = _int(query, "to", lo + MAX_BATCH)
                        self._json({"batches": Tail(p).batches(lo, min(hi, lo + 16 * MAX_BATCH))})
                        return
                    last_id = self.headers.get("Last-Event-ID")
                    if last_id is not None:
                        lo = int(last_id) if last_id.isdigit() else lo
                    server.stream(self, run_id, p, lo)
                    self.close_connection = True
                except _BadParam as e:
                    self._error(400, str(e))
                except (RecordingError, TailReset) as e:
                    self._error(409, f"run {run_id!r} cannot be read now: {e}")
                return
            self._error(404, f"not found: {path!r}")

    return Handler


class _BadParam(ValueError):
    pass


def _int(query: dict[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    v = values[-1]
    if not v.isdigit() or len(v) > 15:
        raise _BadParam(f"{name}={v!r} must be a row number (0, 1, 2, ...)")
    return int(v)


def parse_serve(value: Any) -> tuple[str, int]:
    """``GradientSonifier(serve=...)``: True (port 6070), a port, or ``"host:port"``."""
    if value is True:
        return "127.0.0.1", DEFAULT_PORT
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 65535:
        return "127.0.0.1", value
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and host and port.isdigit() and int(port) <= 65535:
            return host.strip("[]"), int(port)
    raise ConfigError(f"serve must be True (port {DEFAULT_PORT}), a port number in [0, 65535] "
                      f"or 'host:port', not {value!r}")


def serve(path: str | os.PathLike[str], host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          token: str | None = None) -> None:
    """Serve until interrupted (the ``gradsonic serve`` command)."""
    server = Server(path, host, port, token)
    print(f"gradsonic serve: {server.root} at {server.url}", file=sys.stderr, flush=True)
    if not is_loopback(host):
        print("  anyone who can reach this address with the token can read these runs",
              file=sys.stderr)
    else:
        print(f"  from another machine: ssh -L {server.port}:localhost:{server.port} "
              f"{socket.gethostname()}, then open {server.url.replace(server.host, 'localhost')}",
              file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("gradsonic serve: stopped", file=sys.stderr)


__all__ = ["DEFAULT_PORT", "Server", "parse_serve", "serve"]
