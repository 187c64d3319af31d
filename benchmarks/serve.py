"""What serving a run to browsers costs: training overhead, server CPU, step-to-page latency.

    python benchmarks/serve.py [overhead] [cpu] [latency] [--smoke]

overhead  Training-step time of the seed CNN (batch 10), interleaved blocks in one process:
          bare | GradientSonifier (WAV + recording) | the same with serve= and 0, 1 or 10
          clients (each a real server-sent-events connection from a separate process, reading
          everything). Per-round ratios against bare: median and min-max.
cpu       The CPU time of a ``gradsonic serve`` process following a recording written at
          1,000 steps/s (16 voices) with 0, 1 and 10 clients, interleaved windows: CPU per client
          per 1,000 steps/s = (cpu(N) - cpu(0)) / N.
latency   A real training job (a child process, ~100 steps/s, printing each step's wall time
          after optimizer.step()), ``gradsonic serve`` in another process, and the page in
          headless Chromium: for every step, the time from its optimizer step to the page
          having it (median, p95, max). This includes the sonifier's batching (0.1 s) and the
          server's polling (0.05 s).
load      A 1M-step, 16-voice recording under ``gradsonic serve`` (a separate process): 20 SSE
          clients each read its whole history while a stalled client (never reads) sits on
          its connection; meanwhile ``/api/runs`` is asked every 0.2 s. Reports the time until
          every client holds every row, the answer times during the load, the server's RSS at
          idle and at peak, and its CPU.
keepalive Sequential requests on one keep-alive connection vs. a new connection each time
          (``/api/runs``, median and p95 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clients_main(port: int, run: str, n: int) -> None:
    """(child) ``n`` SSE connections that read everything, until killed."""
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET /api/stream?run={run} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        socks.append(s)
    print("connected", flush=True)

    def drain(s: socket.socket) -> None:
        while s.recv(1 << 16):
            pass

    threads = [threading.Thread(target=drain, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


@contextlib.contextmanager
def clients(port: int, run: str, n: int):
    if n == 0:
        yield
        return
    p = subprocess.Popen([sys.executable, __file__, "_clients", str(port), run, str(n)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "connected"
    try:
        yield
    finally:
        p.kill()
        p.wait()


def overhead(smoke: bool) -> None:
    from _harness import environment, interleave, seed_cnn_copies, table, training_block

    from gradsonic import GradientSonifier

    rounds, block = (2, 5) if smoke else (60, 40)
    names = ("bare", "wav+record", "serve, 0 clients", "serve, 1 client", "serve, 10 clients")
    batches, models, opts = seed_cnn_copies(names, 10, block)
    tmp = Path(tempfile.mkdtemp())
    sons, variants = [], {}
    n_clients = {"serve, 0 clients": 0, "serve, 1 client": 1, "serve, 10 clients": 10}
    with contextlib.ExitStack() as stack:
        for name in names:
            opt = opts[name]
            if name != "bare":
                son = GradientSonifier(models[name], run_dir=tmp / name.replace(" ", "_"),
                                       quiet=True, serve=0 if name in n_clients else None)
                sons.append(son)
                opt = son.wrap(opt)
                if son.server is not None and n_clients[name]:
                    training_block(models[name], opt, batches[:1])()  # a row for the clients
                    son.flush()
                    stack.enter_context(clients(son.server.port, "run.gsr", n_clients[name]))
            variants[name] = training_block(models[name], opt, batches)
        for v in variants.values():  # warm up
            v()
        results = interleave(variants, rounds, "bare")
        for son in sons:
            son.close()
    print("## serve= in process: training overhead (seed CNN, batch 10)\n")
    print(environment())
    print(f"{rounds} rounds x {block} steps, order rotating each round\n")
    print(table(results, "bare", block))
    print("\nthe same rounds against wav+record (what serving adds to a sonifier):\n")
    print(table({k: v for k, v in results.items() if k != "bare"}, "wav+record", block))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu(smoke: bool) -> None:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from gradsonic.recording import RecordSink
    from gradsonic.sinks.base import StepBlock

    rounds, window = (1, 1.0) if smoke else (5, 6.0)
    rate, voices = 1000, 16
    tmp = Path(tempfile.mkdtemp())
    port = free_port()
    from _harness import default_settings

    settings = default_settings()
    sink = RecordSink(tmp / "run.gsr", tuple(f"layer{i}" for i in range(voices)), settings)
    sink.open(44100)
    stop = threading.Event()
    rng = np.random.default_rng(0)

    def write() -> None:  # 1,000 steps/s in blocks of 50 every 50 ms, as a worker writes
        step, t0 = 0, time.monotonic()
        while not stop.is_set():
            n = 50
            norms = np.exp(rng.normal(-2, 0.5, (n, voices))).astype(np.float32)
            sink.write_steps(None, StepBlock(step, n, 0, 0, np.zeros(n), norms,
                                             np.zeros((n, voices), bool), np.zeros(n, bool)))
            step += n
            time.sleep(max(0.0, t0 + step / rate - time.monotonic()))

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    server = subprocess.Popen([sys.executable, "-m", "gradsonic.cli", "serve", str(tmp),
                               "--port", str(port)], stderr=subprocess.DEVNULL)
    time.sleep(1.5)
    use: dict[int, list[float]] = {0: [], 1: [], 10: []}
    try:
        for r in range(rounds):
            for n in (0, 1, 10)[r % 3:] + (0, 1, 10)[: r % 3]:
                with clients(port, "run.gsr", n):
                    time.sleep(0.5)
                    c0, t0 = _cpu_seconds(server.pid), time.monotonic()
                    time.sleep(window)
                    use[n].append((_cpu_seconds(server.pid) - c0) / (time.monotonic() - t0))
    finally:
        stop.set()
        writer.join()
        server.kill()
        server.wait()
        sink.close()
    print("## gradsonic serve: server CPU at 1,000 steps/s (16 voices)\n")
    print(f"{rounds} rounds x {window:.0f} s windows per client count, rotating order\n")
    print("| clients | server CPU (median, share of one core) | min .. max |")
    print("| --- | --- | --- |")
    for n, xs in use.items():
        print(f"| {n} | {statistics.median(xs):.1%} | {min(xs):.1%} .. {max(xs):.1%} |")
    base = statistics.median(use[0])
    for n in (1, 10):
        per = (statistics.median(use[n]) - base) / n
        print(f"\nper client, {n} clients: {per:.2%} of a core per 1,000 steps/s")


def latency(smoke: bool) -> None:
    sys.path.insert(0, str(HERE.parent / "tests"))
    from fixtures.browser import CHROMIUM
    from playwright.sync_api import sync_playwright

    steps = 300 if smoke else 3000
    tmp = Path(tempfile.mkdtemp())
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "gradsonic.cli", "serve", str(tmp),
                               "--port", str(port)], stderr=subprocess.DEVNULL)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp / "job"), str(steps)],
                             stdout=subprocess.PIPE, text=True)
    times: dict[int, float] = {}

    def read() -> None:
        for line in child.stdout:
            i, t = line.split()
            times[int(i)] = float(t)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        while not times:
            time.sleep(0.05)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(bypass_csp=True)  # wait_for_function evaluates strings
            page.goto(f"http://127.0.0.1:{port}/?run=job/run.gsr")
            page.wait_for_function(f"window.gradsonic && gradsonic.store.next === {steps}",
                                   timeout=(steps / 50 + 60) * 1000)
            arrivals = page.evaluate("gradsonic.arrivals")
            browser.close()
    finally:
        child.wait()
        server.kill()
        server.wait()
    first_live = min(times)  # rows the page got while training ran (not its first history batch)
    lags = [t_ms / 1000 - times[row] for first, last, t_ms in arrivals
            for row in range(first, last + 1) if row in times and first > first_live + 10]
    lags = np.array(lags) * 1000
    print("## step-to-page latency (training child -> gradsonic serve -> Chromium page)\n")
    print(f"{len(lags)} steps at ~100 steps/s: median {np.median(lags):.0f} ms, "
          f"p95 {np.percentile(lags, 95):.0f} ms, max {lags.max():.0f} ms")


CHILD = """
import sys, time, torch
from gradsonic import GradientSonifier
run_dir, steps = sys.argv[1], int(sys.argv[2])
model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
opt = torch.optim.SGD(model.parameters(), lr=0.05)
with GradientSonifier(model, run_dir=run_dir, quiet=True) as son:
    opt = son.wrap(opt)
    for i in range(steps):
        opt.zero_grad()
        model(torch.randn(16, 8)).pow(2).mean().backward()
        opt.step()
        print(i, time.time(), flush=True)
        time.sleep(0.01)
