"""Shared CLI plumbing: known bad input becomes one clear line on stderr and exit status 2.

Also the parsing of user input that the CLIs and the app share (class names, loop settings, positive
counts), each raising UsageError with one line naming what is accepted.
"""

from __future__ import annotations

import sys
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from core.checkpoint import CheckpointError
from core.config import ConfigError
from core.family import NO_LOOP_SETTINGS
from core.sampling import LoopSetting, parse_exit, parse_schedule

if TYPE_CHECKING:
    from core.pipeline import Pipeline  # core.pipeline imports this module


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


ADAPTIVE_HELP = ("adaptive exit inside every sampling step, per sample: agree:TAU stops a sample once the share of its "
                 "still-masked tokens whose argmax did not change from the previous loop is >= TAU (0 < TAU <= 1); "
                 "kl:EPS once the mean KL between successive loops' predictions is < EPS (EPS > 0).  Measured in "
                 "docs/ADAPTIVE.md (agree:0.95 is a good start); the loop count / schedule is the cap")
SCHEDULE_HELP = ("loops per MaskGIT step: one L per step (L1,L2,…, as many as --steps) or a ramp A..B (A loops at "
                 "the first step, B at the last)")


def add_loop_arguments(parser, many: bool = False) -> None:
    """--loops-schedule / --adaptive / --exit-min-loops / --exit-cap (repeatable with many=True)."""
    action = "append" if many else "store"
    more = " (repeat for several settings)" if many else ""
    parser.add_argument("--loops-schedule", action=action, default=None, metavar="L1,L2,…|A..B",
                        help=SCHEDULE_HELP + more)
    parser.add_argument("--adaptive", action=action, default=None, metavar="agree:TAU|kl:EPS",
                        help=ADAPTIVE_HELP + more)
    parser.add_argument("--exit-min-loops", type=int, default=None,
                        help="adaptive exit is checked from this loop on (default: the checkpoint's L_min)")
    parser.add_argument("--exit-cap", type=int, default=None,
                        help="adaptive exit never runs beyond this many loops (default: the loop count, else L_max)")


def loop_setting(pipeline: Pipeline, steps: int, loops: int | None = None, schedule: str | None = None,
                 adaptive: str | None = None, min_loops: int | None = None, cap: int | None = None) -> LoopSetting:
    """A LoopSetting from command-line / app text; bad values raise UsageError with one clear line."""
    if not pipeline.family.discrete and (schedule is not None or adaptive is not None):
        raise UsageError(NO_LOOP_SETTINGS)
    try:
        exit = None
        if adaptive is not None:
            lowest = pipeline.generator.experiment.trained_loops[0]
            exit = parse_exit(adaptive, lowest if min_loops is None else check_positive("exit-min-loops", min_loops))
        top = loops or pipeline.config.max_loops
        if exit is not None and cap is not None:
            top = check_positive("exit-cap", cap)
        caps = parse_schedule(schedule, steps) if schedule is not None else None
    except ValueError as error:
        raise UsageError(str(error)) from None
    return LoopSetting(check_positive("loops", top), caps, exit)
