"""What logging to TensorBoard, W&B and MLflow costs: training overhead and TensorBoard file size.

    python benchmarks/loggers.py [--smoke]

overhead  Seed CNN (batch 10), interleaved blocks in one process, each variant its own model copy
          and sonifier: wav only | wav + TensorBoardSink | wav + WandbSink (offline run) |
          wav + MLflowSink (local file store). Per-round ratios against "wav": median, min-max.
          The sinks run on the sonifier's worker thread; what training feels is their share of
          the GIL and the CPU. Default clip cadence (first clip after 10 s of sound, then every
          300 s).
size      TensorBoard event file bytes per 10,000 steps of scalars (4 and 16 voices), written by
          a TensorBoardSink from a recording (``replay``, as ``gradsonic export`` does), and the
          bytes of one 10 s clip.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def overhead(smoke: bool) -> None:
    from _harness import environment, interleave, seed_cnn_copies, table, training_block

    from gradsonic import GradientSonifier, MLflowSink, TensorBoardSink, WandbSink

    rounds, block = (2, 5) if smoke else (80, 40)
    tmp = Path(tempfile.mkdtemp())
    os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(tmp), WANDB_SILENT="true",
                      MLFLOW_ALLOW_FILE_STORE="true")
    import mlflow
    import wandb

    names = ("wav", "wav+tensorboard", "wav+wandb", "wav+mlflow")
    batches, models, opts = seed_cnn_copies(names, 10, block)
    mlflow.set_tracking_uri((tmp / "mlruns").as_uri())
    with contextlib.ExitStack() as stack:
        run = wandb.init(project="gradsonic-bench")
        stack.callback(wandb.teardown)
        stack.callback(run.finish)
        stack.enter_context(mlflow.start_run())
        sinks = {"wav": [], "wav+tensorboard": [TensorBoardSink(tmp / "tb")],
                 "wav+wandb": [WandbSink(run)], "wav+mlflow": [MLflowSink()]}
        variants = {}
        for name in names:
            son = GradientSonifier(models[name], wav=tmp / f"{name}.wav", sinks=sinks[name],
                                   quiet=True)
            stack.callback(son.close)
            variants[name] = training_block(models[name], son.wrap(opts[name]), batches)
        for v in variants.values():
            v()
        results = interleave(variants, rounds, "wav")
    print("## Logger sinks: training overhead (seed CNN, batch 10)\n")
    print(environment())
    print(f"{rounds} rounds x {block} steps, order rotating each round\n")
    print(table(results, "wav", block))


def size(smoke: bool) -> None:
    from gradsonic import TensorBoardSink
    from _harness import default_settings
    from gradsonic.recording import RecordSink, read_recording
    from gradsonic.render import replay
    from gradsonic.sinks.base import StepBlock

    steps = 1000 if smoke else 10000
    tmp = Path(tempfile.mkdtemp())
    settings = default_settings()
    print("## TensorBoard event file size\n")
    print(f"| voices | scalars only, bytes per 10,000 steps | one {10} s clip, bytes |")
    print("| --- | --- | --- |")
    rng = np.random.default_rng(0)
    for voices in (4, 16):
        path = tmp / f"v{voices}.gsr"
        sink = RecordSink(path, tuple(f"layer{i}" for i in range(voices)), settings)
        sink.open(44100)
        norms = np.exp(rng.normal(-2, 0.5, (steps, voices))).astype(np.float32)
        sink.write_steps(None, StepBlock(0, steps, 0, 0, np.zeros(steps), norms,
                                         np.zeros((steps, voices), bool), np.zeros(steps, bool)))
        sink.close()
        rec = read_recording(path)
        scalars = TensorBoardSink(tmp / f"s{voices}", audio=False)
        window = 441000 // (voices * 441 + 882)
        audio = TensorBoardSink(tmp / f"a{voices}", scalars=False, clip_steps=window)
        for sink in (scalars, audio):
            sink.open(44100)
            replay(rec, [sink])
            sink.close()
        size_of = lambda d: sum(f.stat().st_size for f in Path(d).iterdir())  # noqa: E731
        print(f"| {voices} | {size_of(scalars.path) * 10000 / steps:,.0f} | "
              f"{size_of(audio.path) / audio.clips:,.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*", default=["overhead", "size"])
    ap.add_argument("--smoke", action="store_true", help="a few seconds, to prove it runs")
    args = ap.parse_args()
    for part in args.parts:
        {"overhead": overhead, "size": size}[part](args.smoke)
        print()


if __name__ == "__main__":
    main()
