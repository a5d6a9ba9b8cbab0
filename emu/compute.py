"""Roofline time of matmuls and memory-bound kernels with a smooth efficiency curve.

A matmul (m x k) @ (k x n) does 2 m n k FLOPs and moves (m k + k n + m n) elements. Its time
is the larger of the compute time at the achievable rate and the HBM time:

    eff(m, n, k) = matmul_efficiency / (1 + matmul_half_dim * (1/m + 1/n + 1/k))
    t = max(2 m n k / (peak * eff * scale), bytes / (hbm_bytes_per_s * hbm_efficiency))
        + overhead

with scale = 1, or the chip's `grouped_matmul_efficiency` for the routed experts' grouped
GEMMs (`emu.step`).

Efficiency rises smoothly with every dimension (no step tables), so gradients with respect to
shapes and chip parameters exist everywhere. Source of the roofline form: "How To Scale Your
Model", "Rooflines" chapter.

>>> import jax.numpy as jnp
>>> from emu.hardware import example_chip
>>> chip = example_chip()
>>> t = matmul_time(chip, jnp.float32(8192), jnp.float32(8192), jnp.float32(8192), "bf16")
>>> round(2 * 8192.0**3 / float(t) / 1e12)   # achieved TFLOP/s of a large bf16 GEMM
723
"""

from __future__ import annotations

from emu._backend import jnp
from emu.hardware import Chip, peak_flops
from emu.numerics import safe_div
from emu.units import BYTES_PER_ELEMENT

__all__ = [
    "matmul_efficiency",
    "matmul_time",
    "memory_time",
    "attention_time",
    "windowed_causal_fraction",
    "peak_flops",
    "LOW_PRECISIONS",
]

#: precisions whose matmuls reach `lowp_matmul_efficiency` of their peak (scaling, casting
#: and amax overheads), the others `matmul_efficiency`
LOW_PRECISIONS = ("fp8", "int8", "fp4")
#: flash attention's causal mask skips half of the s_q x s_kv scores
_CAUSAL_FRACTION = 0.5


def windowed_causal_fraction(window, s_kv):
    """Share of the s_kv^2 query-key pairs a causal pass with a sliding window of `window`
    keys scores: r (1 - r/2), r = min(window / s_kv, 1) (the sum over positions i of
    min(i, w) = w s - w (w - 1) / 2 ~ s^2 r (1 - r/2); 1/2 once the window spans the
    sequence)."""
    r = jnp.minimum(safe_div(window, s_kv, 1.0), 1.0)
    return r * (1.0 - 0.5 * r)


def matmul_efficiency(chip: Chip, m, n, k, precision: str = "bf16"):
    """Achievable fraction of peak for an (m, n, k) matmul (dimensionless):
    eff = top / (1 + matmul_half_dim (1/m + 1/n + 1/k)), top the chip's
    `lowp_matmul_efficiency` for LOW_PRECISIONS, else `matmul_efficiency` (calibrated)."""
    inv = safe_div(1.0, m) + safe_div(1.0, n) + safe_div(1.0, k)
    top = chip.lowp_matmul_efficiency if precision in LOW_PRECISIONS else chip.matmul_efficiency
    return top / (1.0 + chip.matmul_half_dim * inv)


def matmul_time(chip: Chip, m, n, k, precision: str, *, count=1.0, kernels=None, scale=1.0):
    """Seconds for `count` matmuls of shape (m, k) @ (k, n) at `precision` (module doc):
    count * max(2 m n k / (peak * eff * scale), (m k + k n + m n) bytes_el /
    (hbm_bytes_per_s * hbm_efficiency)) + kernels * kernel_overhead_s.

    Args: m, n, k matrix dimensions (elements); precision a name in emu.units.PRECISIONS;
      count how many such matmuls; kernels launches (default `count`: one each; a grouped
      GEMM runs many in one launch); scale multiplies the achievable rate (a grouped GEMM:
      the chip's `grouped_matmul_efficiency`).
    Returns: seconds, an array of the broadcast shape of the inputs.
    """
    flops = 2.0 * m * n * k
    rate = peak_flops(chip, precision) * matmul_efficiency(chip, m, n, k, precision) * scale
    t_compute = safe_div(flops, rate)
    nbytes = (m * k + k * n + m * n) * BYTES_PER_ELEMENT[precision]
    t_memory = safe_div(nbytes, chip.hbm_bytes_per_s * chip.hbm_efficiency)
    launches = count if kernels is None else kernels
    return count * jnp.maximum(t_compute, t_memory) + launches * chip.kernel_overhead_s


def memory_time(chip: Chip, nbytes, *, kernels=0.0):
    """Seconds for memory-bound kernels moving `nbytes` bytes through HBM, launched as
    `kernels` kernels: nbytes / (hbm_bytes_per_s * hbm_efficiency) + kernels *
    kernel_overhead_s.

    >>> from emu.hardware import example_chip
    >>> round(float(memory_time(example_chip(), 3.35e12 * 0.85)), 6)   # one second of HBM
    1.0
    """
    return safe_div(nbytes, chip.hbm_bytes_per_s * chip.hbm_efficiency) + (
        kernels * chip.kernel_overhead_s
    )


def attention_time(
    chip: Chip, s_q, s_kv, d_qk, d_v, heads, precision: str, *, causal=True, window=0.0
):  # fmt: skip
    """Seconds for one fused (flash) attention forward over `heads` heads.

    FLOPs 2 s_q s_kv (d_qk + d_v) per head (QK^T and AV), halved when causal; with a causal
    sliding window of w keys (`window` > 0) the scored share is r (1 - r/2), r = min(w / s_kv,
    1) (`windowed_causal_fraction`), and the keys a query block scans, min(w, s_kv), set
    the efficiency; HBM traffic only Q, K, V and O ((s_q + s_kv)(d_qk + d_v) per head: the
    s x s scores never leave the chip; Dao et al. 2022); efficiency from the matmul curve at
    (s_q, s_kv, d_qk); one kernel launch: max(FLOPs / (peak * eff), bytes / HBM) +
    kernel_overhead_s.

    Args: s_q queries and s_kv keys per head (tokens); d_qk, d_v head widths (elements);
      heads the number of (batch x head) pairs; precision of the matmuls; causal masking;
      window the sliding window's keys (0: none; causal passes only).
    Returns: seconds.
    """
    windowed = (jnp.asarray(window) > 0) if causal else False
    frac = _CAUSAL_FRACTION if causal else 1.0
    frac = jnp.where(windowed, windowed_causal_fraction(window, s_kv), frac)
    keys = jnp.where(windowed, jnp.minimum(window, s_kv), s_kv)
    flops = frac * 2.0 * s_q * s_kv * (d_qk + d_v) * heads
    rate = peak_flops(chip, precision) * matmul_efficiency(chip, s_q, keys, d_qk, precision)
    nbytes = (s_q + s_kv) * (d_qk + d_v) * heads * BYTES_PER_ELEMENT[precision]
    t_memory = safe_div(nbytes, chip.hbm_bytes_per_s * chip.hbm_efficiency)
    return jnp.maximum(safe_div(flops, rate), t_memory) + chip.kernel_overhead_s
