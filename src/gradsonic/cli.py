"""The ``gradsonic`` command line: ``demo``, ``info``, ``render``, ``plot``, ``play``, ``serve`` and
``export``."""

from __future__ import annotations

import argparse
import json
import sys
import time
import numpy as np
from pathlib import Path
from typing import Any, Callable, Sequence

from ._version import __version__
from .errors import GradsonicError


def _progress(total: int, desc: str, quiet: bool) -> tuple[Callable[[int], Any], Callable[[], None]]:
    """A tqdm bar when tqdm is installed, else a plain line on stderr; nothing when quiet."""
    if quiet:
        return (lambda n: None), (lambda: None)
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        done = [0]

        def update(n: int) -> None:
            done[0] += n
            if done[0] == total or done[0] % max(1, total // 10) == 0:
                print(f"  {desc}: {done[0]}/{total} steps", file=sys.stderr)

        return update, (lambda: None)
    bar = tqdm(total=total, desc=desc, unit="step", leave=True)
    return bar.update, bar.close


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import PRESETS, load_mnist, train_preset

    names = list(PRESETS) if args.preset in (None, ["all"]) else args.preset
    for name in names:
        if name not in PRESETS:
            raise GradsonicError(f"unknown preset {name!r}; choose from {sorted(PRESETS)} or 'all'")
    embedded = args.data is None and not args.download
    images, labels = load_mnist(args.data, download=args.download)
    source = ("embedded MNIST subset (first 4,000 training images)" if embedded
              else f"MNIST from {args.data or '~/.cache/gradsonic'} ({len(images)} images)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"gradsonic {__version__} demo: seed CNN on {source}, {args.steps} steps per preset, "
          f"mapping {args.mapping!r}")
    written = []
    for name in names:
        preset = PRESETS[name]
        wav = out / f"{name}.wav"
        live: Any = False
        if args.live:
            from .sinks.live import LiveSink

            live = LiveSink(policy=args.live_policy)
            print(f"{name}: {preset.listen_for}")
        update, close = _progress(args.steps, name, args.quiet)
        t0 = time.perf_counter()
        try:
            result = train_preset(preset, images, labels, steps=args.steps,
                                  seed=preset.seed_for(embedded), wav=wav, progress=update,
                                  mapping=args.mapping, wav_format=args.format, live=live,
                                  record=out / f"{name}.gsr" if args.record else None)
        finally:
            close()
        seconds = time.perf_counter() - t0
        written.append((wav, preset, result.alarm_steps, seconds))
    print("\nWrote:")
    import soundfile

    for wav, preset, alarms, seconds in written:
        alarm = f", NaN/Inf alarm on {alarms} steps" if alarms else ""
        audio = soundfile.info(str(wav)).duration
        print(f"  {wav}  ({audio:.1f} s of audio{alarm}; trained in {seconds:.1f} s)\n"
              f"      listen for: {preset.listen_for}")
    print("\nEach step is one short tone per layer (conv1, conv2, fc1, fc2), then a pause.")
    if args.record:
        run = out / f"{names[0]}.gsr"
        print(f"Norm recordings: {out}/*.gsr. Try:\n  gradsonic info {run}\n"
              f"  gradsonic render {run} -o {out / (names[0] + '-log.wav')} --mapping log\n"
              f"  gradsonic plot {run} -o {out / (names[0] + '.png')}")
    return 0


def _recording(path: str) -> Any:
    """The recording at ``path``, or in the run folder ``path`` (its ``run.gsr``)."""
    from .recording import read_recording

    p = Path(path)
    if p.is_dir():
        if not (p / "run.gsr").is_file():
            raise GradsonicError(f"{path!r} is a folder without a recording (run.gsr); name a "
                                 ".gsr file or a run folder (gradsonic-runs/<run>/)")
        p = p / "run.gsr"
    return read_recording(p)


def _steps_slice(text: str | None) -> slice | None:
    if not text:
        return None
    try:
        a, colon, b = text.partition(":")
        lo, hi = int(a) if a else None, int(b) if b else None
    except ValueError:
        lo = hi = colon = None
    if not colon:
        raise GradsonicError(f"--steps must look like A:B (e.g. 100:200 or :50), not {text!r}")
    if lo is not None and hi is not None and (lo < 0) == (hi < 0) and hi <= lo:
        raise GradsonicError(f"--steps {text}: B must be after A (steps A..B-1), e.g. {lo}:{lo + 1}")
    return slice(lo, hi)


_AUDIO_FORMATS = {".wav": "wav", ".flac": "flac", ".ogg": "ogg", ".oga": "ogg"}


def _render_format(output: str, fmt: str | None) -> str:
    """The format of ``render -o``: its extension's, which --format may repeat but not
    contradict."""
    suffix = Path(output).suffix.lower()
    by_name = _AUDIO_FORMATS.get(suffix)
    if by_name is None:
        raise GradsonicError(f"-o {output!r}: render writes .wav, .flac or .ogg, not "
                             f"{suffix or 'a file without an extension'!r}")
    if fmt is not None and fmt != by_name:
        raise GradsonicError(f"-o {output!r} is a {suffix} file but --format is {fmt!r}; "
                             "drop --format or give the output a matching extension")
    return by_name


def _check_output(output: str) -> None:
    folder = Path(output).absolute().parent
    if not folder.is_dir():
        raise GradsonicError(f"-o {output!r}: folder {str(folder)!r} does not exist")


def _cmd_info(args: argparse.Namespace) -> int:
    from .render import synth_for

    rec = _recording(args.run)
    s = rec.settings
    synth, _ = synth_for(rec)
    counts, n_steps = np.unique(rec.voice_counts[rec.sounded()], return_counts=True)
    seconds = sum(synth.step_samples(int(k)) * int(n)
                  for k, n in zip(counts, n_steps)) / synth.sample_rate
    first = f"{rec.steps[0]}..{rec.steps[-1]}" if len(rec.steps) else "none"
    print(f"{rec.path}: gradsonic recording, created {rec.created}, "
          f"versions {', '.join(f'{k} {v}' for k, v in rec.versions.items())}")
    print(f"steps: {len(rec.steps)} ({first}), audio {seconds:.1f} s")
    print(f"non-finite: {int(rec.nonfinite.any(axis=1).sum())} steps, "
          f"{int(rec.skipped.sum())} skipped by the optimizer")
    print(f"settings: {json.dumps(s)}")
    print(f"layers ({len(rec.layer_names)}): {', '.join(rec.layer_names)}")
    if rec.scalars:
        print(f"scalars: {', '.join(rec.scalars)}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from .render import render_to_file, select

    fmt = _render_format(args.output, args.format)
    _check_output(args.output)
    rec = _recording(args.run)
    steps = _steps_slice(args.steps)
    n = len(select(rec, args.layers, steps)[0])
    if not n:
        raise GradsonicError(
            f"--steps {args.steps} selects none of the {len(rec.steps)} recorded steps; nothing "
            "to render" if args.steps else f"{args.run!r} holds no step yet; nothing to render")
    update, close = _progress(n, "render", args.quiet)
    try:
        frames = render_to_file(rec, args.output, fmt=fmt, progress=update,
                                layers=args.layers, steps=steps, mapping=args.mapping,
                                tone_duration=None if args.tone_ms is None else args.tone_ms / 1000,
                                layout=args.layout)
    finally:
        close()
    print(f"wrote {args.output}: {n} steps, {frames} frames")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_recording

    _check_output(args.output)
    plot_recording(_recording(args.run), args.output, layers=args.layers,
                   steps=_steps_slice(args.steps))
    print(f"wrote {args.output}")
    return 0


def _cmd_play(args: argparse.Namespace) -> int:
    from .notebook import load_audio
    from .sinks.live import play_frames

    try:
        frames, rate = load_audio(args.file)
    except RuntimeError as e:  # libsndfile: not an audio file it knows
        raise GradsonicError(f"{args.file!r} is neither a recording nor an audio file "
                             f"libsndfile can read ({e})") from e
    if frames.ndim > 1:
        frames = frames.mean(axis=1)
    print(f"playing {args.file}: {frames.size / rate:.1f} s", flush=True)
    play_frames(frames, rate, device=args.device)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve

    if not Path(args.path).exists():
        print(f"gradsonic serve: {args.path!r} does not exist yet; serving it as runs appear "
              "there", file=sys.stderr, flush=True)
    serve(args.path, host=args.host, port=args.port, token=args.token)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import contextlib

    from .render import replay, synth_for

    if not (args.tensorboard or args.wandb or args.mlflow):
        raise GradsonicError("export: name at least one destination: --tensorboard DIR, "
                             "--wandb PROJECT or --mlflow TRACKING_URI")
    rec = _recording(args.run)
    synth, _ = synth_for(rec)
    heard = int(rec.sounded().sum())
    if args.clip_steps is None:  # back to back, or 100 clips spread over a long run
        window = max(1, int(args.clip_seconds * synth.sample_rate)
                     // synth.step_samples(len(rec.layer_names)))
        args.clip_steps = max(window, -(-heard // 100))
    opts = dict(clip_seconds=args.clip_seconds, clip_steps=args.clip_steps)
    name = rec.path.parent.name if rec.path.name == "run.gsr" else rec.path.stem
    sinks: list[Any] = []
    written = []
    with contextlib.ExitStack() as stack:
        if args.tensorboard:
            from .sinks.tensorboard import TensorBoardSink

            sinks.append(TensorBoardSink(args.tensorboard, **opts))
            written.append(f"TensorBoard events in {args.tensorboard}")
        if args.wandb:
            import wandb

            from .sinks.wandb import WandbSink

            run = wandb.init(project=args.wandb, name=name, config={"gradsonic": rec.settings})
            stack.callback(run.finish)
            sinks.append(WandbSink(run, **opts))
            written.append(f"W&B run {run.name!r} ({run.dir})")
        if args.mlflow:
            import mlflow

            from .sinks.mlflow import MLflowSink

            mlflow.set_tracking_uri(args.mlflow)
            run = stack.enter_context(mlflow.start_run(run_name=name))
            sinks.append(MLflowSink(run.info.run_id, **opts))
            written.append(f"MLflow run {run.info.run_id} at {args.mlflow}")
        for sink in sinks:
            stack.callback(sink.close)
            sink.channels = synth.channels
            sink.open(synth.sample_rate)
        update, close = _progress(len(rec.steps), "export", args.quiet)
        try:
            replay(rec, sinks, progress=update)
        finally:
            close()
    print(f"exported {len(rec.steps)} steps ({sinks[0].clips} clips of up to "
          f"{args.clip_seconds:g} s, one every {args.clip_steps} sounded steps): "
          + "; ".join(written))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gradsonic", description="Hear your model train.")
    parser.add_argument("--version", action="version", version=f"gradsonic {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train the 2019 seed CNN on MNIST and write one WAV per preset",
                          description="Train the seed CNN on MNIST under the five original "
                          "settings and write one WAV per preset.")
    demo.add_argument("--preset", nargs="+", metavar="NAME",
                      help="one or more of: sgd-lr0.01 sgd-lr0.1 sgd-lr1.0 sgd-lr1.0-bs256 "
                      "adam-lr0.01, or all (default: all)")
    demo.add_argument("--steps", type=int, default=200, help="optimizer steps per preset (200)")
    demo.add_argument("--data", metavar="DIR",
                      help="folder with the MNIST IDX files (.gz or raw); default: the embedded "
                      "4,000-image subset")
    demo.add_argument("--download", action="store_true",
                      help="download full MNIST with torchvision (into --data or ~/.cache/gradsonic)")
    demo.add_argument("--out", default="gradsonic-demo", metavar="DIR",
                      help="where to write the WAVs (gradsonic-demo/)")
    demo.add_argument("--mapping", default="seed", choices=["seed", "log"],
                      help="norm-to-pitch mapping: seed = 200 + 100*norm Hz as in 2019 (default), "
                      "log = half an octave per decade of norm")
    demo.add_argument("--format", default="float32", choices=["float32", "pcm16"],
                      help="WAV sample format (float32)")
    demo.add_argument("--record", action="store_true",
                      help="also write each preset's norm recording (PRESET.gsr) for render/info")
    demo.add_argument("--live", action="store_true",
                      help="also play through the speakers while training (needs the live extra)")
    demo.add_argument("--live-policy", default="block", choices=["block", "drop", "sample"],
                      help="block (default here): training waits for the sound, so you hear "
                      "every step; drop: newest steps win; sample: whole steps, some skipped")
    demo.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    info = sub.add_parser("info", help="describe a recording (layers, steps, settings)")
    info.add_argument("run", help="a recording (run.gsr), or a run folder holding one")
    info.set_defaults(func=_cmd_info)

    render = sub.add_parser("render", help="re-render a recording to an audio file",
                            description="Re-render a recording; with the recorded settings the "
                            "samples equal the live run's.")
    render.add_argument("run", help="a recording (run.gsr), or a run folder holding one")
    render.add_argument("-o", "--output", required=True, help="the audio file to write")
    render.add_argument("--mapping", choices=["seed", "log"], help="default: as recorded")
    render.add_argument("--tone-ms", type=float, help="tone length in ms (default: as recorded)")
    render.add_argument("--layout", choices=["sequence", "chord", "ambient"],
                        help="default: as recorded")
    render.add_argument("--layers", nargs="+", metavar="PATTERN", help="only these layers (globs)")
    render.add_argument("--steps", metavar="A:B", help="only steps A..B-1 (rows of the recording)")
    render.add_argument("--format", choices=["wav", "flac", "ogg"],
                        help="default: from the output's extension (.wav, .flac, .ogg)")
    render.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    render.set_defaults(func=_cmd_render)

    plot = sub.add_parser("plot", help="norm curves above a strip of the pitches played, as a "
                          "PNG")
    plot.add_argument("run", help="a recording (run.gsr), or a run folder holding one")
    plot.add_argument("-o", "--output", required=True, help="the PNG to write")
    plot.add_argument("--layers", nargs="+", metavar="PATTERN", help="only these layers (globs)")
    plot.add_argument("--steps", metavar="A:B", help="only steps A..B-1 (rows of the recording)")
    plot.set_defaults(func=_cmd_plot)

    play = sub.add_parser("play", help="play a WAV/FLAC/OGG or a recording through PyAudio")
    play.add_argument("file", help="an audio file or a recording")
    play.add_argument("--device", type=int, help="PyAudio output device index")
    play.set_defaults(func=_cmd_play)

    srv = sub.add_parser("serve", help="hear and see runs in a browser, live (norms streamed, "
                         "sound made in the page)",
                         description="Serve a recording, or every run under a folder, to a "
                         "browser page that plots and plays them as they grow. From a laptop: "
                         "ssh -L 6070:localhost:6070 SERVER, then open http://localhost:6070/.")
    srv.add_argument("path", nargs="?", default="gradsonic-runs",
                     help="a recording (.gsr) or a folder of runs (default: gradsonic-runs)")
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (127.0.0.1); any other address requires a token")
    srv.add_argument("--port", type=int, default=6070, help="port (6070; 0 = any free port)")
    srv.add_argument("--token", help="require this token (?token=...) even on 127.0.0.1; "
                     "'auto' generates one (off-loopback one is always generated)")
    srv.set_defaults(func=_cmd_serve)

    exp = sub.add_parser("export", help="a recording's norms and sound into TensorBoard, W&B or "
                         "MLflow", description="Log a finished recording to the trackers as the "
                         "live logger sinks would have: per-voice norm scalars, alarm and accent "
                         "counts, and clips of the sound.")
    exp.add_argument("run", help="a recording (run.gsr), or a run folder holding one")
    exp.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard event files here")
    exp.add_argument("--wandb", metavar="PROJECT", help="log a new W&B run in this project "
                     "(offline with WANDB_MODE=offline; then `wandb sync`)")
    exp.add_argument("--mlflow", metavar="TRACKING_URI",
                     help="log a new MLflow run there (e.g. sqlite:///mlflow.db)")
    exp.add_argument("--clip-seconds", type=float, default=10.0,
                     help="length of each sound clip (10)")
    exp.add_argument("--clip-steps", type=int, help="a clip every N sounded steps, of the last "
                     "--clip-seconds of them (default: clips back to back, the whole run; or "
                     "100 spread over a long run)")
    exp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    exp.set_defaults(func=_cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo" and args.steps < 1:
        parser.error(f"--steps must be >= 1, not {args.steps}")
    try:
        return int(args.func(args))
    except (GradsonicError, OSError, ModuleNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
