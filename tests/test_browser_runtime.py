"""The page runtime: the page generates with onnxruntime-web from files the app serves, nothing
from another host, and the server does no model work for it, for a MaskGIT (shapes-elt) and a DiT
(shapes-dit-elt; a seed gives the server's torch sample).  Plus the app's side of a refused export."""

from __future__ import annotations

import contextlib
import threading
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from conftest import copy_tiny, free_port

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def model_work():
    """Counts every torch module call in this process (the server's model, tokenizer, anything) while open."""
    calls = []
    handle = torch.nn.modules.module.register_module_forward_pre_hook(lambda module, args: calls.append(module))
    try:
        yield calls
    finally:
        handle.remove()


def only_host(host: str, blocked: list[str]):
    """A route handler that lets the page reach `host` (and data: / blob: URLs) only; the rest is refused and listed
    in `blocked`."""
    def route(route):
        if urlparse(route.request.url).netloc == host or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()
    return route


@pytest.fixture(scope="module")
def shipped_app(tmp_path_factory):
    """The real app over the shipped checkpoints, launched as app.py launches it (its offline theme), with a
    private export cache; shapes-elt and shapes-dit-elt are exported here, before anything is counted."""
    from app.service import Studio
    from app.static import app_kwargs
    from app.ui import THEME, build_demo, css

    studio = Studio([ROOT / "checkpoints"])
    studio.checkpoints.export_cache = tmp_path_factory.mktemp("exports")
    for name in ("shapes-elt", "shapes-dit-elt"):
        studio.browser_export(name)
    demo = build_demo(studio)
    demo.queue(max_size=32, default_concurrency_limit=4)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, theme=THEME,
                css=css(), app_kwargs=app_kwargs(studio.export_cache))
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "studio": studio}
    finally:
        demo.close()
        studio.close()


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
def test_page_generates_with_no_other_host_and_no_server_model_work(shipped_app, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    app_host = urlparse(shipped_app["url"]).netloc
    engine = shipped_app["studio"].engine
    blocked, errors = [], []
    only_the_app = only_host(app_host, blocked)

    with model_work() as calls, sync_api.sync_playwright() as p:
        calls_before, engine_before = len(calls), engine.model_calls
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=FLAGS,
                                                       viewport={"width": 1400, "height": 1400})
        try:
            context.route("**/*", only_the_app)
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(shipped_app["url"])
            page.wait_for_function("window.eltStudio !== undefined")
            catalog = page.evaluate("window.eltStudio.checkpoints()")
            max_loops = catalog["checkpoints"]["shapes-elt"]["max_loops"]
            images = {}
            for loops in (2, max_loops):
                images[loops] = page.evaluate(
                    "(loops) => window.eltStudio.generate({checkpoint: 'shapes-elt', label: 'star', loops, steps: 16,"
                    " seed: 0}).then((r) => ({width: r.width, height: r.height, rgba: Array.from(r.rgba), ms: r.ms,"
                    " backend: r.backend, loops: r.loops}))", loops)
            for loops, image in images.items():
                assert (image["width"], image["height"], image["loops"]) == (32, 32, loops)
                assert len(image["rgba"]) == 32 * 32 * 4 and len(set(image["rgba"])) > 2  # a picture, not a fill
                assert image["backend"] == "wasm" and image["ms"] > 0

            # bad input rejects with one message naming the accepted values, and the page shows it
            with pytest.raises(sync_api.Error, match=r"loops must be an integer in 1\.\.8 for shapes-elt"):
                page.evaluate("window.eltStudio.generate({checkpoint: 'shapes-elt', label: 'star', loops: 9})")
            with pytest.raises(sync_api.Error, match=r"unknown class \"dog\" for shapes-elt; accepted: circle, ring"):
                page.evaluate("window.eltStudio.generate({checkpoint: 'shapes-elt', label: 'dog'})")
            with pytest.raises(sync_api.Error, match=r"unknown checkpoint \"nope\"; accepted: .*moving-shapes-elt"):
                page.evaluate("window.eltStudio.generate({checkpoint: 'nope', label: 'star'})")  # clips run too

            # the DiT: diffusion.js on its export, classifier-free and loop guidance
            dit = {}
            for guide_loop in (0, 2):
                dit[guide_loop] = page.evaluate(
                    "(guideLoop) => window.eltStudio.generate({checkpoint: 'shapes-dit-elt', label: 'star', loops: 4,"
                    " steps: 8, seed: 3, guideLoop}).then((r) => ({width: r.width, height: r.height, rgba:"
                    " Array.from(r.rgba), family: r.family, latent: r.tokens, guideLoop: r.guideLoop}))", guide_loop)
                image = dit[guide_loop]
                assert (image["width"], image["height"], image["family"]) == (32, 32, "diffusion")
                assert len(set(image["rgba"])) > 2 and image["guideLoop"] == guide_loop
            assert dit[0]["latent"] != dit[2]["latent"]
            with pytest.raises(sync_api.Error, match="loop guidance from loop 4 needs more loops than that; got 4"):
                page.evaluate("window.eltStudio.generate({checkpoint: 'shapes-dit-elt', label: 'star', loops: 4,"
                              " guideLoop: 4})")
            with pytest.raises(sync_api.Error, match="loop guidance .* is a DiT option; shapes-elt is a maskgit"):
                page.evaluate("window.eltStudio.generate({checkpoint: 'shapes-elt', label: 'star', guideLoop: 1})")

            # Generate runs in the page by default: the step image and loop strip drawn here, the server's outputs
            # (final image, summary with GFLOPs, PNG with its settings, latency chart) from the page's sample
            for checkpoint, steps in (("shapes-elt", 4), ("shapes-dit-elt", 3)):
                choose(page, "#checkpoint", checkpoint)
                set_number(page, "#steps", steps)
                page.locator("#run-where").evaluate("w => { delete w.dataset.backend; }")
                page.get_by_role("button", name="Generate", exact=True).click()
                page.wait_for_function("document.querySelector('#run-where').dataset.backend === 'wasm'")
                assert page.locator("#run-where").inner_text().startswith("on this device · WASM · ")
                assert "ms per loop" in page.locator("#run-where").inner_text()
                assert page.locator("#page-strip").evaluate("c => c.width") > 96 * 3  # one tile per loop
                # the summary is the server's, from the page's sample (never cleared by hand: Svelte owns its nodes)
                page.wait_for_function("([name, steps]) => { const s = document.querySelector('#summary').innerText;"
                                       " return s.includes(name) && s.includes(`${steps} steps`)"
                                       " && s.includes('GFLOPs'); }", arg=[checkpoint, steps])
                page.locator("#latency .js-plotly-plot").wait_for()
                page.locator("#results img").first.wait_for()
                page.locator("#downloads").get_by_text(".png").first.wait_for()
                assert not page.locator("#preview").is_visible()  # the page's own step image stands in
            page.close()
        finally:
            context.close()
        model_calls = len(calls) - calls_before
    assert errors == []
    assert blocked == []  # the page asked no other host for anything (and would have got nothing)
    assert model_calls == 0 and engine.model_calls == engine_before

    # the same seed in torch on this process (fp32): the page's DiT latent is the server's sample
    for guide_loop, image in dit.items():
        latent = torch_dit_latent(label=5, loops=4, steps=8, seed=3, guide_loop=guide_loop)
        assert (torch.tensor(image["latent"]).view_as(latent) - latent).abs().max() <= 1e-3


