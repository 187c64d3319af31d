"""The server's lifecycle: bind at construction, serve from a thread of its own, close cleanly.

:class:`Server` binds its port when made (so ``GradientSonifier(serve=...)`` fails before any
file is written), then :meth:`Server.start` runs an asyncio loop in a daemon thread with the
Tornado server (:mod:`.app`) and one poll of the followed runs every ``POLL_SECONDS``. :meth:`close`
(from any thread, idempotent) lets connected pages get every row written until then and a
``bye``, then stops accepting, closes every connection and joins the thread.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import tornado.netutil

from .._threads import lower_priority
from ..errors import ConfigError
from ..recording import read_header
from . import stream as live
from .app import http_server, is_loopback
from .catalogue import Catalogue

DEFAULT_PORT = 6070


class Server:
    """Serve the runs at ``path`` (a recording, or a folder searched for them) to browsers.

    ``token``: ``None`` (default) - none on a loopback address, a generated one on any other;
    ``"auto"`` - always a generated one; or the token to require. :attr:`url` is the address to
    open (with the token). :meth:`start` serves from a background thread; :meth:`close` stops.
    """

    def __init__(self, path: str | os.PathLike[str], host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, token: str | None = None, check: bool = True) -> None:
        root = Path(path).absolute()
        if check and not root.exists() and root.suffix == ".gsr":
            raise ConfigError(f"serve: {str(path)!r} does not exist; give a recording (.gsr) or "
                              "a folder of runs (e.g. gradsonic-runs/, which may not exist yet)")
        if check and root.is_file():
            read_header(root)  # a clear error now if it is not a recording
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
        self.host = host.strip("[]")
        self.catalogue = Catalogue(root)
        self.root = root
        self._followed: dict[str, live.Followed] = {}
        try:
            self._sockets = tornado.netutil.bind_sockets(port, address=self.host,
                                                         reuse_port=False)
        except OSError as e:
            raise ConfigError(f"serve: cannot listen on {host}:{port}: {e.strerror or e}"
                              + ("; is another gradsonic serve running? pick another --port"
                                 if e.errno == 98 else "")) from None
        self.port = self._sockets[0].getsockname()[1]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._closed = False
        self.closing: asyncio.Event | None = None  # made on the loop

    @property
    def problems(self) -> dict[str, str]:
        """Recordings under the root that cannot be read, by id -> why."""
        return self.catalogue.problems

    @property
    def url(self) -> str:
        shown = self.host if ":" not in self.host else f"[{self.host}]"
        if shown in ("0.0.0.0", "[::]"):
            shown = socket.gethostname()
        query = f"?token={self.token}" if self.token else ""
        return f"http://{shown}:{self.port}/{query}"

    def runs(self) -> dict[str, Path]:
        return self.catalogue.runs()

    def followed(self, run_id: str, path: Path) -> live.Followed:
        f = self._followed.get(run_id)
        if f is None or f.path != path:
            if f is not None:
                f.tail.close()
            f = self._followed[run_id] = live.Followed(path, self.catalogue.tail)
        return f

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "Server":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gradsonic-serve",
                                            daemon=True)
            self._thread.start()
            self._started.wait()
        return self

    def _run(self) -> None:
        lower_priority()  # (in a training process: training first)
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.closing = asyncio.Event()
        self._stopped = asyncio.Event()
        self._http = http_server(self)
        self._http.add_sockets(self._sockets)
        poller = loop.create_task(self._poll())
        self._started.set()
        try:
            loop.run_until_complete(self._stopped.wait())
            poller.cancel()
            loop.run_until_complete(asyncio.gather(poller, return_exceptions=True))
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()

    async def _poll(self) -> None:
        while not self.closing.is_set():
            for f in [f for f in self._followed.values() if f.clients]:
                try:
                    f.poll()
                except Exception as e:  # a file that went bad: tell its clients, keep serving
                    print(f"gradsonic serve: {f.path.name}: {e}", file=sys.stderr)
                    f.reset()
            try:
                await asyncio.wait_for(self.closing.wait(), live.POLL_SECONDS)
            except asyncio.TimeoutError:
                pass

    async def _shutdown(self) -> None:
        for f in list(self._followed.values()):
            try:
                f.poll()  # the last rows, so a page holds the whole run
            except Exception:
                pass
        self.closing.set()
        self._http.stop()  # no new connections
        for f in self._followed.values():
            for c in f.clients:
                c.wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while any(f.clients for f in self._followed.values()) and loop.time() < deadline:
            await asyncio.sleep(0.01)  # each stream sends what is queued, then ends
        await self._http.close_all_connections()
        self._stopped.set()

    def close(self) -> None:
        """Stop serving; connected pages first get every row written until now."""
        if self._closed:
            return
        self._closed = True
        if self._thread is None:  # never started: only the bound sockets to let go
            for s in self._sockets:
                s.close()
            return
        assert self._loop is not None
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        except Exception:
            pass
        self._thread.join(timeout=10)

    def serve_forever(self) -> None:
        """Serve in the background and wait here until interrupted (Ctrl-C) or closed."""
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=3600)
        finally:
            self.close()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()


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
