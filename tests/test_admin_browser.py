"""The admin tab end to end in Debian's Chromium: log in, fine-tune a tiny checkpoint for 20 steps, watch the
curve grow, stop, resume, let it finish, publish it and generate an image with it from the Generate tab.

`python app.py` runs with ELT_ADMIN_PASSWORD set (launched as scripts/bench_app.py launches it).
"""

from __future__ import annotations

import json
import re

import pytest

from conftest import copy_tiny, load_script
from test_browser import CHROMIUM, browser  # noqa: F401  (the Chromium fixture)

PASSWORD = "browser-test-password"
RUN = "browser-run"
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not __import__("pathlib").Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing")]


@pytest.fixture(scope="module")
def admin_app(tiny_checkpoints, tmp_path_factory):
    root = copy_tiny(tiny_checkpoints, tmp_path_factory.mktemp("admin-browser-checkpoints"))
    runs = tmp_path_factory.mktemp("admin-browser-runs")
    log = runs.parent / "admin-browser-app.log"
    try:
        process, url = load_script("bench_app").launch(
            [root], log, ["--admin-runs", str(runs), "--admin-eval-samples", "2"],
            env={"ELT_ADMIN_PASSWORD": PASSWORD}, timeout_s=120)
    except RuntimeError as error:
        pytest.fail(str(error))
    try:
        yield {"url": url, "runs": runs, "log": log}
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert PASSWORD not in log.read_text()  # never logged


def progress_has(page, text: str, timeout: float = 240_000) -> None:
    page.wait_for_function("t => (document.querySelector('#admin-progress')?.innerText || '').includes(t)", arg=text,
                           timeout=timeout)


def curve_step(page) -> int:
    title = page.locator("#admin-curves .gtitle").first.text_content()  # an SVG <text>: no innerText
    return int(re.search(r"step (\d+) /", title).group(1))


def test_fine_tune_watch_stop_resume_publish_generate(admin_app, browser):  # noqa: F811
    page = browser.new_page()
    page.set_default_timeout(60_000)
    page.goto(admin_app["url"] + "admin/")
    page.locator("input[type=password]").wait_for()
    page.locator("input").first.fill("admin")
    page.locator("input[type=password]").fill("wrong")
    page.get_by_role("button", name=re.compile("login", re.I)).click()
    page.get_by_text(re.compile("incorrect|invalid", re.I)).first.wait_for()  # refused
    page.locator("input").first.fill("admin")
    page.locator("input[type=password]").fill(PASSWORD)
    page.get_by_role("button", name=re.compile("login", re.I)).click()
    page.locator("#admin-start").wait_for()

    # the default base (shipped shapes-elt) at batch 64 takes a few tenths of a second per step on 2 CPU cores,
    # so Stop lands mid-run (the tiny generator would finish 20 steps before the page sees the first)
    for field, value in (("#admin-steps", "20"), ("#admin-batch", "64"), ("#admin-lr", "0.002"), ("#admin-every", "4")):
        page.locator(f"{field} input").fill(value)
    page.locator("#admin-name textarea").fill(RUN)
    page.locator("#admin-start").click()
    progress_has(page, "running")
    page.locator("#admin-curves .gtitle").wait_for(timeout=240_000)
    page.wait_for_function("() => /step ([1-9]\\d*) \\//.test(document.querySelector('#admin-curves .gtitle')"
                           "?.textContent || '')", timeout=240_000)
    first = curve_step(page)
    page.wait_for_function("n => { const m = /step (\\d+) \\//.exec(document.querySelector('#admin-curves .gtitle')"
                           "?.textContent || ''); return m && +m[1] >= Math.max(n + 1, 5); }", arg=first,
                           timeout=240_000)  # the curve grows, past the first checkpoint (step 4)
    assert curve_step(page) > first
    page.locator("#admin-stop").click()
    progress_has(page, "stopped", timeout=60_000)
    stopped_at = len((admin_app["runs"] / RUN / "train_log.jsonl").read_text().splitlines())
    assert stopped_at < 20
    page.locator("#admin-strip img").wait_for()  # the loop strip of the last checkpoint

    page.locator("#admin-resume").click()
    progress_has(page, "finished", timeout=400_000)
    steps = [json.loads(line)["step"] for line in (admin_app["runs"] / RUN / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 21))
    assert (admin_app["runs"] / RUN / "metrics.json").is_file()
    page.locator("#admin-publish").click()
    progress_has(page, "published", timeout=60_000)

    visitor = browser.new_page()
    visitor.set_default_timeout(60_000)
    visitor.goto(admin_app["url"])
    visitor.get_by_role("button", name="Generate", exact=True).wait_for()
    visitor.locator("#checkpoint input").click()
    visitor.locator("#checkpoint input").fill("browser")
    visitor.get_by_role("option", name=RUN, exact=True).click()
    visitor.get_by_role("button", name="Generate", exact=True).click()
    visitor.locator("#summary").get_by_text("GFLOPs").wait_for(timeout=120_000)
    visitor.locator("#results img").first.wait_for()
