"""Does a video generator carry motion forward?  Give it real frames and score what it adds.

    python scripts/diagnose_video.py --checkpoint checkpoints/moving-shapes-elt [--clips 200] [--loops 4] [--seed 1] [--cfg-scale 3]

For k = 0 … T'−1, the first k token-frames of held-out test clips are kept, the generator fills in the
rest with the checkpoint's sampler (conditioned on the clip's true class), and the metric classifier scores
the completed clips.  k = 0 is plain generation; the clips' own reconstructions are the ceiling.  A
model that has learned each action's motion scores higher, not lower, the more real frames it is given.
It also reports how often the object vanishes from some frame (an object not carried through time).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.evaluate import load_classifier, reference_dataset  # noqa: E402
from core.metrics import class_accuracy  # noqa: E402
from core.pipeline import Pipeline  # noqa: E402


def vanishing_share(clips: np.ndarray, distance: float = 60.0, floor: float = 0.01) -> float:
    """Fraction of clips (N, T, H, W, 3) in which the object vanishes from some frame: fewer than `floor`
    of that frame's pixels lie more than `distance` RGB units from the clip's median (background) colour."""
    pixels = clips.astype(np.float32)
    background = np.median(pixels.reshape(len(pixels), -1, 3), axis=1)[:, None, None, None, :]
    foreground = (np.linalg.norm(pixels - background, axis=-1) > distance).mean(axis=(2, 3))  # (N, T)
    return float((foreground.min(axis=1) < floor).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="video generator checkpoint folder")
    p.add_argument("--clips", type=int, default=200, help="held-out test clips")
    p.add_argument("--loops", type=int, default=None, help="loop count (default: max_loops)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cfg-scale", type=float, default=None, help="guidance scale (default: the checkpoint's)")
    args = p.parse_args(argv)
    pipeline = Pipeline.load(args.checkpoint)
    if not pipeline.is_video:
        p.error(f"{args.checkpoint} is an image generator; this diagnostic needs a video one")
    c, classifier = pipeline.config, load_classifier(pipeline)
    loops = args.loops or c.max_loops
    pixels, labels = reference_dataset(pipeline).batch(range(args.clips))
    labels = torch.from_numpy(labels).long()
    with torch.inference_mode():
        real = pipeline.tokenizer.module.encode(torch.from_numpy(pixels)).flatten(1)

    def accuracy(pixels: np.ndarray) -> float:
        return class_accuracy(classifier.module.predict(torch.from_numpy(pixels)).cpu(), labels)

    frame, sampler = c.num_tokens // c.token_grid[0], pipeline.sampler(cfg_scale=args.cfg_scale)
    print(f"{args.checkpoint}: {args.clips} test clips, L = {loops}, seed {args.seed}, sampler {sampler}")
    rebuilt = pipeline.decode(real)
    print(f"reconstruction from the clips' own tokens: accuracy {accuracy(rebuilt):.3f}, object vanishes "
          f"from a frame in {vanishing_share(rebuilt):.2f} (real clips: {vanishing_share(pixels):.2f})")
    for k in range(c.token_grid[0]):
        init = real.clone()
        init[:, k * frame:] = c.mask_id
        completed = pipeline.generate(labels.tolist(), loops, sampler, args.seed, init=init)
        print(f"first {k} of {c.token_grid[0]} token-frames real, the rest generated: accuracy {accuracy(completed):.3f}, "
              f"object vanishes from a frame in {vanishing_share(completed):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
