"""The only place that reads or writes weights.

A checkpoint is a folder: `config.json` (experiment config + class names + dataset + references to
the tokenizer / classifier folders), `model.safetensors`, optionally `ema.safetensors`,
`metrics.json` and `samples.png`.  Weights are stored in float32, or in bfloat16 after `store_bf16` has
measured that the outputs stay within a tolerance (config.json's `weights_dtype`; they load into the
float32 module either way).  Training also keeps `train_state.safetensors` (weights, EMA and
optimizer state in ONE file, so a kill can never leave them out of step).  Nothing is unpickled;
every write goes to a temp file in the same folder and is renamed into place.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
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
FLOAT32, BFLOAT16 = "float32", "bfloat16"  # config.json's `weights_dtype` (absent: float32)
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


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def read_shapes(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as an empty "meta" tensor of its shape and dtype: the header only."""
    def empty(f, key):
        tensor = f.get_slice(key)
        return torch.empty(tensor.get_shape(), device="meta",
                           dtype=SAFETENSORS_DTYPES.get(tensor.get_dtype(), torch.float32))
    return strip_prefixes(_read_header(path, lambda f: {k: empty(f, k) for k in f.keys()}))


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


# -- bf16 storage -------------------------------------------------------------------------------------
# The largest accepted max |Δ output| / std(float32 outputs) on the probe batch.  Measured on the 17 shipped
# checkpoints: rounding every parameter to bf16 moved it by 0.4–5.5 % (MaskGIT logits 2.7–5.5 %, DiT x0
# 1.0–1.6 %, classifiers 0.4–1.6 %, decoded pixels 1–2 levels), while the bf16 autocast that evaluation and the
# app run in moves MaskGIT logits by 7–24 %.  8 % keeps a margin above the measured worst and below that.
BF16_TOLERANCE = 0.08
PROBE_BATCH, PROBE_SEED = 16, 0


def stored_dtype(path: str | Path, weights: str = "model") -> str:
    """FLOAT32 or BFLOAT16: how a checkpoint folder's `{weights}.safetensors` stores its parameters (header only)."""
    dtypes = {t.dtype for t in read_shapes(Path(path) / f"{weights}.safetensors").values()}
    return BFLOAT16 if torch.bfloat16 in dtypes else FLOAT32


def bf16_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's state with its parameters rounded to bf16.  Buffers (position tables, FSQ levels) stay as
    they are: they are small, and some hold exact values."""
    parameters = {name for name, _ in module.named_parameters()}
    return strip_prefixes({k: v.to(torch.bfloat16) if k in parameters and v.is_floating_point() else v
                           for k, v in module.state_dict().items()})


@torch.no_grad()
def probe_outputs(module: nn.Module, experiment: Experiment, *, batch: int = PROBE_BATCH, seed: int = PROBE_SEED
                  ) -> tuple[str, torch.Tensor]:
    """(what they are, outputs) of a module on a fixed seeded batch: what bf16 storage must keep.

    generator: every loop's prediction at 1 … L_max from one pass (L, B, …), on partly masked tokens (MaskGIT)
    or noisy latents at random times (DiT), labels including the null class; tokenizer: pixels decoded from
    random codes; classifier: logits of random pixels."""
    from core.family import family_of

    g = torch.Generator().manual_seed(seed)
    config, task = experiment.model, experiment.train.task
    if task == "tokenizer":
        tokens = torch.randint(0, config.codebook_size, (batch, math.prod(config.token_grid)), generator=g)
        return "decoded pixels", module.decode(tokens).float()
    if task == "classifier":
        frames = (config.num_frames,) if config.is_video else ()
        pixels = torch.randint(0, 256, (batch, *frames, config.image_size, config.image_size, 3), generator=g)
        return "logits", module(pixels.to(torch.uint8)).float()
    family = family_of(config)
    labels = torch.randint(0, config.num_classes + 1, (batch,), generator=g)
    fn = family.model_fn(module, config.max_loops, True, None)
    what = f"{'logits' if family.discrete else 'x0 predictions'} at loops 1..{config.max_loops}"
    if family.discrete:
        tokens = torch.randint(0, config.vocab_size, (batch, config.num_tokens), generator=g)
        masked = torch.rand(batch, config.num_tokens, generator=g) < torch.rand(batch, 1, generator=g)
        return what, fn(torch.where(masked, config.mask_id, tokens), labels)
    x, t = torch.randn((batch, *family.data_shape(config)), generator=g), torch.rand(batch, generator=g)
    return what, fn(x, labels, t)


def bf16_deviation(module: nn.Module, experiment: Experiment) -> dict[str, Any]:
    """How far the probe outputs move when the module's parameters are rounded to bf16 (computed in float32,
    as a bf16 checkpoint runs once loaded): max |Δ|, the float32 outputs' std, and their ratio."""
    what, reference = probe_outputs(module, experiment)
    rounded = copy.deepcopy(module)
    rounded.load_state_dict(bf16_state(module))  # the copy casts back to float32, as `load` does
    _, outputs = probe_outputs(rounded, experiment)
    deviation, scale = float((outputs - reference).abs().max()), float(reference.std())
    return {"outputs": what, "max_abs_deviation": round(deviation, 6), "output_std": round(scale, 6),
            "relative_deviation": round(deviation / max(scale, 1e-12), 6)}


