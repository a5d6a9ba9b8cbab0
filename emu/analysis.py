"""Analysis of one configuration: what it costs (`run`), what a system is made of
(`describe`), what the result is sensitive to (`sensitivity`), and how far off it may be
(`interval`), as JSON-ready dicts.

`run` compiles `emu.evaluate` ahead of time (so the compile and evaluation times are
reported apart), refuses a non-finite result and attaches the 80% interval of its
throughput and step time; `sensitivity` gives the elasticities
d ln(y) / d ln(x) of tokens/J and tokens/s for every float field x of the system from one
reverse-mode pass. With a cost and a region (emu.cost), `cost_block` prices a result (USD
per hour, per million tokens, by part) and `cost_sensitivity` gives the elasticities of USD
per million tokens for every system, cost and region field.

>>> from emu.catalog import load_system
>>> d = describe(load_system("gb200_nvl72"))
>>> d["n_chips"], d["chip"]
(72, 'B200 (GB200)')
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from pathlib import Path

from emu import _backend
from emu import cost as C
from emu._backend import is_numpy, jax, jnp
from emu.catalog import config_dir, load_toml
from emu.catalog import uncalibrated as catalog_uncalibrated
from emu.objective import evaluate
from emu.parallelism import Plan, plan_dict
from emu.power import full_load_power
from emu.struct import float_leaves
from emu.topology import System
from emu.workload import Model

__all__ = [
    "run",
    "describe",
    "sensitivity",
    "tree_to_dict",
    "interval",
    "intervals",
    "interval_group",
    "interval_table",
    "basis_keys",
    "cost_block",
    "cost_sensitivity",
]

#: the level of every interval emu reports (issue 11: an 80% band)
INTERVAL_LEVEL = 0.8
#: a basis (kind x chip family / link type, or kind) is used only with this many
#: cross-validated residuals from this many sources (else the next, wider basis). A band
#: stands for the error on a source emu has not seen, so it needs several sources'
#: offsets: with 2 (until session 26), a held-out row's band could come from one or two
#: other sources (DeepSeek's H800 serving rows held out took the 10 Hopper serving rows of
#: LMSYS and TensorRT-LLM, whose band lay wholly on one side of emu's own prediction), and
#: the per-kind out-of-sample coverage sat on the edge of 75-85%: noise of 0.3% a residual
#: (a refit moves most rows far less) put a kind outside in 12 of 20 copies of the shipped
#: residuals (`experiments/interval_robustness.py`). At 4: 0 of 20, and the median band
#: narrows 1.86x -> 1.64x (the shipped residuals of session 22's fit; 1.83x -> 1.63x on
#: session 26's). 3 and 6 did not hold (docs/history.md, session 26).
MIN_ROWS = 8
MIN_SOURCES = 4

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


def interval_path() -> Path:
    """The shipped interval table (configs/calibration/intervals.toml), written by
    `emu calibrate --cv --holdout FILE` from the leave-one-source-out residuals and those of
    the holdout rows."""
    return config_dir() / "calibration" / "intervals.toml"


@functools.cache
def _shipped_table() -> dict | None:
    path = interval_path()
    return load_toml(path, "interval table") if path.is_file() else None


def interval_table(path=None) -> dict | None:
    """The interval table ({"provenance": {level, tail (the "all" basis'), tails (per kind),
    coverage ...}, "basis": {name: {rows, sources, tail, q_lo, q_hi, usable}}}) at `path`,
    default the shipped one; None when there is none. Each basis' quantiles are read at its
    kind's tail (`emu.validation.calibrate_tails`); `interval` uses them as they are."""
    if path is None:
        return _shipped_table()
    return load_toml(Path(path), "interval table")


def basis_keys(group: str) -> list[str]:
    """The bases of a prediction of `group` ("kind/family"), most specific first:
    ["train/hopper", "train", "all"]. Kinds: train, serve (prefill and decode), collective;
    the family is the chip family (train, serve) or the link type (collective)."""
    kind = group.split("/", 1)[0]
    return [group, kind, "all"] if "/" in group else [kind, "all"]


def interval_group(system: System, phase: str) -> str:
    """The basis group of a `phase` ("train", "prefill", "decode") result on `system`."""
    kind = "train" if phase == "train" else "serve"
    return f"{kind}/{system.chip.family}"


def interval(
    value: float,
    group: str,
    *,
    time: bool = False,
    table: dict | None = None,
    uncalibrated: tuple = (),
):
    """The interval of a predicted `value` of `group` (`basis_keys`) from the interval
    table (default: the shipped one): {low, high, level, basis, extrapolation}.

    With the basis' residual quantiles q_lo, q_hi of log(predicted / measured speed), a
    rate y lies in [y exp(-q_hi), y exp(-q_lo)] and a time t (`time=True`) in
    [t exp(q_lo), t exp(q_hi)] with probability `level` (calibrated out of sample). The
    basis is the most specific one with >= MIN_ROWS rows from >= MIN_SOURCES sources.
    `extrapolation` is true when no validated row shares the kind and family (a new chip
    family, a kind without rows): the band is then the wider of the kind's and all rows'.
    `uncalibrated` (what of the system no fit has seen, `emu.catalog.uncalibrated`) makes
    it an extrapolation too. A family with >= MIN_ROWS rows but from too few sources for a
    band of its own still widens its kind's band to its own quantiles (a family whose few
    sources disagree, as CloudMatrix 384's serving rows do, keeps that spread): a
    conservative rule the out-of-sample coverage does not score, since with its source held
    out such a family has fewer sources still. Without a table, low and high are None and
    the basis says why."""
    table = table if table is not None else interval_table()
    if not table:
        return {
            "low": None,
            "high": None,
            "level": INTERVAL_LEVEL,
            "basis": "none: no interval table (run `emu calibrate --cv`)",
            "extrapolation": True,
        }
    bases = table.get("basis", {})
    keys = basis_keys(group)
    name = next((k for k in keys if bases.get(k, {}).get("usable")), None) or "all"
    b = bases.get(name) or {"q_lo": -math.inf, "q_hi": math.inf, "rows": 0, "sources": 0}
    q_lo, q_hi = float(b["q_lo"]), float(b["q_hi"])
    extrapolation = bool(uncalibrated) or keys[0] not in bases or name == "all"
    if extrapolation:
        for k in keys[1:]:
            if k in bases:
                q_lo, q_hi = min(q_lo, float(bases[k]["q_lo"])), max(q_hi, float(bases[k]["q_hi"]))
    family = bases.get(keys[0]) if name != keys[0] and "/" in keys[0] else None
    widened = False
    if (
        isinstance(family, dict)
        and int(family.get("rows", 0)) >= MIN_ROWS
        and family.get("q_lo") is not None
        and family.get("q_hi") is not None
    ):  # also when extrapolating (an uncalibrated system): the family never narrows a band
        f_lo, f_hi = float(family["q_lo"]), float(family["q_hi"])
        widened = f_lo < q_lo or f_hi > q_hi
        q_lo, q_hi = min(q_lo, f_lo), max(q_hi, f_hi)
    lo, hi = (
        (value * math.exp(q_lo), value * math.exp(q_hi))
        if time
        else (
            value * math.exp(-q_hi),
            value * math.exp(-q_lo),
        )
    )
    note = "" if not extrapolation else f"; extrapolation: no validated {keys[0]} rows"
    if uncalibrated:
        note = f"; extrapolation: uncalibrated {', '.join(uncalibrated)}"
    if widened:
        note += (
            f"; widened to {keys[0]} ({int(family['rows'])} rows, {int(family.get('sources', 0))}"
            " sources: too few for its own band)"
        )
    return {
        "low": lo,
        "high": hi,
        "level": float(table.get("provenance", {}).get("level", INTERVAL_LEVEL)),
        "basis": f"{name} ({int(b['rows'])} rows, {int(b['sources'])} sources){note}",
        "extrapolation": bool(extrapolation),
    }


def intervals(
    values: dict, group: str, *, table: dict | None = None, uncalibrated: tuple = ()
) -> dict:
    """{name: interval} for the outputs in `values` (name -> predicted value); names ending
    in `_s` are times (`step_time_s`, `tpot_s`), those ending in `_per_s` and the others
    rates (`tokens_per_s`)."""
    return {
        k: interval(
            float(v),
            group,
            time=k.endswith("_s") and not k.endswith("_per_s"),
            table=table,
            uncalibrated=tuple(uncalibrated),
        )
        for k, v in values.items()
    }


def run(system: System, model: Model, plan: Plan, *, check: bool = True) -> dict:
    """Evaluate one configuration (compiled; with `check`, the plan checked first,
    `policy.check_plan`, and the result after, `policy.check_result`; `emu validate --row`
    turns it off to show the report's own plan as predicted) and return the `run` JSON
    object: system,
    model, phase, plan, every RunResult field (ttft_s only in prefill, tpot_s only in decode;
    None elsewhere), `interval` (the 80% intervals of tokens_per_s, step_time_s and
    tokens_per_joule, see
    `interval`), backend ("jax", or "numpy": evaluated without compiling, `emu._backend`),
    compile_s and eval_s."""
    from emu.policy import check_plan, check_result  # host layer below analysis

    if check:  # a degree that does not divide, tp -8: one ValueError
        check_plan(system, model, plan)
    t0 = time.perf_counter()
    if is_numpy():  # the NumPy backend evaluates directly: nothing to compile
        t1 = t0
        r = evaluate(system, model, plan)
    else:
        compiled = _evaluate.lower(system, model, plan).compile()
        t1 = time.perf_counter()
        r = jax.block_until_ready(compiled(system, model, plan))
    t2 = time.perf_counter()
    d = tree_to_dict(r)
    _check_finite(d, f"{system.name}/{model.name}")
    if check:
        check_result({"system": system.name, "model": model.name, **d})
    d["feasible"] = bool(d["feasible"] > 0.5)
    d["memory"]["feasible"] = d["feasible"]
    if plan.phase != "prefill":
        d["ttft_s"] = None
    if plan.phase != "decode":
        d["tpot_s"] = None
    group = interval_group(system, plan.phase)
    return {
        "system": system.name,
        "model": model.name,
        "phase": plan.phase,
        "plan": plan_dict(plan),
        **d,
        "interval": intervals(  # tokens/J shares the throughput's band (power is modelled)
            {
                "tokens_per_s": d["tokens_per_s"],
                "step_time_s": d["step_time_s"],
                "tokens_per_joule": d["tokens_per_joule"],
            },
            group,
            uncalibrated=tuple(catalog_uncalibrated(system)),
        ),
        "backend": _backend.name(),
        "compile_s": t1 - t0,
        "eval_s": t2 - t1,
    }


def describe(system: System) -> dict:
    """System totals from the parts (one system unit of `n_chips` chips), and `interval`:
    the 80% band of a training and a serving throughput of 1 on this chip family (the
    factors every prediction's interval applies; `extrapolation` when no validated row
    shares the family)."""
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
        "interval": {
            kind: interval(1.0, interval_group(system, phase))
            for kind, phase in (("train", "train"), ("serve", "decode"))
        },
    }


