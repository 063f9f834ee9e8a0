"""Configs and presets (core.config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core import checkpoint as ckpt
from core.config import PRESETS, ConfigError, Experiment, ModelConfig, TrainConfig, get_preset
from core.sampling import SamplerConfig

from conftest import TINY_GENERATOR

ROOT = Path(__file__).resolve().parents[1]


def test_presets_round_trip_through_json_and_validate():
    for name, experiment in PRESETS.items():
        assert Experiment.from_json(experiment.to_json()) == experiment, name
    for name in ("imagenet-L-8x3", "imagenet-L-12x2", "imagenet-XL-7x4"):
        assert get_preset(name).model.width in (1024, 1152)
    assert [get_preset(n).trained_loops for n in ("shapes-elt", "shapes-vanilla", "shapes-dense")] == [
        (2, 4), (4, 4), (1, 1)]
    # every preset family: the generator reads its tokenizer's grid and codebook, the classifier its resolution
    for family in ("shapes", "digits", "moving-shapes"):
        tok, cls, gen = (get_preset(f"{family}-{part}") for part in ("tokenizer", "classifier", "elt"))
        assert (gen.model.vocab_size, gen.model.token_grid) == (tok.model.codebook_size, tok.model.token_grid), family
        assert (cls.model.image_size, cls.model.num_frames) == (tok.model.image_size, tok.model.num_frames), family
        assert {tok.train.dataset, cls.train.dataset, gen.train.dataset} == {family}, family
        assert gen.train.tokenizer == f"checkpoints/{family}-tokenizer"
    assert get_preset("digits-tokenizer").model.token_grid == (1, 8, 8)  # one token per source pixel
    assert [get_preset(n).trained_loops for n in ("digits-elt", "digits-vanilla")] == [(2, 4), (4, 4)]
    with pytest.raises(ConfigError, match="unknown preset"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="divisible"):
        ModelConfig(width=30, num_heads=4)
    with pytest.raises(ConfigError, match="position_init"):
        ModelConfig(position_init="zeros")
    with pytest.raises(ConfigError, match="dense"):
        Experiment("x", TrainConfig(mode="dense"), TINY_GENERATOR)
    with pytest.raises(ConfigError, match="unknown"):
        Experiment.from_dict({**PRESETS["shapes-elt"].to_dict(), "model": {"widht": 3}})


def test_an_experiment_carries_the_sampler_it_is_evaluated_with():
    video, image = get_preset("moving-shapes-elt"), get_preset("shapes-elt")
    assert video.sampler == SamplerConfig(cfg_scale=3.0) and image.sampler == SamplerConfig(steps=16)
    data = video.to_dict()
    assert data["sampler"]["cfg_scale"] == 3.0 and "sampler" not in get_preset("shapes-tokenizer").to_dict()
    older = {k: v for k, v in data.items() if k != "sampler"}  # a config.json written before samplers were stored
    assert Experiment.from_dict(older).sampler == SamplerConfig()
    with pytest.raises(ConfigError, match="unknown SamplerConfig keys.*cfg_scale"):
        Experiment.from_dict({**data, "sampler": {"guidance": 3}})
    with pytest.raises(ConfigError, match="cfg_scale must be >= 0"):
        Experiment.from_dict({**data, "sampler": {"cfg_scale": -1}})
    for name in PRESETS:
        folder = ROOT / "checkpoints" / name  # the shipped ones are built and sampled as their preset says
        if folder.is_dir():
            shipped = Experiment.from_dict(ckpt.read_config(folder)["experiment"])
            assert (shipped.model, shipped.sampler) == (get_preset(name).model, get_preset(name).sampler), name
