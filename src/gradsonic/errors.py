"""Exceptions and warnings raised by gradsonic.

Every error is also a built-in (``ValueError``, ``TypeError``, ``RuntimeError``) so existing
``except`` clauses keep working.
"""

from __future__ import annotations


class GradsonicError(Exception):
    """Base class of every gradsonic error."""


class ConfigError(GradsonicError, ValueError):
    """An argument has a bad value; the message names it and the allowed ones."""


class ConfigTypeError(GradsonicError, TypeError):
    """An argument has the wrong type; the message names it and the expected type."""


class SinkError(GradsonicError, RuntimeError):
    """A sink (file, device) failed; the sonifier stops that sink and training goes on."""


class SinkPaused(SinkError):
    """A sink's output is held up outside gradsonic (a device that takes no audio): the sink
    stays on, and the worker reports it once per pause instead of stopping it."""


class GradsonicWarning(UserWarning):
    """Soft problems: a failed sink, a worker error reported on the training thread."""


def _user_frame() -> tuple[object, int]:
    """The first frame up the stack outside gradsonic - and outside torch, which calls
    gradsonic's optimizer hooks from inside ``optimizer.step()`` - with its depth from the
    caller's caller."""
    import os
    import sys

    inside = [os.path.dirname(os.path.abspath(__file__)) + os.sep]
    torch = sys.modules.get("torch")
    if torch is not None and getattr(torch, "__file__", None):
        inside.append(os.path.dirname(os.path.abspath(torch.__file__)) + os.sep)
    frame, level = sys._getframe(2), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(
            tuple(inside)):
        frame, level = frame.f_back, level + 1
    return frame, level


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first caller outside gradsonic
    (the user's line), however deep inside the package it is raised."""
    return _user_frame()[1]


def user_line() -> str:
    """``file:line`` of the first caller outside gradsonic ('who writes this file')."""
    frame = _user_frame()[0]
    return "unknown" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"
