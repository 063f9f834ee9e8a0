"""requirements.txt is complete: every third-party module the code imports is installed by it.

`pip install -r requirements.txt && python -m pytest -q` on a fresh machine must not fail on a missing
module, so every absolute import in app.py, app/, core/, scripts/ and tests/ (nested ones included) must
come from a distribution that requirements.txt names, or from one of their dependencies, transitively, as
this environment's installed metadata says.  The modules in core.runtime.OPTIONAL_IMPORTS are accepted
anyway, provided each of their imports sits in a `try: … except ImportError` (the code runs without them).
"""

from __future__ import annotations

import ast
import importlib.metadata as metadata
import re
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from core.runtime import OPTIONAL_IMPORTS

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "app.py", *(p for folder in ("app", "core", "scripts", "tests")
                             for p in sorted((ROOT / folder).rglob("*.py")))]
# top-level names of this repository: its packages, and the modules that tests/ and scripts/ import from each
# other (pytest puts tests/ on sys.path; a script's own folder is on it)
LOCAL = {"app", "core", "scripts", "tests"} | {p.stem for p in SOURCES
                                              if p.parent in (ROOT, ROOT / "tests", ROOT / "scripts")}
IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}


def read_requirements(text: str) -> list[Requirement]:
    """The requirements of a requirements file; comments, blank lines and pip options (-r, --index-url …) skipped."""
    lines = (re.sub(r"(^|\s)#.*", "", line).strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def provided_distributions(requirements: list[Requirement]) -> set[str]:
    """Canonical names of the installed distributions that `requirements` pull in, transitively: a dependency
    counts where its marker holds here, for no extra or for one the requirement asks for (jax[cuda12])."""
    provided, seen, todo = set(), set(), list(requirements)
    while todo:
        requirement = todo.pop()
        name, extras = canonicalize_name(requirement.name), frozenset(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dependencies = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed: provides nothing here (the test of requirements.txt itself names it)
        provided.add(name)
        for dependency in map(Requirement, dependencies):
            if dependency.marker is None or any(dependency.marker.evaluate({"extra": e}) for e in extras | {""}):
                todo.append(dependency)
    return provided


def imports(tree: ast.AST, guarded: bool = False):
    """(top-level module, line, guarded) of every absolute import in `tree`, nested ones included; guarded:
    inside the body of a `try` with an `except` that catches ImportError."""
    if isinstance(tree, ast.Import):
        yield from ((alias.name.partition(".")[0], tree.lineno, guarded) for alias in tree.names)
    elif isinstance(tree, ast.ImportFrom) and tree.level == 0:
        yield tree.module.partition(".")[0], tree.lineno, guarded
    for field, value in ast.iter_fields(tree):
        inner = guarded or (field == "body" and isinstance(tree, ast.Try)
                            and any(map(catches_import_error, tree.handlers)))
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.AST):
                yield from imports(child, inner)


def catches_import_error(handler: ast.ExceptHandler) -> bool:
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(t is None or (isinstance(t, ast.Name) and t.id in IMPORT_ERRORS) for t in types)


def unprovided_imports(sources: dict[str, str], provided: set[str], optional=OPTIONAL_IMPORTS) -> list[str]:
    """One message per third-party import in `sources` (file name -> code) that no distribution in `provided`
    installs, and per unguarded import of an optional module."""
    owners = metadata.packages_distributions()  # import name -> installed distributions holding it
    problems = []
    for file, source in sources.items():
        for module, line, guarded in imports(ast.parse(source, file)):
            if module in sys.stdlib_module_names or module in LOCAL:
                continue
            if module in optional:
                if not guarded:
                    problems.append(f"{file}:{line}: `{module}` is optional (core.runtime.OPTIONAL_IMPORTS) but "
                                    "imported outside `try: … except ImportError` (in a test: pytest.importorskip)")
                continue
            dists = owners.get(module, [])
            if not any(canonicalize_name(d) in provided for d in dists):
                where = f"it comes from {', '.join(sorted(set(dists)))}" if dists else "nothing installed here has it"
                problems.append(f"{file}:{line}: `{module}` is provided by no distribution in requirements.txt nor "
                                f"their dependencies ({where}): add it to requirements.txt, or use what is there")
    return problems


def requirements() -> list[Requirement]:
    return read_requirements((ROOT / "requirements.txt").read_text())


def installed(name: str) -> bool:
    try:
        return bool(metadata.version(name))
    except metadata.PackageNotFoundError:
        return False


def test_every_requirement_is_installed():  # else the import check below would judge a smaller environment
    missing = [str(r) for r in requirements() if (r.marker is None or r.marker.evaluate()) and not installed(r.name)]
    assert not missing, f"not installed here, though requirements.txt names them: {missing}"


def test_every_third_party_import_comes_from_requirements_txt():
    sources = {str(p.relative_to(ROOT)): p.read_text() for p in SOURCES}
    problems = unprovided_imports(sources, provided_distributions(requirements()))
    assert not problems, "\n".join(["imports that `pip install -r requirements.txt` does not provide:", *problems])


def test_the_checker_reports_what_is_missing():
    """The check can fail: an unknown module, one outside requirements.txt, an unguarded optional one."""
    source = ("import os, json.decoder\nfrom . import sibling\nimport numpy as np\nfrom core import model\n"
              "def f():\n    import notapackage_xyz.sub\n    import pytest\n"
              "try:\n    import jax\nexcept ImportError:\n    import jax.numpy\n")
    problems = unprovided_imports({"fake.py": source}, provided_distributions([Requirement("numpy")]))
    assert len(problems) == 3, problems
    assert problems[0].startswith("fake.py:6: `notapackage_xyz`") and "nothing installed here" in problems[0]
    assert problems[1].startswith("fake.py:7: `pytest`") and "comes from pytest" in problems[1]
    assert problems[2].startswith("fake.py:11: `jax` is optional")
    both = provided_distributions([Requirement("numpy"), Requirement("pytest")])
    assert unprovided_imports({"fake.py": source}, both) == [problems[0], problems[2]]


def test_requirements_are_read_with_their_extras_and_markers():
    text = "# pinned\n-r other.txt\njax[cuda12]==0.10.2   # comment\npytest==9.0.3 ; python_version >= '3'\n\n"
    assert [(r.name, r.extras) for r in read_requirements(text)] == [("jax", {"cuda12"}), ("pytest", set())]
    provided = provided_distributions([Requirement("pytest")])
    assert {"pytest", "pluggy", "iniconfig"} <= provided  # pytest's own dependencies, transitively
