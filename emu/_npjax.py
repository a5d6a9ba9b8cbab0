"""The NumPy backend (`emu._backend`): the part of JAX's API that emu's physics calls on its
forward path, on NumPy, with JAX's default float32 semantics.

- `numpy`: NumPy functions whose 64-bit results come back as float32 / int32 (JAX without
  x64: `asarray(1.0)` and `where(c, 1.0, 0.0)` are float32); `quiet()` turns floating-point
  warnings off (JAX computes inf and nan silently; `where` evaluates both branches in both).
- `lax.stop_gradient` (identity), `lax.fori_loop` (a loop), `nn.softplus|sigmoid|relu`.
- `tree_util`: flatten / unflatten / map over emu's pytrees (dataclasses whose fields say
  `pytree_node` in their metadata, dicts in sorted key order, lists, tuples, None).
- `jit` returns the function; `core.Tracer` is a class nothing is an instance of.

There is no `grad`, `vmap` or compilation here: code that needs them asks
`emu._backend.is_numpy()` first, and the CLI picks this backend only for commands that
evaluate single configurations.

>>> float(numpy.where(True, 1.0, 0.0)).__class__.__name__, numpy.asarray(1.0).dtype.name
('float', 'float32')
"""

from __future__ import annotations

import dataclasses
import functools
import types
from typing import Any

import numpy as _np

__all__ = ["numpy", "lax", "nn", "tree_util", "core", "jit", "config", "grad", "vmap"]

_F64, _I64 = _np.dtype(_np.float64), _np.dtype(_np.int64)
_I32 = _np.iinfo(_np.int32)


def quiet() -> None:
    """Floating-point warnings off for the process, as JAX computes inf and nan silently
    (`emu._backend` calls this when it binds NumPy)."""
    _np.seterr(all="ignore")


def _down(x):
    """float64 -> float32 and int64 -> int32 (JAX without x64), through tuples and lists."""
    if isinstance(x, _np.ndarray | _np.generic):
        if x.dtype == _F64:
            return x.astype(_np.float32)
        if x.dtype == _I64 and (x.size == 0 or (x.min() >= _I32.min and x.max() <= _I32.max)):
            return x.astype(_np.int32)  # (an int32 overflow stays int64 rather than wrap)
        return x
    if isinstance(x, tuple | list):
        return type(x)(_down(v) for v in x)
    return x


