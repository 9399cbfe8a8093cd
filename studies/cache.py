"""JAX's persistent compilation cache for the command line and the processes that run studies.

A command or a sweep compiles the same programs again in every new process; with the cache on,
a program compiled once on this machine is read back from disk (the program is still traced
and lowered, since its lowered text is the cache key; XLA's compilation, most of the time, is
skipped). The cache lives in ``$XDG_CACHE_HOME/controlnet/jax`` (``~/.cache/controlnet/jax``),
or in the directory ``CONTROLNET_COMPILE_CACHE`` names. ``CONTROLNET_COMPILE_CACHE=0`` (or
``off``, ``false``, ``no``) or ``CONTROLNET_NO_COMPILE_CACHE=1`` turns it off, and so does the
command line's ``--no-compile-cache``.

The ``controlnet`` command (:func:`controlnet_cli.main`) and :func:`studies.run` call
:func:`enable_compile_cache` before their first compile; a library user opts in by calling it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import jax

__all__ = ["enable_compile_cache", "compile_cache_dir", "MIN_COMPILE_SECONDS"]

#: Programs whose XLA compilation took at least this long are stored. JAX's default (1 s) would
#: skip most of a small run's programs (the ring's training loop compiles in 0.2-1 s); below
#: this the disk round trip costs about what compiling does.
MIN_COMPILE_SECONDS = 0.05

_OFF = ("0", "off", "false", "no")


def compile_cache_dir() -> Path | None:
    """The cache directory this process uses, or ``None`` when the environment turns it off."""
    if os.environ.get("CONTROLNET_NO_COMPILE_CACHE", "") not in ("", "0"):
        return None
    named = os.environ.get("CONTROLNET_COMPILE_CACHE", "")
    if named.strip().lower() in _OFF:
        return None
    if named:
        return Path(named)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "controlnet" / "jax"


def enable_compile_cache(enabled: bool = True) -> Path | None:
    """Point JAX's persistent compilation cache at :func:`compile_cache_dir`; the directory used,
    or ``None`` when ``enabled`` is false or the environment turns the cache off (idempotent).

    JAX reads the directory at this process's first compile that finds it set and keeps it, so
    call this before the work starts. A directory that cannot be created leaves the cache off
    rather than failing the run."""
    path = compile_cache_dir() if enabled else None
    if path is None or jax.config.jax_compilation_cache_dir == str(path):
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: the run still works, it only compiles every time
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    # A cache entry that cannot be read or written (a full disk) costs a compile, nothing more:
    # JAX's warning about it would bury the run's own messages (e.g. that its result failed to write).
    warnings.filterwarnings("ignore", message="Error (reading|writing) persistent compilation cache")
    return path
