"""The one pytree convention of emu, and field metadata beside the field.

`dataclass` is a keyword-only `flax.struct.dataclass`: every field is a pytree leaf
(a float32 array after `create`) unless declared with `static_field()`, which is for values
that change the *program* (names, enums, the number of network tiers).

`field(...)` declares a leaf together with its metadata (`FieldInfo`: bounds, unit, help);
`check(tree, where)` validates every leaf of a tree against the bounds declared beside it,
then the cross-field rules a class states in a `_cross_check(self, where, at)` method.

>>> import jax.numpy as jnp
>>> @dataclass
... class Link:
...     name: str = static_field()
...     bytes_per_s: jnp.ndarray = field("[1e6, 1e14]", unit="bytes/s", help="per direction")
>>> link = Link(name="nvlink", bytes_per_s=jnp.float32(4.5e11))
>>> round(float(replace(link, bytes_per_s=jnp.float32(9e11)).bytes_per_s) / 1e9)
900
>>> stack([link, link]).bytes_per_s.shape
(2,)
>>> check(replace(link, bytes_per_s=jnp.float32(0.5)), "link")
Traceback (most recent call last):
...
ValueError: link: bytes_per_s must be in [1e+06, 1e+14] bytes/s (got 0.5).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from emu._backend import is_numpy, jax, jnp

T = TypeVar("T")

__all__ = [
    "dataclass",
    "has_tracer",
    "is_concrete",
    "static_field",
    "field",
    "FieldInfo",
    "parse_bounds",
    "field_info",
    "info_at",
    "check",
    "check_value",
    "error",
    "replace",
    "stack",
    "float_leaves",
    "get_path",
    "set_path",
    "content_digest",
    "json_safe",
]

#: metadata key under which a field's FieldInfo is stored
_META = "emu"
#: float32 limits: emu computes in float32, so a value it cannot hold is an input error
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)  # smallest normal float32, 1.18e-38


def dataclass(cls: type[T]) -> type[T]:
    """A frozen, keyword-only pytree dataclass (flax.struct.dataclass; under the NumPy
    backend a plain frozen dataclass with the same `replace`, walked by `emu._npjax`)."""
    if is_numpy():
        out = dataclasses.dataclass(cls, frozen=True, kw_only=True)
        out.replace = lambda self, **changes: dataclasses.replace(self, **changes)
        return out
    import flax.struct

    return flax.struct.dataclass(cls, kw_only=True)


def _tree_field(*, pytree_node: bool, metadata: dict | None = None, **kwargs: Any) -> Any:
    """A dataclass field that says whether it is a leaf (`pytree_node`), as flax's does."""
    if is_numpy():
        return dataclasses.field(
            metadata={**(metadata or {}), "pytree_node": pytree_node}, **kwargs
        )
    import flax.struct

    return flax.struct.field(pytree_node=pytree_node, metadata=metadata, **kwargs)


def static_field(**kwargs: Any) -> Any:
    """A field that is part of the tree *structure*: changing it recompiles."""
    return _tree_field(pytree_node=False, **kwargs)


def _as_f32(v: float) -> float:
    """`v` rounded to float32 (infinite bounds stay infinite)."""
    return float(np.float32(v)) if math.isfinite(v) else v


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """What a field may hold, declared beside it.

    A leaf must be finite, a normal float32 (or 0), and lie in [lo, hi] (an end is excluded
    when `lo_open` / `hi_open`), be an integer when `integer`, or be exactly 0 when
    `zero_ok` ("0 = unsupported/off" fields such as a peak of an absent precision). A static
    field with `choices` must be one of them (`choices` may be a live registry: membership
    is read when checked). `unit` and `help` are for people (messages, CLI, docs).
    """

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    zero_ok: bool = False
    choices: Any = None
    unit: str = ""
    help: str = ""

    def admits(self, x: float) -> bool:
        """True when the number `x` is allowed (finite, in bounds, integral if required)."""
        if not math.isfinite(x):
            return False
        if self.zero_ok and x == 0:
            return True
        if self.integer and x != round(x):
            return False
        # the bounds as float32 stores them: a value at a bound that float32 cannot hold
        # exactly (0.01, 0.99) is stored rounded and must still be admitted
        lo, hi = _as_f32(self.lo), _as_f32(self.hi)
        above = x > lo if self.lo_open else x >= lo
        below = x < hi if self.hi_open else x <= hi
        return above and below

    def describe(self) -> str:
        """The rule in words, e.g. 'a positive integer' or 'in (0.5, 1]'."""
        if self.integer and self.lo == 1 and self.hi == math.inf:
            text = "a positive integer"
        elif self.integer and self.lo == 0 and self.hi == math.inf:
            text = "a non-negative integer"
        else:
            text = ("an integer " if self.integer else "") + _interval(self)
        if self.zero_ok:
            text = f"0 or {text}"
        if self.unit and text.endswith(" integer"):  # "a positive integer (sequences)"
            return f"{text} ({self.unit})"
        return f"{text} {self.unit}".rstrip() if self.unit else text


