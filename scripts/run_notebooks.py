"""Execute the tutorial notebooks in place, storing their outputs (``make notebooks``).

    python scripts/run_notebooks.py [--small] [NAME ...]

``--small`` sets ``CONTROLNET_NOTEBOOK_SMALL=1`` (the sizes the tests use); without it the
notebooks run at full size, as committed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time

import nbformat
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).resolve().parents[1] / "notebooks"


def execute(path: pathlib.Path, *, small: bool, timeout: int = 900) -> nbformat.NotebookNode:
    """Run every cell of the notebook at ``path`` and return it with its outputs."""
    nb = nbformat.read(path, as_version=4)
    env_before = os.environ.get("CONTROLNET_NOTEBOOK_SMALL")
    os.environ["CONTROLNET_NOTEBOOK_SMALL"] = "1" if small else "0"
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("CONTROLNET_NOTEBOOK_SMALL", None)
        else:
            os.environ["CONTROLNET_NOTEBOOK_SMALL"] = env_before
    return nb


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebook file names (default: all)")
    ap.add_argument("--small", action="store_true", help="test sizes")
    ap.add_argument("--timeout", type=int, default=900, help="seconds one cell may take (default 900)")
    args = ap.parse_args()
    if args.timeout <= 0:
        ap.error(f"--timeout must be a positive number of seconds, got {args.timeout}")
    paths = [ROOT / n for n in args.names] if args.names else sorted(ROOT.glob("*.ipynb"))
    for path in paths:
        t = time.perf_counter()
        nb = execute(path, small=args.small, timeout=args.timeout)
        nbformat.write(nb, path)
        print(f"{path.name}: {time.perf_counter() - t:.1f} s, {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
