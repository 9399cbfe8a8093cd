"""Frozen dataclasses that are pytrees: numbers are leaves, structure is static.

A configuration object (a control problem, a solver, a solver's strategy such as
``inner=Newton(...)``) is a frozen dataclass whose fields are of two kinds, as equinox marks them:

- *data* (the default): a number or array (a learning rate, ``ρ``, a penalty weight, the data),
  or a nested pytree (a strategy object). It is a leaf, so ``jax.jit`` traces it: a study over
  its values compiles once.
- *static* (``static_field(...)``): what changes the program (a count, a shape, a mode, a class).
  It is part of the tree's structure, so it must be hashable, and two objects with different
  static fields compile separately.

Two equal configurations compare equal (dataclass equality), so they have the same structure and
hit the same compiled program. Unflattening does not call ``__init__``: leaves may then be
tracers, and validation belongs to construction time.
"""

from __future__ import annotations

import dataclasses

import jax

__all__ = ["pytree_dataclass", "static_field", "is_static"]


def static_field(**kwargs):
    """A dataclass field that is part of the pytree's structure, not a leaf (``dataclasses.field``'s
    arguments, e.g. ``default=``)."""
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata["static"] = True
    return dataclasses.field(metadata=metadata, **kwargs)


def is_static(field: dataclasses.Field) -> bool:
    """Whether a dataclass field was declared with :func:`static_field`."""
    return bool(field.metadata.get("static", False))


def pytree_dataclass(cls=None, *, frozen: bool = True):
    """Make ``cls`` a (frozen) dataclass and register it as a pytree (``cls`` may already be one:
    stacking ``@dataclasses.dataclass(frozen=True)`` under it lets documentation tools see the
    fields as the constructor's parameters).

    Fields declared with :func:`static_field` are the tree's auxiliary data; every other field
    (``init=False`` ones included) is a child. ``ClassVar`` attributes are not fields.
    """

    def wrap(cls):
        if not dataclasses.is_dataclass(cls) or "__dataclass_fields__" not in cls.__dict__:
            cls = dataclasses.dataclass(frozen=frozen)(cls)
        fields = dataclasses.fields(cls)
        data = tuple(f.name for f in fields if not is_static(f))
        meta = tuple(f.name for f in fields if is_static(f))

        def flatten_with_keys(obj):
            children = tuple((jax.tree_util.GetAttrKey(n), getattr(obj, n)) for n in data)
            return children, tuple(getattr(obj, n) for n in meta)

        def flatten(obj):
            return tuple(getattr(obj, n) for n in data), tuple(getattr(obj, n) for n in meta)

        def unflatten(aux, children):
            obj = object.__new__(cls)
            for name, value in zip(meta, aux):
                object.__setattr__(obj, name, value)
            for name, value in zip(data, children):
                object.__setattr__(obj, name, value)
            return obj

        jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
        return cls

    return wrap if cls is None else wrap(cls)
