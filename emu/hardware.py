"""Chips, hosts and facilities as pytrees.

A `Chip` carries its dense peak FLOP/s per precision (0 where the chip lacks the precision),
HBM capacity and bandwidth, power (idle and TDP) and the shared, calibrated parameters of its
achievable-efficiency curves. All bandwidths are per chip; SI units throughout.

>>> chip = example_chip()
>>> round(float(peak_flops(chip, "bf16")) / 1e12)
989
"""

from __future__ import annotations

import jax.numpy as jnp

from emu.struct import dataclass, static_field
from emu.units import PRECISIONS

__all__ = ["Chip", "Host", "Facility", "Overlap", "peak_flops", "example_chip", "example_overlap"]

Array = jnp.ndarray


@dataclass
class Chip:
    """One accelerator package.

    Fields (SI): `peak_flops_per_s` maps each precision in `emu.units.PRECISIONS` to dense
    peak FLOP/s (0 = unsupported); `hbm_bytes`, `hbm_bytes_per_s` (aggregate, one direction);
    `tdp_w` (board power at full load), `idle_w`.

    Efficiency (calibrated per chip family, dimensionless unless stated):
    `matmul_efficiency` is the asymptotic fraction of peak reached by large matmuls;
    `lowp_matmul_efficiency` the same for 8- and 4-bit matmuls (fraction of *their* peak:
    scaling, casting and amax overheads make FP8 reach a smaller fraction);
    `matmul_half_dim` (elements) sets how fast efficiency rises with matrix size:
    eff(m, n, k) = matmul_efficiency / (1 + matmul_half_dim * (1/m + 1/n + 1/k));
    `hbm_efficiency` is the achievable fraction of HBM bandwidth for memory-bound kernels;
    `kernel_overhead_s` is the fixed cost of one kernel launch.

    Power: dynamic power (tdp_w - idle_w) is scaled by the activity of the step:
    `matmul_power` while tensor cores run, `memory_power` during memory-bound kernels,
    `comm_power` while the chip only waits on communication.
    """

    name: str = static_field()
    family: str = static_field(default="")
    peak_flops_per_s: dict
    hbm_bytes: Array
    hbm_bytes_per_s: Array
    tdp_w: Array
    idle_w: Array
    matmul_efficiency: Array
    lowp_matmul_efficiency: Array
    matmul_half_dim: Array
    hbm_efficiency: Array
    kernel_overhead_s: Array
    matmul_power: Array
    memory_power: Array
    comm_power: Array


@dataclass
class Host:
    """Everything in a node besides accelerators and network, attributed per chip.

    `cpus_per_chip` CPUs of `cpu_w` each (average power under an LLM job, including their
    memory where the source says so); `other_w_per_chip` for fans, DRAM, boards, storage and
    management (a stated assumption where no source gives it).
    """

    cpus_per_chip: Array
    cpu_w: Array
    other_w_per_chip: Array


@dataclass
class Facility:
    """Power conversion and cooling.

    `psu_efficiency` converts DC load to AC input (IT power = DC load / psu_efficiency);
    `pue` multiplies IT power into facility power (reported separately; `power_w` is IT).
    """

    psu_efficiency: Array
    pue: Array


@dataclass
class Overlap:
    """Fractions (0..1) of each communication kind that the frameworks hide behind compute:
    `tp` (TP collectives overlapped with GEMMs), `dp` (gradient reduce-scatter and parameter
    all-gather overlapped with one micro-batch of compute), `pp` (pipeline send/recv), `cp`
    (context-parallel KV exchange overlapped with attention), `ep` (MoE dispatch/combine
    overlapped without an explicit two-micro-batch schedule), `ep_tbo` (the share of
    min(all-to-all, compute) that a two-micro-batch / DualPipe schedule hides), `pipelining`
    (the share of the non-bottleneck stages of a hierarchical collective hidden behind its
    slowest stage by chunked pipelining). Not a fraction: `host_kernel_s` (seconds), the
    host-side cost of issuing one kernel from a training framework (Python dispatch, FP8
    scaling bookkeeping, CUDA launch). The host runs ahead of the GPU, so it costs time only
    when a micro-batch issues kernels faster than the GPU retires them (fine-grained MoE:
    per-expert GEMM and cast launches; see `emu.step`)."""

    tp: Array
    dp: Array
    pp: Array
    cp: Array
    ep: Array
    ep_tbo: Array
    pipelining: Array
    host_kernel_s: Array


def example_overlap() -> Overlap:
    f = jnp.float32
    return Overlap(
        tp=f(0.3),
        dp=f(0.9),
        pp=f(0.8),
        cp=f(0.9),
        ep=f(0.0),
        ep_tbo=f(0.5),
        pipelining=f(0.0),
        host_kernel_s=f(30e-6),
    )


def peak_flops(chip: Chip, precision: str) -> Array:
    """Dense peak FLOP/s of `chip` at `precision` (0 where unsupported)."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; known: {', '.join(PRECISIONS)}.")
    return chip.peak_flops_per_s[precision]


def example_chip() -> Chip:
    """An H100-SXM-like chip for examples and tests (facts §10, nominal)."""
    f = jnp.float32
    return Chip(
        name="example-h100",
        family="hopper",
        peak_flops_per_s={
            "bf16": f(989e12),
            "fp16": f(989e12),
            "fp8": f(1979e12),
            "int8": f(1979e12),
            "fp4": f(0.0),
        },
        hbm_bytes=f(80e9),
        hbm_bytes_per_s=f(3.35e12),
        tdp_w=f(700.0),
        idle_w=f(70.0),
        matmul_efficiency=f(0.75),
        lowp_matmul_efficiency=f(0.6),
        matmul_half_dim=f(64.0),
        hbm_efficiency=f(0.85),
        kernel_overhead_s=f(4e-6),
        matmul_power=f(1.0),
        memory_power=f(0.6),
        comm_power=f(0.3),
    )
