"""The browser export (core.export): ONNX graphs equal the torch model at every loop count, for both families (a
MaskGIT's logits, an image's or a clip's, a DiT's x0 with its time and class conditioning), the decoder gives the
tokenizer's pixels (every frame of a clip), and an export that does not match its checkpoint is refused before
anything runs it."""

from __future__ import annotations

import inspect
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import copy_tiny
from core import checkpoint as ckpt
from core.cli import run
from core.config import allowed_loops
from core.export import GRAPHS, MANIFEST, ExportError, cached_export, export, main, unsupported, verify
from core.family import family_of

ort = pytest.importorskip("onnxruntime")


def sessions(folder):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return {name: ort.InferenceSession(str(folder / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
            for name in GRAPHS}


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {name: (root / name, export(tiny_checkpoints[name], root / name)) for name in ("tiny-elt", "tiny-vanilla")}


@pytest.mark.parametrize("name", ["tiny-elt", "tiny-vanilla", "tiny-video-elt"])
def test_graphs_give_the_torch_logits_at_every_loop_count(name, request):
    """A video MaskGIT's T'·H'·W' tokens are one sequence: the same three graphs, only the token count differs."""
    video = name.startswith("tiny-video")
    folder, manifest = request.getfixturevalue("video_exported" if video else "exported")[name]
    checkpoint = request.getfixturevalue("tiny_video_checkpoints" if video else "tiny_checkpoints")[name]
    generator = ckpt.load(checkpoint)
    model, config = generator.module.float(), generator.experiment.model
    run_graph = sessions(folder)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, config.vocab_size, (3, config.num_tokens), generator=g)
    tokens[torch.rand(tokens.shape, generator=g) < 0.5] = config.mask_id  # a mid-sampling mix of known and masked
    labels = torch.tensor([1, config.null_class, 7])
    hidden = run_graph["embed"].run(None, {"tokens": tokens.int().numpy(), "labels": labels.int().numpy()})[0]
    worst = {}
    for loops in range(1, config.max_loops + 3):  # L_max + 2: extrapolation runs the same block
        hidden = run_graph["block"].run(None, {"hidden": hidden})[0]
        logits = run_graph["head"].run(None, {"hidden": hidden})[0]
        with torch.no_grad():
            expected = model(tokens, labels, loops=loops).logits.float().numpy()
        assert logits.shape == expected.shape == (3, config.num_tokens, config.vocab_size)
        worst[loops] = float(np.abs(logits - expected).max())
    assert max(worst.values()) <= 1e-4, worst
    assert manifest["max_loops"] == config.max_loops and manifest["mask_id"] == config.mask_id
    assert manifest["num_tokens"] == config.num_tokens == int(np.prod(config.token_grid))
    assert verify(folder, checkpoint)["checkpoint"] == name
    assert manifest["flops_per_loop"] == pytest.approx(model.flops(1) - model.flops(0))


def test_decoder_graph_gives_the_tokenizers_pixels(tiny_checkpoints, exported):
    folder, manifest = exported["tiny-elt"]
    generator = ckpt.load(tiny_checkpoints["tiny-elt"])
    tokenizer = ckpt.load(generator.reference("tokenizer"))
    ids = torch.randint(0, generator.experiment.model.vocab_size + 1, (4, generator.experiment.model.num_tokens))
    pixels = sessions(folder)["decoder"].run(None, {"tokens": ids.int().numpy()})[0]
    expected = family_of(generator.experiment.model).decode(tokenizer.module.float(), ids).numpy()
    assert pixels.dtype == np.uint8 and pixels.shape == expected.shape == (4, *manifest["image"])
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1  # a rounding step apart at most


def test_manifest_holds_what_the_page_needs(tiny_checkpoints, exported):
    _, manifest = exported["tiny-elt"]
    meta = ckpt.read_config(tiny_checkpoints["tiny-elt"])
    assert manifest["classes"] == meta["class_names"]
    assert manifest["allowed_loops"] == list(allowed_loops(manifest["max_loops"]))  # core.config's one rule
    assert (manifest["family"], manifest["sampler_module"], manifest["clip"]) == ("maskgit", "maskgit.js", None)
    assert manifest["trained_loops"] == [manifest["min_loops"], manifest["max_loops"]]
    assert set(manifest["sampler"]) >= {"steps", "cfg_scale", "choice_temperature", "temperature_base"}
    assert manifest["weights_sha256"] == ckpt.weights_sha256(tiny_checkpoints["tiny-elt"])
    assert set(manifest["files"]) == set(GRAPHS)


def test_an_export_of_other_weights_is_refused(tiny_checkpoints, tmp_path):
    root = copy_tiny(tiny_checkpoints, tmp_path / "ckpts")
    folder = tmp_path / "export"
    export(root / "tiny-elt", folder)
    assert verify(folder, root / "tiny-elt")["checkpoint"] == "tiny-elt"
    shutil.copy(tiny_checkpoints["tiny-vanilla"] / "model.safetensors", root / "tiny-elt" / "model.safetensors")
    with pytest.raises(ExportError, match="exported from other weights .* refused"):
        verify(folder, root / "tiny-elt")


def test_a_changed_graph_or_shape_is_refused(tiny_checkpoints, exported, tmp_path):
    source, _ = exported["tiny-elt"]
    folder = tmp_path / "export"
    shutil.copytree(source, folder)
    shutil.copy(exported["tiny-vanilla"][0] / "block.onnx", folder / "block.onnx")  # same shapes, other weights
    with pytest.raises(ExportError, match="block.onnx: contents differ"):
        verify(folder, tiny_checkpoints["tiny-elt"])

    # a graph of another shape whose hash the manifest was made to agree with: the shape check refuses it
    import onnx
    from onnx import TensorProto, helper

    wide = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("Identity", ["hidden"], ["hidden_out"])], "block",
                              [wide("hidden", TensorProto.FLOAT, ["batch", 65, 48])],
                              [wide("hidden_out", TensorProto.FLOAT, ["batch", 65, 48])])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    onnx.checker.check_model(onnx.load_model_from_string(data))
    (folder / "block.onnx").write_bytes(data)
    manifest = json.loads((folder / MANIFEST).read_text())
    import hashlib

    manifest["files"]["block"]["sha256"] = hashlib.sha256(data).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=r"block.onnx: inputs / outputs .* do not match tiny-elt"):
        verify(folder, tiny_checkpoints["tiny-elt"])

    manifest["width"] = 48  # a manifest edited to claim another width
    (folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="width is 48, but tiny-elt has 32: refused"):
        verify(folder, tiny_checkpoints["tiny-elt"])