def choose(page, selector: str, option: str) -> None:
    """Pick an option of a Gradio dropdown."""
    page.locator(f"{selector} input").click()
    page.get_by_role("option", name=option, exact=True).click()
    page.wait_for_function(f"document.querySelector('{selector} input').value === '{option}'")
    if selector == "#checkpoint":  # its defaults (steps, guidance, loops) land with the quality chart's title: wait,
        # or a value set next is overwritten by them
        page.wait_for_function("(name) => document.querySelector('#quality').textContent.includes('— ' + name)",
                               arg=option)


def set_number(page, selector: str, value: int) -> None:
    """Type a value into a Gradio slider's number box (its change event follows)."""
    box = page.locator(f"{selector} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


@contextlib.contextmanager
def app_page(shipped_app, tmp_path, block=None, hold=None):
    """A page of the app in headless Chromium that reaches the app's host only (and not `block`); hold =
    (part of a URL, list, event): such requests are appended to the list and wait until the event is set."""
    sync_api = pytest.importorskip("playwright.sync_api")
    app_host = urlparse(shipped_app["url"]).netloc

    def route(route):
        url = route.request.url
        if block and block in url or not (urlparse(url).netloc == app_host or url.startswith(("data:", "blob:"))):
            route.abort()
        elif hold and hold[0] in url and not hold[2].is_set():
            hold[1].append(route)
        else:
            route.continue_()

    with sync_api.sync_playwright() as p:
        context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                       headless=True, args=FLAGS,
                                                       viewport={"width": 1400, "height": 1400})
        try:
            context.route("**/*", route)
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(shipped_app["url"])
            page.wait_for_function("window.eltStudio !== undefined")
            page.get_by_text("runs on this device when it can").or_(page.get_by_text("runs on the server ·")).wait_for()
            yield page
        finally:
            context.close()


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
def test_generate_falls_back_to_the_server_when_the_runtime_cannot_load(shipped_app, tmp_path):
    engine = shipped_app["studio"].engine
    with app_page(shipped_app, tmp_path, block="/studio-static/runtime/") as page:
        choose(page, "#checkpoint", "shapes-elt")
        choose(page, "#class-name", "ring")
        set_number(page, "#loops", 3)
        set_number(page, "#steps", 2)
        before = engine.model_calls
        page.get_by_role("button", name="Generate", exact=True).click()
        page.locator("#summary").get_by_text("GFLOPs").wait_for()
        assert page.locator("#run-where").inner_text() == "on the server · runtime could not load"
        summary = page.locator("#summary").inner_text()
        assert "ring" in summary and "3 loops" in summary and "2 steps" in summary  # no setting lost
        assert engine.model_calls > before
        page.locator("#loop-strip img").wait_for()  # the server's own step previews
        assert page.locator("#run-on-device").is_checked()  # the visitor's choice stays; the page says why not


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
def test_a_loop_slider_moved_mid_run_leaves_the_newest_result(shipped_app, tmp_path):
    engine = shipped_app["studio"].engine
    held, release = [], threading.Event()
    with app_page(shipped_app, tmp_path, hold=(".onnx", held, release)) as page:
        choose(page, "#checkpoint", "shapes-elt")
        set_number(page, "#steps", 32)
        before = engine.model_calls
        # a 32-step run takes under a second here, too short to move a slider in: the run is held while it
        # loads its graphs (their requests wait), and the slider moves then
        page.get_by_role("button", name="Generate", exact=True).click()
        page.get_by_text("loading shapes-elt into this page").wait_for()
        while not held:
            page.wait_for_timeout(50)
        set_number(page, "#loops", 2)  # mid-run: the run at L_max stops, one at L = 2 replaces it
        for route in held:
            route.continue_()
        release.set()
        try:
            page.wait_for_function("document.querySelector('#run-where').dataset.run === '2'")
        except Exception as error:  # say what the page shows instead
            raise AssertionError(f"run 2 did not report: {page.locator('#run-where').inner_text()!r}") from error
        page.locator("#summary").get_by_text("2 loops").wait_for()
        page.wait_for_timeout(1500)  # nothing older arrives afterwards
        assert "2 loops" in page.locator("#summary").inner_text()
        assert page.locator("#page-strip").evaluate("c => c.width") == 2 * 96 + 4  # two loops' tiles
        # the server's switch: the same controls run there
        page.locator("#run-on-server").check()
        shown = page.locator("#summary").inner_text()
        page.get_by_role("button", name="Generate", exact=True).click()
        page.wait_for_function("(shown) => { const s = document.querySelector('#summary').innerText;"
                               " return s !== shown && s.includes('GFLOPs'); }", arg=shown)
        assert page.locator("#run-where").inner_text() == "on the server"
        assert engine.model_calls > before


