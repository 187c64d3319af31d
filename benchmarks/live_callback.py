"""What live audio's threads cost per second, by ``frames_per_buffer`` and by who drives
PortAudio: gradsonic's ``Pump`` thread writing blocking buffers (``pump``, the default) or
PortAudio's own callback thread (``callback``, how LiveSink played until 2026-12-01).

    python benchmarks/live_callback.py [--frames 256,512,1024] [--modes pump,callback]
                                       [--rounds 3] [--steps 120]

Needs PyAudio and an output device; on a machine without a sound card give it a clocked one (the
repository's AUDIO_TESTING notes: PulseAudio's ``module-pipe-sink`` with
``use_system_clock_for_timing=yes``, ``ALSA_CONFIG_PATH`` and ``PULSE_SERVER`` set).

Each run trains the pytorch/examples MNIST network (random batches of 64, Adadelta) for
``--steps`` steps with ``GradientSonifier(live=LiveSink(frames_per_buffer=N))`` and no files, and
reports: callbacks per second, the CPU of the thread that calls ``LiveSink._callback``
(``/proc/self/task/<tid>/schedstat``: PortAudio + PyAudio + the ALSA plugin + the Python
callback), the Python callback's own share (timed with the thread's CPU clock), and the CPU of
every thread the sonifier started except its worker (the audio thread plus the sound server's
client threads, e.g. PulseAudio's ``threaded-ml``), per second of training. Configurations run
in rotating order, ``--rounds`` times; medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def callback_stream(sample_rate, frames_per_buffer, callback, device, channels=1):
    """The baseline: PortAudio's callback mode, its own thread calling ``callback``."""
    from gradsonic.sinks.live import _import_pyaudio

    pyaudio = _import_pyaudio()
    pa = pyaudio.PyAudio()
    stream = pa.open(format=pyaudio.paFloat32, channels=channels, rate=sample_rate, output=True,
                     frames_per_buffer=frames_per_buffer, output_device_index=device,
                     stream_callback=callback, start=False)
    stream._gradsonic_pa = pa  # LiveSink._release terminates it
    return stream


def run(frames: int, steps: int, mode: str) -> tuple[float, float, float, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from overhead_client import _mnist_net, _threads_cpu

    from gradsonic import GradientSonifier
    from gradsonic.sinks.live import LiveSink

    python_ns: list[int] = []
    tids: set[int] = set()

    class Timed(LiveSink):
        def _callback(self, *args):  # what PortAudio calls, timed on its own thread
            tids.add(threading.get_native_id())
            t0 = time.thread_time_ns()
            try:
                return super()._callback(*args)
            finally:
                python_ns.append(time.thread_time_ns() - t0)

    model = _mnist_net()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    sink = Timed(frames_per_buffer=frames,
                 stream_factory=callback_stream if mode == "callback" else None)
    existing = set(_threads_cpu())
    with tempfile.TemporaryDirectory() as tmp:
        son = GradientSonifier(model, live=sink, wav=None, record=None, quiet=True,
                               run_dir=tmp)
        opt = son.wrap(opt)
        if not sink.available:
            son.close()
            raise SystemExit("no live audio: give PyAudio an output device (AUDIO_TESTING.md)")
        before, t0, n0 = _threads_cpu(), time.perf_counter(), len(python_ns)
        for _ in range(steps):
            opt.zero_grad()
            F.nll_loss(model(x), y).backward()
            opt.step()
        elapsed, after = time.perf_counter() - t0, _threads_cpu()
        calls, py = len(python_ns) - n0, sum(python_ns[n0:]) / 1e9
        worker = {t.native_id for t in threading.enumerate() if t.name == "gradsonic-worker"}
        son.close()
    thread = sum(after.get(t, 0.0) - before.get(t, 0.0) for t in tids)
    new = sum(after.get(t, 0.0) - before.get(t, 0.0) for t in after
              if t not in existing and t not in worker)
    return calls / elapsed, 1e3 * thread / elapsed, 1e3 * py / elapsed, 1e3 * new / elapsed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", default="256,512,1024")
    p.add_argument("--modes", default="pump,callback")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=120)
    args = p.parse_args(argv)
    sizes = [int(f) for f in args.frames.split(",")]
    configs = [(m, f) for f in sizes for m in args.modes.split(",")]
    results: dict[tuple[str, int], list[tuple[float, ...]]] = {c: [] for c in configs}
    for r in range(args.rounds):
        for c in configs[r % len(configs):] + configs[: r % len(configs)]:
            results[c].append(run(c[1], args.steps, c[0]))
    print(f"command: {' '.join(['python', *sys.argv])}\n")
    print("| frames_per_buffer | mode | callbacks/s | audio thread CPU ms/s | of which Python "
          "ms/s | all new threads but the worker ms/s |")
    print("| --- | --- | --- | --- | --- | --- |")
    for m, f in configs:
        cols = [statistics.median(v[i] for v in results[m, f]) for i in range(4)]
        print(f"| {f} | {m} | {cols[0]:.0f} | {cols[1]:.1f} | {cols[2]:.1f} | {cols[3]:.1f} |")


if __name__ == "__main__":
    main()
