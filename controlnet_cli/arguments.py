"""Strict argument types for the command line: numbers, lists, and the parser that reports them.

Every type takes the text as typed and either returns the value or raises
``argparse.ArgumentTypeError`` with what was expected and the text itself; argparse prefixes
the option's name, and :class:`Parser` turns it into one line (``main`` prints
``controlnet: error: argument --horizons: ...`` and exits 2). Lists are comma-separated with no
empty entries (``1,,2`` and ``gd,`` are refused, not silently shortened), and refuse repeated
entries where a repeat means nothing (horizons, solver names).
"""

from __future__ import annotations

import argparse
import math
import re
import sys

import numpy as np

__all__ = [
    "UsageError", "Parser", "number", "comma_list",
    "seed", "positive_int", "positive_float", "nonneg_float", "batch_size", "name", "out_dir",
    "finite_float",
]

#: The largest number the CLI takes: float32's (the default computation dtype), or float64's with
#: ``--float64``. ``1e300`` is a finite Python float that becomes ``inf`` in float32; it is
#: refused as typed here, not as an ``inf`` later.
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT64_MAX = float(np.finfo(np.float64).max)
_limit = {"max": FLOAT32_MAX}


class UsageError(Exception):
    """Bad input found before any work starts."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``main`` prints them), not usage + exit."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # A value starting with "-" and a digit, "." or inf/nan ("-1e-3", "-1,2", "-inf") is a
        # value, so that it reaches its type check ("expected a positive number") instead of
        # being taken for an option; no option of ours starts that way.
        self._negative_number_matcher = re.compile(r"^-(\d|\.\d|inf|nan)", re.IGNORECASE)

    def parse_args(self, args=None, namespace=None):
        # The numbers' bound is the computation dtype's, which --float64 chooses.
        argv = sys.argv[1:] if args is None else list(args)
        _limit["max"] = FLOAT64_MAX if "--float64" in argv else FLOAT32_MAX
        return super().parse_args(argv, namespace)

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def number(convert, accept, expected: str):
    """An argparse type: ``convert`` the text, keep it if ``accept``, else say what was expected."""

    def parse(s):
        try:
            v = convert(s)
        except (ValueError, OverflowError):
            v = None
        if v is None or not accept(v):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {s!r}")
        return v

    return parse


def _finite(v: float) -> bool:
    return math.isfinite(v) and abs(v) <= _limit["max"]


class _Bound:
    """``at most <the current limit> (<dtype>)``, formatted when a message is made."""

    def __format__(self, spec):
        if _limit["max"] == FLOAT32_MAX:
            return f"at most {FLOAT32_MAX:.4g} (float32; --float64 allows up to {FLOAT64_MAX:.4g})"
        return f"at most {FLOAT64_MAX:.4g}"


def _number_in_range(accept, what: str, bounded: str):
    """A float type: ``expected <what>``, or ``expected <bounded> <the bound>`` when the number is
    beyond the computation dtype's largest."""

    def parse(s):
        try:
            return number(float, accept, what)(s)
        except argparse.ArgumentTypeError as e:
            try:
                too_big = abs(float(s)) > _limit["max"]
            except ValueError:
                too_big = False
            if not too_big:
                raise e from None
            raise argparse.ArgumentTypeError(f"expected {bounded} {_Bound()}, got {s!r}") from None

    return parse


seed = number(int, lambda v: 0 <= v < 2**31, "a seed in 0..2147483647")
positive_int = number(int, lambda v: 1 <= v < 2**31, "a positive integer below 2147483648")
positive_float = _number_in_range(lambda v: v > 0 and _finite(v), "a positive number", "a positive number")
nonneg_float = _number_in_range(lambda v: v >= 0 and _finite(v), "a number >= 0", "a number >= 0 and")
finite_float = _number_in_range(_finite, "a finite number", "a number")
name = number(str.strip, lambda v: re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", v) is not None, "a name")


def batch_size(s):
    """A positive integer, or ``full`` (the whole training set)."""
    if s == "full":
        return "full"
    try:
        return positive_int(s)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {s!r}") from None


def out_dir(s):
    """A directory path; empty text (which would mean the current directory) is refused."""
    from pathlib import Path

    if not s.strip():
        raise argparse.ArgumentTypeError(f"expected a directory, got {s!r}; pass e.g. runs/first")
    return Path(s)


def comma_list(item, *, what: str, unique: bool = True):
    """An argparse type for ``a,b,c``: every entry parsed by ``item``; no empty entry; with
    ``unique`` no entry twice. ``what`` names the entries in messages (``"horizons"``)."""

    def parse(s):
        parts = s.split(",")
        if any(not p.strip() for p in parts):
            raise argparse.ArgumentTypeError(f"empty entry in {s!r}; list the {what} separated by single commas")
        values = []
        for p in parts:
            try:
                values.append(item(p.strip()))
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentTypeError(f"entry {p.strip()!r} of {s!r}: {e}") from None
        if unique:
            seen = set()
            for p, v in zip(parts, values):
                if v in seen:
                    raise argparse.ArgumentTypeError(f"{s!r} lists {p.strip()!r} twice; list each of the {what} once")
                seen.add(v)
        return values

    return parse