def torch_dit_latent(label: int, loops: int, steps: int, seed: int, guide_loop: int) -> torch.Tensor:
    from dataclasses import replace

    from core import checkpoint as ckpt
    from core.family import family_of

    generator = ckpt.load(ROOT / "checkpoints" / "shapes-dit-elt")
    config = generator.experiment.model
    family = family_of(config)
    sampler = replace(generator.experiment.sampler, steps=steps, guide_loop=guide_loop)
    fn = family.model_fn(generator.module.float().eval(), loops, bool(guide_loop), None)
    with torch.no_grad():
        states = list(family.sample(fn, torch.tensor([label]), config, sampler, torch.Generator().manual_seed(seed)))
    return states[-1].tokens[0]


def test_app_refuses_a_mismatched_export(tiny_checkpoints, tmp_path):
    from app.service import Studio, StudioError

    studio = Studio([copy_tiny(tiny_checkpoints, tmp_path / "ckpts")])
    studio.checkpoints.export_cache = tmp_path / "exports"
    try:
        assert studio.browser_catalog()["tiny-elt"]["server_only"] is None
        folder, manifest = studio.browser_export("tiny-elt")
        assert manifest["checkpoint"] == "tiny-elt" and (folder / "block.onnx").is_file()
        shutil.copy(folder / "head.onnx", folder / "block.onnx")  # a graph that is not this export's block
        with pytest.raises(StudioError, match=r"export of 'tiny-elt' is refused: .*block.onnx: contents differ"):
            studio.browser_export("tiny-elt")
        with pytest.raises(StudioError, match="unknown checkpoint 'nope'"):
            studio.browser_export("nope")
    finally:
        studio.close()


