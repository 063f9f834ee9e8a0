"""core.usage: the input checks the CLIs, the pipeline, the JAX runtime and the app share, in a module that imports
nothing of the project, so no import circle runs through them."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from core.usage import UsageError, apply_overrides, check_positive, resolve_class

ROOT = Path(__file__).resolve().parents[1]


def project_imports(path: Path) -> set[str]:
    """The project modules a file imports anywhere in it (inside functions and TYPE_CHECKING blocks too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.split(".")[0] in ("core", "app")}
    return found


def module_files() -> dict[str, Path]:
    files = {}
    for path in [*ROOT.glob("core/**/*.py"), *ROOT.glob("app/*.py")]:
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path
    return files


def test_no_import_circle_in_the_library_or_the_app():
    files = module_files()
    graph = {name: {m for m in project_imports(path) if m in files and m != name} for name, path in files.items()}
    assert project_imports(files["core.usage"]) == set()  # the floor every input check stands on

    def circle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            name, path = stack.pop()
            for nxt in graph[name]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    # a package's __init__ that hands its modules' names on is not a circle of its own
    circles = [c for name in graph if (c := circle_from(name)) and not any(
        other.startswith(step + ".") for step, other in zip(c, c[1:]))]
    assert not circles, " -> ".join(circles[0])


def test_input_checks_say_what_is_accepted():
    assert resolve_class(["cat", "Dog"], "dog") == 1 and resolve_class(["cat", "Dog"], "0") == 0
    with pytest.raises(UsageError, match=r"unknown class 'cow'; accepted: a name \(cat, Dog\) or an index 0..1"):
        resolve_class(["cat", "Dog"], "cow")
    assert check_positive("loops", 3) == 3
    for bad in (0, True, 2.5):
        with pytest.raises(UsageError, match="loops must be an integer >= 1"):
            check_positive("loops", bad)

    @dataclass(frozen=True)
    class Settings:
        steps: int = 8
        fast: bool = False
        grid: tuple = (1, 2)

    assert apply_overrides(Settings(), ["steps=3", "fast=true", "grid=4,5"]) == Settings(3, True, (4, 5))
    with pytest.raises(UsageError, match="unknown setting 'step=3' for Settings; accepted keys: steps, fast, grid"):
        apply_overrides(Settings(), ["step=3"])
    with pytest.raises(UsageError, match="bad value for steps"):
        apply_overrides(Settings(), ["steps=many"])
