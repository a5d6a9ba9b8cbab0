"""Numerical helpers with finite gradients everywhere.

>>> import jax, jax.numpy as jnp
>>> float(safe_div(1.0, 0.0))
0.0
>>> float(jax.grad(lambda x: safe_div(1.0, x))(0.0))
0.0
>>> round(float(smooth_max(jnp.float32(1.0), jnp.float32(3.0), temperature=0.01)), 3)
3.0
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "safe_div",
    "safe_pow",
    "smooth_max",
    "smooth_relu",
    "smooth_ceil",
    "ste_round",
    "clip01",
]


def safe_div(num, den, default=0.0):
    """num / den, or `default` where den == 0, with finite gradients (double-where)."""
    den = jnp.asarray(den)
    ok = den != 0
    safe_den = jnp.where(ok, den, jnp.ones_like(den))
    return jnp.where(ok, num / safe_den, default)


def safe_pow(base, exponent):
    """base ** exponent for base >= 0 with finite gradients at base = 0 (0 ** 0 = 1)."""
    pos = base > 0
    safe = jnp.where(pos, base, 1.0)
    return jnp.where(pos, jnp.exp(exponent * jnp.log(safe)), jnp.where(exponent == 0, 1.0, 0.0))


def smooth_max(a, b, *, temperature):
    """Log-sum-exp max; `temperature` is in the units of a and b (make it relative)."""
    t = jnp.maximum(temperature, 1e-30)
    return t * jnp.logaddexp(a / t, b / t)


def smooth_relu(x, *, temperature):
    """softplus with a temperature in the units of x."""
    t = jnp.maximum(temperature, 1e-30)
    return t * jax.nn.softplus(x / t)


def smooth_ceil(x, *, temperature=0.1):
    """A differentiable staircase: floor(x) + sigmoid((frac(x) - 0.5)/temperature) shifted up."""
    base = jnp.floor(x)
    frac = x - base
    return base + jax.nn.sigmoid((frac - 1e-3) / temperature)


def ste_round(x):
    """Round in the forward pass, identity gradient (straight-through estimator)."""
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def clip01(x):
    return jnp.clip(x, 0.0, 1.0)