"""


def _rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def _write_rows(path: Path, steps: int, voices: int) -> None:
    from _harness import default_settings

    from gradsonic.recording import RecordSink
    from gradsonic.sinks.base import StepBlock

    sink = RecordSink(path, tuple(f"layer{i}" for i in range(voices)), default_settings())
    sink.open(44100)
    rng = np.random.default_rng(0)
    for first in range(0, steps, 65536):
        n = min(65536, steps - first)
        norms = np.exp(rng.normal(-2, 0.5, (n, voices))).astype(np.float32)
        sink.write_steps(None, StepBlock(first, n, 0, 0, np.zeros(n), norms,
                                         np.zeros(norms.shape, bool), np.zeros(n, bool),
                                         layer_names=sink.layer_names))
    sink.close()


def _serve(root: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gradsonic.cli", "serve", str(root),
                             "--port", str(port)], stderr=subprocess.PIPE, text=True)
    proc.stderr.readline()
    return proc, port


def load(smoke: bool) -> None:
    import http.client

    steps, voices, n_clients = (20_000, 16, 4) if smoke else (1_000_000, 16, 20)
    tmp = Path(tempfile.mkdtemp())
    (tmp / "job").mkdir()
    _write_rows(tmp / "job" / "run.gsr", steps, voices)
    size_mb = (tmp / "job" / "run.gsr").stat().st_size / 2 ** 20
    server, port = _serve(tmp)
    time.sleep(1.0)
    idle = _rss_mb(server.pid)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(b"GET /api/stream?run=job/run.gsr HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    done: dict[int, float] = {}
    peak = [idle]
    t0 = time.monotonic()
    cpu0 = _cpu_seconds(server.pid)

    def client(k: int) -> None:
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /api/stream?run=job/run.gsr HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        want = f"id: {steps}\n".encode()
        tail = b""
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            seen = tail + chunk
            tail = seen[-64:]
            if want in seen:
                done[k] = time.monotonic() - t0
                break
        s.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(n_clients)]
    for t in threads:
        t.start()
    answers = []
    while any(t.is_alive() for t in threads) and time.monotonic() - t0 < 600:
        a = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/api/runs")
        status = conn.getresponse().status
        conn.close()
        answers.append((time.monotonic() - a) * 1000)
        assert status == 200
        peak.append(_rss_mb(server.pid))
        time.sleep(0.2)
    cpu = _cpu_seconds(server.pid) - cpu0
    wall = time.monotonic() - t0
    stalled.close()
    server.terminate()
    server.wait()
    answers.sort()
    print(f"load: {steps:,} steps x {voices} voices ({size_mb:.0f} MB recording), {n_clients} "
          f"SSE clients reading all of it + 1 stalled client")
    print("| measure | value |\n| --- | --- |")
    print(f"| every client holds every row | {len(done)}/{n_clients} clients, last after "
          f"{max(done.values()):.1f} s (first {min(done.values()):.1f} s) |")
    print(f"| rows delivered | {n_clients * steps / max(done.values()):,.0f} rows/s "
          f"({n_clients * steps * voices / max(done.values()) / 1e6:.1f} M norms/s) |")
    print(f"| `/api/runs` during the load | median {answers[len(answers) // 2]:.0f} ms, max "
          f"{answers[-1]:.0f} ms ({len(answers)} requests) |")
    print(f"| server RSS | idle {idle:.0f} MB, peak {max(peak):.0f} MB |")
    print(f"| server CPU | {cpu:.1f} s over {wall:.1f} s |")


def keepalive(smoke: bool) -> None:
    import http.client

    n = 50 if smoke else 500
    tmp = Path(tempfile.mkdtemp())
    (tmp / "job").mkdir()
    _write_rows(tmp / "job" / "run.gsr", 1000, 4)
    server, port = _serve(tmp)
    out = {}
    try:
        for mode in ("keep-alive", "new connection", "keep-alive", "new connection"):
            times = []
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            for _ in range(n):
                if mode == "new connection":
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                a = time.perf_counter()
                conn.request("GET", "/api/rows?run=job/run.gsr&from=0&to=64")
                r = conn.getresponse()
                r.read()
                times.append((time.perf_counter() - a) * 1000)
                if mode == "new connection":
                    conn.close()
            conn.close()
            out.setdefault(mode, []).extend(times)
    finally:
        server.terminate()
        server.wait()
    print(f"keepalive: {2 * n} requests each way, /api/rows of 64 rows")
    print("| connection | median ms | p95 ms |\n| --- | --- | --- |")
    for mode, times in out.items():
        times.sort()
        print(f"| {mode} | {times[len(times) // 2]:.2f} | {times[int(len(times) * 0.95)]:.2f} |")


def main() -> None:
    if sys.argv[1:2] == ["_clients"]:
        clients_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*",
                    default=["overhead", "cpu", "latency", "load", "keepalive"])
    ap.add_argument("--smoke", action="store_true", help="a few seconds, to prove it runs")
    args = ap.parse_args()
    for part in args.parts:
        {"overhead": overhead, "cpu": cpu, "latency": latency, "load": load,
         "keepalive": keepalive}[part](args.smoke)
        print()


if __name__ == "__main__":
    main()
