"""Pure figure builders: plain data (dicts, lists, numpy images) -> plotly.Figure.  No model, no I/O."""

from __future__ import annotations

import base64
import functools
import io
import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import get_colorscale
from PIL import Image
from plotly.subplots import make_subplots

TRAINED, EXTRAPOLATED, FIXED, MEASURED = "#3366cc", "#e4892b", "#8c8c8c", "#2a9d5c"
PALETTE = ("#3366cc", "#dc3912", "#109618", "#990099", "#0099c6", "#dd4477")
SHADE = "rgba(228, 137, 43, 0.12)"
VIRIDIS = get_colorscale("Viridis")  # as plotly expands the name, so unchecked figures look the same
LAYOUT = dict(template="plotly_white", margin=dict(l=50, r=20, t=60, b=45), height=360,
              legend=dict(orientation="h", y=-0.18), font=dict(size=12))


def message_figure(text: str) -> go.Figure:
    """An empty figure that says why there is nothing to plot."""
    fig = go.Figure()
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14))
    fig.update_layout(**{**LAYOUT, "height": 240}, xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


# -- figures built per request -----------------------------------------------------------------------
# Plotly checks every property it is given: a 16-panel settle view took ≈ 0.4 s and the latency chart
# ≈ 0.15 s per request (2-core AMD EPYC), as long as a batched image's model time, and holding the GIL
# the model worker needs.  The figures built per request or per slider move (settle, latency, quality,
# Compare) are therefore plain trace dicts on a layout that plotly checked once per shape.
def _checked_layout(build: Callable[..., go.Figure]) -> Callable[..., dict]:
    """build(*key) -> a figure whose layout is kept, as JSON, per key; each call returns a fresh dict."""
    cached = functools.lru_cache(maxsize=64)(lambda *key: build(*key).layout.to_json())
    return lambda *key: json.loads(cached(*key))


def _figure(data: list[dict], layout: dict) -> go.Figure:
    """Traces given as plain dicts (type, xaxis/yaxis set) on a checked layout, without checking them again."""
    return go.Figure({"data": data, "layout": layout}, _validate=False)


# -- latency per loop --------------------------------------------------------------------------------
def latency_figure(latency: Mapping[str, Any]) -> go.Figure:
    """Measured cost of one run: each loop iteration and the fixed costs; predicted vs measured total.

    latency: loops, max_loops, steps, batch, guidance (two batches per pass), guide_loop (loop guidance's loop,
    if any), loop_ms (steps × loops), embed_ms / head_ms (per step), decode_ms and measured_ms (sampling +
    decode), as `Studio.generate` reports them.
    """
    loop_ms = np.asarray(latency["loop_ms"], dtype=float)  # (steps, loops)
    steps, loops, max_loops = latency["steps"], latency["loops"], latency["max_loops"]
    embed, head = float(np.sum(latency["embed_ms"])), float(np.sum(latency["head_ms"]))
    decode, measured = float(latency["decode_ms"]), float(latency["measured_ms"])
    per_loop = loop_ms.mean(0)
    predicted_loops = float(loop_ms.mean()) * loops * steps

    names = ["embed"] + [str(i) for i in range(1, loops + 1)] + ["head"]
    values = [embed / steps, *per_loop, head / steps]
    colors = [FIXED] + [TRAINED if i <= max_loops else EXTRAPOLATED for i in range(1, loops + 1)] + [FIXED]
    spread = [0.0] + list(loop_ms.std(0)) + [0.0]
    data = [dict(type="bar", x=names, y=values, marker=dict(color=colors), name="measured per pass",
                 error_y=dict(type="data", array=spread, visible=True, thickness=1),
                 hovertemplate="%{x}: %{y:.2f} ms<extra></extra>", showlegend=False, xaxis="x", yaxis="y")]
    parts = [("loops", predicted_loops, float(loop_ms.sum()), TRAINED), ("embed", embed, embed, FIXED),
             ("head + guidance + sampling", head, head, "#b0b0b0"), ("tokenizer decode", decode, decode, "#5f5f5f")]
    for name, predicted, actual, color in parts:
        data.append(dict(type="bar", y=["predicted", "measured parts"], x=[predicted, actual], name=name,
                         orientation="h", marker=dict(color=color), hovertemplate=name + ": %{x:.1f} ms<extra></extra>",
                         xaxis="x2", yaxis="y2"))
    data.append(dict(type="bar", y=["measured total"], x=[measured], name="measured total", orientation="h",
                     marker=dict(color=MEASURED), hovertemplate="measured: %{x:.1f} ms<extra></extra>",
                     xaxis="x2", yaxis="y2"))
    predicted_total = predicted_loops + embed + head + decode
    if latency["guidance"]:
        guidance = ("guidance on: every pass runs the conditional and unconditional batch together "
                    f"(2×{latency['batch']} sequences), so ≈ half of each bar is the guidance pass")
    elif latency.get("guide_loop"):
        guidance = f"loop guidance from loop {latency['guide_loop']}: one conditional batch per pass"
    else:
        guidance = "guidance off: one batch per pass"
    layout = _latency_layout(steps)
    layout["annotations"].append(dict(
        text=(f"predicted = mean loop time {loop_ms.mean():.2f} ms × {loops} loops × {steps} steps + fixed costs "
              f"= {predicted_total:.0f} ms; measured {measured:.0f} ms<br>"
              f"fixed costs: embedding; head (run on every loop's state, for the in-step strip) + guidance "
              f"combination + token sampling; tokenizer decode<br>{guidance}"
              + ("<br>orange: loops beyond L_max (extrapolation)" if loops > max_loops else "")),
        xref="paper", yref="paper", x=0, y=-0.3, yanchor="top", showarrow=False, align="left", font=dict(size=11)))
    layout["title"] = dict(text=f"Latency per loop — L={loops}, {steps} steps, batch {latency['batch']}")
    return _figure(data, layout)


@_checked_layout
def _latency_layout(steps: int) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.12,
                        subplot_titles=("one forward pass (mean over steps)", f"whole run, {steps} steps"))
    fig.update_layout(**{**LAYOUT, "height": 460, "margin": dict(l=50, r=20, t=60, b=190),
                         "legend": dict(orientation="h", y=-0.72, yanchor="top")}, barmode="stack")
    fig.update_yaxes(title_text="ms", row=1, col=1)
    fig.update_xaxes(title_text="embedding · loop 1 … L · head (+ guidance, sampling)", title_font=dict(size=11),
                     tickangle=0, type="category", row=1, col=1)
    fig.update_xaxes(title_text="ms", row=1, col=2)
    return fig