def _interval(info: FieldInfo) -> str:
    lo, hi = info.lo, info.hi
    if lo == -math.inf and hi == math.inf:
        return "finite"
    if hi == math.inf:
        return f"{'>' if info.lo_open else '>='} {lo:g}"
    if lo == -math.inf:
        return f"{'<' if info.hi_open else '<='} {hi:g}"
    return f"in {'(' if info.lo_open else '['}{lo:g}, {hi:g}{')' if info.hi_open else ']'}"


def parse_bounds(text: str) -> dict:
    """'(0, 1]' -> dict(lo=0.0, hi=1.0, lo_open=True, hi_open=False); 'inf' is allowed.

    >>> parse_bounds("[1, inf)")
    {'lo': 1.0, 'hi': inf, 'lo_open': False, 'hi_open': True}
    """
    s = text.strip()
    if len(s) < 5 or s[0] not in "[(" or s[-1] not in "])" or "," not in s:
        raise ValueError(f"bounds '{text}' must be an interval such as '(0, 1]' or '[1, inf)'.")
    lo, hi = (float(p) for p in s[1:-1].split(","))
    return dict(lo=lo, hi=hi, lo_open=s[0] == "(", hi_open=s[-1] == ")")


def field(
    bounds: str | None = None,
    *,
    integer: bool = False,
    zero_ok: bool = False,
    choices: Any = None,
    unit: str = "",
    help: str = "",
    static: bool = False,
    info: FieldInfo | None = None,
    **kwargs: Any,
) -> Any:
    """A dataclass field with its `FieldInfo`: `bounds` in interval notation ('(0, 1]',
    '[1, inf)'), `integer`, `zero_ok`, `choices` (static fields), `unit`, `help`.
    `static=True` makes it a static field; `info` passes a prepared FieldInfo (or subclass)
    instead. Other keyword arguments go to `dataclasses.field` (e.g. `default`)."""
    if info is None:
        span = parse_bounds(bounds) if bounds else {}
        info = FieldInfo(
            **span, integer=integer, zero_ok=zero_ok, choices=choices, unit=unit, help=help
        )
    return _tree_field(pytree_node=not static, metadata={_META: info}, **kwargs)


def field_info(cls_or_obj: Any) -> dict[str, FieldInfo]:
    """name -> FieldInfo of every field of a dataclass (or instance) that declares one."""
    return {
        f.name: f.metadata[_META] for f in dataclasses.fields(cls_or_obj) if _META in f.metadata
    }


def info_at(obj: Any, path: str) -> FieldInfo | None:
    """The FieldInfo that governs the leaf at dotted `path` of `obj` (see `float_leaves`):
    ``chip.tdp_w``, ``tiers.nvlink.bytes_per_s``, ``chip.peak_flops_per_s.bf16`` (a dict's
    entries share the field's info). None where no metadata is declared."""
    info = None
    for part in path.split("."):
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            f = {f.name: f for f in dataclasses.fields(obj)}.get(part)
            if f is None:
                return None
            info, obj = f.metadata.get(_META), getattr(obj, part)
        elif isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, tuple | list):
            obj = dict(_children(obj)).get(part)
        else:
            return None
    return info


def error(where: str, text: str) -> ValueError:
    """A ValueError reading '<where>: <text>' (just `text` when `where` is empty)."""
    return ValueError(f"{where}: {text}" if where else text)


def _fail(where: str, path: str, rule: str, x: float, *, echo: bool) -> ValueError:
    got = f"{path}={x:g}" if echo else f"{x:g}"
    return error(where, f"{path} must be {rule} (got {got}).")