def test_cached_export_exports_once_per_weights(tiny_checkpoints, tmp_path):
    root = copy_tiny(tiny_checkpoints, tmp_path / "ckpts")
    folder, manifest = cached_export(root / "tiny-elt", tmp_path / "cache")
    stamp = (folder / MANIFEST).stat().st_mtime_ns
    again, _ = cached_export(root / "tiny-elt", tmp_path / "cache")
    assert again == folder and (folder / MANIFEST).stat().st_mtime_ns == stamp  # not exported twice
    shutil.copy(tiny_checkpoints["tiny-vanilla"] / "model.safetensors", root / "tiny-elt" / "model.safetensors")
    fresh, fresh_manifest = cached_export(root / "tiny-elt", tmp_path / "cache")
    assert fresh != folder and fresh_manifest["weights_sha256"] != manifest["weights_sha256"]
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")] == []  # no leftovers


def test_only_an_unknown_family_runs_on_the_server_only(tiny_checkpoints, tiny_video_checkpoints):
    meta = ckpt.read_config(tiny_checkpoints["tiny-elt"])
    other = json.loads(json.dumps(meta))
    other["experiment"]["model"]["family"] = "autoregressive"
    assert unsupported(other) == "tiny-elt is a autoregressive generator: it runs on the server only"
    assert unsupported(meta) is None
    assert unsupported(ckpt.read_config(tiny_video_checkpoints["tiny-video-elt"])) is None
    assert unsupported(ckpt.read_config(tiny_checkpoints["tiny-tokenizer"])) == "tiny-tokenizer is not a generator"


