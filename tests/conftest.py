"""Shared fixtures: tiny but real checkpoints trained by the real trainer in a few seconds."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
torch.set_num_threads(min(2, torch.get_num_threads()))

from core.config import (ClassifierConfig, DiffusionSamplerConfig, DiTConfig, Experiment, ModelConfig,  # noqa: E402
                         SamplerConfig, TokenizerConfig, TrainConfig, dense_twin)

TINY_TOKENIZER = TokenizerConfig(image_size=16, channels=(8, 16), levels=(4, 4))  # 8x8 grid, 16 codes
TINY_GENERATOR = ModelConfig(vocab_size=16, num_classes=10, token_grid=(1, 8, 8), width=32, num_heads=2,
                             num_layers=2, max_loops=3)


def model_inputs(config: ModelConfig, batch: int = 3, seed: int = 0):
    """Random (tokens, labels) for a generator config, the mask id and the null class included."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, config.vocab_size + 1, (batch, config.num_tokens), generator=g)  # incl. mask id
    labels = torch.randint(0, config.num_classes + 1, (batch,), generator=g)  # incl. null class
    return tokens, labels


def tiny_experiments(root: Path) -> dict[str, Experiment]:
    tok, cls = root / "tiny-tokenizer", root / "tiny-classifier"
    gen_train = TrainConfig(task="generator", dataset="shapes", steps=6, batch_size=16, warmup_steps=2,
                            checkpoint_every=3, log_every=1, bf16=False, tokenizer=str(tok), classifier=str(cls))
    return {
        "tiny-tokenizer": Experiment("tiny-tokenizer", TrainConfig(task="tokenizer", steps=4, batch_size=8,
                                                                   warmup_steps=1, bf16=False), TINY_TOKENIZER),
        "tiny-classifier": Experiment("tiny-classifier", TrainConfig(task="classifier", steps=4, batch_size=8,
                                                                     warmup_steps=1, bf16=False),
                                      ClassifierConfig(num_classes=10, image_size=16, channels=(8, 16),
                                                       feature_dim=16)),
        "tiny-elt": Experiment("tiny-elt", gen_train, TINY_GENERATOR),
        "tiny-vanilla": Experiment("tiny-vanilla", replace(gen_train, mode="vanilla"), TINY_GENERATOR),
    }


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """name -> folder of a trained tiny tokenizer, classifier, ILSD and vanilla generator (session-wide)."""
    from core.train import train

    root = tmp_path_factory.mktemp("checkpoints")
    out = {}
    for name, experiment in tiny_experiments(root).items():
        out[name] = train(experiment, root / name, device="cpu")
    return out


# the tiny tokenizer's latent: 8x8 grid, 2 channels (levels (4, 4)); patches of 2x2 -> 16 tokens
TINY_DIT = DiTConfig(num_classes=10, latent_grid=(1, 8, 8), latent_channels=2, patch_size=2, width=32, num_heads=2,
                     num_layers=2, max_loops=3)
TINY_DIT_SAMPLER = DiffusionSamplerConfig(steps=3, cfg_scale=2.0)


def tiny_dit_experiments(components: dict[str, Path]) -> dict[str, Experiment]:
    """DiT generators (ILSD, vanilla, dense) on the tiny tokenizer and classifier of `components`."""
    train_cfg = TrainConfig(task="generator", dataset="shapes", steps=6, batch_size=16, warmup_steps=2,
                            checkpoint_every=3, log_every=1, bf16=False, tokenizer=str(components["tiny-tokenizer"]),
                            classifier=str(components["tiny-classifier"]))
    return {
        "tiny-dit-elt": Experiment("tiny-dit-elt", train_cfg, TINY_DIT, sampler=TINY_DIT_SAMPLER),
        "tiny-dit-vanilla": Experiment("tiny-dit-vanilla", replace(train_cfg, mode="vanilla"), TINY_DIT,
                                       sampler=TINY_DIT_SAMPLER),
        "tiny-dit-dense": Experiment("tiny-dit-dense", replace(train_cfg, mode="dense"), dense_twin(TINY_DIT),
                                     sampler=TINY_DIT_SAMPLER),
    }


