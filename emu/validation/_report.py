"""Validation results: the error of every row with its 80% interval, the summary by kind,
system and source, the coverage of the intervals, the text table and the
predicted-vs-measured plot.

Error = |predicted - measured| / measured on the metric as published. Coverage: the share
of rows whose measurement lies inside the interval of their prediction, (a) out of sample,
from the shipped held-out residuals (configs/calibration/residuals.jsonl, written by `emu
calibrate --cv [--holdout]`: leave-one-source-out, and holdout rows under the full fit; no
refit), doubly nested (`_intervals.coverage`), and (b)
with the shipped interval table on this file's predictions (in sample for the rows the
calibration saw; out of sample for a file it never saw).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import jax
import numpy as np

from emu.analysis import interval, interval_table
from emu.catalog import config_dir
from emu.objective import evaluate
from emu.storage import atomic_write, check_output_path
from emu.validation._intervals import coverage, residual_records, tails_text
from emu.validation._predict import Item, item_group, item_notes, predict_items, prepare_rows
from emu.validation._rows import KINDS, TIME_METRICS, default_measurements, read_rows


def _scored(base: dict, pred: float, row: dict, **extra) -> dict:
    """The result of a modelled row: its error, or an error status if not finite."""
    if not math.isfinite(pred):
        return {
            **base,
            "predicted": None,
            "abs_pct_error": None,
            "status": "error",
            "reason": f"line {row.get('_line')}: prediction is not finite (an input is zero "
            "where a size is needed, or outside the float32 range)",
        }
    err = abs(pred - base["measured"]) / base["measured"]
    return {
        **base,
        "predicted": pred,
        "abs_pct_error": 100.0 * err,
        "status": "ok",
        "reason": None,
        **extra,
    }


_eval_group = jax.jit(jax.vmap(evaluate, in_axes=(None, 0, 0)))


def residuals_path() -> Path:
    """The shipped held-out residuals (configs/calibration/residuals.jsonl): leave-one-source-
    out, then the holdout rows' (`holdout` true)."""
    return config_dir() / "calibration" / "residuals.jsonl"


def read_residuals(path=None) -> list[dict]:
    """The residual records of `path` (default: the shipped ones; [] if there are none):
    one JSON object per row (`calibration.CrossValidation.rows`)."""
    p = Path(path) if path else residuals_path()
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]


def validate_rows(
    rows: list[dict],
    *,
    overrides: dict | None = None,
    calibration: dict | None = None,
    table: dict | None = None,
) -> list[dict]:
    """The result of every row (in the rows' order): predicted, measured, abs_pct_error,
    status ("ok", "skipped" or "error"), reason, and for modelled rows the interval
    `group`, the `interval` of the prediction (shipped table, or `table`), whether the
    measurement is `inside` it, and what the prediction `approximates`."""
    items, results = prepare_rows(rows, overrides=overrides, calibration=calibration)
    preds, feas = predict_items(items, run=lambda s, m, p: jax.device_get(_eval_group(s, m, p)))
    table = table if table is not None else interval_table()
    for it, pred, ok in zip(items, preds, feas, strict=True):
        results.append(score_item(it, float(pred), ok, table))
    order = {str(r["id"]): i for i, r in enumerate(rows)}
    results.sort(key=lambda r: order.get(r["id"], len(order)))
    return results


def score_item(it: Item, pred: float, ok, table: dict | None) -> dict:
    """The report entry of one predicted item (`validate_rows`): error against the row's
    measurement, `feasible` (run rows: whether the plan fits emu's memory model), and for a
    scored row its interval `group`, the `interval` of the prediction from `table`, whether
    the measurement is `inside` it, and what the prediction `approximates`."""
    extra = {} if ok is None else {"feasible": bool(float(ok) > 0.5)}
    res = _scored(it.base, pred, it.row, **extra)
    if res["status"] == "ok":
        group = item_group(it)
        band = interval(
            res["predicted"], group, time=it.base["metric"] in TIME_METRICS, table=table
        )
        res["group"] = group
        res["interval"] = band
        res["inside"] = (
            None if band["low"] is None else band["low"] <= res["measured"] <= band["high"]
        )
        res["approximates"] = item_notes(it)
    return res


