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


class GradsonicWarning(UserWarning):
    """Soft problems: a failed sink, a worker error reported on the training thread."""


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning point at the first caller outside gradsonic
    (the user's line), however deep inside the package it is raised."""
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here):
        frame, level = frame.f_back, level + 1
    return level
