"""A search problem: the workload, its constraints, which plan knobs are free, and what is
optimised; and the columns every evaluated configuration reports."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable

import numpy as np

from emu import cost as C
from emu.hardware import peak_flops
from emu.plan import MOE_ONLY_KNOBS, PHASES
from emu.plan import knobs as plan_knobs
from emu.search._objectives import get_objective
from emu.struct import float_leaves, real_scalar
from emu.topology import TOPOLOGY_KNOBS, System

#: plan knobs a search varies (declared searchable in emu.plan), in the column order of its
#: output
KNOBS = tuple(k.name for k in plan_knobs(searchable=True))
#: outputs kept per configuration; `objective` is the value being optimised
COLUMNS = (
    "objective",
    "feasible",
    "step_time_s",
    "tokens_per_s",
    "tokens_per_s_per_chip",
    "tokens_per_joule",
    "power_w",
    "mfu",
    "ttft_s",
    "tpot_s",
    "memory_bytes",
    "usd_per_mtoken",
)
#: knob values when a knob is not free and not given: the declared defaults, as stored
#: numbers (dp has none: it follows the chip count)
DEFAULTS = {k.name: int(k.encode(k.default)) for k in plan_knobs(searchable=True) if k.name != "dp"}
#: the searchable knobs by name (`fixed_values` encodes a fixed value with its knob)
_KNOB_OF = {k.name: k for k in plan_knobs(searchable=True)}


def fixed_values(problem: Problem) -> dict:
    """`problem.fixed` as the search's codes: a choice knob's name is its code
    (("recompute", "full") is 2, as `make_plan` reads it); a value a knob cannot take is
    refused (ValueError naming it). Unknown knobs are `check_problem`'s to refuse."""
    pairs = problem.fixed
    pairs = tuple(pairs.items()) if isinstance(pairs, dict) else pairs
    if not isinstance(pairs, tuple | list) or not all(
        isinstance(p, tuple | list) and len(p) == 2 and isinstance(p[0], str) for p in pairs
    ):
        raise ValueError(
            f"Problem.fixed must be (knob, value) pairs, e.g. (('tp', 8), ('recompute', "
            f"'full')) (got {pairs!r})."
        )
    return {
        k: _KNOB_OF[k].encode(v, "Problem.fixed") if k in _KNOB_OF else v
        for k, v in dict(pairs).items()
    }


@dataclasses.dataclass(frozen=True)
class Problem:
    """A search problem: the workload, its constraints and which knobs are free.

    `chips` is one chip count or a tuple of candidates (with a `power_cap`, the number of
    chips under a power budget becomes a knob). `free` names the plan knobs that vary (None:
    all of KNOBS); the others take `fixed` values (tuple of (knob, value)) or DEFAULTS.
    `objective` is a name in emu.search.OBJECTIVES or a function of the RunResult to
    maximise. Decode plans must meet `tpot_slo` (s), prefill plans `ttft_slo` (s, if given);
    `power_cap` (W, IT power of the chips used) applies to every phase. `cost`: (emu.cost.Cost,
    emu.cost.Region) prices every configuration (the `usd_per_mtoken` column and objective;
    without it the column is NaN)."""

    system: str
    model: str
    chips: int | tuple = 0
    seq_len: int = 4096
    global_batch: int | None = None
    precision: str = "bf16"
    phase: str = "train"
    objective: str | Callable = "tokens_per_joule"
    free: tuple | None = None
    fixed: tuple = ()
    power_cap: float | None = None
    tpot_slo: float = 0.05
    ttft_slo: float | None = None
    context: int | None = None
    a2a_overlap: bool = False
    moe_imbalance: float = 1.0
    mtp_accept: float = 0.0
    cache_hit: float = 0.0
    kv_precision: str = "bf16"
    cost: tuple | None = None

    def chip_counts(self) -> tuple[int, ...]:
        c = self.chips if isinstance(self.chips, tuple | list) else (self.chips,)
        return tuple(sorted({int(x) for x in c}))

    def sign(self) -> float:
        """+1 when the objective is maximised, -1 when minimised."""
        return get_objective(self.objective).sign

    def objective_name(self) -> str:
        return get_objective(self.objective).name

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["objective"] = self.objective_name()
        d["chips"] = (
            list(self.chip_counts()) if isinstance(self.chips, tuple | list) else self.chips
        )
        d["free"] = list(self.free) if self.free is not None else None
        d["fixed"] = dict(self.fixed)
        d["cost"] = _cost_dict(self.cost)
        return d

    def signature(self, extra: str = "") -> str:
        text = json.dumps(self.as_dict(), sort_keys=True, default=str) + extra
        o = self.objective
        if callable(o):  # a user function is keyed by what it computes, not by its name
            text += _function_key(o)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cost_dict(cost) -> dict | None:
    """The JSON form of Problem.cost: the cost and region names and every field's value."""
    if cost is None:
        return None
    c, r = cost
    values = {f"cost.{k}": float(v) for k, v in float_leaves(c).items()}
    values |= {f"region.{k}": float(v) for k, v in float_leaves(r).items()}
    return {"cost": c.name, "region": r.name, "chip_origin": c.chip_origin, **values}