@pytest.fixture(scope="session")
def tiny_dit_checkpoints(tmp_path_factory, tiny_checkpoints) -> dict[str, Path]:
    """name -> folder of a trained tiny ILSD, vanilla and dense DiT (in a root of their own), plus the
    tiny tokenizer and classifier they use."""
    from core.train import train

    root = tmp_path_factory.mktemp("dit-checkpoints")
    out = {name: tiny_checkpoints[name] for name in ("tiny-tokenizer", "tiny-classifier")}
    for name, experiment in tiny_dit_experiments(tiny_checkpoints).items():
        out[name] = train(experiment, root / name, device="cpu")
    return out


TINY_VIDEO_TOKENIZER = TokenizerConfig(image_size=16, num_frames=8, channels=(8, 16, 16), temporal_downsample=4,
                                       levels=(4, 4))  # 2x4x4 token grid, 16 codes


TINY_VIDEO_SAMPLER = SamplerConfig(steps=3, cfg_scale=3.0)


def tiny_video_experiments(root: Path) -> dict[str, Experiment]:
    tok, cls = root / "tiny-video-tokenizer", root / "tiny-video-classifier"
    base = TrainConfig(task="tokenizer", dataset="moving-shapes", steps=3, batch_size=4, warmup_steps=1, bf16=False)
    gen = ModelConfig(vocab_size=16, num_classes=10, token_grid=TINY_VIDEO_TOKENIZER.token_grid, width=32,
                      num_heads=2, num_layers=2, max_loops=3)
    return {
        "tiny-video-tokenizer": Experiment("tiny-video-tokenizer", base, TINY_VIDEO_TOKENIZER),
        "tiny-video-classifier": Experiment(
            "tiny-video-classifier", replace(base, task="classifier"),
            ClassifierConfig(num_classes=10, image_size=16, num_frames=8, channels=(8, 16), feature_dim=16)),
        # its own sampling defaults, as the shipped video generators have (guidance 3, not 2)
        "tiny-video-elt": Experiment("tiny-video-elt", replace(base, task="generator", batch_size=8, tokenizer=str(tok),
                                                               classifier=str(cls)), gen,
                                     sampler=TINY_VIDEO_SAMPLER),
    }


@pytest.fixture(scope="session")
def tiny_video_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """name -> folder of a trained tiny video tokenizer, 3-D classifier and ILSD video generator."""
    from core.train import train

    root = tmp_path_factory.mktemp("video-checkpoints")
    return {name: train(experiment, root / name, device="cpu")
            for name, experiment in tiny_video_experiments(root).items()}


def copy_tiny(tiny_checkpoints: dict[str, Path], root: Path,
              names: tuple[str, ...] = ("tiny-tokenizer", "tiny-classifier", "tiny-elt")) -> Path:
    """A private copy of some tiny checkpoints under `root` (for tests that change or break them)."""
    import shutil

    for name in names:
        shutil.copytree(tiny_checkpoints[name], root / name, ignore=shutil.ignore_patterns("train_state.*"))
    return root


def write_clip(path: Path, num_frames: int, size=(64, 48)) -> None:
    """A small clip of a white square sliding right; codec chosen by the file extension."""
    import imageio_ffmpeg
    import numpy as np

    codec = "mpeg4" if path.suffix == ".avi" else "libx264"
    writer = imageio_ffmpeg.write_frames(str(path), size, codec=codec, fps=10, macro_block_size=16,
                                         ffmpeg_log_level="error")
    writer.send(None)  # start the generator
    w, h = size
    for k in range(num_frames):
        frame = np.zeros((h, w, 3), np.uint8)
        x = int(k * (w - 16) / max(1, num_frames - 1))
        frame[h // 4: h // 4 + 16, x: x + 16] = 255
        writer.send(frame.tobytes())
    writer.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched_app(roots: list[Path], admin: dict | None = None):
    """The real Gradio app on a free port (in this process) over the checkpoint folders `roots`.

    admin: keyword arguments of `app.admin.attach` (password, runs_dir, …) to serve /admin too.
    """
    from app.service import Studio
    from app.static import app_kwargs
    from app.ui import build_demo

    studio = Studio(roots)
    demo = build_demo(studio)
    demo.queue(max_size=32, default_concurrency_limit=4)
    attached = None
    if admin is not None:
        from app.admin import attach

        attached = attach(studio.checkpoints, **admin)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                app_kwargs={**(attached.app_kwargs if attached else {}), **app_kwargs(studio.export_cache)})
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "root": roots[-1], "studio": studio, "demo": demo,
               "admin": attached}
    finally:
        demo.close()
        if attached is not None:
            attached.jobs.close()
        studio.close()


def load_script(name: str):
    """A module from scripts/ (they are files, not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a script's dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module
