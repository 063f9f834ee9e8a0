"""Where a DiT's guided samples go wrong: guide one prediction away from another and score the samples.

    python scripts/probe_guidance.py --samples 200 shapes-dit-elt@4,shapes-dit-elt@4/u,2 \\
        shapes-dit-elt@4,shapes-dit-vanilla@4/u,2 shapes-dit-elt@4,shapes-dit-elt@2,2

Each GUIDE is STRONG,WEAK,SCALE[,T_MAX]: every sampling step takes x̂0 = weak + scale·(strong − weak).
STRONG and WEAK are NAME@L, a checkpoint (a folder, or a name under --checkpoints) run at L loops on the
sample's class, or NAME@L/u, its unconditional prediction (the null class).  So NAME@L,NAME@L/u,S is
classifier-free guidance at scale S; a WEAK from another checkpoint swaps in that model's branch; the same
checkpoint at fewer loops guides the model away from its own earlier loop, with no unconditional pass
(the sampler setting `--sampler guide_loop=k` does this in one pass).
With T_MAX, steps at t > T_MAX (the noisier ones) take STRONG alone: guidance limited to an interval.

Samples are drawn as `core.evaluate` draws them (sample i of class i % classes, the batch from i using seed
+ i; DDIM at the first checkpoint's steps).  Each row gives the metric classifier's accuracy and the FD to
the real test images, split into its two terms: ‖μ − μ_real‖² (where the samples sit in feature space) and
the covariance term (how they spread).  --by-class then splits the first term by class: ⟨p_c·(μ_c −
μ_real,c), μ − μ_real⟩ per class c (p_c its share of the samples), plus what the two sets' different class mixes
add; these sum to ‖μ − μ_real‖², so the classes that put the samples off the data's mean stand out.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.cli import UsageError, run  # noqa: E402
from core.evaluate import load_classifier, reference_set  # noqa: E402
from core.metrics import ClassifierFeatures, batched_features, class_accuracy, frechet_terms  # noqa: E402
from core.pipeline import Pipeline  # noqa: E402
from core.sampling import diffusion_decode  # noqa: E402


@dataclass(frozen=True)
class Branch:
    checkpoint: str
    loops: int
    unconditional: bool = False

    def __str__(self) -> str:
        return f"{Path(self.checkpoint).name}@{self.loops}{'/u' if self.unconditional else ''}"


@dataclass(frozen=True)
class Guide:
    strong: Branch
    weak: Branch
    scale: float
    t_max: float = 1.0

    def __str__(self) -> str:
        return f"{self.strong},{self.weak},{self.scale:g}" + (f",{self.t_max:g}" if self.t_max < 1 else "")


def parse_branch(text: str) -> Branch:
    name, at, rest = text.partition("@")
    loops, slash, flag = rest.partition("/")
    if not at or not name or not loops.isdigit() or int(loops) < 1 or (slash and flag != "u"):
        raise UsageError(f"{text!r} is not NAME@L or NAME@L/u (L a loop count >= 1)")
    return Branch(name, int(loops), bool(slash))


def parse_guide(text: str) -> Guide:
    parts = text.split(",")
    if len(parts) not in (3, 4):
        raise UsageError(f"{text!r} is not STRONG,WEAK,SCALE[,T_MAX]")
    try:
        numbers = [float(value) for value in parts[2:]]
    except ValueError:
        raise UsageError(f"{text!r}: SCALE and T_MAX must be numbers") from None
    if numbers[0] < 0 or (len(numbers) == 2 and not 0 < numbers[1] <= 1):
        raise UsageError(f"{text!r}: SCALE must be >= 0 and T_MAX in (0, 1]")
    return Guide(parse_branch(parts[0]), parse_branch(parts[1]), *numbers)


def mean_shift_by_class(generated: np.ndarray, labels: np.ndarray, real: np.ndarray, real_labels: np.ndarray,
                        classes: int) -> list[float]:
    """‖μ − μ_real‖² of feature sets (N, F) and (M, F) split into one term per class and a last one for the
    class mix: μ − μ_real = Σ_c p_c(μ_c − μ_real,c) + Σ_c (p_c − q_c)·μ_real,c with p, q each set's class shares."""
    generated, real = np.asarray(generated, np.float64), np.asarray(real, np.float64)
    shift = generated.mean(0) - real.mean(0)
    parts, mix = [], np.zeros_like(shift)
    for c in range(classes):
        mine, theirs = generated[labels == c], real[real_labels == c]
        p, q = len(mine) / len(generated), len(theirs) / len(real)
        if len(mine) and len(theirs):
            parts.append(p * (mine.mean(0) - theirs.mean(0)))
            mix += (p - q) * theirs.mean(0)
        else:  # a class only one set has: all of it is class mix
            parts.append(np.zeros_like(shift))
            mix += p * mine.mean(0) if len(mine) else -q * theirs.mean(0)
    return [float(part @ shift) for part in [*parts, mix]]


