"""The exhaustive sweep: every configuration of a `Space`, in fixed-size chunks with the same
compiled, vmapped programs (one per column up to four columns, built from one trace; the
last chunk is padded), sharded over all local JAX devices.

Each chunk streams to disk as it finishes, as an emu.storage record bound to its index and
to the problem's signature; on restart with the same problem, the chunks already on disk are
verified and skipped (a partial, corrupt or foreign chunk is reported and recomputed), so a
killed sweep resumes without losing or duplicating results. With several processes
(jax.distributed), process p takes the chunks i with i % n == p and process 0 merges. The
merge keeps, per chunk, the top-k and the Pareto front (tokens/s vs watts) of the feasible
configurations, so memory does not grow with the sweep.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np

from emu.search._evaluate import _safe_div, gather, make_eval
from emu.search._local import Exact
from emu.search._problem import COLUMNS, Problem, check_budget
from emu.search._results import SweepResult, chunk_header
from emu.search._space import Space
from emu.storage import RecordError, StorageError, read_record, write_record
from emu.struct import content_digest
from emu.topology import System
from emu.workload import Model

#: configurations per compiled call (the default chunk)
CHUNK = 1 << 16
#: the columns the merge needs (top-k by the objective, Pareto front of tokens/s vs watts)
MERGE_COLUMNS = ("objective", "feasible", "tokens_per_s", "power_w")
#: `emu search --method auto` evaluates every configuration of a space up to this size: on 2
#: CPU cores a sweep of the search's columns reaches its first chunk in ~2.5-4 s and then
#: runs ~4e6 configurations/s (bench_sweep, all columns; the merge's alone ~1e7), while the
#: gradient search takes ~15-25 s whatever the size (bench_search); it also bounds the
#: chunks a search keeps in a temporary folder (9 columns, 36 bytes per configuration; 12
#: with --out)
EXHAUSTIVE_MAX = 10**7
#: `emu sweep` without --out scans spaces of at least this many configurations with the
#: merge's columns alone and fills the rows it shows exactly (`sweep(fill=True)`). Measured
#: cold (`bench_sweep.py --columns cli`, 2 cores, session 24, two runs each against all 12
#: columns): 4.0e7 configurations 7.2-7.5 s against 8.0-8.3 s, but 1.0e7 4.8-4.9 s against
#: 3.6 s (the merge's four single-output programs compile ~0.35 s slower than one, and the
#: exact evaluation of the rows shown compiles in ~1.4 s): a line through them breaks even
#: near 2.8e7 (lower with a warm compilation cache)
FILL_MIN = 3 * 10**7
#: how long process 0 waits for one chunk of another process
PEER_CHUNK_TIMEOUT_S = 3600


#: power bins of the Pareto prefilter (`pareto_front`)
FRONT_BINS = 4096


def pareto_front(tokens_per_s: np.ndarray, power_w: np.ndarray) -> np.ndarray:
    """Indices of the plans no other plan beats on both more tokens/s and fewer watts
    (vectorised: by rising power, keep each plan that beats every cheaper one).

    Large inputs are first cut down without sorting: binned by power (monotone, so a plan
    in a lower bin draws strictly less), a plan whose tokens/s do not beat the best of
    every lower bin is dominated and dropped. The survivors (typically a few hundred of a
    chunk's rows) are then ordered exactly, so the answer is the same, index for index,
    as ordering all of them (tested), ~50x faster: the per-chunk merge no longer costs as
    much as computing the chunk."""
    t, p = (np.asarray(a) for a in (tokens_per_s, power_w))
    t, p = (a if a.dtype.kind == "f" else a.astype(np.float64) for a in (t, p))
    if t.size == 0:
        return np.zeros(0, np.int64)
    lo, hi = (p.min(), p.max()) if np.isfinite(p).all() and np.isfinite(t).all() else (0, 0)
    span = float(hi) - float(lo)
    scale = (FRONT_BINS - 1) / span if 0 < span < np.inf else np.inf
    if t.size <= 4 * FRONT_BINS or not np.isfinite(scale):
        return _front_exact(t, p)
    # float64 and clipped before the cast: no overflow breaks the monotone binning
    b = np.clip((p.astype(np.float64) - float(lo)) * scale, 0, FRONT_BINS - 1).astype(np.int64)
    best = np.full(FRONT_BINS, -np.inf, t.dtype)
    np.maximum.at(best, b, t)
    below = np.concatenate([[-np.inf], np.maximum.accumulate(best)[:-1]]).astype(t.dtype)
    keep = np.nonzero(t > below[b])[0]
    return keep[_front_exact(t[keep], p[keep])]


def _front_exact(t: np.ndarray, p: np.ndarray) -> np.ndarray:
    order = np.lexsort((-t, p))
    ts = t[order]
    prev = np.concatenate([[-np.inf], np.maximum.accumulate(ts)[:-1]])
    return order[ts > prev].astype(np.int64)


def kept_columns(columns) -> tuple[str, ...]:
    """The COLUMNS a sweep computes and stores: those asked for and MERGE_COLUMNS, in the
    order of COLUMNS (None: all of them)."""
    if columns is None:
        return COLUMNS
    bad = [c for c in columns if c not in COLUMNS]
    if bad:
        raise ValueError(f"sweep: unknown column '{bad[0]}'; known: {', '.join(COLUMNS)}.")
    return tuple(c for c in COLUMNS if c in set(columns) | set(MERGE_COLUMNS))


def full_columns(values: np.ndarray, kept) -> np.ndarray:
    """Values [n, len(kept)] as [n, len(COLUMNS)], NaN where a column was not computed."""
    if tuple(kept) == COLUMNS:
        return values
    out = np.full((len(values), len(COLUMNS)), np.nan, np.float32)
    out[:, [COLUMNS.index(c) for c in kept]] = values
    return out


def _reduce_chunk(
    data: np.ndarray, offset: int, sign: float, top: int, kept=COLUMNS
) -> tuple | None:
    """(top-k indices, their values, Pareto indices, their values, feasible count) of one
    chunk's feasible rows; indices are flat (offset added)."""
    fc, tc, pc = (kept.index(c) for c in ("feasible", "tokens_per_s", "power_w"))
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


@dataclasses.dataclass
class _Chunks:
    """The chunk records of one sweep: chunk i holds flat indices [i chunk, (i+1) chunk)."""

    parts: Path
    chunk: int
    n: int
    signature: str
    sign: float
    top: int
    kept: tuple = COLUMNS

    def rows(self, i: int) -> int:
        return min(self.chunk, self.n - i * self.chunk)

    def path(self, i: int) -> Path:
        return self.parts / f"chunk-{i:06d}.npz"

    def read(self, i: int) -> np.ndarray | None:
        """The verified data of chunk i; None when absent; RecordError when it is partial,
        corrupt, of another size, index or problem."""
        header = chunk_header(i, self.rows(i), self.signature)
        got = read_record(self.path(i), expect=header)
        if got is None:
            return None
        data = got[1].get("data")
        if data is None or data.shape != (self.rows(i), len(self.kept)):
            raise RecordError(f"'{self.path(i)}' is corrupt or partial (wrong shape).")
        return data

    def reduce(self, i: int, data: np.ndarray) -> tuple | None:
        return _reduce_chunk(data, i * self.chunk, self.sign, self.top, self.kept)

    def store(self, i: int, data: np.ndarray) -> tuple | None:
        write_record(self.path(i), {"data": data}, chunk_header(i, self.rows(i), self.signature))
        return self.reduce(i, data)

    def wait(self, i: int, num_processes: int) -> np.ndarray:
        """Chunk i written by another process (waited for), or raise if it is missing."""
        deadline = time.time() + PEER_CHUNK_TIMEOUT_S  # a slow peer is waited for
        while True:
            try:
                data = self.read(i)
            except RecordError:
                data = None
            if data is not None:
                return data
            if i % num_processes == 0 or time.time() > deadline:
                raise ValueError(
                    f"sweep chunk {self.path(i)} is missing or corrupt; rerun the command."
                )
            time.sleep(0.2)  # another process is still writing it


def _chunk_size(n: int, chunk: int) -> int:
    """The chunk size must not depend on the local device count (all processes share the
    chunk layout): a multiple of 64, which every power-of-two device count divides."""
    chunk = max(64, min(chunk, int(2 ** math.ceil(math.log2(max(n, 1))))))
    chunk = int(math.ceil(chunk / 64) * 64)
    n_dev = len(jax.local_devices())
    if chunk % n_dev:
        raise ValueError(
            f"{n_dev} local devices do not divide the chunk of {chunk} plans; "
            "use a power-of-two device count."
        )
    return chunk


def _resume(chunks: _Chunks, mine: list[int], progress, warn) -> tuple[dict, list[int]]:
    """(reduced chunks verified on disk, chunks left to compute)."""
    reduced, todo = {}, []
    for i in mine:
        try:
            data = chunks.read(i)
        except RecordError as e:
            if warn:
                warn(f"{e} Recomputing that chunk.")
            data = None
        if data is None:
            todo.append(i)
            continue
        reduced[i] = chunks.reduce(i, data)
        if progress:
            progress(len(reduced), len(mine), chunks.rows(i))
    return reduced, todo


def _compute(fn, chunks: _Chunks, todo, reduced, *, total, progress, throttle_s, t0):
    """Compute and store the chunks `todo` as a pipeline: chunk i+1 computes (JAX dispatch
    is asynchronous) while a writer thread checksums and stores chunk i; progress counts
    stored chunks only. Returns the time to the first computed chunk (compilation + one
    chunk), or None if nothing was computed."""

    def launch(i):
        idx = np.arange(i * chunks.chunk, (i + 1) * chunks.chunk)
        idx[chunks.rows(i) :] = 0  # padding rows repeat configuration 0 and are dropped
        return fn(idx)

    pending, first_s, writes = None, None, []
    with ThreadPoolExecutor(max_workers=1) as pool:
        for i in [*todo, None]:
            current = (i, launch(i)) if i is not None else None
            if pending is not None:
                pi, fut = pending
                data = gather(fut)[: chunks.rows(pi)]
                if first_s is None:
                    first_s = time.perf_counter() - t0
                writes.append((pi, pool.submit(chunks.store, pi, data)))
            while writes and (writes[0][1].done() or len(writes) > 1 or current is None):
                wi, w = writes.pop(0)
                reduced[wi] = w.result()  # re-raises a failed write
                if throttle_s:
                    time.sleep(throttle_s)
                if progress:
                    progress(len(reduced), total, chunks.chunk)
            pending = current
    return first_s


def _merge(space: Space, chunks: _Chunks, reduced: dict, n_chunks: int, num_processes: int):
    """(top rows, Pareto rows, feasible count) over every chunk."""
    cand_idx, cand_val, front_idx, front_val = [], [], [], []
    n_feasible = 0
    for i in range(n_chunks):
        part = reduced[i] if i in reduced else chunks.reduce(i, chunks.wait(i, num_processes))
        if part is not None:
            ti, tv, fi, fv, nf = part
            cand_idx.append(ti)
            cand_val.append(tv)
            front_idx.append(fi)
            front_val.append(fv)
            n_feasible += nf
    if not cand_idx:
        none = (np.zeros(0, np.int64), np.zeros((0, len(COLUMNS)), np.float32))
        return none, none, 0
    tc, pc = chunks.kept.index("tokens_per_s"), chunks.kept.index("power_w")
    ci, cv = np.concatenate(cand_idx), np.concatenate(cand_val)
    order = np.lexsort((ci, -chunks.sign * cv[:, 0]))[: chunks.top]
    fi, fv = np.concatenate(front_idx), np.concatenate(front_val)
    keep = pareto_front(fv[:, tc], fv[:, pc])
    full = lambda v: full_columns(v, chunks.kept)  # noqa: E731
    return (ci[order], full(cv[order])), (fi[keep], full(fv[keep])), n_feasible


def _fill(exact, idx: np.ndarray, values: np.ndarray, kept, problem: Problem) -> np.ndarray:
    """`values` [n, len(COLUMNS)] of the configurations `idx` with the columns the scan did
    not compute (not in `kept`) taken from `exact`'s evaluation of every column; the scanned
    columns stay as the scan stored them, and the columns a full sweep derives from those
    stay derived from them: tokens/J = tokens/s / watts of the row (`host_columns`), and the
    column the objective names (tokens_per_joule, usd_per_mtoken, ...) equals the row's
    objective, as in a sweep of every column."""
    if idx.size == 0:
        return values
    exact(idx.tolist())
    got = np.stack([exact.values[int(i)] for i in idx]).astype(values.dtype)
    out = values.copy()
    miss = [COLUMNS.index(c) for c in COLUMNS if c not in kept]
    out[:, miss] = got[:, miss]
    col = COLUMNS.index
    if "tokens_per_joule" not in kept:
        out[:, col("tokens_per_joule")] = _safe_div(
            out[:, col("tokens_per_s")], out[:, col("power_w")]
        )
    name = problem.objective_name()
    if name in COLUMNS and name != "objective" and name not in kept:
        out[:, col(name)] = out[:, col("objective")]
    return out


def sweep(
    system: System,
    model: Model,
    problem: Problem,
    out_dir,
    *,
    grid: dict | None = None,
    objective=None,
    top: int = 10,
    chunk: int = CHUNK,
    process_id: int = 0,
    num_processes: int = 1,
    progress=None,
    warn=None,
    throttle_s: float = 0.0,
    columns=None,
    fill: bool = False,
) -> SweepResult:
    """Evaluate every configuration of `problem` (plans x `grid`); chunk records stream to
    `out_dir`/parts-<signature> (see the module doc). `objective` overrides
    `problem.objective`; `progress(done, total, rows)` is called per stored chunk, `warn(msg)`
    for a chunk recomputed; `throttle_s` pauses after each stored chunk (tests kill a sweep
    mid-way with it). `columns`: the COLUMNS to compute and store besides MERGE_COLUMNS
    (None: all); the others are neither computed nor moved, and read NaN (None in result
    rows), unless `fill`: then the top and Pareto rows (a few dozen) are evaluated once more
    with every column (one more compiled program, `emu.search._local.Exact`) and their
    missing columns filled (`_fill`), so a scan of the merge's columns alone still reports
    complete rows (the stored chunks, and so `SweepResult.table_blocks` and `write_table`,
    keep NaN there)."""
    check_budget(top=top, chunk=chunk)
    kept = kept_columns(columns)
    if objective is not None:
        problem = dataclasses.replace(problem, objective=objective)
    t0 = time.perf_counter()
    space = Space(system, model, problem, grid)
    n = space.size
    size = _chunk_size(n, chunk)
    n_chunks = int(math.ceil(n / size))
    from emu import __version__

    key = content_digest(system, model, salt=__version__)
    cols = "" if kept == COLUMNS else json.dumps(kept)  # (all columns: the old signature)
    sig = problem.signature(f"{size}{json.dumps(space.grid)}{key}{cols}")
    parts = Path(out_dir) / f"parts-{sig}"
    try:
        parts.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(f"cannot create the sweep folder '{parts}': {e.strerror}.") from None
    chunks = _Chunks(parts, size, n, sig, problem.sign(), top, kept)
    fn = make_eval(system, model, problem, space, size, columns=kept)
    mine = [i for i in range(n_chunks) if i % num_processes == process_id]
    reduced, todo = _resume(chunks, mine, progress, warn)
    resumed = len(reduced)
    first_s = _compute(
        fn, chunks, todo, reduced, total=len(mine), progress=progress, throttle_s=throttle_s, t0=t0
    )
    common = dict(
        problem=problem, objective=problem.objective_name(), space_size=n,
        grid_points=space.n_points, chunks=n_chunks, resumed=resumed, first_chunk_s=first_s,
        space=space, parts=parts, chunk=size, signature=sig, columns=kept,
    )  # fmt: skip
    if process_id != 0:
        mine_rows = sum(chunks.rows(i) for i in mine)
        return SweepResult(
            best=None, top=[], pareto=[], evaluations=mine_rows, feasible=0,
            wall_s=time.perf_counter() - t0, merged=False, **common,
        )  # fmt: skip
    (ti, tv), (fi, fv), n_feasible = _merge(space, chunks, reduced, n_chunks, num_processes)
    if fill and kept != COLUMNS and (ti.size or fi.size):
        exact = Exact(system, model, problem, space)
        tv, fv = _fill(exact, ti, tv, kept, problem), _fill(exact, fi, fv, kept, problem)
    top_rows, front_rows = space.describe(ti, tv), space.describe(fi, fv)
    return SweepResult(
        best=top_rows[0] if top_rows else None, top=top_rows, pareto=front_rows, evaluations=n,
        feasible=int(n_feasible), wall_s=time.perf_counter() - t0, **common,
    )  # fmt: skip