def _log_outputs(system, model, plan):
    r = evaluate(system, model, plan)
    return jnp.stack([jnp.log(r.tokens_per_joule), jnp.log(r.tokens_per_s)])


@functools.cache
def _jac():
    """The compiled Jacobian of `_log_outputs` (built on first use: it needs JAX)."""
    return jax.jit(jax.jacrev(_log_outputs))


#: system fields with no elasticity: whole counts whose smooth relaxation is no design
#: change (a system's size, which the plan's chips set, and how a package splits into
#: ranks); the scale-up domains stay (emu's topology search varies them smoothly)
NO_ELASTICITY = ("n_chips", "chip.dies_per_chip")


def _system_leaves(tree) -> dict:
    return {k: v for k, v in float_leaves(tree).items() if k not in NO_ELASTICITY}


def sensitivity(system: System, model: Model, plan: Plan) -> dict:
    """Elasticities d ln(y) / d ln(x) of tokens/J and tokens/s for every float field x of
    the system (but NO_ELASTICITY), from one reverse-mode pass; sorted by |elasticity of
    tokens/J|."""
    r = _evaluate(system, model, plan)
    grads = _jac()(system, model, plan)
    values = _system_leaves(system)
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


# --------------------------------------------------------------------------- cost (emu.cost)


def cost_block(system: System, result, cost: C.Cost, region: C.Region) -> dict:
    """What `result` costs: the keys `usd_per_hour`, `usd_per_mtoken` (None when nothing is
    produced) and `cost` (every CostBreakdown part, the per-million-token capital/energy split,
    and the region, cost, PUE, utilisation and mode), to merge into a run or serve object.

    `result`: an `analysis.run` dict, a RunResult or a ServingResult (n_chips, power_w,
    tokens_per_s); the facility is charged on the full-load IT power of its chips on
    `system` (give the system with the region's PUE, `emu.cost.with_region_pue`). An
    infeasible result (its `feasible` false) has no cost per token: those keys are None."""
    get = result.__getitem__ if isinstance(result, dict) else lambda k: getattr(result, k)
    n = jnp.float32(get("n_chips"))
    b = C.run_cost(
        cost,
        region,
        n_chips=n,
        power_w=jnp.float32(get("power_w")),
        tokens_per_s=jnp.float32(get("tokens_per_s")),
        provisioned_w=full_load_power(system, n).it_w,
    )
    d = {k: (v if math.isfinite(v) else None) for k, v in tree_to_dict(b).items()}
    feasible = (
        result.get("feasible", True)
        if isinstance(result, dict)
        else getattr(result, "feasible", True)
    )
    if not all(bool(x) for x in jnp.ravel(jnp.asarray(feasible))):  # it makes no tokens
        d |= {k: None for k in d if k.endswith("_per_mtoken")}
    d |= {
        "region": region.name,
        "cost": cost.name,
        "mode": "all-in" if float(cost.hourly_usd_per_chip) > 0 else "build-up",
        "pue": float(region.pue),
        "utilisation": float(cost.utilisation),
    }
    return {"usd_per_hour": d["usd_per_hour"], "usd_per_mtoken": d["usd_per_mtoken"], "cost": d}


