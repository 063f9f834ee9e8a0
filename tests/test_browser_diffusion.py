"""The page's DiT sampler (assets/browser/diffusion.js) against core.sampling's diffusion half, in Node: the same
starting noise, the same DDPM draws and the same model outputs give the same latents at every step (fp32, max |Δ|
<= 1e-5), with classifier-free guidance, loop guidance and the schedule's shift; the model is asked for the same
inputs; the schedule and a refused guide loop match too."""

from __future__ import annotations

import pytest
import torch

from core.config import ConfigError, DiffusionSamplerConfig
from core.sampling import diffusion_decode, noise_schedule
from test_browser_sampler import NODE, run_node

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

HARNESS = """
const { decode, noiseSchedule, checkGuideLoop } = await import(modules + "diffusion.js");
const out = { cases: [], schedule: [], refused: [] };
for (const c of input.cases) {
  let call = 0;
  const seen = [], draws = c.draws.slice();
  const generator = { randn: (n) => Float32Array.from(draws.shift()) }; // the Python run's draws, in its order
  const fn = async (inputs, labels, all) => {
    seen.push({ latents: Array.from(inputs.latents), t: Array.from(inputs.t), labels: Array.from(labels), all });
    const loops = c.outputs[call++].map((l) => Float32Array.from(l));
    return all ? loops : [loops[loops.length - 1]];
  };
  const states = [];
  for await (const s of decode(fn, c.label, { manifest: c.manifest, config: c.config, all: c.all, generator })) {
    states.push({ x: Array.from(s.tokens), x0: Array.from(s.predicted), t: s.t,
                  loops: s.loopPredictions && s.loopPredictions.map((p) => Array.from(p)) });
  }
  out.cases.push({ states, seen, left: draws.length });
}
for (const [t, shift] of input.schedule) out.schedule.push(Object.values(noiseSchedule(Math.fround(t), shift)))  // a float32 time, as rows have;
for (const [k, loops] of input.guide) {
  try { checkGuideLoop(k, loops); out.refused.push(null); } catch (error) { out.refused.push(error.message); }
}
console.log(JSON.stringify(out));
"""

T, C, L, NULL = 16, 3, 3, 7
CASES = [  # (seed, sampler, schedule shift, the strip asked for)
    (0, DiffusionSamplerConfig(steps=6, cfg_scale=2.0, method="ddim"), 1.0, False),
    (1, DiffusionSamplerConfig(steps=5, cfg_scale=1.5, method="ddpm"), 1.0, True),
    (2, DiffusionSamplerConfig(steps=4, cfg_scale=2.0, method="ddim", guide_loop=1), 1.0, False),
    (3, DiffusionSamplerConfig(steps=5, cfg_scale=3.0, method="ddpm", guide_loop=2), 2.0, True),
    (4, DiffusionSamplerConfig(steps=3, cfg_scale=0.0, method="ddim"), 0.5, True),
    (5, DiffusionSamplerConfig(steps=1, cfg_scale=2.0, method="ddpm"), 1.0, False),
]


def python_case(seed, sampler, shift, strip):
    """diffusion_decode on a fake denoiser with recorded outputs; the draws its generator made, recorded by a twin."""
    data = torch.Generator().manual_seed(500 + seed)
    outputs, seen = [], []
    every = strip or sampler.guide_loop > 0

    def denoise_fn(x, labels, t):
        out = torch.randn(L, len(labels), T, C, generator=data)
        outputs.append(out.flatten(1).tolist())
        seen.append({"latents": x.flatten().tolist(), "t": t.tolist(), "labels": labels.tolist(), "all": every})
        return out if every else out[-1]

    states = [{"x": s.tokens[0].flatten().tolist(), "x0": s.predicted[0].flatten().tolist(), "t": s.t,
               "loops": None if s.loop_predictions is None else s.loop_predictions[:, 0].flatten(1).tolist()}
              for s in diffusion_decode(denoise_fn, torch.tensor([4]), shape=(T, C), null_label=NULL, config=sampler,
                                        shift=shift, generator=torch.Generator().manual_seed(seed))]
    twin = torch.Generator().manual_seed(seed)
    noisy_steps = sampler.steps - 1 if sampler.method == "ddpm" else 0
    draws = [torch.randn((T, C), generator=twin).flatten().tolist() for _ in range(1 + noisy_steps)]
    config = {"steps": sampler.steps, "cfg_scale": sampler.cfg_scale, "method": sampler.method,
              "guide_loop": sampler.guide_loop}
    case = {"label": 4, "all": strip, "config": config, "outputs": outputs, "draws": draws,
            "manifest": {"latent_shape": [T, C], "null_class": NULL, "schedule_shift": shift}}
    return case, {"states": states, "seen": seen}


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    cases, expected = zip(*(python_case(*c) for c in CASES))
    schedule = [[t, shift] for t in (0.0, 1e-4, 0.1, 0.25, 0.5, 0.75, 0.9, 0.9999, 1.0) for shift in (0.5, 1.0, 3.0)]
    guide = [[0, 1], [1, 2], [2, 2], [3, 2], [3, 4]]
    got = run_node(tmp_path_factory.mktemp("js-diffusion"), HARNESS,
                   {"cases": cases, "schedule": schedule, "guide": guide})
    return got, expected, schedule, guide


def worst(a, b) -> float:
    return float((torch.tensor(a, dtype=torch.float32) - torch.tensor(b, dtype=torch.float32)).abs().max())


@pytest.mark.parametrize("index", range(len(CASES)))
def test_js_sampler_gives_the_python_latents_at_every_step(parity, index):
    got, expected, _, _ = parity
    js, py = got["cases"][index], expected[index]
    assert len(js["states"]) == len(py["states"]) == CASES[index][1].steps
    assert js["left"] == 0  # the page drew exactly the noise the server's sampler drew
    for k, (a, b) in enumerate(zip(js["states"], py["states"])):
        assert worst(a["x"], b["x"]) <= 1e-5, f"step {k + 1}: latents differ"
        assert worst(a["x0"], b["x0"]) <= 1e-5, f"step {k + 1}: x0 differs"
        assert a["t"] == pytest.approx(b["t"], abs=1e-7)
        assert (a["loops"] is None) == (b["loops"] is None)
        if a["loops"] is not None:
            assert worst(a["loops"], b["loops"]) == 0
    for k, (a, b) in enumerate(zip(js["seen"], py["seen"])):  # the same model calls: rows, labels, times
        assert a["labels"] == b["labels"] and a["t"] == b["t"] and a["all"] == b["all"], f"call {k + 1}"
        assert worst(a["latents"], b["latents"]) <= 1e-5, f"call {k + 1}"
    assert len(js["seen"]) == len(py["seen"])


def test_js_schedule_matches(parity):
    got, _, schedule, _ = parity
    for (t, shift), js in zip(schedule, got["schedule"]):
        alpha, sigma, logsnr = noise_schedule(torch.tensor([t], dtype=torch.float32), shift)
        assert js == pytest.approx([float(alpha), float(sigma), float(logsnr)], rel=1e-6, abs=1e-7), (t, shift)


def test_js_refuses_the_guide_loops_the_sampler_config_refuses(parity):
    got, _, _, guide = parity
    for (k, loops), js in zip(guide, got["refused"]):
        try:
            DiffusionSamplerConfig(guide_loop=k).check_loops(loops)
            message = None
        except ConfigError as error:
            message = str(error)
        assert js == message, (k, loops)
