"""Regenerate the results from the checkpoints' metrics.json (written by core.evaluate).

    python scripts/results_table.py   # README's headline table (between its results markers) and docs/RESULTS.md

README gets one row per shipped generator; every per-loop and per-class table goes to docs/RESULTS.md.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.config import PRESETS, DiffusionSamplerConfig, SamplerConfig  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"
RESULTS = ROOT / "docs" / "RESULTS.md"
# (family, its generators): the ILSD model first, its vanilla twin second
FAMILIES = [("shapes", ["shapes-elt", "shapes-vanilla", "shapes-dense"]),
            ("shapes-dit", ["shapes-dit-elt", "shapes-dit-vanilla", "shapes-dit-dense"]),
            ("moving-shapes", ["moving-shapes-elt", "moving-shapes-vanilla"]),
            ("digits", ["digits-elt", "digits-vanilla"]),
            ("emoji", ["emoji-elt", "emoji-vanilla"])]


def load(name: str) -> dict | None:
    path = ROOT / "checkpoints" / name / "metrics.json"
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    if "sampler" in report:  # a setting added since the file was written takes its default, so files compare
        kind = DiffusionSamplerConfig if "method" in report["sampler"] else SamplerConfig
        report["sampler"] = asdict(kind(**report["sampler"]))
    return report


def sampler_text(s: dict) -> str:
    """The sampler settings of a metrics.json in words (MaskGIT or diffusion)."""
    if "method" in s:  # diffusion (core.config.DiffusionSamplerConfig)
        source = f" from loop {s['guide_loop']} (loop guidance)" if s["guide_loop"] else ""
        return f"{s['steps']} {s['method'].upper()} steps, guidance {s['cfg_scale']}{source}"
    token_t = (f"{s['temperature_base']}" if s["temperature_bias"] == 0 else
               f"{s['temperature_base'] + s['temperature_bias']:g} → {s['temperature_base']}")
    return (f"{s['steps']} steps, guidance {s['cfg_scale']}, choice temperature {s['choice_temperature']}, "
            f"token temperature {token_t}")


def generator_table(names: list[str]) -> str:
    reports = {n: r for n in names if (r := load(n)) and "rows" in r}
    if not reports:
        return f"_no evaluated checkpoints among {', '.join(names)}_"
    first = next(iter(reports.values()))
    differ = [n for n, r in reports.items() if r["sampler"] != first["sampler"]]
    if differ:  # one table, one sampler: the rows must be comparable
        sys.exit(f"{', '.join(differ)}: metrics.json measured with another sampler than {next(iter(reports))}'s; "
                 "re-evaluate them with the same settings")
    unit = "clips" if first["fd_name"].startswith("FVD") else "images"
    # clips scored frame by frame (core.evaluate's frame classifier): a consistency column, "—" where not measured
    shape = any("consistency" in row for r in reports.values() for row in r["rows"])
    lines = [f"Measured by `python -m core.evaluate --samples {first['samples']} --seed {first['seed']}` "
             f"({sampler_text(first['sampler'])}, {first['precision']}, "
             f"{first['device']}); FD is `{first['fd_name']}` against {first['reference']['count']} held-out real "
             f"test {unit} (the metric classifier scores {first['reference']['accuracy']:.3f} on them)"
             + (f"; FD floor {first['reference']['fd_floor']:.2f}: {first['reference']['fd_floor_train_count']} real "
                f"training {unit} against the same held-out ones, what a perfect generator would score."
                if "fd_floor" in first["reference"] else "."), "",
             "Timings are not in this table: they are measured on an idle machine by `python -m core.bench` "
             "(docs/BENCHMARKS.md).", ""]
    if shape:
        lines += [consistency_text(first["reference"]), ""]
    lines += ["| checkpoint | params | train steps × batch | loops | GFLOPs/sample | class accuracy | "
              + ("shape consistency | " if shape else "") + first["fd_name"] + " |",
              "|---|---|---|---|---|---|---|" + ("---|" if shape else "")]
    for name, r in reports.items():
        steps_text = training_text(name)
        for row in r["rows"]:
            extra = " (extrapolation)" if row["loops"] > r["max_loops"] else ""
            consistency = (f"{row['consistency']:.3f} | " if "consistency" in row else "— | ") if shape else ""
            lines.append(f"| {name} | {r['num_params'] / 1e6:.2f}M | {steps_text} | {row['loops']}{extra} | "
                         f"{row['gflops']:.2f} | {row['accuracy']:.3f} | {consistency}{row['fd']:.2f} |")
    return "\n".join(lines)


def consistency_text(reference: dict) -> str:
    """What the shape-consistency column measures, and its ceiling: real clips, and real clips through the tokenizer."""
    text = ("Shape consistency: the share of a clip's frames whose shape, by the per-frame shape classifier "
            "(`moving-shapes-frame-classifier`), is the clip's most common one.")
    if "consistency" not in reference:
        return text
    recognised = (f", {reference['frame_accuracy']:.3f} of their frames recognised" if "frame_accuracy" in reference
                  else "")
    return (text + f" Real test clips score {reference['consistency']:.3f} ({reference['consistency_count']} clips"
            f"{recognised}); through the tokenizer and back {reference['round_trip_consistency']:.3f} "
            f"({reference['round_trip_psnr_db']:.2f} dB PSNR), the most a generator on that tokenizer can reach.")


def class_table(names: list[str]) -> str:
    """Accuracy per class at each checkpoint's own max_loops: where the models differ, class by class."""
    reports = {n: r for n in names if (r := load(n)) and "class_names" in r}
    at_max = {n: row for n, r in reports.items() for row in r["rows"] if row["loops"] == r["max_loops"]}
    reports = {n: r for n, r in reports.items() if n in at_max}  # evaluated without L_max: nothing to show
    if not reports:
        return ""
    first = next(iter(reports.values()))
    lines = ["Class accuracy by class at each model's L_max (same samples as the table above):", "",
             "| class | " + " | ".join(f"{n} (L = {r['max_loops']})" for n, r in reports.items()) + " |",
             "|---|" + "---|" * len(reports)]
    for i, cls in enumerate(first["class_names"]):
        lines.append(f"| {cls} | " + " | ".join(f"{at_max[n]['class_accuracy'][i]:.2f}" for n in reports) + " |")
    return "\n".join(lines)


