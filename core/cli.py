"""Shared CLI plumbing: known bad input becomes one clear line on stderr and exit status 2."""

from __future__ import annotations

import sys
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
