"""The web app driven through gradio_client against a launched server, on the tiny checkpoints.

One server per module (launched with prevent_thread_lock); a copy of the tiny checkpoints gets a
metrics.json and samples.png, a deliberately broken folder and an untrained but larger ("slow")
generator whose runs last long enough to be stopped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from types import SimpleNamespace
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

gr = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from gradio_client.utils import Status  # noqa: E402

from app import charts  # noqa: E402
from app.service import StudioError, as_int, enlarge  # noqa: E402
from conftest import copy_tiny, launched_app  # noqa: E402
from core import checkpoint as ckpt  # noqa: E402
from core.config import Experiment, allowed_loops  # noqa: E402
from core.model import LoopedTransformer  # noqa: E402

GOOD = dict(checkpoint="tiny-elt", class_name="star", loops=2, steps=6, cfg_scale=2.0, seed=7, randomize_seed=False,
            num_samples=2)



def make_checkpoints(tiny: dict[str, Path], root: Path) -> Path:
    """A private copy of the tiny checkpoints plus metrics.json, samples.png, a slow and a broken one."""
    from core.evaluate import evaluate, load_classifier, sample_grid
    from core.media import png_bytes
    from core.pipeline import Pipeline
    from core.sampling import SamplerConfig

    for name, path in tiny.items():
        shutil.copytree(path, root / name, ignore=shutil.ignore_patterns("train_state.safetensors"))
    pipeline = Pipeline.load(root / "tiny-elt")
    sampler = SamplerConfig(steps=4)
    report = evaluate(pipeline, [1, 2, 3, 4], samples=10, seed=0, sampler=sampler,
                      classifier=load_classifier(pipeline), reference_count=50)
    ckpt.write_json(root / "tiny-elt" / "metrics.json", report)
    ckpt.write_bytes(root / "tiny-elt" / "samples.png", png_bytes(sample_grid(pipeline, [1, 2, 3], sampler, 0)))

    # slow: untrained, wider and deeper, so a run takes long enough to stop it halfway
    meta = ckpt.read_config(root / "tiny-elt")
    experiment = Experiment.from_dict(meta["experiment"])
    experiment = replace(experiment, name="slow", model=replace(experiment.model, width=192, num_heads=4,
                                                                 num_layers=4, max_loops=4))
    ckpt.save(root / "slow", experiment, LoopedTransformer(experiment.model), class_names=meta["class_names"],
              extra={"tokenizer": meta["tokenizer"], "classifier": meta.get("classifier"),
                     "dataset": meta["dataset"]})
    (root / "broken").mkdir()
    (root / "broken" / "config.json").write_text("{not json")
    return root


@pytest.fixture(scope="module")
def server(tiny_checkpoints, tmp_path_factory):
    root = make_checkpoints(tiny_checkpoints, tmp_path_factory.mktemp("app-checkpoints"))
    with launched_app([root]) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return Client(server["url"], verbose=False)


def generate(client: Client, **changes):
    args = {**GOOD, **changes}
    return client.submit(*args.values(), api_name="/generate")


def finish(job, timeout: float = 60):
    job.result(timeout=timeout)
    return job.outputs()


# -- service and charts without a server --------------------------------------------------------------
def test_input_checks_name_the_problem():
    assert as_int("seed", "12", 0, 99) == 12 and as_int("seed", 3.0, 0, 99) == 3
    for value, message in [("abc", "whole number"), (2.5, "whole number"), (None, "whole number"),
                           (-1, "between 0 and 99"), (True, "whole number")]:
        with pytest.raises(StudioError, match=message):
            as_int("seed", value, 0, 99)
    assert enlarge(np.zeros((2, 16, 16, 3), np.uint8), 256).shape == (2, 256, 256, 3)


def test_charts_build_from_plain_data():
    latency = {"loops": 5, "max_loops": 4, "steps": 2, "batch": 1, "guidance": True,
               "loop_ms": [[1, 1, 1, 1, 1.2], [1, 1.1, 1, 1, 1]], "embed_ms": [0.1, 0.1], "head_ms": [0.3, 0.3],
               "decode_ms": 2.0, "measured_ms": 14.0}
    text = charts.latency_figure(latency).to_json()
    assert "predicted" in text and "extrapolation" in text
    # figures built per request skip plotly's property checks (charts._figure); checked again through plotly,
    # each is the same figure, so a misspelt or mistyped property fails here
    settle = np.where(np.arange(128).reshape(2, 64) % 3 == 0, np.nan, np.arange(128).reshape(2, 64) % 4 + 1)
    rows = [{"loops": L, "gflops": 0.1 * L, "ms_per_sample": 2.0 * L, "accuracy": 0.2 * L, "fd": 10 / L}
            for L in range(1, 6)]
    tiles = [SimpleNamespace(checkpoint=c, loops=L, max_loops=m, still=np.full((8, 8 * L, 3), 40 * L, np.uint8),
                             ms=3.0 * L, gflops=0.1 * L) for c, m in (("a", 3), ("d", 1)) for L in range(1, m + 2)]
    checked = [charts.latency_figure(latency), charts.settle_figure(settle, (2, 4, 8), 4),
               charts.quality_figure({"m": {"rows": rows, "max_loops": 3}}, current_loops=5,
                                     chosen={"gflops": 0.2, "ms_per_sample": 4.0, "accuracy": 0.4, "label": "L=2"}),
               charts.comparison_figure([{"checkpoint": "a", "label": "ILSD"}, {"checkpoint": "d", "label": "dense"}],
                                        tiles, class_name="star")]
    for fig in checked:
        assert json.loads(go.Figure(fig.to_dict()).to_json()) == json.loads(fig.to_json())
    # 4 columns (L = 1 … 4); the dense row's 0.2-GFLOP tile sits in row 2 under L = 2, the column of equal compute
    assert [t.xaxis for t in checked[-1].data] == ["x", "x2", "x3", "x4", "x5", "x6"]
    rows = [{"loops": L, "gflops": 0.1 * L, "ms_per_sample": 2.0 * L, "accuracy": 0.2 * L, "fd": 10 / L}
            for L in range(1, 6)]
    fig = charts.quality_figure({"m": {"rows": rows, "max_loops": 3, "fd_name": "FD-x"}}, current_loops=5)
    assert "your L=5" in fig.to_json() and len(fig.layout.shapes) == 4  # per panel: shading + marker
    assert "no metrics.json" in charts.quality_figure({}).to_json()
    # Compare: two models at the same GFLOPs; each loop count is written inside its own marker, never beside it
    fig = charts.quality_figure({"a": {"rows": rows, "max_loops": 3}, "b": {"rows": rows, "max_loops": 3}})
    accuracy = [t for t in fig.data if t.name.endswith("accuracy")]
    assert len(accuracy) == 4 and all(t.textposition == "middle center" for t in accuracy)
    assert all(list(t.text) == ["1", "2", "3", "4", "5"] for t in accuracy)
    assert all("text" not in t.mode for t in fig.data if not t.name.endswith("accuracy"))  # FD: no labels at all


def test_skipped_outputs_reach_the_page_unchanged_without_rebuilding_components(tiny_checkpoints):
    """app.ui.Blocks short-cuts gr.skip() (Gradio rebuilds the component and its API schema for it): the
    page must get exactly what plain gr.Blocks sends, and the session's components must stay as they were."""
    import asyncio

    import gradio as gr
    from gradio.state_holder import SessionState

    from app.service import Studio
    from app.ui import SKIP, build_demo

    demo = build_demo(Studio([tiny_checkpoints["tiny-elt"].parent]))
    fn = next(f for f in demo.fns.values() if f.name == "generate")
    details = {"run": 1, "step": 2, "steps": 6, "final": False}
    step = [SKIP(), SKIP(), SKIP(), "**running**", SKIP(), SKIP(), 7, SKIP(), details, SKIP()]  # one Step update
    assert len(step) == len(fn.outputs)
    fast, slow = SessionState(demo), SessionState(demo)
    skipped = {fn.outputs[i]._id: fast[fn.outputs[i]._id] for i, v in enumerate(step)
               if v == SKIP() and not fn.outputs[i].stateful}
    ours = asyncio.run(demo.postprocess_data(fn, list(step), fast))
    theirs = asyncio.run(gr.Blocks.postprocess_data(demo, fn, list(step), slow))
    assert json.dumps(ours, default=str) == json.dumps(theirs, default=str)
    assert ours[0] == {"__type__": "update"} and ours[6] == 7
    assert all(fast[i] is block for i, block in skipped.items())
    assert any(slow[i] is not block for i, block in skipped.items())  # what the short-cut avoids


