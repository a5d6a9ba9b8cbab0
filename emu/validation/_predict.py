"""Predictions for measurement rows: each modelled row becomes an `Item` (system, and for
runs the model and plan of the row); runs with the same program structure are stacked and
evaluated in one vmapped call; collective rows use the all-reduce and all-to-all models.
Every prediction is a jnp scalar, differentiable in the systems (emu.calibration fits
through it).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections import defaultdict

import jax
import jax.numpy as jnp

from emu import collectives
from emu.catalog import list_systems, load_system
from emu.objective import evaluate
from emu.parallelism import Plan
from emu.policy import with_largest_batch
from emu.struct import stack
from emu.topology import System, participants
from emu.validation._rows import row_model, row_plan
from emu.workload import Model, model_flops_per_token

METRICS_TRAIN = {
    "iteration_time",
    "train_step_time",
    "tokens_per_s_per_gpu",
    "achieved_tflops_per_gpu",
    "tflops_per_gpu",
    "mfu",
    "layer_fwd_plus_bwd_time",
    "gpu_hours_per_trillion_tokens",
}
METRICS_ALLREDUCE = {"allreduce_busbw", "allreduce_busbw_peak", "effective_nvlink_busbw_ring"}
#: message size when a row gives none: "peak" bus bandwidth is reached with GB-scale buffers
DEFAULT_MESSAGE_BYTES = 4e9
METRICS_INFERENCE = {
    "input_tokens_per_s_per_node": ("prefill", 8.0),
    "input_tokens_per_s_per_gpu": ("prefill", 1.0),
    "input_tokens_per_s_per_npu": ("prefill", 1.0),
    "output_tokens_per_s_per_node": ("decode", 8.0),
    "output_tokens_per_s_per_gpu": ("decode", 1.0),
    "output_tokens_per_s_per_npu": ("decode", 1.0),
}
METRICS_MOE_COMM = {
    "moe_dispatch_bandwidth",
    "moe_combine_bandwidth",
    "moe_dispatch_bottleneck_bandwidth",
    "moe_combine_bottleneck_bandwidth",
    "moe_dispatch_latency",
    "moe_combine_latency",
}
#: DeepEP benchmark settings (DeepEP README): hidden 7168, top-8; normal mode 4,096 tokens
#: per rank, low-latency mode 128.
DEEPEP = {"hidden": 7168, "top_k": 8, "normal_tokens": 4096, "ll_tokens": 128}


@dataclasses.dataclass(frozen=True)
class Item:
    """One modelled row, ready to predict. `kind` is "run" (a step: `model` and `plan` set),
    "allreduce" or "moe_comm" (collective rows: the system alone); `base` holds the result
    fields of the row (id, kind, system, metric, measured, source)."""

    base: dict
    row: dict
    kind: str
    system: System
    model: Model | None = None
    plan: Plan | None = None


def _base(row: dict) -> dict:
    return {
        "id": str(row["id"]),
        "kind": row["kind"],
        "system": row["system"],
        "metric": row["metric"],
        "measured": float(row["value"]),
        "source": str(row.get("source", "")).split("|")[0].strip(),
    }


def _failed(base: dict, status: str, reason: str) -> dict:
    return {**base, "predicted": None, "abs_pct_error": None, "status": status, "reason": reason}


def _row_system(name) -> str:
    """A row names a catalog system, never a file (a FIFO or a huge file would hang)."""
    if not isinstance(name, str) or name not in list_systems():
        raise ValueError(
            f"unknown system {name!r}; rows name catalog systems: {', '.join(list_systems())}."
        )
    return name


def _run_item(row: dict, base: dict, system_of) -> Item:
    """The Item of a train/prefill/decode row (NotImplementedError: not modelled yet)."""
    known = METRICS_TRAIN if row["kind"] == "train" else set(METRICS_INFERENCE)
    if row["kind"] not in ("train", "prefill", "decode"):
        raise NotImplementedError(f"kind '{row['kind']}' metric '{row['metric']}'")
    if row["metric"] not in known:
        raise NotImplementedError(f"metric '{row['metric']}' is not modelled yet")
    model = row_model(row)
    plan, slo = row_plan(row, model)
    system = system_of(row["system"])
    if slo is not None:
        plan = with_largest_batch(system, model, plan, slo)
    prec = plan.precision
    if float(system.chip.peak_flops_per_s.get(prec, 0.0)) <= 0:
        raise ValueError(f"{system.chip.name} has no {prec} support")
    return Item(base=base, row=row, kind="run", system=system, model=model, plan=plan)


def prepare_rows(
    rows: list[dict], *, overrides=None, calibration=None
) -> tuple[list[Item], list[dict]]:
    """Turn rows into prediction items. Returns (items, failures); failures are result
    dicts (status skipped or error, with the reason). `overrides` (dotted system paths) and
    `calibration` (an overlay dict) apply to every system."""
    items, failures, systems = [], [], {}

    def system_of(name):
        if name not in systems:
            systems[name] = load_system(_row_system(name), overrides, calibration=calibration)
        return systems[name]

    for row in rows:
        base = _base(row)
        try:
            if row["kind"] == "collective" and row["metric"] in METRICS_ALLREDUCE:
                items.append(Item(base, row, "allreduce", system_of(row["system"])))
            elif row["kind"] == "collective" and row["metric"] in METRICS_MOE_COMM:
                items.append(Item(base, row, "moe_comm", system_of(row["system"])))
            else:
                items.append(_run_item(row, base, system_of))
        except NotImplementedError as e:
            failures.append(_failed(base, "skipped", str(e)))
        except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as e:
            failures.append(_failed(base, "error", f"line {row.get('_line')}: {e}"))
    return items, failures


def run_groups(items: list[Item]) -> dict[tuple, list[int]]:
    """Indices of the run items by program structure (one compiled, vmapped call each)."""
    groups = defaultdict(list)
    for idx, it in enumerate(items):
        if it.kind != "run":
            continue
        system, model, plan = it.system, it.model, it.plan
        key = (
            system.name,
            model.ffn,
            model.attention,
            model.tied_embeddings,
            plan.precision,
            plan.algorithm,
            plan.phase,
        )
        groups[key].append(idx)
    return groups


def predict_items(items: list[Item], systems: dict | None = None, *, run=None):
    """Predictions for every item, as jnp scalars (differentiable in the systems).
    `systems` maps a system name to the System to use (default: each item's own);
    `run` evaluates a stacked (models, plans) batch on one system (default: vmapped
    evaluate). Returns (predictions, feasible) lists aligned with `items` (feasible is None
    for collective rows)."""
    preds = [None] * len(items)
    feas = [None] * len(items)
    sys_of = lambda it: (systems or {}).get(it.system.name, it.system)
    run = run or (lambda s, m, p: jax.vmap(evaluate, in_axes=(None, 0, 0))(s, m, p))
    for idxs in run_groups(items).values():
        first = items[idxs[0]]
        out = run(
            sys_of(first),
            stack([items[i].model for i in idxs]),
            stack([items[i].plan for i in idxs]),
        )
        for j, i in enumerate(idxs):
            it = items[i]
            r = jax.tree_util.tree_map(lambda x, j=j: x[j], out)
            preds[i] = predict_metric(it.row["metric"], r, it.row, it.model, it.plan)
            feas[i] = r.feasible
    for i, it in enumerate(items):
        if it.kind == "allreduce":
            preds[i] = predict_allreduce_busbw(it.row, sys_of(it))
        elif it.kind == "moe_comm":
            preds[i] = predict_moe_comm(it.row, sys_of(it))
    return preds, feas


def predict_moe_comm(row: dict, system) -> float:
    """DeepEP dispatch/combine kernels: bandwidth in GB/s over the bottleneck link (bytes that
    cross the slowest tier / kernel time) or latency in us, from the all-to-all model.
    Dispatch payloads are FP8 (1 byte per element), combine BF16."""
    ep = float(row["n_chips"])
    if not ep >= 2:
        raise ValueError("an all-to-all needs n_chips >= 2")
    metric = row["metric"]
    low_latency = "latency" in metric or "low-latency" in str(row.get("notes", "")).lower()
    tokens = DEEPEP["ll_tokens"] if low_latency else DEEPEP["normal_tokens"]
    el = 1.0 if "dispatch" in metric else 2.0
    nbytes = jnp.float32(tokens * DEEPEP["top_k"] * DEEPEP["hidden"] * el)
    t = collectives.all_to_all_time(system, nbytes, jnp.float32(ep))
    if "latency" in metric:
        return t * 1e6
    # bytes over the bottleneck tier (the one with the largest load), per kernel time
    n = participants(system.tiers, jnp.float32(ep), jnp.float32(1.0))
    inside = 1.0
    worst = jnp.float32(0.0)
    crossing = jnp.float32(0.0)
    for tier, nk in zip(system.tiers, n, strict=True):
        leaving = 1.0 - inside / ep
        load = leaving * nbytes / collectives.effective_bandwidth(tier)
        crossing = jnp.where(load > worst, leaving * nbytes, crossing)
        worst = jnp.maximum(load, worst)
        inside = inside * nk
    return crossing / t / 1e9


def predict_metric(metric: str, r, row: dict, model, plan):
    """The row's metric, as published, from a RunResult (jnp: differentiable)."""
    n = r.n_chips
    t = r.step_time_s
    tokens = plan.global_batch * plan.seq_len
    if metric in ("iteration_time", "train_step_time"):
        return t
    if metric == "tokens_per_s_per_gpu":
        return tokens / t / n
    if metric == "achieved_tflops_per_gpu":
        b, s, n_l, h, v = (
            plan.global_batch,
            plan.seq_len,
            model.n_layers,
            model.d_model,
            model.vocab,
        )
        flops = 96 * b * s * n_l * h * h * (1 + s / (6 * h) + v / (16 * n_l * h))
        return flops / (t * n) / 1e12
    if metric == "tflops_per_gpu":
        return model_flops_per_token(model, plan.seq_len) * tokens / (t * n) / 1e12
    if metric == "mfu":
        return 100.0 * r.mfu
    if metric == "layer_fwd_plus_bwd_time":
        bd = r.breakdown
        nmb = plan.global_batch / (plan.dp * plan.microbatch)
        layers = model.n_layers / plan.pp
        per_mb = (bd.total_s - bd.optimizer_s - bd.exposed_dp_s - bd.bubble_s - bd.head_s) / nmb
        return per_mb / layers * 1e3
    if metric == "gpu_hours_per_trillion_tokens":
        return n * 1e12 / (tokens / t) / 3600.0
    if metric in METRICS_INFERENCE:
        return r.tokens_per_s_per_chip * METRICS_INFERENCE[metric][1]
    raise NotImplementedError(f"metric '{metric}' is not modelled yet")


def message_bytes(row: dict) -> float:
    """Buffer size of a collective row from its notes ("4-8 GB messages" -> geometric mean,
    ">256 MB" -> 256 MB); DEFAULT_MESSAGE_BYTES when the notes give none."""
    notes = str(row.get("notes", ""))
    unit = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "K": 1e3, "M": 1e6, "G": 1e9}
    m = re.search(r"(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB)\b", notes)
    if m:
        u = unit[m.group(3)]
        return math.sqrt(float(m.group(1)) * float(m.group(2))) * u
    m = re.search(r">\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB)\b", notes)
    if m:
        return float(m.group(1)) * unit[m.group(2)]
    return DEFAULT_MESSAGE_BYTES


def predict_allreduce_busbw(row: dict, system):
    """nccl-tests bus bandwidth (GB/s) = size / time * 2 (n - 1) / n. The ring metric
    ("NCCL_ALGO=RING or non-allreduce ops") uses a flat ring without in-switch reduction.
    Differentiable in `system`."""
    n = float(row["n_chips"])
    if not n >= 2:
        raise ValueError("a collective needs n_chips >= 2")
    b = message_bytes(row)
    algo = "ring" if row["metric"] == "effective_nvlink_busbw_ring" else "hierarchical"
    t = collectives.all_reduce_time(system, jnp.float32(b), jnp.float32(n), algorithm=algo)
    return b / t * 2.0 * (n - 1.0) / n / 1e9
