"""Runtimes: the torch backend (device, dtype, timing) and the JAX backend (same math, same weights)."""

from core.runtime.torch_backend import Runtime, select_device

__all__ = ["Runtime", "select_device"]
