"""The only place that reads or writes weights.

A checkpoint is a folder: `config.json` (experiment config + class names + dataset + references to
the tokenizer / classifier folders), `model.safetensors`, optionally `ema.safetensors`,
`metrics.json` and `samples.png`.  Training also keeps `train_state.safetensors` (weights, EMA and
optimizer state in ONE file, so a kill can never leave them out of step).  Nothing is unpickled;
every write goes to a temp file in the same folder and is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open
from torch import nn

from core.config import ConfigError, Experiment

FORMAT = "elt-studio/1"
PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel / torch.compile wrappers


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, corrupt or does not match its config."""


@dataclass
class Checkpoint:
    path: Path
    experiment: Experiment
    meta: dict[str, Any]  # the whole config.json
    module: nn.Module

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    def reference(self, key: str) -> Path | None:
        """Resolve a referenced folder ("tokenizer" / "classifier"), stored relative to this one.

        When that path is gone because the checkpoint was moved (trained in one folder, shipped in
        another), a sibling folder of the same name is used instead.
        """
        return resolve_reference(self.path, self.meta, key)

    def metrics(self) -> dict[str, Any]:
        path = self.path / "metrics.json"
        return json.loads(path.read_text()) if path.exists() else {}


# -- atomic writes ----------------------------------------------------------------------------------
def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a published file gets the usual mode
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, data: Any) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
                  ) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda tmp: Path(tmp).write_bytes(data))


# -- reading ----------------------------------------------------------------------------------------
def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return strip_prefixes(load_file(str(path)))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None


def _read_header(path: str | Path, read: Callable[[Any], Any]) -> Any:
    try:
        with safe_open(str(path), "pt") as f:
            return read(f)
    except Exception as error:  # noqa: BLE001 — whatever the header's fault, it is reported the same way
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from None


def read_metadata(path: str | Path) -> dict[str, str]:
    return _read_header(path, lambda f: f.metadata() or {})


def read_shapes(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as an empty "meta" tensor of its shape: the header only, no data."""
    return strip_prefixes(_read_header(
        path, lambda f: {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}))


def weights_sha256(path: str | Path, weights: str = "model") -> str:
    """SHA-256 (hex) of a checkpoint folder's `{weights}.safetensors`: what a derived artefact (an ONNX
    export, core.export) records, so one made from other weights is recognised and refused."""
    file = Path(path) / f"{weights}.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{file}: file not found")
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    file = path / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{path}: missing config.json (not a checkpoint folder)")
    try:
        meta = json.loads(file.read_text())
        Experiment.from_dict(meta["experiment"])
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{file}: corrupt JSON ({error})") from None
    except (KeyError, TypeError, ConfigError) as error:
        raise CheckpointError(f"{file}: invalid config ({error})") from None
    return meta


def build_module(experiment: Experiment) -> nn.Module:
    """The module a config describes (untrained)."""
    from core.family import family_of
    from core.metrics import Classifier
    from core.tokenizer import Tokenizer

    if experiment.train.task == "generator":
        return family_of(experiment.model).module(experiment.model)
    return {"tokenizer": Tokenizer, "classifier": Classifier}[experiment.train.task](experiment.model)


def check_state(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a CheckpointError naming missing, unexpected and mis-shaped tensors."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} tensors (e.g. {', '.join(unexpected[:3])})")
    if wrong:
        problems.append(f"shape mismatch (checkpoint != config): {'; '.join(wrong[:3])}")
    if problems:
        raise CheckpointError(f"{source}: tensors do not match config.json: " + "; ".join(problems))


def resolve_reference(path: Path, meta: dict[str, Any], key: str) -> Path | None:
    """The folder config.json's `key` names (see `Checkpoint.reference`); None when it names none."""
    ref = meta.get(key)
    if not ref:
        return None
    stored, sibling = (path / ref).resolve(), (path.parent / Path(ref).name).resolve()
    return sibling if not stored.exists() and sibling.exists() else stored