def shipped_config(name: str) -> dict:
    """The shipped checkpoint's config.json ({} for a folder without one)."""
    path = ROOT / "checkpoints" / name / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def trained_steps(name: str) -> int | None:
    return shipped_config(name).get("trained_steps")


def training_text(name: str) -> str:
    """"20,000 × 32": optimizer steps × batch size, as the checkpoint's config.json records them."""
    config = shipped_config(name)
    steps, batch = config.get("trained_steps"), config.get("experiment", {}).get("train", {}).get("batch_size")
    return "—" if not steps else f"{steps:,} × {batch}" if batch else f"{steps:,}"


def mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def per_loop(metrics: dict, key: str) -> dict[int, float]:
    """{L: value} of one metrics.json column ("accuracy", "fd")."""
    return {r["loops"]: r[key] for r in metrics["rows"]}


def within_vanilla(family: str, acc: dict[int, float], vacc: dict[int, float], top: int, within: float) -> str:
    """The target line "ILSD within `within` of vanilla at L_max, or ahead", flagging unequal training."""
    steps = training_text(f"{family}-elt"), training_text(f"{family}-vanilla")
    same = "" if steps[0] == steps[1] else f"; not like for like: {steps[0]} against {steps[1]} steps × batch"
    return (f"- {mark(acc[top] >= vacc[top] - within)} ILSD within {within} of vanilla at L = {top}, or ahead "
            f"({acc[top]:.3f} vs {vacc[top]:.3f}{same})")


