"""The "Run in my browser" runtime: the page generates with onnxruntime-web from files the app serves, nothing
from another host, and the server does no model work for it.  Plus the app's side of a refused export."""

from __future__ import annotations

import contextlib
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


@pytest.fixture(scope="module")
def shipped_app(tmp_path_factory):
    """The real app over the shipped checkpoints, launched as app.py launches it (its offline theme), with a
    private export cache; shapes-elt is exported here, before anything is counted."""
    from app.service import Studio
    from app.ui import THEME, build_demo, css

    studio = Studio([ROOT / "checkpoints"])
    studio.export_cache = tmp_path_factory.mktemp("exports")
    studio.browser_export("shapes-elt")
    demo = build_demo(studio)
    demo.queue(max_size=32, default_concurrency_limit=4)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, theme=THEME,
                css=css())
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

    def only_the_app(route):
        if urlparse(route.request.url).netloc == app_host or route.request.url.startswith(("data:", "blob:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

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
            with pytest.raises(sync_api.Error, match="shapes-dit-elt is a diffusion generator: it runs on the server"):
                page.evaluate("window.eltStudio.generate({checkpoint: 'shapes-dit-elt', label: 'star'})")

            # the tab: the same run from its controls, the step image and the loop strip drawn in the page
            page.get_by_role("tab", name="Run in my browser").click()
            page.wait_for_function("document.querySelector('#browser-checkpoint')?.value === 'shapes-elt'")
            page.locator("#browser-class").select_option("star")
            page.locator("#browser-steps").evaluate("s => { s.value = '4'; s.dispatchEvent(new Event('input')); }")
            page.locator("#browser-run").click()
            page.wait_for_function("document.querySelector('#browser-speed').dataset.backend === 'wasm'")
            assert "ms per loop in this browser" in page.locator("#browser-speed").inner_text()
            assert page.locator("#browser-strip").evaluate("c => c.width") > 96 * 3  # one tile per loop
            page.locator("#browser-checkpoint").select_option("shapes-dit-elt")
            page.get_by_text("runs on the server only: use the Generate tab").wait_for()
            assert page.locator("#browser-run").is_disabled()
            page.close()
        finally:
            context.close()
        model_calls = len(calls) - calls_before
    assert errors == []
    assert blocked == []  # the page asked no other host for anything (and would have got nothing)
    assert model_calls == 0 and engine.model_calls == engine_before


def test_app_refuses_a_mismatched_export(tiny_checkpoints, tmp_path):
    from app.service import Studio, StudioError

    studio = Studio([copy_tiny(tiny_checkpoints, tmp_path / "ckpts")])
    studio.export_cache = tmp_path / "exports"
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
