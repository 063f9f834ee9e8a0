"""The page's loop range, loop previews and class lookup (assets/browser/loops.js) against their Python twins, in
Node: core.config.allowed_loops (read from export.json, never computed in the page), core.family's loop_preview
and core.cli.resolve_class."""

from __future__ import annotations

import pytest
import torch

from core.cli import UsageError, resolve_class
from core.config import allowed_loops
from core.family import FAMILIES
from test_browser_sampler import NODE, run_node

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

HARNESS = """
const { checkLoops, loopPreview, loopRange, resolveClass } = await import(modules + "loops.js");
const attempt = (f) => { try { return f(); } catch (error) { return { error: error.message }; } };
const out = {
  loops: input.loops.map(([entry, values]) => ({ range: loopRange(entry),
    accepted: values.filter((v) => !attempt(() => checkLoops(v, entry, "ckpt")).error) })),
  refused: attempt(() => checkLoops(9, input.loops[0][0], "shapes-elt")),
  classes: input.classes.map((v) => attempt(() => resolveClass(input.names, v, "ckpt"))),
  previews: input.previews.map(({ family, loops, before, mask }) =>
    loopPreview(family, loops.map((l) => (family === "maskgit" ? Int32Array.from(l) : Float32Array.from(l))), before,
                mask).map((l) => Array.from(l))),
};
console.log(JSON.stringify(out));
"""

NAMES = ["circle", "Ring", "square", "triangle"]
CLASS_INPUTS = ["circle", "RING", " square ", "3", "0", "-0", "4", "-1", "dog", "", 2, 0, 3, 4, -1]


def test_loops_js_matches_its_python_twins(tmp_path):
    maskgit, diffusion = FAMILIES["maskgit"].loop_preview, FAMILIES["diffusion"].loop_preview
    g = torch.Generator().manual_seed(0)
    before = torch.randint(0, 5, (10,), generator=g)
    before[::2] = 5  # masked where even
    tokens = torch.randint(0, 5, (3, 10), generator=g)  # three loops' predictions
    x0 = torch.randn(3, 8, generator=g)
    config = type("Config", (), {"mask_id": 5})
    previews = [{"family": "maskgit", "loops": tokens.tolist(), "before": before.tolist(), "mask": 5},
                {"family": "maskgit", "loops": tokens.tolist(), "before": None, "mask": 5},
                {"family": "diffusion", "loops": x0.tolist(), "before": None, "mask": None}]
    entries = [({"allowed_loops": list(allowed_loops(m)), "max_loops": m}, list(range(-1, 2 * m + 3)))
               for m in (4, 1, 3)]
    got = run_node(tmp_path, HARNESS, {"loops": entries, "names": NAMES, "classes": CLASS_INPUTS,
                                       "previews": previews})

    for (entry, values), js in zip(entries, got["loops"]):
        low, high = allowed_loops(entry["max_loops"])
        assert js == {"range": [low, high], "accepted": [v for v in values if low <= v <= high]}
    assert got["refused"]["error"] == ("loops must be an integer in 1..8 for shapes-elt (L_max = 4; above it is "
                                       "extrapolation), got 9")

    for value, js in zip(CLASS_INPUTS, got["classes"]):
        try:
            want = resolve_class(NAMES, value)
        except UsageError:
            want = None
        if want is None:
            assert js["error"].startswith("unknown class ") and js["error"].endswith(
                "accepted: circle, Ring, square, triangle (or an index 0..3)"), value
        else:
            assert js == want, value

    assert got["previews"][0] == maskgit(config, tokens, before).tolist()
    assert got["previews"][1] == maskgit(config, tokens, None).tolist()
    assert torch.tensor(got["previews"][2]).equal(diffusion(config, x0, None))