# -- quality vs compute ------------------------------------------------------------------------------
def _linear(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Value at x on the least-squares line through (xs, ys) (cost is linear in loops)."""
    if len(xs) == 1:
        return float(ys[0]) * x / float(xs[0])
    slope, intercept = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
    return float(slope * x + intercept)


def quality_figure(series: Mapping[str, Mapping[str, Any]], *, current_loops: int | None = None,
                   title: str = "Quality vs compute", chosen: Mapping[str, Any] | None = None) -> go.Figure:
    """Class accuracy (solid, the loop count inside each marker) and FD (dashed) against GFLOPs and ms per sample.

    series: name -> {"rows": metrics rows (loops, gflops, ms_per_sample, accuracy, fd), "max_loops",
    "fd_name", optionally "samples"}.  Points beyond a series' max_loops are extrapolation (open
    markers; shaded when there is one series).  current_loops marks the user's choice; chosen
    ({"gflops", "ms_per_sample", "accuracy", "label"}) marks the latency-budget mode's pick with a star.
    """
    series = {name: s for name, s in series.items() if s.get("rows")}
    if not series:
        return message_figure("no metrics.json for this checkpoint yet —<br>"
                              "run a spot check, or `python -m core.evaluate --write-metrics`")
    fd_name = next(iter(series.values())).get("fd_name", "FD")
    data = []
    for index, (name, s) in enumerate(series.items()):
        rows, max_loops, color = s["rows"], s.get("max_loops", 0), PALETTE[index % len(PALETTE)]
        trained = [r["loops"] <= max_loops for r in rows]
        symbols = ["circle" if t else "circle-open" for t in trained]
        labels = [f"L={r['loops']}" for r in rows]
        # The loop count is written inside its marker, not beside it: labels beside close points (L = 3, 4, 5 of
        # one model, or one L of several models) sat on each other; inside, they overlap only where points do.
        inside = dict(text=[str(r["loops"]) for r in rows], textposition="middle center",
                      textfont=dict(size=9, color=["white" if t else color for t in trained]))
        for col, key in ((1, "gflops"), (2, "ms_per_sample")):
            xs, (x_axis, accuracy_axis, fd_axis) = [r[key] for r in rows], QUALITY_AXES[col]
            data.append(dict(type="scatter", x=xs, y=[r["accuracy"] for r in rows], mode="lines+markers+text",
                             **inside, customdata=labels, marker=dict(symbol=symbols, size=15, color=color),
                             line=dict(color=color), name=f"{name} accuracy", legendgroup=name, showlegend=col == 1,
                             hovertemplate="%{customdata}: accuracy %{y:.3f}<extra></extra>", xaxis=x_axis,
                             yaxis=accuracy_axis))
            data.append(dict(type="scatter", x=xs, y=[r["fd"] for r in rows], mode="lines+markers", text=labels,
                             marker=dict(symbol=symbols, size=7, color=color), line=dict(color=color, dash="dash"),
                             name=f"{name} {fd_name}", legendgroup=name, showlegend=col == 1,
                             hovertemplate="%{text}: " + fd_name + " %{y:.2f}<extra></extra>", xaxis=x_axis,
                             yaxis=fd_axis))
    first = next(iter(series.values()))
    rows, max_loops = first["rows"], first.get("max_loops", 0)
    loops = [r["loops"] for r in rows]
    shapes, notes = [], []
    for col, key in ((1, "gflops"), (2, "ms_per_sample")):
        xs, (x_axis, accuracy_axis, _) = [r[key] for r in rows], QUALITY_AXES[col]
        at = lambda L: _linear(loops, xs, L)  # noqa: E731
        on = dict(xref=x_axis, yref=f"{accuracy_axis} domain")
        if len(series) == 1 and max(loops) > max_loops > 0:
            x0 = (at(max_loops) + at(max_loops + 1)) / 2
            shapes.append(dict(type="rect", x0=x0, x1=max(xs) * 1.03, y0=0, y1=1, fillcolor=SHADE,
                               line=dict(width=0), layer="below", **on))
            notes.append(dict(text="extrapolation" if col == 1 else "", x=x0, y=1, xanchor="left", yanchor="top",
                              showarrow=False, **on))
        if current_loops is not None:
            x = at(current_loops)
            shapes.append(dict(type="line", x0=x, x1=x, y0=0, y1=1, line=dict(color="black", dash="dot", width=1.5),
                               **on))
            notes.append(dict(text=f"your L={current_loops}", x=x, y=0, xanchor="left", yanchor="bottom",
                              showarrow=False, **on))
    if chosen is not None:
        for col, key in ((1, "gflops"), (2, "ms_per_sample")):
            data.append(dict(type="scatter", x=[chosen[key]], y=[chosen["accuracy"]], mode="markers",
                             marker=dict(symbol="star", size=22, color="#ffb000", line=dict(color="black", width=1)),
                             name=f"chosen: {chosen['label']}", showlegend=col == 1,
                             hovertemplate=f"chosen: {chosen['label']}<extra></extra>", xaxis=QUALITY_AXES[col][0],
                             yaxis=QUALITY_AXES[col][1]))
    samples = ", ".join(f"{name}: {s.get('samples', '?')} samples/L" for name, s in series.items())
    layout = _quality_layout(fd_name)
    layout["title"] = dict(text=f"{title}<br><sup>{samples}; solid = class accuracy (higher is better; the number "
                                f"in a marker is its loop count), dashed = {fd_name} (lower is better)</sup>")
    if shapes:
        layout["shapes"] = shapes
        layout["annotations"] += notes
    return _figure(data, layout)


QUALITY_AXES = {1: ("x", "y", "y2"), 2: ("x2", "y3", "y4")}  # per panel: x, accuracy y, FD y (make_subplots' names)


@_checked_layout
def _quality_layout(fd_name: str) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, shared_yaxes=False, horizontal_spacing=0.2,
                        specs=[[{"secondary_y": True}, {"secondary_y": True}]],
                        subplot_titles=("vs GFLOPs per sample", "vs measured ms per sample"))
    fig.update_layout(**LAYOUT)
    fig.update_layout(margin=dict(l=50, r=50, t=80, b=45))
    for col in (1, 2):
        fig.update_yaxes(title_text="accuracy", range=[0, 1.05], row=1, col=col, secondary_y=False)
        fig.update_yaxes(title_text=fd_name, row=1, col=col, secondary_y=True, showgrid=False)
    fig.update_xaxes(title_text="GFLOPs / sample", row=1, col=1)
    fig.update_xaxes(title_text="ms / sample", row=1, col=2)
    return fig


# -- per-token settle view ---------------------------------------------------------------------------
def settle_figure(settle: np.ndarray, token_grid: Sequence[int], loops: int, max_panels: int = 16) -> go.Figure:
    """Heat-maps, one per sampling step, of the loop at which each token's prediction stopped changing.

    settle: (steps, T) as Studio.generate reports it (NaN = the token was already known at that step);
    token_grid: (T', H', W'); clip frames are laid side by side.  At most max_panels evenly spaced steps.
    """
    settle = np.asarray(settle, dtype=float)
    steps = len(settle)
    frames, h, w = token_grid
    picks = np.unique(np.linspace(0, steps - 1, min(steps, max_panels)).round().astype(int))
    data = []
    for col, k in enumerate(picks, start=1):
        grid = settle[k].reshape(frames, h, w).transpose(1, 0, 2).reshape(h, frames * w)  # frames side by side
        axis = "" if col == 1 else str(col)
        data.append(dict(type="heatmap", z=grid[::-1], zmin=1, zmax=loops, colorscale=VIRIDIS, showscale=col == 1,
                         colorbar=dict(title=dict(text="loop"), thickness=10, len=0.9), xaxis="x" + axis,
                         yaxis="y" + axis, hovertemplate=f"step {k + 1}: settled at loop %{{z:.0f}}<extra></extra>"))
    return _figure(data, _settle_layout(tuple(int(k) for k in picks), loops))


@_checked_layout
def _settle_layout(picks: tuple[int, ...], loops: int) -> go.Figure:
    fig = make_subplots(rows=1, cols=len(picks), horizontal_spacing=0.008,
                        subplot_titles=[f"step {k + 1}" for k in picks])
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, scaleanchor=None)
    fig.update_annotations(font_size=9)
    # Plotly never wraps a title: two short lines, so it fits the Generate tab's plot column (about 800 px at a
    # 1400 px window) instead of running off its right edge
    fig.update_layout(template="plotly_white", height=200, margin=dict(l=10, r=10, t=70, b=10),
                      title=dict(text=f"Where the model spends depth: the loop (1…{loops}) at which each still-masked "
                                      "token's prediction stopped changing<br><sup>one panel per sampling step; "
                                      "blank = already known</sup>", font=dict(size=12)))
    return fig


# -- comparison grid ---------------------------------------------------------------------------------
def _png_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def comparison_figure(rows: Sequence[Mapping[str, Any]], tiles: Sequence[Any], *, class_name: str = "") -> go.Figure:
    """Models as rows, loop counts as columns, images placed as they arrive (paper's central figure).

    rows: {"checkpoint", "label"} per model in display order; tiles: objects with checkpoint, loops,
    max_loops, still (uint8 (H, W, 3): an image, or a clip's frame strip), ms, gflops.  A one-loop
    (dense) model sits in the column of equal GFLOPs, read from the looped models' tiles.
    """
    if not rows:
        return message_figure("choose checkpoints to compare")
    looped = [t for t in tiles if t.max_loops > 1]
    columns = max([t.loops for t in looped] + [r.get("max_loops", 1) for r in rows] + [1])
    reference = {t.loops: t.gflops for t in looped}

    def column(tile) -> int:
        if tile.max_loops > 1 or not reference:
            return tile.loops
        return min(reference, key=lambda L: abs(reference[L] - tile.gflops))

    index = {r["checkpoint"]: i for i, r in enumerate(rows)}
    layout = _comparison_layout(tuple(r["label"] for r in rows), columns)
    layout["title"] = dict(text=f"Same class ({class_name}) and seed across loop counts — GF = GFLOPs per sample")
    data = []
    for tile in tiles:
        n = str(index[tile.checkpoint] * columns + column(tile))  # make_subplots numbers axes row by row
        n = "" if n == "1" else n
        data.append(dict(type="image", source=_png_uri(tile.still), name=tile.checkpoint, xaxis="x" + n,
                         yaxis="y" + n, hovertemplate=f"{tile.checkpoint} · L={tile.loops}<extra></extra>"))
        layout["xaxis" + n]["title"] = dict(text=f"L={tile.loops} · {tile.ms:.0f} ms · {tile.gflops:.2f} GF",
                                            font=dict(size=10), standoff=2)
    return _figure(data, layout)


@_checked_layout
def _comparison_layout(labels: tuple[str, ...], columns: int) -> go.Figure:
    fig = make_subplots(rows=len(labels), cols=columns, horizontal_spacing=0.01, vertical_spacing=0.09,
                        column_titles=[f"L={L}" for L in range(1, columns + 1)])
    for i, label in enumerate(labels, start=1):
        fig.update_yaxes(title_text=label, title_font=dict(size=11), row=i, col=1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(template="plotly_white", height=170 * len(labels) + 80, margin=dict(l=140, r=10, t=70, b=20))
    return fig


# -- fine-tuning curves (admin) ----------------------------------------------------------------------
TRAINING_TERMS = (("teacher_ce", "teacher CE (L_max)"), ("student_ce", "student CE (L_int)"),
                  ("distill", "distillation term"), ("loss", "loss"))


def training_figure(records: Sequence[Mapping[str, Any]], total_steps: int, *, title: str = "") -> go.Figure:
    """Loss terms of train_log.jsonl records against step, λ on a second axis (ILSD); x spans the whole run."""
    if not records:
        return message_figure("no step logged yet")
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    steps = [r["step"] for r in records]
    ilsd = "teacher_ce" in records[-1]
    for i, (key, label) in enumerate(TRAINING_TERMS):
        if key in records[-1] and (key != "loss" or not ilsd):
            fig.add_trace(go.Scatter(x=steps, y=[r.get(key) for r in records], name=label, mode="lines",
                                     line=dict(color=PALETTE[i])), secondary_y=False)
    if "lambda" in records[-1]:
        fig.add_trace(go.Scatter(x=steps, y=[r.get("lambda") for r in records], name="λ", mode="lines",
                                 line=dict(color=FIXED, dash="dot")), secondary_y=True)
        fig.update_yaxes(title_text="λ", range=[0, 1.05], secondary_y=True)
    fig.update_layout(**LAYOUT, title=title or f"step {steps[-1]} / {total_steps}",
                      xaxis=dict(title="step", range=[0, max(total_steps, steps[-1])]))
    fig.update_yaxes(title_text="cross-entropy (nats)", secondary_y=False)
    return fig
