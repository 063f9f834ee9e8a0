"""Benchmark building blocks on tiny configs (speed itself is measured by `python -m core.bench`, not here)."""

from __future__ import annotations

import pytest
import torch

from core import bench
from core.cli import run
from core.model import flops
from core.runtime import Runtime, select_device

from conftest import TINY_GENERATOR


def test_latency_fit_and_throughput_on_a_tiny_model():
    runtime = Runtime.create("cpu", "fp32")
    lat = bench.latency_vs_loops(TINY_GENERATOR, runtime, 2, range(1, 5))
    assert lat["loops"] == [1, 2, 3, 4] and len(lat["ms"]) == 4 and lat["r2"] <= 1.0
    r = bench.forward_throughput(TINY_GENERATOR, runtime, 2)
    assert r["flops"] == pytest.approx(2 * bench.LoopedTransformer(TINY_GENERATOR).flops())
    assert r["seconds"] > 0 and r["seq_per_s"] > 0
    assert bench.gemm_peak(runtime, torch.float32, 64) > 0


def test_linear_thread_scaling_times_both_precisions_and_restores_the_thread_count():
    runtime = Runtime.create("cpu", "fp32")
    threads = torch.get_num_threads()
    r = bench.linear_thread_scaling(TINY_GENERATOR, runtime, 2)
    assert torch.get_num_threads() == threads
    c = TINY_GENERATOR
    assert r["batch"] == 2 and r["shape"] == (2 * c.seq_len, c.width, c.mlp_ratio * c.width) and r["threads"] == threads
    assert set(r["seconds"]) == {(p, n) for p in ("fp32", "bf16") for n in {1, threads}}
    assert all(s > 0 for s in r["seconds"].values())
    timed = {**r, "threads": 2, "seconds": {("fp32", 1): 4.0, ("bf16", 1): 2.0, ("fp32", 2): 2.0, ("bf16", 2): 1.6}}
    text = bench.thread_scaling_paragraph(timed, 1.1)
    assert "At batch 2 the forward gains 1.10× from bf16" in text and "2.00× faster in bf16 than fp32 at one thread and 1.25× at 2" in text
    assert "fp32 up 2.00× and bf16 1.25×" in text and "below the GEMM's 1.25×" in text
    assert "the rest of the forward" not in bench.thread_scaling_paragraph(timed, 1.3)
    assert bench.thread_scaling_paragraph({**r, "threads": 1}, 1.1) == ""


def test_train_step_ratio_and_memory_probe():
    runtime = Runtime.create("cpu", "fp32")
    r = bench.train_step_ratio(TINY_GENERATOR, runtime, 4, compiled=False)  # compiling: the slow test in test_core
    assert r["ilsd_s"] > 0 and r["vanilla_s"] > 0 and r["ratio"] == pytest.approx(r["ilsd_s"] / r["vanilla_s"])
    assert bench.peak_memory_mb(TINY_GENERATOR, "cpu", 2, 2, "fp32", repeats=1) >= 0
    step_flops = 3 * flops(TINY_GENERATOR, batch=4)  # at 1 TFLOP/s peak, a step of step_flops / 1e12 s is 100 %
    text = bench.train_step_section(TINY_GENERATOR, 4, {"ilsd_s": 2 * step_flops / 1e12,
                                                        "vanilla_s": step_flops / 1e12, "ratio": 2.0}, 1e12, "fp32")
    assert "| vanilla (GT at L_max) |" in text and "| 100.0% |" in text and "| 50.0% |" in text
    assert "ILSD / vanilla = **2.000×**" in text
    text = bench.train_step_section(TINY_GENERATOR, 4, {"ilsd_s": 2 * step_flops / 1e12, "vanilla_s": step_flops / 1e12,
                                                        "ratio": 2.0, "ilsd_compiled_s": step_flops / 1e12,
                                                        "compile_gain": 2.0}, 1e12, "fp32")
    assert "| ILSD, layers compiled (`core.train --compile`) |" in text and "**2.00×** as fast" in text


