"""Design-space exploration: exhaustive sweeps (and, next, gradient search).

`enumerate_plans` lists every valid discrete plan of a problem on the host (numpy, fast);
`sweep` evaluates them in fixed-size chunks with ONE compiled, vmapped function (the last
chunk is padded), shards each chunk over all JAX devices, streams every chunk to disk as
it finishes (write-then-rename, with a checksum), and on restart with the same problem
skips the chunks already on disk, after verifying them: a killed sweep resumes without
losing or duplicating results. With several processes (jax.distributed), process p takes
the chunks i with i % n == p and process 0 merges. It keeps the top-k and the Pareto front
(tokens/s vs watts) of the feasible plans.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass as pydataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from emu.objective import evaluate
from emu.parallelism import Plan, make_plan
from emu.topology import System
from emu.workload import Model

__all__ = [
    "Problem",
    "enumerate_plans",
    "sweep",
    "plan_of",
    "pareto_front",
    "gradient_search",
    "COLUMNS",
    "KNOBS",
]

#: plan leaves a sweep varies, in the column order of its output
KNOBS = ("tp", "pp", "dp", "cp", "ep", "microbatch", "vpp", "zero", "recompute", "sp")
#: outputs kept per plan
COLUMNS = (
    "step_time_s",
    "tokens_per_s",
    "tokens_per_joule",
    "power_w",
    "mfu",
    "feasible",
    "memory_bytes",
)
CHUNK = 1 << 16
#: testing knob: seconds to pause after each chunk, so a test can kill a sweep mid-way
_THROTTLE_S = float(os.environ.get("EMU_SWEEP_THROTTLE_S", "0") or 0)


@pydataclass(frozen=True)
class Problem:
    """A sweep problem: the workload and the plan space (host-side, hashable)."""

    system: str
    model: str
    chips: int
    seq_len: int = 4096
    global_batch: int | None = None
    precision: str = "bf16"
    phase: str = "train"

    def signature(self, extra: str = "") -> str:
        text = json.dumps(self.__dict__, sort_keys=True) + extra
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _content_key(*trees) -> str:
    from emu import __version__
    from emu.struct import content_digest

    return content_digest(*trees, salt=__version__)


def _pow2_upto(n: int) -> list[int]:
    return [2**i for i in range(int(math.log2(max(n, 1))) + 1)]


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def enumerate_plans(system: System, model: Model, problem: Problem) -> np.ndarray:
    """Every valid discrete training plan as rows of KNOBS (float32 array [N, len(KNOBS)]).

    Valid: tp a power of two dividing the heads (and the KV heads or vice versa) within the
    innermost tier; pp dividing the layers; cp a power of two <= 16 dividing seq_len;
    dp = chips / (tp pp cp); ep dividing the experts and tp dp cp (MoE), else 1;
    micro-batch a power of two dividing global_batch / dp; vpp in {1, 2, 4} with pp > 1
    dividing layers / pp; ZeRO 0-3; recompute none/selective/full; SP with tp > 1 only.
    """
    if problem.phase != "train":
        raise ValueError("sweeps enumerate training plans for now; use --phase train.")
    from emu.hardware import peak_flops

    if float(peak_flops(system.chip, problem.precision)) <= 0:
        raise ValueError(
            f"{system.chip.name} has no {problem.precision} support; choose another --precision."
        )
    chips = problem.chips
    heads, kv = int(model.n_heads), int(model.n_kv_heads)
    layers, experts = int(model.n_layers), int(model.n_experts)
    inner = int(float(system.tiers[0].domain_chips))
    rows = []
    for tp in _pow2_upto(min(64, chips)):
        if heads % tp or (kv % tp and tp % kv) or tp > max(inner, 1) or chips % tp:
            continue
        for cp in _pow2_upto(16):
            if problem.seq_len % cp or chips % (tp * cp):
                continue
            for pp in _divisors(chips // (tp * cp)):
                if layers % pp:
                    continue
                dp = chips // (tp * cp * pp)
                gb = problem.global_batch or dp * max(1, -(-(2**22) // (problem.seq_len * dp)))
                if gb % dp:
                    continue
                eps = [e for e in _divisors(experts) if (tp * dp * cp) % e == 0] or [1]
                for mb in _pow2_upto(gb // dp):
                    if (gb // dp) % mb:
                        continue
                    for vpp in (1, 2, 4):
                        if vpp > 1 and (pp == 1 or layers % (pp * vpp)):
                            continue
                        for ep, zero, rc in itertools.product(eps, range(4), range(3)):
                            for sp in (0, 1) if tp > 1 else (0,):
                                rows.append((tp, pp, dp, cp, ep, mb, vpp, zero, rc, sp))
    if not rows:
        raise ValueError(
            f"no valid plan for {problem.chips} chips of {problem.system} and {problem.model}; "
            "check --chips and --seq-len."
        )
    return np.asarray(rows, np.float32)


def plan_of(problem: Problem, row: dict) -> Plan:
    """The Plan of one sweep result row (`best`, `top` or `pareto` entries): the same plan
    the sweep evaluated, for `emu.evaluate` or `emu.runner.run`."""
    return make_plan(
        tp=row["tp"],
        pp=row["pp"],
        dp=row["dp"],
        cp=row["cp"],
        ep=row["ep"],
        microbatch=row["microbatch"],
        vpp=row["vpp"],
        zero=row["zero"],
        recompute=("none", "selective", "full")[int(row["recompute"])],
        sp=bool(row["sp"]),
        seq_len=problem.seq_len,
        global_batch=row["global_batch"],
        precision=problem.precision,
    )


def _base_plan(problem: Problem, n: int):
    plan = make_plan(
        tp=1, pp=1, dp=1, seq_len=problem.seq_len, global_batch=1, precision=problem.precision
    )
    return jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,)), plan)


def _global_batch(problem: Problem, dp: np.ndarray) -> np.ndarray:
    if problem.global_batch:
        return np.full_like(dp, problem.global_batch)
    return dp * np.maximum(1, -(-(2**22) // (problem.seq_len * dp)))  # ceil, as `emu run`


def _make_eval(systems: System, model: Model, problem: Problem, n: int):
    """One compiled function for a chunk of n rows: knobs [n, K], global batch [n] and the
    grid index [n] of each row into the stacked `systems`."""
    from emu.struct import replace

    base = _base_plan(problem, n)
    mesh = jax.sharding.Mesh(np.array(jax.local_devices()), ("d",))
    shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))

    def run(knobs, gb, g):
        kw = {k: knobs[:, i] for i, k in enumerate(KNOBS)}
        plan = replace(base, global_batch=gb, **kw)
        rows_sys = jax.tree_util.tree_map(lambda x: x[g], systems)
        r = jax.vmap(lambda s, p: evaluate(s, model, p))(rows_sys, plan)
        cols = [
            r.step_time_s,
            r.tokens_per_s,
            r.tokens_per_joule,
            r.power_w,
            r.mfu,
            r.feasible,
            r.memory.total_bytes,
        ]
        return jnp.stack(cols, axis=1)

    return jax.jit(run, in_shardings=(shard, shard, shard), out_shardings=shard), shard


def grid_systems(system: System, grid: dict | None):
    """The cartesian product of `grid` (dotted path -> values) applied to `system`, stacked,
    and the list of grid points (dicts)."""
    from emu.config import apply_overrides
    from emu.struct import stack

    points = (
        [dict(zip(grid, vals, strict=True)) for vals in itertools.product(*grid.values())]
        if grid
        else [{}]
    )
    return stack([apply_overrides(system, p) if p else system for p in points]), points


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


def sweep(
    system: System,
    model: Model,
    problem: Problem,
    out_dir,
    *,
    grid: dict | None = None,
    objective="tokens_per_joule",
    top=10,
    chunk=CHUNK,
    process_id=0,
    num_processes=1,
    progress=None,
    warn=None,
) -> dict:
    """Evaluate every plan of `problem`; results stream to `out_dir` (see module doc).
    Returns {"best", "top", "pareto", "evaluations", "wall_s", "chunks", "resumed"}."""
    if objective not in COLUMNS or objective in ("feasible", "memory_bytes"):
        raise ValueError(
            f"unknown objective '{objective}'; known: tokens_per_s, "
            "tokens_per_joule, mfu, step_time_s, power_w."
        )
    t0 = time.perf_counter()
    plans = enumerate_plans(system, model, problem)
    systems, points = grid_systems(system, grid)
    n_plans, n = plans.shape[0], plans.shape[0] * len(points)

    def rows_of(i):  # knobs and grid index of chunk i, computed, never materialised whole
        idx = np.arange(i * chunk, min(n, (i + 1) * chunk))
        return plans[idx % n_plans], (idx // n_plans).astype(np.int32)

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
    sig = problem.signature(
        f"{chunk}{json.dumps(list((grid or {}).items()))}" + _content_key(system, model)
    )
    parts = out / f"parts-{sig}"
    parts.mkdir(parents=True, exist_ok=True)
    fn, shard = _make_eval(systems, model, problem, chunk)
    mine = [i for i in range(n_chunks) if i % num_processes == process_id]
    resumed, done = 0, 0
    for i in mine:
        path = parts / f"chunk-{i:06d}.npz"
        rows = min(chunk, n - i * chunk)
        if path.exists():
            if _read_chunk(path, rows) is not None:
                resumed += 1
                done += 1
                if progress:
                    progress(done, len(mine), rows)
                continue
            if warn:
                warn(f"checkpoint {path.name} is corrupt or partial; recomputing it")
        kr, gr = rows_of(i)
        k = np.zeros((chunk, len(KNOBS)), np.float32)
        k[:rows], k[rows:] = kr, plans[0]  # padding rows, dropped below
        gb = _global_batch(problem, k[:, KNOBS.index("dp")]).astype(np.float32)
        g = np.zeros(chunk, np.int32)
        g[:rows] = gr
        res = np.asarray(
            fn(jax.device_put(k, shard), jax.device_put(gb, shard), jax.device_put(g, shard))
        )[:rows]
        _write_chunk(path, res.astype(np.float32))
        if _THROTTLE_S:
            time.sleep(_THROTTLE_S)
        done += 1
        if progress:
            progress(done, len(mine), rows)
    if process_id != 0:
        return {
            "evaluations": sum(min(chunk, n - i * chunk) for i in mine),
            "wall_s": time.perf_counter() - t0,
        }
    # streaming merge: per chunk keep its top-k candidates and its Pareto front, so memory
    # does not grow with the sweep
    sign = -1.0 if objective in ("step_time_s", "power_w") else 1.0
    oc, tc, pc = COLUMNS.index(objective), COLUMNS.index("tokens_per_s"), COLUMNS.index("power_w")
    cand_idx, cand_val, front_idx, front_val = [], [], [], []
    n_feasible = 0
    for i in range(n_chunks):
        deadline = time.time() + 3600  # per chunk: a slow peer is waited for, not aborted
        path = parts / f"chunk-{i:06d}.npz"
        rows = min(chunk, n - i * chunk)
        while True:
            data = _read_chunk(path, rows) if path.exists() else None
            if data is not None:
                break
            if i % num_processes == 0 or time.time() > deadline:
                raise ValueError(f"sweep chunk {path} is missing or corrupt; rerun the command.")
            time.sleep(0.2)  # another process is still writing it
        feas = np.nonzero(data[:, COLUMNS.index("feasible")] > 0.5)[0]
        n_feasible += feas.size
        if feas.size:
            score = sign * data[feas, oc]
            top_local = feas[np.argsort(-score, kind="stable")[:top]]
            cand_idx.append(top_local + i * chunk)
            cand_val.append(data[top_local])
            f_local = feas[pareto_front(data[feas, tc], data[feas, pc])]
            front_idx.append(f_local + i * chunk)
            front_val.append(data[f_local])
    points_arr = points

    def row(gi, values):
        knob = plans[gi % n_plans]
        return {
            **points_arr[int(gi // n_plans)],
            **{k: int(knob[j]) for j, k in enumerate(KNOBS)},
            "global_batch": int(_global_batch(problem, knob[2:3])[0]),
            **{c: float(values[j]) for j, c in enumerate(COLUMNS)},
        }

    top_rows, front_rows = [], []
    if cand_idx:
        ci, cv = np.concatenate(cand_idx), np.concatenate(cand_val)
        order = np.lexsort((ci, -sign * cv[:, oc]))[:top]
        top_rows = [row(int(ci[o]), cv[o]) for o in order]
        fi, fv = np.concatenate(front_idx), np.concatenate(front_val)
        keep = pareto_front(fv[:, tc], fv[:, pc])
        front_rows = [row(int(fi[o]), fv[o]) for o in keep]
    return {
        "problem": problem.__dict__,
        "objective": objective,
        "best": top_rows[0] if top_rows else None,
        "top": top_rows,
        "pareto": front_rows,
        "evaluations": n,
        "feasible": int(n_feasible),
        "grid_points": len(points),
        "chunks": n_chunks,
        "resumed": resumed,
        "wall_s": time.perf_counter() - t0,
        "_parts": parts,
        "_chunk": chunk,
        "_plans": plans,
        "_points": points,
        "_grid_names": list(grid or {}),
        "_problem": problem,
    }


def write_table(result: dict, path) -> Path:
    """All evaluated configurations as CSV (grid values, knobs, outputs), streamed chunk by
    chunk from the checkpoints and written atomically (write, then rename)."""
    path = Path(path)
    plans, points, names = result["_plans"], result["_points"], result["_grid_names"]
    chunk, n, n_plans = result["_chunk"], result["evaluations"], len(result["_plans"])
    values = np.asarray([[p[k] for k in names] for p in points], np.float64).reshape(
        len(points), len(names)
    )
    fd, tmp = tempfile.mkstemp(
        dir=path.parent if str(path.parent) else ".", prefix=".tmp-", suffix=".csv"
    )
    with os.fdopen(fd, "w") as fh:
        fh.write(",".join([*names, *KNOBS, *COLUMNS]) + "\n")
        for i in range(result["chunks"]):
            rows = min(chunk, n - i * chunk)
            data = _read_chunk(result["_parts"] / f"chunk-{i:06d}.npz", rows)
            if data is None:
                raise ValueError(f"sweep chunk {i} vanished or changed; rerun the sweep.")
            idx = np.arange(i * chunk, i * chunk + rows)
            table = np.concatenate([values[idx // n_plans], plans[idx % n_plans], data], axis=1)
            np.savetxt(fh, table, delimiter=",", fmt="%.7g")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------- gradient search

#: continuous knobs of the relaxed plan, in log2 coordinates
RELAXED = ("tp", "pp", "cp", "microbatch")
_CATS = [(z, r) for z in range(4) for r in range(3)]  # ZeRO stage x recompute


def _relaxed_objective(system, model, problem, objective):
    """f(u, logits) for one start: the expected log objective over the relaxed categorical
    choices (ZeRO stage, recompute) minus a smooth out-of-memory penalty."""
    from emu.struct import replace

    base = make_plan(
        tp=1, pp=1, dp=1, seq_len=problem.seq_len, global_batch=1, precision=problem.precision
    )
    chips = float(problem.chips)
    zs = jnp.asarray([c[0] for c in _CATS], jnp.float32)
    rs = jnp.asarray([c[1] for c in _CATS], jnp.float32)
    col = {"tokens_per_joule": "tokens_per_joule", "tokens_per_s": "tokens_per_s", "mfu": "mfu"}[
        objective
    ]

    def f(u, logits):
        tp, pp, cp, mb = (2.0 ** u[i] for i in range(4))
        dp = chips / (tp * pp * cp)
        gb = problem.global_batch or jnp.maximum(dp, 2.0**22 / problem.seq_len)

        def one(z, r):
            plan = replace(
                base,
                tp=tp,
                pp=pp,
                cp=cp,
                dp=dp,
                microbatch=mb,
                global_batch=gb,
                zero=z,
                recompute=r,
                sp=jnp.float32(1.0),
            )
            res = evaluate(system, model, plan)
            over = jax.nn.relu(res.memory.total_bytes / system.chip.hbm_bytes - 1.0)
            return jnp.log(getattr(res, col)) - 10.0 * over - 10.0 * over**2

        vals = jax.vmap(one)(zs, rs)
        w = (
            jax.nn.softmax(logits[:4])[zs.astype(jnp.int32)]
            * jax.nn.softmax(logits[4:])[rs.astype(jnp.int32)]
        )
        # a soft penalty keeps dp >= 1 and the degrees within their ranges
        dp_pen = jax.nn.relu(-jnp.log2(dp)) ** 2
        return jnp.sum(w * vals) - dp_pen

    return f


def gradient_search(
    system: System,
    model: Model,
    problem: Problem,
    *,
    objective="tokens_per_joule",
    starts=8,
    steps=60,
    optimizer=None,
    neighbours=4,
    seed=0,
) -> dict:
    """Maximise `objective` over relaxed plans by gradient, then round to valid plans.

    Knobs: log2 of TP, PP, CP and micro-batch (DP takes the remaining chips), ZeRO stage and
    recompute as softmax-relaxed categorical choices. `starts` random starts run at once
    (vmap) for `steps` optimiser steps inside one `lax.scan` (default optax.adam(0.1); any
    optax transform works). Each start's result is rounded to its `neighbours` nearest
    valid plans (log2 distance, most probable ZeRO/recompute), then the best is polished by
    trying every valid plan that differs from it in one knob; every reported result is
    re-evaluated exactly. Returns {"best", "evaluations", "wall_s"}.
    """
    import optax

    if objective not in ("tokens_per_joule", "tokens_per_s", "mfu"):
        raise ValueError(
            f"unknown objective '{objective}'; known: tokens_per_joule, tokens_per_s, mfu."
        )
    t0 = time.perf_counter()
    valid = enumerate_plans(system, model, problem)
    opt = optax.adam(0.1) if optimizer is None else optimizer
    f = _relaxed_objective(system, model, problem, objective)
    rng = np.random.default_rng(seed)
    hi = np.log2([min(64, problem.chips), max(1, int(model.n_layers)), 16, 64])
    u0 = jnp.asarray(rng.uniform(0, 1, (starts, 4)) * hi, jnp.float32)
    l0 = jnp.zeros((starts, 7), jnp.float32)
    grad = jax.grad(lambda u, lg: -f(u, lg), argnums=(0, 1))

    @jax.jit
    def run(u, lg):
        def one_start(u, lg):
            state = opt.init((u, lg))

            def step(carry, _):
                (u, lg), state = carry
                g = grad(u, lg)
                upd, state = opt.update(g, state, (u, lg))
                u, lg = optax.apply_updates((u, lg), upd)
                u = jnp.clip(u, 0.0, jnp.asarray(hi, jnp.float32))
                return ((u, lg), state), None

            ((u, lg), _), _ = jax.lax.scan(step, ((u, lg), state), None, length=steps)
            return u, lg

        return jax.vmap(one_start)(u, lg)

    with jax.numpy_dtype_promotion("standard"):
        u_opt, lg_opt = jax.device_get(run(u0, l0))
    evals = starts * steps * len(_CATS)
    # rounding: nearest valid plans of each start, with its most probable categories
    logk = np.log2(valid[:, [KNOBS.index(k) for k in RELAXED]])
    cand = set()
    for s in range(starts):
        z, r = int(np.argmax(lg_opt[s, :4])), int(np.argmax(lg_opt[s, 4:]))
        same = np.nonzero(
            (valid[:, KNOBS.index("zero")] == z) & (valid[:, KNOBS.index("recompute")] == r)
        )[0]
        pool = same if same.size else np.arange(len(valid))
        d = np.sum((logk[pool] - u_opt[s]) ** 2, axis=1)
        cand.update(int(i) for i in pool[np.argsort(d)[:neighbours]])
    scores = _exact(system, model, problem, valid, sorted(cand), objective)
    evals += len(cand)
    best = max(scores, key=scores.get)
    # local polish: every valid plan one knob away from the best, until no improvement
    while True:
        diff = np.sum(valid != valid[best], axis=1)
        nbrs = [int(i) for i in np.nonzero(diff == 1)[0] if int(i) not in scores]
        if not nbrs:
            break
        new = _exact(system, model, problem, valid, nbrs, objective)
        evals += len(nbrs)
        scores.update(new)
        top = max(scores, key=scores.get)
        if top == best:
            break
        best = top
    k = valid[best]
    return {
        "best": {
            **{name: int(k[j]) for j, name in enumerate(KNOBS)},
            "global_batch": int(_global_batch(problem, k[2:3])[0]),
            objective: scores[best],
        },
        "evaluations": int(evals),
        "space": int(len(valid)),
        "wall_s": time.perf_counter() - t0,
    }


def _exact(system, model, problem, valid, idx, objective) -> dict:
    """Exact objective of the valid plans `idx` (infeasible plans score -inf)."""
    from emu.struct import replace

    k = valid[idx]
    base = _base_plan(problem, len(idx))
    kw = {name: jnp.asarray(k[:, j]) for j, name in enumerate(KNOBS)}
    gb = jnp.asarray(_global_batch(problem, k[:, KNOBS.index("dp")]), jnp.float32)
    plans = replace(base, global_batch=gb, **kw)
    r = jax.jit(jax.vmap(lambda p: evaluate(system, model, p)))(plans)
    val = np.asarray(getattr(r, objective))
    ok = np.asarray(r.feasible) > 0.5
    return {int(i): (float(v) if o else -np.inf) for i, v, o in zip(idx, val, ok, strict=True)}