def probe(guides: list[Guide], checkpoints: str, samples: int, seed: int, batch_size: int = 100) -> Iterator[dict]:
    """One row per guide, as each is done: accuracy, FD and its two terms on `samples` samples."""
    pipelines: dict[str, Pipeline] = {}

    def pipeline(branch: Branch) -> Pipeline:
        if branch.checkpoint not in pipelines:
            path = Path(branch.checkpoint)
            pipelines[branch.checkpoint] = Pipeline.load(path if path.is_dir() else Path(checkpoints) / path)
        return pipelines[branch.checkpoint]

    first = pipeline(guides[0].strong)
    if first.family.discrete:
        raise UsageError(f"{guides[0].strong.checkpoint} is a MaskGIT checkpoint; this probe guides a DiT's x0")
    classifier = load_classifier(first)
    extractor = ClassifierFeatures(classifier.module, first.generator.meta["dataset"]["name"])
    real, real_labels = reference_set(first, samples)
    real_features = batched_features(extractor, real).cpu().numpy()
    sampler = replace(first.sampler(), cfg_scale=0.0, guide_loop=0)  # the guide below is the only guidance
    c = first.config
    for guide in guides:
        for branch in (guide.strong, guide.weak):
            other = pipeline(branch)
            same_latents = other.tokenizer.path.resolve() == first.tokenizer.path.resolve()
            if other.config.latent_grid != c.latent_grid or not same_latents:
                raise UsageError(f"{branch.checkpoint} does not share {guides[0].strong.checkpoint}'s latents")
        strong, weak = (pipeline(b).logits_fn(b.loops) for b in (guide.strong, guide.weak))

        def x0(x: torch.Tensor, labels: torch.Tensor, t: torch.Tensor, guide: Guide = guide, strong=strong,
               weak=weak) -> torch.Tensor:
            null = torch.full_like(labels, c.null_class)
            s = strong(x, null if guide.strong.unconditional else labels, t)
            w = weak(x, null if guide.weak.unconditional else labels, t)
            scale = torch.where(t > guide.t_max, 1.0, guide.scale).to(s.dtype)[:, None, None]
            return w + scale * (s - w)

        pixels, labels = [], [i % len(first.class_names) for i in range(samples)]
        for start in range(0, samples, batch_size):
            batch = torch.tensor(labels[start:start + batch_size])
            with torch.inference_mode():
                for state in diffusion_decode(x0, batch, shape=first.family.data_shape(c),
                                              null_label=c.null_class, config=sampler, shift=c.schedule_shift,
                                              generator=first.runtime.generator(seed + start)):
                    pass
            pixels.append(first.decode(state.tokens))
        generated = torch.from_numpy(np.concatenate(pixels))
        features = batched_features(extractor, generated).numpy()
        mean_term, cov_term = frechet_terms(features, real_features)
        accuracy = class_accuracy(classifier.module.predict(generated), torch.tensor(labels))
        by_class = mean_shift_by_class(features, np.asarray(labels), real_features, np.asarray(real_labels),
                                       len(first.class_names))
        yield {"guide": str(guide), "accuracy": accuracy, "fd": mean_term + cov_term, "fd_mean": mean_term,
               "fd_cov": cov_term, "fd_mean_by_class": dict(zip([*first.class_names, "class mix"], by_class))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("guides", nargs="+", metavar="GUIDE", help="STRONG,WEAK,SCALE[,T_MAX] (see the module's docs)")
    p.add_argument("--checkpoints", default="checkpoints", help="folder the checkpoint names are looked up in")
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--by-class", action="store_true", help="also split ‖μ − μ_real‖² by class (a second table)")
    args = p.parse_args(argv)
    if args.samples < 2:
        raise UsageError(f"samples must be >= 2 (an FD needs a covariance), got {args.samples}")
    guides = [parse_guide(text) for text in args.guides]
    print(f"# {args.samples} samples per guide, seed {args.seed}, DDIM; FD to the real test images")
    print("| guide | accuracy | FD | ‖μ − μ_real‖² | covariance term |\n|---|---|---|---|---|")
    rows = []
    for row in probe(guides, args.checkpoints, args.samples, args.seed):
        rows.append(row)
        print(f"| {row['guide']} | {row['accuracy']:.3f} | {row['fd']:.2f} | {row['fd_mean']:.2f} | "
              f"{row['fd_cov']:.2f} |", flush=True)
    if args.by_class:
        names = list(rows[0]["fd_mean_by_class"])
        print("\n# ‖μ − μ_real‖² by class (the terms sum to it)")
        print(f"| guide | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
        for row in rows:
            print(f"| {row['guide']} | {' | '.join(f'{v:.2f}' for v in row['fd_mean_by_class'].values())} |")
    return 0


if __name__ == "__main__":
    run(main)
