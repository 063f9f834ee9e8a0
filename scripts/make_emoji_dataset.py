"""Build the emoji data set: open-licensed emoji artwork from npm packages, 32x32 RGB, classes = Unicode subgroups.

    python scripts/make_emoji_dataset.py                      # fetches SOURCES with `npm pack`, writes data/emoji
    python scripts/make_emoji_dataset.py --packages-dir DIR   # DIR/<style>/ holds each package already unpacked

Writes ``<out>/{train,val}/<class>/<style>-<codepoint>.png`` (the layout core.data's ``imagefolder`` reads), a
``classes.txt`` of display names, ``README.md`` and ``dataset.json`` (sources, versions, licences, attribution,
counts; training records its ``sources`` in the checkpoint config).  The same package versions give the same bytes.
The artwork is not committed: the data set is rebuilt from the pinned packages.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm import tqdm


@dataclass(frozen=True)
class Source:
    style: str  # file-name prefix of this style's images
    package: str
    version: str
    licence: str  # SPDX id of the ARTWORK (not of the package's code), checked against the package's own files
    attribution: str


# One design counts once: @iconify-json/noto and @iconify-json/twemoji repeat the first two; openmoji and
# emojione are share-alike (CC-BY-SA), Apple's and Facebook's artwork is not openly licensed.  Fluent's 3-D
# set is Microsoft's own second rendering of its designs (shaded, not flat), kept as a style of its own.
SOURCES = (
    Source("google", "emoji-datasource-google", "16.0.0", "Apache-2.0",
           "Noto Emoji, Copyright Google LLC, Apache License 2.0 (https://github.com/googlefonts/noto-emoji)"),
    Source("twitter", "emoji-datasource-twitter", "16.0.0", "CC-BY-4.0",
           "Twemoji, Copyright Twitter, Inc. and other contributors, CC BY 4.0 (https://github.com/jdecked/twemoji)"),
    Source("fluent-flat", "@iconify-json/fluent-emoji-flat", "1.2.6", "MIT",
           "Fluent Emoji (flat), Copyright Microsoft Corporation, MIT (https://github.com/microsoft/fluentui-emoji)"),
    Source("fluent-3d", "@iconify-json/fluent-emoji", "1.2.7", "MIT",
           "Fluent Emoji (3D), Copyright Microsoft Corporation, MIT (https://github.com/microsoft/fluentui-emoji)"),
    Source("fxemoji", "@iconify-json/fxemoji", "1.2.2", "Apache-2.0",
           "Firefox OS Emoji, Copyright Mozilla, Apache License 2.0 (https://github.com/mozilla/fxemoji)"),
    Source("streamline", "@iconify-json/streamline-emojis", "1.2.4", "CC-BY-4.0",
           "Streamline Emojis by Streamline (webalys), CC BY 4.0 (https://github.com/webalys-hq/streamline-vectors)"),
)
# licences that allow training on the artwork and shipping the weights (attribution kept in README and checkpoints)
LICENCES = {"Apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0",
            "MIT": "https://opensource.org/licenses/MIT",
            "CC-BY-4.0": "https://creativecommons.org/licenses/by/4.0/"}
# how emoji-datasource's README names an artwork licence
README_LICENCES = {"Apache License 2.0": "Apache-2.0", "Creative Commons Attribution 4.0": "CC-BY-4.0"}
DATASOURCE_LABELS = {"google": "Google", "twitter": "Twitter"}  # the README's line for each image set

# Unicode subgroups that look alike within and apart from each other at 32x32 (subgroup -> display name);
# kept in this order when they reach --min-images over all styles
CLASSES = {
    "animal-mammal": "mammal", "animal-bird": "bird", "animal-marine": "sea animal", "food-fruit": "fruit",
    "food-prepared": "prepared food", "transport-ground": "ground vehicle", "sky & weather": "sky and weather",
    "clothing": "clothing", "country-flag": "flag", "heart": "heart", "time": "clock and time",
    "place-building": "building", "face-concerned": "worried face", "person-role": "person at work",
    "person-sport": "person doing sport", "person-activity": "person in action", "alphanum": "letters and numbers",
    "geometric": "coloured shape",
}
DEFAULT_OUT = Path("data/emoji")  # the emoji presets in core.config read it
MIN_IMAGES = 150
MAX_CLASSES = 16
VAL_PERCENT = 15  # of the designs (all styles of one design fall in the same split)
IMAGE_SIZE = 32
RENDER_SIZE = 128  # SVGs are rendered this large, then downsampled like the 64-px PNGs
BACKGROUND = (255, 255, 255)


class BuildError(Exception):
    """The data set cannot be built; the message is one line naming the problem."""


# -- fetching --------------------------------------------------------------------------------------
def fetch(sources: tuple[Source, ...], folder: Path) -> dict[str, Path]:
    """``npm pack`` each source at its pinned version into ``folder``; {style: unpacked package root}."""
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError("npm not found: install Node.js's npm client to fetch the emoji packages")
    roots = {}
    for source in tqdm(sources, desc="npm pack", unit="package"):
        spec = f"{source.package}@{source.version}"
        done = subprocess.run([npm, "pack", spec, "--json", "--pack-destination", str(folder)], cwd=folder,
                              capture_output=True, text=True)
        if done.returncode != 0:
            # npm's first lines are codes ("npm error code E404"); the first other line says what went wrong
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            said = [line for line in lines if not re.match(r"npm error (code|syscall|errno) ", line)]
            raise BuildError(f"npm pack {spec} failed: {(said or lines or ['no output'])[0]}")
        tarball = folder / json.loads(done.stdout)[0]["filename"]
        with tarfile.open(tarball) as archive:
            archive.extractall(folder / source.style, filter="data")
        roots[source.style] = folder / source.style / "package"
    return roots


def declared_licence(source: Source, root: Path) -> str:
    """The artwork licence the package itself states (Iconify: info.json; emoji-datasource: its README)."""
    info = root / "info.json"
    if info.is_file():
        return json.loads(info.read_text(encoding="utf-8"))["license"]["spdx"]
    label = DATASOURCE_LABELS.get(source.style, source.style)
    for line in (root / "README.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("*") and label in line and "images" in line:
            for phrase, spdx in README_LICENCES.items():
                if phrase in line:
                    return spdx
            return line.lstrip("* ").strip()
    return "none stated"


def check_package(source: Source, root: Path) -> None:
    version = json.loads((root / "package.json").read_text(encoding="utf-8")).get("version")
    if version != source.version:
        raise BuildError(f"{source.package}: found version {version}, expected {source.version}")
    licence = declared_licence(source, root)
    if licence not in LICENCES:
        raise BuildError(f"{source.package} {source.version}: unknown artwork licence {licence!r} "
                         f"(known: {', '.join(LICENCES)})")
    if licence != source.licence:
        raise BuildError(f"{source.package} {source.version} states licence {licence}, not {source.licence}")


# -- designs and their artwork -----------------------------------------------------------------------
def codepoint(unified: str) -> str:
    """File-name code point: lower-case hex joined by '-', variation selectors dropped (Iconify's keys)."""
    return "-".join(part for part in unified.lower().split("-") if part != "fe0f")


def name_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def name_index(emoji: list[dict], chars_tables: list[dict[str, str]]) -> dict[str, str]:
    """{name key: code point} from Unicode names, emoji.json names and Iconify chars tables (CLDR names);
    a key naming two designs is dropped.  Sets without a chars table are matched through it."""
    found = defaultdict(set)
    for entry in emoji:
        point = codepoint(entry["unified"])
        names = [entry.get("name") or ""]  # not short names: "up" or "m" name other drawings in fxemoji
        if "-" not in point:
            names.append(unicodedata.name(chr(int(point, 16)), ""))
        for name in names:
            if name:
                found[name_key(name)].add(point)
    for chars in chars_tables:
        for point, name in chars.items():
            found[name_key(name)].add(codepoint(point))
    return {key: next(iter(points)) for key, points in found.items() if len(points) == 1}


def iconify_svgs(root: Path, index: dict[str, str]) -> dict[str, str]:
    """{code point: SVG text} of an Iconify set, default skin tone only (tone variants are other keys)."""
    data = json.loads((root / "icons.json").read_text(encoding="utf-8"))
    chars_file = root / "chars.json"
    chars = json.loads(chars_file.read_text(encoding="utf-8")) if chars_file.is_file() else {}
    by_point = {codepoint(point): name for point, name in chars.items()}
    if not by_point:
        # no chars table: icon names are Unicode or CLDR names; "-1" is the first of several drawings of one name
        for name in sorted(data["icons"]):
            base = re.sub(r"-1$", "", name)
            if not re.search(r"-\d+$", base) and name_key(base) in index:
                by_point.setdefault(index[name_key(base)], name)
    svgs = {}
    for point, name in by_point.items():
        icon = data["icons"].get(name)
        if icon is None:  # an alias (e.g. a mirrored hand): not needed for whole designs
            continue
        left, top = icon.get("left", data.get("left", 0)), icon.get("top", data.get("top", 0))
        width, height = icon.get("width", data.get("width", 16)), icon.get("height", data.get("height", 16))
        svgs[point] = (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
                       f'width="{RENDER_SIZE}" height="{RENDER_SIZE}" viewBox="{left} {top} {width} {height}">'
                       f'{icon["body"]}</svg>')
    return svgs


def to_image(rgba: Image.Image) -> Image.Image:
    """On the fixed background, then downsampled (Lanczos) to IMAGE_SIZE square RGB."""
    rgba = rgba.convert("RGBA")
    flat = Image.alpha_composite(Image.new("RGBA", rgba.size, (*BACKGROUND, 255)), rgba).convert("RGB")
    return flat.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)


