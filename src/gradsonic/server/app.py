"""The HTTP layer of ``gradsonic serve``, on Tornado.

Why Tornado: a maintained HTTP/1.1 server with no dependencies of its own (Jupyter's server runs
on it, so it is already there on most machines that train in notebooks), whose HTTP parser keeps
bodies apart from requests, answers malformed requests with a 400, bounds header and body sizes
and times out slow or idle connections - and whose ``flush()`` is awaitable, which gives the
event streams backpressure. It runs on asyncio, in the server's own thread: one thread for any
number of clients.

Every response carries the security headers (a Content-Security-Policy allowing the page's own
files only, ``frame-ancestors 'none'``, ``nosniff``, ``no-store``, no referrer); no response
names a path outside the served folder; a request's parameters are checked and a bad one is a
400 naming it; nothing but GET is answered.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import ipaddress
import json
import re
import sys
import traceback
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.web

from ..follow import MAX_BATCH, TailReset
from ..recording import RecordingError
from . import stream as live

STATIC = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "view.js": "text/javascript; charset=utf-8", "view.css": "text/css; charset=utf-8",
          "synth.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
# Host: a DNS name or IPv4 address, or an IPv6 address in brackets, then an optional port
_HOST = re.compile(r"^(?:(?P<name>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252}[A-Za-z0-9])?)|"
                   r"\[(?P<ip6>[0-9A-Fa-f:.]{2,45})\])(?::(?P<port>\d{1,5}))?$")
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
MAX_CONNECTIONS = 256  # at once; more are closed as they arrive
IDLE_SECONDS = 10.0  # to send a request's headers, and between keep-alive requests
BODY_SECONDS = 5.0
MAX_HEADER_BYTES = 128 * 1024  # beyond it Tornado drops the connection unanswered
MAX_URI_BYTES = 8 * 1024  # beyond it: 414
MAX_BODY_BYTES = 64 * 1024


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str | None) -> str | None:
    """The host name of a ``Host`` header, or None if it is not a well-formed one
    (``evil.com@localhost``, ``localhost/evil`` and the like are not)."""
    hit = _HOST.match(header or "")
    if hit is None or (hit["port"] is not None and int(hit["port"]) > 65535):
        return None
    return (hit["name"] or hit["ip6"]).lower()


class BadParam(ValueError):
    """A request parameter that is not what the API takes."""


def row_number(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 15:
        raise BadParam(f"{name}={value[:40]!r} must be a row number (0, 1, 2, ...)")
    return int(value)


class Base(tornado.web.RequestHandler):
    """Security headers, the token or Host check, and errors as one JSON line."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")

    def initialize(self, server: Any) -> None:
        self.server = server

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        for k, v in SECURITY_HEADERS.items():
            self.set_header(k, v)

    def prepare(self) -> None:
        if len(self.request.uri or "") > MAX_URI_BYTES:
            self.fail(414, f"request URI longer than {MAX_URI_BYTES} bytes")
            return
        if self.request.method != "GET":
            self.set_header("Allow", "GET")
            self.fail(405, "gradsonic serve only reads: use GET")
            return
        try:  # every argument must be text: %ff in a query or path is a 400
            self.path_text = _decode(self.request.path)
            for values in self.request.query_arguments.values():
                for v in values:
                    v.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(400, "malformed request")
            return
        if not self.authorised():
            return

    def authorised(self) -> bool:
        token = self.server.token
        if token is None:
            host = host_name(self.request.headers.get("Host"))
            if host is None or not (is_loopback(host) or host == self.server.host.lower()):
                shown = (self.request.headers.get("Host") or "")[:80]
                self.fail(403, f"Host {shown!r} refused: this server answers loopback names "
                               "only")
                return False
            return True
        given = self.get_query_argument("token", None) or self.get_cookie("gradsonic_token")
        if given is not None and hmac.compare_digest(given.encode(), token.encode()):
            return True
        self.fail(403, "a token is required: open the URL gradsonic serve printed (it ends in "
                       "?token=...)")
        return False

    def fail(self, code: int, message: str) -> None:
        self.set_status(code)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": message}))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": self._reason}))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, tornado.web.HTTPError):
            return
        print(f"gradsonic serve: {self.request.path[:200]!r}: "
              f"{''.join(traceback.format_exception(typ, value, tb))}", file=sys.stderr)

    def short(self, e: BaseException) -> str:
        return self.server.catalogue.redact(str(e))[:300]

    def json(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))

    def run(self) -> tuple[str, Any] | None:
        run_id = self.get_query_argument("run", "")
        path = self.server.catalogue.path(run_id)
        if path is None:
            self.fail(404, f"no run {run_id[:200]!r} here")
            return None
        return run_id, path

    def get(self, *args: Any) -> None:  # pragma: no cover - subclasses answer
        self.fail(404, "not found")

    head = post = put = delete = patch = options = get


