"""Helpers for the tests that run `controlnet` in child processes."""

import time


def wait_for_file(path, proc, timeout=300.0, what="file"):
    """Wait until ``path`` exists while ``proc`` runs; fail if it ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.02)
