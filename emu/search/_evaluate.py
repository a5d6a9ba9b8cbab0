"""One configuration as a traceable function, and the compiled, sharded evaluation of
many configurations of a `Space` by their flat indices."""

from __future__ import annotations

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

from emu.fast import BATCH_COMPILE, compile_with
from emu.objective import evaluate
from emu.search._objectives import get_objective
from emu.search._objectives import usd_per_mtoken as _usd_per_mtoken
from emu.search._problem import COLUMNS, KNOBS, Problem
from emu.search._space import Space, apply_grid, base_plan
from emu.struct import replace
from emu.topology import System
from emu.workload import Model


def make_row_fn(system: System, model: Model, problem: Problem, names: list[str]):
    """f(knobs[K], global_batch, grid_values[G]) -> (COLUMNS vector, penalty): one
    configuration, traceable (vmap, grad). `penalty` sums the smooth log-excesses over the
    constraints (memory, SLO, power cap, reach); 0 when feasible."""
    f = make_columns_fn(system, model, problem, names)

    def row(k, gb, gv):
        cols, pen = f(k, gb, gv)
        return jnp.stack(cols), pen

    return row


def make_columns_fn(
    system: System, model: Model, problem: Problem, names: list[str], columns=COLUMNS
):
    """f(knobs[K], global_batch, grid_values[G]) -> (list of the `columns` (names of
    COLUMNS) as float32 scalars, penalty). What is not asked for is traced but dropped by
    XLA: a sweep that keeps four columns computes only what those four need."""
    bad = [c for c in columns if c not in COLUMNS]
    if bad:
        raise ValueError(f"unknown column '{bad[0]}'; known: {', '.join(COLUMNS)}.")
    pick = [COLUMNS.index(c) for c in columns]
    base = base_plan(problem)
    objective = get_objective(problem.objective)
    cap, phase = problem.power_cap, problem.phase

    def f(k, gb, gv):
        s, reach = apply_grid(system, names, [gv[j] for j in range(len(names))])
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
        value = objective.value(r, system=s, problem=problem)
        usd = (
            _usd_per_mtoken(r, system=s, problem=problem)
            if problem.cost is not None
            else jnp.float32(jnp.nan)
        )
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
            usd,
        ]
        return [jnp.asarray(cols[i], jnp.float32) for i in pick], pen

    return f


#: XLA options for functions that run only a few hundred evaluations (the gradient phase,
#: exact re-evaluation): a cheaper backend optimisation level compiles ~30% faster, and
#: XLA's older loop emitters instead of its fusion emitters faster again (bench_search's
#: 1e8 problem, one run each after the forward-mode gradient: gradient phase 21.3 s ->
#: 14.6 s on 2 cores); the sweep's blocks take `emu.fast.BATCH_COMPILE` (its programs run
#: millions of rows).
#: `compile_fast` drops an option the installed XLA does not know.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def compile_fast(lowered):
    """`lowered.compile()` with FAST_COMPILE, or with only the options the installed XLA
    knows (`emu.fast.compile_with`)."""
    return compile_with(lowered, FAST_COMPILE)


#: rows per compiled call of a sweep: large enough to amortise the per-call and per-fusion
#: overhead of XLA's CPU runtime (emu.fast.BLOCK is 65,536 since session 18; a sweep's
#: blocks were no faster at that size in `bench_sweep.py`, and its peak memory was higher)
BLOCK = 16384


#: up to this many columns computed on the device (after `host_columns`), `make_eval`
#: compiles one program per column (module doc)
SPLIT_COLUMNS = 4


def host_columns(problem: Problem, columns) -> dict[str, tuple]:
    """The `columns` a sweep derives on the host from others it computes anyway, as
    {column: (function, its input columns)}: `tokens_per_joule` = tokens_per_s / power_w
    (RunResult's own float32 safe division), and `objective` when the objective is a
    RESULT_COLUMNS attribute itself (the registered attribute objectives: tokens_per_joule,
    tokens_per_s, power_w, ...), a copy of it. A derived tokens/J is exactly tokens/s /
    watts of the columns reported beside it, and what a program computing it on the device
    gives to float32 rounding (XLA contracts and fuses each program its own way: <= 3 ulp
    measured; its CPU backend also flushes subnormals to zero, NumPy does not).
    Each derived column is one program fewer where columns compile one program each (up
    to SPLIT_COLUMNS), and one output fewer otherwise."""
    cols = set(columns)
    out: dict[str, tuple] = {}
    per_joule = (_safe_div, ("tokens_per_s", "power_w"))
    computed = {"tokens_per_s", "power_w"} <= cols
    if "tokens_per_joule" in cols and computed:
        out["tokens_per_joule"] = per_joule
    obj = get_objective(problem.objective)
    plain = not obj.needs and repr(obj.fn) == f"operator.attrgetter({obj.name!r})"
    if "objective" in cols and plain and obj.name in RESULT_COLUMNS:
        if obj.name == "tokens_per_joule" and computed:
            out["objective"] = per_joule
        elif obj.name in cols and obj.name not in out:
            out["objective"] = (np.asarray, (obj.name,))
    return out


#: the COLUMNS that are the RunResult attribute of the same name as it is (`feasible` adds
#: the problem's constraints; memory_bytes and usd_per_mtoken are computed from others)
RESULT_COLUMNS = (
    "step_time_s", "tokens_per_s", "tokens_per_s_per_chip", "tokens_per_joule", "power_w",
    "mfu", "ttft_s", "tpot_s",
)  # fmt: skip


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """emu.numerics.safe_div on float32 host arrays (0 where den == 0)."""
    num, den = np.asarray(num, np.float32), np.asarray(den, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / np.where(den != 0, den, 1), 0).astype(np.float32)


