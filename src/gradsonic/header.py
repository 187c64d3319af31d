"""The recording's header: how it is parsed, and the bounds a reader holds it to.

Every reader of a recording (``read_recording``, the tail behind ``gradsonic serve``, the CLI)
parses the header here first. A file within these bounds cannot make a reader spend more than a
few MB or a moment on its header, whatever else it holds; anything beyond them is a
:class:`RecordingError` naming the file and the field (docs/recording.md lists the bounds).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

from .errors import ConfigError, GradsonicError

MAGIC = b"GSREC\x00\x01\n"
VERSION = 1


class RecordingError(GradsonicError, ValueError):
    """A recording is truncated, corrupted or not a recording; the message names the file."""




# What a header may hold. A file within these bounds cannot make a reader spend more than a few
# MB or a moment on its header, whatever else it holds; anything beyond them is a RecordingError.
MAX_HEADER_BYTES = 1 << 20  # the JSON header
MAX_DEPTH = 6  # nesting of JSON objects/arrays (the writer's is 3)
MAX_VOICES = 4096
MAX_SCALARS = 256
MAX_NAME_CHARS = 512  # a voice or scalar name
MAX_TEXT_CHARS = 256  # created, run_id, a version string
MAX_VERSIONS = 32
MAX_PART = 9999
MAX_EVERY = 1 << 31


def _names(value: Any, most: int, empty_ok: bool) -> str | None:
    """Why ``value`` is not a list of distinct names (None if it is one)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return "is not a list of names"
    if not value and not empty_ok:
        return "is empty"
    if len(value) > most:
        return f"has {len(value)} names, more than {most}"
    if any(not 0 < len(v) <= MAX_NAME_CHARS for v in value):
        return f"has a name that is empty or longer than {MAX_NAME_CHARS} characters"
    if len(set(value)) != len(value):
        return "names one voice twice"
    return None


