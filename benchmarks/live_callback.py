"""What PortAudio's callback thread costs per second of live audio, by ``frames_per_buffer``.

    python benchmarks/live_callback.py [--frames 256,512,1024] [--rounds 3] [--steps 120]

Needs PyAudio and an output device; on a machine without a sound card give it a clocked one (the
repository's AUDIO_TESTING notes: PulseAudio's ``module-pipe-sink`` with
``use_system_clock_for_timing=yes``, ``ALSA_CONFIG_PATH`` and ``PULSE_SERVER`` set).

Each run trains the pytorch/examples MNIST network (random batches of 64, Adadelta) for
``--steps`` steps with ``GradientSonifier(live=LiveSink(frames_per_buffer=N))`` and no files, and
reports: callbacks per second, the callback thread's whole CPU (``/proc/self/task/<tid>/schedstat``:
PortAudio + PyAudio + the ALSA plugin + the Python callback) and the Python callback's own share
(``LiveSink._callback`` timed with the thread's CPU clock), per second of training. Sizes run in
rotating order, ``--rounds`` times; medians.
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


def run(frames: int, steps: int) -> tuple[float, float, float]:
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
    sink = Timed(frames_per_buffer=frames)
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
        son.close()
    thread = sum(after.get(t, 0.0) - before.get(t, 0.0) for t in tids)
    return calls / elapsed, 1e3 * thread / elapsed, 1e3 * py / elapsed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", default="256,512,1024")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=120)
    args = p.parse_args(argv)
    sizes = [int(f) for f in args.frames.split(",")]
    results: dict[int, list[tuple[float, float, float]]] = {f: [] for f in sizes}
    for r in range(args.rounds):
        for f in sizes[r % len(sizes):] + sizes[: r % len(sizes)]:
            results[f].append(run(f, args.steps))
    print(f"command: {' '.join(['python', *sys.argv])}\n")
    print("| frames_per_buffer | callbacks/s | callback thread CPU ms/s | of which Python ms/s |")
    print("| --- | --- | --- | --- |")
    for f in sizes:
        cols = [statistics.median(v[i] for v in results[f]) for i in range(3)]
        print(f"| {f} | {cols[0]:.0f} | {cols[1]:.1f} | {cols[2]:.1f} |")


if __name__ == "__main__":
    main()