def test_loop_note_places_l_against_the_trained_range():
    from app.service import NO_GENERATOR
    from app.ui import loops_note

    def view(max_loops: int, trained: tuple[int, int]):
        return replace(NO_GENERATOR, max_loops=max_loops, allowed_loops=allowed_loops(max_loops), trained_loops=trained)

    ilsd, vanilla = view(4, (2, 4)), view(4, (4, 4))
    assert ilsd.loops_label == "Loops L (trained 2–4; 5–8 = extrapolation)"
    assert "trained 4 only" in vanilla.loops_label
    assert "below the trained range (2–4)" in loops_note(ilsd, 1) and "within" in loops_note(ilsd, 2)
    assert "below the trained range (4 only)" in loops_note(vanilla, 3) and "within" in loops_note(vanilla, 4)
    assert "extrapolation" in loops_note(ilsd, 5) and "extrapolation" in loops_note(vanilla, 5)
    assert view(1, (1, 1)).loops_label == "Loops L (trained 1 only; 2 = extrapolation)"
    assert (ilsd.clamp_loops(None), ilsd.clamp_loops(20), ilsd.clamp_loops(0.0), ilsd.guide_loop_max) == (4, 8, 4, 7)


def test_a_checkpoints_view_is_ready_to_render(tiny_checkpoints):
    """One call per checkpoint gives what the Generate tab shows; the UI imports nothing of core to draw it."""
    import ast

    from app.service import Studio

    studio = Studio([tiny_checkpoints["tiny-elt"].parent])
    try:
        view, model = studio.view("tiny-elt"), tiny_checkpoints["tiny-elt"]
        config = ckpt.load(model).experiment
        assert view.allowed_loops == config.model.allowed_loops == (1, 6)
        assert view.loops_label == "Loops L (trained 1–3; 4–6 = extrapolation)"
        assert view.sampler["steps"] == config.sampler.steps and view.sampler["guide_loop"] is None
        assert view.classes == studio.checkpoints.entries["tiny-elt"].meta["class_names"]
        assert studio.view("tiny-tokenizer") is None and studio.view("nope") is None and studio.view(None) is None
        overview = studio.overview()
        assert overview.default_generator in overview.generators and "tiny-tokenizer" in overview.names
        assert ("tiny-elt", "generator (ilsd, 2N×3L)", None) in overview.rows
    finally:
        studio.close()
    tree = ast.parse((ROOT / "app" / "ui.py").read_text())
    imported = [node.module if isinstance(node, ast.ImportFrom) else alias.name
                for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in node.names]
    assert not [name for name in imported if name and name.split(".")[0] == "core"]


