#!/usr/bin/env bash
# Reproduce the shipped checkpoints of one family, then evaluate each into its metrics.json and
# preview grid.  Each step resumes where it stopped, so the script can be re-run after a kill.
#   bash scripts/train_shipped.sh shapes          (images, MaskGIT;   ≈ 4.5 h on 2 CPU cores: 24,000 steps
#                                                  per generator, 75-90 min each)
#   bash scripts/train_shipped.sh shapes-dit      (images, diffusion; ≈ 4.2 h on 2 CPU cores: elt and vanilla at
#                                                  once, ≈ 130 min, then dense at 2 threads, ≈ 120 min)
#   bash scripts/train_shipped.sh moving-shapes   (video;  ≈ 2.7 h on 2 CPU cores: tokenizer 21 min, classifier a
#                                                  few minutes, the two generators at once, ≈ 130 min)
#   bash scripts/train_shipped.sh digits          (real 8x8 scans; ≈ 2.5 h on 2 CPU cores: tokenizer and
#                                                  classifier a few minutes, each generator 60-75 min)
#   bash scripts/train_shipped.sh emoji           (open-licensed artwork; ≈ 2 h on 2 CPU cores: the data set from
#                                                  the npm registry 2 min, tokenizer 9 min, classifier 3 min, the
#                                                  two generators at once ≈ 105 min; weights stored in bf16)
set -euo pipefail
cd "$(dirname "$0")/.."
family=${1:-shapes}
case "$family" in
  shapes) data=shapes; generators="shapes-elt shapes-vanilla shapes-dense"; samples=500; grid=samples.png ;;
  # the DiT models reuse the shapes tokenizer (its continuous latent) and metric classifier
  shapes-dit) data=shapes; generators="shapes-dit-elt shapes-dit-vanilla shapes-dit-dense"; samples=500
              grid=samples.png ;;
  moving-shapes) data=moving-shapes; generators="moving-shapes-elt moving-shapes-vanilla"; samples=300
                 grid=samples.gif ;;
  digits) data=digits; generators="digits-elt digits-vanilla"; samples=500; grid=samples.png ;;  # FD against all 360 held-out scans
  emoji) data=emoji; generators="emoji-elt emoji-vanilla"; samples=500; grid=samples.png
         [ -d data/emoji ] || python scripts/make_emoji_dataset.py ;;  # data/emoji, not committed (its README)
  *) echo "usage: $0 shapes|shapes-dit|moving-shapes|digits|emoji" >&2; exit 2 ;;
esac
python -m core.train --preset "$data-tokenizer" --out "checkpoints/$data-tokenizer"
python -m core.train --preset "$data-classifier" --out "checkpoints/$data-classifier"
pinned=""  # generators trained at once, one core each (docs/EXPERIMENTS.md: ≈ 1.4x the throughput of one at a time)
case "$family" in
  moving-shapes) pinned="moving-shapes-elt moving-shapes-vanilla" ;;
  shapes-dit) pinned="shapes-dit-elt shapes-dit-vanilla" ;;
  emoji) pinned="emoji-elt emoji-vanilla" ;;
esac
[ "$(nproc)" -ge 2 ] || pinned=""
core=0; pids=()
for g in $pinned; do
  OMP_NUM_THREADS=1 taskset -c $core python -m core.train --preset "$g" --out "checkpoints/$g" --compile &
  pids+=($!); core=$((core + 1))
done
for pid in "${pids[@]}"; do wait "$pid"; done   # set -e: a failed run stops the script here
for g in $generators; do
  case " $pinned " in *" $g "*) continue ;; esac
  python -m core.train --preset "$g" --out "checkpoints/$g" --compile  # same weights, faster steps
done
if [ "$family" = emoji ]; then  # the 60 MB budget for every shipped checkpoint (outputs checked within tolerance)
  python -m core.checkpoint store-bf16 $(for g in $generators; do echo "checkpoints/$g"; done)
fi
for g in $generators; do
  python -m core.evaluate --checkpoint "checkpoints/$g" --samples "$samples" --seed 0 \
    --write-metrics --grid "checkpoints/$g/$grid"
done
for c in tokenizer classifier; do
  python -m core.evaluate --checkpoint "checkpoints/$data-$c" --samples 2000 --write-metrics  # whole test split
done
if [ "$family" = moving-shapes ]; then  # one clip per class at L_max, frames as columns
  python -m core.evaluate --checkpoint checkpoints/moving-shapes-elt --loops 4 --samples 20 --seed 0 \
    --grid docs/moving-shapes-contact-sheet.png
fi
python scripts/results_table.py
