"""The one pytree convention of emu.

`dataclass` is a keyword-only `flax.struct.dataclass`: every field is a pytree leaf
(a float32 array after `create`) unless declared with `static_field()`, which is for values
that change the *program* (names, enums, the number of network tiers).

>>> import jax.numpy as jnp
>>> @dataclass
... class Link:
...     name: str = static_field()
...     bytes_per_s: jnp.ndarray
>>> link = Link(name="nvlink", bytes_per_s=jnp.float32(4.5e11))
>>> round(float(replace(link, bytes_per_s=jnp.float32(9e11)).bytes_per_s) / 1e9)
900
>>> stack([link, link]).bytes_per_s.shape
(2,)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import flax.struct
import jax
import jax.numpy as jnp

T = TypeVar("T")

__all__ = [
    "dataclass",
    "static_field",
    "replace",
    "stack",
    "float_leaves",
    "get_path",
    "set_path",
    "content_digest",
]


def dataclass(cls: type[T]) -> type[T]:
    """A frozen, keyword-only pytree dataclass (flax.struct.dataclass)."""
    return flax.struct.dataclass(cls, kw_only=True)


def static_field(**kwargs: Any) -> Any:
    """A field that is part of the tree *structure*: changing it recompiles."""
    return flax.struct.field(pytree_node=False, **kwargs)


def replace(obj: T, **changes: Any) -> T:
    """A copy of `obj` with `changes` (dataclasses.replace)."""
    return dataclasses.replace(obj, **changes)


def stack(objs: Sequence[T]) -> T:
    """Stack pytrees of identical structure along a new leading axis (for `vmap`)."""
    if not objs:
        raise ValueError("stack: got an empty sequence; pass at least one pytree.")
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *objs)


def _children(obj: Any) -> Iterator[tuple[str, Any]]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            if f.metadata.get("pytree_node", True):
                yield f.name, getattr(obj, f.name)
    elif isinstance(obj, dict):
        yield from ((str(k), v) for k, v in obj.items())
    elif isinstance(obj, tuple | list):
        for i, v in enumerate(obj):
            name = getattr(v, "name", None)
            yield (name if isinstance(name, str) else str(i)), v


def float_leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """All array leaves of `obj` keyed by dotted path, e.g. ``chip.hbm_bytes_per_s``.

    Tuple elements that have a `name` (network tiers) are addressed by that name:
    ``topology.scale_up.bytes_per_s``.
    """
    out: dict[str, Any] = {}
    for name, value in _children(obj):
        path = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(value) or isinstance(value, dict | tuple | list):
            out.update(float_leaves(value, path))
        else:
            out[path] = value
    return out


def get_path(obj: Any, path: str) -> Any:
    """The leaf at a dotted `path` (see `float_leaves`); ValueError names the known paths."""
    leaves = float_leaves(obj)
    if path not in leaves:
        raise ValueError(_unknown_path_message(path, leaves))
    return leaves[path]


def _unknown_path_message(path: str, leaves: dict[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(path, list(leaves), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return (
        f"unknown field path '{path}'.{hint} "
        f"List the paths with `emu list --fields` ({len(leaves)} fields)."
    )


def set_path(obj: T, path: str, value: Any) -> T:
    """A copy of `obj` with the leaf at dotted `path` replaced by `value`."""
    leaves = float_leaves(obj)
    if path not in leaves:
        raise ValueError(_unknown_path_message(path, leaves))
    head, _, rest = path.partition(".")
    return _set(obj, head, rest, value)


def _set(obj: Any, head: str, rest: str, value: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        child = getattr(obj, head)
        new = value if not rest else _set(child, *_split(rest), value)
        return dataclasses.replace(obj, **{head: new})
    if isinstance(obj, dict):
        new = value if not rest else _set(obj[head], *_split(rest), value)
        return {**obj, head: new}
    if isinstance(obj, tuple | list):
        items = list(obj)
        for i, v in enumerate(items):
            name = getattr(v, "name", None)
            if (name if isinstance(name, str) else str(i)) == head:
                items[i] = value if not rest else _set(v, *_split(rest), value)
        return type(obj)(items)
    raise ValueError(f"cannot set '{head}' on {type(obj).__name__}")


def _split(path: str) -> tuple[str, str]:
    head, _, rest = path.partition(".")
    return head, rest


def content_digest(*trees, salt: str = "") -> str:
    """A short digest of every value and of the structure of the given pytrees (and `salt`):
    checkpoints keyed by it never match a different configuration."""
    import hashlib

    import numpy as np

    h = hashlib.sha256(salt.encode())
    for t in trees:
        h.update(repr(jax.tree_util.tree_structure(t)).encode())
        for k, v in sorted(float_leaves(t).items()):
            h.update(k.encode())
            h.update(np.asarray(v, np.float32).tobytes())
    return h.hexdigest()[:16]