def _stats(errors: list[float]) -> dict:
    if not errors:
        return {"n": 0, "median_abs_pct_error": None, "p90_abs_pct_error": None}
    a = np.asarray(errors)
    return {
        "n": int(a.size),
        "median_abs_pct_error": float(np.median(a)),
        "p90_abs_pct_error": float(np.percentile(a, 90)),
        "mean_abs_pct_error": float(np.mean(a)),
    }


def error_stats(records: list[dict], error_of) -> dict:
    """Median/p90/mean of `error_of(record)` (percent) overall ("all") and by kind, system
    and source ("by_kind", "by_system", "by_source")."""
    groups = {"by_kind": "kind", "by_system": "system", "by_source": "source"}
    out = {"all": _stats([error_of(r) for r in records])}
    for name, key in groups.items():
        split = defaultdict(list)
        for r in records:
            split[r[key]].append(error_of(r))
        out[name] = {k: _stats(v) for k, v in sorted(split.items())}
    return out


def stats_line(stats: dict) -> str:
    """`error_stats`' result as one report line: "148 rows of 51 sources: median 17.9%,
    p90 73.3% (collective 12.1%, decode 29.5%, ...)", the medians by kind in brackets."""
    a = stats["all"]
    if not a["n"]:
        return "no rows"
    kinds = ", ".join(
        f"{k} {v['median_abs_pct_error']:.1f}%" for k, v in stats["by_kind"].items() if v["n"]
    )
    n_src = len(stats["by_source"])
    return (
        f"{a['n']} row{'s' * (a['n'] != 1)} of {n_src} source{'s' * (n_src != 1)}: median "
        f"{a['median_abs_pct_error']:.1f}%, p90 {a['p90_abs_pct_error']:.1f}% ({kinds})"
    )


def holdout_line(stats: dict) -> str:
    """The report line of the rows of sources the fit never saw (`emu calibrate --cv
    --holdout`; `emu.calibration.with_holdout`'s summary "holdout")."""
    return f"sources the fit never saw (--holdout): {stats_line(stats)}"


def memory_check(results: list[dict]) -> dict:
    """The memory model against the measured runs: every modelled train, prefill or decode
    row ran on its hardware, so its plan fits there; {"runs": how many carry emu's
    feasibility, "over_hbm": how many emu's memory model puts over the usable HBM, "ids":
    those rows}."""
    runs = [r for r in results if r["status"] == "ok" and "feasible" in r]
    over = [str(r["id"]) for r in runs if not r["feasible"]]
    return {"runs": len(runs), "over_hbm": len(over), "ids": over}


def summarise(results: list[dict]) -> dict:
    """Row counts and error statistics, overall and by kind, system and source, the share
    of modelled rows inside their interval ("inside": in sample for this file), and the
    measured runs the memory model puts over HBM (`memory_check`)."""
    ok = [r for r in results if r["status"] == "ok"]
    banded = [r for r in ok if r.get("inside") is not None]
    return {
        "memory": memory_check(results),
        "rows": len(results),
        "modelled": len(ok),
        "skipped": sum(r["status"] == "skipped" for r in results),
        "errors": sum(r["status"] == "error" for r in results),
        **error_stats(ok, lambda r: r["abs_pct_error"]),
        "inside": {
            "n": len(banded),
            "share": float(np.mean([r["inside"] for r in banded])) if banded else None,
        },
    }


def coverage_of_file(results: list[dict], residuals: list[dict] | None = None) -> dict | None:
    """Out-of-sample coverage of the intervals (`_intervals.coverage`) over the shipped
    held-out residuals of the rows of `results` (matched by id and measured value); None
    when no shipped residual matches."""
    residuals = read_residuals() if residuals is None else residuals
    ok = {(r["id"], r["measured"]) for r in results if r["status"] == "ok"}
    recs = residual_records(x for x in residuals if (x["id"], x["measured"]) in ok)
    if not recs:
        return None
    cov = coverage(recs)
    prov = (interval_table() or {}).get("provenance") or {}
    shipped = prov.get("tails")
    cov["tails_are_shipped"] = (
        isinstance(shipped, dict)
        and all(
            math.isclose(float(shipped.get(k, math.nan)), float(v))
            for k, v in cov["tail"].items()
            if k != "all"
        )
        and math.isclose(float(prov.get("tail", math.nan)), float(cov["tail"]["all"]))
    )
    return cov