def test_handler_updates_are_built_by_name():
    from app.ui import SKIP, CheckpointOutputs, GenerateOutputs

    update = GenerateOutputs(seed=7, details={"final": False}).values()
    assert len(update) == 10 and update[6] == 7 and update[8] == {"final": False}
    assert all(value == SKIP() for i, value in enumerate(update) if i not in (6, 8))
    components = {name: f"<{name}>" for name in ("class_name", "loops", "note", "quality", "clip", "sweep_clip",
                                                 "results", "sweep_tiles", "steps", "cfg_scale", "guide_loop")}
    assert CheckpointOutputs.wire(components) == list(components.values())
    with pytest.raises(TypeError):
        GenerateOutputs(None)  # keyword only: a positional value cannot land in the wrong output



def ship(tiny: dict[str, Path], tmp_path: Path) -> Path:
    """tiny-elt and its tokenizer as trained in one tree (runs/ beside tokenizers/), then shipped into
    another: config.json's tokenizer path no longer resolves, the sibling folder does."""
    trained = copy_tiny(tiny, tmp_path / "trained" / "runs", ("tiny-elt",))
    tokenizer = copy_tiny(tiny, tmp_path / "trained" / "tokenizers", ("tiny-tokenizer",)) / "tiny-tokenizer"
    meta = ckpt.read_config(trained / "tiny-elt")
    ckpt.write_json(trained / "tiny-elt" / "config.json",  # as the trainer writes it (core.train)
                    {**meta, "tokenizer": ckpt.relative_reference(tokenizer, trained / "tiny-elt")})
    shipped = tmp_path / "shipped" / "checkpoints"
    for folder in (trained / "tiny-elt", tokenizer):
        shutil.copytree(folder, shipped / folder.name)
    shutil.rmtree(tmp_path / "trained")
    return shipped


