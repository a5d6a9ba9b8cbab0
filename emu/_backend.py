"""The array backend of the physics: JAX (default), or plain NumPy for one configuration.

Every physics module imports `jax` and `jnp` from here (``from emu._backend import jax,
jnp``). Under the default backend they are the real `jax` and `jax.numpy`. Under the NumPy
backend they are `emu._npjax`: NumPy with JAX's float32 semantics (64-bit results come back
as 32-bit, no floating-point warnings) and the few JAX functions the physics calls on its
forward path (`lax.stop_gradient` is the identity, `lax.fori_loop` a Python loop, `jit` the
function itself). Nothing there can differentiate, vmap or compile: it exists so that a
process that evaluates one configuration (`emu run`, `emu compare`) need not import JAX,
which costs more than the whole answer (`experiments/bench_first_answer.py`).

The backend is chosen once per process, at the first import of a physics module: by
`select("numpy")` before that, or by the environment variable EMU_BACKEND (`jax` or
`numpy`). Later calls to `select` cannot change it (modules already hold their `jnp`);
they return the backend in force.

>>> name() in BACKENDS
True
"""

from __future__ import annotations

import os

__all__ = ["select", "name", "BACKENDS", "is_numpy"]

#: the backends: "jax" (jit, vmap, grad; the default) and "numpy" (forward evaluation only)
BACKENDS = ("jax", "numpy")

_name: str | None = None


def _env_choice(var: str, choices: tuple[str, ...], default: str, what: str) -> str:
    """The environment variable `var` as one of `choices` (case and spaces ignored),
    `default` when unset or empty; another value is a one-line ValueError."""
    value = os.environ.get(var, default).strip().lower() or default
    if value not in choices:
        raise ValueError(
            f"{var}={value!r} is not {what}; use one of {', '.join(choices)} (or unset it "
            f"for {default})."
        )
    return value


def _from_env() -> str:
    return _env_choice("EMU_BACKEND", BACKENDS, "jax", "a backend")


#: EMU_AOT's values (`emu.fast`: how an executable not yet on disk is handled); here, where
#: the command line can check the variable without importing JAX
AOT_MODES = ("auto", "eager", "sync", "off")


def aot_from_env() -> str:
    """EMU_AOT (AOT_MODES, case and spaces ignored), default "auto"; EMU_NO_AOT set means
    "off"; another value is refused (it used to fall back to "auto" silently)."""
    if os.environ.get("EMU_NO_AOT"):
        return "off"
    return _env_choice("EMU_AOT", AOT_MODES, "auto", "a mode")


def select(backend: str) -> str:
    """Choose the backend if no physics module has been imported yet; returns the backend
    in force (which is `backend` unless one was already chosen)."""
    global _name
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    if _name is None:
        _name = backend
        _bind()
    return _name


def name() -> str:
    """The backend in force ("jax" or "numpy"); chooses the default if none was chosen."""
    if _name is None:
        select(_from_env())
    return _name  # type: ignore[return-value]


def is_numpy() -> bool:
    """True under the NumPy backend (no jit, vmap or grad)."""
    return name() == "numpy"


def _bind() -> None:
    g = globals()
    if _name == "numpy":
        from emu import _npjax

        _npjax.quiet()
        g["jax"], g["jnp"] = _npjax, _npjax.numpy
    else:
        import jax
        import jax.numpy as jnp

        g["jax"], g["jnp"] = jax, jnp


def __getattr__(attr: str):
    """`jax` and `jnp` resolve the backend on first use (PEP 562)."""
    if attr in ("jax", "jnp"):
        name()
        return globals()[attr]
    raise AttributeError(f"module 'emu._backend' has no attribute {attr!r}")
