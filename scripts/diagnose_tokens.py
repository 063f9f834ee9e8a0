"""Where an image generator's token predictor falls short: local structure vs per-position marginals.

    python scripts/diagnose_tokens.py --checkpoint checkpoints/shapes-elt [--images 20000] [--seed 0]

Prints, on the dataset's held-out test split:
1. the generator's cross-entropy on edge tokens (every code except the most frequent `--flat`
   codes, i.e. the flat-colour patches) when 10 % of the tokens are masked, at L_max;
2. the same cross-entropy from a count table over each token's left and right neighbours, fitted on
   `--images` training images (add-0.1 smoothing) and scored on interior test tokens;
3. the metric classifier's accuracy on test images rebuilt from their own tokens with 30 % of
   them (at random) replaced by the generator's argmax prediction, against the plain reconstruction;
4. the probability of a flat background code in the central quarter of the grid given only the
   class, model vs data.
If (1) is well above (2), or (3) falls far below the reconstruction, the model has not yet learned
what a token's neighbours imply; if (4) matches, its marginals are right.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.evaluate import load_classifier, reference_dataset  # noqa: E402
from core.losses import random_mask  # noqa: E402
from core.pipeline import Pipeline  # noqa: E402


def encode(pipeline: Pipeline, split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (count, H', W') and labels of the first `count` items of a split."""
    dataset = reference_dataset(pipeline, split)
    tokens, labels = [], []
    with torch.no_grad():
        for start in range(0, count, 1000):
            pixels, y = dataset.batch(range(start, min(start + 1000, count)))
            tokens.append(pipeline.tokenizer.module.encode(torch.from_numpy(pixels)).flatten(1).numpy())
            labels.append(y)
    side = pipeline.config.token_grid[-1]
    return np.concatenate(tokens).reshape(count, -1, side), np.concatenate(labels)


def mask_fraction(tokens: torch.Tensor, fraction: float, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask `fraction` of every row's tokens at random positions (the training masker at that ratio)."""
    u = torch.full((len(tokens),), float(np.arccos(fraction) * 2 / np.pi))  # mask_schedule(u) == fraction
    return random_mask(tokens, mask_id, u, torch.rand(tokens.shape))


def neighbour_table_ce(train: np.ndarray, test: np.ndarray, edge_train: np.ndarray, edge_test: np.ndarray,
                       vocab: int, alpha: float = 0.1) -> float:
    """Held-out CE of P(token | left, right) estimated by counting, on interior edge tokens."""
    def keys(t):
        return (t[:, :, :-2] * vocab + t[:, :, 2:])

    counts: dict[int, np.ndarray] = {}
    for key, target in zip(keys(train)[edge_train], train[:, :, 1:-1][edge_train]):
        counts.setdefault(int(key), np.zeros(vocab))[target] += 1
    empty = np.zeros(vocab)
    nll = []
    for key, target in zip(keys(test)[edge_test], test[:, :, 1:-1][edge_test]):
        row = counts.get(int(key), empty)
        nll.append(-np.log((row[target] + alpha) / (row.sum() + alpha * vocab)))
    return float(np.mean(nll))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="image generator checkpoint folder")
    parser.add_argument("--images", type=int, default=20000, help="training images for the count table")
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--flat", type=int, default=8, help="most frequent codes counted as flat colour")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    pipeline = Pipeline.load(args.checkpoint, precision="fp32")
    config, model = pipeline.config, pipeline.generator.module.eval()
    if pipeline.is_video:
        print("diagnose_tokens: image checkpoints only", file=sys.stderr)
        return 2
    train, _ = encode(pipeline, "train", args.images)
    test, labels = encode(pipeline, "test", args.test_images)
    flat = np.argsort(-np.bincount(train.ravel(), minlength=config.vocab_size))[:args.flat]
    print(f"# {pipeline.generator.path.name}: {args.images} train / {args.test_images} test images, seed {args.seed}")

    tokens, labels_t = torch.from_numpy(test.reshape(len(test), -1)).long(), torch.from_numpy(labels)
    masked, mask = mask_fraction(tokens, 0.1, config.mask_id)
    edge = ~torch.from_numpy(np.isin(test.reshape(len(test), -1), flat))
    with torch.no_grad():
        logits = model(masked, labels_t).logits.float()
    ce = F.cross_entropy(logits.permute(0, 2, 1), tokens, reduction="none")
    if not bool((mask & edge).any()):
        print(f"no masked edge tokens: every code in use is among the {args.flat} most frequent", file=sys.stderr)
        return 2
    print(f"model, 10% masked, edge tokens: CE {ce[mask & edge].mean():.3f} nats "
          f"(flat tokens {ce[mask & ~edge].mean():.3f})")
    table = neighbour_table_ce(train, test, ~np.isin(train[:, :, 1:-1], flat), ~np.isin(test[:, :, 1:-1], flat),
                               config.vocab_size)
    print(f"count table over left+right neighbours, edge tokens: CE {table:.3f} nats")

    classifier = load_classifier(pipeline).module
    masked30, mask30 = mask_fraction(tokens, 0.3, config.mask_id)
    with torch.no_grad():
        filled = torch.where(mask30, model(masked30, labels_t).logits.argmax(-1), tokens)
        accuracy = [(classifier.predict(torch.from_numpy(pipeline.decode(t))) == labels_t).float().mean().item()
                    for t in (tokens, filled)]
    print(f"classifier accuracy: reconstruction {accuracy[0]:.3f}, with 30% of tokens filled by the model "
          f"{accuracy[1]:.3f}")

    side = test.shape[-1]
    centre = slice(side // 4, side - side // 4)
    with torch.no_grad():
        full = torch.full((len(test), config.num_tokens), config.mask_id)
        probs = torch.softmax(model(full, labels_t).logits.float(), -1).view(len(test), side, side, -1)
    # the flat codes that occur in the top-left corner are the background colours
    corner_codes = set(np.unique(test[:, 0, 0])) & set(flat.tolist())
    bg = np.array(sorted(corner_codes))
    data_p = np.isin(test[:, centre, centre], bg).mean()
    model_p = probs[:, centre, centre][..., bg].sum(-1).mean().item()
    print(f"P(background code) in the central {side // 2}x{side // 2} tokens given only the class: "
          f"model {model_p:.3f}, data {data_p:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
