"""Shared CLI plumbing: known bad input becomes one clear line on stderr and exit status 2."""

from __future__ import annotations

import sys
from dataclasses import fields, replace
from typing import Callable

from core.checkpoint import CheckpointError
from core.config import ConfigError


class UsageError(ValueError):
    """Bad command-line input detected after parsing (unknown class, loops < 1, …)."""


def user_errors() -> tuple[type[BaseException], ...]:
    from core.data import DatasetError
    from core.runtime.torch_backend import DeviceError

    return (UsageError, CheckpointError, ConfigError, DatasetError, DeviceError, FileNotFoundError)


def run(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> None:
    """Run a CLI main; user errors exit with status 2 and one line naming the problem."""
    try:
        code = main(argv)
    except user_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


# -- KEY=VALUE overrides of a config dataclass -------------------------------------------------------
def _parse_value(text: str, current):
    if isinstance(current, bool):
        if text.lower() not in ("true", "false", "1", "0"):
            raise UsageError(f"expected true/false, got {text!r}")
        return text.lower() in ("true", "1")
    if isinstance(current, tuple):
        return tuple(type(current[0])(v) for v in text.split(","))
    if current is None:
        return text
    return type(current)(text)


def apply_overrides(obj, pairs: list[str]):
    """dataclasses.replace from KEY=VALUE strings; unknown keys are errors."""
    names = {f.name: f for f in fields(obj)}
    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in names:
            raise UsageError(f"unknown setting {pair!r} for {type(obj).__name__}; accepted keys: "
                             f"{', '.join(names)}")
        try:
            changes[key] = _parse_value(value, getattr(obj, key))
        except ValueError as error:
            raise UsageError(f"bad value for {key}: {error}") from None
    return replace(obj, **changes)
