"""Prediction intervals from cross-validated residuals, and how often they cover.

A residual is r = log(predicted speed / measured speed), from the leave-one-source-out fit
(each row predicted by parameters fitted without its source), or, for a holdout row (a
source the fit never saw, `emu calibrate --cv --holdout`; `holdout` true), from the full
fit. "Speed" is the metric itself
for rates (tokens/s, TFLOP/s, MFU, GB/s) and its inverse for times (s, ms, us, GPU-hours), so
residuals of both pool. A row's basis is the most specific of `analysis.basis_keys` (kind x
chip family or link type, then kind, then all) holding >= MIN_ROWS residuals from
>= MIN_SOURCES sources; the band is [q(tail), q(1 - tail)] of the basis' residuals, and the
measurement is inside when q_lo <= r <= q_hi.

The tail is *calibrated*, not read off the level: with tail = (1 - level)/2 the band of a
source never seen covers less than the level (the prototype's 10th/90th percentiles covered
67%: a held-out source has a systematic offset that in-basis residuals of other sources
underestimate). `calibrate_tail` picks the largest tail whose nested leave-one-source-out
coverage (the quantiles for a row of source S from the other sources' residuals only)
reaches the level: split-conformal calibration with sources as the exchangeable groups.
`calibrate_tails` does so per kind (train, serve, collective: Mondrian conformal
calibration), so that each kind's bands are calibrated to the level (nested), not only all
rows pooled: with one tail for all, collectives (whose sources agree more) were covered
86% of the time out of sample and serving rows 71%; with a tail per kind, 84% and 75%
(session 19, the shipped residuals). The "all" basis, which only widens extrapolations,
is calibrated the same way on its own pool (all kinds' target rows; until session 38 it
took the smallest of the kinds' tails, which a kind at the grid's floor made a band of the
pool's extremes); it is calibrated first, and the kinds' calibration reads it at its own
tail (until session 38 at each candidate tail, as it was only known once theirs were).
Where a kind has enough holdout rows (`_targets`), its tail is calibrated to cover *them*
(or is the grid's smallest when no tail reaches the level: the shipped collectives'),
with bands still drawn from every other source: rows of sources
the fit never saw sit further from emu than held-out sources of the fitted set (session 38:
at tails calibrated on all rows, the holdout rows were covered 71% and the fitted rows 84%),
and a prediction for a user's workload is of the first kind.
`coverage` reports it honestly, doubly nested: for each source S the tails are calibrated
on the other sources, then S's rows are scored with bands from the other sources at their
kind's tail (a kind that only S shows takes the "all" basis' tail).

>>> recs = [{"id": str(i), "source": f"s{i % 4}", "group": "train/x", "r": 0.01 * (i - 10)}
...         for i in range(21)]
>>> t = quantile_table(recs, 0.1)
>>> round(t["train/x"]["q_lo"], 3), round(t["train/x"]["q_hi"], 3), t["train/x"]["usable"]
(-0.08, 0.08, True)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from emu.analysis import INTERVAL_LEVEL, MIN_ROWS, MIN_SOURCES, basis_keys

#: tails searched by `calibrate_tail` and `calibrate_tails` (per side): 0.5% steps from 0.5%
#: to 20%
TAIL_GRID = tuple(round(0.005 * k, 3) for k in range(1, 41))


def residual_records(residuals) -> list[dict]:
    """The records `coverage` and `calibrate_tails` read (id, source, group, held-out r,
    holdout) of residual rows (`residuals.jsonl`'s form: r_cv, and `holdout` true for a
    row of a source the fit never saw); rows without a held-out residual are left out."""
    return [
        {
            "id": x["id"],
            "source": x["source"],
            "group": x["group"],
            "r": float(x["r_cv"]),
            "holdout": bool(x.get("holdout")),
        }
        for x in residuals
        if x.get("r_cv") is not None
    ]


def record_kind(x: dict) -> str:
    """The kind of a residual record or basis name: "train/hopper" -> "train"."""
    return (x["group"] if isinstance(x, dict) else x).split("/", 1)[0]


def tail_of(tail, basis: str) -> float:
    """The tail of `basis` under `tail`: a float (one tail for every basis), or a mapping
    kind -> tail (`calibrate_tails`). With a mapping, a basis of a kind in it takes that
    kind's tail; the "all" basis, and a basis whose kind is missing, take tail["all"] if
    present, else the smallest tail in the mapping (the widest band)."""
    if not isinstance(tail, Mapping):
        return float(tail)
    if not tail:
        raise ValueError("no tails to choose from.")
    fallback = tail.get("all", min(tail.values()))
    return float(tail.get(record_kind(basis), fallback)) if basis != "all" else float(fallback)


def tails_text(tail) -> str:
    """`tail` (a float or `calibrate_tails`' mapping) for a report line: "collective 0.08,
    serve 0.05, train 0.06" (the "all" entry left out)."""
    if not isinstance(tail, Mapping):
        return f"{float(tail):g}"
    return ", ".join(f"{k} {v:g}" for k, v in sorted(tail.items()) if k != "all")


def quantile_table(records: list[dict], tail) -> dict:
    """{basis name: {rows, sources, tail, q_lo, q_hi, usable}} over every basis a record
    belongs to (`records`: dicts with `source`, `group` ("kind/family") and `r`); `tail` a
    float or a mapping kind -> tail (`tail_of`)."""
    pools = defaultdict(list)
    for x in records:
        for key in basis_keys(x["group"]):
            pools[key].append(x)
    out = {}
    for key in sorted(pools, key=lambda k: (k == "all", k.count("/") == 0, k)):
        sub = pools[key]
        r = np.asarray([x["r"] for x in sub], np.float64)
        n_src = len({x["source"] for x in sub})
        t = tail_of(tail, key)
        out[key] = {
            "rows": len(sub),
            "sources": n_src,
            "tail": t,
            "q_lo": float(np.quantile(r, t)),
            "q_hi": float(np.quantile(r, 1.0 - t)),
            "usable": len(sub) >= MIN_ROWS and n_src >= MIN_SOURCES,
        }
    return out


class _Pools:
    """Sorted residuals per (excluded sources, basis key), computed once."""

    def __init__(self, records: list[dict]):
        self.records = records
        self.cache: dict = {}

    def pool(self, excluded: frozenset, key: str) -> tuple[np.ndarray, int]:
        got = self.cache.get((excluded, key))
        if got is None:
            sub = [
                x
                for x in self.records
                if x["source"] not in excluded and key in basis_keys(x["group"])
            ]
            got = (np.sort([x["r"] for x in sub]), len({x["source"] for x in sub}))
            self.cache[(excluded, key)] = got
        return got

    def band(
        self, excluded: frozenset, group: str, tails, all_tails=None
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """(q_lo, q_hi) arrays over `tails` for a row of `group` from the pool without the
        `excluded` sources, and the basis used ("...~" when extrapolating). The "all" pool
        (a last resort, and the widening of an extrapolation) is read at `all_tails`
        (default `tails`), as the shipped table reads it at the "all" basis' own tail."""
        tails = np.asarray(tails, np.float64)
        all_tails = tails if all_tails is None else np.asarray(all_tails, np.float64)
        keys = basis_keys(group)
        specific, n_src = self.pool(excluded, keys[0])
        for key in keys:
            r, n_src = self.pool(excluded, key)
            if r.size >= MIN_ROWS and n_src >= MIN_SOURCES:
                break
        else:
            key = "all"
            r, _ = self.pool(excluded, key)
        if r.size == 0:
            return np.full_like(tails, -np.inf), np.full_like(tails, np.inf), "none~"
        t = all_tails if key == "all" else tails
        lo, hi = np.quantile(r, t), np.quantile(r, 1.0 - t)
        if specific.size == 0 or key == "all":  # extrapolation: the wider of kind and all
            for wider in keys[1:]:
                w, _ = self.pool(excluded, wider)
                tw = all_tails if wider == "all" else tails
                if w.size:
                    lo = np.minimum(lo, np.quantile(w, tw))
                    hi = np.maximum(hi, np.quantile(w, 1.0 - tw))
            key += "~"
        return lo, hi, key


def _inside(records, pools: _Pools, outer: frozenset, tails, all_tails=None) -> np.ndarray:
    """Inside flags (rows x tails) of each record of `records` with the bands from the pool
    without its own source and the `outer` sources (the "all" pool read at `all_tails`,
    default `tails`, as `_Pools.band`)."""
    out = np.zeros((len(records), len(tails)), bool)
    for i, x in enumerate(records):
        lo, hi, _ = pools.band(outer | {x["source"]}, x["group"], tails, all_tails)
        out[i] = (lo <= x["r"]) & (x["r"] <= hi)
    return out


def _pick(coverage: np.ndarray, level: float) -> float:
    ok = [t for t, c in zip(TAIL_GRID, coverage, strict=True) if c >= level]
    return max(ok) if ok else TAIL_GRID[0]


def calibrate_tail(records: list[dict], level: float = INTERVAL_LEVEL) -> float:
    """The largest tail of TAIL_GRID whose nested leave-one-source-out coverage of
    `records` is >= `level` (the smallest tail if none reaches it)."""
    if not records:
        raise ValueError("no residuals to calibrate intervals on.")
    inside = _inside(records, _Pools(records), frozenset(), TAIL_GRID)
    return _pick(inside.mean(axis=0), level)


def _targets(sub: list[dict]) -> list[dict]:
    """The records a kind's tail is calibrated to cover: its holdout records (rows of
    sources the fit never saw, `holdout` true) when they are >= MIN_ROWS from >=
    MIN_SOURCES sources, else all of them."""
    held = [x for x in sub if x.get("holdout")]
    enough = len(held) >= MIN_ROWS and len({x["source"] for x in held}) >= MIN_SOURCES
    return held if enough else sub


def _tails(records, pools: _Pools, excluded: frozenset, level: float) -> dict[str, float]:
    kinds = sorted({record_kind(x) for x in records})
    targets = {k: _targets([x for x in records if record_kind(x) == k]) for k in kinds}
    # the "all" basis (a last resort, and the widening of an extrapolation) first, calibrated
    # the same way on its own pool: every kind's targets, each band from every other source
    every = [{**x, "group": "all"} for k in kinds for x in targets[k]]
    t_all = _pick(_inside(every, pools, excluded, TAIL_GRID).mean(axis=0), level)
    out = {}
    for k in kinds:  # each kind's candidate tails, the "all" pool read at its own tail
        inside = _inside(targets[k], pools, excluded, TAIL_GRID, [t_all] * len(TAIL_GRID))
        out[k] = _pick(inside.mean(axis=0), level)
    out["all"] = t_all
    return out


def calibrate_tails(records: list[dict], level: float = INTERVAL_LEVEL) -> dict[str, float]:
    """{kind: tail} (module doc): per kind of `records`, the largest tail of TAIL_GRID
    whose nested leave-one-source-out coverage of that kind's records (its holdout records
    where there are enough, `_targets`) is >= `level` (the bands from the whole pool of
    other sources, as `calibrate_tail`); "all": the tail at which the pool of every row
    covers the targets of all kinds at `level`, so calibrated too."""
    if not records:
        raise ValueError("no residuals to calibrate intervals on.")
    return _tails(records, _Pools(records), frozenset(), level)


def coverage(records: list[dict], level: float = INTERVAL_LEVEL) -> dict:
    """Out-of-sample coverage of the interval procedure, doubly nested (module doc):
    {"level", "tail" (per kind, `calibrate_tails` on all records), "nested" (share inside at
    those tails, each row's band from the other sources), "out_of_sample" (the tails
    themselves also calibrated without the row's source), "rows", "by_kind", "by_basis"
    (out-of-sample share and n), "by_origin" (the same for "fitted" rows, whose residuals
    are leave-one-source-out, and "holdout" rows, of sources the fit never saw),
    "holdout_by_kind" (the holdout rows' by kind; empty without them),
    "median_width" (high/low ratio), "extrapolated" (rows whose band extrapolated),
    "missed" (the ids of the rows outside their out-of-sample band)}."""
    if not records:
        raise ValueError("no residuals to compute the coverage of.")
    pools = _Pools(records)
    tail = _tails(records, pools, frozenset(), level)
    by_source = defaultdict(list)
    for i, x in enumerate(records):
        by_source[x["source"]].append(i)
    hit = np.zeros(len(records), bool)
    nested = np.zeros(len(records), bool)
    width = np.zeros(len(records))
    basis = [""] * len(records)
    for src, idx in by_source.items():
        others = [x for x in records if x["source"] != src]
        # the level calibration without this source (nested inside the other sources)
        t_src = _tails(others, pools, frozenset({src}), level) if others else tail
        for i in idx:
            x = records[i]
            ts = (tail_of(t_src, x["group"]), tail_of(tail, x["group"]))
            ts_all = (tail_of(t_src, "all"), tail_of(tail, "all"))
            lo, hi, key = pools.band(frozenset({src}), x["group"], ts, ts_all)
            hit[i] = lo[0] <= x["r"] <= hi[0]
            nested[i] = lo[1] <= x["r"] <= hi[1]
            width[i] = math.exp(hi[0] - lo[0]) if math.isfinite(hi[0] - lo[0]) else math.inf
            basis[i] = key

    def share(mask_of):
        groups = defaultdict(list)
        for i, x in enumerate(records):
            groups[mask_of(i, x)].append(bool(hit[i]))
        return {k: {"n": len(v), "coverage": float(np.mean(v))} for k, v in sorted(groups.items())}

    return {
        "level": level,
        "tail": tail,
        "rows": len(records),
        "nested": float(nested.mean()),
        "out_of_sample": float(hit.mean()),
        "median_width": float(np.median(width)),
        "extrapolated": int(sum(b.endswith("~") for b in basis)),
        "missed": [x.get("id") for x, h in zip(records, hit, strict=True) if not h],
        "by_kind": share(lambda i, x: record_kind(x)),
        "by_basis": share(lambda i, x: basis[i]),
        "by_origin": share(lambda i, x: "holdout" if x.get("holdout") else "fitted"),
        "holdout_by_kind": {
            k: v
            for (o, k), v in share(lambda i, x: (bool(x.get("holdout")), record_kind(x))).items()
            if o
        },
    }
