"""Real-client overhead of gradsonic: the pytorch/examples MNIST script, one process per run.

    python benchmarks/overhead_client.py [--pairs 10] [--steps 300] [--variants bare,default,live_tb]
                                     [--model mnist|lm16|both] [--data DIR] [--json FILE]
    python benchmarks/overhead_client.py --report FILE.json   # the tables of an earlier run

What a user sees when adding the two lines to their script::

    son = GradientSonifier(model)            # run folder gradsonic-runs/<time>/: run.wav + run.gsr
    optimizer = son.wrap(optimizer)
    ... train ...
    son.close()

Every run is a fresh ``python`` subprocess (its own imports, allocator, thread pools - nothing
warmed up by an earlier variant), started in a fresh temporary folder (the default run folder
goes there). Inside the child the clock covers the training loop only (process start, imports
and data loading are excluded): ``loop`` = the steps, ``loop+close`` = the steps plus
``son.close()`` (draining the worker, final headers). Runs are interleaved: each *pair* (round)
runs every variant once, the order rotating from round to round; the overhead of a variant is
its time over the bare run of the same round, minus 1, reported as median and min..max over the
rounds (the machines this runs on are shared and noisy: never compare single runs).

Models (``--model``):

* ``mnist``: pytorch/examples ``mnist/main.py``'s ``Net`` (conv 1->32, conv 32->64, max-pool,
  dropout, fc 9216->128, fc 128->10), Adadelta lr=1.0, StepLR(gamma=0.7), batch 64, log-softmax
  + NLL, ``loss.item()`` every 10 batches as the example prints. Data: torchvision's ``MNIST``
  dataset + ``DataLoader(shuffle=True)`` over the real training set (the example's input
  pipeline: PIL + ToTensor + Normalize per image, on the training thread), read from the gzipped
  IDX files in ``--data`` (unpacked once into a cache folder for torchvision); without
  torchvision, pre-normalised tensors indexed by a shuffled permutation.
* ``lm16``: a small transformer LM, embedding(1000, 128) + 4 ``nn.TransformerEncoderLayer``
  (d_model 128, 4 heads, ff 512) + linear head, AdamW, random tokens (batch 16 x 64); the
  sonifier hears 16 voices (each layer's in-projection, out-projection, linear1, linear2; the
  rest are guards) - the default voice budget's worst case.

Variants (``--variants``, comma-separated):

* ``bare``: no gradsonic at all (not even imported).
* ``imported``: ``import gradsonic`` (NumPy, soundfile, ...), nothing attached: tells what the
  imports alone change (a control: a ``default`` run faster than ``bare`` is not gradsonic
  making training faster).
* ``default``: ``GradientSonifier(model)`` with its defaults (WAV + recording in the run folder,
  accents on).
* ``live_tb``: ``GradientSonifier(model, live=True, sinks=[TensorBoardSink(<run>/tb)])``. Live
  playback needs PyAudio and an output device; on a machine without a sound card, give it a
  clocked one (see the repository's AUDIO_TESTING notes: PulseAudio's ``module-pipe-sink`` with
  ``use_system_clock_for_timing=yes``, ``ALSA_CONFIG_PATH`` and ``PULSE_SERVER`` in the
  environment, which the children inherit). The table says whether live audio really played.
* ``<variant>+<patch>+...``: with monkeypatches from ``--patches FILE`` (a module defining
  ``apply(name, stage, son)``), for trying changes without editing the package.

Each child also reports the CPU time of the training thread, of the ``gradsonic-worker`` thread
(read by the thread itself when it ends, ``time.thread_time()``) and of the whole process.
The table is Markdown.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ----------------------------------------------------------------------------------------------
# child: one training run


def _mnist_net():
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Net(nn.Module):  # pytorch/examples mnist/main.py, verbatim
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(0.25)
            self.dropout2 = nn.Dropout(0.5)
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = self.conv1(x)
            x = F.relu(x)
            x = self.conv2(x)
            x = F.relu(x)
            x = F.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = torch.flatten(x, 1)
            x = self.fc1(x)
            x = F.relu(x)
            x = self.dropout2(x)
            x = self.fc2(x)
            return F.log_softmax(x, dim=1)

    return Net()


def _mnist_batches(data: str, steps: int):
    """An iterator of (x, y) batches of 64 as the example makes them."""
    import torch

    cache = Path(data)
    try:
        from torchvision import datasets, transforms
    except ImportError:
        datasets = None
    if datasets is not None and (cache / "MNIST" / "raw" / IDX[0]).is_file():
        transform = transforms.Compose([transforms.ToTensor(),
                                        transforms.Normalize((0.1307,), (0.3081,))])
        ds = datasets.MNIST(str(cache), train=True, download=False, transform=transform)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)
        return iter(loader), "torchvision"
    import numpy as np

    def read(stem):
        p = Path(data) / f"{stem}.gz"
        with (gzip.open(p, "rb") if p.is_file() else open(Path(data) / stem, "rb")) as f:
            raw = f.read()
        ndim = raw[3]
        dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
        return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)

    x = torch.from_numpy(read(IDX[0]).astype("float32")).div_(255.0).unsqueeze(1)
    x = (x - 0.1307) / 0.3081
    y = torch.from_numpy(read(IDX[1]).astype("int64"))
    perm = torch.randperm(len(x))

    def gen():
        for i in range(0, len(x) - 63, 64):
            idx = perm[i:i + 64]
            yield x[idx], y[idx]
    return gen(), "tensors"


def _lm16():
    import torch.nn as nn

    model = nn.Sequential(
        nn.Embedding(1000, 128),
        nn.TransformerEncoder(nn.TransformerEncoderLayer(128, 4, 512, batch_first=True), 4),
        nn.Linear(128, 1000))
    layers = [m for lay in model[1].layers
              for m in (lay.self_attn, lay.self_attn.out_proj, lay.linear1, lay.linear2)]
    return model, layers


def _threads_sched() -> dict[int, tuple[float, float]]:
    """(CPU seconds, seconds runnable but waiting for a core) of every thread of this process:
    the first two fields of ``/proc/self/task/*/schedstat``."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                run, wait = f.read().split()[:2]
            out[int(tid)] = (int(run) / 1e9, int(wait) / 1e9)
        except (OSError, ValueError):
            pass
    return out


def _threads_cpu() -> dict[int, float]:
    """CPU seconds of every thread of this process."""
    return {tid: cpu for tid, (cpu, _) in _threads_sched().items()}


def _label_threads(before: set[int]) -> dict[int, str]:
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    labels = {}
    for tid in _threads_cpu():
        if tid == threading.main_thread().native_id:
            labels[tid] = "train"
        elif tid in names and names[tid] == "gradsonic-worker":
            labels[tid] = "worker"
        elif tid in before:
            labels[tid] = "torch"  # intra-op pool (made before the sonifier)
        else:
            labels[tid] = "other"  # made by the sonifier's sinks: audio, tensorboard writer
    return labels


def child(args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    parts = args.child.split("+")
    base, patch_names = parts[0], parts[1:]
    import torch
    import torch.nn.functional as F

    torch.manual_seed(1)
    patches = None
    if patch_names:
        import importlib.util
        spec = importlib.util.spec_from_file_location("bench_patches", args.patches)
        patches = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(patches)

    if args.model == "mnist":
        model = _mnist_net()
        optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        batches, source = _mnist_batches(args.data, args.steps)
        layers = None
    else:
        model, layers = _lm16()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        scheduler = None
        g = torch.Generator().manual_seed(2)
        data = [torch.randint(0, 1000, (16, 65), generator=g) for _ in range(32)]
        batches = iter(data[i % len(data)] for i in range(10 ** 9))
        source = "random tokens"

    torch.ones(1 << 22).sum()  # start torch's intra-op thread pool now (labels its threads)
    torch_tids = set(_threads_cpu())
    son = None
    worker_cpu = {}
    live_ok = None
    if base == "imported":  # the package and its dependencies imported, nothing attached
        import importlib

        for name in ("gradsonic", "gradsonic.sinks", "gradsonic.sonifier"):
            importlib.import_module(name)
    elif base != "bare":
        import gradsonic.pipeline as pipeline
        from gradsonic import GradientSonifier

        run = pipeline.Worker.run

        def timed_run(self, _run=run):
            try:
                _run(self)
            finally:
                worker_cpu["s"] = time.thread_time()
        pipeline.Worker.run = timed_run
        for name in patch_names:
            patches.apply(name, "pre", None)
        kw = {}
        if layers is not None:
            kw = {"layers": layers, "voices": 16}
        if base == "live_tb":
            from gradsonic.sinks import TensorBoardSink
            stamp = time.strftime("%Y%m%d-%H%M%S")
            kw.update(live=True, sinks=[TensorBoardSink(f"tb-runs/{stamp}")])
        elif base != "default":
            raise SystemExit(f"unknown variant {base!r}")
        son = GradientSonifier(model, **kw)
        optimizer = son.wrap(optimizer)
        for name in patch_names:
            patches.apply(name, "post", son)
        if base == "live_tb":
            from gradsonic.sinks.live import LiveSink
            live_ok = any(isinstance(s, LiveSink) and s.available for s in son.sinks)

    model.train()
    t_ready = time.perf_counter()
    cpu0, proc0 = time.thread_time(), time.process_time()
    sched0 = _threads_sched()
    th0 = {tid: cpu for tid, (cpu, _) in sched0.items()}
    t0 = time.perf_counter()
    for batch_idx in range(args.steps):
        if args.model == "mnist":
            data, target = next(batches)
            optimizer.zero_grad()
            output = model(data)
            loss = F.nll_loss(output, target)
        else:
            tok = next(batches)
            optimizer.zero_grad()
            logits = model(tok[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, 1000), tok[:, 1:].reshape(-1))
        loss.backward()
        optimizer.step()
        if batch_idx % 10 == 0:  # the example's log line (a .item() every 10 batches)
            print(f"Train Epoch: 1 [{batch_idx * 64}]\tLoss: {loss.item():.6f}", file=sys.stderr)
    t1 = time.perf_counter()
    cpu1 = time.thread_time()
    sched1 = _threads_sched()
    th1 = {tid: cpu for tid, (cpu, _) in sched1.items()}
    labels = _label_threads(torch_tids)
    waits: dict[str, float] = {}  # time runnable but without a core, by kind of thread
    for tid, (_, w) in sched1.items():
        kind = labels.get(tid, "other")
        waits[kind] = waits.get(kind, 0.0) + w - sched0.get(tid, (0.0, 0.0))[1]
    by_kind: dict[str, float] = {}
    others: dict[str, float] = {}  # the new threads by name (PortAudio, pulse, TB writer, ...)
    import threading
    py_names = {t.native_id: t.name for t in threading.enumerate()}
    for tid, c in th1.items():
        kind = labels.get(tid, "other")
        by_kind[kind] = by_kind.get(kind, 0.0) + c - th0.get(tid, 0.0)
        if kind == "other":
            name = py_names.get(tid)  # a Python thread's name, else the OS's (PortAudio: python)
            if name is None:
                try:
                    with open(f"/proc/self/task/{tid}/comm") as f:
                        name = f.read().strip() + " (native)"
                except OSError:
                    name = "?"
            others[name] = others.get(name, 0.0) + c - th0.get(tid, 0.0)
    stats = None
    if son is not None:
        son.close()
        s = son.stats
        stats = {"steps": s.steps, "frames": s.frames}
    t2 = time.perf_counter()
    if scheduler is not None:
        scheduler.step()
    out = {
        "variant": args.child, "model": args.model, "steps": args.steps, "data": source,
        "loop_s": t1 - t0, "close_s": t2 - t1, "loop_close_s": t2 - t0,
        "setup_s": t_ready - t_start,
        "main_cpu_s": cpu1 - cpu0, "proc_cpu_s": time.process_time() - proc0,
        "worker_cpu_s": worker_cpu.get("s"), "live_ok": live_ok, "stats": stats,
        "torch_threads": torch.get_num_threads(), "loop_cpu_s": by_kind, "loop_wait_s": waits,
        "other_threads_cpu_s": others,
    }
    if patches is not None and hasattr(patches, "report"):
        out["extra"] = patches.report(son)
    print("RESULT " + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------------------
# parent: interleaved rounds


def prepare_data(src: str) -> str:
    """Unpack the gzipped IDX files once into a cache folder torchvision's MNIST reads."""
    raw = Path(tempfile.gettempdir()) / "gradsonic-bench-mnist" / "MNIST" / "raw"
    if not all((raw / n).is_file() for n in IDX):
        raw.mkdir(parents=True, exist_ok=True)
        for n in IDX:
            p = Path(src) / f"{n}.gz"
            if p.is_file():
                with gzip.open(p, "rb") as f, open(raw / n, "wb") as g:
                    shutil.copyfileobj(f, g)
            elif (Path(src) / n).is_file():
                shutil.copy(Path(src) / n, raw / n)
    try:
        import torchvision  # noqa: F401
        return str(raw.parent.parent)
    except ImportError:
        return src


# glibc malloc serves large blocks (a batch's activations) with mmap below a threshold it raises
# as it sees large blocks freed: each process reaches its own threshold from its own allocation
# history (imports included), and a process left at the low one pays page faults on every step's
# big tensors. Measured: `imported` (gradsonic imported, nothing attached) ran -11% (-19.7 ..
# +10.1) against `bare` over 12 rounds; with the thresholds fixed, -1.0% (-3.6 .. +2.9) over 8 and
# both ~10% faster. So every child runs with fixed thresholds (--malloc fixed, the default): the
# variants differ by what gradsonic does, not by where malloc's heuristic happened to land.
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 32), "MALLOC_TRIM_THRESHOLD_": str(1 << 32)}


def run_child(variant: str, model: str, steps: int, data: str, patches: str | None,
              timeout: float, malloc: str = "fixed") -> dict:
    cwd = tempfile.mkdtemp(prefix="gsbench-")
    env = dict(os.environ, **FIXED_MALLOC) if malloc == "fixed" else None
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--model", model,
           "--steps", str(steps), "--data", data]
    if patches:
        cmd += ["--patches", os.path.abspath(patches)]
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                           env=env)
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{variant} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")


def fmt_pct(xs: list[float]) -> str:
    return f"{100 * statistics.median(xs):+.2f}% ({100 * min(xs):+.1f} .. {100 * max(xs):+.1f})"


def _cpu(r: dict, kind: str) -> float:
    return r.get("loop_cpu_s", {}).get(kind, 0.0)


def _per_step(rs: list[dict], kind: str, steps: int) -> str:
    """Median time a kind of thread waited for a core, us per step ("-": not recorded)."""
    w = [r["loop_wait_s"].get(kind, 0.0) for r in rs if "loop_wait_s" in r]
    return f"{1e6 * statistics.median(w) / steps:.0f}" if w else "-"


def _blocked(rs: list[dict], steps: int) -> str:
    """The training thread's loop time neither on a core nor waiting for one: sleeping in a
    lock (the interpreter lock, a queue) or in I/O, us per step (median)."""
    b = [r["loop_s"] - _cpu(r, "train") - r["loop_wait_s"].get("train", 0.0)
         for r in rs if "loop_wait_s" in r]
    return f"{1e6 * statistics.median(b) / steps:.0f}" if b else "-"


def report(results: dict[str, list[dict]], model: str, steps: int) -> str:
    """The Markdown table of one model's runs."""
    names = list(results)
    base = results.get("bare")
    first = next(iter(results.values()))[0]
    rows = ["| variant | runs | loop ms/step | loop vs bare: median (min .. max) | loop+close vs "
            "bare | close ms | CPU us/step: training thread | (vs bare) | gradsonic worker | "
            "other new threads (audio, TB writer) | torch pool | live played | waiting for a "
            "core us/step: training thread | torch pool | training thread blocked us/step |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
            "| --- |"]
    med = statistics.median
    bare_train = med(_cpu(r, "train") for r in base) if base else None
    for n in names:
        rs = results[n]
        if base is not None and n != "bare":
            k = min(len(base), len(rs))
            ov = fmt_pct([rs[i]["loop_s"] / base[i]["loop_s"] - 1 for i in range(k)])
            ovc = fmt_pct([rs[i]["loop_close_s"] / base[i]["loop_close_s"] - 1
                           for i in range(k)])
        else:
            ov = ovc = "-"
        train = med(_cpu(r, "train") for r in rs)
        d_train = "-" if bare_train is None or n == "bare" else f"{1e6 * (train - bare_train) / steps:+.0f}"
        w = [r["worker_cpu_s"] for r in rs if r["worker_cpu_s"] is not None]
        wcpu = f"{1e6 * med(w) / steps:.0f}" if w else "-"
        live = {r["live_ok"] for r in rs} - {None}
        rows.append(
            f"| {n} | {len(rs)} | {1e3 * med(r['loop_s'] for r in rs) / steps:.2f} | {ov} | "
            f"{ovc} | {1e3 * med(r['close_s'] for r in rs):.0f} | {1e6 * train / steps:.0f} | "
            f"{d_train} | {wcpu} | {1e6 * med(_cpu(r, 'other') for r in rs) / steps:.0f} | "
            f"{1e6 * med(_cpu(r, 'torch') for r in rs) / steps:.0f} | "
            f"{'/'.join(str(x) for x in sorted(live)) if live else '-'} | "
            f"{_per_step(rs, 'train', steps)} | {_per_step(rs, 'torch', steps)} | "
            f"{_blocked(rs, steps)} |")
    head = (f"### model `{model}`: {steps} steps per run, {len(rs)} rounds, data: "
            f"{first['data']}, torch threads {first['torch_threads']}\n\n"
            "CPU columns: medians over runs of each thread's CPU time in the loop "
            "(`/proc/self/task/*/schedstat`) per step; worker: the `gradsonic-worker` thread's "
            "whole life (incl. close). Waiting for a core: the time a thread was runnable but "
            "not running (schedstat's run delay); blocked: loop time - training thread CPU - "
            "its wait for a core (sleeping on a lock, the interpreter lock included, or I/O)."
            "\n\n")
    return head + "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=10, help="rounds (each runs every variant once)")
    p.add_argument("--steps", type=int, default=300, help="training steps per run")
    p.add_argument("--variants", default="bare,default,live_tb")
    p.add_argument("--model", default="mnist", choices=["mnist", "lm16", "both"])
    p.add_argument("--data", default=os.environ.get("MNIST_DIR", DEFAULT_DATA),
                   help="folder with the (gzipped) MNIST IDX files")
    p.add_argument("--patches", default=None, help="module with apply(name, stage, son)")
    p.add_argument("--json", default=None, help="also write every run's numbers here")
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--malloc", default="fixed", choices=["fixed", "dynamic"],
                   help="fixed: the children run with glibc's mmap/trim thresholds pinned "
                        "(see FIXED_MALLOC); dynamic: as a plain process would")
    p.add_argument("--report", default=None, metavar="JSON",
                   help="print the tables of a --json file written earlier, run nothing")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    if args.report:
        for model, results in json.loads(Path(args.report).read_text()).items():
            steps = next(iter(results.values()))[0]["steps"]
            print(report(results, model, steps) + "\n")
        return
    models = ["mnist", "lm16"] if args.model == "both" else [args.model]
    data = prepare_data(args.data)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; command: "
          f"{' '.join([Path(sys.executable).name, *sys.argv])}; children's malloc thresholds: "
          f"{args.malloc}\n", flush=True)
    all_runs: dict[str, dict[str, list[dict]]] = {}
    for model in models:
        results: dict[str, list[dict]] = {v: [] for v in variants}
        for r in range(args.pairs):
            order = variants[r % len(variants):] + variants[:r % len(variants)]
            for v in order:
                res = run_child(v, model, args.steps, data, args.patches, args.timeout,
                                args.malloc)
                results[v].append(res)
            print(f"round {r + 1}/{args.pairs}: " + ", ".join(
                f"{v} {1e3 * results[v][-1]['loop_s'] / args.steps:.2f}" for v in variants)
                + " ms/step", file=sys.stderr, flush=True)
        all_runs[model] = results
        print(report(results, model, args.steps) + "\n", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(all_runs, indent=1))


if __name__ == "__main__":
    main()
