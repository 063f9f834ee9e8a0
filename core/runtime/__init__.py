"""Runtimes: the torch backend (device, dtype, timing) and the JAX backend (same math, same weights)."""

from core.runtime.torch_backend import Runtime, select_device

__all__ = ["OPTIONAL_IMPORTS", "Runtime", "select_device"]

# The one list of third-party modules the code imports only behind `except ImportError` and runs without
# (jax_backend: the JAX runtime, absent on a torch-only machine).  tests/test_requirements.py accepts these
# even where requirements.txt provides none of them; every other import must come from requirements.txt.
OPTIONAL_IMPORTS = ("jax",)
