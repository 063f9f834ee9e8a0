"""The vendored onnxruntime-web builds are the npm package's files, unmodified (their README lists the hashes)."""

import hashlib
import re
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "assets" / "vendor" / "onnxruntime-web"


def test_vendored_runtime_files_match_their_readme():
    listed = dict((name, digest) for digest, name in
                  re.findall(r"^\s+([0-9a-f]{64})\s+(\S+)$", (VENDOR / "README.md").read_text(), re.M))
    # both builds the page may pick: WASM, and WebGPU (its bundle, loader and Asyncify runtime)
    assert {"ort.wasm.min.mjs", "ort-wasm-simd-threaded.wasm", "ort.webgpu.min.mjs",
            "ort-wasm-simd-threaded.asyncify.wasm"} <= set(listed)
    for name, digest in listed.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, f"{name} differs from the package"
    assert (VENDOR / "LICENSE").read_text().startswith("MIT")