def test_browser_report_renders_its_numbers():
    from conftest import load_script

    report = load_script("browser_report")
    speed = {L: {"ms": 150.0 * L, "ms_per_loop": 8.0, "threads": 1, "backend": "wasm"} for L in (1, 2, 3, 4)}
    info = {"date": "2026-01-01", "machine": "a CPU, 2 cores", "cores": 2, "load": "0.5", "load_end": "0.6",
            "chromium": "150",
            "ort_web": "1.31.1", "steps": 16, "cfg_scale": 2.0, "export_mb": 4.6, "runtime_mb": 14.9, "load_ms": 900.0,
            "samples": 100, "repeats": 5, "precision": "fp32", "server_precision": "fp32", "speed": speed,
            "isolated": {L: {**v, "threads": 2, "ms": v["ms"] * 1.2} for L, v in speed.items()},
            "server": {L: 60.0 * L for L in speed},
            "quality": [{"loops": 2, "browser": 0.71, "torch_same_seeds": 0.72, "same_tokens": 0.97, "evaluate": 0.69,
                         "delta": 0.02},
                        {"loops": 4, "browser": 0.80, "torch_same_seeds": 0.80, "same_tokens": 1.0, "evaluate": 0.83,
                         "delta": -0.03}]}
    text = report.render(info)
    assert "| 2 | 0.710 | 0.720 | 97% | 0.690 | +0.020 |" in text
    assert "Within 0.06 of core.evaluate at every L." in text
    assert "| 4 | 600 | 8.0 | 720 | 8.0 | 240 | 2.5× |" in text
    assert "600 ms per image: it meets the 2 s target" in text and "no gain at L_max (0.83×" in text


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")
def test_a_time_budget_picks_the_deepest_loop_count_that_fits_on_this_device(shipped_app, tmp_path):
    engine = shipped_app["studio"].engine
    with app_page(shipped_app, tmp_path) as page:
        choose(page, "#checkpoint", "shapes-elt")
        page.locator("#budget").get_by_text("Latency budget").click()
        before = engine.model_calls
        budget_ms = page.locator("#budget-ms input")
        for bad, says in (("0", "budget must be a number of ms > 0"),
                          ("1", "a budget of 1 ms is below the fastest possible run on this device")):
            budget_ms.fill(bad)
            budget_ms.press("Enter")
            page.get_by_role("button", name="Generate within budget").click()
            page.locator("#page-runner").get_by_text(says).wait_for()  # one message, in the page
        budget_ms.fill("60000")  # the whole budget: L_max fits
        budget_ms.press("Enter")
        page.get_by_role("button", name="Generate within budget").click()
        page.wait_for_function("document.querySelector('#summary').innerText.includes('within budget')")
        summary = page.locator("#summary").inner_text()
        assert "chosen L=4, 16 steps" in summary and "from this page's first run" in summary
        assert page.locator("#quality .js-plotly-plot").count() == 1  # the pick marked on the quality chart
        assert engine.model_calls == before  # planned and made in the page


def test_page_load_report_renders_its_numbers():
    from conftest import load_script

    report = load_script("page_load")
    row = {"checkpoint": "shapes-elt", "backend": "wasm", "first_ms": 1234.4, "first_runtime": 3_840_000,
           "first_runtime_files": 3, "first_export": 4_280_000, "first_export_files": 4, "export_body": 4_640_000,
           "second_runtime": 0, "second_runtime_files": 3, "second_export": 0, "second_export_files": 4}
    text = report.render([row])
    assert "| shapes-elt | wasm | 3.84 MB (3 files) | 4.28 MB (4.64 MB) | 1234 ms | 0 bytes (7 files from the cache) |" in text
    assert "A second visit downloads none of the runtime or export files again" in text
    text = report.render([row | {"second_export": 4_280_000}])
    assert "downloads runtime or export files again for shapes-elt: the cache did not keep them" in text
