"""Seconds, watts and joules of an op table on a System: a pure JAX function of the system.

Each row of the table (see `emu.program.table`) is timed with emu's own functions (every
GEMM at a dense GEMM's rate: a traced program's op table does not say which GEMMs are an
MoE's grouped expert GEMMs, so `grouped_matmul_efficiency` does not apply):

    matmul      compute.matmul_time(chip, m, n, k, precision, count=batch x count,
                                    kernels=count)
    kernel      max(flops x share / (peak x matmul_efficiency(m, n, k)),
                    bytes / (hbm_bytes_per_s x hbm_efficiency)) + kernel_overhead_s
                (x count; share = 1/2 for causal kernels)
    memory      compute.memory_time(chip, bytes x count, kernels=count)
    collective  collectives.<kind>_time(system, bytes, group_size, stride=stride) x count
                (collective-permute: send_recv_time)

f32 matmuls run as TF32 at half the bf16 peak (dense TF32 is half of dense BF16 on
Hopper and Blackwell; an assumption on other chips).

The step is compute plus the communication that is not hidden:

    compute = matmul + kernels + memory
    exposed = sum_r (1 - overlap_r) T_r  (r = tp, cp, pp, ep)  +  max(0, T_dp - overlap_dp compute)
              + T_other + sum_async max(0, t_i - compute between start and done)
    step    = compute + exposed

where T_r sums the synchronous collectives whose mesh axes have role r (`table.ROLE_OF_AXIS`;
the overlap fractions are the system's calibrated `overlap`, as in `emu.step.train_step`), and
async collectives overlap the ops the program schedules between their start and done.
Power is `emu.power.step_power` with the matmul, memory and exposed-communication shares of
the step.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from emu import collectives, compute, power
from emu.hardware import peak_flops
from emu.numerics import safe_div
from emu.power import PowerBreakdown
from emu.program.table import COLLECTIVE_KINDS, OpTable
from emu.struct import dataclass
from emu.topology import System, rank_system

__all__ = ["ProgramBreakdown", "ProgramCost", "program_cost", "op_times"]

Array = jnp.ndarray

_FIELD = {
    "all-reduce": "all_reduce_s",
    "all-gather": "all_gather_s",
    "reduce-scatter": "reduce_scatter_s",
    "all-to-all": "all_to_all_s",
    "collective-permute": "collective_permute_s",
}


@dataclass
class ProgramBreakdown:
    """Seconds per step on one device. `compute_s` = `matmul_s` + `attention_s` (fused
    kernels: attention and other marked or custom kernels) + `memory_s` (memory-bound
    fusions); the collective fields are raw times per kind; `exposed_comm_s` the part of
    them not hidden behind compute; `total_s` = compute_s + exposed_comm_s."""

    matmul_s: Array
    attention_s: Array
    memory_s: Array
    compute_s: Array
    all_reduce_s: Array
    all_gather_s: Array
    reduce_scatter_s: Array
    all_to_all_s: Array
    collective_permute_s: Array
    comm_s: Array
    exposed_comm_s: Array
    total_s: Array


@dataclass
class ProgramCost:
    """A traced program on one system (SI units; per step). `op_time_s[i]` is the time of
    row i of the op table (all its executions), for the report's top ops."""

    n_devices: Array
    step_time_s: Array
    tokens_per_s: Array
    tokens_per_joule: Array
    power_w: Array
    facility_power_w: Array
    energy_per_step_j: Array
    breakdown: ProgramBreakdown
    power: PowerBreakdown
    op_time_s: Array


def _f(x) -> Array:
    return jnp.asarray(np.asarray(x, np.float32))


def _kernel_time(chip, table: OpTable, idx, precision: str):
    m, n, k = _f(table.m[idx]), _f(table.n[idx]), _f(table.k[idx])
    c = _f(table.count[idx])
    flops = _f(table.flops[idx] * table.flop_share[idx])
    p = "bf16" if precision == "tf32" else precision
    peak = peak_flops(chip, p) * (0.5 if precision == "tf32" else 1.0)
    rate = peak * compute.matmul_efficiency(chip, m, n, k, p)
    t_c = safe_div(flops, rate)
    t_m = safe_div(_f(table.bytes[idx]), chip.hbm_bytes_per_s * chip.hbm_efficiency)
    return c * (jnp.maximum(t_c, t_m) + chip.kernel_overhead_s)


def _tf32_matmul_time(chip, m, n, k, count, kernels):
    # compute.matmul_time's roofline with TF32 = half the bf16 peak and 4-byte elements
    rate = 0.5 * peak_flops(chip, "bf16") * compute.matmul_efficiency(chip, m, n, k, "bf16")
    t_c = safe_div(2.0 * m * n * k, rate)
    t_m = safe_div((m * k + k * n + m * n) * 4.0, chip.hbm_bytes_per_s * chip.hbm_efficiency)
    return count * jnp.maximum(t_c, t_m) + kernels * chip.kernel_overhead_s


