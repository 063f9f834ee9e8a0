"""Sample-quality metrics: class accuracy and a Fréchet distance in a feature space.

The project cannot download Inception or I3D weights, so it trains a small classifier per embedded
dataset and measures the Fréchet distance in that classifier's penultimate features, named for what
it is (`FD-shapesnet`, `FVD-movingshapesnet`), never "FID".  The extractor is pluggable: a user with
an Inception (or I3D) TorchScript file gets the real thing through `TorchScriptFeatures`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.config import ClassifierConfig


class FeatureExtractor(Protocol):
    name: str  # how the Fréchet distance is labelled, e.g. "FD-shapesnet"

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, [T,] H, W, 3) -> float features (B, F)."""


class Classifier(nn.Module):
    """Conv net (2-D for images, 3-D for clips): uint8 pixels -> logits, penultimate features."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = c = config
        conv = nn.Conv3d if c.is_video else nn.Conv2d
        layers: list[nn.Module] = []
        in_ch = 3
        for i, ch in enumerate(c.channels):
            stride = 1 if i == 0 else 2
            layers += [conv(in_ch, ch, 3, stride=stride, padding=1), nn.GroupNorm(8, ch), nn.SiLU(),
                       conv(ch, ch, 3, padding=1), nn.GroupNorm(8, ch), nn.SiLU()]
            in_ch = ch
        self.body = nn.Sequential(*layers)
        self.embed = nn.Linear(in_ch, c.feature_dim)
        self.out = nn.Linear(c.feature_dim, c.num_classes)

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (pixels.float() / 127.5 - 1.0).movedim(-1, 1)  # (B, 3, [T,] H, W)
        x = self.body(x).flatten(2).mean(-1)  # global average pool -> (B, C)
        return F.silu(self.embed(x))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.out(self._features(pixels))

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._features(pixels)

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward(pixels).argmax(-1)


class ClassifierFeatures:
    """FeatureExtractor over the project's own metric classifier."""

    def __init__(self, classifier: Classifier, dataset: str):
        self.classifier = classifier
        prefix = "FVD" if classifier.config.is_video else "FD"
        self.name = f"{prefix}-{dataset.replace('-', '')}net"

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(pixels)


class TorchScriptFeatures:
    """A user-supplied TorchScript extractor (e.g. Inception-v3 pool3 -> true FID, I3D -> FVD).

    The module receives float images in [0, 1], (B, 3, H, W) (or (B, 3, T, H, W) for clips) resized
    to `input_size`, and must return (B, F) features.
    """

    def __init__(self, path: str | Path, name: str = "FID", input_size: int = 299):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature extractor file not found: {path}")
        self.module = torch.jit.load(str(path), map_location="cpu").eval()
        self.name, self.input_size = name, input_size

    @torch.no_grad()
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float().movedim(-1, 1) / 255.0
        size = (self.input_size, self.input_size)
        if x.dim() == 5:  # clips: resize every frame
            B, C, T = x.shape[:3]
            x = F.interpolate(x.transpose(1, 2).flatten(0, 1), size=size, mode="bilinear")
            x = x.view(B, T, C, *size).transpose(1, 2)
        else:
            x = F.interpolate(x, size=size, mode="bilinear")
        return self.module(x).flatten(1)


def frechet_terms(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The two terms of the Fréchet distance between Gaussian fits of feature sets (N, F) and (M, F):
    ||μa − μb||² (where the sets sit) and Tr(Σa + Σb − 2 (Σa Σb)^½) (how they spread), the trace of the
    matrix square root computed from the eigenvalues of Σa^½ Σb Σa^½ (symmetric PSD, so no complex round-off).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a)
    trace_sqrt = np.sqrt(np.clip(eig, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum()), float(np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (N, F) and (M, F): the sum of frechet_terms."""
    return sum(frechet_terms(a, b))


def class_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predicted == labels).float().mean())


def per_class_accuracy(predicted: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Accuracy within each class, rounded to 4 places (None for a class with no samples)."""
    correct = torch.bincount(labels[predicted == labels], minlength=num_classes).tolist()
    count = torch.bincount(labels, minlength=num_classes).tolist()
    return [round(c / n, 4) if n else None for c, n in zip(correct, count)]


def shape_consistency(predicted: torch.Tensor) -> torch.Tensor:
    """Per clip, the share of its frames whose predicted shape is the clip's most common predicted shape:
    (B, T) class ids -> (B,) in [1/T, 1].  Which of two tied shapes counts as the most common changes nothing."""
    most_common = predicted.mode(dim=1).values  # (B,)
    return (predicted == most_common[:, None]).float().mean(1)


@torch.no_grad()
def frame_predictions(classifier: Classifier, clips: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """A 2-D classifier's class for every frame of uint8 clips (B, T, H, W, 3): (B, T)."""
    frames = clips.flatten(0, 1)
    predicted = [classifier.predict(frames[i:i + batch]) for i in range(0, len(frames), batch)]
    return torch.cat(predicted).view(clips.shape[:2]) if len(frames) else torch.zeros(clips.shape[:2], dtype=torch.long)


def lowest_classes(report: dict, row: dict, count: int = 3) -> str:
    """'heart 0.42, square 0.56, …': the classes of one evaluation row with the lowest accuracy
    ('' when the report stores no per-class accuracy)."""
    scored = sorted((a, n) for n, a in zip(report.get("class_names", []), row.get("class_accuracy", []))
                    if a is not None)
    return ", ".join(f"{n} {a:.2f}" for a, n in scored[:count])


@torch.no_grad()
def batched_features(extractor: FeatureExtractor, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([extractor.features(pixels[i:i + batch]) for i in range(0, len(pixels), batch)])