def store_bf16(path: str | Path, *, tolerance: float = BF16_TOLERANCE) -> dict[str, Any]:
    """Rewrite a checkpoint folder's model.safetensors (and ema.safetensors) in bf16, atomically, once each
    file's `bf16_deviation` is measured within `tolerance`; returns the record config.json gets as `bf16_check`.

    Raises CheckpointError, leaving the folder untouched, when the folder is not a checkpoint, its weights are
    already bf16, or rounding moves any file's outputs by more than `tolerance` of their std.
    """
    path = Path(path)
    meta = read_config(path)
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path / 'model.safetensors'}: file not found")
    names = [w for w in ("model", "ema") if (path / f"{w}.safetensors").is_file()]
    pending = [w for w in names if stored_dtype(path, w) == FLOAT32]
    if not pending or meta.get("weights_dtype") == BFLOAT16:
        raise CheckpointError(f"{path}: weights already stored in bf16 (a second rounding would be measured "
                              "against bf16, not the float32 original); nothing changed")
    checks, states = {}, {}
    for weights in pending:
        loaded = load(path, weights=weights)
        check = bf16_deviation(loaded.module, loaded.experiment)
        if not check["relative_deviation"] <= tolerance:
            raise CheckpointError(
                f"{path}: {weights} weights in bf16 move the {check['outputs']} by up to "
                f"{check['max_abs_deviation']:.4g} ({check['relative_deviation']:.2%} of their std "
                f"{check['output_std']:.4g}), over the tolerance {tolerance:.2%}; nothing changed")
        checks[weights], states[weights] = check, bf16_state(loaded.module)
    for weights in reversed(pending):  # ema before model, config.json last (a kill leaves loadable weights)
        write_tensors(path / f"{weights}.safetensors", states[weights])
    record = {"tolerance": tolerance, "probe_batch": PROBE_BATCH, "probe_seed": PROBE_SEED,
              **meta.get("bf16_check", {}), **checks}
    write_json(path / "config.json", {**meta, "weights_dtype": BFLOAT16, "bf16_check": record})
    return record


# -- CLI ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.checkpoint", description="Checkpoint folder tools.")
    sub = p.add_subparsers(dest="command", required=True)
    store = sub.add_parser("store-bf16", help="store a checkpoint's weights in bf16 (about half the bytes)",
                           description="Rewrite each folder's model.safetensors (and ema.safetensors) in bf16, "
                                       "after measuring that the outputs on a fixed batch stay within the tolerance.")
    store.add_argument("folders", nargs="+", metavar="FOLDER", help="checkpoint folder")
    store.add_argument("--tolerance", type=float, default=BF16_TOLERANCE,
                       help="largest accepted max |Δ output| / std of the float32 outputs (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.tolerance > 0:
        raise CheckpointError(f"--tolerance must be > 0, got {args.tolerance}")
    for folder in args.folders:
        files = [Path(folder) / f"{w}.safetensors" for w in ("model", "ema")]
        before = sum(f.stat().st_size for f in files if f.is_file())
        record = store_bf16(folder, tolerance=args.tolerance)
        after = sum(f.stat().st_size for f in files if f.is_file())
        worst = max((v for v in record.values() if isinstance(v, dict)), key=lambda v: v["relative_deviation"])
        print(f"{folder}: weights in bf16, {before / 1e6:.1f} MB -> {after / 1e6:.1f} MB; {worst['outputs']} move "
              f"by up to {worst['max_abs_deviation']:.4g} ({worst['relative_deviation']:.2%} of their std, "
              f"tolerance {args.tolerance:.2%})")
    return 0


if __name__ == "__main__":
    import importlib
    import sys

    # the package's own module (not this __main__ copy): its CheckpointError is the one the loaders raise; no
    # core.cli here, which imports this module (a circle)
    module = importlib.import_module("core.checkpoint")
    try:
        sys.exit(module.main())
    except (module.CheckpointError, ConfigError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
