"""scripts/make_emoji_dataset.py on a fixture of fake, already unpacked packages (no network): layout, split,
determinism, skin tones, the class threshold, its one-line errors, and the imagefolder loader reading the output."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import load_script
from core.data import get_dataset

emoji = load_script("make_emoji_dataset")

# code point -> (Unicode name, subgroup); the technologist has a skin-tone variant in every package
DESIGNS = {"1F42D": ("MOUSE FACE", "animal-mammal"), "1F42E": ("COW FACE", "animal-mammal"),
           "1F431": ("CAT FACE", "animal-mammal"), "1F697": ("AUTOMOBILE", "transport-ground"),
           "1F68C": ("BUS", "transport-ground"), "1F9D1-200D-1F4BB": ("technologist", "person-role"),
           "1F34E": ("RED APPLE", "food-fruit")}
TONED = "1F9D1-1F3FB-200D-1F4BB"
MIN_IMAGES = 4  # mammals 10, vehicles 7, person-role 4 images pass; the apple's 2 do not


def png(color: tuple[int, int, int], size: int = 64) -> bytes:
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    image.paste((*color, 255), (8, 8, size - 8, size - 8))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def make_packages(root: Path) -> Path:
    versions = {s.style: s.version for s in emoji.SOURCES}
    entries = [{"name": name, "unified": unified, "image": unified.lower() + ".png", "short_names": [],
                "subcategory": subgroup, "has_img_google": True, "has_img_twitter": True,
                "skin_variations": ({"1F3FB": {"unified": TONED, "image": TONED.lower() + ".png"}}
                                    if unified.startswith("1F9D1") else {})}
               for unified, (name, subgroup) in DESIGNS.items()]
    for i, (style, label, licence) in enumerate([("google", "Google", "Apache License 2.0"),
                                                 ("twitter", "Twitter", "Creative Commons Attribution 4.0")]):
        package = root / style
        write_json(package / "package.json", {"version": versions[style]})
        write_json(package / "emoji.json", entries)
        (package / "README.md").write_text(f"* {label} images are available under the [{licence}](url).\n")
        for k, unified in enumerate([*DESIGNS, TONED]):
            path = package / "img" / style / "64" / (unified.lower() + ".png")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png((40 * k % 256, 100 + 60 * i, 200)))

    def iconify(style: str, licence: str, icons: dict[str, str], chars: dict[str, str] | None, size: int) -> None:
        package = root / style
        write_json(package / "package.json", {"version": versions[style]})
        write_json(package / "info.json", {"license": {"spdx": licence}})
        body = '<circle cx="{0}" cy="{0}" r="{1}" fill="{2}"/>'
        write_json(package / "icons.json", {"width": size, "height": size, "icons": {
            name: {"body": body.format(size / 2, size / 3, color)} for name, color in icons.items()}})
        if chars is not None:
            write_json(package / "chars.json", chars)

    iconify("fluent-flat", "MIT", {"mouse-face": "#f00", "automobile": "#0f0", "technologist": "#00f",
                                   "technologist-light": "#ff0"},
            {"1f42d": "mouse-face", "1f697": "automobile", "1f9d1-200d-1f4bb": "technologist",
             "1f9d1-1f3fb-200d-1f4bb": "technologist-light"}, 32)
    # no chars table: matched by the names of other sets' chars tables, Unicode names, and "-1" variants
    iconify("fluent-3d", "MIT", {"mouse-face": "#a00", "technologist": "#00a", "technologist-light": "#aa0"}, {}, 32)
    iconify("fxemoji", "Apache-2.0", {"mouseface": "#800", "automobile": "#080", "foxweary": "#888"}, None, 512)
    iconify("streamline", "CC-BY-4.0", {"cow-face-1": "#321", "cow-face-2": "#123", "bus": "#456"}, None, 48)
    return root


@pytest.fixture
def packages(tmp_path: Path) -> Path:
    return make_packages(tmp_path / "packages")


def run(packages: Path, out: Path, capsys) -> tuple[int, str]:
    code = emoji.main(["--packages-dir", str(packages), "--out", str(out), "--min-images", str(MIN_IMAGES)])
    return code, capsys.readouterr().err


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_layout_split_classes_and_skin_tones(packages, tmp_path, capsys):
    out = tmp_path / "out" / "emoji"
    assert run(packages, out, capsys)[0] == 0
    images = [p.relative_to(out) for p in out.rglob("*.png")]
    assert {p.parts[1] for p in images} == {"animal-mammal", "transport-ground", "person-role"}  # no fruit
    styles = [s.style for s in emoji.SOURCES]
    for path in images:
        style = next(s for s in styles if path.stem.startswith(s + "-"))
        assert path.parts[0] == ("val" if emoji.in_val(path.stem[len(style) + 1:]) else "train")
        with Image.open(out / path) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    assert {p.parts[0] for p in images} == {"train", "val"}
    names = sorted(p.name for p in images)
    assert "google-1f9d1-200d-1f4bb.png" in names and not any("1f3fb" in n for n in names)  # default tone only
    assert {n for n in names if "1f42d" in n} == {f"{s}-1f42d.png" for s in
                                                  ("google", "twitter", "fluent-flat", "fluent-3d", "fxemoji")}
    assert "streamline-1f42e.png" in names and "streamline-1f68c.png" in names
    facts = json.loads((out / "dataset.json").read_text())
    counts = {name: row["train"] + row["val"] for name, row in facts["classes"].items()}
    assert counts == {"animal-mammal": 10, "transport-ground": 7, "person-role": 4}
    assert [s["licence"] for s in facts["sources"]] == [s.licence for s in emoji.SOURCES]
    readme = (out / "README.md").read_text()
    assert "Twemoji" in readme and "| animal-mammal | animal-mammal |" in readme
    assert [p.name for p in out.parent.iterdir()] == ["emoji"]  # no temp folder left


def test_two_builds_give_identical_bytes(packages, tmp_path, capsys):
    first, second = tmp_path / "a" / "emoji", tmp_path / "b" / "emoji"
    assert run(packages, first, capsys)[0] == 0 and run(packages, second, capsys)[0] == 0
    assert tree(first) == tree(second)
    (first / "train" / "stray.png").parent.mkdir(parents=True, exist_ok=True)
    (first / "train" / "stray.png").write_bytes(b"x")
    assert run(packages, first, capsys)[0] == 0  # a rebuild replaces the folder whole
    assert tree(first) == tree(second)


def test_imagefolder_loads_the_output_and_skips_a_corrupt_png(packages, tmp_path, capsys):
    out = tmp_path / "emoji"
    run(packages, out, capsys)
    train = get_dataset("imagefolder", "train", root=str(out), image_size=32)
    test = get_dataset("imagefolder", "test", root=str(out), image_size=32)
    assert train.class_names == test.class_names == ("mammal", "person at work", "ground vehicle")
    assert len(train) + len(test) == 21 and train.sources == json.loads((out / "dataset.json").read_text())["sources"]
    image, label = train[0]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    train.files[0].write_bytes(b"not a png")
    with pytest.warns(UserWarning, match="Skipping unreadable file"):
        x, y = train.batch(range(len(train)))
    assert x.shape == (len(train), 32, 32, 3)


def test_checkpoint_config_records_the_sources(packages, tmp_path, capsys):
    from conftest import TINY_TOKENIZER
    from core.config import Experiment, TrainConfig
    from core.train import train

    out = tmp_path / "emoji"
    run(packages, out, capsys)
    experiment = Experiment("t", TrainConfig(task="tokenizer", dataset="imagefolder", data_root=str(out), steps=1,
                                             batch_size=4, warmup_steps=1, bf16=False), TINY_TOKENIZER)
    folder = train(experiment, tmp_path / "tok", device="cpu")
    sources = json.loads((folder / "config.json").read_text())["dataset"]["sources"]
    assert [s["package"] for s in sources] == [s.package for s in emoji.SOURCES]
    assert all(s["attribution"] for s in sources)


def one_line_error(code: int, err: str, needle: str, out: Path) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error:")]  # the rest is tqdm's progress
    assert code == 1 and len(errors) == 1 and needle in errors[0] and "Traceback" not in err
    assert not out.exists() and not any(out.parent.glob(".emoji*"))  # nothing half-written


def test_unknown_licence_stops_with_one_line(packages, tmp_path, capsys):
    write_json(packages / "fxemoji" / "info.json", {"license": {"spdx": "CC-BY-SA-4.0"}})
    out = tmp_path / "out" / "emoji"
    code, err = run(packages, out, capsys)
    one_line_error(code, err, "unknown artwork licence 'CC-BY-SA-4.0'", out)
    assert "@iconify-json/fxemoji" in err


def test_unreadable_artwork_leaves_nothing_half_written(packages, tmp_path, capsys):
    (packages / "twitter" / "img" / "twitter" / "64" / "1f697.png").write_bytes(b"garbage")
    out = tmp_path / "out" / "emoji"
    out.parent.mkdir()
    code, err = run(packages, out, capsys)
    one_line_error(code, err, "twitter 1f697: unreadable artwork", out)


def test_missing_npm_and_moved_package(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out" / "emoji"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    one_line_error(emoji.main(["--out", str(out)]), capsys.readouterr().err, "npm not found", out)

    npm = bin_dir / "npm"  # a registry that no longer has the package
    npm.write_text("#!/bin/sh\necho 'npm error code E404' >&2\necho 'npm error 404 Not Found - GET "
                   "https://registry.npmjs.org/emoji-datasource-google' >&2\nexit 1\n")
    npm.chmod(0o755)
    one_line_error(emoji.main(["--out", str(out)]), capsys.readouterr().err,
                   "npm pack emoji-datasource-google@16.0.0 failed: npm error 404 Not Found", out)


def test_emoji_presets_read_the_built_folder_and_fit_together():
    from core.config import get_preset

    tok, cls, elt, vanilla = (get_preset(f"emoji-{part}") for part in ("tokenizer", "classifier", "elt", "vanilla"))
    for experiment in (tok, cls, elt, vanilla):
        assert (experiment.train.dataset, experiment.train.data_root) == ("imagefolder", str(emoji.DEFAULT_OUT))
    assert (elt.model.vocab_size, elt.model.token_grid) == (tok.model.codebook_size, (1, 8, 8))
    assert elt.model == vanilla.model and elt.train.steps == vanilla.train.steps
    assert (elt.train.mode, vanilla.train.mode) == ("ilsd", "vanilla")
    assert cls.model.num_classes == elt.model.num_classes and len(emoji.CLASSES) >= elt.model.num_classes