def test_a_moved_checkpoint_is_usable_in_the_app_as_pipeline_load_finds_it(tiny_checkpoints, tmp_path):
    from app.service import Studio
    from core.pipeline import Pipeline

    shipped = ship(tiny_checkpoints, tmp_path)
    stored = ckpt.read_config(shipped / "tiny-elt")["tokenizer"]
    assert stored == "../../tokenizers/tiny-tokenizer" and not (shipped / "tiny-elt" / stored).exists()
    sibling = (shipped / "tiny-tokenizer").resolve()
    assert Pipeline.load(shipped / "tiny-elt").tokenizer.path.resolve() == sibling
    studio = Studio([shipped, shipped / ".." / "checkpoints"])  # the same folder given twice is scanned once
    try:
        found = studio.checkpoints
        assert found.entries["tiny-elt"].error is None and found.generators == ["tiny-elt"]
        assert found.pipeline("tiny-elt").tokenizer.path.resolve() == sibling
    finally:
        studio.close()


@pytest.mark.parametrize("damage, message", [
    ("tokenizer gone", r"tokenizer '\.\./\.\./tokenizers/tiny-tokenizer' not found, nor a folder 'tiny-tokenizer'"),
    ("tokenizer torn", r"is not usable: .*tiny-elt/\.\./tiny-tokenizer/model\.safetensors: not a readable safetensors"),
    ("no class names", r"tiny-elt/config\.json: no class_names"),
    ("weights missing", r"tiny-elt/model\.safetensors: missing \(still training"),
])
def test_a_broken_checkpoint_is_refused_alike_by_pipeline_load_and_the_app(tiny_checkpoints, tmp_path, damage,
                                                                            message):
    from app.service import Studio, StudioError
    from core.pipeline import Pipeline

    shipped = ship(tiny_checkpoints, tmp_path)
    if damage == "tokenizer gone":  # neither the stored path nor a sibling
        shutil.rmtree(shipped / "tiny-tokenizer")
    elif damage == "tokenizer torn":
        (shipped / "tiny-tokenizer" / "model.safetensors").write_bytes(b"\x00" * 100)
    elif damage == "no class names":
        meta = ckpt.read_config(shipped / "tiny-elt")
        del meta["class_names"]
        ckpt.write_json(shipped / "tiny-elt" / "config.json", meta)
    else:
        (shipped / "tiny-elt" / "model.safetensors").unlink()
    with pytest.raises(ckpt.CheckpointError, match=message) as refused:
        Pipeline.load(shipped / "tiny-elt")
    studio = Studio([shipped])
    try:
        found = studio.checkpoints
        entry = found.entries["tiny-elt"]
        assert entry.error == found.public(str(refused.value)) and not found.generators  # the same message
        assert re.search(message, entry.error) and str(tmp_path) not in entry.error  # no server path shown
        with pytest.raises(StudioError, match="cannot be used: .*" + message):
            found.pipeline("tiny-elt")
    finally:
        studio.close()

# -- the launched app ----------------------------------------------------------------------------------
def test_api_names_every_action(client):
    names = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/generate", "/sweep", "/compare", "/inspect", "/spot_check", "/stop", "/checkpoints"} <= names


def test_checkpoints_lists_valid_and_invalid(client):
    listing = client.predict(api_name="/checkpoints")
    assert {"tiny-elt", "tiny-vanilla", "slow"} <= {n for n, e in listing.items() if e["task"] == "generator"}
    assert listing["broken"]["error"] and "corrupt JSON" in listing["broken"]["error"]
    assert listing["tiny-elt"]["allowed_loops"] == [1, 6]


def test_generate_streams_in_order_and_matches_the_cli(client, server, tmp_path):
    outputs = finish(generate(client))
    details = [out[-1] for out in outputs]
    steps = [d["step"] for d in details if not d["final"]]
    assert steps == list(range(1, GOOD["steps"] + 1))  # every sampling step, in order
    assert details[-1]["final"] and not details[-1]["stopped"] and details[-1]["seed"] == GOOD["seed"]
    assert outputs[0][0] is not None and outputs[0][1] is not None  # step 1 carries the preview and strip
    files = [Path(f) for f in outputs[-1][4]]
    assert len(files) == 3  # the side-by-side tile + one PNG per sample
    app_png = Image.open(next(f for f in files if f.stem.endswith("_all")))

    cli_png = tmp_path / "cli.png"
    subprocess.run([sys.executable, "-m", "core.sample", "--checkpoint", str(server["root"] / "tiny-elt"),
                    "--label", GOOD["class_name"], "--loops", str(GOOD["loops"]), "--steps", str(GOOD["steps"]),
                    "--cfg-scale", str(GOOD["cfg_scale"]), "--seed", str(GOOD["seed"]),
                    "--num-samples", str(GOOD["num_samples"]), "--out", str(cli_png)],
                   check=True, cwd=ROOT, capture_output=True)
    cli = Image.open(cli_png)
    np.testing.assert_array_equal(np.asarray(app_png), np.asarray(cli))
    app_settings, cli_settings = json.loads(app_png.text["elt-studio"]), json.loads(cli.text["elt-studio"])
    for key in ("checkpoint", "class", "label", "seed", "loops", "steps", "cfg_scale", "num_samples", "precision"):
        assert app_settings[key] == cli_settings[key], key