def make_eval(system, model, problem, space: Space, n: int, fast_compile: bool = False,
              columns=COLUMNS, split: bool | None = None):  # fmt: skip
    """f(flat indices [n] int) -> list of blocks (asynchronous; `gather` them into the
    values [n, len(columns)]): compiled functions, called per block of up to BLOCK rows,
    gather each configuration's knobs and grid values from device-resident tables and
    evaluate them, with the rows sharded over the local devices.

    `split` (default: up to SPLIT_COLUMNS columns) compiles one program per column: XLA's
    CPU backend fuses a single-output program into one loop (the whole configuration in
    registers), while a program with several outputs splits into ~70 fusions that write
    their intermediates to memory; measured on 2 cores, the four columns of a sweep's merge
    run ~2x faster as four programs than as one, and compile no slower. Many columns
    compile faster as one program (each single-output program compiles in ~1.5-2.5 s).
    Only the `columns` asked for are compiled, computed and moved, and of those, the ones
    the host derives from the others (`host_columns`: tokens/J; an objective that is
    itself a column) are not compiled at all."""
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("d",))
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    if space.size >= 2**31:
        raise ValueError(
            f"the space has {space.size:.3g} configurations, more than one sweep indexes "
            "(2^31); narrow the grid or fix some knobs."
        )
    n_plans, shape = space.n_plans, space.shape
    sub = next(b for b in (BLOCK >> i for i in range(15)) if b and n % b == 0)
    # (one compiled function per block size: every block of a sweep has `sub` rows)

    def run_of(cols: tuple):
        row = make_columns_fn(system, model, problem, space.names, cols)

        def run(idx, plans, gb, axes):
            p, g = idx % n_plans, idx // n_plans
            vals = []
            for a in reversed(range(len(shape))):  # C order: the last axis varies fastest
                vals.append(axes[a][g % shape[a]])
                g = g // shape[a]
            gv = jnp.stack(vals[::-1], axis=1) if vals else jnp.zeros((idx.shape[0], 0))
            return jax.vmap(lambda k, b, v: tuple(row(k, b, v)[0]))(plans[p], gb[p], gv)

        return run

    jit = lambda f: jax.jit(f, in_shardings=(shard, rep, rep, rep), out_shardings=shard)  # noqa: E731
    derived = host_columns(problem, columns)
    device = tuple(c for c in columns if c not in derived)
    split = len(device) <= SPLIT_COLUMNS if split is None else split
    tables = jax.device_put(
        (
            jnp.asarray(space.plans, jnp.float32),
            jnp.asarray(space.gb, jnp.float32),
            tuple(jnp.asarray(a, jnp.float32) for a in space.axes),
        ),
        rep,
    )

    def programs() -> list:
        if split and len(device) > 1:
            # trace the model once for all the columns (tracing, not XLA, is most of a
            # sweep's start-up), then one program per column from that trace: XLA drops
            # what a column does not need, as if it had been traced alone
            idx0 = jax.ShapeDtypeStruct((sub,), jnp.int32)
            whole = jax.extend.core.jaxpr_as_fun(jax.make_jaxpr(run_of(device))(idx0, *tables))

            def column(j: int):
                return lambda *a: (whole(*jax.tree.leaves(a))[j],)

            return [jit(column(j)) for j in range(len(device))]
        return [jit(run_of((c,))) for c in device] if split else [jit(run_of(device))]

    fns, compiled = [], {}  # built on the first block: a resumed sweep may need none

    def block(idx: np.ndarray) -> tuple:
        if len(idx) != sub:
            raise ValueError(f"make_eval: blocks of {sub} rows only (got {len(idx)}).")
        if not fns:
            fns.extend(programs())
        a = jax.device_put(np.asarray(idx, np.int32), shard)
        if not compiled:
            options = FAST_COMPILE if fast_compile else BATCH_COMPILE
            for j, fn in enumerate(fns):
                compiled[j] = compile_with(fn.lower(a, *tables), options)
        return tuple(c for j in range(len(fns)) for c in compiled[j](a, *tables))

    def call(idx: np.ndarray) -> list:
        """Dispatch blocks of `sub` rows (asynchronous); `gather` the list for the values."""
        blocks = [block(idx[s : s + sub]) for s in range(0, len(idx), sub)]
        return [_Block(b, tuple(columns), device, derived) for b in blocks]

    return call


class _Block:
    """One dispatched block: the device arrays of the `device` columns (still computing)
    and how to derive the other `columns` from them on the host (`host_columns`)."""

    def __init__(self, arrays: tuple, columns: tuple, device: tuple, derived: dict):
        self.arrays, self.columns, self.device, self.derived = arrays, columns, device, derived

    def values(self) -> np.ndarray:
        """[rows, len(columns)] float32 (waits for the device)."""
        got = {c: np.asarray(a) for c, a in zip(self.device, self.arrays, strict=True)}
        for c, (fn, deps) in self.derived.items():
            got[c] = fn(*(got[d] for d in deps))
        return np.column_stack([got[c] for c in self.columns]).astype(np.float32, copy=False)


def gather(blocks: list) -> np.ndarray:
    """The values [n, C] of the blocks `make_eval`'s function returned (waits for them)."""
    out = [b.values() for b in blocks]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