def claims(family: str, final_target: float, every_target: float, fd_tolerance: float,
           stretch: float | None = None, relative: bool = False) -> str:
    """The issues' quality targets checked against the measured rows (✓ met, ✗ not met).

    fd_tolerance: how much FD may rise from one loop count to the next, from L = 2 to L_max (0 = never).
    relative: every_target is a fraction of the accuracy reached at L_max.
    """
    elt, vanilla = load(f"{family}-elt"), load(f"{family}-vanilla")
    if not (elt and "rows" in elt):
        return ""
    acc, fd = per_loop(elt, "accuracy"), per_loop(elt, "fd")
    top, half = elt["max_loops"], elt["max_loops"] // 2
    low = min(acc[L] for L in range(2, top + 1))
    if relative:
        every_target = round(every_target * acc[top], 3)
    rises = [L for L in range(3, top + 1) if fd[L] > fd[L - 1] * (1 + fd_tolerance)]
    rule = f"rises by at most {fd_tolerance:.0%}" if fd_tolerance else "does not rise"
    out = [f"Targets for `{family}-elt` (checked by `scripts/results_table.py` from the table below):", "",
           f"- {mark(acc[top] >= final_target)} accuracy at L = {top} is {acc[top]:.3f} (target ≥ {final_target}"
           + (f", stretch {stretch})" if stretch else ")"),
           f"- {mark(low >= every_target)} lowest accuracy over L = 2…{top} is {low:.3f} (target ≥ {every_target})",
           f"- {mark(not rises)} {elt['fd_name']} {rule} per added loop from L = 2 to {top} "
           f"({' → '.join(f'{fd[L]:.1f}' for L in range(2, top + 1))})"]
    if vanilla and "rows" in vanilla:
        vacc = per_loop(vanilla, "accuracy")
        out += [within_vanilla(family, acc, vacc, top, 0.03),
                f"- {mark(acc[half] - vacc[half] >= 0.2)} ILSD at least 0.2 more accurate than vanilla at "
                f"L = {half} ({acc[half]:.3f} vs {vacc[half]:.3f})"]
    return "\n".join(out)


DEPTH_RUN = ROOT / "docs" / "results" / "shapes-elt-1x8.json"  # core.evaluate --json of the 1N×8L run


def depth_table() -> str:
    """PAPER.md claim 4: 1N×8L against the shipped 2N×4L at equal FLOPs per sample (L' = 2L), same steps."""
    deep, base, base_steps = None, load("shapes-elt"), trained_steps("shapes-elt")
    if DEPTH_RUN.exists():
        deep = json.loads(DEPTH_RUN.read_text())
        if base_steps != deep["trained_steps"]:  # the shipped one trained longer: its run at the same steps
            kept = DEPTH_RUN.with_name(f"shapes-elt-{deep['trained_steps'] // 1000}k.json")
            base, base_steps = (json.loads(kept.read_text()) if kept.exists() else None), deep["trained_steps"]
    if not (deep and base and "rows" in base):
        return ""
    rows = {r["loops"]: r for r in deep["rows"]}
    pairs = [(r, rows[2 * r["loops"]]) for r in base["rows"] if 2 * r["loops"] in rows]
    gaps = [r["accuracy"] - d["accuracy"] for r, d in pairs]
    verdict = ("✓ one unique layer is worse at every equal-FLOPs point" if min(gaps) > 0 else
               "✗ one unique layer is not worse everywhere") + f" (accuracy {min(gaps):.2f}–{max(gaps):.2f} lower)"
    lines = [f"More loops of fewer layers (PAPER.md claim 4: a 1N×D model is clearly worse than a multi-layer "
             f"block at equal depth): ILSD 1N×8L ({deep['num_params'] / 1e6:.2f}M parameters, "
             f"not shipped; {deep['trained_steps']:,} steps, L_min = {deep['min_loops']}) against `shapes-elt` 2N×4L "
             f"({base['num_params'] / 1e6:.2f}M, {base_steps:,} steps) at equal "
             f"FLOPs per sample, {deep['samples']} samples, seed {deep['seed']}, same sampler (from "
             f"`{DEPTH_RUN.relative_to(ROOT)}`; commands in docs/EXPERIMENTS.md). {verdict}.", "",
             "| layer applications | GFLOPs/sample | 2N×4L: L, accuracy, " + base["fd_name"] +
             " | 1N×8L: L, accuracy, " + deep["fd_name"] + " |", "|---|---|---|---|"]
    for r, d in pairs:
        lines.append(f"| {2 * r['loops']} | {r['gflops']:.2f} / {d['gflops']:.2f} | {r['loops']}, {r['accuracy']:.3f}, "
                         f"{r['fd']:.2f} | {d['loops']}, {d['accuracy']:.3f}, {d['fd']:.2f} |")
    return "\n".join(lines)


