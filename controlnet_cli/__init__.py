"""The ``controlnet`` command line: the application layer, above the core and the solvers.

``controlnet_cli`` may import everything (:mod:`controlnet`, :mod:`problems`, :mod:`solvers`);
nothing imports it back (``tests/test_architecture.py``). The console script ``controlnet`` is
:func:`main`; ``python -m controlnet_cli`` runs the same.
"""

from .app import build_parser, main

__all__ = ["main", "build_parser"]