def validate(path: str | Path, *, weights: str = "model") -> dict[str, Any]:
    """Check that a checkpoint folder is usable, without loading its weights; returns its config.json.

    The one check behind `Pipeline.load` and the app's checkpoint list: config.json is a valid
    experiment; `{weights}.safetensors` holds exactly the config's tensors at their shapes (read from
    the header only); a generator also has class names and a tokenizer (found as
    `Checkpoint.reference` finds it, so a moved tree passes) that passes this check itself.
    Raises CheckpointError naming the first problem.
    """
    path = Path(path)
    meta = read_config(path)
    experiment = Experiment.from_dict(meta["experiment"])
    file = path / f"{weights}.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (still training, or an incomplete copy?)")
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        module = build_module(experiment)
    check_state(module, read_shapes(file), str(file))
    if experiment.train.task != "generator":
        return meta
    if not isinstance(meta.get("class_names"), list):
        raise CheckpointError(f"{path / 'config.json'}: no class_names")
    if not isinstance(meta.get("tokenizer"), str) or not meta["tokenizer"]:
        raise CheckpointError(f"{path / 'config.json'}: names no tokenizer")
    ref = meta["tokenizer"]
    tokenizer = resolve_reference(path, meta, "tokenizer")
    if not tokenizer.exists():
        raise CheckpointError(f"{path / 'config.json'}: tokenizer {ref!r} not found, nor a folder "
                              f"{Path(ref).name!r} beside {path.name!r}")
    shown = path / os.path.relpath(tokenizer, path.resolve())  # messages name it from here, as the app shows paths
    try:
        task = read_config(shown)["experiment"]["train"]["task"]
        if task != "tokenizer":  # checked first: a generator named here would be validated in a circle
            raise CheckpointError(f"{shown}: a {task} checkpoint, not a tokenizer")
        validate(shown)
    except CheckpointError as error:
        raise CheckpointError(f"{path / 'config.json'}: tokenizer {ref!r} is not usable: {error}") from None
    return meta


def load(path: str | Path, *, weights: str = "model", device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint folder; weights = "model" or "ema"; the module is in eval mode."""
    path = Path(path)
    meta = read_config(path)
    experiment = Experiment.from_dict(meta["experiment"])
    module = build_module(experiment)
    file = path / f"{weights}.safetensors"
    state = read_tensors(file)
    check_state(module, state, str(file))
    module.load_state_dict(state)
    return Checkpoint(path, experiment, meta, module.to(device).eval())


def save(path: str | Path, experiment: Experiment, module: nn.Module, *, class_names: list[str],
         extra: dict[str, Any] | None = None, ema: nn.Module | None = None) -> None:
    """Write (or refresh) a checkpoint folder: weights first, config.json last."""
    path = Path(path)
    write_tensors(path / "model.safetensors", strip_prefixes(module.state_dict()))
    if ema is not None:
        write_tensors(path / "ema.safetensors", strip_prefixes(ema.state_dict()))
    meta = {"format": FORMAT, "experiment": experiment.to_dict(), "class_names": list(class_names),
            "num_params": sum(p.numel() for p in module.parameters()), **(extra or {})}
    write_json(path / "config.json", meta)


def relative_reference(target: str | Path | None, checkpoint_dir: str | Path) -> str | None:
    """Store a referenced folder relative to the checkpoint, so the folder tree can move as one."""
    if target is None:
        return None
    return os.path.relpath(Path(target).resolve(), Path(checkpoint_dir).resolve())


# -- training state (resume) ------------------------------------------------------------------------
def save_train_state(path: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                     ema: nn.Module | None = None) -> None:
    tensors = {f"model.{k}": v for k, v in strip_prefixes(model.state_dict()).items()}
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for name, value in state.items():
            tensors[f"optimizer.{index}.{name}"] = torch.as_tensor(value)
    metadata = {"step": str(step), "param_groups": json.dumps(opt["param_groups"])}
    write_tensors(Path(path) / "train_state.safetensors", tensors, metadata)


def load_train_state(path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     ema: nn.Module | None = None) -> int:
    """Restore weights, EMA and optimizer from train_state.safetensors; returns the step reached."""
    file = Path(path) / "train_state.safetensors"
    tensors = read_tensors(file)
    metadata = read_metadata(file)
    for prefix, module in (("model.", model), ("ema.", ema)):
        if module is None:
            continue
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        check_state(module, state, str(file))
        module.load_state_dict(state)
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": json.loads(metadata["param_groups"])})
    return int(metadata["step"])