def _depth(value: Any, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` levels of containers."""
    if isinstance(value, (dict, list)):
        if limit == 0:
            return False
        items = value.values() if isinstance(value, dict) else value
        return all(_depth(v, limit - 1) for v in items)
    return True


def _text(value: Any) -> bool:
    return isinstance(value, str) and len(value) <= MAX_TEXT_CHARS


def _check_header(header: Any, p: Path) -> dict[str, Any]:
    """The header as a dict with the fields readers use, each of the right type and within
    the bounds above (the documented format: docs/files.md)."""
    bad = None
    if not isinstance(header, dict):
        bad = f"is {type(header).__name__}, not an object"
    elif not _depth(header, MAX_DEPTH):
        bad = f"nests deeper than {MAX_DEPTH} levels"
    elif header.get("format") != "gradsonic-recording" or header.get("version") != VERSION:
        bad = (f"names format {header.get('format')!r} version {header.get('version')!r}, not "
               f"'gradsonic-recording' version {VERSION}")
    elif (why := _names(header.get("layer_names"), MAX_VOICES, False)) is not None:
        bad = f"voice list ('layer_names') {why}"
    elif (why := _names(header.get("scalars", []), MAX_SCALARS, True)) is not None:
        bad = f"'scalars' entry {why}"
    elif not isinstance(header.get("settings", {}), dict):
        bad = f"has settings {str(header.get('settings'))[:80]!r}, not an object"
    elif (not isinstance(header.get("versions", {}), dict)
          or len(header.get("versions", {})) > MAX_VERSIONS
          or not all(_text(k) and _text(v) for k, v in header.get("versions", {}).items())):
        bad = "has a 'versions' entry that is not a short object of version strings"
    elif header.get("run_id") is not None and not _text(header.get("run_id")):
        bad = "has a 'run_id' that is not a short string"
    elif header.get("created") is not None and not _text(header.get("created")):
        bad = "has a 'created' that is not a short string"
    elif (isinstance(header.get("part", 1), bool) or not isinstance(header.get("part", 1), int)
          or not 1 <= header.get("part", 1) <= MAX_PART):
        bad = f"has part {str(header.get('part'))[:20]!r}, not a number in 1..{MAX_PART}"
    if bad is not None:
        raise RecordingError(f"{str(p)!r}: the recording's header {bad} (corrupted?)")
    return header


def check_settings(settings: dict[str, Any], p: Path) -> None:
    """Settings a renderer can use: a valid synth and a rebuildable (or custom) mapping."""
    from .accents import resolve_accents
    from .mapping import mapping_from_settings
    from .synth import Synth

    kw = {k: settings[k] for k in ("sample_rate", "tone_duration", "silence_duration",
                                   "amplitude", "layout") if settings.get(k) is not None}
    mapping = settings.get("mapping", {"kind": "log"})
    try:
        Synth(**kw)
        resolve_accents(settings.get("accents"))  # (Accents bounds its window)
        every = settings.get("every", 1)
        if isinstance(every, bool) or not isinstance(every, int) or not 1 <= every <= MAX_EVERY:
            raise ConfigError(f"every is {str(every)[:20]!r}, not in 1..{MAX_EVERY}")
        if not isinstance(mapping, dict):
            raise ConfigError(f"mapping is {mapping!r}")
        if mapping.get("kind") != "custom":
            mapping_from_settings(mapping)
    except (ConfigError, TypeError, ValueError) as e:
        why = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(e))  # one line
        raise RecordingError(f"{str(p)!r}: the recording's settings are not usable ({why}); "
                             "corrupted?") from None


def _no_twins(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"a key is given twice ({sorted(k for k in set(keys) if keys.count(k) > 1)[:3]})")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_header(raw: bytes, p: Path) -> tuple[dict[str, Any], int]:
    """The checked header of the recording file ``p`` and its size in bytes, from the file's
    first bytes (at least 12 + the header length; :func:`header_size` says how many)."""
    if not raw or raw[:6] != MAGIC[:6][:len(raw)]:
        raise RecordingError(f"{str(p)!r} is not a gradsonic recording (bad magic)")
    if len(raw) < 12:
        raise RecordingError(f"{str(p)!r} is cut short: {len(raw)} bytes, less than a "
                             "recording's 12-byte preamble")
    if raw[6] != VERSION or raw[7:8] != MAGIC[7:8]:
        raise RecordingError(f"{str(p)!r} is recording format version {raw[6]}; this "
                             f"gradsonic reads version {VERSION}")
    (n,) = struct.unpack("<I", raw[8:12])
    if n > MAX_HEADER_BYTES:
        raise RecordingError(f"{str(p)!r}: the recording's header says it is {n} bytes, more "
                             f"than {MAX_HEADER_BYTES} (corrupted?)")
    if 12 + n > len(raw):
        raise RecordingError(f"{str(p)!r} is cut short inside its header ({len(raw) - 12} of "
                             f"{n} header bytes)")
    try:
        header = json.loads(raw[12:12 + n].decode("utf-8"), object_pairs_hook=_no_twins,
                            parse_constant=_no_constant)
    except RecursionError:
        raise RecordingError(f"{str(p)!r}: the recording's header nests too deep to be one "
                             "(corrupted?)") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise RecordingError(f"{str(p)!r}: the recording's header is not valid JSON ({e}); "
                             "corrupted?") from None
    return _check_header(header, p), 12 + n


def read_header(p: Path, fd: int | None = None) -> tuple[dict[str, Any], int]:
    """:func:`parse_header` of a file (or of the open descriptor ``fd`` of it), reading only its
    header."""
    try:
        if fd is not None:
            raw = os.pread(fd, 12, 0)
            if len(raw) == 12 and raw[:6] == MAGIC[:6]:
                n = min(struct.unpack("<I", raw[8:12])[0], MAX_HEADER_BYTES + 1)
                raw += os.pread(fd, n, 12)
        else:
            with open(p, "rb") as f:
                raw = f.read(12)
                if len(raw) == 12 and raw[:6] == MAGIC[:6]:
                    raw += f.read(min(struct.unpack("<I", raw[8:12])[0], MAX_HEADER_BYTES + 1))
    except OSError as e:
        raise RecordingError(f"cannot read recording {str(p)!r}: {e}") from e
    return parse_header(raw, p)
