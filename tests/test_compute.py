import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emu import compute
from emu.hardware import example_chip

CHIP = example_chip()
f32 = jnp.float32


def test_efficiency_rises_with_size():
    effs = [float(compute.matmul_efficiency(CHIP, f32(d), f32(d), f32(d))) for d in (64, 512, 8192)]
    assert effs[0] < effs[1] < effs[2] < float(CHIP.matmul_efficiency)


def test_small_matmul_is_memory_bound():
    # A (1 x 8192) @ (8192 x 8192) GEMV moves 134 MB; at 3.35 TB/s x 0.85 that is ~47 us.
    t = compute.matmul_time(CHIP, f32(1), f32(8192), f32(8192), "bf16")
    assert float(t) == pytest.approx(8192 * 8193 * 2 / (3.35e12 * 0.85) + 4e-6, rel=1e-3)


def test_gradient_matches_finite_difference_in_log_space():
    f = lambda d: jnp.log(compute.matmul_time(CHIP, d, d, d, "bf16"))
    d = 1024.0
    g = float(jax.grad(f)(f32(d))) * d
    h = 1e-2
    fd = (float(f(f32(d * np.exp(h)))) - float(f(f32(d * np.exp(-h))))) / (2 * h)
    assert g == pytest.approx(fd, rel=2e-2)


def test_fp8_uses_its_own_peak_and_efficiency():
    t16 = compute.matmul_time(CHIP, f32(8192), f32(8192), f32(8192), "bf16")
    t8 = compute.matmul_time(CHIP, f32(8192), f32(8192), f32(8192), "fp8")
    ratio = float(t16) / float(t8)
    expected = 2.0 * float(CHIP.lowp_matmul_efficiency) / float(CHIP.matmul_efficiency)
    assert ratio == pytest.approx(expected, rel=0.01)
