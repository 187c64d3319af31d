"""Where a run goes: its folder, WAV, recording, live audio, extra sinks and page server.

:class:`Outputs` checks its options when made, touching nothing. :meth:`Outputs.open` then makes
the run folder, creates every sink, locks and checks every file (a file another sonifier writes,
a recording of other settings) before anything is truncated, resumes an earlier run, binds the
page server's port, and only then writes. If any of that fails, the disk is left as it was: the
files it created and the folder it made are removed again.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .errors import ConfigError, ConfigTypeError
from .files import new_run_folder
from .mapping import plan_tones
from .recording import RecordSink
from .settings import SoundSettings
from .sinks.base import Sink
from .sinks.live import LiveSink
from .sinks.wav import WavFormat, WavSink, check_writable


class Outputs:
    """The sinks of one run, from ``GradientSonifier``'s ``wav``, ``record``, ``run_dir``,
    ``resume``, ``wav_format``, ``live``, ``sinks``, ``serve`` and ``scalars``."""

    def __init__(self, wav: Any = "auto", record: Any = "auto", run_dir: Any = None,
                 resume: bool | int = False, wav_format: str = "float32",
                 live: bool | LiveSink = False, sinks: Iterable[Sink] = (), serve: Any = None,
                 scalars: Sequence[str] = ()) -> None:
        self.wav_format = WavFormat.parse(wav_format, "wav_format")
        if isinstance(sinks, Sink) or not isinstance(sinks, Iterable):
            raise ConfigTypeError(f"sinks must be a list of gradsonic.sinks.Sink objects, not "
                                  f"{sinks!r}")
        self.extra = list(sinks)
        for s in self.extra:
            if not isinstance(s, Sink):
                raise ConfigTypeError(
                    f"sinks must hold gradsonic.sinks.Sink objects, not {type(s).__name__}")
        if not isinstance(live, (bool, LiveSink)):
            raise ConfigTypeError(f"live must be True, False or a LiveSink, not {live!r}")
        if isinstance(scalars, str) or not all(isinstance(n, str) for n in scalars):
            raise ConfigTypeError(f"scalars must be a sequence of names, not {scalars!r}")
        if not isinstance(resume, (bool, int)) or (not isinstance(resume, bool) and resume < 0):
            raise ConfigError(f"resume must be True, False or a step number >= 0, not {resume!r}")
        if run_dir is not None and (not isinstance(run_dir, (str, os.PathLike))
                                    or str(run_dir) == ""):
            raise ConfigTypeError(f"run_dir must be a folder path or None, not {run_dir!r}")
        if run_dir is not None and Path(run_dir).exists() and not Path(run_dir).is_dir():
            raise ConfigError(f"run_dir={str(run_dir)!r} exists and is not a folder")
        if record == "auto" and wav != "auto":
            record = None  # the recording comes by default with the per-run folder only
        if scalars and record is None:
            raise ConfigError("scalars are stored in the recording: pass record=... too")
        self.serve_at = None
        if serve is not None and serve is not False:
            from .server import parse_serve

            self.serve_at = parse_serve(serve)
            if record is None:
                raise ConfigError("serve= plays the run's recording in a browser: keep record= "
                                  "on (the default with wav='auto'), or pass record='run.gsr'")
        if resume and run_dir is None and "auto" in (wav, record):
            raise ConfigError(
                "resume=True continues the files of an earlier run: name them with "
                "run_dir='runs/my-job' (or explicit wav=/record= paths) in both runs")
        self.wav, self.record, self.live, self.resume = wav, record, live, resume
        self.scalars = tuple(scalars)
        self.folder = Path(run_dir) if run_dir is not None else None
        self.sinks: list[Sink] = []
        self.server: Any = None
        self.made: list[Path] = []  # files this run created (removed again by remove_made)
        self.made_folder: Path | None = None
        self.start_step = 0  # where a resumed run goes on
        self.warmup: tuple[np.ndarray, np.ndarray] | None = None  # the accents' recent history
        self.prev: tuple[np.ndarray, np.ndarray] | None = None  # the last step played

    def open(self, tap: Any, sound: SoundSettings, owner: str) -> list[Sink]:
        """Create, check and open every sink (see the module's docstring); returns them."""
        wav, record = self.wav, self.record
        for what, path in (("wav", wav), ("record", record)):
            if path is not None and path != "auto":
                check_writable(path, what)
        if (wav not in (None, "auto") and record not in (None, "auto")
                and os.path.abspath(wav) == os.path.abspath(record)):
            raise ConfigError(f"wav and record are the same file ({str(wav)!r}); give the "
                              "recording its own path, e.g. run.gsr")
        synth = sound.synth
        out: list[Sink] = []
        locked: list[Path | None] = []
        try:
            self._make_folder()
            folder = self.folder
            rec_sink = None
            if wav is not None:
                wav_sink = WavSink(folder / "run.wav" if wav == "auto" else wav,
                                   format=self.wav_format, resume=self.resume)
                wav_sink.owner = owner
                out.append(wav_sink)
            if self.live is not False:
                out.append(LiveSink() if self.live is True else self.live)
            if record is not None:
                rec_sink = RecordSink(folder / "run.gsr" if record == "auto" else record,
                                      tap.layer_names, sound.as_dict(), scalars=self.scalars,
                                      resume=self.resume)
                rec_sink.owner = owner
                out.append(rec_sink)
            out.extend(self.extra)
            self.made = [s.path for s in out if isinstance(s, (WavSink, RecordSink))
                         and not os.path.lexists(s.path)]
            # Lock every file and check what is there before anything is truncated or written.
            for s in out:
                s.channels = synth.channels
                s.prepare(synth.sample_rate)
                locked.append(getattr(s, "path", None))
            if self.resume is not False:
                self._resume([s for s in out if isinstance(s, (WavSink, RecordSink))], tap,
                             sound, None if self.resume is True else int(self.resume))
            if self.serve_at is not None:  # bind the port before any file is written
                from .server import Server

                self.server = Server(rec_sink.path, *self.serve_at, check=False)
            for s in out:
                s.open(synth.sample_rate)
        except BaseException:
            self._undo(out, locked)
            raise
        self.sinks = [s for s in out if not s.closed]  # e.g. live audio without a device: warned
        return self.sinks

    def _make_folder(self) -> None:
        if "auto" not in (self.wav, self.record):
            return
        if self.folder is None:
            try:
                self.folder = self.made_folder = new_run_folder()
            except OSError as e:
                raise ConfigError(
                    f"cannot create the run folder under {os.path.abspath('gradsonic-runs')!r}: "
                    f"{e.strerror or e}; pass run_dir= a writable folder (or wav=/record= "
                    "paths)") from e
        elif not self.folder.exists():
            try:
                self.folder.mkdir(parents=True)
            except OSError as e:
                raise ConfigError(f"run_dir={str(self.folder)!r} cannot be created: {e}") from e
            self.made_folder = self.folder

    def _undo(self, out: list[Sink], locked: list[Path | None]) -> None:
        """After a failure in :meth:`open`: remove the files it created - only those whose lock
        it took, never one another writer made meanwhile - and close what was made."""
        if self.server is not None:
            self.server.close()
            self.server = None
        self.made = [p for p in self.made if p in locked]
        self.remove_made()
        for s in out:
            try:
                s.close()
            except Exception:  # the original error is the one to report
                pass
        if self.made_folder is not None:
            try:
                self.made_folder.rmdir()  # only if empty
            except OSError:
                pass

    def remove_made(self) -> None:
        """Remove the files this run created (and later parts of them) and the folder it made,
        if empty: for a failed start, or a rank that turns out silent before its first step."""
        for path in self.made:
            parts = sorted(path.parent.glob(f"{path.stem}-[0-9][0-9][0-9]{path.suffix}"))
            for part in [path, *parts]:
                try:
                    part.unlink()
                except OSError:
                    pass
        self.made = []
        if self.made_folder is not None:
            try:
                self.made_folder.rmdir()  # only if empty
            except OSError:
                pass

    def describe(self) -> str | None:
        """The one line saying where the files go (None when there are none)."""
        files = [s.path for s in self.sinks if isinstance(s, (WavSink, RecordSink))]
        if not files:
            return None
        folder = self.folder
        if folder is not None and all(p.parent == folder for p in files):
            return f"{folder}{os.sep} ({', '.join(p.name for p in files)})"
        return ", ".join(str(p) for p in files)

    def _resume(self, sinks: list[Sink], tap: Any, sound: SoundSettings, at: int | None) -> None:
        """Cut the WAV and the recording back to the steps both hold whole (and, with ``at``,
        to the steps before ``at``), and go on there."""
        synth, every = sound.synth, sound.every
        wav = next((s for s in sinks if isinstance(s, WavSink)), None)
        rec_sink = next((s for s in sinks if isinstance(s, RecordSink)), None)
        rec = rec_sink.existing if rec_sink is not None else None
        names = tap.layer_names
        steps = sizes = None  # sizes: frames each recorded step took in the WAV (0: not sounded)
        if rec is not None:
            names = tap.adopt_voices(rec.layer_names, rec.path)
            steps = len(rec.steps)
            sizes = (np.array([synth.step_samples(int(k)) for k in rec.voice_counts])
                     * rec.sounded(every))
        has_wav = wav is not None and wav.existing_frames is not None
        if has_wav:
            if sizes is not None:
                whole = int(np.searchsorted(np.cumsum(sizes), wav.existing_frames, side="right"))
            else:  # no recording: sounded steps are steps 0, every, 2 * every, ...
                whole = wav.existing_frames // synth.step_samples(len(names)) * every
            steps = whole if steps is None else min(steps, whole)
        steps = steps or 0
        if at is not None:
            end = (int(rec.steps[steps - 1]) + 1 if rec is not None and steps else steps)
            if (rec is not None or has_wav) and at > end:
                where = rec.path if rec is not None else wav.path
                raise ConfigError(f"resume={at}: {str(where)!r} holds steps up to {end - 1} "
                                  f"whole; resume at a step <= {end} (or True: after the last)")
            before = (int(np.searchsorted(rec.steps[:steps], at, side="left")) if rec is not None
                      else at)  # rows are in step order
            steps = min(steps, before)
        if has_wav:
            frames = (int(sizes[:steps].sum()) if sizes is not None
                      else -(-steps // every) * synth.step_samples(len(names)))
            wav.resume_at(frames)
        if rec_sink is not None and rec is not None:
            rec_sink.resume_at(steps, names)
            if sound.accents is not None:  # the accent detector's history, as it was
                lo = max(0, steps - sound.accents.window)
                self.warmup = (rec.norms[lo:steps], rec.missing[lo:steps])
            heard = np.flatnonzero(rec.sounded(every)[:steps])
            if len(heard):  # the last step played: the ambient layout glides on from it
                k = heard[-1]
                freqs, kinds = plan_tones(sound.mapping, rec.norms[k:k + 1], rec.missing[k:k + 1],
                                          rec.skipped[k:k + 1])
                self.prev = (freqs[0], kinds[0])
        if at is not None:
            self.start_step = at
        elif steps:
            self.start_step = int(rec.steps[steps - 1]) + 1 if rec is not None else steps
