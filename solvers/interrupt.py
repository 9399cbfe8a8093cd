"""Ctrl-C during a solve: the first stops it cleanly after the current call, a second at once."""

from __future__ import annotations

import signal
import threading

__all__ = ["SigintFlag"]


class SigintFlag:
    """Within the block, the first SIGINT only sets ``requested``; a second one raises
    ``KeyboardInterrupt`` (the caller's way out of a loop of solves)."""

    def __init__(self):
        self.requested = False
        self.installed = False
        self._old = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc):
        if self.installed:
            signal.signal(signal.SIGINT, self._old)
        return False
