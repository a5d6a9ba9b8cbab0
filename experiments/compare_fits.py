"""Judge a modelling change the way the guide asks: by its held-out error, not its fit.

    emu calibrate --cv --dry-run --json > base.json        # on the code before the change
    emu calibrate --cv --dry-run --json > new.json         # after it (e.g. from a worktree)
    python experiments/compare_fits.py base.json new.json [--top 15]

Both files are `emu calibrate --cv --json` outputs (with `--holdout FILE` as well, the rows
of sources the fit never saw are compared too). It prints, base -> new: the median and p90
|error| in sample, leave-one-source-out, leave-one-system-out and on the holdout rows, as
`emu calibrate` reports them (on the metric as published; `emu.validation.error_stats`);
the rows more than 25% off held out; the leave-one-source-out median by system and by
kind; the `--top` rows whose held-out |error| moved most each way, with their signed
error (+: predicted above the measurement, as `emu validate` says it); and the `--top`
fitted parameters that moved most (|log| of the ratio). A change is worth keeping when the
held-out figures improve, not when only the in-sample ones do (a parameter that one
source alone informs returns to its prior when that source is held out;
`experiments/loso_parameters.py` says which).

A change that adds rows to the fit (a file of more sources given to `emu calibrate`) is
judged on the rows both runs fit: `--common` computes every figure on them alone. The
`--holdout` rows of one run that the other fits get their own line: their |error| where
the fit never saw their source against the other run's held-out and in-sample |error| on
the same rows:

    cat emu/data/measurements.jsonl experiments/data/out_of_sample.jsonl > all.jsonl
    emu calibrate --cv --dry-run --json all.jsonl > all.json          # ~21 min, 2 cores
    emu calibrate --cv --holdout experiments/data/out_of_sample.jsonl --dry-run --json > base.json
    python experiments/compare_fits.py base.json all.json --common

From a scratch worktree, give `emu calibrate` `--dry-run` (or `--out` a scratch path):
without them it writes the shipped overlay of the installed emu, wherever it was run from.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from emu.cli import positive_int
from emu.validation import error_stats

#: |error| (%) above which a held-out row counts as far off
FAR = 25.0
NAN = (math.nan, math.nan)


def _refuse(text: str):
    print(f"compare_fits.py: {text}", file=sys.stderr)
    sys.exit(2)


def _number(x) -> bool:
    """A finite number (an integer too large for a float is not one)."""
    if not isinstance(x, int | float) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _records(recs, path: str, what: str, *, held_out: bool = False) -> list[dict]:
    """The residual records of `what` in the file at `path`, each checked: an id (once),
    system, kind and source, a positive measured value, a predicted value in sample (a
    number) and held out (a number; null, a row whose fold predicted nothing, only where
    `held_out` is False)."""
    if not isinstance(recs, list):
        _refuse(f"'{path}': {what}: not a list of records")
    seen = set()
    for r in recs:
        cv = r.get("predicted_cv") if isinstance(r, dict) else None
        ok = (
            isinstance(r, dict)
            and isinstance(r.get("id"), str)
            and _number(r.get("measured"))
            and r["measured"] > 0
            and _number(r.get("predicted_in"))
            and ((cv is None and not held_out) or _number(cv))
            and all(isinstance(r.get(k), str) for k in ("system", "kind", "source"))
        )
        if not ok:
            _refuse(
                f"'{path}': a record of {what} is not a residual record of `emu calibrate "
                f"--cv --json` (id, system, kind, source, measured > 0, predicted_in, "
                f"predicted_cv): {json.dumps(r, ensure_ascii=True)[:120]}"
            )
        if r["id"] in seen:
            _refuse(f"'{path}': {what} hold the row {r['id']!r} twice")
        seen.add(r["id"])
    return recs


def _load(path: str) -> dict:
    """The parts of an `emu calibrate --cv --json` output compared here, checked."""
    try:
        out = json.loads(Path(path).read_text())
    except FileNotFoundError:
        _refuse(f"'{path}' not found")
    except IsADirectoryError:
        _refuse(f"'{path}' is a folder; give the JSON file `emu calibrate --cv --json` wrote")
    except (OSError, UnicodeDecodeError, RecursionError, json.JSONDecodeError) as e:
        _refuse(f"'{path}' is not JSON ({type(e).__name__}: {str(e)[:80]})")
    cvs = out.get("cross_validation") if isinstance(out, dict) else None
    cvs = [c for c in cvs if isinstance(c, dict)] if isinstance(cvs, list) else []
    src = next((c for c in cvs if c.get("by") == "source" and c.get("rows")), None)
    if src is None:
        _refuse(
            f"'{path}' has no leave-one-source-out rows; give the output of "
            "`emu calibrate --cv --json`"
        )
    rows = _records(src["rows"], path, "cross_validation (by source) rows")
    if not any(r.get("predicted_cv") is not None for r in rows):
        _refuse(f"'{path}': no row has a held-out prediction (predicted_cv)")
    system = next((c for c in cvs if c.get("by") == "system"), {})
    values = out.get("values")
    sys_rows = system.get("rows")
    return {
        "rows": rows,
        "system_rows": (
            None
            if sys_rows is None or sys_rows == []
            else _records(sys_rows, path, "cross_validation (by system) rows")
        ),
        "holdout": _records(src.get("holdout") or [], path, "the holdout records", held_out=True),
        "system": tuple(
            system.get(k) if _number(system.get(k)) else math.nan
            for k in ("median_abs_pct_error", "p90_abs_pct_error")
        ),
        "values": values if isinstance(values, dict) and values else None,
    }


def _stats(recs: list[dict], key: str = "predicted_cv") -> dict:
    """`error_stats` of the records that have `key` (|error| % on the metric as published,
    as `emu calibrate` computes its summary)."""
    have = [r for r in recs if r.get(key) is not None]
    return error_stats(have, lambda r: _err(r, key))


def _err(r: dict, key: str = "predicted_cv") -> float:
    """|error| (%) of a record's prediction `key` on its metric as published."""
    return 100.0 * abs(r[key] / r["measured"] - 1.0)


