"""Throughput, efficiency and energy of a run: the outputs researchers optimise.

    tokens_per_s      = global_batch * seq_len / step_time
    tokens_per_joule  = tokens_per_s / power_w           (power_w: average IT power)
    mfu               = model_flops_per_token * tokens_per_s / (n_chips * peak[precision])

>>> from emu.topology import example_system
>>> from emu.workload import example_model
>>> from emu.parallelism import make_plan
>>> r = evaluate(example_system(), example_model(), make_plan(tp=8, global_batch=16,
...                                                            seq_len=8192))
>>> bool(0.2 < float(r.mfu) < 0.8), bool(r.feasible)
(True, True)
"""

from __future__ import annotations

import jax.numpy as jnp

from emu.hardware import peak_flops
from emu.numerics import safe_div
from emu.parallelism import Memory, Plan, memory, n_chips
from emu.power import PowerBreakdown, step_power
from emu.step import StepBreakdown, train_step
from emu.struct import dataclass
from emu.topology import System
from emu.workload import Model, model_flops_per_token

__all__ = ["RunResult", "evaluate", "tokens_per_joule", "tokens_per_s"]

Array = jnp.ndarray


@dataclass
class RunResult:
    """Everything `emu run` reports, as a pytree (SI units)."""

    n_chips: Array
    step_time_s: Array
    tokens_per_s: Array
    tokens_per_joule: Array
    power_w: Array
    facility_power_w: Array
    energy_per_step_j: Array
    mfu: Array
    feasible: Array
    breakdown: StepBreakdown
    memory: Memory
    power: PowerBreakdown


def evaluate(system: System, model: Model, plan: Plan) -> RunResult:
    """Training step time, memory, power and efficiency of `model` on `system` under `plan`."""
    b = train_step(system, model, plan)
    chips = n_chips(plan)
    mem = memory(model, plan, system.chip.hbm_bytes)
    total = b.total_s
    mm_frac = safe_div(b.matmul_s + b.attention_s + b.head_s, total)
    mem_frac = safe_div(b.memory_s + b.optimizer_s, total)
    comm_frac = safe_div(b.exposed_comm_s, total)
    pw = step_power(system, chips, matmul_frac=mm_frac, memory_frac=mem_frac, comm_frac=comm_frac)
    tokens = plan.global_batch * plan.seq_len
    tps = safe_div(tokens, total)
    peak = peak_flops(system.chip, plan.precision)
    mfu = safe_div(model_flops_per_token(model, plan.seq_len) * tps, chips * peak)
    return RunResult(
        n_chips=chips,
        step_time_s=total,
        tokens_per_s=tps,
        tokens_per_joule=safe_div(tps, pw.it_w),
        power_w=pw.it_w,
        facility_power_w=pw.facility_w,
        energy_per_step_j=pw.it_w * total,
        mfu=mfu,
        feasible=mem.feasible,
        breakdown=b,
        memory=mem,
        power=pw,
    )


def tokens_per_s(system: System, model: Model, plan: Plan):
    return evaluate(system, model, plan).tokens_per_s


def tokens_per_joule(system: System, model: Model, plan: Plan):
    return evaluate(system, model, plan).tokens_per_joule