def check_overrides(rows: list[dict], overrides: dict) -> None:
    """ValueError, before any row is predicted, when the system overrides (`--set`) fail
    on every system the rows name (a path no system has, a value out of range): then every
    row would fail the same way. Where they fail on some systems only, those rows say so."""
    from emu.catalog import list_systems, load_system

    known = set(list_systems())  # (a row naming another system is that row's error)
    errors = []
    for name in sorted({r.get("system") for r in rows} & known):
        try:
            load_system(name, overrides)
            return
        except (ValueError, KeyError, TypeError) as e:
            errors.append(str(e))
    if errors:
        raise ValueError(f"--set: {errors[0].rstrip('.')} (on every system the rows name).")


def validate_file(path=None, *, kind: str | None = None, overrides: dict | None = None) -> dict:
    """{"rows": every row's result, "summary": `summarise`, "coverage": `coverage_of_file`}
    for a JSON Lines file (default: the shipped measurements), optionally only rows of one
    `kind` (KINDS)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown row kind '{kind}'; known: {', '.join(KINDS)}.")
    path = path or default_measurements()
    rows, problems = read_rows(path)
    if kind:
        kinds = sorted({str(r.get("kind")) for r in rows})
        rows = [r for r in rows if r.get("kind") == kind]
        if not rows:
            raise ValueError(
                f"no {kind} rows in '{path}' (its rows' kinds: {', '.join(kinds) or 'none'}); "
                "drop --kind or pick one of these."
            )
    if overrides:
        check_overrides(rows, overrides)
    results = problems + validate_rows(rows, overrides=overrides)
    for r in results:
        r.setdefault("predicted", None)
        r.setdefault("measured", None)
        r.setdefault("abs_pct_error", None)
    return {
        "rows": results,
        "summary": summarise(results),
        "coverage": coverage_of_file(results),
    }


def format_report(report: dict, *, show_skipped: bool = False, skipped_hint: str = "") -> str:
    """The report as a text table and summary blocks (`skipped_hint`: how to see the reasons
    of skipped rows, shown beside their count)."""
    lines = []
    # columns as wide as their longest entry: an id is what `emu validate --row` takes, so it
    # is printed whole (ids run to ~90 characters, metrics to ~35)
    wi, ws, wm = (
        max([len(k)] + [len(str(r.get(k, ""))) for r in report["rows"]])
        for k in ("id", "system", "metric")
    )
    hdr = (
        f"{'id':{wi}} {'system':{ws}} {'metric':{wm}} {'predicted':>11} {'80% interval':>21} "
        f"{'measured':>11} {'error':>7}"
    )
    lines += [hdr, "-" * len(hdr)]
    for r in report["rows"]:
        if r["status"] == "ok":
            flag = "" if r.get("feasible", True) else "  (plan exceeds HBM in emu)"
            band = r.get("interval") or {}
            if band.get("low") is None:
                span = "-"
            else:
                mark = "~" if band["extrapolation"] else ""
                span = f"{mark}[{band['low']:.3g}-{band['high']:.3g}]"
            out = "" if r.get("inside", True) is not False else " out"
            lines.append(
                f"{r['id']:{wi}} {r['system']:{ws}} {r['metric']:{wm}} "
                f"{r['predicted']:11.4g} {span:>21} {r['measured']:11.4g} "
                f"{r['abs_pct_error']:6.1f}%{out}{flag}"
            )
        elif show_skipped or r["status"] == "error":
            lines.append(f"{r['id']:{wi}} {r['status'].upper()}: {r['reason']}")
    s = report["summary"]
    lines += [
        "",
        f"rows {s['rows']}: modelled {s['modelled']}, skipped {s['skipped']}"
        + (f" ({skipped_hint})" if skipped_hint else "")
        + f", errors {s['errors']}",
    ]

    def block(title, d):
        out = [f"{title:44} {'n':>4} {'median':>8} {'p90':>8}"]
        for k, v in d.items():
            if v["n"]:
                out.append(
                    f"{k[:44]:44} {v['n']:4d} {v['median_abs_pct_error']:7.1f}% "
                    f"{v['p90_abs_pct_error']:7.1f}%"
                )
        return out

    mem = s.get("memory") or {}
    if mem.get("runs"):
        lines.append(
            f"memory model: {mem['over_hbm']} of {mem['runs']} measured runs exceed the usable "
            "HBM in emu (each ran on its hardware; flagged 'plan exceeds HBM in emu' above)"
        )
    lines += [""] + block("by kind", {**s["by_kind"], "ALL": s["all"]})
    lines += [""] + block("by system", s["by_system"])
    lines += [""] + block("by source", s["by_source"])
    lines += [""] + coverage_lines(report)
    return "\n".join(lines)


def coverage_lines(report: dict) -> list[str]:
    """The coverage block of a report: in-sample share inside the shipped bands and the
    out-of-sample coverage from the shipped residuals."""
    s = report["summary"].get("inside") or {}
    c = report.get("coverage")
    out = ["interval coverage (target 75-85% for an 80% band)"]
    if s.get("share") is not None:
        # rows the shipped residuals do not hold were not in the fit that wrote them: for
        # them the bands are out of sample (`experiments/data/out_of_sample.jsonl`)
        seen = (
            "in sample for rows the calibration saw"
            if c
            else "none of these rows is among the shipped calibration's residuals"
        )
        out.append(
            f"  this file, shipped interval table: {100 * s['share']:.1f}% of {s['n']} rows "
            f"inside ({seen})"
        )
    if not c:
        out.append("  out of sample: no shipped residuals match these rows (emu calibrate --cv)")
        return out
    out.append(
        f"  out of sample (held-out residuals, level calibrated without the "
        f"row's source): {100 * c['out_of_sample']:.1f}% of {c['rows']} rows; nested at the "
        f"{'shipped tails' if c.get('tails_are_shipped') else 'tails these rows calibrate'} "
        f"({tails_text(c['tail'])}): {100 * c['nested']:.1f}%; median width "
        f"{_width(c['median_width'])}; {c['extrapolated']} extrapolated"
    )
    for k, v in c["by_kind"].items():
        out.append(f"    {k:40} {v['n']:4d} {100 * v['coverage']:6.1f}%")
    if len(c.get("by_origin", {})) > 1:  # leave-one-source-out rows and holdout rows
        for k, v in c["by_origin"].items():
            what = "rows of sources the fit never saw" if k == "holdout" else "fitted rows"
            out.append(f"    {what:40} {v['n']:4d} {100 * v['coverage']:6.1f}%")
    return out


def _width(w) -> str:
    """A band's high/low ratio as text: unbounded where most rows extrapolate (no band)."""
    return f"{w:.2f}x" if w is not None and math.isfinite(w) else "unbounded (no band)"


