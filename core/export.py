"""Export a generator checkpoint for the browser: ONNX graphs that keep the loop outside the graph.

    python -m core.export --checkpoint checkpoints/shapes-elt --out exports/shapes-elt

A pure function of the checkpoint (its weights, its tokenizer's weights and their configs), read through
`core.checkpoint`.  The family chooses the graphs (core.family's `page` record: their inputs, shapes and
the code each runs); every family writes the same four, so the page loops the block itself:

    embed.onnx    the sampler's input (MaskGIT: token ids; DiT: latent, time) and the class -> hidden state
                  (a DiT's also the adaLN conditioning vector every layer and the head read)
    block.onnx    hidden -> hidden: ONE loop (the N unique layers)
    head.onnx     hidden -> the prediction, fp32 (MaskGIT: logits (B, T, V); DiT: x0 (B, T, C))
    decoder.onnx  sampled tokens / latent -> pixels uint8 (B, H, W, 3), a clip's every frame (B, F, H, W, 3):
                  the tokenizer's decoder (a video MaskGIT's T'·H'·W' tokens are one sequence to the other three)
    export.json   what the page needs: family and sampler module, classes, the loop range (allowed_loops,
                  core.config's one definition), sampler defaults, the family's sampler facts, FLOPs per
                  loop, `clip` (null for an image; a clip's frames and the fps it plays at), and the SHA-256
                  of the weights it came from and of every graph

The page runs block.onnx L times on the same weights for any L (extrapolation included) and can read
the head after every loop.  `verify` refuses an export that does not match its checkpoint (other
weights, other shapes, a changed graph file) with one clear line, before anything runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from core import checkpoint as ckpt
from core.config import Experiment
from core.family import FAMILIES, GRAPHS, family_of

FORMAT = "elt-studio-export/3"  # 2: any family (family, sampler_module); 3: clips; an older export is made again
MANIFEST = "export.json"
OPSET = 17  # LayerNormalization is native from 17; onnxruntime-web runs it on WASM and WebGPU
SERVER_ONLY = "runs on the server only"
CLIP_FPS = 8  # the server's MP4 rate (core.media.mp4_bytes), so a clip loops in the page as it plays there


class ExportError(ckpt.CheckpointError):
    """A checkpoint that cannot be exported, or an export that does not match its checkpoint."""


# -- what the graphs look like, from the configs alone -----------------------------------------------------
def graph_specs(model, tokenizer) -> dict[str, dict[str, dict[str, Any]]]:
    """name -> {"inputs" | "outputs": {tensor name: {"shape": [...], "dtype": ...}}}; "batch" is the dynamic axis."""
    return family_of(model).page.specs(model, tokenizer)


def describe(meta: dict[str, Any], tokenizer_meta: dict[str, Any]) -> dict[str, Any]:
    """The export.json facts that follow from the two config.json files (no hashes)."""
    experiment = Experiment.from_dict(meta["experiment"])
    tokenizer = Experiment.from_dict(tokenizer_meta["experiment"]).model
    model = experiment.model
    family = family_of(model)
    low, high = experiment.trained_loops
    return {
        "format": FORMAT, "family": family.name, "sampler_module": family.page.sampler,
        "checkpoint": meta["experiment"]["name"], "mode": experiment.train.mode, "classes": list(meta["class_names"]),
        "null_class": model.null_class, "seq_len": model.seq_len, "width": model.width,
        "num_layers": model.num_layers, "image": [tokenizer.image_size, tokenizer.image_size, 3],
        "clip": {"frames": tokenizer.num_frames, "fps": CLIP_FPS} if tokenizer.is_video else None,
        "min_loops": low, "max_loops": model.max_loops, "trained_loops": [low, high],
        "allowed_loops": list(model.allowed_loops), "sampler": asdict(experiment.sampler),
        **family.page.facts(model),
        "flops_per_loop": family.flops(model, loops=1) - family.flops(model, loops=0),
        "flops_head": family.flops(model, loops=0), "num_params": meta.get("num_params"),
        "opset": OPSET, "graphs": graph_specs(model, tokenizer),
    }


def unsupported(meta: dict[str, Any]) -> str | None:
    """Why a checkpoint has no browser export ("… runs on the server only"), or None when it can have one
    (image or clip: the decoder graph makes either)."""
    experiment = meta.get("experiment", {})
    name = experiment.get("name", "this checkpoint")
    if experiment.get("train", {}).get("task") != "generator":
        return f"{name} is not a generator"
    family = experiment.get("model", {}).get("family", "maskgit")
    if family not in FAMILIES:
        return f"{name} is a {family} generator: it {SERVER_ONLY}"
    return None


# -- the graphs ----------------------------------------------------------------------------------------------
class _Graph(nn.Module):
    """One of a family's graph functions as a module that owns the weights it reads (so they export as weights)."""

    def __init__(self, function: Callable, *owners: nn.Module):
        super().__init__()
        self.function, self.owners = function, nn.ModuleList(owners)

    def forward(self, *inputs: torch.Tensor):
        return self.function(*inputs)


def _onnx_bytes(module: nn.Module, args: tuple, spec: dict[str, dict[str, Any]]) -> bytes:
    buffer = io.BytesIO()
    names_in, names_out = list(spec["inputs"]), list(spec["outputs"])
    dynamic = {name: {0: "batch"} for name in names_in + names_out}
    with torch.no_grad(), warnings.catch_warnings():
        # the legacy (TorchScript) exporter on purpose: it needs no onnxscript, and the parity test checks it;
        # its tracer warns about unpacking q, k, v (three, always)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module.eval(), args, buffer, dynamo=False, opset_version=OPSET, input_names=names_in,
                          output_names=names_out, dynamic_axes=dynamic, do_constant_folding=True)
    return _declare_shapes(buffer.getvalue(), spec)


def _declare_shapes(data: bytes, spec: dict[str, dict[str, Any]]) -> bytes:
    """The graph's inputs and outputs declared with the spec's fixed sizes: the tracer leaves a size symbolic
    where the code reshapes by the batch (a DiT's patchify), though only the batch varies."""
    import onnx

    graph = onnx.load_model_from_string(data)
    for side, values in (("inputs", graph.graph.input), ("outputs", graph.graph.output)):
        for value in values:
            for dim, size in zip(value.type.tensor_type.shape.dim, spec[side][value.name]["shape"]):
                if size == "batch":
                    dim.dim_param = "batch"
                else:
                    dim.dim_value = size
    return graph.SerializeToString()


