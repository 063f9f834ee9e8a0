"""README is a one-page user's document whose results are generated, and its links resolve."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def results_table():
    spec = importlib.util.spec_from_file_location("results_table", ROOT / "scripts" / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_fits_one_page_and_holds_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    assert "pip install -r requirements.txt && python app.py" in text
    assert "pip install -r requirements.txt && python -m pytest -q" in text
    assert "## Deploying it" in text


def test_results_are_what_the_script_generates():
    module = results_table()
    readme, results = module.render(README.read_text())
    assert readme == README.read_text(), "README's headline table is stale: run python scripts/results_table.py"
    assert results == module.RESULTS.read_text(), "docs/RESULTS.md is stale: run python scripts/results_table.py"
    headline = readme[readme.index(module.START):readme.index(module.END)]
    for _, names in module.FAMILIES:  # one row per shipped, evaluated generator
        for name in names:
            if (ROOT / "checkpoints" / name / "metrics.json").exists():
                assert f"| {name} |" in headline


def test_render_refuses_a_readme_without_markers():
    module = results_table()
    try:
        module.render("# no markers here\n")
    except ValueError as e:
        assert "markers" in str(e)
    else:
        raise AssertionError("render accepted a README without its results markers")


def test_relative_links_in_readme_and_docs_resolve():
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(ROOT)} links to missing {target}"