@pytest.fixture(scope="module")
def video_exported(tiny_video_checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("video-export") / "tiny-video-elt"
    return {"tiny-video-elt": (folder, export(tiny_video_checkpoints["tiny-video-elt"], folder))}


def test_video_decoder_graph_gives_every_frame(tiny_video_checkpoints, video_exported):
    from core.media import mp4_bytes

    folder, manifest = video_exported["tiny-video-elt"]
    generator = ckpt.load(tiny_video_checkpoints["tiny-video-elt"])
    assert len(generator.experiment.model.token_grid) == 3 and generator.experiment.model.token_grid[0] > 1
    tokenizer = ckpt.load(generator.reference("tokenizer"))
    frames = tokenizer.experiment.model.num_frames
    assert manifest["clip"] == {"frames": frames, "fps": inspect.signature(mp4_bytes).parameters["fps"].default}
    assert manifest["graphs"]["decoder"]["outputs"]["pixels"]["shape"] == ["batch", frames, *manifest["image"]]
    ids = torch.randint(0, generator.experiment.model.vocab_size + 1, (3, generator.experiment.model.num_tokens),
                        generator=torch.Generator().manual_seed(3))  # the last id is the mask: decoded as code 0
    pixels = sessions(folder)["decoder"].run(None, {"tokens": ids.int().numpy()})[0]
    expected = family_of(generator.experiment.model).decode(tokenizer.module.float(), ids).numpy()
    assert pixels.dtype == np.uint8 and pixels.shape == expected.shape == (3, frames, *manifest["image"])
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1  # a rounding step apart at most
    assert np.abs(np.diff(pixels.astype(int), axis=1)).max() > 0  # the frames differ: a clip, not one image


@pytest.fixture(scope="module")
def dit_exported(tiny_dit_checkpoints, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dit-export") / "tiny-dit-elt"
    return folder, export(tiny_dit_checkpoints["tiny-dit-elt"], folder)


def test_dit_graphs_give_the_torch_x0_at_every_loop_count(tiny_dit_checkpoints, dit_exported):
    """embed (latent, time, class) -> hidden and the adaLN conditioning; block once per loop; head -> x0."""
    folder, manifest = dit_exported
    generator = ckpt.load(tiny_dit_checkpoints["tiny-dit-elt"])
    model, config = generator.module.float(), generator.experiment.model
    run_graph = sessions(folder)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *family_of(config).data_shape(config), generator=g)
    t, labels = torch.tensor([0.05, 0.5, 1.0]), torch.tensor([1, config.null_class, 7])
    hidden, cond = run_graph["embed"].run(None, {"latents": x.numpy(), "t": t.numpy(), "labels": labels.int().numpy()})
    worst = {}
    for loops in range(1, config.max_loops + 3):  # L_max + 2: extrapolation runs the same block
        hidden = run_graph["block"].run(None, {"hidden": hidden, "cond": cond})[0]
        x0 = run_graph["head"].run(None, {"hidden": hidden, "cond": cond})[0]
        with torch.no_grad():
            expected = model(x, t, labels, loops=loops).x0.float().numpy()
        assert x0.shape == expected.shape
        worst[loops] = float(np.abs(x0 - expected).max())
    assert max(worst.values()) <= 1e-4, worst
    assert (manifest["family"], manifest["sampler_module"]) == ("diffusion", "diffusion.js")
    assert manifest["latent_shape"] == list(x.shape[1:]) and manifest["sampler"]["method"] == "ddim"
    assert manifest["allowed_loops"] == list(config.allowed_loops)
    assert manifest["flops_per_loop"] == pytest.approx(model.flops(1) - model.flops(0))
    assert verify(folder, tiny_dit_checkpoints["tiny-dit-elt"])["checkpoint"] == "tiny-dit-elt"


def test_dit_decoder_graph_gives_the_tokenizers_pixels(tiny_dit_checkpoints, dit_exported):
    folder, manifest = dit_exported
    generator = ckpt.load(tiny_dit_checkpoints["tiny-dit-elt"])
    tokenizer = ckpt.load(generator.reference("tokenizer"))
    latents = torch.randn(4, *manifest["latent_shape"], generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    pixels = sessions(folder)["decoder"].run(None, {"latents": latents.numpy()})[0]
    expected = family_of(generator.experiment.model).decode(tokenizer.module.float(), latents).numpy()
    assert pixels.dtype == np.uint8 and pixels.shape == expected.shape == (4, *manifest["image"])
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1  # a rounding step apart at most


def test_cli_writes_an_export_and_rejects_bad_input(tiny_checkpoints, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        run(main, ["--checkpoint", str(tiny_checkpoints["tiny-elt"]), "--out", str(tmp_path / "out")])
    assert done.value.code == 0 and (tmp_path / "out" / MANIFEST).is_file()
    assert "embed.onnx, block.onnx, head.onnx, decoder.onnx" in capsys.readouterr().out
    for argv, message in ((["--checkpoint", str(tmp_path / "missing"), "--out", str(tmp_path / "x")],
                           "no such checkpoint folder"),
                          (["--checkpoint", str(tiny_checkpoints["tiny-tokenizer"]), "--out", str(tmp_path / "x")],
                           "not a generator")):
        with pytest.raises(SystemExit) as done:
            run(main, argv)
        err = capsys.readouterr().err.strip()
        assert done.value.code == 2 and err.startswith("error: ") and message in err and "\n" not in err