def graphs(generator: ckpt.Checkpoint, tokenizer: ckpt.Checkpoint) -> dict[str, bytes]:
    """name -> ONNX bytes of the four graphs of a generator (fp32), as its family defines them."""
    config = generator.experiment.model
    model, decoder = generator.module.float().eval(), tokenizer.module.float().eval()
    specs = graph_specs(config, tokenizer.experiment.model)
    with torch.no_grad():
        functions = family_of(config).page.graphs(model, decoder)
    return {name: _onnx_bytes(_Graph(function, model, decoder), args, specs[name])
            for name, (function, args) in functions.items()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tokenizer_dir(path: Path, meta: dict[str, Any]) -> Path:
    tokenizer = ckpt.resolve_reference(path, meta, "tokenizer")
    if tokenizer is None or not tokenizer.is_dir():
        raise ExportError(f"{path}: its tokenizer {meta.get('tokenizer')!r} is not found")
    return tokenizer


def export(checkpoint: str | Path, out: str | Path, *, weights: str = "model") -> dict[str, Any]:
    """Write the browser export of a generator checkpoint folder into `out`; returns export.json's content.

    Graph files first, export.json last (each written atomically), so a killed export never looks complete.
    """
    path = Path(checkpoint)
    meta = ckpt.validate(path, weights=weights)
    reason = unsupported(meta)
    if reason:
        raise ExportError(f"{path}: no browser export: {reason}")
    tokenizer_path = _tokenizer_dir(path, meta)
    tokenizer_meta = ckpt.read_config(tokenizer_path)
    generator = ckpt.load(path, weights=weights)
    tokenizer = ckpt.load(tokenizer_path)
    written = graphs(generator, tokenizer)
    manifest = {**describe(meta, tokenizer_meta), "weights": weights,
                "weights_sha256": ckpt.weights_sha256(path, weights),
                "tokenizer_sha256": ckpt.weights_sha256(tokenizer_path), "torch": torch.__version__,
                "files": {}}
    out = Path(out)
    for name in GRAPHS:
        data = written[name]
        ckpt.write_bytes(out / f"{name}.onnx", data)
        manifest["files"][name] = {"path": f"{name}.onnx", "sha256": _sha256(data), "bytes": len(data)}
    ckpt.write_json(out / MANIFEST, manifest)
    return manifest


# -- checking an export against its checkpoint -------------------------------------------------------------
def _graph_io(data: bytes) -> dict[str, dict[str, list]]:
    """{"inputs" | "outputs": {name: shape}} of an ONNX graph (dims as ints, or "batch" for a symbolic one)."""
    import onnx

    graph = onnx.load_model_from_string(data).graph
    dims = lambda value: [d.dim_value if d.HasField("dim_value") else "batch"  # noqa: E731
                          for d in value.type.tensor_type.shape.dim]
    return {"inputs": {v.name: dims(v) for v in graph.input},
            "outputs": {v.name: dims(v) for v in graph.output}}


def verify(export_dir: str | Path, checkpoint: str | Path) -> dict[str, Any]:
    """export.json of `export_dir` when it matches `checkpoint` (its weights' and tokenizer's SHA-256, every
    config fact, every graph file's SHA-256 and input / output shapes); ExportError naming the first
    mismatch otherwise, so a mismatched export is never run."""
    export_dir, path = Path(export_dir), Path(checkpoint)
    file = export_dir / MANIFEST
    if not file.is_file():
        raise ExportError(f"{export_dir}: no {MANIFEST} (not an export folder)")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ExportError(f"{file}: corrupt JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{file}: not an {FORMAT} export")
    meta = ckpt.read_config(path)
    tokenizer_path = _tokenizer_dir(path, meta)
    weights = manifest.get("weights", "model")
    for key, folder, wanted in (("weights_sha256", path, weights), ("tokenizer_sha256", tokenizer_path, "model")):
        actual = ckpt.weights_sha256(folder, wanted)
        if manifest.get(key) != actual:
            raise ExportError(f"{export_dir} was exported from other weights than {folder.name}/{wanted}.safetensors "
                              f"(sha256 {str(manifest.get(key))[:12]}… ≠ {actual[:12]}…): refused; re-export "
                              f"with python -m core.export --checkpoint {path} --out {export_dir}")
    expected = describe(meta, ckpt.read_config(tokenizer_path))
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise ExportError(f"{file}: {key} is {manifest.get(key)!r}, but {path.name} has {value!r}: refused")
    for name in GRAPHS:
        entry = (manifest.get("files") or {}).get(name) or {}
        graph_file = export_dir / str(entry.get("path", f"{name}.onnx"))
        if not graph_file.is_file() or graph_file.parent.resolve() != export_dir.resolve():
            raise ExportError(f"{export_dir}: graph {name!r} ({graph_file.name}) is missing")
        data = graph_file.read_bytes()
        if _sha256(data) != entry.get("sha256"):
            raise ExportError(f"{graph_file}: contents differ from {MANIFEST} (sha256 {_sha256(data)[:12]}… ≠ "
                              f"{str(entry.get('sha256'))[:12]}…): refused")
        try:
            shapes = _graph_io(data)
        except Exception as error:  # noqa: BLE001 — any parse failure is the same refusal
            raise ExportError(f"{graph_file}: not a readable ONNX graph ({error})") from None
        spec = expected["graphs"][name]
        wanted = {side: {k: v["shape"] for k, v in spec[side].items()} for side in ("inputs", "outputs")}
        if shapes != wanted:
            raise ExportError(f"{graph_file}: inputs / outputs {shapes} do not match {path.name} ({wanted}): refused")
    return manifest


def cached_export(checkpoint: str | Path, cache: str | Path, *, weights: str = "model") -> tuple[Path, dict[str, Any]]:
    """(folder, export.json) of the checkpoint's export under `cache`, exporting it on first use.

    The folder is named after the checkpoint, its weights' SHA-256 and the export format, so new weights (or a
    new exporter) get a new export and an old one is never served for them; a half-written export never
    appears (written aside, then renamed).
    """
    path, cache = Path(checkpoint), Path(cache)
    reason = unsupported(ckpt.read_config(path))
    if reason:
        raise ExportError(reason)
    folder = cache / f"{path.name}-{ckpt.weights_sha256(path, weights)[:16]}-v{FORMAT.rsplit('/', 1)[1]}"
    if not (folder / MANIFEST).is_file():
        cache.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=cache, prefix=f".{path.name}-"))
        try:
            export(path, scratch, weights=weights)
            try:
                os.replace(scratch, folder)
            except OSError:  # another process finished the same export first: keep theirs
                pass
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return folder, verify(folder, path)


# -- CLI ---------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.export",
                                description="Export a generator checkpoint (MaskGIT image or clip, or DiT) for the "
                                            "browser (ONNX: embedding, ONE loop of the block, head, tokenizer "
                                            "decoder).")
    p.add_argument("--checkpoint", required=True, help="generator checkpoint folder")
    p.add_argument("--out", required=True, help="output folder (created; files in it are replaced)")
    p.add_argument("--weights", default="model", choices=["model", "ema"], help="which weights to export")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    manifest = export(args.checkpoint, out, weights=args.weights)
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"wrote {out}: {', '.join(f['path'] for f in manifest['files'].values())} + {MANIFEST} "
          f"({size / 1e6:.1f} MB; L_max {manifest['max_loops']}, {len(manifest['classes'])} classes)")
    return 0


if __name__ == "__main__":
    from core.cli import run

    run(main)