def _check_numbers(values: np.ndarray, info: FieldInfo | None, where: str, path: str, echo: bool):
    for x in values.ravel().tolist():
        if info is not None and not info.admits(x):
            raise _fail(where, path, info.describe(), x, echo=echo)
        if not math.isfinite(x):
            raise _fail(where, path, "finite", x, echo=echo)
        if abs(x) > _F32_MAX or 0 < abs(x) < _F32_TINY:
            raise error(
                where,
                f"{path} = {x:g} is outside the float32 range emu computes in "
                f"(0 or magnitudes in [{_F32_TINY:.3g}, {_F32_MAX:.3g}]).",
            )


def has_tracer(*trees: Any) -> bool:
    """Whether any leaf of `trees` is a JAX tracer (inside jit, vmap or grad): the checks
    of concrete inputs skip traced ones."""
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(trees))


def is_concrete(*trees: Any) -> bool:
    """True when every leaf of `trees` is a concrete scalar (not a tracer, not a batch):
    the inputs that the concrete-input checks read one by one."""
    return not any(
        isinstance(x, jax.core.Tracer) or np.ndim(x) != 0 for x in jax.tree_util.tree_leaves(trees)
    )


def real_scalar(x: Any) -> float | None:
    """`x` as a float when it is one real number (Python, NumPy or a 0-d array; not a bool
    or a string), else None: the API's scalar arguments (chips, SLOs, counts)."""
    if isinstance(x, bool | str | bytes | complex | np.bool_) or np.ndim(x) != 0:
        return None
    if getattr(getattr(x, "dtype", None), "kind", "f") not in "iuf":  # bool, str, complex
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def check_value(value: Any, info: FieldInfo | None, where: str) -> float:
    """`value` as the float32 number emu would store, after checking it is one number (not a
    bool, a string or an array of several; a 0-d array is one), representable in float32
    (no overflow, no underflow to 0, no subnormal) and admitted by `info`. Raises
    ValueError naming `where`.

    >>> check_value(0.5, FieldInfo(lo=0, hi=1), "overlap.tp")
    0.5
    >>> check_value(1e-38, FieldInfo(lo=0, hi=1, lo_open=True), "efficiency")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: efficiency = 1e-38 is outside the float32 range emu computes in (0 or ...
    """
    x = real_scalar(value)  # a Python, NumPy or 0-d JAX number (not a bool or a string)
    if x is None:
        raise ValueError(
            f"{where} must be a number (got {type(value).__name__} {value!r}); "
            "write SI units as plain numbers, e.g. 9e11."
        )
    if math.isfinite(x) and (abs(x) > _F32_MAX or (x != 0 and float(np.float32(x)) == 0)):
        raise ValueError(f"{where} = {value!r} is outside the float32 range emu computes in.")
    _check_numbers(np.asarray([x]), info, "", where, echo=False)
    return float(np.float32(x))


def check(tree: T, where: str = "", *, echo: bool = False) -> T:
    """Validate every leaf of `tree` against the FieldInfo declared beside its field, then
    the cross-field rules of every dataclass node, children first: a class states them in a
    method `_cross_check(self, where, at)` that raises `error(where, ...)`, writing field
    names as `f"{at}tdp_w"` (`at` is the node's dotted path plus '.', or ''). Returns
    `tree`; raises ValueError naming `where` and the dotted path.

    Leaves must be finite and normal float32 numbers (or 0); static fields with `choices`
    must be one of them. Bounds are checked element-wise on batched trees; the cross-field
    rules read scalars (check one tree, then `stack`). `echo=True` repeats the name in the
    value (`(got tp=0)`), as the plan messages do.
    """
    _check_node(tree, None, where, "", echo)
    return tree


def _check_node(obj: Any, info: FieldInfo | None, where: str, path: str, echo: bool) -> None:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            sub = f"{path}.{f.name}" if path else f.name
            finfo = f.metadata.get(_META)
            value = getattr(obj, f.name)
            if not f.metadata.get("pytree_node", True):
                if finfo is not None and finfo.choices is not None:
                    if value not in finfo.choices:
                        known = ", ".join(finfo.choices)
                        raise error(where, f"unknown {sub} {value!r}; known: {known}.")
                continue
            _check_node(value, finfo, where, sub, echo)
        cross = getattr(obj, "_cross_check", None)
        if cross is not None:
            cross(where, f"{path}." if path else "")
    elif isinstance(obj, dict | tuple | list):
        for name, value in _children(obj):
            _check_node(value, info, where, f"{path}.{name}" if path else name, echo)
    elif obj is not None and not isinstance(obj, str):
        _check_numbers(np.asarray(obj, np.float64), info, where, path, echo)