def test_cuda_request_without_gpu_falls_back_with_a_note(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    notes = []
    assert select_device("cuda", warn=notes.append).type == "cpu"
    assert "not available" in notes[0] and "cpu" in notes[0]


def test_bench_cli_help_and_bad_device(capsys):
    with pytest.raises(SystemExit) as info:
        run(bench.main, ["--help"])
    assert info.value.code == 0 and "python -m core.bench" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        run(bench.main, ["--device", "tpu9", "--quick"])
    assert info.value.code == 2 and "unknown device" in capsys.readouterr().err


def test_bf16_inference_copy_is_all_bf16_close_to_fp32_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = bench.LoopedTransformer(TINY_GENERATOR).eval()
    runtime = Runtime.create("cpu", "bf16")
    fast = runtime.prepare(model)
    assert fast is not model and all(p.dtype == torch.float32 for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in fast.parameters())
    tokens = torch.randint(0, TINY_GENERATOR.vocab_size, (3, TINY_GENERATOR.num_tokens))
    labels = torch.tensor([0, 1, TINY_GENERATOR.num_classes])
    with torch.inference_mode():
        exact, approx = model(tokens, labels, loops=3).logits, fast(tokens, labels, loops=3).logits.float()
    assert (approx - exact).abs().max() <= 0.03 * exact.abs().max()  # bf16 keeps ~3 significant digits
    assert (approx.argmax(-1) == exact.argmax(-1)).float().mean() >= 0.95


def test_paired_accuracy_pairs_the_same_samples(tiny_checkpoints):
    from core.evaluate import load_classifier
    from core.pipeline import Pipeline
    from core.sampling import SamplerConfig

    gen = tiny_checkpoints["tiny-elt"]
    pipelines = {p: Pipeline.load(gen, Runtime.create("cpu", p)) for p in ("fp32", "bf16")}
    classifier = load_classifier(pipelines["fp32"])
    sampler = SamplerConfig(steps=2)
    r = bench.paired_accuracy(pipelines, classifier, 2, 12, sampler, batch=5)
    assert r["samples"] == 12 and r["diff"] == pytest.approx(r["bf16"] - r["fp32"]) and r["ci95"] >= 0
    # pairing: the same precision twice gives identical samples, so no difference and no uncertainty
    same = bench.paired_accuracy({"fp32": pipelines["fp32"], "bf16": pipelines["fp32"]}, classifier, 2, 12,
                                 sampler, batch=5)
    assert same["diff"] == 0 and same["ci95"] == 0 and same["same_class"] == 1


def test_data_path_reads_the_token_cache_faster_than_the_jpeg_folder(tmp_path):
    runtime = Runtime.create("cpu", "fp32")
    r = bench.data_path_throughput(tmp_path, runtime, images=8, batch=4, rounds=1, generator=TINY_GENERATOR)
    assert r["images"] == 8 and r["build_s"] > 0 and (tmp_path / "tokens" / "index.json").exists()
    assert r["cache_per_s"] > 3 * r["folder_per_s"] > 0  # no decoding and no tokenizer per step
    assert r["train_cache_per_s"] > 0 and r["train_folder_per_s"] > 0
    text = bench.data_path_section(r, "fp32")
    assert "| token cache: memory-mapped read |" in text and "Whole ILSD training steps" in text
    assert f"**{r['cache_per_s'] / r['folder_per_s']:.1f}×**" in text


@pytest.mark.parametrize("flags, units", [
    ("fpu avx2 avx512f avx512_bf16", "AVX512-BF16"), ("avx2 avx512f amx_bf16 amx_tile avx512_bf16", "AMX, AVX512-BF16"),
    ("fpu avx2", "AVX2 only, no bf16 units"), ("avx2 avx512f", "AVX-512, no bf16 units"), ("sse4_2", "no AVX2")])
def test_benchmarks_name_the_cpus_matrix_units(flags, units):
    info = f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\nprocessor\t: 1\n"
    assert bench.cpu_description(info) == f"AMD EPYC ({units})"