def _decode(path: str) -> str:
    """The request path; Tornado hands it over %-encoded."""
    import urllib.parse

    return urllib.parse.unquote(path, errors="strict")


class Static(Base):
    def get(self, *args: Any) -> None:
        name = "index.html" if self.path_text == "/" else self.path_text.lstrip("/")
        if name == "favicon.ico":
            self.set_status(204)
            self.finish()
            return
        if name not in STATIC:
            self.fail(404, f"not found: {self.path_text[:200]!r}")
            return
        if self.server.token and self.get_query_argument("token", None):
            self.set_cookie("gradsonic_token", self.server.token, httponly=True,
                            samesite="Strict", path="/")
        self.set_header("Content-Type", STATIC[name])
        self.finish(importlib.resources.files("gradsonic.web").joinpath(name).read_bytes())


class Runs(Base):
    def get(self) -> None:
        self.json(self.server.catalogue.listing())


class Run(Base):
    def get(self) -> None:
        found = self.run()
        if found is None:
            return
        try:
            self.json(self.server.catalogue.meta(*found))
        except (RecordingError, TailReset, OSError) as e:
            self.server.catalogue.problem(found[0], found[1], e)
            self.fail(409, f"run {found[0]!r} cannot be read now: {self.short(e)}")


class Rows(Base):
    def get(self) -> None:
        found = self.run()
        if found is None:
            return
        try:
            lo = row_number(self.get_query_argument("from", None), "from", 0)
            hi = row_number(self.get_query_argument("to", None), "to", lo + MAX_BATCH)
            with self.server.catalogue.tail(found[1]) as tail:
                self.json({"batches": tail.batches(lo, min(hi, lo + 16 * MAX_BATCH))})
        except BadParam as e:
            self.fail(400, str(e))
        except (RecordingError, TailReset, OSError) as e:
            self.fail(409, f"run {found[0]!r} cannot be read now: {self.short(e)}")


class Stream(Base):
    async def get(self) -> None:
        found = self.run()
        if found is None:
            return
        try:
            start = row_number(self.get_query_argument("from", None), "from", 0)
            last_id = self.request.headers.get("Last-Event-ID")
            if last_id is not None:
                start = row_number(last_id, "Last-Event-ID", start)
            followed = self.server.followed(*found)
        except BadParam as e:
            self.fail(400, str(e))
            return
        except (RecordingError, TailReset, OSError) as e:
            self.fail(409, f"run {found[0]!r} cannot be read now: {self.short(e)}")
            return
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Accel-Buffering", "no")
        try:
            await live.stream(followed, start, self._send, self.server.closing)
        except (tornado.iostream.StreamClosedError, _Stalled):
            return
        except (RecordingError, TailReset, OSError) as e:  # the file went bad or away: the page
            print(f"gradsonic serve: {found[0]}: {self.short(e)}", file=sys.stderr)  # starts again
            try:
                await self._send(live.event("reset", {}))
            except (tornado.iostream.StreamClosedError, _Stalled):
                return
        if not self._finished:
            self.finish()

    async def _send(self, data: bytes) -> None:
        """Write and wait until the client took it; a client that takes nothing for
        ``STALL_SECONDS`` is disconnected."""
        self.write(data)
        done = asyncio.ensure_future(self.flush())
        await asyncio.wait({done}, timeout=live.STALL_SECONDS)
        if not done.done():
            self.request.connection.stream.close()
            raise _Stalled()
        done.result()

    def on_connection_close(self) -> None:
        pass  # the next write raises StreamClosedError and the stream ends


class _Stalled(Exception):
    pass


class NotFound(Base):
    def get(self, *args: Any) -> None:
        self.fail(404, f"not found: {self.path_text[:200]!r}")





class HTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's server with a cap on simultaneous connections."""

    def handle_stream(self, stream: Any, address: Any) -> None:
        if len(self._connections) >= MAX_CONNECTIONS:
            stream.close()
            return
        super().handle_stream(stream, address)


def application(server: Any) -> tornado.web.Application:
    kw = {"server": server}
    return tornado.web.Application(
        [(r"/api/runs", Runs, kw), (r"/api/run", Run, kw), (r"/api/rows", Rows, kw),
         (r"/api/stream", Stream, kw), (r"/[^/]*", Static, kw)],
        default_handler_class=NotFound, default_handler_args=kw,
        log_function=lambda handler: None, compress_response=False, serve_traceback=False)


def http_server(server: Any) -> HTTPServer:
    return HTTPServer(application(server), idle_connection_timeout=IDLE_SECONDS,
                      body_timeout=BODY_SECONDS, max_header_size=MAX_HEADER_BYTES,
                      max_body_size=MAX_BODY_BYTES)
