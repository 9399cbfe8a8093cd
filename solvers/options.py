"""Options as objects: strategy families, and solver configurations as plain JSON.

A *mode* of a solver (how E-MSA's inner problem is maximized, which optax optimizer gradient
descent runs) is a small frozen pytree dataclass (:func:`controlnet.pytrees.pytree_dataclass`)
carrying its own numbers and checking them when built, as diffrax takes
``stepsize_controller=PIDController(...)``. The modes that can stand in one place form a
*family*: a base class derived from :class:`Family`; each concrete member has a class attribute
``name`` and is found by it in ``Base.registry``::

    class InnerMethod(Family): ...             # the family (abstract)

    @pytree_dataclass
    class Newton(InnerMethod):                  # a member: final, fields and checks in one place
        name: ClassVar[str] = "newton"
        hessian_samples: int | None = static_field(default=128)

    InnerMethod.registry["newton"] is Newton

:func:`to_json` and :func:`from_json` turn a solver (or any such object) into a JSON mapping and
back: ``{"name": "emsa", "rho": 5.0, "inner": {"name": "newton", "hessian_samples": 128}}``.
This is how a run spec stores a solver and how the command line builds one.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, ClassVar

import jax
import numpy as np

__all__ = ["Family", "to_json", "from_json", "checked_number"]


def checked_number(owner, name, v, *, low=0.0, strict=True, upper=None):
    """``v`` as a Python float, refused unless finite and above ``low`` (below ``upper``); a
    traced value passes unchecked (its value is not known)."""
    if isinstance(v, jax.core.Tracer):
        return v
    ok = isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(float(v))
    ok = ok and (float(v) > low if strict else float(v) >= low) and (upper is None or float(v) < upper)
    if not ok:
        bound = f"> {low}" if strict else f">= {low}"
        bound += f" and < {upper}" if upper is not None else ""
        raise ValueError(f"{owner} {name} must be a finite number {bound}, got {v!r}")
    return float(v)


class Family:
    """Base of a family of strategy objects; a direct subclass *is* a family and gets its own
    ``registry`` (name -> class), which every concrete member (a subclass with ``name``) joins."""

    registry: ClassVar[dict[str, type]]
    name: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if Family in cls.__bases__:
            cls.registry = {}
        elif "name" in cls.__dict__:
            family = next(b for b in cls.__mro__[1:] if Family in b.__bases__)
            if cls.name in family.registry and family.registry[cls.name] is not cls:
                raise TypeError(f"{family.__name__} already has a member named {cls.name!r}")
            family.registry[cls.name] = cls

    @classmethod
    def family(cls) -> type:
        """The family this class belongs to (itself, for a family base)."""
        return next(b for b in cls.__mro__ if Family in b.__bases__)


def _jsonable(v):
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return to_json(v)
    if isinstance(v, (bool, str)) or v is None:
        return v
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)) or (hasattr(v, "shape") and np.ndim(v) == 0):
        return float(v)
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    raise TypeError(f"{v!r} ({type(v).__name__}) has no JSON form; pass a number, a string, a bool, "
                    f"None or a strategy object")


def to_json(obj) -> dict:
    """``obj`` (a frozen dataclass: a solver, a strategy) as a JSON mapping: its ``name`` (if its
    class has one) and every init field, strategies nested the same way."""
    out = {"name": type(obj).name} if isinstance(getattr(type(obj), "name", None), str) else {}
    for f in dataclasses.fields(obj):
        if f.init:
            out[f.name] = _jsonable(getattr(obj, f.name))
    return out


def _field_family(cls, field) -> type | None:
    """The :class:`Family` a field of ``cls`` holds, from its annotation or its default."""
    hints = typing.get_type_hints(cls)
    for t in (hints.get(field.name), type(field.default)):
        for c in (t, *typing.get_args(t)):
            if isinstance(c, type) and issubclass(c, Family):
                return c.family()
    return None


def from_json(registry: dict[str, type], spec: dict) -> Any:
    """The object a :func:`to_json` mapping describes, its class looked up by ``spec["name"]`` in
    ``registry``; nested strategy mappings are built through their family's registry. Unknown
    names and fields are refused with the choices."""
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(f"expected a mapping with a 'name' (one of {sorted(registry)}), got {spec!r}")
    name = spec["name"]
    if name not in registry:
        raise ValueError(f"unknown name {name!r}; choose one of {sorted(registry)}")
    cls = registry[name]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in spec.items():
        if key == "name":
            continue
        if key not in fields:
            raise ValueError(f"{cls.__name__} ({name!r}) has no option {key!r}; its options are {sorted(fields)}")
        family = _field_family(cls, fields[key])
        if family is not None and isinstance(value, dict):
            value = from_json(family.registry, value)
        elif family is not None and isinstance(value, str):
            value = from_json(family.registry, {"name": value})
        kwargs[key] = value
    return cls(**kwargs)