def _pair(stats: dict) -> tuple[float, float]:
    a = stats["all"]
    return (a["median_abs_pct_error"], a["p90_abs_pct_error"]) if a["n"] else NAN


def _signed(r: dict) -> str:
    return f"{100.0 * (r['predicted_cv'] / r['measured'] - 1.0):+.1f}%"


def _value(x: float) -> str:
    return "      -" if math.isnan(x) else f"{x:6.2f}%"


def _only_common(base: dict, new: dict) -> tuple[dict, dict, list[str]]:
    """`base` and `new` cut to the rows both fit (`--common`), and the lines that say what
    was left out: by source and by system, the ids both runs' by-source rows hold; held
    out, only those both runs predicted (a row one fold predicted nothing for has no
    held-out error in either); the holdout records, those both runs hold when both have
    some."""
    ids = {r["id"] for r in base["rows"]} & {r["id"] for r in new["rows"]}
    if not ids:
        _refuse("--common: the two runs fit no row in common")
    blind = {
        r["id"] for f in (base, new) for r in f["rows"] if r["predicted_cv"] is None
    }  # fmt: skip
    shared_holdout = None
    if base["holdout"] and new["holdout"]:
        shared_holdout = {r["id"] for r in base["holdout"]} & {r["id"] for r in new["holdout"]}
    cut, left, on_system = [], [], []
    for name, f in (("base", base), ("new", new)):
        sys_rows = f["system_rows"]
        if sys_rows is not None:
            sys_rows = [r for r in sys_rows if r["id"] in ids]
            on_system.append((name, len(sys_rows)))
        holdout = f["holdout"]
        if shared_holdout is not None:
            holdout = [r for r in holdout if r["id"] in shared_holdout]
        cut.append(dict(
            f,
            rows=[r if r["id"] not in blind else dict(r, predicted_cv=None)
                  for r in f["rows"] if r["id"] in ids],
            system_rows=sys_rows,
            holdout=holdout,
        ))  # fmt: skip
        left.append(len(f["rows"]) - len(ids))
    lines = [
        f"  --common: the {len(ids)} rows both runs fit ({left[0]} of base's and "
        f"{left[1]} of new's left out)"
    ]
    if blind & ids:
        lines.append(f"  --common: held out on the {len(ids - blind)} of them both runs predicted")
    if any(n != len(ids) for _, n in on_system):
        counts = " and ".join(f"{n} ({name})" for name, n in on_system)
        lines.append(
            f"  --common: leave-one-system-out on {counts} of them (the by-system rows "
            "lack the others)"
        )
    if shared_holdout is not None:
        lines.append(f"  --common: the {len(shared_holdout)} holdout rows both runs hold")
    return cut[0], cut[1], lines


def _crossed(base: dict, new: dict) -> list[str]:
    """For the rows one run holds out (`--holdout`) and the other fits: their |error|
    where the fit never saw their source, against the other run's held-out
    (leave-one-source-out) and in-sample |error| on the same rows."""
    out = []
    for a, b, x, y in (("base", "new", base, new), ("new", "base", new, base)):
        fitted = {r["id"]: r for r in y["rows"]}
        pairs = [(r, fitted[r["id"]]) for r in x["holdout"] if r["id"] in fitted]
        if not pairs:
            continue
        never = _pair(_stats([r for r, _ in pairs]))
        held = _pair(_stats([f for _, f in pairs if f["predicted_cv"] is not None]))
        ins = _pair(_stats([f for _, f in pairs], "predicted_in"))
        out += [
            "",
            f"rows {a} held out (--holdout) that {b} fits: {len(pairs)}, median / p90 |error|",
            f"  {a}, never seen {_value(never[0])} / {_value(never[1])}  ->  {b} held out "
            f"{_value(held[0])} / {_value(held[1])}, in sample {_value(ins[0])} / "
            f"{_value(ins[1])}",
        ]
    return out