def any_time_claims(family: str, min_loops: int, ratio: float = 0.8, within: float = 0.03,
                    fd_ratio: float = 1.5) -> str:
    """Issue 33's targets for a family checked against its vanilla twin (diffusion): ILSD usable from L_min
    (accuracy ≥ `ratio` × its L_max accuracy); at L_max within `within` of vanilla's accuracy and `fd_ratio`×
    its FD; vanilla collapsed (< `ratio` × its L_max accuracy) at L_min, every L below L_max shown."""
    elt, vanilla = load(f"{family}-elt"), load(f"{family}-vanilla")
    if not (elt and "rows" in elt):
        return ""
    acc = per_loop(elt, "accuracy")
    top = elt["max_loops"]
    if min_loops not in acc or top not in acc:
        return ""
    out = [f"Targets for `{family}-elt` (checked by `scripts/results_table.py` from the table below):", "",
           f"- {mark(acc[min_loops] >= ratio * acc[top])} accuracy at L_min = {min_loops} is {acc[min_loops]:.3f}, "
           f"{acc[min_loops] / max(acc[top], 1e-9):.2f}× its L_max accuracy {acc[top]:.3f} (target ≥ {ratio}×)"]
    if vanilla and "rows" in vanilla:
        vacc, fd, vfd = per_loop(vanilla, "accuracy"), per_loop(elt, "fd"), per_loop(vanilla, "fd")
        out += [within_vanilla(family, acc, vacc, top, within),
                f"- {mark(fd[top] <= fd_ratio * vfd[top])} ILSD's {elt['fd_name']} within {fd_ratio}× vanilla's at "
                f"L = {top} ({fd[top]:.2f} vs {vfd[top]:.2f}: {fd[top] / max(vfd[top], 1e-9):.1f}×)",
                vanilla_collapse(vacc, top, min_loops, ratio)]
    return "\n".join(out)


def vanilla_collapse(vacc: dict, top: int, min_loops: int, ratio: float) -> str:
    """The vanilla twin below `ratio` × its own L_max accuracy at L_min (every L below L_max shown)."""
    collapsed = lambda L: vacc[L] < ratio * vacc[top]  # noqa: E731
    return (f"- {mark(collapsed(min_loops))} vanilla collapses at L_min = {min_loops} (< {ratio}× its L_max "
            f"accuracy {vacc[top]:.3f}; "
            + ", ".join(f"L={L}: {vacc[L]:.3f}" + ("" if collapsed(L) else " not collapsed") for L in range(1, top))
            + ")")


def emoji_claims() -> str:
    """Issue 42's targets: ILSD at L_max >= 0.85 accuracy, or 0.9x the metric classifier's own accuracy on the
    real val split where that is lower; every L from 2 >= 0.8x its L_max accuracy; FD not rising per loop
    from L = 2; within 0.03 of vanilla at L_max; vanilla collapsed at L = 2."""
    classifier, vanilla = load("emoji-classifier"), load("emoji-vanilla")
    target = round(min(0.85, 0.9 * classifier["accuracy"]), 3) if classifier else 0.85
    out = claims("emoji", target, 0.80, 0.0, relative=True)
    if out and vanilla and "rows" in vanilla:
        out += "\n" + vanilla_collapse(per_loop(vanilla, "accuracy"), vanilla["max_loops"], 2, 0.8)
    return out


def component_lines(family: str, unit: str) -> str:
    out = []
    tok, cls, frames = load(f"{family}-tokenizer"), load(f"{family}-classifier"), load(f"{family}-frame-classifier")
    if tok:
        shape = (f", shape consistency {tok['round_trip_consistency']:.3f} (real clips {tok['consistency']:.3f})"
                 if "round_trip_consistency" in tok else "")
        out.append(f"- {family}-tokenizer: reconstruction PSNR {tok['psnr_db']:.2f} dB on {tok['samples']} test {unit}, "
                   f"{tok['codes_used']} of {tok['codebook_size']} codes used{shape}.")
    if cls:
        out.append(f"- {family}-classifier: test accuracy {cls['accuracy']:.4f} on {cls['samples']} test {unit}.")
    if frames:
        out.append(f"- {family}-frame-classifier: shape recognised in {frames['accuracy']:.4f} of {frames['samples']} "
                   "test frames.")
    return "\n".join(out)