def test_randomized_seed_is_reported(client):
    outputs = finish(generate(client, randomize_seed=True, seed=0, steps=2, num_samples=1))
    final = outputs[-1][-1]
    assert outputs[-1][2] and final["seed"] == outputs[0][6]  # the seed box shows the seed that was used


@pytest.mark.parametrize("changes, message", [
    ({"loops": 0}, "loops must be between 1 and 6"),
    ({"loops": 7}, "loops must be between 1 and 6"),
    ({"class_name": "unicorn"}, "unknown class 'unicorn'"),
    ({"steps": 0}, "steps must be between 1"),
    ({"seed": -3}, "seed must be between 0"),
    ({"seed": "abc"}, "seed must be a whole number"),
    ({"num_samples": 9}, "number of samples must be between 1 and 8"),
    ({"checkpoint": "nope"}, "unknown checkpoint 'nope'"),
    ({"checkpoint": "broken"}, "cannot be used"),
])
def test_bad_input_gives_a_clear_error_and_the_app_keeps_serving(client, changes, message):
    with pytest.raises(AppError, match=message):
        generate(client, **changes).result(timeout=30)
    assert finish(generate(client, steps=1))[-1][-1]["final"]  # the next request works


def test_stop_ends_only_this_sessions_job_promptly(server):
    mine, other = Client(server["url"], verbose=False), Client(server["url"], verbose=False)
    previous = finish(generate(mine, steps=2))[-1]
    slow = dict(checkpoint="slow", loops=8, steps=32, num_samples=8)
    job = generate(mine, **slow)
    deadline = time.time() + 30
    while not job.outputs() and time.time() < deadline:  # wait for the first streamed step
        time.sleep(0.02)
    theirs = generate(other, steps=3)  # queued behind mine
    t0 = time.perf_counter()
    assert "1 running job" in mine.predict(api_name="/stop")
    outputs = finish(job)
    assert time.perf_counter() - t0 < 5
    last = outputs[-1][-1]
    assert last["stopped"] and last["step"] < slow["steps"]
    kept = [item["caption"] for item in outputs[-1][2]]
    assert kept == [item["caption"] for item in previous[2]]  # the last completed result is kept
    assert outputs[-1][4] and Path(outputs[-1][4][0]).name == Path(previous[4][0]).name
    assert finish(theirs)[-1][-1]["stopped"] is False  # the other session's job ran to the end


def test_eight_concurrent_clients_complete_in_queue_order(server):
    clients = [Client(server["url"], verbose=False) for _ in range(8)]
    jobs = []
    for i, c in enumerate(clients):
        jobs.append(generate(c, seed=i, steps=4, num_samples=1))
        deadline = time.time() + 10
        while jobs[-1].status().code in (Status.STARTING, Status.JOINING_QUEUE) and time.time() < deadline:
            time.sleep(0.005)  # submitted in a known order
    finals = [finish(job)[-1][-1] for job in jobs]
    assert [f["seed"] for f in finals] == list(range(8))
    runs = [f["run"] for f in finals]
    assert runs == sorted(runs) and not any(f["stopped"] for f in finals)