def op_times(system: System, table: OpTable, *, algorithm: str = "hierarchical") -> Array:
    """Seconds per step of every row of `table` on `system` (0 for uncosted rows), a device
    being a rank of the system (`topology.rank_system`)."""
    system = rank_system(system)
    chip = system.chip
    t = jnp.zeros(len(table.ops), jnp.float32) + 0.0 * chip.hbm_bytes_per_s
    for prec in table.precisions:
        idx = table.index("matmul", precision=prec)
        m, n, k = _f(table.m[idx]), _f(table.n[idx]), _f(table.k[idx])
        c = _f(table.count[idx])
        count = c * _f(table.batch[idx])
        if prec == "tf32":
            ti = _tf32_matmul_time(chip, m, n, k, count, c)
        else:
            ti = compute.matmul_time(chip, m, n, k, prec, count=count, kernels=c)
        t = t.at[idx].set(ti)
    for prec in table.kernel_precisions:
        idx = table.index("kernel", precision=prec)
        t = t.at[idx].set(_kernel_time(chip, table, idx, prec))
    idx = table.index("memory")
    if len(idx):
        c = _f(table.count[idx])
        t = t.at[idx].set(compute.memory_time(chip, _f(table.bytes[idx]) * c, kernels=c))
    for kind in COLLECTIVE_KINDS:
        idx = table.index("collective", collective=kind)
        if not len(idx):
            continue
        nbytes, size = _f(table.bytes[idx]), _f(table.group_size[idx])
        stride, c = _f(table.stride[idx]), _f(table.count[idx])
        if kind == "all-reduce":
            ti = collectives.all_reduce_time(
                system, nbytes, size, stride=stride, algorithm=algorithm
            )
        elif kind == "all-gather":
            ti = collectives.all_gather_time(
                system, nbytes, size, stride=stride, algorithm=algorithm
            )
        elif kind == "reduce-scatter":
            ti = collectives.reduce_scatter_time(
                system, nbytes, size, stride=stride, algorithm=algorithm
            )
        elif kind == "all-to-all":
            ti = collectives.all_to_all_time(system, nbytes, size, stride=stride)
        else:
            ti = jnp.where(
                size > 1.5, collectives.send_recv_time(system, nbytes, stride=stride), 0.0
            )
        t = t.at[idx].set(ti * c)
    return t


def program_cost(
    system: System,
    table: OpTable,
    *,
    tokens_per_step: float = 0.0,
    algorithm: str = "hierarchical",
) -> ProgramCost:
    """Step time, breakdown, power and energy of the traced program on `system` (see the
    module doc). Pure jnp: jit, vmap over stacked systems and grad all work. A device of the
    program is a rank of the system (`topology.rank_system`: one die of a CloudMatrix 384's
    910C, with its share of FLOP/s, HBM, links and watts), as a JAX device is on Ascend."""
    system = rank_system(system)
    t = op_times(system, table, algorithm=algorithm)
    kinds = table.kind

    def total(mask) -> Array:
        return jnp.sum(jnp.where(_f(mask) > 0, t, 0.0))

    matmul = total(kinds == "matmul")
    kernels = total(kinds == "kernel")
    memory = total(kinds == "memory")
    comp = matmul + kernels + memory
    per_kind = {_FIELD[k]: total(np.array([o.collective == k for o in table.ops])) for k in _FIELD}
    is_async = np.array([o.kind == "collective" and o.is_async for o in table.ops])
    ov = system.overlap
    exposed = jnp.zeros_like(comp)
    # a traced program is priced with the training overlaps (a serving program's TP
    # all-reduces would be fully exposed: emu.step.SERVING_TP_OVERLAP)
    for role, frac in (("tp", ov.tp), ("cp", ov.cp), ("pp", ov.pp), ("ep", ov.ep)):
        mask = np.array([o.kind == "collective" and o.role == role for o in table.ops])
        exposed = exposed + (1.0 - frac) * total(mask & ~is_async)
    dp = total(np.array([o.kind == "collective" and o.role == "dp" for o in table.ops]) & ~is_async)
    exposed = exposed + jnp.maximum(dp - ov.dp * comp, 0.0)
    other = np.array([o.kind == "collective" and o.role == "other" for o in table.ops])
    exposed = exposed + total(other & ~is_async)
    for i in np.nonzero(is_async)[0]:
        window = np.asarray(table.ops[i].window, np.int32)
        hidden = jnp.sum(t[window]) if len(window) else 0.0
        exposed = exposed + jnp.maximum(t[i] - hidden, 0.0)
    step = comp + exposed
    n = jnp.float32(table.n_devices)
    pw = power.step_power(
        system,
        n,
        matmul_frac=safe_div(matmul + kernels, step),
        memory_frac=safe_div(memory, step),
        comm_frac=safe_div(exposed, step),
    )
    tps = safe_div(jnp.float32(tokens_per_step), step)
    breakdown = ProgramBreakdown(
        matmul_s=matmul,
        attention_s=kernels,
        memory_s=memory,
        compute_s=comp,
        comm_s=sum(per_kind.values()),
        exposed_comm_s=exposed,
        total_s=step,
        **per_kind,
    )
    return ProgramCost(
        n_devices=n,
        step_time_s=step,
        tokens_per_s=tps,
        tokens_per_joule=safe_div(tps, pw.it_w),
        power_w=pw.it_w,
        facility_power_w=pw.facility_w,
        energy_per_step_j=pw.it_w * step,
        breakdown=breakdown,
        power=pw,
        op_time_s=t,
    )
