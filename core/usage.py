"""Bad user input, said in one line: `UsageError` and the parsers of input that the CLIs, the pipeline, the
JAX runtime and the app share (KEY=VALUE overrides, class names, positive counts).

It imports nothing of the project, so every module that checks input can import it without a circle.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Sequence

import numpy as np


class UsageError(ValueError):
    """Bad command-line input detected after parsing (unknown class, loops < 1, …)."""


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


# -- user input shared by the CLIs and the app -------------------------------------------------------
def resolve_class(class_names: Sequence[str], value: str | int) -> int:
    """Class index from a name (case-insensitive) or an index; UsageError lists what is accepted."""
    if isinstance(value, str):
        key = value.strip().lower()
        for i, name in enumerate(class_names):
            if name.lower() == key:
                return i
        if key.lstrip("-").isdigit():
            value = int(key)
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < len(class_names):
        return int(value)
    shown = ", ".join(class_names[:10]) + (", …" if len(class_names) > 10 else "")
    raise UsageError(f"unknown class {value!r}; accepted: a name ({shown}) or an index 0..{len(class_names) - 1}")


def check_positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UsageError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
