"""The app's checkpoints: discovery under the checkpoint roots, a cache of loaded pipelines, and the
browser exports of them.  `Studio` (app/service.py) builds its actions on this; no Gradio here either.

A folder is listed as usable only if `core.checkpoint.validate` accepts it, the same check `Pipeline.load`
runs; errors shown to visitors have every checkpoint root's server path cut (`public`).
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from core import checkpoint as ckpt
from core import export as browser
from core.cli import user_errors
from core.config import Experiment
from core.pipeline import Pipeline
from core.runtime import Runtime
from core.sampling import SamplerConfig

SHIPPED_COMPARE = ("shapes-elt", "shapes-vanilla", "shapes-dense", "shapes-dit-elt")  # MaskGIT trio + the DiT ELT


def sampler_summary(sampler: SamplerConfig) -> dict[str, Any]:
    """A checkpoint's sampling defaults (what `python -m core.sample` uses for it) as plain data; guide_loop is
    None where the family has no loop guidance (MaskGIT)."""
    return {"steps": sampler.steps, "cfg_scale": sampler.cfg_scale, "passes": sampler.passes,
            "guide_loop": getattr(sampler, "guide_loop", None)}


class StudioError(ValueError):
    """Bad input or an unusable checkpoint; the message is shown to the user as is."""


@dataclass(frozen=True)
class Entry:
    """A folder found under a checkpoint root: usable, or not with the reason why."""

    name: str
    path: Path
    task: str | None = None  # "generator" | "tokenizer" | "classifier"; None when unreadable
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, repr=False)
    experiment: Experiment | None = field(default=None, repr=False)  # parsed from meta when usable
    location: str = ""  # the folder relative to its checkpoint root (what visitors see; never a server path)

    @property
    def is_generator(self) -> bool:
        return self.error is None and self.task == "generator"

    @property
    def is_video(self) -> bool:
        """A clip generator (more than one token frame)."""
        return self.is_generator and self.experiment.model.token_grid[0] > 1


def with_root(roots: list[Path], folder: Path) -> list[Path]:
    """`roots` and `folder`, unless it is already one of them under another spelling (`--checkpoints checkpoints`
    beside the default root): a folder is scanned once."""
    return roots if any(root.resolve() == folder.resolve() for root in roots) else [*roots, folder]


class Checkpoints:
    """Checkpoint folders under `roots` (rescanned on demand) and their loaded pipelines (cached)."""

    def __init__(self, roots: Sequence[str | Path], runtime: Runtime):
        self.roots: list[Path] = []
        for root in roots:
            self.roots = with_root(self.roots, Path(root))
        self.runtime = runtime
        self._cache: dict[Path, tuple[tuple, Pipeline]] = {}
        self._cache_lock = threading.Lock()
        self.entries: dict[str, Entry] = {}
        self.rescan()

    # -- checkpoints ---------------------------------------------------------------------------------
    def rescan(self) -> dict[str, Entry]:
        """Find checkpoint folders under every root (or a root that is itself one); never raises."""
        entries: dict[str, Entry] = {}
        for root in list(self.roots):
            if not root.is_dir():
                entries[root.name] = Entry(root.name, root, error=f"{root.name}: no such folder", location=root.name)
                continue
            folders = [root] if (root / "config.json").exists() else sorted(
                p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
            for folder in folders:
                name = folder.name if folder.name not in entries else f"{folder.parent.name}/{folder.name}"
                entry = check_folder(name, folder)
                location = folder.name if folder == root else str(folder.relative_to(root))
                entries[name] = replace(entry, location=location,
                                        error=None if entry.error is None else self.public(entry.error))
        self.entries = entries
        return entries

    def public(self, text: str) -> str:
        """`text` with every checkpoint root's server path cut to names relative to it (for visitors)."""
        for root in sorted(self.roots, key=lambda r: -len(str(r.resolve()))):
            for form in dict.fromkeys((str(root.resolve()), str(root.absolute()), str(root))):
                text = text.replace(form + "/", "").replace(form, root.name)
        return text

    def public_config(self, value: Any) -> Any:
        """A config as visitors see it: an absolute path under a checkpoint root becomes relative to it
        (`public`), any other absolute path (a fine-tuning run's data folder) only its last component;
        relative references are the project's and stay."""
        if isinstance(value, dict):
            return {k: self.public_config(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.public_config(v) for v in value]
        if isinstance(value, str) and Path(value).is_absolute():
            shown = self.public(value)
            return shown if shown != value else f"…/{Path(value).name}"
        return value

    def add_root(self, folder: str | Path) -> dict[str, Entry]:
        """Scan one more folder (of checkpoints, or a checkpoint) from now on: visible to every visitor."""
        folder = Path(folder)
        with self._cache_lock:
            self.roots = with_root(self.roots, folder)
        return self.rescan()

    def remove_root(self, folder: str | Path) -> dict[str, Entry]:
        """Stop scanning a folder added by `add_root` (its loaded pipelines are dropped)."""
        folder = Path(folder)
        with self._cache_lock:
            self.roots = [r for r in self.roots if r != folder]
            for path in [p for p in self._cache if p == folder or folder in p.parents]:
                del self._cache[path]
        return self.rescan()

    @property
    def generators(self) -> list[str]:
        """The usable generators, image and video."""
        return [name for name, entry in self.entries.items() if entry.is_generator]

    @property
    def default_generator(self) -> str | None:
        names = self.generators
        return next((n for n in SHIPPED_COMPARE if n in names), names[0] if names else None)

    @property
    def default_compare(self) -> list[str]:
        """The shipped MaskGIT trio and the DiT ELT where present, else up to three generators of the first one's kind."""
        names = self.generators
        if not names:
            return []
        shipped = [n for n in SHIPPED_COMPARE if n in names]
        return shipped or [n for n in names if self.is_video(n) == self.is_video(names[0])][:3]

    def is_video(self, name: Any) -> bool:
        entry = self.entries.get(name) if isinstance(name, str) else None
        return entry is not None and entry.is_video

    def entry(self, name: Any) -> Entry:
        if not isinstance(name, str) or name not in self.entries:
            known = ", ".join(self.entries) or "none found"
            raise StudioError(f"unknown checkpoint {name!r}; available: {known}")
        return self.entries[name]

    def pipeline(self, name: Any) -> Pipeline:
        """The loaded generator (cached; reloaded when its files change on disk)."""
        entry = self.entry(name)
        if entry.error:
            raise StudioError(f"checkpoint {name!r} cannot be used: {entry.error}")
        if entry.task != "generator":
            raise StudioError(f"checkpoint {name!r} is a {entry.task}, not a generator")
        key = tuple(f.stat().st_mtime_ns for f in (entry.path / "config.json", entry.path / "model.safetensors")
                    if f.exists())
        with self._cache_lock:
            cached = self._cache.get(entry.path)
            if cached is None or cached[0] != key:
                try:
                    pipeline = Pipeline.load(entry.path, self.runtime)
                except user_errors() as error:
                    raise StudioError(f"checkpoint {name!r} cannot be loaded: {error}") from None
                cached = self._cache[entry.path] = (key, pipeline)
        return cached[1]

    def warm_up(self, name: str | None = None) -> None:
        """Load a generator and run one tiny generation, so the first visitor does not pay for it."""
        name = name or self.default_generator
        if name is not None:
            pipeline = self.pipeline(name)
            pipeline.generate([0], pipeline.config.max_loops, pipeline.sampler(steps=1), seed=0)

    def listing(self) -> dict[str, Any]:
        """Every checkpoint found: the generators with their classes and loop range, and the rest."""
        out = {}
        for name, e in self.entries.items():
            item: dict[str, Any] = {"task": e.task, "error": e.error}
            if e.is_generator:
                model = e.experiment.model
                item.update(video=e.is_video, classes=e.meta["class_names"], max_loops=model.max_loops,
                            allowed_loops=list(model.allowed_loops), mode=e.experiment.train.mode,
                            default_sampler=sampler_summary(e.experiment.sampler))
            out[name] = item
        return out

    # -- the browser runtime: the page runs the model (core.export graphs); the server only exports it ------
    @functools.cached_property
    def export_cache(self) -> Path:
        """Where browser exports live, one folder per checkpoint and weights, made on first use (assignable)."""
        return export_cache_dir()

    def browser_catalog(self) -> dict[str, Any]:
        """Every usable generator as the page needs it before loading one: classes, loop range, sampler defaults,
        and `server_only` (why it has no browser export: not a family the page runs) or None."""
        out = {}
        for name in self.generators:
            e = self.entries[name]
            model = e.experiment.model
            out[name] = {"classes": e.meta["class_names"], "max_loops": model.max_loops,
                         "allowed_loops": list(model.allowed_loops), "trained_loops": list(e.experiment.trained_loops),
                         "default_sampler": sampler_summary(e.experiment.sampler),
                         "server_only": browser.unsupported(e.meta)}
        return out

    def browser_export(self, checkpoint: Any) -> tuple[Path, dict[str, Any]]:
        """(folder, export.json) of a generator's browser export, exported on first use (a few seconds, once per
        weights) and checked against the checkpoint every time; StudioError when it has none or it is refused."""
        entry = self.entry(checkpoint)
        if not entry.is_generator:
            raise StudioError(f"checkpoint {checkpoint!r} is not a usable generator")
        reason = browser.unsupported(entry.meta)
        if reason:
            raise StudioError(reason)
        with _EXPORT_LOCK:
            try:
                return browser.cached_export(entry.path, self.export_cache)
            except user_errors() as error:
                message = self.public(str(error))
                raise StudioError(f"the browser export of {checkpoint!r} is refused: {message}") from None


_EXPORT_LOCK = threading.Lock()  # one export at a time (two visitors' first use of a checkpoint export it once)


def export_cache_dir() -> Path:
    """$ELT_STUDIO_CACHE/exports, else $XDG_CACHE_HOME (or ~/.cache)/elt-studio/exports: kept across restarts,
    so a checkpoint is exported once per weights, not once per server start."""
    if os.environ.get("ELT_STUDIO_CACHE"):
        return Path(os.environ["ELT_STUDIO_CACHE"]) / "exports"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "elt-studio" / "exports"


def check_folder(name: str, folder: Path) -> Entry:
    """A folder under a checkpoint root as an Entry: usable, or the reason why not (never raises).

    The check is `core.checkpoint.validate`, the one `Pipeline.load` runs, so a folder listed as usable loads.
    """
    try:
        meta = ckpt.validate(folder)
    except ckpt.CheckpointError as error:
        return Entry(name, folder, error=str(error))
    experiment = Experiment.from_dict(meta["experiment"])
    return Entry(name, folder, experiment.train.task, None, meta, experiment)
