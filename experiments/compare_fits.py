"""Judge a modelling change the way the guide asks: by its held-out error, not its fit.

    emu calibrate --cv --dry-run --json > base.json        # on the code before the change
    emu calibrate --cv --dry-run --json > new.json         # after it (e.g. from a worktree)
    python experiments/compare_fits.py base.json new.json [--top 15]

Both files are `emu calibrate --cv --json` outputs (with `--holdout FILE` as well, the rows
of sources the fit never saw are compared too). It prints, base -> new: the median and p90
|error| in sample, leave-one-source-out, leave-one-system-out and on the holdout rows; the
rows more than 25% off held out; the leave-one-source-out median by system and by kind;
the rows whose held-out |error| moved most each way; and the fitted parameters that moved
most (|log| of the ratio). A change is worth keeping when the held-out figures improve,
not when only the in-sample ones do (a parameter that one source alone informs returns to
its prior when that source is held out; `experiments/loso_parameters.py` says which).

From a scratch worktree, give `emu calibrate` `--dry-run` (or `--out` a scratch path):
without them it writes the shipped overlay of the installed emu, wherever it was run from.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from emu.cli import positive_int

#: |error| (%) above which a held-out row counts as far off (the README's tail count)
FAR = 25.0


def _refuse(text: str):
    print(f"compare_fits.py: {text}", file=sys.stderr)
    sys.exit(2)


def _load(path: str) -> dict:
    try:
        out = json.loads(Path(path).read_text())
    except FileNotFoundError:
        _refuse(f"'{path}' not found")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        _refuse(f"'{path}' is not JSON ({e})")
    cvs = out.get("cross_validation") if isinstance(out, dict) else None
    if not isinstance(cvs, list) or not any(
        isinstance(c, dict) and c.get("by") == "source" and c.get("rows") for c in cvs
    ):
        _refuse(
            f"'{path}' has no leave-one-source-out rows; give the output of "
            "`emu calibrate --cv --json`"
        )
    return out


def _err(r: dict, key: str = "predicted_cv") -> float:
    """|error| (%) of a residual record on its metric as published (as `emu calibrate`
    reports it): in sample with `key` "predicted_in", held out with "predicted_cv"."""
    return 100.0 * abs(r[key] / r["measured"] - 1.0)


def _p90(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=10, method="inclusive")[-1] if len(xs) > 1 else xs[0]


def _by(out: dict, by: str) -> dict:
    return next((c for c in out["cross_validation"] if c.get("by") == by), {})


def _headline(out: dict) -> dict:
    src = _by(out, "source")
    rows = [r for r in src["rows"] if r.get("predicted_cv") is not None]
    held = [_err(r) for r in rows]
    ins = [_err(r, "predicted_in") for r in rows]
    hold = [_err(r) for r in src.get("holdout") or []]
    sys_ = _by(out, "system")
    line = {
        "in sample": (statistics.median(ins), _p90(ins)),
        "leave-one-source-out": (statistics.median(held), _p90(held)),
        "leave-one-system-out": (
            sys_.get("median_abs_pct_error", math.nan),
            sys_.get("p90_abs_pct_error", math.nan),
        ),
    }
    if hold:
        line["holdout rows"] = (statistics.median(hold), _p90(hold))
    return {"line": line, "far": sum(x > FAR for x in held), "rows": rows}


def _medians(rows: list[dict], key: str) -> dict:
    split: dict = {}
    for r in rows:
        split.setdefault(r[key], []).append(_err(r))
    return {k: statistics.median(v) for k, v in sorted(split.items())}


def _signed(r: dict) -> str:
    return f"{100.0 * (r['predicted_cv'] / r['measured'] - 1.0):+.1f}%"


def compare(base: dict, new: dict, top: int) -> list[str]:
    """The report lines (module doc)."""
    a, b = _headline(base), _headline(new)
    out = ["median / p90 |error| (on the metric as published), base -> new"]
    nan = (math.nan, math.nan)
    for name in dict.fromkeys([*a["line"], *b["line"]]):  # holdout rows: in either
        (m0, p0), (m1, p1) = a["line"].get(name, nan), b["line"].get(name, nan)
        out.append(f"  {name:22} {m0:6.2f}% / {p0:5.1f}%  ->  {m1:6.2f}% / {p1:5.1f}%")
    out.append(f"  rows more than {FAR:g}% off held out: {a['far']} -> {b['far']}")
    for key in ("system", "kind"):
        m0, m1 = _medians(a["rows"], key), _medians(b["rows"], key)
        out += ["", f"leave-one-source-out median by {key}"]
        out += [f"  {k:16} {v:6.1f}% -> {m1.get(k, math.nan):6.1f}%" for k, v in m0.items()]
    old = {r["id"]: r for r in a["rows"]}
    moved = sorted(
        ((_err(r) - _err(old[r["id"]]), r, old[r["id"]])
         for r in b["rows"] if r["id"] in old),
        key=lambda x: (x[0], x[1]["id"]),
    )  # fmt: skip
    for title, part in (("better", moved[:top]), ("worse", moved[::-1][:top])):
        out += ["", f"held-out rows that moved most ({title})"]
        out += [
            f"  {d:+6.1f}  {r['id'][:58]:58} {_signed(o):>8} -> {_signed(r):>8}"
            for d, r, o in part
            if (d < 0) == (title == "better") and d != 0
        ]
    v0, v1 = base.get("values") or {}, new.get("values") or {}
    shift = sorted(
        ((abs(math.log(v1[k] / v0[k])), k) for k in v0 if k in v1 and v0[k] > 0 and v1[k] > 0),
        reverse=True,
    )
    out += ["", "fitted parameters that moved most"]
    out += [f"  {k:50} {v0[k]:.4g} -> {v1[k]:.4g}" for d, k in shift[:top] if d > 1e-3]
    gone = sorted(set(v0) ^ set(v1))
    if gone:
        out.append(f"  in one fit only: {', '.join(gone)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", help="`emu calibrate --cv --json` output before the change")
    ap.add_argument("new", help="the same after it")
    ap.add_argument("--top", type=positive_int, default=10, help="rows and parameters shown")
    args = ap.parse_args()
    print("\n".join(compare(_load(args.base), _load(args.new), args.top)))


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # | head
        sys.exit(0)
