"""The page's MaskGIT sampler (assets/browser/maskgit.js, with sampling.js) against core.sampling, in Node: the same
logits and the same random draws give identical tokens at every step, maskgitDecode gives maskgit_decode's states
on the same model outputs, and a seed gives the draws torch's generator gives (uniforms exactly, normals within
float32 rounding)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from core.sampling import (SamplerConfig, combine_guidance, draws_for, maskgit_decode, maskgit_init, maskgit_step,
                           num_masked_after)

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "assets" / "browser"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def run_node(folder: Path, harness: str, payload) -> dict:
    """Run a harness (an ES module; `modules` is the URL of assets/browser/, `input` the payload) in Node and
    return what it printed as JSON."""
    (folder / "input.json").write_text(json.dumps(payload))
    (folder / "harness.mjs").write_text('import { readFileSync } from "node:fs";\n'
                                        "const modules = process.argv[2];\n"
                                        'const input = JSON.parse(readFileSync(process.argv[3], "utf8"));\n' + harness)
    done = subprocess.run([NODE, str(folder / "harness.mjs"), MODULES.as_uri() + "/", str(folder / "input.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)

# Runs every case through the JS module: its own generator's draws (to compare with torch's), and the steps fed
# the exported logits and draws; prints what it got as JSON.
HARNESS = """
const sampler = await import(modules + "maskgit.js");
const shared = await import(modules + "sampling.js");
const { cases, schedule } = input;
const out = { cases: [], schedule: [] };
for (const [steps, tokens] of schedule)
  for (let k = 0; k < steps; k++) out.schedule.push(sampler.numMaskedAfter(k, steps, tokens));
