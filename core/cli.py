"""Shared CLI plumbing: known bad input becomes one clear line on stderr and exit status 2.

Also the loop-setting arguments the CLIs share (--loops-schedule, --adaptive, ...) and their parsing, raising
UsageError (core.usage) with one line naming what is accepted.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable

from core.checkpoint import CheckpointError
from core.config import ConfigError
from core.family import NO_LOOP_SETTINGS
from core.sampling import LoopSetting, parse_exit, parse_schedule
# the CLIs take their input checks from here; they live in core.usage, which imports nothing of the project
from core.usage import UsageError, apply_overrides, check_positive, resolve_class  # noqa: F401

if TYPE_CHECKING:
    from core.pipeline import Pipeline


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
