"""Regenerate README's results tables from the checkpoints' metrics.json (written by core.evaluate).

    python scripts/results_table.py            # rewrites the block between the results markers
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results:start -->", "<!-- results:end -->"


def load(name: str) -> dict | None:
    path = ROOT / "checkpoints" / name / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else None


def generator_table(names: list[str]) -> str:
    reports = {n: load(n) for n in names}
    reports = {n: r for n, r in reports.items() if r and "rows" in r}
    if not reports:
        return "_no evaluated generator checkpoints_"
    first = next(iter(reports.values()))
    lines = [f"Measured by `python -m core.evaluate --samples {first['samples']} --seed {first['seed']}` "
             f"({first['sampler']['steps']} steps, guidance {first['sampler']['cfg_scale']}, {first['precision']}, "
             f"{first['device']}); FD is `{first['fd_name']}` against {first['reference']['count']} held-out real "
             f"test images (the metric classifier scores {first['reference']['accuracy']:.3f} on them).", "",
             "| checkpoint | params | loops | GFLOPs/sample | ms/sample | class accuracy | " + first["fd_name"] + " |",
             "|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        for row in r["rows"]:
            extra = " (extrapolation)" if row["loops"] > r["max_loops"] else ""
            lines.append(f"| {name} | {r['num_params'] / 1e6:.2f}M | {row['loops']}{extra} | {row['gflops']:.2f} | "
                         f"{row['ms_per_sample']:.1f} | {row['accuracy']:.3f} | {row['fd']:.2f} |")
    return "\n".join(lines)


def component_lines() -> str:
    out = []
    tok, cls = load("shapes-tokenizer"), load("shapes-classifier")
    if tok:
        out.append(f"- shapes-tokenizer: reconstruction PSNR {tok['psnr_db']:.2f} dB on {tok['samples']} test images, "
                   f"{tok['codes_used']} of {tok['codebook_size']} codes used.")
    if cls:
        out.append(f"- shapes-classifier: test accuracy {cls['accuracy']:.4f} on {cls['samples']} test images.")
    return "\n".join(out)


def main() -> int:
    block = "\n\n".join([component_lines(), generator_table(["shapes-elt", "shapes-vanilla", "shapes-dense"])])
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"README.md lacks the {START} / {END} markers", file=sys.stderr)
        return 2
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), f"{START}\n{block}\n{END}", text, flags=re.S)
    readme.write_text(text)
    print(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
