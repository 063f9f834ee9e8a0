"""Does a video generator carry motion forward?  Give it real frames and score what it adds.

    python scripts/diagnose_video.py --checkpoint checkpoints/moving-shapes-elt [--clips 200] [--loops 4] [--seed 1]

For k = 0 … T'−1, the first k token-frames of held-out test clips are kept, the generator fills in the
rest with the default sampler (conditioned on the clip's true class), and the metric classifier scores
the completed clips.  k = 0 is plain generation; the clips' own reconstructions are the ceiling.  A
model that has learned each action's motion scores higher, not lower, the more real frames it is given.
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
from core.sampling import SamplerConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="video generator checkpoint folder")
    p.add_argument("--clips", type=int, default=200, help="held-out test clips")
    p.add_argument("--loops", type=int, default=None, help="loop count (default: max_loops)")
    p.add_argument("--seed", type=int, default=1)
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

    frame, sampler = c.num_tokens // c.token_grid[0], SamplerConfig()
    print(f"{args.checkpoint}: {args.clips} test clips, L = {loops}, seed {args.seed}, sampler {sampler}")
    print(f"reconstruction from the clips' own tokens: accuracy {accuracy(pipeline.decode(real)):.3f}")
    for k in range(c.token_grid[0]):
        init = real.clone()
        init[:, k * frame:] = c.mask_id
        completed = pipeline.generate(labels.tolist(), loops, sampler, args.seed, init=init)
        print(f"first {k} of {c.token_grid[0]} token-frames real, the rest generated: accuracy {accuracy(completed):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