def render_svg(svg: str) -> Image.Image:
    import resvg_py  # imported here: only the build renders SVGs

    png = resvg_py.svg_to_bytes(svg_string=svg, skip_system_fonts=True)
    with Image.open(io.BytesIO(bytes(png))) as image:
        return to_image(image)


def read_png(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return to_image(image)


def in_val(point: str) -> bool:
    """Split by a hash of the design, so every style of one design lands in the same split."""
    return int(hashlib.sha256(point.encode()).hexdigest()[:8], 16) % 100 < VAL_PERCENT


def folder_name(subgroup: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", subgroup.lower()).strip("-")


# -- the build ------------------------------------------------------------------------------------
Artwork = dict[tuple[str, str], "Path | str"]  # (style, code point) -> PNG file or SVG text


def collect(sources: tuple[Source, ...], roots: dict[str, Path]) -> tuple[dict[str, str], Artwork]:
    """({code point: subgroup}, artwork) over all sources."""
    datasource = [s for s in sources if (roots[s.style] / "emoji.json").is_file()]
    if not datasource:
        raise BuildError("no emoji-datasource package among the sources: its emoji.json names the subgroups")
    emoji = json.loads((roots[datasource[0].style] / "emoji.json").read_text(encoding="utf-8"))
    subgroup = {codepoint(e["unified"]): e["subcategory"] for e in emoji}
    chars_tables = [json.loads((roots[s.style] / "chars.json").read_text(encoding="utf-8"))
                    for s in sources if (roots[s.style] / "chars.json").is_file()]
    index = name_index(emoji, chars_tables)
    art = {}
    for source in sources:
        root = roots[source.style]
        if (root / "emoji.json").is_file():
            entries = json.loads((root / "emoji.json").read_text(encoding="utf-8"))
            for entry in entries:  # skin_variations are left out: one design, default tone
                path = root / "img" / source.style / "64" / entry["image"]
                if entry.get(f"has_img_{source.style}") and path.is_file():
                    art[source.style, codepoint(entry["unified"])] = path
        else:
            for point, svg in iconify_svgs(root, index).items():
                art[source.style, point] = svg
    return subgroup, {key: value for key, value in art.items() if key[1] in subgroup}


def build(sources: tuple[Source, ...], roots: dict[str, Path], out: Path, *, min_images: int = MIN_IMAGES) -> dict:
    """Write the data set into ``out`` (replaced whole at the end); returns the facts written to dataset.json."""
    for source in sources:
        check_package(source, roots[source.style])
    subgroup, art = collect(sources, roots)
    counts = Counter(subgroup[point] for _, point in art)
    classes = [s for s in CLASSES if counts[s] >= min_images][:MAX_CLASSES]
    if not classes:
        raise BuildError(f"no subgroup reaches {min_images} images; largest: {counts.most_common(3)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        per_class = {}
        chosen = sorted(key for key in art if subgroup[key[1]] in classes)
        for style, point in tqdm(chosen, desc="images", unit="image"):
            value = art[style, point]
            try:
                image = read_png(value) if isinstance(value, Path) else render_svg(value)
            except Exception as error:  # any decoder or renderer error: the package is not what was pinned
                raise BuildError(f"{style} {point}: unreadable artwork ({error})") from None
            split = "val" if in_val(point) else "train"
            target = work / split / folder_name(subgroup[point]) / f"{style}-{point}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            image.save(target, optimize=False)
            row = per_class.setdefault(folder_name(subgroup[point]), {
                "name": CLASSES[subgroup[point]], "subgroup": subgroup[point], "train": 0, "val": 0,
                "styles": Counter()})
            row[split] += 1
            row["styles"][style] += 1
        facts = {
            "name": "emoji", "image_size": IMAGE_SIZE, "background": "#%02x%02x%02x" % BACKGROUND,
            "split": f"val = designs whose sha256(code point) % 100 < {VAL_PERCENT}, all styles together",
            "sources": [{"style": s.style, "package": s.package, "version": s.version, "licence": s.licence,
                         "licence_url": LICENCES[s.licence], "attribution": s.attribution} for s in sources],
            "classes": {name: {**row, "styles": dict(sorted(row["styles"].items()))}
                        for name, row in sorted(per_class.items())},
        }
        (work / "dataset.json").write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
        (work / "classes.txt").write_text("".join(f"{folder_name(s)} {CLASSES[s]}\n" for s in sorted(
            classes, key=folder_name)), encoding="utf-8")
        (work / "README.md").write_text(readme(facts), encoding="utf-8")
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
            out.rename(old / out.name)
            work.rename(out)
            shutil.rmtree(old)
        else:
            work.rename(out)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return facts


def readme(facts: dict) -> str:
    rows = [f"| {row['name']} | {name} | {row['subgroup']} | {row['train']} | {row['val']} | "
            + ", ".join(f"{style} {n}" for style, n in row["styles"].items()) + " |"
            for name, row in facts["classes"].items()]
    total = {split: sum(row[split] for row in facts["classes"].values()) for split in ("train", "val")}
    sources = [f"| {s['style']} | `{s['package']}@{s['version']}` | {s['licence']} | {s['attribution']} |"
               for s in facts["sources"]]
    return "\n".join([
        "# Emoji data set", "",
        f"Open-licensed emoji artwork at {facts['image_size']}x{facts['image_size']} RGB on {facts['background']}, "
        "one class per Unicode emoji subgroup, built by `scripts/make_emoji_dataset.py` from the npm packages "
        "below (skin-tone variants left out: one design, default tone). Not committed: rebuild it with the script.",
        f"Split: {facts['split']}.", "",
        "| style | package | artwork licence | attribution |", "|---|---|---|---|", *sources, "",
        "| class | folder | Unicode subgroup | train | val | images per style |", "|---|---|---|---|---|---|", *rows,
        f"| total | | | {total['train']} | {total['val']} | |", ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (replaced whole)")
    parser.add_argument("--packages-dir", type=Path, default=None,
                        help="use DIR/<style>/ (unpacked packages) instead of fetching with npm pack")
    parser.add_argument("--min-images", type=int, default=MIN_IMAGES, help="images a subgroup needs over all styles")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as download:
            if args.packages_dir is None:
                roots = fetch(SOURCES, Path(download))
            else:
                roots = {s.style: args.packages_dir / s.style for s in SOURCES}
                missing = [str(p) for p in roots.values() if not (p / "package.json").is_file()]
                if missing:
                    raise BuildError(f"no unpacked package (package.json) in {missing[0]}")
            facts = build(SOURCES, roots, args.out, min_images=args.min_images)
    except (BuildError, OSError, ValueError) as error:  # OSError, ValueError: an unreadable or malformed package file
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, row in facts["classes"].items():
        print(f"{name:20s} train {row['train']:4d}  val {row['val']:4d}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