def compare(base: dict, new: dict, top: int, *, common: bool = False) -> list[str]:
    """The report lines (module doc) for two `_load`ed outputs; `common`: on the rows both
    fit alone."""
    crossed = _crossed(base, new)
    said = []
    if common:
        base, new, said = _only_common(base, new)
    lines = {}
    for name, f in (("base", base), ("new", new)):
        held = _stats(f["rows"])
        system = f["system"]
        if common:
            system = _pair(_stats(f["system_rows"])) if f["system_rows"] else NAN
        lines[name] = {
            "in sample": _pair(_stats(f["rows"], "predicted_in")),
            "leave-one-source-out": _pair(held),
            "leave-one-system-out": system,
            "holdout rows": _pair(_stats(f["holdout"])) if f["holdout"] else NAN,
            "held": held,
        }
    a, b = lines["base"], lines["new"]
    out = ["median / p90 |error| (on the metric as published), base -> new", *said]
    for name in ("in sample", "leave-one-source-out", "leave-one-system-out", "holdout rows"):
        (m0, p0), (m1, p1) = a[name], b[name]
        if name == "holdout rows" and math.isnan(m0) and math.isnan(m1):
            continue
        out.append(f"  {name:22} {_value(m0)} / {_value(p0)}  ->  {_value(m1)} / {_value(p1)}")
    far = [sum(_err(r) > FAR for r in f["rows"] if r["predicted_cv"] is not None)
           for f in (base, new)]  # fmt: skip
    out.append(f"  rows more than {FAR:g}% off held out: {far[0]} -> {far[1]}")
    for key, title in (("by_system", "system"), ("by_kind", "kind")):
        g0, g1 = a["held"][key], b["held"][key]
        out += ["", f"leave-one-source-out median by {title}"]
        for k in sorted(set(g0) | set(g1)):
            m0, m1 = ((g.get(k) or {}).get("median_abs_pct_error") for g in (g0, g1))
            m0, m1 = (math.nan if m is None else m for m in (m0, m1))
            out.append(f"  {k:16} {_value(m0)} -> {_value(m1)}")
    old = {r["id"]: r for r in base["rows"] if r["predicted_cv"] is not None}
    now = {r["id"]: r for r in new["rows"] if r["predicted_cv"] is not None}
    moved = sorted(
        ((_err(now[k]) - _err(old[k]), k) for k in set(old) & set(now)),
        key=lambda x: (x[0], x[1]),
    )
    for title, part in (("better", moved), ("worse", moved[::-1])):
        shown = [(d, k) for d, k in part if d != 0 and (d < 0) == (title == "better")][:top]
        out += ["", f"held-out rows that moved most ({title}; signed error on the metric)"]
        out += [
            f"  {d:+6.1f}  {k[:58]:58} {_signed(old[k]):>8} -> {_signed(now[k]):>8}"
            for d, k in shown
        ]
    only = sorted(set(old) ^ set(now))
    if only:
        out += ["", f"rows held out in one run only: {len(only)} ({', '.join(only[:5])})"]
    out += crossed
    out += ["", "fitted parameters that moved most"]
    v0, v1 = base["values"], new["values"]
    if v0 is None or v1 is None:
        which = " and ".join(n for n, v in (("base", v0), ("new", v1)) if v is None)
        return [*out, f"  {which} has no fitted values"]
    shift = sorted(
        ((abs(math.log(v1[k] / v0[k])), k) for k in set(v0) & set(v1)
         if _number(v0[k]) and _number(v1[k]) and v0[k] > 0 and v1[k] > 0),
        reverse=True,
    )  # fmt: skip
    out += [f"  {k:50} {v0[k]:.4g} -> {v1[k]:.4g}" for d, k in shift[:top] if d > 1e-3]
    for name, keys in (("base", set(v0) - set(v1)), ("new", set(v1) - set(v0))):
        if keys:
            out.append(f"  fitted in {name} only: {', '.join(sorted(keys))}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", help="`emu calibrate --cv --json` output before the change")
    ap.add_argument("new", help="the same after it")
    ap.add_argument(
        "--top", type=positive_int, default=10, help="rows and parameters shown each way"
    )
    ap.add_argument(
        "--common",
        action="store_true",
        help="every figure on the rows both runs fit alone (a run that fits more rows)",
    )
    args = ap.parse_args()
    sys.stdout.reconfigure(errors="backslashreplace")  # an id with an odd character
    base, new = _load(args.base), _load(args.new)
    print("\n".join(compare(base, new, args.top, common=args.common)))


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:  # | head
        sys.exit(0)
