"""What a search returns (the same kind of typed result for a sweep and a gradient search),
and the table of every evaluated configuration (CSV or Parquet, through emu.storage).

Result rows (`best`, `top`, `pareto`) are flat dicts of the grid values, the KNOBS, the
global batch and the COLUMNS (`feasible` as a bool): JSON-ready, and accepted by
`plan_of`/`system_of`.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from emu.plan import knobs as plan_knobs
from emu.search._problem import COLUMNS, KNOBS, Problem
from emu.search._space import Space
from emu.storage import RecordError, read_record, table_writer


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """The result of `sweep`: the best configurations (`top`, best first) and the Pareto
    front (tokens/s vs watts) of the feasible ones, out of `evaluations` configurations
    (`space_size`, `grid_points` grid points) in `chunks` chunks of `chunk` rows (`resumed`
    of them verified from disk). On a process other than 0 of a multi-process sweep,
    `merged` is False and only `evaluations` (this process's) and `wall_s` are set."""

    problem: Problem
    objective: str
    best: dict | None
    top: list[dict]
    pareto: list[dict]
    evaluations: int
    feasible: int
    space_size: int
    grid_points: int
    chunks: int
    resumed: int
    wall_s: float
    first_chunk_s: float | None
    space: Space = dataclasses.field(repr=False)
    parts: Path = dataclasses.field(repr=False)
    chunk: int = 0
    signature: str = ""
    merged: bool = True
    # the COLUMNS the scan computed and stored (the others are NaN in the stored chunks and
    # the table; in `best`, `top` and `pareto` too, unless the sweep ran with `fill`)
    columns: tuple = COLUMNS

    def to_json(self) -> dict:
        """The JSON form (`emu sweep --json` without its `best` run and `out`)."""
        return _json(self, "top", "pareto", "evaluations", "feasible", "space", "grid_points",
                     "chunks", "resumed", "wall_s", "first_chunk_s")  # fmt: skip

    def table_blocks(self) -> Iterator[np.ndarray]:
        """Every configuration of the space as table rows, chunk by chunk, read back from
        the verified chunk records."""
        for i in range(self.chunks):
            rows = min(self.chunk, self.evaluations - i * self.chunk)
            path = self.parts / f"chunk-{i:06d}.npz"
            try:
                got = read_record(path, expect=chunk_header(i, rows, self.signature))
            except RecordError:
                got = None
            if got is None or got[1]["data"].shape != (rows, len(self.columns)):
                raise ValueError(f"sweep chunk {i} vanished or changed; rerun the sweep.")
            data = got[1]["data"]
            if tuple(self.columns) != COLUMNS:  # NaN where a column was not computed
                full = np.full((rows, len(COLUMNS)), np.nan, np.float32)
                full[:, [COLUMNS.index(c) for c in self.columns]] = data
                data = full
            yield self.space.table(np.arange(i * self.chunk, i * self.chunk + rows), data)

    def remove_parts(self) -> None:
        """Delete the chunk records (after the table is written): only a killed sweep needs
        them, to resume."""
        shutil.rmtree(self.parts, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """The result of `gradient_search`: the best exactly evaluated configurations (`top`,
    best first); `evaluations` = `gradient_evaluations` (relaxed, in the optimiser) +
    `exact_evaluations`, out of a space of `space_size`. `scores` maps each exactly
    evaluated flat index to its COLUMNS values."""

    problem: Problem
    objective: str
    best: dict | None
    top: list[dict]
    evaluations: int
    gradient_evaluations: int
    exact_evaluations: int
    space_size: int
    wall_s: float
    space: Space = dataclasses.field(repr=False)
    scores: dict = dataclasses.field(repr=False, default_factory=dict)

    def to_json(self) -> dict:
        """The JSON form (`emu search --json` without its `best` run and `out`)."""
        return _json(self, "top", "evaluations", "gradient_evaluations", "exact_evaluations",
                     "space", "wall_s")  # fmt: skip

    def table_blocks(self) -> Iterator[np.ndarray]:
        """Every exactly evaluated configuration as table rows, by flat index."""
        idx = np.asarray(sorted(self.scores), np.int64)
        if idx.size:
            yield self.space.table(idx, np.stack([self.scores[int(i)] for i in idx]))


def _json(result, *keys: str) -> dict:
    """problem (as a dict), objective, then `keys` ("space" is the space's size)."""
    out = {"problem": result.problem.as_dict(), "objective": result.objective}
    for k in keys:
        out[k] = result.space_size if k == "space" else getattr(result, k)
    return out


def chunk_header(index: int, rows: int, signature: str) -> dict:
    """The header binding a sweep chunk record to its index, size and problem."""
    return {"index": index, "rows": rows, "signature": signature}


#: a sweep table up to this many rows is ranked whole in memory (~100 MB); a larger one is
#: streamed feasible rows first, then the rest, each in the order of the space
RANK_ROWS = 1 << 20
#: the searched knobs stored as codes of names (recompute: none/selective/full)
_CHOICE_KNOBS = [k for k in plan_knobs(searchable=True) if k.kind == "choice"]
#: latency columns a phase does not have (written empty in a table, not as 0 s)
_IDLE_LATENCY = {"train": ("ttft_s", "tpot_s"), "prefill": ("tpot_s",), "decode": ("ttft_s",)}


def _ranked(block: np.ndarray, feasible_col: int, objective_col: int, sign: float):
    """Rows of `block` feasible first, then by the objective, best first."""
    order = np.lexsort((-sign * block[:, objective_col], block[:, feasible_col] <= 0.5))
    return block[order]


def write_table(result: SweepResult | SearchResult, path) -> Path:
    """Every evaluated configuration (grid values, knobs, global batch, outputs) as CSV or
    Parquet (by the file's suffix), written atomically, feasible configurations first: a
    gradient search's candidates and a sweep of up to RANK_ROWS rows ranked (feasible, then
    the objective, best first); a larger sweep streamed from its chunk records, its feasible
    rows first and then the others, each group in the order of the space. Without
    `Problem.cost` the usd_per_mtoken column is left out."""
    path = Path(path)
    header = result.space.header()
    fc, oc = header.index("feasible"), header.index("objective")
    sign = result.problem.sign()
    # an unpriced problem (no cost and region) has no usd_per_mtoken: the column is left
    # out rather than written as NaN on every row
    cols = [j for j, h in enumerate(header) if h != "usd_per_mtoken" or result.problem.cost]
    names = [header[j] for j in cols]
    at = names.index("global_batch") + 1  # chips (packages) after the global batch
    names = [*names[:at], "chips", *names[at:]]
    ranks = [header.index(k) for k in ("tp", "pp", "dp", "cp")]
    # a latency the phase does not have is empty, not 0 s
    idle = [names.index(c) for c in _IDLE_LATENCY[result.problem.phase] if c in names]
    labels = {k.name: {v: n for n, v in k.names.items()} for k in _CHOICE_KNOBS}
    labels["sp"] = {0.0: "false", 1.0: "true"}
    whole = {*KNOBS, "global_batch", "chips", "feasible"}

    def write(block: np.ndarray) -> None:
        chips = np.prod(block[:, ranks], axis=1) / result.space.dies
        out = np.column_stack([block[:, cols[:at]], chips, block[:, cols[at:]]])
        out[:, idle] = np.nan
        put(out)

    with table_writer(path, names, labels=labels, integers=whole) as put:
        if isinstance(result, SearchResult) or result.evaluations <= RANK_ROWS:
            blocks = list(result.table_blocks())
            if blocks:
                write(_ranked(np.concatenate(blocks), fc, oc, sign))
            return path
        for feasible in (True, False):
            for block in result.table_blocks():
                keep = (block[:, fc] > 0.5) == feasible
                if keep.any():
                    write(block[keep])
    return path