def min_loops(name: str, report: dict) -> int:
    if "min_loops" in report:
        return report["min_loops"]
    return PRESETS[name].train.min_loops if name in PRESETS else 1


def headline_table() -> str:
    """One row per shipped generator: accuracy and FD at its L_min and L_max, and for an ILSD model its
    vanilla twin at the same L_min, which is where ILSD shows."""
    lines = ["| generator | params | train steps × batch | L_min: accuracy / FD | L_max: accuracy / FD "
             "| vanilla twin at L_min: accuracy / FD |", "|---|---|---|---|---|---|"]
    for family, names in FAMILIES:
        for name in names:
            r = load(name)
            if not (r and "rows" in r):
                continue
            rows = {row["loops"]: row for row in r["rows"]}
            low, top = min_loops(name, r), r["max_loops"]
            cell = lambda row, L: f"L = {L}: {row['accuracy']:.3f} / {row['fd']:.2f}" if row else "—"  # noqa: E731
            twin = load(f"{family}-vanilla")
            twin_cell = (cell({t["loops"]: t for t in twin["rows"]}.get(low), low)
                         if name.endswith("-elt") and twin and "rows" in twin else "")
            lines.append(f"| {name} | {r['num_params'] / 1e6:.2f}M | {training_text(name)} | "
                         f"{cell(rows.get(low), low)} | {cell(rows.get(top), top)} | {twin_cell} |")
    return "\n".join(lines)


def results_page() -> str:
    return "\n\n".join(part for part in [
        "# Results", "Generated by `python scripts/results_table.py` from each checkpoint's `metrics.json` "
        "(`python -m core.evaluate … --write-metrics`); do not edit by hand. README shows the headline table; "
        "here is every loop count and every class. How the settings were chosen is in docs/EXPERIMENTS.md.",
        "## Images (shapes)", component_lines("shapes", "images"), claims("shapes", 0.90, 0.85, 0.05, stretch=0.95),
        generator_table(["shapes-elt", "shapes-vanilla", "shapes-dense"]),
        class_table(["shapes-elt", "shapes-vanilla", "shapes-dense"]), depth_table(),
        "## Images, diffusion (shapes-dit)", any_time_claims("shapes-dit", min_loops=2),
        generator_table(["shapes-dit-elt", "shapes-dit-vanilla", "shapes-dit-dense"]),
        class_table(["shapes-dit-elt", "shapes-dit-vanilla", "shapes-dit-dense"]),
        "## Video (moving-shapes)", component_lines("moving-shapes", "clips"), claims("moving-shapes", 0.90, 0.85, 0.0),
        generator_table(["moving-shapes-elt", "moving-shapes-vanilla"]),
        class_table(["moving-shapes-elt", "moving-shapes-vanilla"]),
        # real data: L_max at least 0.9, and every L from L_min = 2 at least 0.8 of that (issue 20)
        "## Real images (scikit-learn digits)", component_lines("digits", "images"),
        claims("digits", 0.90, 0.80, 0.05, relative=True),
        generator_table(["digits-elt", "digits-vanilla"]), class_table(["digits-elt", "digits-vanilla"]),
        # open-licensed artwork drawn by people (data/emoji, scripts/make_emoji_dataset.py; issue 42)
        "## Real artwork (emoji)", component_lines("emoji", "images"), emoji_claims(),
        generator_table(["emoji-elt", "emoji-vanilla"]), class_table(["emoji-elt", "emoji-vanilla"]),
    ] if part) + "\n"


def render(readme: str) -> tuple[str, str]:
    """README's text with a fresh headline table, and docs/RESULTS.md's text."""
    if START not in readme or END not in readme:
        raise ValueError(f"README.md lacks the {START} / {END} markers")
    block = headline_table()
    readme = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: f"{START}\n{block}\n{END}", readme, flags=re.S)
    return readme, results_page()


def main() -> int:
    path = ROOT / "README.md"
    try:
        readme, results = render(path.read_text())
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    path.write_text(readme)
    RESULTS.write_text(results)
    print(f"wrote README.md's headline table and {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