for (const c of cases) {
  const generator = new shared.TorchGenerator(c.seed);
  const rows = c.init.map((init) => sampler.maskgitInit({ numTokens: c.num_tokens, maskId: c.mask_id,
                                                          config: c.config, init }));
  const got = { draws: [], steps: [] };
  for (const step of c.steps) {
    const draws = rows.map(() => sampler.drawsFor(generator, c.num_tokens).map((d) => Array.from(d)));
    got.draws.push(draws);
    const result = { tokens: [], sampled: [], num_masked: [] };
    rows.forEach((row, b) => {
      const both = Float32Array.from(step.both[b]);
      const logits = shared.combineGuidance(both, c.config.cfg_scale);
      const { row: next, sampled, numMasked } = sampler.maskgitStep(row, logits, c.vocab, step.draws[b]);
      rows[b] = next;
      result.tokens.push(Array.from(next.tokens));
      result.sampled.push(Array.from(sampled));
      result.num_masked.push(numMasked);
    });
    got.steps.push(result);
  }
  out.cases.push(got);
}
console.log(JSON.stringify(out));
"""

CASES = [  # (seed, rows, tokens, vocab, sampler, share of known tokens at the start)
    (0, 3, 32, 32, SamplerConfig(steps=8, cfg_scale=2.0), 0.0),
    (7, 2, 64, 100, SamplerConfig(steps=16, cfg_scale=2.0, choice_temperature=4.5), 0.0),
    (2**32 - 1, 2, 24, 16, SamplerConfig(steps=5, cfg_scale=0.0, choice_temperature=3.0, temperature_base=0.5,
                                          temperature_bias=0.8), 0.0),
    (11, 2, 20, 12, SamplerConfig(steps=4, cfg_scale=1.5), 0.4),  # continuing given tokens (init)
    (3, 1, 16, 8, SamplerConfig(steps=1, cfg_scale=3.0), 0.0),
]


def python_case(seed, batch, num_tokens, vocab, sampler, known):
    """Run core.sampling on random guided logits; returns the case for the harness and the expected steps."""
    mask_id = vocab
    data_gen = torch.Generator().manual_seed(1000 + seed % 1000)
    init = torch.full((batch, num_tokens), mask_id)
    given = torch.rand(batch, num_tokens, generator=data_gen) < known
    init[given] = torch.randint(0, vocab, (int(given.sum()),), generator=data_gen)
    rows = maskgit_init(sampler, batch=batch, num_tokens=num_tokens, mask_id=mask_id, init=init)
    generator = torch.Generator().manual_seed(seed)
    steps, expected = [], []
    for _ in range(sampler.steps):
        both = torch.randn(2 * batch, num_tokens, vocab, generator=data_gen) * 2.5  # [cond; uncond] rows
        draws = draws_for(generator, batch, num_tokens)  # (2, B, T)
        logits = combine_guidance(both, sampler.cfg_scale) if sampler.cfg_scale else both[:batch]
        rows, sampled, n_mask = maskgit_step(rows, logits.float(), draws)
        cond, uncond = both[:batch], both[batch:]
        steps.append({"both": [torch.cat([cond[b], uncond[b]]).flatten().tolist() for b in range(batch)],
                      "draws": [[draws[0, b].tolist(), draws[1, b].tolist()] for b in range(batch)]})
        expected.append({"tokens": rows.tokens.tolist(), "sampled": sampled.tolist(), "num_masked": n_mask.tolist(),
                         "draws": [[draws[0, b].tolist(), draws[1, b].tolist()] for b in range(batch)]})
    config = {"steps": sampler.steps, "cfg_scale": sampler.cfg_scale, "choice_temperature": sampler.choice_temperature,
              "temperature_base": sampler.temperature_base, "temperature_bias": sampler.temperature_bias}
    case = {"seed": seed, "num_tokens": num_tokens, "vocab": vocab, "mask_id": mask_id, "config": config,
            "init": init.tolist(), "steps": steps}
    return case, expected


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    folder = tmp_path_factory.mktemp("js-sampler")
    cases, expected = zip(*(python_case(*c) for c in CASES))
    schedule = [[steps, tokens] for steps in (1, 2, 3, 5, 8, 12, 16, 24, 32) for tokens in (1, 7, 16, 64, 100, 256)]
    got = run_node(folder, HARNESS, {"cases": cases, "schedule": schedule})
    want_schedule = [num_masked_after(k, steps, tokens) for steps, tokens in schedule for k in range(steps)]
    return got, expected, want_schedule


@pytest.mark.parametrize("index", range(len(CASES)))
def test_js_sampler_gives_the_python_tokens_at_every_step(parity, index):
    got, expected, _ = parity
    steps = got["cases"][index]["steps"]
    assert len(steps) == len(expected[index]) == CASES[index][4].steps
    for k, (js, py) in enumerate(zip(steps, expected[index])):
        assert js["sampled"] == py["sampled"], f"step {k + 1}: predictions differ"
        assert js["tokens"] == py["tokens"], f"step {k + 1}: tokens differ"
        assert js["num_masked"] == py["num_masked"], f"step {k + 1}"
    mask_id = CASES[index][3]
    assert all(mask_id not in row for row in steps[-1]["tokens"])  # the last step unmasks everything


@pytest.mark.parametrize("index", range(len(CASES)))
def test_js_generator_draws_what_torch_draws(parity, index):
    got, expected, _ = parity
    assert got["cases"][index]["draws"] == [step["draws"] for step in expected[index]]


def test_js_schedule_matches(parity):
    got, _, want = parity
    assert got["schedule"] == want


DECODE_HARNESS = """
const { decode } = await import(modules + "maskgit.js");
const { TorchGenerator } = await import(modules + "sampling.js");
const out = [];
for (const c of input.cases) {
  let call = 0;
  const seen = [];
  const fn = async (inputs, labels, all) => {
    seen.push({ tokens: Array.from(inputs.tokens), labels: Array.from(labels) });
    const loops = c.outputs[call++].map((l) => Float32Array.from(l));
    return all ? loops : [loops[loops.length - 1]];
  };
  const states = [];
  for await (const s of decode(fn, c.label, { manifest: c.manifest, config: c.config, all: c.all,
                                              generator: new TorchGenerator(c.seed) })) {
    states.push({ tokens: Array.from(s.tokens), predicted: Array.from(s.predicted),
                  loops: s.loopPredictions && s.loopPredictions.map((p) => Array.from(p)) });
  }
  out.push({ states, seen });
}
console.log(JSON.stringify(out));
"""


@pytest.mark.parametrize("all_loops", [False, True])
def test_js_decode_gives_maskgit_decode_states_on_the_same_model_outputs(all_loops, tmp_path):
    """maskgitDecode against maskgit_decode: guidance batching, the step loop and the loop strip, one seed."""
    T, V, L, null = 12, 9, 3, 5
    cases, expected = [], []
    for seed, sampler in ((4, SamplerConfig(steps=5, cfg_scale=2.5)), (9, SamplerConfig(steps=3, cfg_scale=0.0))):
        data = torch.Generator().manual_seed(seed + 100)
        outputs, seen = [], []

        def logits_fn(tokens, labels):
            out = torch.randn(L, len(labels), T, V, generator=data) * 2
            outputs.append(out.flatten(1).tolist())
            seen.append({"tokens": tokens.flatten().tolist(), "labels": labels.tolist()})
            return out if all_loops else out[-1]

        states = [{"tokens": s.tokens[0].tolist(), "predicted": s.predicted[0].tolist(),
                   "loops": None if s.loop_predictions is None else s.loop_predictions[:, 0].tolist()}
                  for s in maskgit_decode(logits_fn, torch.tensor([2]), num_tokens=T, mask_id=V, null_label=null,
                                          config=sampler, generator=torch.Generator().manual_seed(seed))]
        manifest = {"num_tokens": T, "vocab_size": V, "mask_id": V, "null_class": null}
        cases.append({"seed": seed, "label": 2, "all": all_loops, "manifest": manifest, "outputs": outputs,
                      "config": {"steps": sampler.steps, "cfg_scale": sampler.cfg_scale,
                                 "choice_temperature": sampler.choice_temperature,
                                 "temperature_base": sampler.temperature_base,
                                 "temperature_bias": sampler.temperature_bias}})
        expected.append({"states": states, "seen": seen})
    got = run_node(tmp_path, DECODE_HARNESS, {"cases": cases})
    assert got == expected


RANDN_HARNESS = """
const { TorchGenerator } = await import(modules + "sampling.js");
const out = input.map(([seed, sizes]) => {
  const generator = new TorchGenerator(seed);
  return sizes.map((n) => Array.from(generator.randn(n)));
});
let refused = null;
try { new TorchGenerator(0).randn(8); } catch (error) { refused = error.message; }
console.log(JSON.stringify({ out, refused }));
"""


def test_js_generator_draws_torch_normals(tmp_path):
    """TorchGenerator.randn against torch.randn on the CPU: the same mt19937 draws through Box–Muller, equal within
    float32 rounding of log / cos / sin (torch's vector kernels round them their own way), calls in sequence."""
    cases = [(0, [256, 256, 16]), (123, [64, 40]), (2**32 - 1, [100, 17, 256])]  # 40, 100, 17: not multiples of 16
    got = run_node(tmp_path, RANDN_HARNESS, cases)
    for (seed, sizes), draws in zip(cases, got["out"]):
        generator = torch.Generator().manual_seed(seed)
        for n, js in zip(sizes, draws):
            want = torch.randn(n, generator=generator)
            assert (torch.tensor(js) - want).abs().max() <= 2e-6, (seed, n)
    assert got["refused"] == "randn mirrors torch for 16 or more values, got 8"
