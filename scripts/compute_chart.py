"""Training loss against training compute, looped (ILSD) vs dense at equal FLOPs per step (PAPER.md §5).

    python scripts/compute_chart.py                                  # the shipped DiT models
    python scripts/compute_chart.py shapes-elt shapes-dense --out docs/maskgit-training-compute.html

Reads each checkpoint's train_log.jsonl; x = training FLOPs so far (3 × the forward at L_max per
sample × batch × steps: backward ≈ 2 × forward), y = the ground-truth loss at L_max (the ILSD run's
`teacher_mse` / `teacher_ce`, the others' `loss`), smoothed over `--window` logged points.  Writes a
Plotly HTML chart and prints a table of the smoothed loss at a few fixed compute budgets.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core import checkpoint as ckpt  # noqa: E402
from core.config import Experiment  # noqa: E402
from core.family import family_of  # noqa: E402

GT_KEYS = ("teacher_mse", "teacher_ce", "loss")  # the L_max ground-truth term, first one present


def curve(folder: Path, window: int) -> tuple[list[float], list[float]]:
    """(training PFLOPs, smoothed L_max ground-truth loss) at each logged step of one run."""
    experiment = Experiment.from_dict(ckpt.read_config(folder)["experiment"])
    model = experiment.model
    per_step = 3 * family_of(model).flops(model, batch=experiment.train.batch_size)
    records = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines() if line.strip()]
    key = next(k for k in GT_KEYS if k in records[0])
    values = [r[key] for r in records]
    smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
              for i in range(len(values))]
    return [r["step"] * per_step / 1e15 for r in records], smooth


def at(xs: list[float], ys: list[float], x: float) -> float | None:
    """The smoothed loss at the last logged point with compute ≤ x (None before the first)."""
    below = [y for xi, y in zip(xs, ys) if xi <= x]
    return below[-1] if below else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=["shapes-dit-elt", "shapes-dit-dense"])
    p.add_argument("--out", default="docs/dit-training-compute.html")
    p.add_argument("--window", type=int, default=8, help="logged points in the running mean")
    args = p.parse_args(argv)
    import plotly.graph_objects as go

    curves = {}
    for name in args.names:
        folder = ROOT / "checkpoints" / name
        if not (folder / "train_log.jsonl").is_file():
            print(f"error: no {folder}/train_log.jsonl (train it first)", file=sys.stderr)
            return 2
        curves[name] = curve(folder, args.window)
    fig = go.Figure([go.Scatter(x=xs, y=ys, mode="lines", name=name) for name, (xs, ys) in curves.items()])
    fig.update_layout(title="L_max ground-truth training loss vs training compute (equal FLOPs per step)",
                      xaxis_title="training PFLOPs", yaxis_title="loss (running mean)", yaxis_type="log",
                      template="plotly_white")
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(out, fig.to_html(include_plotlyjs="cdn", full_html=True).encode())
    top = min(xs[-1] for xs, _ in curves.values())
    budgets = [top * f for f in (0.25, 0.5, 1.0)]
    print("| run | " + " | ".join(f"{b:.2f} PFLOPs" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for name, (xs, ys) in curves.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" if (v := at(xs, ys, b)) is not None else "–" for b in budgets)
              + " |")
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