def plot_report(report: dict, path) -> None:
    """Predicted vs measured on log-log axes, one colour per system, with the 1:1 line and
    +-10% bands; written in the format of the file's suffix (.png, .pdf, .svg; PNG without
    one; needs matplotlib: pip install 'cluster-emu[plot]'), atomically; the folder is
    created if missing."""
    out = check_output_path(path, make_parents=True, what="plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError(
            "plotting needs matplotlib; install it with pip install 'cluster-emu[plot]'."
        ) from None
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    if not ok:
        raise ValueError("no modelled rows to plot.")
    fig, ax = plt.subplots(figsize=(7.5, 7))
    systems = sorted({r["system"] for r in ok})
    cmap = plt.get_cmap("tab10")
    for i, s in enumerate(systems):
        pts = [(r["measured"], r["predicted"]) for r in ok if r["system"] == s]
        ax.scatter(*zip(*pts, strict=True), s=18, color=cmap(i % 10), label=s, alpha=0.8)
    lo = min(min(r["measured"], r["predicted"]) for r in ok) * 0.7
    hi = max(max(r["measured"], r["predicted"]) for r in ok) * 1.4
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, color="black", lw=1, label="1:1")
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="grey", alpha=0.25, label="+-10%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    s = report["summary"]["all"]
    ax.set_title(
        f"emu validate: {s['n']} rows, median |error| {s['median_abs_pct_error']:.1f}%"
        f", p90 {s['p90_abs_pct_error']:.1f}%"
    )
    ax.set_xlabel("measured (each row's metric, as published: s, tok/s, TFLOP/s, GB/s, us)")
    ax.set_ylabel("predicted (same unit)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    try:
        with atomic_write(out, "wb") as fh:
            fig.savefig(fh, format=Path(out).suffix.lstrip(".").lower() or "png", dpi=120)
    finally:
        plt.close(fig)
