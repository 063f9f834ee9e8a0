"""The page's WebGPU path (onnxruntime-web's WebGPU bundle), checked in headless Chromium on SwiftShader, a CPU
Vulkan: the page picks WebGPU when the browser offers an adapter, its head outputs after every loop are the WASM
path's within 1e-3 for each family (MaskGIT logits: shapes-elt; DiT x0: shapes-dit-elt), and it falls back to
WASM, saying so in runtime(), when there is no adapter or the WebGPU device cannot be had.  SwiftShader tests
correctness, not speed: its ms per loop are a CPU emulation's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from test_browser_runtime import CHROMIUM, FLAGS, shipped_app  # noqa: F401 (the app fixture)

# SwiftShader's WebGPU adapter on a page served from localhost (onnxruntime's own SwiftShader test lanes use it)
WEBGPU_FLAGS = [f for f in FLAGS if f != "--disable-gpu"] + [
    "--enable-unsafe-webgpu", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]
TOLERANCE = 1e-3
LOOPS = 4  # one forward gives the head after loops 1..4: L = 1, 2, 3, 4 (L_max) of both shipped families

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed")]


def open_page(p, app, tmp_path, init_script=None):
    context = p.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM,
                                                   headless=True, args=WEBGPU_FLAGS)
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.set_default_timeout(120_000)
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(app["url"])
    page.wait_for_function("window.eltStudio !== undefined")
    return context, page, errors


def forward(page, checkpoint, backend=None):
    return page.evaluate("(r) => window.eltStudio.forward(r)",
                         {"checkpoint": checkpoint, "loops": LOOPS, "seed": 1, "backend": backend})


def test_webgpu_gives_the_wasm_outputs(shipped_app, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        context, page, errors = open_page(p, shipped_app, tmp_path)
        try:
            assert page.evaluate("navigator.gpu.requestAdapter().then((a) => a?.info?.architecture)") == "swiftshader"
            timing = {}
            for checkpoint in ("shapes-elt", "shapes-dit-elt"):
                gpu = forward(page, checkpoint)  # the runtime's own choice
                runtime = page.evaluate("window.eltStudio.runtime()")
                assert runtime["backend"] == gpu["backend"] == "webgpu" and runtime["fallback"] is None
                wasm = forward(page, checkpoint, "wasm")
                assert wasm["backend"] == "wasm" and len(gpu["outputs"]) == len(wasm["outputs"]) == LOOPS
                for loop, (a, b) in enumerate(zip(gpu["outputs"], wasm["outputs"]), 1):
                    a, b = np.asarray(a), np.asarray(b)
                    assert a.shape == b.shape and a.size >= 2 * 64 * 4 and np.isfinite(a).all()
                    assert np.abs(a - b).max() <= TOLERANCE, (checkpoint, loop, np.abs(a - b).max())
                    assert np.abs(b).max() > 10 * TOLERANCE  # outputs, not zeros on both sides
                timing[checkpoint] = {b: forward(page, checkpoint, b)["msPerLoop"] for b in ("webgpu", "wasm")}
            # a backend this page cannot run: one message naming those it can
            with pytest.raises(sync_api.Error, match=r'backend must be one of webgpu, wasm on this page, got "cuda"'):
                forward(page, "shapes-elt", "cuda")
        finally:
            context.close()
    assert errors == []
    for checkpoint, ms in timing.items():  # warm sessions; SwiftShader's figure is a CPU emulation of a GPU
        print(f"{checkpoint}: ms per loop, WebGPU (SwiftShader) {ms['webgpu']:.1f}, WASM {ms['wasm']:.1f}")
        assert ms["webgpu"] > 0 and ms["wasm"] > 0


NO_ADAPTER = "navigator.gpu.requestAdapter = async () => null;"
NO_DEVICE = ("GPUAdapter.prototype.requestDevice = function () {"
             " return Promise.reject(new Error('no device for this page')); };")


@pytest.mark.parametrize("script, says", [(NO_ADAPTER, "this browser offers no WebGPU adapter: running on WASM"),
                                          (NO_DEVICE, "WebGPU could not run shapes-elt's embed.onnx")])
def test_page_falls_back_to_wasm_and_says_so(shipped_app, tmp_path, script, says):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        context, page, errors = open_page(p, shipped_app, tmp_path, script)
        try:
            image = page.evaluate("window.eltStudio.generate({checkpoint: 'shapes-elt', label: 'star', loops: 1,"
                                  " steps: 2}).then((r) => ({backend: r.backend, width: r.width}))")
            runtime = page.evaluate("window.eltStudio.runtime()")
            assert image == {"backend": "wasm", "width": 32} and runtime["backend"] == "wasm"
            assert runtime["fallback"].startswith(says) and runtime["fallback"].endswith("running on WASM")
            if script == NO_ADAPTER:  # the WASM bundle alone was loaded: WebGPU is not on offer
                with pytest.raises(sync_api.Error, match=r"backend must be one of wasm on this page \(this browser"):
                    forward(page, "shapes-elt", "webgpu")
        finally:
            context.close()
    assert errors == []
