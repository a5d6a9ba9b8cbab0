"""Benchmark: emu vs llm-analysis on GPT-3 175B / A100 training, speed and accuracy.

    pip install 'cluster-emu[bench]'          # llm-analysis from PyPI
    python experiments/bench_llm_analysis.py

The GPT-3 175B rows of the shared measurements (Megatron on DGX A100: Korthikanti et al.
Table 5, Narayanan et al. SC21 Table 2) are predicted by both tools on the same parallel
configurations. Speed: llm-analysis's wall time per configuration (its `train` analysis,
one call each) against emu's per-configuration time in one jit + vmap batch of 1e5 such
configurations. Accuracy: each tool's predicted step time against the measurement;
llm-analysis runs with its defaults (peak efficiency) and with flops_efficiency = 0.5, a
typical value a user would set by hand (emu uses its calibrated shared parameters).
"""

from __future__ import annotations

import json
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from emu.catalog import load_system
from emu.objective import evaluate
from emu.struct import replace
from emu.validation import default_measurements, row_model, row_plan

ROWS = (
    "korth_t5_175B_full",
    "korth_t5_175B_seqsel",
    "sc21_t2_PTD-P_174.6B_384",
    "sc21_t2_PTD-P_174.6B_768",
    "sc21_t2_PTD-P_174.6B_1536",
)


def measured_step_s(row) -> float:
    if row["metric"] == "iteration_time":
        return float(row["value"])
    m, p = row["model"], row["parallel"]
    b, s, n_l, h, v = p["global_batch"], m["seq_len"], m["n_layers"], m["d_model"], m["vocab"]
    flops = 96 * b * s * n_l * h * h * (1 + s / (6 * h) + v / (16 * n_l * h))
    return flops / (row["value"] * 1e12 * row["n_chips"])


def main() -> None:
    from llm_analysis.analysis import train

    logging.disable(logging.WARNING)
    src = default_measurements()  # the shipped set (the same rows as ../shared's)
    rows = {r["id"]: r for r in map(json.loads, open(src)) if r["id"] in ROWS}
    system = load_system("dgx_a100")
    fn = jax.jit(evaluate)
    print(
        f"{'row':28} {'measured_s':>10} {'emu_s':>8} {'emu_err':>8} {'llm-an_s':>9} "
        f"{'llm-an_err':>10} {'llm-an@0.5_s':>12} {'err':>7}"
    )
    errs_emu, errs_la, errs_la5, la_times, plans, model = [], [], [], [], [], None
    for rid in ROWS:
        row = rows[rid]
        model = row_model(row)
        plan = row_plan(row, model).plan
        plans.append(plan)
        meas = measured_step_s(row)
        t_emu = float(fn(system, model, plan).step_time_s)
        rc = int(float(plan.recompute))  # llm-analysis: 0 none, 1 attention, 2 full
        kw = dict(
            model_name="megatron-lm-175b",
            gpu_name="a100-sxm-80gb",
            dtype_name="w16a16e16",
            log_level="ERROR",
            batch_size_per_gpu=int(float(plan.microbatch)),
            global_batch_size=int(float(plan.global_batch)),
            seq_len=2048,
            activation_recomputation=rc,
            tp_size=int(float(plan.tp)),
            pp_size=int(float(plan.pp)),
            dp_size=int(float(plan.dp)),
            total_num_gpus=int(float(plan.tp * plan.pp * plan.dp)),
            flash_attn=False,
        )
        t0 = time.perf_counter()
        t_la = float(train(**kw)["latency_per_iter"])
        la_times.append(time.perf_counter() - t0)
        t_la5 = float(train(**kw, flops_efficiency=0.5)["latency_per_iter"])
        e1, e2, e3 = (abs(t - meas) / meas for t in (t_emu, t_la, t_la5))
        errs_emu.append(e1)
        errs_la.append(e2)
        errs_la5.append(e3)
        print(
            f"{rid:28} {meas:10.3f} {t_emu:8.3f} {100 * e1:7.1f}% {t_la:9.3f} "
            f"{100 * e2:9.1f}% {t_la5:12.3f} {100 * e3:6.1f}%"
        )
    # speed: emu, one compiled vmapped call over 1e5 of these configurations
    n = 100_000
    batch = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *plans)
    idx = np.arange(n) % len(plans)
    big = jax.tree_util.tree_map(lambda x: x[idx], batch)
    big = replace(big, global_batch=big.global_batch)
    f = jax.jit(jax.vmap(lambda p: evaluate(system, model, p).step_time_s))
    f(big).block_until_ready()
    t0 = time.perf_counter()
    f(big).block_until_ready()
    emu_per = (time.perf_counter() - t0) / n
    la_per = float(np.mean(la_times))
    print(
        f"\nmedian |error|: emu {100 * np.median(errs_emu):.1f}%, llm-analysis "
        f"{100 * np.median(errs_la):.1f}% (defaults), {100 * np.median(errs_la5):.1f}% "
        "(flops_efficiency 0.5)"
    )
    print(
        f"time per configuration: emu {emu_per * 1e6:.2f} us (vmapped batch of {n}), "
        f"llm-analysis {la_per * 1e3:.2f} ms -> emu is {la_per / emu_per:,.0f}x faster"
    )


if __name__ == "__main__":
    main()