def _log_outputs_priced(system, model, plan, cost, region):
    r = evaluate(system, model, plan)
    usd = C.from_result(cost, region, r, system=system).usd_per_mtoken
    values = jnp.stack([r.tokens_per_joule, r.tokens_per_s, usd])
    return jnp.log(values), values


@functools.cache
def _priced_jac():
    """The compiled Jacobian of `_log_outputs_priced` (built on first use: it needs JAX)."""
    return jax.jit(jax.jacrev(_log_outputs_priced, argnums=(0, 3, 4), has_aux=True))


def cost_sensitivity(
    system: System, model: Model, plan: Plan, cost: C.Cost, region: C.Region
) -> dict:
    """`sensitivity` with a price: elasticities d ln(y) / d ln(x) of tokens/J, tokens/s and
    USD per million tokens for every float field x of the system (`chip.tdp_w`, ...; but
    NO_ELASTICITY), of the cost (`cost.<field>`) and of the region (`region.<field>`),
    from one reverse-mode pass through the emulator and the cost model; sorted by
    |elasticity of usd_per_mtoken|. Give the system with the region's PUE
    (`emu.cost.with_region_pue`)."""
    (j_sys, j_cost, j_reg), values = _priced_jac()(system, model, plan, cost, region)
    rows = {}
    for prefix, tree, jac in (
        ("", system, j_sys),
        ("cost.", cost, j_cost),
        ("region.", region, j_reg),
    ):
        g = float_leaves(jac)
        for path, x in (_system_leaves(tree) if tree is system else float_leaves(tree)).items():
            e = [float(x * gi) + 0.0 for gi in g[path]]  # no -0.0
            rows[prefix + path] = {
                "value": float(x),
                "tokens_per_joule": e[0],
                "tokens_per_s": e[1],
                "usd_per_mtoken": e[2],
            }
    ordered = dict(sorted(rows.items(), key=lambda kv: -abs(kv[1]["usd_per_mtoken"])))
    tpj, tps, usd = (float(v) for v in values)
    return {
        "system": system.name,
        "model": model.name,
        "plan": plan_dict(plan),
        "tokens_per_joule": tpj,
        "tokens_per_s": tps,
        "usd_per_mtoken": usd if math.isfinite(usd) else None,
        "region": region.name,
        "cost": cost.name,
        "elasticities": ordered,
    }
