"""``--patches`` for ``overhead_client.py``: ``live_tb+callback`` plays through PortAudio's own
callback thread (how LiveSink played until 2026-12-01) instead of gradsonic's ``Pump``:

    python benchmarks/overhead_client.py --variants bare,live_tb,live_tb+callback \\
        --patches benchmarks/live_modes.py
"""

from __future__ import annotations


def apply(name: str, stage: str, son: object) -> None:
    if name == "callback" and stage == "pre":
        import gradsonic.sinks.live as live
        from live_callback import callback_stream

        live.pyaudio_stream = callback_stream
        init = live.LiveSink.__init__

        def patched(self, *args, **kwargs):
            kwargs.setdefault("stream_factory", callback_stream)
            init(self, *args, **kwargs)
        live.LiveSink.__init__ = patched
