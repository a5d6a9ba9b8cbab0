"""One configuration as a traceable function, and the compiled, sharded evaluation of
many configurations of a `Space` by their flat indices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

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
#: exact re-evaluation): a cheaper backend optimisation level compiles ~30% faster
FAST_COMPILE = {"xla_backend_optimization_level": 0}


#: rows per compiled call of a sweep: large enough to amortise the per-call and per-fusion
#: overhead of XLA's CPU runtime, small enough for the caches (emu.fast.BLOCK)
BLOCK = 16384


#: up to this many columns, `make_eval` compiles one program per column (module doc)
SPLIT_COLUMNS = 4


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
    Only the `columns` asked for are compiled, computed and moved."""
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

    def program(cols: tuple):
        row = make_columns_fn(system, model, problem, space.names, cols)

        def run(idx, plans, gb, axes):
            p, g = idx % n_plans, idx // n_plans
            vals = []
            for a in reversed(range(len(shape))):  # C order: the last axis varies fastest
                vals.append(axes[a][g % shape[a]])
                g = g // shape[a]
            gv = jnp.stack(vals[::-1], axis=1) if vals else jnp.zeros((idx.shape[0], 0))
            return jax.vmap(lambda k, b, v: tuple(row(k, b, v)[0]))(plans[p], gb[p], gv)

        return jax.jit(run, in_shardings=(shard, rep, rep, rep), out_shardings=shard)

    split = len(columns) <= SPLIT_COLUMNS if split is None else split
    fns = [program((c,)) for c in columns] if split else [program(tuple(columns))]
    tables = jax.device_put(
        (
            jnp.asarray(space.plans, jnp.float32),
            jnp.asarray(space.gb, jnp.float32),
            tuple(jnp.asarray(a, jnp.float32) for a in space.axes),
        ),
        rep,
    )

    compiled = {}

    def block(idx: np.ndarray) -> tuple:
        a = jax.device_put(np.asarray(idx, np.int32), shard)
        if not fast_compile:
            return tuple(c for fn in fns for c in fn(a, *tables))
        if not compiled:
            for j, fn in enumerate(fns):
                compiled[j] = fn.lower(a, *tables).compile(compiler_options=FAST_COMPILE)
        return tuple(c for j in range(len(fns)) for c in compiled[j](a, *tables))

    def call(idx: np.ndarray) -> list:
        """Dispatch blocks of `sub` rows (asynchronous); `gather` the list for the values."""
        return [block(idx[s : s + sub]) for s in range(0, len(idx), sub)]

    return call


def gather(blocks: list) -> np.ndarray:
    """The values [n, C] of the blocks `make_eval`'s function returned (waits for them)."""
    out = [np.column_stack([np.asarray(c) for c in cols]) for cols in blocks]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
