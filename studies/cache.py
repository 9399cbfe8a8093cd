"""JAX's persistent compilation cache for the processes that run studies.

A sweep compiles the same programs again in every worker process and every new session; with
the cache on, a program compiled once on this machine is read back from disk. The cache lives
in ``$XDG_CACHE_HOME/controlnet/jax`` (``~/.cache/controlnet/jax``), or in
``CONTROLNET_COMPILE_CACHE``; ``CONTROLNET_NO_COMPILE_CACHE=1`` turns it off.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax

__all__ = ["enable_compile_cache", "compile_cache_dir"]


def compile_cache_dir() -> Path | None:
    """The cache directory this process uses, or ``None`` when the cache is off."""
    if os.environ.get("CONTROLNET_NO_COMPILE_CACHE", "") not in ("", "0"):
        return None
    if os.environ.get("CONTROLNET_COMPILE_CACHE"):
        return Path(os.environ["CONTROLNET_COMPILE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "controlnet" / "jax"


def enable_compile_cache() -> Path | None:
    """Point JAX's persistent compilation cache at :func:`compile_cache_dir` (idempotent).

    Programs compiled in more than 0.1 s are stored (JAX's default, 1 s, would skip most of a
    small study's programs). Takes effect for this process's compiles from its first on (JAX
    reads the setting once)."""
    path = compile_cache_dir()
    if path is None or jax.config.jax_compilation_cache_dir == str(path):
        return path
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    return path