def _wrap(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        return _down(fn(*args, **kwargs))

    return call


def _asarray(x, dtype=None, **kwargs):
    a = _np.asarray(x, dtype=dtype, **kwargs)
    return a if dtype is not None else _down(a)


def _softplus(x):
    return _np.logaddexp(_np.float32(0.0), x)


def _sigmoid(x):
    return _down(_np.exp(-_np.logaddexp(_np.float32(0.0), -_np.asarray(x))))


def _relu(x):
    return _np.maximum(x, _np.float32(0.0))


class _Numpy(types.ModuleType):
    """`jnp`: NumPy with float32 defaults; attributes not listed fall back to NumPy's,
    wrapped the same way."""

    def __getattr__(self, attr: str):
        value = getattr(_np, attr)
        if callable(value) and not isinstance(value, type):
            value = _wrap(value)
        setattr(self, attr, value)
        return value


numpy = _Numpy("emu._npjax.numpy")
numpy.asarray = _asarray
numpy.array = _asarray
numpy.ndarray = _np.ndarray
numpy.float32, numpy.int32, numpy.bool_ = _np.float32, _np.int32, _np.bool_
numpy.inf, numpy.nan, numpy.pi = _np.inf, _np.nan, _np.pi
try:  # jnp.bfloat16 is ml_dtypes' type (a dependency of jax; cheap to import)
    import ml_dtypes as _ml

    numpy.bfloat16 = _ml.bfloat16
except ImportError:  # pragma: no cover - ml_dtypes comes with jaxlib
    pass


def _stop_gradient(x):
    return x


def _fori_loop(lower, upper, body, init):
    value = init
    for i in range(int(lower), int(upper)):
        value = body(i, value)
    return value


lax = types.SimpleNamespace(stop_gradient=_stop_gradient, fori_loop=_fori_loop)
nn = types.SimpleNamespace(softplus=_softplus, sigmoid=_sigmoid, relu=_relu)


class _Tracer:
    """Nothing is a tracer under NumPy."""


core = types.SimpleNamespace(Tracer=_Tracer)


def jit(fn=None, **_options):
    """The function itself (usable as `jit(f)`, `@jit` or `partial(jit, ...)`)."""
    return fn if fn is not None else (lambda f: f)


def _jax_only(what: str):
    def call(*_args, **_kwargs):
        raise RuntimeError(
            f"{what} needs the JAX backend, and this process runs emu on NumPy "
            "(EMU_BACKEND=numpy or `emu._backend.select`); unset EMU_BACKEND."
        )

    call.__name__ = what
    return call


grad = _jax_only("jax.grad")
value_and_grad = _jax_only("jax.value_and_grad")
jacrev = _jax_only("jax.jacrev")
vmap = _jax_only("jax.vmap")
eval_shape = _jax_only("jax.eval_shape")


def _update(*_args, **_kwargs) -> None:
    """JAX configuration has no meaning here."""


config = types.SimpleNamespace(update=_update)


# --- pytrees -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PyTreeDef:
    """The structure of a tree: a node kind, its static part and its children."""

    kind: str  # "leaf", "none", "tuple", "list", "dict", "dataclass"
    meta: Any = None  # dict keys; (class, names of data fields, static field values)
    children: tuple = ()

    @property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(c.num_leaves for c in self.children)


def _is_node(x) -> bool:
    return (
        x is None
        or isinstance(x, tuple | list | dict)
        or (dataclasses.is_dataclass(x) and not isinstance(x, type))
    )


def _flatten(x, leaves: list) -> PyTreeDef:
    if x is None:
        return PyTreeDef("none")
    if isinstance(x, tuple | list):
        kind = "list" if isinstance(x, list) else "tuple"
        meta = None if type(x) in (tuple, list) else type(x)
        return PyTreeDef(kind, meta, tuple(_flatten(v, leaves) for v in x))
    if isinstance(x, dict):
        keys = tuple(sorted(x))
        return PyTreeDef("dict", keys, tuple(_flatten(x[k], leaves) for k in keys))
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        data, static = [], []
        for f in dataclasses.fields(x):
            if f.metadata.get("pytree_node", True):
                data.append(f.name)
            else:
                static.append((f.name, getattr(x, f.name)))
        children = tuple(_flatten(getattr(x, n), leaves) for n in data)
        return PyTreeDef("dataclass", (type(x), tuple(data), tuple(static)), children)
    leaves.append(x)
    return PyTreeDef("leaf")


def _unflatten(d: PyTreeDef, it) -> Any:
    if d.kind == "leaf":
        return next(it)
    if d.kind == "none":
        return None
    items = [_unflatten(c, it) for c in d.children]
    if d.kind in ("tuple", "list"):
        if d.meta is None:
            return tuple(items) if d.kind == "tuple" else items
        return d.meta(*items)  # a named tuple
    if d.kind == "dict":
        return dict(zip(d.meta, items, strict=True))
    cls, names, static = d.meta
    obj = object.__new__(cls)
    for k, v in (*zip(names, items, strict=True), *static):
        object.__setattr__(obj, k, v)
    return obj


def tree_flatten(tree) -> tuple[list, PyTreeDef]:
    leaves: list = []
    return leaves, _flatten(tree, leaves)


def tree_unflatten(treedef: PyTreeDef, leaves) -> Any:
    return _unflatten(treedef, iter(leaves))


def tree_leaves(tree) -> list:
    return tree_flatten(tree)[0]


def tree_structure(tree) -> PyTreeDef:
    return tree_flatten(tree)[1]


def tree_map(fn, tree, *rest) -> Any:
    leaves, treedef = tree_flatten(tree)
    others = [tree_flatten(t)[0] for t in rest]
    return tree_unflatten(treedef, [fn(*xs) for xs in zip(leaves, *others, strict=True)])


tree_util = types.SimpleNamespace(
    tree_flatten=tree_flatten,
    tree_unflatten=tree_unflatten,
    tree_leaves=tree_leaves,
    tree_structure=tree_structure,
    tree_map=tree_map,
    PyTreeDef=PyTreeDef,
)
