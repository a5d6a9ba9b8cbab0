"""Design-space exploration: exhaustive sweeps and gradient search, over plans and topology.

A `Problem` names a workload (system, model, chips, phase, sequence, SLO, power cap) and its
discrete design space: every valid parallel plan (`enumerate_plans`, host-side numpy), times
an optional `grid` of system values: dotted field paths (`chip.hbm_bytes_per_s`) or the
topology knobs of `emu.topology.reshape` (`domain`, `scaleup_bw`, `scaleout_bw`,
`oversubscription`, `optics_share`). A plan is feasible when it fits in HBM, meets the
phase's latency SLO, stays under the power cap and its scale-up domain is reachable.

`sweep` evaluates the whole space in fixed-size chunks with ONE compiled, vmapped function
(the last chunk is padded), shards each chunk over all JAX devices, streams every chunk to
disk as it finishes (write-then-rename, with a checksum), and on restart with the same
problem skips the chunks already on disk, after verifying them: a killed sweep resumes
without losing or duplicating results. With several processes (jax.distributed), process p
takes the chunks i with i % n == p and process 0 merges. It keeps the top-k and the Pareto
front (tokens/s vs watts) of the feasible plans.

`gradient_search` relaxes the same space: log2 of the parallel degrees and batch, the grid
axes as continuous coordinates, ZeRO/recompute/SP as softmax-relaxed choices, smooth
penalties for memory, SLO, power cap and reach; an optax optimiser runs inside `lax.scan`,
many starts at once under `vmap`; each start is rounded to its nearest valid discrete plans
and grid points, the best are polished by a discrete local search, and every reported
result is re-evaluated exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass as pydataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from emu.objective import evaluate
from emu.parallelism import Plan, make_plan
from emu.struct import replace, set_path
from emu.topology import TOPOLOGY_KNOBS, System, reshape
from emu.workload import Model

__all__ = [
    "Problem",
    "enumerate_plans",
    "sweep",
    "plan_of",
    "system_of",
    "pareto_front",
    "gradient_search",
    "write_table",
    "COLUMNS",
    "KNOBS",
    "OBJECTIVES",
]

#: plan leaves a search varies, in the column order of its output
KNOBS = ("tp", "pp", "dp", "cp", "ep", "microbatch", "vpp", "zero", "recompute", "sp")
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
)
#: objectives by name (fields of the `run` JSON): +1 maximised, -1 minimised
OBJECTIVES = {
    "tokens_per_joule": 1.0,
    "tokens_per_s": 1.0,
    "tokens_per_s_per_chip": 1.0,
    "mfu": 1.0,
    "step_time_s": -1.0,
    "power_w": -1.0,
    "facility_power_w": -1.0,
    "energy_per_step_j": -1.0,
    "ttft_s": -1.0,
    "tpot_s": -1.0,
}
#: knob values when a knob is not free and not given
DEFAULTS = {
    "tp": 1,
    "pp": 1,
    "cp": 1,
    "ep": 1,
    "microbatch": 1,
    "vpp": 1,
    "zero": 1,
    "recompute": 1,
    "sp": 1,
}
CHUNK = 1 << 16
#: testing knob: seconds to pause after each chunk, so a test can kill a sweep mid-way
_THROTTLE_S = float(os.environ.get("EMU_SWEEP_THROTTLE_S", "0") or 0)
_TOKENS_PER_STEP = 2**22  # default training batch: >= 4 Mi tokens per step, as `emu run`


@pydataclass(frozen=True)
class Problem:
    """A search problem: the workload, its constraints and which knobs are free.

    `chips` is one chip count or a tuple of candidates (with a `power_cap`, the number of
    chips under a power budget becomes a knob). `free` names the plan knobs that vary (None:
    all of KNOBS); the others take `fixed` values (tuple of (knob, value)) or DEFAULTS.
    `objective` is a name in OBJECTIVES or a function of the RunResult to maximise.
    Decode plans must meet `tpot_slo` (s), prefill plans `ttft_slo` (s, if given);
    `power_cap` (W, IT power of the chips used) applies to every phase."""

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

    def chip_counts(self) -> tuple[int, ...]:
        c = self.chips if isinstance(self.chips, tuple | list) else (self.chips,)
        return tuple(sorted({int(x) for x in c}))

    def sign(self) -> float:
        return OBJECTIVES.get(self.objective, 1.0) if isinstance(self.objective, str) else 1.0

    def objective_name(self) -> str:
        o = self.objective
        return o if isinstance(o, str) else getattr(o, "__qualname__", "user_objective")

    def as_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        d["objective"] = self.objective_name()
        d["chips"] = (
            list(self.chip_counts()) if isinstance(self.chips, tuple | list) else self.chips
        )
        d["free"] = list(self.free) if self.free is not None else None
        d["fixed"] = dict(self.fixed)
        return d

    def signature(self, extra: str = "") -> str:
        text = json.dumps(self.as_dict(), sort_keys=True, default=str) + extra
        o = self.objective
        if callable(o):  # a user function is keyed by what it computes, not by its name
            text += _function_key(o)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


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


def _pow2_upto(n: int) -> list[int]:
    return [2**i for i in range(int(math.log2(max(n, 1))) + 1)]


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _content_key(*trees) -> str:
    from emu import __version__
    from emu.struct import content_digest

    return content_digest(*trees, salt=__version__)


def _pick(problem: Problem, knob: str, values) -> list[int]:
    """The values a knob may take: all valid `values` if it is free, else its fixed value
    (or default) when that value is valid here."""
    if problem.free is None or knob in problem.free:
        return list(values)
    v = dict(problem.fixed).get(knob, DEFAULTS[knob])
    return [x for x in values if x == v]


def _check_problem(system: System, problem: Problem) -> None:
    from emu.hardware import peak_flops

    if problem.phase not in ("train", "prefill", "decode"):
        raise ValueError(f"unknown phase '{problem.phase}'; use train, prefill or decode.")
    if float(peak_flops(system.chip, problem.precision)) <= 0:
        raise ValueError(
            f"{system.chip.name} has no {problem.precision} support; choose another --precision."
        )
    if "dp" in dict(problem.fixed):
        raise ValueError("dp follows the chip count (dp = chips / (tp pp cp)); fix --chips.")
    topo = set(problem.free or ()) & set(TOPOLOGY_KNOBS)
    if topo:
        raise ValueError(
            f"topology knobs ({', '.join(sorted(topo))}) vary through the grid "
            "(--grid NAME=V1,V2,...), not --free."
        )
    unknown = set(problem.free or ()) - set(KNOBS)
    unknown |= set(dict(problem.fixed)) - set(KNOBS)
    if unknown:
        raise ValueError(
            f"unknown knob(s) {', '.join(sorted(unknown))}; plan knobs: {', '.join(KNOBS)}; "
            f"topology knobs: {', '.join(TOPOLOGY_KNOBS)}."
        )
    if isinstance(problem.objective, str) and problem.objective not in OBJECTIVES:
        raise ValueError(
            f"unknown objective '{problem.objective}'; known: {', '.join(OBJECTIVES)}."
        )
    phase_only = {"tpot_s": "decode", "ttft_s": "prefill"}
    if isinstance(problem.objective, str) and phase_only.get(problem.objective, problem.phase) != (
        problem.phase
    ):
        raise ValueError(
            f"objective '{problem.objective}' exists only in the "
            f"{phase_only[problem.objective]} phase (it is 0 in {problem.phase})."
        )
    if any(c < 1 for c in problem.chip_counts()) or not problem.chip_counts():
        raise ValueError(f"--chips must be positive integers (got {problem.chips}).")
    top = float(system.tiers[-1].domain_chips)
    if max(problem.chip_counts()) > top:
        raise ValueError(
            f"--chips {max(problem.chip_counts())} exceeds the largest cluster of "
            f"{system.name} ({top:g}); reduce --chips."
        )
    for name, v in (
        ("power cap", problem.power_cap),
        ("TPOT SLO", problem.tpot_slo),
        ("TTFT SLO", problem.ttft_slo),
    ):
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise ValueError(f"the {name} must be a positive finite number (got {v}).")


def enumerate_plans(system: System, model: Model, problem: Problem) -> np.ndarray:
    """Every valid discrete plan as rows of KNOBS (float32 array [N, len(KNOBS)]).

    Training: tp a power of two dividing the heads (and the KV heads or vice versa) within
    the innermost tier; cp a power of two <= 16 dividing seq_len; pp dividing the layers;
    dp = chips / (tp pp cp); ep dividing the experts and tp dp cp (MoE), else 1; micro-batch
    a power of two dividing global_batch / dp; vpp in {1, 2, 4} with pp > 1 dividing
    layers / pp; ZeRO 0-3; recompute none/selective/full; SP with tp > 1 only.
    Prefill/decode: tp as above, dp = chips / tp (data-parallel attention), ep dividing the
    experts and the chips (MoE), batch per DP rank (`microbatch`) a power of two up to 64
    (prefill) or 4096 (decode); pp = cp = vpp = 1, no ZeRO, recompute or SP.
    Knobs that are not free take their fixed value. Each chip count of the problem adds its
    plans."""
    _check_problem(system, problem)
    heads, kv = int(model.n_heads), int(model.n_kv_heads)
    layers, experts = int(model.n_layers), int(model.n_experts)
    inner = max(int(float(system.tiers[0].domain_chips)), 1)
    rows = []
    for chips in problem.chip_counts():
        tps = [
            t
            for t in _pow2_upto(min(64, chips, inner))
            if not (heads % t or (kv % t and t % kv) or chips % t)
        ]
        for tp in _pick(problem, "tp", tps):
            if problem.phase != "train":
                dp = chips // tp
                eps = [e for e in _divisors(experts) if chips % e == 0] if experts else [1]
                mbs = _pow2_upto(4096 if problem.phase == "decode" else 64)
                for ep, mb in itertools.product(
                    _pick(problem, "ep", eps), _pick(problem, "microbatch", mbs)
                ):
                    rows.append((tp, 1, dp, 1, ep, mb, 1, 0, 0, 0))
                continue
            cps = [c for c in _pow2_upto(16) if not (problem.seq_len % c or chips % (tp * c))]
            for cp in _pick(problem, "cp", cps):
                pps = [p for p in _divisors(chips // (tp * cp)) if layers % p == 0]
                for pp in _pick(problem, "pp", pps):
                    dp = chips // (tp * cp * pp)
                    gb = int(_global_batch(problem, np.array([dp]), np.array([1]))[0])
                    if gb % dp:
                        continue
                    eps = (
                        [e for e in _divisors(experts) if (tp * dp * cp) % e == 0]
                        if experts
                        else [1]
                    )
                    mbs = [m for m in _pow2_upto(gb // dp) if (gb // dp) % m == 0]
                    vpps = [v for v in (1, 2, 4) if v == 1 or (pp > 1 and layers % (pp * v) == 0)]
                    sps = [0] if tp == 1 else _pick(problem, "sp", (0, 1))
                    rows.extend(
                        (tp, pp, dp, cp, *rest)
                        for rest in itertools.product(
                            _pick(problem, "ep", eps),
                            _pick(problem, "microbatch", mbs),
                            _pick(problem, "vpp", vpps),
                            _pick(problem, "zero", range(4)),
                            _pick(problem, "recompute", range(3)),
                            sps,
                        )
                    )
    if not rows:
        raise ValueError(
            f"no valid plan for {problem.chips} chips of {problem.system} and {problem.model} "
            "with the fixed knobs; check --chips, --seq-len and the fixed degrees (degrees "
            "must divide the heads, layers and experts; batches are powers of two, up to 64 "
            "in prefill and 4096 in decode)."
        )
    return np.asarray(rows, np.float32)


def _global_batch(problem: Problem, dp: np.ndarray, mb: np.ndarray) -> np.ndarray:
    """Sequences per step (host side, exact integers): inference dp x batch; training the
    problem's global batch, else the smallest multiple of dp with >= 4 Mi tokens."""
    dp = np.asarray(dp, np.int64)
    if problem.phase != "train":
        return dp * np.asarray(mb, np.int64)
    if problem.global_batch:
        return np.full_like(dp, problem.global_batch)
    return dp * np.maximum(1, -(-_TOKENS_PER_STEP // (problem.seq_len * dp)))


def _base_plan(problem: Problem) -> Plan:
    inference = problem.phase != "train"
    return make_plan(
        tp=1,
        pp=1,
        dp=1,
        seq_len=problem.seq_len,
        global_batch=1,
        precision=problem.precision,
        phase=problem.phase,
        context=problem.context,
        a2a_overlap=problem.a2a_overlap,
        moe_imbalance=problem.moe_imbalance,
        mtp_accept=problem.mtp_accept,
        cache_hit=problem.cache_hit,
        zero=0 if inference else 1,
        recompute="none" if inference else "selective",
    )


def plan_of(problem: Problem, row: dict) -> Plan:
    """The Plan of one result row (`best`, `top` or `pareto` entries): the same plan the
    search evaluated, for `emu.evaluate` or `emu.runner.run`."""
    base = _base_plan(problem)
    kw = {k: jnp.float32(row[k]) for k in KNOBS}
    gb = row.get("global_batch") or int(
        _global_batch(problem, np.array([row["dp"]]), np.array([row["microbatch"]]))[0]
    )
    return replace(base, global_batch=jnp.float32(gb), **kw)


def system_of(system: System, row: dict, grid_names=None) -> System:
    """The system of one result row: `system` with the row's grid values applied."""
    names = (
        grid_names
        if grid_names is not None
        else [k for k in row if "." in k or k in TOPOLOGY_KNOBS]
    )
    return _apply_grid(system, names, [jnp.float32(row[n]) for n in names])[0]


def _apply_grid(system: System, names, values) -> tuple[System, jnp.ndarray]:
    """`system` with grid values applied (field paths set, then topology knobs through
    `reshape`) and the copper-reach violation of the result (0 when reachable; computed
    whenever a knob or a tier field changes). Traceable."""
    s, topo = system, {}
    for n, v in zip(names, values, strict=True):
        if n in TOPOLOGY_KNOBS:
            topo[n] = v
        else:
            s = set_path(s, n, v)
    if topo or any(n.startswith("tiers.") for n in names):
        return reshape(s, **topo)
    return s, jnp.float32(0.0)


_TOPO_RANGE = {
    "domain": (1.0, math.inf),
    "scaleup_bw": (1e-3, 1e3),
    "scaleout_bw": (1e-3, 1e3),
    "oversubscription": (1.0, 1e3),
    "optics_share": (0.0, 1.0),
}


def check_grid(system: System, grid: dict | None) -> dict:
    """Validated grid: name -> sorted unique float values (field bounds, knob ranges)."""
    from emu.config import apply_overrides

    out = {}
    for name, values in (grid or {}).items():
        vals = sorted({float(v) for v in values})
        if not vals:
            raise ValueError(f"--grid {name}: give at least one value.")
        if name in TOPOLOGY_KNOBS:
            lo, hi = _TOPO_RANGE[name]
            bad = [v for v in vals if not (lo <= v <= hi)]
            if name == "domain":
                bad += [v for v in vals if v != int(v)]
            if bad:
                raise ValueError(
                    f"--grid {name}: {bad[0]:g} is outside [{lo:g}, {hi:g}] or not a whole "
                    f"number of chips ({TOPOLOGY_KNOBS[name]})."
                )
        else:
            for v in vals:
                apply_overrides(system, {name: v})  # unknown path or out-of-bounds: raises
        out[name] = vals
    return out


def _make_row_fn(system: System, model: Model, problem: Problem, names: list[str]):
    """f(knobs[K], global_batch, grid_values[G]) -> (COLUMNS vector, penalty): one
    configuration, traceable (vmap, grad). `penalty` sums the smooth log-excesses over the
    constraints (memory, SLO, power cap, reach); 0 when feasible."""
    base = _base_plan(problem)
    obj = problem.objective
    cap, phase = problem.power_cap, problem.phase

    def f(k, gb, gv):
        s, reach = _apply_grid(system, names, [gv[j] for j in range(len(names))])
        plan = replace(base, global_batch=gb, **{n: k[i] for i, n in enumerate(KNOBS)})
        r = evaluate(s, model, plan)
        excess = [jnp.log(r.memory.total_bytes / r.memory.capacity_bytes), reach]
        if cap is not None:
            excess.append(jnp.log(r.power_w / cap))
        if phase == "decode":
            excess.append(jnp.log(r.tpot_s / problem.tpot_slo))
        if phase == "prefill" and problem.ttft_slo is not None:
            excess.append(jnp.log(r.ttft_s / problem.ttft_slo))
        pen = sum(jax.nn.relu(e) for e in excess)
        ok = r.feasible > 0.5
        for e in excess[1:]:
            ok = ok & (e <= 1e-6)
        value = getattr(r, obj) if isinstance(obj, str) else obj(r)
        cols = [
            value,
            ok.astype(jnp.float32),
            r.step_time_s,
            r.tokens_per_s,
            r.tokens_per_s_per_chip,
            r.tokens_per_joule,
            r.power_w,
            r.mfu,
            r.ttft_s,
            r.tpot_s,
            r.memory.total_bytes,
        ]
        return jnp.stack([jnp.asarray(c, jnp.float32) for c in cols]), pen

    return f


#: XLA options for functions that run only a few hundred evaluations (the gradient phase,
#: exact re-evaluation): a cheaper backend optimisation level compiles ~30% faster
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _make_eval(system, model, problem, space: _Space, n: int, fast_compile: bool = False):
    """f(flat indices [n] int) -> list of COLUMNS blocks (asynchronous): ONE compiled
    function, called per block of up to 4096 rows, gathers each configuration's knobs and
    grid values from device-resident tables and evaluates them, with the rows sharded over
    the local devices."""
    row = _make_row_fn(system, model, problem, space.names)
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("d",))
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    if space.size >= 2**31:
        raise ValueError(
            f"the space has {space.size:.3g} configurations, more than one sweep indexes "
            "(2^31); narrow the grid or fix some knobs."
        )
    n_plans, shape = space.n_plans, space.shape
    sub = next(b for b in (4096, 2048, 1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1) if n % b == 0)
    # (one compiled function per block size: every block of a sweep has `sub` rows)

    def run(idx, plans, gb, axes):
        p, g = idx % n_plans, idx // n_plans
        vals = []
        for a in reversed(range(len(shape))):  # C order: the last axis varies fastest
            vals.append(axes[a][g % shape[a]])
            g = g // shape[a]
        gv = jnp.stack(vals[::-1], axis=1) if vals else jnp.zeros((idx.shape[0], 0))
        return jax.vmap(lambda k, b, v: row(k, b, v)[0])(plans[p], gb[p], gv)

    fn = jax.jit(run, in_shardings=(shard, rep, rep, rep), out_shardings=shard)
    tables = jax.device_put(
        (
            jnp.asarray(space.plans, jnp.float32),
            jnp.asarray(space.gb, jnp.float32),
            tuple(jnp.asarray(a, jnp.float32) for a in space.axes),
        ),
        rep,
    )

    compiled = {}

    def block(idx: np.ndarray):
        a = jax.device_put(np.asarray(idx, np.int32), shard)
        if not fast_compile:
            return fn(a, *tables)
        if "fn" not in compiled:
            compiled["fn"] = fn.lower(a, *tables).compile(compiler_options=FAST_COMPILE)
        return compiled["fn"](a, *tables)

    def call(idx: np.ndarray) -> list:
        """Dispatch blocks of `sub` rows (asynchronous); np.concatenate the list for the
        values. Blocks of ~4096 keep the intermediates in the CPU caches: 2-4x faster than
        one vmap over a chunk of 2^18."""
        return [block(idx[s : s + sub]) for s in range(0, len(idx), sub)]

    return call


def _write_chunk(path: Path, data: np.ndarray) -> None:
    digest = hashlib.sha256(data.tobytes()).hexdigest()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, data=data, sha256=np.array(digest))
    os.replace(tmp, path)