def _function_key(f) -> str:
    """What a user objective computes: its code, constants, closure values and the globals
    it names, recursively for functions it calls. Anything without a stable repr (an
    object whose repr holds its address) changes the key, so such a sweep recomputes
    rather than resume from another function's results."""
    code = getattr(f, "__code__", None)
    if code is None:
        return repr(f)
    parts = [repr((code.co_code, code.co_consts))]
    for cell in getattr(f, "__closure__", None) or ():
        v = cell.cell_contents
        parts.append(_function_key(v) if callable(v) and hasattr(v, "__code__") else repr(v))
    g = getattr(f, "__globals__", {})
    for name in code.co_names:
        if name in g:
            v = g[name]
            parts.append(name + "=" + (_function_key(v) if hasattr(v, "__code__") else repr(v)))
    return "|".join(parts)


def _whole(x) -> bool:
    """A positive whole number (not a bool, not a string)."""
    x = real_scalar(x)
    return x is not None and math.isfinite(x) and x >= 1 and x == int(x)


#: Problem fields that are plan knobs read only in some phases (their declared `phases`)
_PHASE_KNOBS = ("context", "mtp_accept", "cache_hit", "kv_precision")


def _ignored_fields(problem: Problem, model) -> str | None:
    """The first Problem field set away from its default that the problem would ignore
    (a knob of another phase, a SLO of another phase, an expert knob on a dense model),
    worded as the fix; None when every given field is read."""
    default = {f.name: f.default for f in dataclasses.fields(Problem)}
    given = [n for n in default if getattr(problem, n) != default[n]]
    phase = problem.phase
    slos = {"tpot_slo": "decode", "ttft_slo": "prefill"}
    by_name = {k.name: k for k in plan_knobs()}
    for name in given:
        if name in slos and slos[name] != phase:
            return f"{name} applies to {slos[name]} problems only (this one is {phase}); drop it."
        if name in _PHASE_KNOBS and phase not in by_name[name].phases:
            return (
                f"{name} applies to {'/'.join(by_name[name].phases)} problems only (this one "
                f"is {phase}); drop it."
            )
        if name in MOE_ONLY_KNOBS and model is not None and float(model.n_experts) == 0:
            return f"{name} applies to MoE models' experts ({model.name} is dense); drop it."
    return None


