"""Analysis of one configuration: what it costs (`run`), what a system is made of
(`describe`), and what the result is sensitive to (`sensitivity`), as JSON-ready dicts.

`run` compiles `emu.evaluate` ahead of time (so the compile and evaluation times are
reported apart) and refuses a non-finite result; `sensitivity` gives the elasticities
d ln(y) / d ln(x) of tokens/J and tokens/s for every float field x of the system from one
reverse-mode pass.

>>> from emu.catalog import load_system
>>> d = describe(load_system("gb200_nvl72"))
>>> d["n_chips"], d["chip"]
(72, 'B200 (GB200)')
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp

from emu.objective import evaluate
from emu.parallelism import Plan, plan_dict
from emu.power import full_load_power
from emu.struct import float_leaves
from emu.topology import System
from emu.workload import Model

__all__ = ["run", "describe", "sensitivity", "tree_to_dict"]

_evaluate = jax.jit(evaluate)


def tree_to_dict(tree) -> dict:
    """A pytree dataclass as nested JSON-ready dicts of floats (static fields left out)."""
    out = {}
    for f in dataclasses.fields(tree):
        if not f.metadata.get("pytree_node", True):
            continue
        v = getattr(tree, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = tree_to_dict(v)
        else:
            out[f.name] = float(v)
    return out


def _check_finite(d: dict, what: str, prefix: str = "") -> None:
    for k, v in d.items():
        if isinstance(v, dict):
            _check_finite(v, what, f"{prefix}{k}.")
        elif isinstance(v, float) and not math.isfinite(v):
            raise ValueError(
                f"{what}: {prefix}{k} is not finite; an input is outside the float32 range "
                "(check seq_len, global_batch and the overridden values)."
            )


def run(system: System, model: Model, plan: Plan) -> dict:
    """Evaluate one configuration (compiled) and return the `run` JSON object: system,
    model, phase, plan, every RunResult field (ttft_s only in prefill, tpot_s only in decode;
    None elsewhere), compile_s and eval_s."""
    t0 = time.perf_counter()
    compiled = _evaluate.lower(system, model, plan).compile()
    t1 = time.perf_counter()
    r = jax.block_until_ready(compiled(system, model, plan))
    t2 = time.perf_counter()
    d = tree_to_dict(r)
    _check_finite(d, f"{system.name}/{model.name}")
    d["feasible"] = bool(d["feasible"] > 0.5)
    d["memory"]["feasible"] = d["feasible"]
    if plan.phase != "prefill":
        d["ttft_s"] = None
    if plan.phase != "decode":
        d["tpot_s"] = None
    return {
        "system": system.name,
        "model": model.name,
        "phase": plan.phase,
        "plan": plan_dict(plan),
        **d,
        "compile_s": t1 - t0,
        "eval_s": t2 - t1,
    }


def describe(system: System) -> dict:
    """System totals from the parts (one system unit of `n_chips` chips)."""
    n = float(system.n_chips)
    p = full_load_power(system)
    return {
        "system": system.name,
        "chip": system.chip.name,
        "n_chips": int(n) if n == int(n) else n,
        "peak_flops_per_s": {
            k: n * float(v) for k, v in system.chip.peak_flops_per_s.items() if float(v) > 0
        },
        "hbm_bytes": n * float(system.chip.hbm_bytes),
        "hbm_bytes_per_s": n * float(system.chip.hbm_bytes_per_s),
        "tiers": [
            {
                "name": t.name,
                "link": t.link,
                "domain_chips": float(t.domain_chips),
                "bytes_per_s_per_chip": float(t.bytes_per_s),
                "total_bytes_per_s": n * float(t.bytes_per_s),
                "oversubscription": float(t.oversubscription),
            }
            for t in system.tiers
        ],
        "scale_up_bytes_per_s_per_chip": float(system.tiers[0].bytes_per_s),
        "scale_out_bytes_per_s_per_chip": float(system.tiers[-1].bytes_per_s),
        "power_w": float(p.it_w),
        "facility_power_w": float(p.facility_w),
        "power": tree_to_dict(p),
        "pue": float(system.facility.pue),
    }


def _log_outputs(system, model, plan):
    r = evaluate(system, model, plan)
    return jnp.stack([jnp.log(r.tokens_per_joule), jnp.log(r.tokens_per_s)])


_jac = jax.jit(jax.jacrev(_log_outputs))


def sensitivity(system: System, model: Model, plan: Plan) -> dict:
    """Elasticities d ln(y) / d ln(x) of tokens/J and tokens/s for every float field x of
    the system, from one reverse-mode pass; sorted by |elasticity of tokens/J|."""
    r = _evaluate(system, model, plan)
    grads = _jac(system, model, plan)
    values = float_leaves(system)
    g = float_leaves(grads)
    rows = {}
    for path, x in values.items():
        gx = g[path]
        rows[path] = {
            "value": float(x),
            "tokens_per_joule": float(x * gx[0]),
            "tokens_per_s": float(x * gx[1]),
        }
    ordered = dict(sorted(rows.items(), key=lambda kv: -abs(kv[1]["tokens_per_joule"])))
    return {
        "system": system.name,
        "model": model.name,
        "plan": plan_dict(plan),
        "tokens_per_joule": float(r.tokens_per_joule),
        "tokens_per_s": float(r.tokens_per_s),
        "elasticities": ordered,
    }