def test_sweep_streams_labelled_tiles(client):
    job = client.submit("tiny-elt", "ring", 5, 3, 2.0, 1, 2, api_name="/sweep")
    outputs = finish(job)
    tiles = outputs[-1][-1]["tiles"]
    assert [t["loops"] for t in tiles] == [1, 2, 3, 4, 5]
    assert [t["extrapolated"] for t in tiles] == [False] * 3 + [True] * 2
    counts = [len(out[0]) for out in outputs if isinstance(out[0], list) and out[0]]
    assert counts == sorted(counts) and counts[-1] == 5  # filled in tile by tile
    captions = [item["caption"] for item in outputs[-1][0]]
    assert all("ms" in c and "GFLOPs" in c for c in captions) and "extrapolated" in captions[-1]
    assert "your L=5" in json.dumps(outputs[-1][1])  # quality chart marks the current choice
    assert len(client.predict("tiny-elt", "ring", 3, 2, 2.0, 1, 0, api_name="/sweep")[0]) == 3  # final is whole


def test_compare_runs_each_checkpoint_across_loops(client):
    outputs = finish(client.submit(["tiny-elt", "tiny-vanilla"], "cross", 2, 2.0, 3, api_name="/compare"))
    tiles = outputs[-1][-1]["tiles"]
    assert [(t["checkpoint"], t["loops"]) for t in tiles] == [(n, L) for n in ("tiny-elt", "tiny-vanilla")
                                                            for L in (1, 2, 3)]
    table = outputs[-1][2]
    assert [row[0] for row in table["data"]] == ["tiny-elt", "tiny-vanilla"]
    with pytest.raises(AppError, match="unknown checkpoint"):
        client.predict(["tiny-elt", "nope"], "cross", 2, 2.0, 3, api_name="/compare")


def test_inspect_and_spot_check(client, server):
    # before a spot check has run, its table and chart are hidden (no placeholder headers on the page)
    config = json.loads(urllib.request.urlopen(server["url"] + "config").read())
    spot = [c for c in config["components"]
            if c.get("props", {}).get("label") in ("Spot check vs stored", "Spot check chart")]
    assert len(spot) == 2 and not any(c["props"]["visible"] for c in spot)
    summary, metrics, grid, _, config = client.predict("tiny-elt", api_name="/inspect")
    assert "parameters" in summary and "GFLOPs per loop" in summary and grid
    assert "supervised loop counts: 1–3" in summary  # tiny-elt: ILSD, L_min = 1, L_max = 3
    assert [row[0] for row in metrics["data"]] == [1, 2, 3, 4]
    weakest = metrics["headers"].index("lowest-accuracy classes")  # stored per-class accuracy, 3 weakest per L
    assert all(len(row[weakest].split(", ")) == 3 for row in metrics["data"])
    assert config["experiment"]["train"]["task"] == "generator"
    assert "Unusable" in client.predict("broken", api_name="/inspect")[0]
    text, table, _ = client.predict("tiny-elt", 4, api_name="/spot_check")
    assert "4 samples per loop count" in text and "stored accuracy" in table["headers"]
    with pytest.raises(AppError, match="samples per loop count must be between"):
        client.predict("tiny-elt", 0, api_name="/spot_check")


def test_app_py_flags():
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--checkpoints" in out.stdout and "--share" in out.stdout


def test_latency_excludes_the_consumers_time(server):
    """Time the UI spends between steps (previews, sending) is not charged to the model's embedding."""
    studio = server["studio"]
    events = []
    for event in studio.generate("tiny-elt", "ring", 2, 3, 2.0, 0):
        events.append(event)
        time.sleep(0.05)
    latency = events[-1].latency
    assert max(latency["embed_ms"]) < 40 and latency["measured_ms"] < events[-1].wall_ms - 100


def test_readme_api_example_runs_as_written(server, capsys):
    """README's gradio_client example, pointed at the tiny checkpoints: it must unpack what each endpoint returns."""
    import re

    code = re.search(r"```python\n(import json\nfrom gradio_client.*?)```", (ROOT / "README.md").read_text(), re.S)[1]
    for shipped, tiny in (('"http://127.0.0.1:7860/"', repr(server["url"])), ('"shapes-elt"', '"tiny-elt"'),
                          ('"shapes-vanilla"', '"tiny-vanilla"'), (', "shapes-dense"', "")):
        assert shipped in code, shipped
        code = code.replace(shipped, tiny)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'steps': 8, 'cfg_scale': 2.0" in out  # the PNG's settings: tiny-elt's own sampling defaults
    assert "Nothing of yours is running" in out


def test_app_refuses_bad_numbers_on_its_command_line():
    for flag in ("--threads", "--max-queue"):
        done = subprocess.run([sys.executable, "app.py", flag, "0"], cwd=Path(__file__).resolve().parent.parent,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "--threads must be >= 1" in done.stderr and "Traceback" not in done.stderr
