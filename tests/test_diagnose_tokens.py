"""scripts/diagnose_tokens.py."""

from __future__ import annotations

import math
import re

import numpy as np

from conftest import load_script


def test_diagnose_tokens_script(tiny_checkpoints, capsys):
    diagnose = load_script("diagnose_tokens")
    # the count table is exact on a rule it can see: every token equals its left neighbour
    rows = np.repeat(np.arange(4)[None, :, None], 6, axis=2).repeat(50, axis=0)  # (50, 4, 6), constant rows
    edge = np.ones((50, 4, 4), bool)
    assert diagnose.neighbour_table_ce(rows, rows, edge, edge, vocab=4) < 0.01
    noise = np.random.default_rng(0).integers(0, 4, (50, 4, 6))
    assert diagnose.neighbour_table_ce(noise, noise[::-1].copy(), edge, edge, vocab=4) > 1.0
    assert diagnose.main(["--checkpoint", str(tiny_checkpoints["tiny-elt"]), "--images", "200",
                          "--test-images", "100", "--flat", "0"]) == 0
    out = capsys.readouterr().out
    model_ce = float(re.search(r"masked, edge tokens: CE (\S+) nats", out).group(1))
    table_ce = float(re.search(r"neighbours, edge tokens: CE (\S+) nats", out).group(1))
    accuracies = [float(x) for x in re.search(r"reconstruction (\S+), .* model (\S+)", out).groups()]
    assert math.isfinite(model_ce) and math.isfinite(table_ce) and model_ce > 0 and table_ce >= 0
    assert all(0 <= a <= 1 for a in accuracies) and "P(background code)" in out
