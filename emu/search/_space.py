"""The discrete design space: every valid parallel plan (host-side numpy) times a grid of
system values, and how one configuration of it becomes a (system, plan) pair.

A grid axis is a dotted system field path (`chip.hbm_bytes_per_s`) or a topology knob of
`emu.topology.reshape` (`domain`, `scaleup_bw`, `scaleout_bw`, `oversubscription`,
`optics_share`). Grid values pass the same checks as any override (emu.overrides: the bounds
beside the field, then the system's cross-field rules).
"""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np

from emu.overrides import apply_overrides
from emu.plan import Plan, make_plan
from emu.plan import knobs as plan_knobs
from emu.policy import DEFAULT_BATCH_TOKENS, divisors
from emu.search._problem import COLUMNS, DEFAULTS, KNOBS, Problem, check_problem, fixed_values
from emu.struct import check, replace, set_path
from emu.topology import TOPOLOGY_KNOBS, System, node_tier, reshape
from emu.workload import Model

#: the range of each topology knob on a grid (factors of today's value, or chips/shares)
TOPOLOGY_RANGES = {
    "domain": (1.0, math.inf),
    "scaleup_bw": (1e-3, 1e3),
    "scaleout_bw": (1e-3, 1e3),
    "oversubscription": (1.0, 1e3),
    "optics_share": (0.0, 1.0),
}


_KNOBS = {k.name: k for k in plan_knobs(searchable=True)}


def _choices(name: str) -> list[int]:
    """Every stored value of a categorical knob (zero, recompute, sp), from its declaration."""
    return [int(v) for v in _KNOBS[name].values]


def _pow2_upto(n: int) -> list[int]:
    return [2**i for i in range(int(math.log2(max(n, 1))) + 1)]


def _pick(problem: Problem, knob: str, values) -> list[int]:
    """The values a knob may take: its fixed value when `problem.fixed` sets it (with or
    without `free`: a fixed knob given alone was searched over every value), all valid
    `values` if it is free, else its default; each only when valid here."""
    fixed = fixed_values(problem)
    if knob not in fixed and (problem.free is None or knob in problem.free):
        return list(values)
    v = fixed.get(knob, DEFAULTS[knob])
    return [x for x in values if x == v]


def _divisors_upto(n: int, cap: int) -> list[int]:
    """The divisors of n that are <= cap, ascending."""
    return [d for d in divisors(n) if d <= cap]


def _serving_rows(problem: Problem, chips: int, tp: int, experts: int) -> list[tuple]:
    """Prefill/decode plans at one tp: dp = chips / tp, ep dividing the experts and the
    chips, batch per DP rank a power of two up to 64 (prefill) or 4096 (decode)."""
    dp = chips // tp
    eps = [e for e in divisors(experts) if chips % e == 0] if experts else [1]
    mbs = _pow2_upto(4096 if problem.phase == "decode" else 64)
    return [
        (tp, 1, dp, 1, ep, mb, 1, 0, 0, 0)
        for ep, mb in itertools.product(
            _pick(problem, "ep", eps), _pick(problem, "microbatch", mbs)
        )
    ]