def check_problem(system: System, problem: Problem, model=None) -> None:
    """ValueError naming the parameter when the problem cannot be searched on `system`
    (and `model`, where given: expert knobs need an MoE model)."""
    if problem.phase not in PHASES:
        raise ValueError(f"unknown phase '{problem.phase}'; use train, prefill or decode.")
    ignored = _ignored_fields(problem, model)
    if ignored:
        raise ValueError(f"Problem.{ignored}")
    if problem.system != system.name:  # results are labelled and priced by the name
        raise ValueError(
            f"Problem.system is '{problem.system}' but the system searched is "
            f"'{system.name}'; give Problem(system='{system.name}', ...)."
        )
    name = getattr(model, "name", None)
    if isinstance(name, str) and problem.model != name:  # labelled by the name, too
        raise ValueError(
            f"Problem.model is '{problem.model}' but the model searched is '{name}'; give "
            f"Problem(model='{name}', ...)."
        )
    if float(peak_flops(system.chip, problem.precision)) <= 0:
        raise ValueError(
            f"{system.chip.name} has no {problem.precision} support; choose another precision."
        )
    fixed_values(problem)  # a fixed value its knob cannot take, named
    if "dp" in dict(problem.fixed):
        raise ValueError("dp follows the chip count (dp = chips / (tp pp cp)); fix chips.")
    both = sorted(set(problem.free or ()) & set(dict(problem.fixed)))
    if both:
        raise ValueError(f"{both[0]} is both free and fixed; drop it from free or from fixed.")
    topo = set(problem.free or ()) & set(TOPOLOGY_KNOBS)
    if topo:
        raise ValueError(
            f"topology knobs ({', '.join(sorted(topo))}) vary through the grid "
            "(grid NAME=V1,V2,...), not through the free knobs."
        )
    unknown = set(problem.free or ()) - set(KNOBS)
    unknown |= set(dict(problem.fixed)) - set(KNOBS)
    if unknown:
        raise ValueError(
            f"unknown knob(s) {', '.join(sorted(unknown))}; plan knobs: {', '.join(KNOBS)}; "
            f"topology knobs: {', '.join(TOPOLOGY_KNOBS)}."
        )
    objective = get_objective(problem.objective)
    for need in objective.needs:
        if getattr(problem, need, None) is None:
            raise ValueError(
                f"objective '{objective.name}' needs Problem.{need}"
                + (" = (Cost, Region) (CLI: --region)" if need == "cost" else "")
                + "."
            )
    if problem.cost is not None and not (
        isinstance(problem.cost, tuple | list)
        and len(problem.cost) == 2
        and isinstance(problem.cost[0], C.Cost)
        and isinstance(problem.cost[1], C.Region)
    ):
        raise ValueError("Problem.cost must be a (emu.cost.Cost, emu.cost.Region) pair.")
    if problem.phase not in objective.phases:
        raise ValueError(
            f"objective '{objective.name}' exists only in the {', '.join(objective.phases)} "
            f"phase (it is 0 in {problem.phase})."
        )
    counts = problem.chips if isinstance(problem.chips, tuple | list) else (problem.chips,)
    if not counts or not all(_whole(c) for c in counts):
        raise ValueError(f"chips must be positive integers (got {problem.chips!r}).")
    if not _whole(problem.seq_len):
        raise ValueError(f"seq_len must be a positive integer (got {problem.seq_len!r}).")
    if problem.global_batch is not None and not _whole(problem.global_batch):
        raise ValueError(
            f"global_batch must be a positive integer or None (derived; got "
            f"{problem.global_batch!r})."
        )
    if problem.context is not None and not _whole(problem.context):
        raise ValueError(f"context must be a positive integer or None (got {problem.context!r}).")
    top = float(system.tiers[-1].domain_chips)
    if max(problem.chip_counts()) > top:
        raise ValueError(
            f"chips = {max(problem.chip_counts())} exceeds the largest cluster of "
            f"{system.name} ({top:g}); use fewer chips."
        )
    for name, v in (
        ("power cap", problem.power_cap),
        ("TPOT SLO", problem.tpot_slo),
        ("TTFT SLO", problem.ttft_slo),
    ):
        number = isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
        if v is not None and not (number and v > 0 and math.isfinite(v)):
            raise ValueError(
                f"the {name} must be a positive finite number ({'W' if 'power' in name else 's'}; "
                f"got {v!r})."
            )


#: bounds of the search budget arguments (inclusive): a typo must not run for days or crash
BUDGET = {
    "starts": (1, 1024),
    "steps": (1, 10_000),
    "neighbours": (1, 1000),
    "polish": (0, 1024),
    "top": (1, 1_000_000),
    "chunk": (1, 1 << 24),
}


def check_budget(**values) -> None:
    """ValueError naming the argument when a budget value (BUDGET) is not an integer in its
    bounds; None values (the default rule) pass."""
    for name, v in values.items():
        if v is None:
            continue
        lo, hi = BUDGET[name]
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not lo <= v <= hi:
            raise ValueError(f"{name} must be an integer in [{lo}, {hi}] (got {v!r}).")