def _read_chunk(path: Path, rows: int) -> np.ndarray | None:
    """The chunk's data if it is complete and its checksum matches, else None."""
    try:
        with np.load(path) as z:
            data, digest = z["data"], str(z["sha256"])
    except Exception:  # noqa: BLE001 - any unreadable file is a corrupt checkpoint
        return None
    if data.shape != (rows, len(COLUMNS)) or hashlib.sha256(data.tobytes()).hexdigest() != digest:
        return None
    return data


def pareto_front(tokens_per_s: np.ndarray, power_w: np.ndarray) -> np.ndarray:
    """Indices of the plans no other plan beats on both more tokens/s and fewer watts
    (vectorised: by rising power, keep each plan that beats every cheaper one)."""
    if tokens_per_s.size == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((-tokens_per_s, power_w))
    t = tokens_per_s[order]
    prev = np.concatenate([[-np.inf], np.maximum.accumulate(t)[:-1]])
    return order[t > prev].astype(np.int64)


class _Space:
    """The discrete space: valid plans x grid points, indexed i = g * n_plans + p."""

    def __init__(self, system, model, problem, grid):
        self.grid = check_grid(system, grid)
        # TP may span the widest scale-up domain the grid offers
        widest = (
            reshape(system, domain=max(self.grid["domain"]))[0] if "domain" in self.grid else system
        )
        self.plans = enumerate_plans(widest, model, problem)
        self.names = list(self.grid)
        self.axes = [np.asarray(v, np.float64) for v in self.grid.values()]
        self.shape = tuple(len(a) for a in self.axes)
        self.n_plans = len(self.plans)
        self.n_points = int(np.prod(self.shape)) if self.shape else 1
        self.size = self.n_plans * self.n_points
        self.gb = _global_batch(
            problem, self.plans[:, KNOBS.index("dp")], self.plans[:, KNOBS.index("microbatch")]
        )
        # the independent coordinates of a plan (local search moves): every knob but dp,
        # which follows the chip count, and the chip count itself when it is free
        chips = np.prod(self.plans[:, [KNOBS.index(k) for k in ("tp", "pp", "dp", "cp")]], 1)
        names = [k for k in KNOBS if k != "dp"]
        self.moves = np.column_stack([self.plans[:, [KNOBS.index(k) for k in names]], chips])
        self.moves_tp_sp = (names.index("tp"), names.index("sp"))
        self.moves_pp_vpp = (names.index("pp"), names.index("vpp"))
        self.ranks = np.column_stack(
            [np.unique(c, return_inverse=True)[1] for c in self.moves.T]
        ).astype(np.int32)
        self.chips = chips

    def point(self, g) -> np.ndarray:
        """Grid values [len(g), G] of flat grid indices g."""
        g = np.atleast_1d(g)
        if not self.names:
            return np.zeros((g.size, 0), np.float32)
        idx = np.unravel_index(g, self.shape)
        return np.stack([a[i] for a, i in zip(self.axes, idx, strict=True)], 1).astype(np.float32)

    def rows(self, flat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        flat = np.asarray(flat, np.int64)
        p, g = flat % self.n_plans, flat // self.n_plans
        return self.plans[p], self.gb[p].astype(np.float32), self.point(g)

    def describe(self, idx, values: np.ndarray) -> list[dict]:
        """Result rows (dicts) of flat indices `idx` with their COLUMNS `values` [n, C]."""
        idx = np.asarray(idx, np.int64).reshape(-1)
        if idx.size == 0:
            return []
        k, gb, gv = self.rows(idx)
        values = np.asarray(values, np.float64).reshape(idx.size, len(COLUMNS))
        gv, k, gb = gv.tolist(), k.astype(np.int64).tolist(), gb.astype(np.int64).tolist()
        vals = values.tolist()
        fc = COLUMNS.index("feasible")
        return [
            {
                **dict(zip(self.names, gv[r], strict=True)),
                **dict(zip(KNOBS, k[r], strict=True)),
                "global_batch": gb[r],
                **dict(zip(COLUMNS, vals[r], strict=True)),
                "feasible": vals[r][fc] > 0.5,
            }
            for r in range(idx.size)
        ]


def _reduce_chunk(data: np.ndarray, offset: int, sign: float, top: int) -> tuple:
    """(top-k indices, their values, Pareto indices, their values, feasible count) of one
    chunk's feasible rows; indices are flat (offset added)."""
    fc, tc, pc = COLUMNS.index("feasible"), COLUMNS.index("tokens_per_s"), COLUMNS.index("power_w")
    feas = np.nonzero(data[:, fc] > 0.5)[0]
    if not feas.size:
        return None
    score = -sign * data[feas, 0]
    if feas.size > top:  # the k best, then ordered (stable: ties keep the lower index)
        keep = np.argpartition(score, top - 1)[:top]
        cut = score[keep].max()
        keep = np.nonzero(score <= cut)[0]  # every tie at the cut, so the order is exact
    else:
        keep = np.arange(feas.size)
    top_local = feas[keep[np.argsort(score[keep], kind="stable")][:top]]
    f_local = feas[pareto_front(data[feas, tc], data[feas, pc])]
    return top_local + offset, data[top_local], f_local + offset, data[f_local], feas.size


def _store(path: Path, data: np.ndarray, offset: int, sign: float, top: int) -> tuple:
    _write_chunk(path, data)
    return _reduce_chunk(data, offset, sign, top)


def sweep(
    system: System,
    model: Model,
    problem: Problem,
    out_dir,
    *,
    grid: dict | None = None,
    objective=None,
    top=10,
    chunk=CHUNK,
    process_id=0,
    num_processes=1,
    progress=None,
    warn=None,
) -> dict:
    """Evaluate every configuration of `problem` (plans x `grid`); results stream to
    `out_dir` (see module doc). `objective` overrides `problem.objective`. Returns
    {"best", "top", "pareto", "evaluations", "feasible", "wall_s", "chunks", "resumed", ...}
    where rows are dicts of grid values, KNOBS, global_batch and COLUMNS."""
    if objective is not None:
        problem = _with(problem, objective=objective)
    t0 = time.perf_counter()
    space = _Space(system, model, problem, grid)
    n = space.size
    n_dev = len(jax.local_devices())
    # the chunk size must not depend on the local device count (all processes share the
    # chunk layout): a multiple of 64, which every power-of-two device count divides
    chunk = max(64, min(chunk, int(2 ** math.ceil(math.log2(max(n, 1))))))
    chunk = int(math.ceil(chunk / 64) * 64)
    if chunk % n_dev:
        raise ValueError(
            f"{n_dev} local devices do not divide the chunk of {chunk} plans; "
            "use a power-of-two device count."
        )
    n_chunks = int(math.ceil(n / chunk))
    out = Path(out_dir)
    sig = problem.signature(f"{chunk}{json.dumps(space.grid)}" + _content_key(system, model))
    parts = out / f"parts-{sig}"
    parts.mkdir(parents=True, exist_ok=True)
    fn = _make_eval(system, model, problem, space, chunk)
    mine = [i for i in range(n_chunks) if i % num_processes == process_id]
    resumed, done = 0, 0

    def launch(i):  # dispatch chunk i (asynchronous: JAX returns before it is computed)
        rows = min(chunk, n - i * chunk)
        idx = np.arange(i * chunk, i * chunk + chunk)
        idx[rows:] = 0  # padding rows repeat configuration 0 and are dropped
        return fn(idx), rows

    todo, reduced, sign = [], {}, problem.sign()
    for i in mine:
        path = parts / f"chunk-{i:06d}.npz"
        rows = min(chunk, n - i * chunk)
        if path.exists():
            data = _read_chunk(path, rows)
            if data is not None:
                reduced[i] = _reduce_chunk(data, i * chunk, sign, top)
                resumed += 1
                done += 1
                if progress:
                    progress(done, len(mine), rows)
                continue
            if warn:
                warn(f"checkpoint {path.name} is corrupt or partial; recomputing it")
        todo.append(i)
    # pipeline: chunk i+1 computes (JAX dispatch is asynchronous) while a writer thread
    # checksums and stores chunk i; progress counts stored chunks only
    from concurrent.futures import ThreadPoolExecutor

    pending = None
    first_s = None
    with ThreadPoolExecutor(max_workers=1) as pool:
        writes = []
        for i in [*todo, None]:
            current = (i, *launch(i)) if i is not None else None
            if pending is not None:
                pi, fut, rows = pending
                data = np.concatenate([np.asarray(f) for f in fut])[:rows]
                if first_s is None:  # compilation + the first chunk
                    first_s = time.perf_counter() - t0
                path = parts / f"chunk-{pi:06d}.npz"
                writes.append((pi, pool.submit(_store, path, data, pi * chunk, sign, top)))
            while writes and (writes[0][1].done() or len(writes) > 1 or current is None):
                wi, w = writes.pop(0)
                reduced[wi] = w.result()  # re-raises a failed write
                if _THROTTLE_S:
                    time.sleep(_THROTTLE_S)
                done += 1
                if progress:
                    progress(done, len(mine), chunk)
            pending = current
    if process_id != 0:
        return {
            "evaluations": sum(min(chunk, n - i * chunk) for i in mine),
            "wall_s": time.perf_counter() - t0,
        }
    # streaming merge: per chunk keep its top-k candidates and its Pareto front, so memory
    # does not grow with the sweep
    oc, tc, pc = 0, COLUMNS.index("tokens_per_s"), COLUMNS.index("power_w")
    cand_idx, cand_val, front_idx, front_val = [], [], [], []
    n_feasible = 0
    for i in range(n_chunks):
        if i in reduced:  # computed or verified by this process: reduced in memory
            part = reduced[i]
        else:
            part = _reduce_chunk(
                _wait_chunk(parts, i, chunk, n, num_processes), i * chunk, sign, top
            )
        if part is not None:
            ti, tv, fi, fv, nf = part
            cand_idx.append(ti)
            cand_val.append(tv)
            front_idx.append(fi)
            front_val.append(fv)
            n_feasible += nf
    top_rows, front_rows = [], []
    if cand_idx:
        ci, cv = np.concatenate(cand_idx), np.concatenate(cand_val)
        order = np.lexsort((ci, -sign * cv[:, oc]))[:top]
        top_rows = space.describe(ci[order], cv[order])
        fi, fv = np.concatenate(front_idx), np.concatenate(front_val)
        keep = pareto_front(fv[:, tc], fv[:, pc])
        front_rows = space.describe(fi[keep], fv[keep])
    return {
        "problem": problem.as_dict(),
        "objective": problem.objective_name(),
        "best": top_rows[0] if top_rows else None,
        "top": top_rows,
        "pareto": front_rows,
        "evaluations": n,
        "feasible": int(n_feasible),
        "space": n,
        "grid_points": space.n_points,
        "chunks": n_chunks,
        "resumed": resumed,
        "wall_s": time.perf_counter() - t0,
        "first_chunk_s": first_s,
        "_parts": parts,
        "_chunk": chunk,
        "_space": space,
    }


def _wait_chunk(parts: Path, i: int, chunk: int, n: int, num_processes: int) -> np.ndarray:
    """Chunk i written by another process (waited for), or raise if it is missing."""
    deadline = time.time() + 3600  # per chunk: a slow peer is waited for, not aborted
    path = parts / f"chunk-{i:06d}.npz"
    rows = min(chunk, n - i * chunk)
    while True:
        data = _read_chunk(path, rows) if path.exists() else None
        if data is not None:
            return data
        if i % num_processes == 0 or time.time() > deadline:
            raise ValueError(f"sweep chunk {path} is missing or corrupt; rerun the command.")
        time.sleep(0.2)  # another process is still writing it


def _with(problem: Problem, **kw) -> Problem:
    return dataclasses.replace(problem, **kw)


def _table_writer(path: Path, header: list[str]):
    """(write(block), close()) for CSV or Parquet (by suffix), atomic: write, then rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent if str(path.parent) else ".", prefix=".tmp-", suffix=path.suffix
    )
    if path.suffix.lower() == ".parquet":
        os.close(fd)
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            os.unlink(tmp)
            raise ValueError(
                "Parquet output needs pyarrow: pip install 'cluster-emu[parquet]', "
                "or give --out a .csv name."
            ) from None
        schema = pa.schema([(h, pa.float64()) for h in header])
        writer = pq.ParquetWriter(tmp, schema)

        def write(block):
            writer.write_table(
                pa.Table.from_arrays(
                    [pa.array(block[:, j].astype(np.float64)) for j in range(len(header))],
                    schema=schema,
                )
            )

        def close():
            writer.close()
            os.replace(tmp, path)

        return write, close
    fh = os.fdopen(fd, "w")
    fh.write(",".join(header) + "\n")

    def write(block):
        np.savetxt(fh, block, delimiter=",", fmt="%.7g")

    def close():
        fh.close()
        os.replace(tmp, path)

    return write, close


def write_table(result: dict, path) -> Path:
    """Every evaluated configuration (grid values, knobs, global batch, outputs) as CSV or
    Parquet (by the file's suffix), streamed chunk by chunk and written atomically. For a
    sweep: the whole space, from its checkpoints; for a gradient search: every exactly
    evaluated candidate."""
    path = Path(path)
    space = result["_space"]
    header = [*space.names, *KNOBS, "global_batch", *COLUMNS]
    write, close = _table_writer(path, header)
    if "_parts" in result:
        chunk, n = result["_chunk"], result["evaluations"]
        for i in range(result["chunks"]):
            rows = min(chunk, n - i * chunk)
            data = _read_chunk(result["_parts"] / f"chunk-{i:06d}.npz", rows)
            if data is None:
                raise ValueError(f"sweep chunk {i} vanished or changed; rerun the sweep.")
            k, gb, gv = space.rows(np.arange(i * chunk, i * chunk + rows))
            write(np.concatenate([gv, k, gb[:, None], data], axis=1))
    else:
        idx = np.asarray(sorted(result["_scores"]), np.int64)
        if idx.size:
            k, gb, gv = space.rows(idx)
            vals = np.stack([result["_scores"][int(i)] for i in idx])
            write(np.concatenate([gv, k, gb[:, None], vals], axis=1))
    close()
    return path


# ----------------------------------------------------------------------------- gradient search

#: plan knobs relaxed to continuous log2 coordinates (dp too when the chip count is free)
RELAXED = ("tp", "pp", "cp", "ep", "microbatch", "vpp")
#: plan knobs chosen per start and by the discrete polish (categorical)
CATEGORICAL = ("zero", "recompute", "sp")
_PENALTY = 10.0


class _Exact:
    """Exact, cached evaluation of flat configuration indices, in compiled batches of
    fixed size (one compilation), returning sign x objective (-inf when infeasible)."""

    def __init__(self, system, model, problem, space):
        self.BATCH = 64 * len(jax.local_devices())  # any device count divides it
        self.space, self.sign = space, problem.sign()
        self.fn = _make_eval(system, model, problem, space, self.BATCH, fast_compile=True)
        self.values: dict[int, np.ndarray] = {}

    def __call__(self, idx) -> None:
        new = [int(i) for i in dict.fromkeys(idx) if int(i) not in self.values]
        for s in range(0, len(new), self.BATCH):
            part = np.asarray(new[s : s + self.BATCH], np.int64)
            pad = np.concatenate([part, np.full(self.BATCH - part.size, part[0])])
            out = np.concatenate([np.asarray(f) for f in self.fn(pad)])
            for j, i in enumerate(part):
                self.values[int(i)] = out[j]

    def score(self, i: int) -> float:
        v = self.values[int(i)]
        return float(self.sign * v[0]) if v[1] > 0.5 else -math.inf


def _neighbours(space: _Space, i: int, radius: int) -> list[int]:
    """Configurations `radius` moves or fewer from i. A move changes one independent plan
    knob (or the chip count, when it is free) to another valid value (dp follows the chip
    count, SP follows TP) or steps one grid axis to the next value up or down, possibly
    setting one other axis to any value (axes that must move together, such as the
    scale-up domain and its optical share). A single move may jump a knob to any value;
    within several moves each knob steps to a neighbouring value."""
    p, g = i % space.n_plans, i // space.n_plans
    t, (tp, sp), (pp, vpp) = space.moves, space.moves_tp_sp, space.moves_pp_vpp
    other = [j for j in range(t.shape[1]) if j not in (sp, vpp)]
    diff = np.sum(t[:, other] != t[p, other], axis=1)
    # SP follows TP and VPP follows PP (they exist only with tp > 1, pp > 1): a change of
    # their own counts as a move only then
    diff += (t[:, tp] > 1) & (t[p, tp] > 1) & (t[:, sp] != t[p, sp])
    diff += (t[:, pp] > 1) & (t[p, pp] > 1) & (t[:, vpp] != t[p, vpp])
    # one move may jump a knob to any value; several moves step each knob to a neighbouring
    # value (keeps the two-move neighbourhood small)
    adjacent = np.max(np.abs(space.ranks[:, other] - space.ranks[p, other]), axis=1) <= 1
    gi = np.array(np.unravel_index(g, space.shape)) if space.names else np.zeros(0, int)
    out = []
    for grid_moves in range(min(radius, 2 * len(space.shape)) + 1):
        budget = radius - grid_moves
        ok = (diff <= budget) & (diff > 0 if grid_moves == 0 else diff >= 0)
        if radius > 1:
            ok &= adjacent | (diff <= 1) & (grid_moves == 0)
        near = np.nonzero(ok)[0]
        for steps in itertools.combinations(range(len(space.shape)), grid_moves):
            for signs in itertools.product((-1, 1), repeat=grid_moves):
                h = gi.copy()
                for a, d in zip(steps, signs, strict=True):
                    h[a] += d
                if np.any(h < 0) or np.any(h >= np.asarray(space.shape, int)):
                    continue
                gg = int(np.ravel_multi_index(tuple(h), space.shape)) if space.names else 0
                out.extend((gg * space.n_plans + near).tolist())
    shape = np.asarray(space.shape, int)
    if radius == 1 and shape.size > 1:  # coupled axes: a step on one, any value on another
        for a, d in itertools.product(range(shape.size), (-1, 1)):
            if not 0 <= gi[a] + d < shape[a]:
                continue
            for b in range(shape.size):
                for v in range(shape[b]) if b != a else ():
                    h = gi.copy()
                    h[a], h[b] = h[a] + d, v
                    out.append(int(np.ravel_multi_index(tuple(h), space.shape)) * space.n_plans + p)
    return [j for j in dict.fromkeys(out) if j != i]


def gradient_search(
    system: System,
    model: Model,
    problem: Problem,
    *,
    grid: dict | None = None,
    objective=None,
    starts=None,
    steps=40,
    learning_rate=0.2,
    optimizer=None,
    neighbours=3,
    polish=5,
    top=10,
    seed=0,
    progress=None,
) -> dict:
    """Maximise the problem's objective by gradient over relaxed plans (and grid axes),
    then round to valid discrete configurations and polish them; see the module doc.

    Continuous coordinates: log2 of the free degrees in RELAXED (and of the chip count when
    it is free; dp takes the remaining chips) and one coordinate in [0, 1] per
    grid axis (log-spaced between its extremes). ZeRO, recompute and SP are relaxed
    categorical choices (a softmax per knob; each step samples one value and moves the
    logits by the score-function gradient). `starts` starts
    (random, seeded; default sqrt(space size) / 16, clipped to 4..16) run at once under
    vmap for `steps` steps of `optimizer` (default optax.adam(learning_rate)) inside one
    `lax.scan`, each keeping its best point. Each is rounded to its `neighbours` nearest
    valid plans (log2 distance) at the grid points around it; from the best rounded point
    of the `polish` best starts, a variable-neighbourhood descent moves to the best
    configuration one move away (see `_neighbours`), or two when none is better, until
    neither improves. Every reported value is exact.

    `progress(stage, evaluations)`, if given, is called as the search advances.
    Returns {"best", "top", "evaluations" (gradient + exact), "gradient_evaluations",
    "exact_evaluations", "space", "wall_s", ...}."""
    import optax

    if objective is not None:
        problem = _with(problem, objective=objective)
    t0 = time.perf_counter()
    space = _Space(system, model, problem, grid)
    if starts is None:  # the budget grows with the space: 4 starts up to 16 from 65,536
        starts = int(np.clip(math.sqrt(space.size) / 16, 4, 16))
    plans = space.plans
    names = [k for k in RELAXED if np.unique(plans[:, KNOBS.index(k)]).size > 1]
    table = {k: plans[:, KNOBS.index(k)] for k in names}
    if np.unique(space.chips).size > 1:  # the chip count is a knob; dp follows it
        names.append("chips")
        table["chips"] = space.chips
    logp = (
        np.log2(np.column_stack([table[k] for k in names])) if names else np.zeros((len(plans), 0))
    )
    lo_p, hi_p = logp.min(0), logp.max(0)
    axes = [a for a in space.axes]
    g_axes = [j for j, a in enumerate(axes) if a.size > 1]
    pos = [bool(np.all(a > 0)) for a in axes]

    def t_of(j, v):  # grid value -> coordinate in [0, 1]
        a = axes[j]
        lo, hi = (np.log(a[0]), np.log(a[-1])) if pos[j] else (a[0], a[-1])
        x = np.log(v) if pos[j] else v
        return (x - lo) / (hi - lo)

    def value_of(j, t):  # coordinate -> grid value (traceable)
        a = axes[j]
        if pos[j]:
            return jnp.exp(np.log(a[0]) + t * (np.log(a[-1]) - np.log(a[0])))
        return a[0] + t * (a[-1] - a[0])

    row = _make_row_fn(system, model, problem, space.names)
    chips = float(space.chips[0])  # the chip count when it is not a knob
    sign = problem.sign()
    heads = float(model.n_heads)
    moe = float(model.n_experts) > 0
    i_dp, i_mb, i_ep = KNOBS.index("dp"), KNOBS.index("microbatch"), KNOBS.index("ep")

    def relaxed(x, cat):
        """Relaxed score of one start: sign x log objective - penalties."""
        k = jnp.asarray(plans[0], jnp.float32)
        for c, kname in zip(cat, CATEGORICAL, strict=True):
            k = k.at[KNOBS.index(kname)].set(c)
        deg = {n: 2.0 ** x[j] for j, n in enumerate(names)}
        for n, v in deg.items():
            if n != "chips":
                k = k.at[KNOBS.index(n)].set(v)
        tp, pp, cp = (k[KNOBS.index(n)] for n in ("tp", "pp", "cp"))
        extra = jnp.float32(0.0)
        k = k.at[i_dp].set(deg.get("chips", chips) / (tp * pp * cp))
        dp = k[i_dp]
        if problem.phase == "train":
            gb = (
                jnp.float32(problem.global_batch)
                if problem.global_batch
                else jnp.maximum(dp, _TOKENS_PER_STEP / problem.seq_len)
            )
            extra += jax.nn.relu(jnp.log2(k[i_mb] * dp / gb))  # micro-batch <= batch per rank
        else:
            gb = dp * k[i_mb]
        extra += jax.nn.relu(-jnp.log2(dp)) + jax.nn.relu(jnp.log2(tp / heads))
        if moe:
            extra += jax.nn.relu(jnp.log2(k[i_ep] / (tp * dp * cp)))
        gv = (
            jnp.stack([value_of(j, x[len(names) + n]) for n, j in enumerate(g_axes)])
            if g_axes
            else None
        )
        full = []
        for j, a in enumerate(axes):
            full.append(gv[g_axes.index(j)] if j in g_axes else jnp.float32(a[0]))
        gvec = jnp.stack(full) if full else jnp.zeros((0,), jnp.float32)
        out, pen = row(k, gb, gvec)
        v = out[0]
        core = sign * jnp.log(jnp.maximum(v, 1e-30)) if isinstance(problem.objective, str) else v
        p = pen + extra
        return core - _PENALTY * (p + p**2)

    dim = len(names) + len(g_axes)
    lo = jnp.asarray(np.concatenate([lo_p, np.zeros(len(g_axes))]), jnp.float32)
    hi = jnp.asarray(np.concatenate([hi_p, np.ones(len(g_axes))]), jnp.float32)
    opt = optax.adam(learning_rate) if optimizer is None else optimizer
    rng = np.random.default_rng(seed)
    x0 = jnp.asarray(rng.uniform(0, 1, (starts, dim)) * (hi - lo) + lo, jnp.float32)
    # ZeRO, recompute and SP: relaxed categorical choices, a softmax per knob over its
    # valid values; each step samples one value per knob (Gumbel-max) and updates the
    # logits with the score-function gradient against a moving baseline, so a step costs
    # one evaluation however many combinations exist
    cat_idx = [KNOBS.index(c) for c in CATEGORICAL]
    choices = [jnp.asarray(np.unique(plans[:, j]), jnp.float32) for j in cat_idx]
    sizes = [int(c.size) for c in choices]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    lg0 = jnp.asarray(rng.normal(0.0, 0.5, (starts, int(offsets[-1]))), jnp.float32)
    keys = jax.random.split(jax.random.PRNGKey(seed), starts)
    vg = jax.value_and_grad(lambda x, c: -relaxed(x, c))

    def sample(lg, key):
        vals, onehot, prob = [], [], []
        for j, n in enumerate(sizes):
            part = lg[offsets[j] : offsets[j] + n]
            key, sub = jax.random.split(key)
            i = jnp.argmax(part + jax.random.gumbel(sub, (n,)))
            vals.append(choices[j][i])
            onehot.append(jax.nn.one_hot(i, n))
            prob.append(jax.nn.softmax(part))
        return jnp.stack(vals), jnp.concatenate(onehot), jnp.concatenate(prob)

    @jax.jit
    def run(x0, lg0, keys):
        def one(x, lg, key):
            params = (x, lg)
            state = opt.init(params)

            def step(carry, key):
                (x, lg), state, best_x, best_c, best_f, base = carry
                c, onehot, prob = sample(lg, key)
                f, gx = vg(x, c)
                gx = jnp.where(jnp.isfinite(gx), gx, 0.0)
                base = jnp.where(jnp.isfinite(base), base, f)
                adv = jnp.clip(f - base, -10.0, 10.0)
                glg = adv * (onehot - prob)  # d E[f] / d logits, score-function estimate
                base = 0.8 * base + 0.2 * f
                better = f < best_f
                best_x = jnp.where(better, x, best_x)
                best_c = jnp.where(better, c, best_c)
                best_f = jnp.where(better, f, best_f)
                upd, state = opt.update((gx, glg), state, (x, lg))
                x, lg = optax.apply_updates((x, lg), upd)
                x = jnp.clip(x, lo, hi)
                return ((x, lg), state, best_x, best_c, best_f, base), None

            inf = jnp.float32(jnp.inf)
            c0 = jnp.stack([ch[0] for ch in choices])
            init = (params, state, x, c0, inf, inf)
            keys_s = jax.random.split(key, steps)
            (_, _, best_x, best_c, _, _), _ = jax.lax.scan(step, init, keys_s)
            return best_x, best_c  # the best evaluated point and its categorical values

        return jax.vmap(one)(x0, lg0, keys)

    report = progress or (lambda stage, evaluations: None)
    report("compiling and running the gradient phase", 0)
    with jax.numpy_dtype_promotion("standard"):
        compiled = run.lower(x0, lg0, keys).compile(compiler_options=FAST_COMPILE)
        x_opt, cats = jax.device_get(compiled(x0, lg0, keys))
    x_opt = np.asarray(x_opt)
    grad_evals = starts * steps
    # rounding: each start's nearest valid plans (same categorical choice) at the grid
    # points around it (the nearest value below and above on each axis)
    exact = _Exact(system, model, problem, space)
    per_start = []
    cat_np = np.asarray(cats)
    for s in range(starts):
        same = np.nonzero(np.all(plans[:, cat_idx] == cat_np[s], axis=1))[0]
        pool = same if same.size else np.arange(len(plans))
        d = np.sum((logp[pool] - x_opt[s, : len(names)]) ** 2, axis=1)
        near = pool[np.argsort(d, kind="stable")[:neighbours]]
        around = []
        for n, j in enumerate(g_axes):
            t = t_of(j, axes[j]) - x_opt[s, len(names) + n]
            lo = np.nonzero(t <= 0)[0]
            hi = np.nonzero(t >= 0)[0]
            around.append(sorted({int(lo[-1]) if lo.size else 0, int(hi[0]) if hi.size else 0}))
        mine = []
        for pick in itertools.product(*around):
            gi = [0] * len(axes)
            for j, v in zip(g_axes, pick, strict=True):
                gi[j] = v
            g = int(np.ravel_multi_index(tuple(gi), space.shape)) if axes else 0
            mine += [g * space.n_plans + int(p) for p in near]
        per_start.append(mine)
    report("rounding to valid plans", grad_evals)
    exact([i for m in per_start for i in m])
    # polish seeds: the best rounded configuration of each start (diverse basins), best first
    firsts = {max(m, key=exact.score) for m in per_start}
    seeds = sorted(firsts, key=lambda i: (-exact.score(i), i))[:polish]
    for cur in seeds:  # variable-neighbourhood descent: one move, then two when stuck
        radius = 1
        while radius <= 2:
            nb = _neighbours(space, cur, radius)
            exact(nb)
            report("polishing (local search)", grad_evals + len(exact.values))
            best_nb = max(nb, key=exact.score, default=cur)
            if exact.score(best_nb) > exact.score(cur):
                cur, radius = best_nb, 1
            else:
                radius += 1
    report("done", grad_evals + len(exact.values))
    ranked = sorted(exact.values, key=lambda i: (-exact.score(i), i))
    feasible = [i for i in ranked if exact.score(i) > -math.inf]
    top_rows = space.describe(feasible[:top], [exact.values[i] for i in feasible[:top]])
    return {
        "problem": problem.as_dict(),
        "objective": problem.objective_name(),
        "best": top_rows[0] if top_rows else None,
        "top": top_rows,
        "evaluations": int(grad_evals + len(exact.values)),
        "gradient_evaluations": int(grad_evals),
        "exact_evaluations": len(exact.values),
        "space": int(space.size),
        "wall_s": time.perf_counter() - t0,
        "_scores": exact.values,
        "_space": space,
    }