def replace(obj: T, **changes: Any) -> T:
    """A copy of `obj` with `changes` (dataclasses.replace)."""
    return dataclasses.replace(obj, **changes)


def stack(objs: Sequence[T]) -> T:
    """Stack pytrees of identical structure along a new leading axis (for `vmap`)."""
    if not objs:
        raise ValueError("stack: got an empty sequence; pass at least one pytree.")
    first = jax.tree_util.tree_structure(objs[0])
    for i, o in enumerate(objs[1:], 1):
        if jax.tree_util.tree_structure(o) != first:
            field = _static_difference(objs[0], o)
            which = f"'{field}'" if field else "its static fields"
            raise ValueError(
                f"stack: element {i} differs from element 0 in {which} (a plan's phase, "
                "precision or algorithm; a system or model's name or structure): stack only "
                "trees that share them, and evaluate the groups separately."
            )
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *objs)


def _static_difference(a: Any, b: Any, prefix: str = "") -> str | None:
    """The dotted path of the first static field in which two trees differ (another type or
    a tier count: the path of the node), else None; children as `_children` names them."""
    if type(a) is not type(b):
        return prefix.rstrip(".") or None
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        for f in dataclasses.fields(a):
            if not f.metadata.get("pytree_node", True) and getattr(a, f.name) != getattr(b, f.name):
                return f"{prefix}{f.name}"
    kids_a, kids_b = list(_children(a)), list(_children(b))
    if len(kids_a) != len(kids_b):
        return prefix.rstrip(".") or None
    for (name, x), (_, y) in zip(kids_a, kids_b, strict=True):
        got = _static_difference(x, y, f"{prefix}{name}.")
        if got:
            return got
    return None


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
        raise ValueError(_unknown_path_message(path, leaves, obj))
    return leaves[path]


def _static_paths(obj: Any, prefix: str = "") -> set[str]:
    """Dotted paths of the static fields (structure: names, kinds) of a dataclass tree."""
    out: set[str] = set()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            if not f.metadata.get("pytree_node", True):
                out.add(f"{prefix}{f.name}")
    for name, value in _children(obj):
        out |= _static_paths(value, f"{prefix}{name}.")
    return out


def _unknown_path_message(
    path: str, leaves: dict[str, Any], obj: Any = None, prefix: str = ""
) -> str:
    """Why `path` cannot be set on `obj`, its paths spelled with `prefix` ("plan." where
    the caller's paths were `plan.<field>`)."""
    import difflib

    if obj is not None and path in _static_paths(obj):
        return (
            f"'{prefix}{path}' is a static field (the structure, not a number): it cannot be "
            "set by path; copy the catalog TOML, change it there and pass the file."
        )
    close = difflib.get_close_matches(path, list(leaves), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(prefix + c for c in close)}?" if close else ""
    return (
        f"unknown field path '{prefix}{path}'.{hint} "
        f"List the paths with `emu list --fields` ({len(leaves)} fields)."
    )


def set_path(obj: T, path: str, value: Any) -> T:
    """A copy of `obj` with the leaf at dotted `path` replaced by `value`."""
    leaves = float_leaves(obj)
    if path not in leaves:
        raise ValueError(_unknown_path_message(path, leaves, obj))
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

    h = hashlib.sha256(salt.encode())
    for t in trees:
        h.update(repr(jax.tree_util.tree_structure(t)).encode())
        for k, v in sorted(float_leaves(t).items()):
            h.update(k.encode())
            h.update(np.asarray(v, np.float32).tobytes())
    return h.hexdigest()[:16]


def json_safe(obj):
    """`obj` (dicts, lists, tuples, numbers, strings) with every non-finite float as None:
    JSON has no infinity or NaN, and a strict encoder (`allow_nan=False`) refused a whole
    result for one (an unbounded interval width, say). Every command's --json uses it."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj
