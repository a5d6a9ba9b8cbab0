"""emu.numerics: exact helpers with finite gradients, smooth helpers close to the exact ones."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emu import _npjax, numerics
from emu.numerics import (
    clip01,
    overlapped_sum,
    safe_div,
    safe_pow,
    smooth_ceil,
    smooth_max,
    smooth_relu,
)


def test_safe_div_defaults_at_zero_with_finite_gradients():
    assert float(safe_div(6.0, 3.0)) == 2.0
    assert float(safe_div(1.0, 0.0, 7.0)) == 7.0
    g = jax.grad(lambda d: safe_div(1.0, d))(jnp.float32(0.0))
    assert float(g) == 0.0
    assert float(jax.grad(lambda d: safe_div(1.0, d))(jnp.float32(2.0))) == -0.25


@pytest.mark.parametrize(
    "num, den, default",
    [
        (6.0, 3.0, 0.0),
        (1.0, 0.0, 7.0),
        (np.float32(1.0), np.float32(3.0), 0.0),
        (np.float32(-2.5), np.float32(0.0), np.inf),
        (3, np.int32(2), 0.0),  # integers divide as floats
        (np.float32(1.0), np.float32(np.nan), 0.0),
        (np.asarray([3.0, -2.0, 5.0], np.float32), np.asarray([2.0, 0.0, -4.0], np.float32), 9.0),
        (np.float32(2.0), np.asarray([[1.0, 0.0]], np.float32), -1.0),  # broadcast
        (np.float32(3.6866052), 2.0406027842135877, 0.0),  # a Python float divisor
        (1.0, 0.0, 0),  # an integer default
        (np.float32(1.0), np.float32(2.0), np.asarray([5.0, 6.0], np.float32)),  # array default
        (np.float64(1.0) / 3.0, np.float32(7.0), 0.0),
    ],
)
def test_the_numpy_backends_safe_div_gives_the_same_values_and_dtype(num, den, default):
    """`emu run`'s NumPy backend divides through `_safe_div_numpy` (NumPy called directly,
    a scalar fast path): bit for bit what `safe_div`'s own body computes on that backend
    (`jnp` bound to `emu._npjax.numpy`), dtype and shape included."""
    body = types.FunctionType(
        safe_div.__code__, {**safe_div.__globals__, "jnp": _npjax.numpy}, "safe_div",
        safe_div.__defaults__,
    )  # fmt: skip
    want = np.asarray(body(num, den, default))
    got = np.asarray(numerics._safe_div_numpy(num, den, default))
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_safe_div_derivatives_match_the_quotient_rule_and_stay_finite_at_zero():
    num = jnp.asarray([3.0, -2.0, 5.0, 0.0], jnp.float32)
    den = jnp.asarray([2.0, 0.0, -4.0, 0.0], jnp.float32)
    ok = den != 0
    want_dn = jnp.where(ok, 1.0 / jnp.where(ok, den, 1.0), 0.0)
    want_dd = jnp.where(ok, -num / jnp.where(ok, den, 1.0) ** 2, 0.0)
    for default in (0.0, 7.0):
        f = lambda n, d, default=default: safe_div(n, d, default)  # noqa: E731
        np.testing.assert_array_equal(f(num, den), jnp.where(ok, num / den, default))
        dn, dd = jax.vmap(jax.grad(f, argnums=(0, 1)))(num, den)  # reverse mode
        np.testing.assert_allclose(dn, want_dn, rtol=1e-6)
        np.testing.assert_allclose(dd, want_dd, rtol=1e-6)
        fwd = jax.jvp(f, (num, den), (jnp.ones_like(num), jnp.ones_like(den)))[1]
        np.testing.assert_allclose(fwd, want_dn + want_dd, rtol=1e-6)
    # second order (d^2/dd^2 of 1/d = 2/d^3) and a traced default's own gradient
    assert float(jax.grad(jax.grad(lambda d: safe_div(1.0, d)))(jnp.float32(2.0))) == 0.25
    assert float(jax.grad(lambda z: safe_div(1.0, jnp.float32(0.0), z))(jnp.float32(3.0))) == 1.0
    assert np.isfinite(float(jax.grad(jax.grad(lambda d: safe_div(1.0, d)))(jnp.float32(0.0))))
    # broadcasting and integer inputs
    assert safe_div(jnp.float32(1.0), den).shape == (4,)
    assert float(safe_div(jnp.int32(3), jnp.int32(2))) == 1.5


def test_safe_pow_matches_power_and_is_finite_at_zero():
    x = jnp.asarray([0.0, 0.5, 2.0], jnp.float32)
    np.testing.assert_allclose(safe_pow(x, jnp.float32(3.0)), x**3, rtol=1e-6)
    assert float(safe_pow(jnp.float32(0.0), jnp.float32(0.0))) == 1.0
    g = jax.grad(lambda b: safe_pow(b, jnp.float32(0.5)))(jnp.float32(0.0))
    assert np.isfinite(float(g))


def test_clip01():
    np.testing.assert_allclose(clip01(jnp.asarray([-1.0, 0.3, 2.0])), [0.0, 0.3, 1.0], rtol=1e-7)


def test_smooth_variants_agree_with_exact_where_smooth_and_have_finite_gradients():
    x = jnp.linspace(-5.0, 5.0, 101, dtype=jnp.float32)
    away = jnp.abs(x) > 0.5
    t = 0.01
    assert np.allclose(
        smooth_max(x, 0.0, temperature=t)[away], jnp.maximum(x, 0.0)[away], atol=1e-3
    )
    assert np.allclose(smooth_relu(x, temperature=t)[away], jax.nn.relu(x)[away], atol=1e-3)
    # smooth_max is an upper bound within T log 2
    gap = smooth_max(x, 0.0, temperature=t) - jnp.maximum(x, 0.0)
    assert float(jnp.min(gap)) >= -1e-6 and float(jnp.max(gap)) <= t * np.log(2) + 1e-6
    for f in (
        lambda v: smooth_max(v, 0.0, temperature=0.01),
        lambda v: smooth_relu(v, temperature=0.01),
        lambda v: smooth_ceil(v, temperature=0.05),
    ):
        g = jax.vmap(jax.grad(f))(jnp.asarray([0.0, 1.0, 2.0, -1e-7], jnp.float32))
        assert np.isfinite(np.asarray(g)).all()


def test_overlapped_sum_runs_from_the_sum_to_the_larger_with_finite_gradients():
    a, b = jnp.float32(3.0), jnp.float32(4.0)
    assert float(overlapped_sum(a, b, 0.0)) == pytest.approx(7.0)
    # q = 1 / (1 - hiding) = 2: the Euclidean norm
    assert float(overlapped_sum(a, b, 0.5)) == pytest.approx(5.0, rel=1e-6)
    hs = jnp.linspace(0.0, 0.99, 34)
    v = np.asarray(jax.vmap(lambda h: overlapped_sum(a, b, h))(hs))
    assert (np.diff(v) < 0).all() and v[-1] == pytest.approx(4.0, rel=0.01)
    # bounded by the larger and the sum; one zero term leaves the other
    assert (v >= 4.0 - 1e-5).all() and (v <= 7.0 + 1e-5).all()
    assert float(overlapped_sum(jnp.float32(0.0), b, 0.3)) == pytest.approx(4.0, rel=1e-6)
    assert float(overlapped_sum(jnp.float32(0.0), jnp.float32(0.0), 0.3)) == 0.0
    # tiny magnitudes (a float32 gradient of 1/m^2 would underflow) add their terms
    assert float(overlapped_sum(jnp.float32(1e-20), jnp.float32(2e-20), 0.5)) == pytest.approx(
        3e-20
    )
    cases = ((0.0, 0.0, 0.3), (0.0, 2.0, 0.3), (3.0, 4.0, 0.0), (3.0, 4.0, 0.6), (1e-20, 0.0, 0.3))
    for args in cases:
        g = jax.grad(lambda x, y, h: overlapped_sum(x, y, h), argnums=(0, 1, 2))(
            *(jnp.float32(z) for z in args)
        )
        assert np.isfinite(np.asarray(g)).all(), args


def test_smooth_ceil_is_what_its_docstring_says():
    y = jnp.asarray([0.3, 1.6, 2.9], jnp.float32)
    assert np.allclose(smooth_ceil(y, temperature=0.01), jnp.ceil(y), atol=1e-2)
    # at an exact integer it sits half-way up the step that starts just above it
    assert float(smooth_ceil(jnp.float32(2.0), temperature=0.01)) == pytest.approx(
        2.0 + float(jax.nn.sigmoid(-0.1)), abs=1e-6
    )


def test_public_names_are_listed():
    assert set(numerics.__all__) == {
        "safe_div",
        "safe_pow",
        "overlapped_sum",
        "smooth_max",
        "smooth_relu",
        "smooth_ceil",
        "clip01",
    }