def _training_rows(problem: Problem, model: Model, chips: int, tp: int) -> list[tuple]:
    """Training plans at one tp (see `enumerate_plans`)."""
    layers, experts = int(model.n_layers), int(model.n_experts)
    rows = []
    # Megatron-LM's rules: any cp dividing the sequence (here up to 16), any pp dividing the
    # layers, any micro-batch dividing the batch per DP rank, any vpp dividing the layers
    # per stage (interleaving needs pp > 1)
    cps = [c for c in _divisors_upto(problem.seq_len, 16) if not chips % (tp * c)]
    for cp in _pick(problem, "cp", cps):
        pps = [p for p in divisors(chips // (tp * cp)) if layers % p == 0]
        for pp in _pick(problem, "pp", pps):
            dp = chips // (tp * cp * pp)
            gb = int(global_batch(problem, np.array([dp]), np.array([1]))[0])
            if gb % dp:
                continue
            eps = [e for e in divisors(experts) if (tp * dp * cp) % e == 0] if experts else [1]
            mbs = divisors(gb // dp)
            vpps = divisors(layers // pp) if pp > 1 else [1]
            sps = [0] if tp == 1 else _pick(problem, "sp", _choices("sp"))
            rows.extend(
                (tp, pp, dp, cp, *rest)
                for rest in itertools.product(
                    _pick(problem, "ep", eps),
                    _pick(problem, "microbatch", mbs),
                    _pick(problem, "vpp", vpps),
                    _pick(problem, "zero", _choices("zero")),
                    _pick(problem, "recompute", _choices("recompute")),
                    sps,
                )
            )
    return rows


def enumerate_plans(system: System, model: Model, problem: Problem) -> np.ndarray:
    """Every valid discrete plan as rows of KNOBS (float32 array [N, len(KNOBS)]).

    Every degree the frameworks allow (Megatron-LM's divisibility rules, not only powers
    of two). Training: tp <= 64 dividing the heads (and the KV heads or vice versa) and the
    chips, within the scale-up node (node_tier, in ranks); cp <= 16 dividing seq_len; pp
    dividing the layers;
    dp = chips / (tp pp cp); ep dividing the experts and tp dp cp (MoE), else 1; micro-batch
    dividing global_batch / dp; vpp dividing layers / pp (vpp > 1 only with pp > 1: 3 and 6
    where the layers allow); ZeRO 0-3; recompute none/selective/full; SP with tp > 1 only.
    Prefill/decode: tp as above, dp = chips / tp (data-parallel attention), ep dividing the
    experts and the chips (MoE), batch per DP rank (`microbatch`) a power of two up to 64
    (prefill) or 4096 (decode); pp = cp = vpp = 1, no ZeRO, recompute or SP.
    Knobs that are not free take their fixed value. Each chip count of the problem adds its
    plans."""
    rows = _plan_rows(system, model, problem)
    if not rows:
        raise ValueError(_no_plan_reason(system, model, problem))
    return np.asarray(rows, np.float32)


#: what a fixed knob must satisfy (`enumerate_plans`), by phase kind
_KNOB_RULES = {
    ("tp", "train"): "divide the heads (and the KV heads, or be divided by them) and the "
    "chips, within the scale-up domain",
    ("pp", "train"): "divide the layers and chips / (tp x cp)",
    ("cp", "train"): "divide the sequence length (at most 16) and chips / tp",
    ("vpp", "train"): "divide layers / pp (and be 1 without a pipeline)",
    ("microbatch", "train"): "divide global batch / dp",
    ("ep", "train"): "divide the experts and tp x dp x cp",
    ("tp", "serve"): "divide the heads (and the KV heads, or be divided by them) and the "
    "chips, within the scale-up domain",
    ("ep", "serve"): "divide the experts and the chips",
    ("microbatch", "serve"): "be a power of two, up to 64 in prefill and 4096 in decode",
}


def _no_plan_reason(system: System, model: Model, problem: Problem) -> str:
    """Why no plan is valid: the one fixed knob that, left free, admits plans (with the
    rule it breaks), else the general rules."""
    head = (
        f"no valid plan for {problem.chips} chips of {problem.system} and {problem.model} "
        "with the fixed knobs"
    )
    kind = "train" if problem.phase == "train" else "serve"
    for name, value in problem.fixed:
        if (name, kind) not in _KNOB_RULES:
            continue
        freed = replace(
            problem,
            fixed=tuple(kv for kv in problem.fixed if kv[0] != name),
            free=None if problem.free is None else (*problem.free, name),
        )
        if _plan_rows(system, model, freed):
            label = "the batch per DP rank" if (name, kind) == ("microbatch", "serve") else name
            return (
                f"{head}: {label} = {value:g} admits none (it must "
                f"{_KNOB_RULES[name, kind]}); change or drop it."
            )
    return (
        f"{head}; check the chip count, the sequence length and the fixed degrees (degrees "
        "must divide the heads, layers and experts; a training micro-batch must divide the "
        "global batch / dp; a serving batch is a power of two, up to 64 in prefill and 4096 "
        "in decode)."
    )


def _plan_rows(system: System, model: Model, problem: Problem) -> list:
    check_problem(system, problem, model)
    heads, kv = int(model.n_heads), int(model.n_kv_heads)
    dies = int(round(float(system.chip.dies_per_chip)))  # plans count ranks (dies)
    inner = max(int(float(node_tier(system).domain_chips)), 1) * dies
    rows = []
    for packages in problem.chip_counts():
        chips = packages * dies
        tps = [
            t
            for t in _divisors_upto(heads, min(64, chips, inner))
            if not ((kv % t and t % kv) or chips % t)
        ]
        for tp in _pick(problem, "tp", tps):
            if problem.phase != "train":
                rows += _serving_rows(problem, chips, tp, int(model.n_experts))
            else:
                rows += _training_rows(problem, model, chips, tp)
    return rows


def global_batch(problem: Problem, dp: np.ndarray, mb: np.ndarray) -> np.ndarray:
    """Sequences per step (host side, exact integers): inference dp x batch; training the
    problem's global batch, else the smallest multiple of dp with >= DEFAULT_BATCH_TOKENS
    tokens."""
    dp = np.asarray(dp, np.int64)
    if problem.phase != "train":
        return dp * np.asarray(mb, np.int64)
    if problem.global_batch:
        return np.full_like(dp, problem.global_batch)
    return dp * np.maximum(1, -(-DEFAULT_BATCH_TOKENS // (problem.seq_len * dp)))


def base_plan(problem: Problem) -> Plan:
    """The plan every configuration of `problem` starts from (knobs then replaced)."""
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
        kv_precision=problem.kv_precision,
        zero=0 if inference else 1,
        recompute="none" if inference else "selective",
    )


def plan_of(problem: Problem, row: dict) -> Plan:
    """The Plan of one result row (`best`, `top` or `pareto` entries): the same plan the
    search evaluated, for `emu.evaluate` or `emu.analysis.run`."""
    base = base_plan(problem)
    kw = {k: jnp.float32(row[k]) for k in KNOBS}
    gb = row.get("global_batch") or int(
        global_batch(problem, np.array([row["dp"]]), np.array([row["microbatch"]]))[0]
    )
    return replace(base, global_batch=jnp.float32(gb), **kw)


def system_of(system: System, row: dict, grid_names=None) -> System:
    """The system of one result row: `system` with the row's grid values applied."""
    names = (
        grid_names
        if grid_names is not None
        else [k for k in row if "." in k or k in TOPOLOGY_KNOBS]
    )
    return apply_grid(system, names, [jnp.float32(row[n]) for n in names])[0]


def apply_grid(system: System, names, values) -> tuple[System, jnp.ndarray]:
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


def check_grid(system: System, grid: dict | None) -> dict:
    """Validated grid: name -> sorted unique float values. A field path's values pass the
    checks of any override (the bounds beside the field, then the system's cross-field
    rules); a topology knob's values lie in TOPOLOGY_RANGES."""
    out = {}
    for name, values in (grid or {}).items():
        try:
            if isinstance(values, str | bytes) or any(isinstance(v, bool | str) for v in values):
                raise TypeError  # a string is not a list of values ("3e12" -> "3", "e", ...)
            vals = sorted({float(v) for v in values})
        except (TypeError, ValueError):
            raise ValueError(
                f"grid {name}: give a list of numbers (SI units), e.g. [1e12, 2e12] (got "
                f"{values!r})."
            ) from None
        if not vals:
            raise ValueError(f"grid {name}: give at least one value.")
        if name in TOPOLOGY_KNOBS:
            lo, hi = TOPOLOGY_RANGES[name]
            bad = [v for v in vals if not (lo <= v <= hi)]
            if bad:
                raise ValueError(
                    f"grid {name}: {bad[0]:g} is outside [{lo:g}, {hi:g}] ({TOPOLOGY_KNOBS[name]})."
                )
            bad = [v for v in vals if name == "domain" and v != int(v)]
            if bad:
                raise ValueError(
                    f"grid {name}: {bad[0]:g} is not a whole number of chips "
                    f"({TOPOLOGY_KNOBS[name]})."
                )
            for v in vals if name == "domain" else ():  # the system's tiling rules too
                check(reshape(system, domain=v)[0], f"grid domain={v:g}")
        else:
            for v in vals:  # unknown path, out of bounds or inconsistent: raises
                apply_overrides(system, {name: v}, f"grid {name}={v:g}")
        out[name] = vals
    return out


def _check_precision_on_grid(system: System, problem: Problem, grid: dict) -> None:
    """A grid may not take away the problem's precision (a chip with 0 FLOP/s in it)."""
    name = f"chip.peak_flops_per_s.{problem.precision}"
    if name in grid and min(grid[name]) <= 0:
        raise ValueError(
            f"grid {name}: {min(grid[name]):g} leaves {system.chip.name} without "
            f"{problem.precision} support, the precision searched; drop that value."
        )


class Space:
    """The discrete space: valid plans x grid points, indexed i = g * n_plans + p."""

    def __init__(self, system: System, model: Model, problem: Problem, grid: dict | None):
        self.grid = check_grid(system, grid)
        _check_precision_on_grid(system, problem, self.grid)
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
        self.gb = global_batch(
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
        self.dies = int(float(system.chip.dies_per_chip))  # ranks per chip package

    def point(self, g) -> np.ndarray:
        """Grid values [len(g), G] of flat grid indices g."""
        g = np.atleast_1d(g)
        if not self.names:
            return np.zeros((g.size, 0), np.float32)
        idx = np.unravel_index(g, self.shape)
        return np.stack([a[i] for a, i in zip(self.axes, idx, strict=True)], 1).astype(np.float32)

    def rows(self, flat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(knobs [n, K], global batch [n], grid values [n, G]) of flat indices."""
        flat = np.asarray(flat, np.int64)
        p, g = flat % self.n_plans, flat // self.n_plans
        return self.plans[p], self.gb[p].astype(np.float32), self.point(g)

    def header(self) -> list[str]:
        """The columns of a table of configurations (grid values, knobs, batch, outputs)."""
        return [*self.names, *KNOBS, "global_batch", *COLUMNS]

    def table(self, flat, values: np.ndarray) -> np.ndarray:
        """Table rows [n, len(header())] of flat indices with their COLUMNS `values`."""
        k, gb, gv = self.rows(flat)
        return np.concatenate([gv, k, gb[:, None], values], axis=1)

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
                **{
                    c: v if math.isfinite(v) else None
                    for c, v in zip(COLUMNS, vals[r], strict=True)
                },
                "feasible": vals[r][fc] > 0.5,
            }
            for r in range(idx.size)
        ]
