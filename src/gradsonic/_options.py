"""Small helpers for validating options: string enums and argument checks with clear messages."""

from __future__ import annotations

import enum
import math
from typing import Any, TypeVar

from .errors import ConfigError, ConfigTypeError

E = TypeVar("E", bound="StrEnum")


class StrEnum(str, enum.Enum):
    """A string enum whose members compare equal to their values ("log" == MappingName.LOG)."""

    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def parse(cls: type[E], value: Any, what: str) -> E:
        """Return the member for ``value`` (a member or its string), or raise naming the choices."""
        if isinstance(value, cls):
            return value
        try:
            return cls(value)
        except ValueError:
            choices = sorted(m.value for m in cls)
            raise ConfigError(f"{what} must be one of {choices!r}, not {value!r}") from None


def check_number(value: Any, what: str, *, low: float = 0.0, allow_low: bool = False,
                 high: float = math.inf, allow_high: bool = True) -> float:
    """Return ``value`` as a float after checking it is a real number in the given interval."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigTypeError(f"{what} must be a number, not {type(value).__name__} ({value!r})")
    v = float(value)
    lo_ok = v >= low if allow_low else v > low
    hi_ok = v <= high if allow_high else v < high
    if not (math.isfinite(v) and lo_ok and hi_ok):
        left = "[" if allow_low else "("
        right = "]" if allow_high else ")"
        raise ConfigError(f"{what} must be in {left}{low:g}, {high:g}{right}, not {value!r}")
    return v
