"""Live rows for the page: each followed run is polled once for all its clients, and every
client gets its rows as server-sent events, history first, from the file.

Everything here runs on the server's event loop. A followed run's new rows are read and encoded
once and pushed to each client's bounded queue: a client whose queue is full loses its oldest
batches (counted in its ``state`` events; the page fetches the gap from ``/api/rows``). A client
is only ever written to after its previous bytes were taken (``flush`` is awaited: backpressure),
and one that takes nothing for ``STALL_SECONDS`` is disconnected - neither ever delays another
client or the training process.
"""

from __future__ import annotations

import asyncio
import collections
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..files import writer_pid
from ..follow import MAX_BATCH, Tail, TailReset

POLL_SECONDS = 0.05  # how often followed recordings are looked at
STALL_SECONDS = 10.0  # a client that takes no bytes for this long is disconnected
STATE_SECONDS = 1.0  # how often a stream tells whether the run is being written (keep-alive)
QUEUE_BATCHES = 64  # live batches a client may have waiting before the oldest are dropped


def event(kind: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


@dataclass(eq=False)
class Client:
    """One stream's queue of live batches (bounded: drop-oldest, counted)."""

    queue: collections.deque = field(default_factory=collections.deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    dropped_rows: int = 0
    reset: bool = False

    def push(self, first: int, n: int, voices: int, payload: bytes) -> None:
        if len(self.queue) >= QUEUE_BATCHES:
            self.dropped_rows += self.queue.popleft()[1]
        self.queue.append((first, n, voices, payload))
        self.wake.set()


class Followed:
    """A run some clients follow: its tail, and their queues."""

    def __init__(self, path: Path, open_tail: Callable[[Path], Tail]) -> None:
        self.path = path
        self.open_tail = open_tail
        self.tail = open_tail(path)
        self.known = self.tail.rows
        self.clients: set[Client] = set()

    def poll(self) -> None:
        try:
            rows = self.tail.refresh()
        except TailReset:
            self.reset()
            self.reopen()
            return
        if rows <= self.known:
            return
        for b in self.tail.batches(self.known, rows):  # read and encoded once for all clients
            payload = event("rows", b, b["first"] + b["n"])
            for c in self.clients:
                c.push(b["first"], b["n"], b["voices"], payload)
        self.known = rows

    def reopen(self) -> None:
        old, self.tail = self.tail, self.open_tail(self.path)
        old.close()
        self.known = self.tail.rows

    def reset(self) -> None:
        """The file was cut back, replaced or went bad: every page starts again."""
        for c in self.clients:
            c.reset = True
            c.wake.set()

    def join(self, client: Client) -> tuple[int, Tail]:
        """Add a client; returns the row live batches start at and the tail to read before."""
        if not self.clients:  # nobody followed it: no poll has looked at it lately
            try:
                self.known = self.tail.refresh()
            except TailReset:
                self.reopen()
        self.clients.add(client)
        return self.known, self.tail


async def stream(followed: Followed, start: int, write: Callable[[bytes], Awaitable[None]],
                 closing: asyncio.Event) -> None:
    """Server-sent events for one client: history from the file, then live batches, until the
    client goes (``write`` raises) or the server closes (then: every queued row, and ``bye``)."""
    client = Client()
    live_from, tail = followed.join(client)
    try:
        writing = writer_pid(followed.path) is not None
        await write(b"retry: 1000\n\n" + event("state", {"writing": writing, "dropped": 0}))
        cursor = min(max(0, start), live_from)
        voices = None
        while cursor < live_from and not closing.is_set():
            batch = tail.batches(cursor, min(live_from, cursor + MAX_BATCH))[0]
            chunk = b""
            if batch["voices"] != voices:
                voices = batch["voices"]
                chunk += event("voices", {"layer_names": tail.layer_names[:voices]})
            await write(chunk + event("rows", batch, batch["first"] + batch["n"]))
            cursor = batch["first"] + batch["n"]
        loop = asyncio.get_running_loop()
        last_state = loop.time()
        while True:
            try:
                await asyncio.wait_for(client.wake.wait(), STATE_SECONDS)
            except asyncio.TimeoutError:
                pass
            client.wake.clear()
            if client.reset:
                await write(event("reset", {}))
                return
            chunk = b""
            while client.queue:
                first, n, batch_voices, payload = client.queue.popleft()
                if first + n <= cursor:
                    continue  # already sent from the file
                if batch_voices != voices:
                    voices = batch_voices
                    names = followed.tail.layer_names[:voices]
                    chunk += event("voices", {"layer_names": names})
                chunk += payload
                cursor = first + n
            if closing.is_set():  # everything queued is sent: say goodbye
                await write(chunk + event("bye", {}))
                return
            now = loop.time()
            if now - last_state >= STATE_SECONDS:  # also the keep-alive
                chunk += event("state", {"writing": writer_pid(followed.path) is not None,
                                         "dropped": client.dropped_rows})
                last_state = now
            if chunk:
                await write(chunk)
    finally:
        followed.clients.discard(client)
