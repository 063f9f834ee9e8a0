#!/usr/bin/env bash
# Reproduce every shipped image checkpoint, then evaluate each one into its metrics.json and
# samples.png.  Each step resumes where it stopped, so the script can be re-run after a kill.
#   bash scripts/train_shipped.sh            (≈ 1 h on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
python -m core.train --preset shapes-tokenizer --out checkpoints/shapes-tokenizer
python -m core.train --preset shapes-classifier --out checkpoints/shapes-classifier
for name in shapes-elt shapes-vanilla shapes-dense; do
  python -m core.train --preset "$name" --out "checkpoints/$name"
done
for name in shapes-elt shapes-vanilla shapes-dense; do
  python -m core.evaluate --checkpoint "checkpoints/$name" --samples 500 --seed 0 \
    --write-metrics --grid "checkpoints/$name/samples.png"
done
for name in shapes-tokenizer shapes-classifier; do
  python -m core.evaluate --checkpoint "checkpoints/$name" --samples 2000 --write-metrics
done
