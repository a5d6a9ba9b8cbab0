"""Numerical helpers with finite gradients everywhere.

Exact forms (`safe_div`, `safe_pow`, `clip01`, `overlapped_sum`) are what the physics uses.
The smooth forms (`smooth_max`, `smooth_relu`, `smooth_ceil`) are for searches that relax
discrete or kinked quantities: each takes an explicit temperature in the units of its
argument (STYLE.md: report with exact max/ceil, search with smooth versions whose
temperature is relative to the scale).

>>> import jax, jax.numpy as jnp
>>> float(safe_div(1.0, 0.0))
0.0
>>> float(jax.grad(lambda x: safe_div(1.0, x))(0.0))
0.0
>>> round(float(smooth_max(jnp.float32(1.0), jnp.float32(3.0), temperature=0.01)), 3)
3.0
"""

from __future__ import annotations

import numpy as _np

from emu import _backend
from emu._backend import jax, jnp
from emu._npjax import _down

__all__ = [
    "safe_div",
    "safe_pow",
    "overlapped_sum",
    "smooth_max",
    "smooth_relu",
    "smooth_ceil",
    "clip01",
]

#: below this magnitude `overlapped_sum` adds its terms: dividing by a smaller one would
#: underflow float32 in the gradient (1/m^2)
_TINY_SUM = 1e-18
#: floor on a temperature, so a zero temperature divides by a tiny number instead of 0
_MIN_TEMPERATURE = 1e-30
#: where `smooth_ceil` steps up: this far above each integer (in units of x), so an exact
#: integer n maps to about n + 1/2 and n + 2 * offset already rounds up
_CEIL_OFFSET = 1e-3


def safe_div(num, den, default=0.0):
    """num / den, or `default` where den == 0, with finite gradients (double-where: the
    division never sees a zero, so its gradient is never inf * 0).

    Args: num, den arrays (broadcast); default the value where den == 0.
    Returns: an array of the broadcast shape.
    """
    den = jnp.asarray(den)
    ok = den != 0
    safe_den = jnp.where(ok, den, jnp.ones_like(den))
    return jnp.where(ok, num / safe_den, default)


def _safe_div_numpy(num, den, default=0.0):
    """`safe_div` on the NumPy backend: what its body computes there (`den` cast to float32
    first, as `jnp.asarray` does), NumPy called directly (the
    physics calls it ~400 times an evaluation, and the backend's float32 wrapper around
    each of its four calls was half of `emu run`'s evaluation time)."""
    den = _down(_np.asarray(den))  # float32, as the backend's jnp.asarray gives
    if den.ndim == 0 and den != 0 and _np.ndim(num) == 0 and _np.ndim(default) == 0:
        return _down(_np.asarray(num / den))  # most calls: one configuration's scalars
    ok = den != 0
    return _down(_np.where(ok, num / _np.where(ok, den, _np.float32(1.0)), default))


if _backend.is_numpy():  # the backend is fixed once physics modules import it
    safe_div = _safe_div_numpy  # noqa: F811


def safe_pow(base, exponent):
    """base ** exponent for base >= 0 as exp(exponent * log base), with finite gradients at
    base = 0 (where it returns 1 if exponent == 0, else 0).

    >>> float(safe_pow(jnp.float32(0.0), jnp.float32(0.0)))
    1.0
    """
    pos = base > 0
    safe = jnp.where(pos, base, 1.0)
    return jnp.where(pos, jnp.exp(exponent * jnp.log(safe)), jnp.where(exponent == 0, 1.0, 0.0))


def overlapped_sum(a, b, hiding):
    """Two costs that partly overlap, (a^q + b^q)^(1/q) with q = 1 / (1 - hiding), for
    a, b >= 0 and hiding in [0, 1) (clipped to [0, 0.99]): a + b at 0 (in series), towards
    max(a, b) as hiding approaches 1 (fully hidden). Computed relative to max(a, b); where
    that is below _TINY_SUM (0 included) it returns a + b, so values and gradients stay
    finite in float32.

    >>> round(float(overlapped_sum(jnp.float32(3.0), jnp.float32(4.0), 0.5)), 3)
    5.0
    >>> float(overlapped_sum(jnp.float32(3.0), jnp.float32(4.0), 0.0))
    7.0
    """
    q = safe_div(1.0, 1.0 - jnp.clip(hiding, 0.0, 0.99), 1.0)
    m = jnp.maximum(a, b)
    big = m > _TINY_SUM
    m_safe = jnp.where(big, m, 1.0)
    s = safe_pow(a / m_safe, q) + safe_pow(b / m_safe, q)
    return jnp.where(big, m_safe * safe_pow(s, safe_div(1.0, q)), a + b)


def smooth_max(a, b, *, temperature):
    """Log-sum-exp maximum, T log(exp(a/T) + exp(b/T)) >= max(a, b), within T log 2 of it;
    `temperature` T is in the units of a and b (make it relative to their scale)."""
    t = jnp.maximum(temperature, _MIN_TEMPERATURE)
    return t * jnp.logaddexp(a / t, b / t)


def smooth_relu(x, *, temperature):
    """Softplus with a temperature in the units of x: T log(1 + exp(x / T)) ~ max(x, 0)."""
    t = jnp.maximum(temperature, _MIN_TEMPERATURE)
    return t * jax.nn.softplus(x / t)


def smooth_ceil(x, *, temperature=0.1):
    """A differentiable staircase close to ceil(x):

        floor(x) + sigmoid((frac(x) - 1e-3) / temperature),   frac(x) = x - floor(x)

    Each step rises just above an integer, so it equals ceil(x) to within
    sigmoid(-(frac - 1e-3) / T) once frac(x) is a few temperatures away from 0; at an exact
    integer n it gives about n + 1/2. `temperature` is in the units of x.

    >>> [round(float(smooth_ceil(jnp.float32(v), temperature=0.01)), 3) for v in (0.3, 1.6)]
    [1.0, 2.0]
    """
    base = jnp.floor(x)
    frac = x - base
    return base + jax.nn.sigmoid((frac - _CEIL_OFFSET) / temperature)


def clip01(x):
    """x clipped to [0, 1] (a fraction)."""
    return jnp.clip(x, 0.0, 1.0)
