"""Training loss against training compute, looped (ILSD) vs dense at equal FLOPs per step (PAPER.md §5).

    python scripts/compute_chart.py shapes-dit-elt shapes-dit-dense  # the shipped DiT models (the default)
    python scripts/compute_chart.py shapes-elt shapes-dense --out docs/maskgit-training-compute.png
    python scripts/compute_chart.py --out /tmp/compute.html          # + an interactive page, for yourself

Reads each checkpoint's train_log.jsonl; x = training FLOPs so far (3 × the forward at L_max per
sample × batch × steps: backward ≈ 2 × forward), y = the ground-truth loss at L_max (the ILSD run's
`teacher_mse` / `teacher_ce`, the others' `loss`), smoothed over `--window` logged points.  Writes a
static PNG chart (matplotlib: works offline, shows on GitHub, a few tens of kB) and prints a table of
the smoothed loss at a few fixed compute budgets.  An `--out` ending in .html writes the PNG beside it
plus a self-contained Plotly page (plotly.js embedded, ~4.6 MB, no CDN): fine locally, too heavy for docs/.
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


TITLE = "L_max ground-truth training loss vs training compute (equal FLOPs per step)"
X_TITLE, Y_TITLE = "training PFLOPs", "loss (running mean)"


def draw_png(curves: dict[str, tuple[list[float], list[float]]], path: Path) -> None:
    """The chart as a static PNG (matplotlib, no browser): one line per run, log-scale loss."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, lw=1.5, label=name)
    ax.set_yscale("log")
    ax.set_xlabel(X_TITLE)
    ax.set_ylabel(Y_TITLE)
    ax.set_title(TITLE, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper right", fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # no version stamp: reruns give equal bytes
    plt.close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(path, buffer.getvalue())


def draw_html(curves: dict[str, tuple[list[float], list[float]]], path: Path) -> None:
    """The same chart as an interactive, self-contained Plotly page (plotly.js inline: works offline)."""
    import plotly.graph_objects as go

    fig = go.Figure([go.Scatter(x=xs, y=ys, mode="lines", name=name) for name, (xs, ys) in curves.items()])
    fig.update_layout(title=TITLE, xaxis_title=X_TITLE, yaxis_title=Y_TITLE, yaxis_type="log", template="plotly_white")
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(path, fig.to_html(include_plotlyjs=True, full_html=True).encode())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/compute_chart.py", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=["shapes-dit-elt", "shapes-dit-dense"])
    p.add_argument("--out", default="docs/dit-training-compute.png",
                   help="the PNG; a name ending in .html also writes a self-contained interactive page there "
                        "(~4.6 MB) with the PNG beside it")
    p.add_argument("--window", type=int, default=8, help="logged points in the running mean")
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    out = ROOT / args.out
    if out.suffix.lower() not in (".png", ".html"):
        p.error(f"--out must end in .png or .html, not {out.name!r}")
    curves = {}
    for name in args.names:
        folder = ROOT / "checkpoints" / name
        if not (folder / "train_log.jsonl").is_file():
            print(f"error: no {folder}/train_log.jsonl (train it first)", file=sys.stderr)
            return 2
        curves[name] = curve(folder, args.window)
    written = [out.with_suffix(".png")]
    draw_png(curves, written[0])
    if out.suffix.lower() == ".html":
        draw_html(curves, out)
        written.append(out)
    top = min(xs[-1] for xs, _ in curves.values())
    budgets = [top * f for f in (0.25, 0.5, 1.0)]
    print("| run | " + " | ".join(f"{b:.2f} PFLOPs" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for name, (xs, ys) in curves.items():
        print(f"| {name} | " + " | ".join(f"{v:.4f}" if (v := at(xs, ys, b)) is not None else "–" for b in budgets)
              + " |")
    for path in written:
        print(f"wrote {path} ({path.stat().st_size:,} bytes)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
