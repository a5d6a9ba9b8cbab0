"""Validation results: the error of every row, the summary by kind, system and source, the
text table and the predicted-vs-measured plot.

Error = |predicted - measured| / measured on the metric as published.
"""

from __future__ import annotations

import math
from collections import defaultdict

import jax
import numpy as np

from emu.objective import evaluate
from emu.storage import atomic_write, check_output_path
from emu.validation._predict import predict_items, prepare_rows
from emu.validation._rows import default_measurements, read_rows

#: the row kinds a measurement file may hold (`validate_file(kind=...)`)
KINDS = ("train", "prefill", "decode", "collective")


def _scored(base: dict, pred: float, row: dict, **extra) -> dict:
    """The result of a modelled row: its error, or an error status if not finite."""
    if not math.isfinite(pred):
        return {
            **base,
            "predicted": None,
            "abs_pct_error": None,
            "status": "error",
            "reason": f"line {row.get('_line')}: prediction is not finite "
            "(inputs outside float32 range)",
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


def validate_rows(
    rows: list[dict], *, overrides: dict | None = None, calibration: dict | None = None
) -> list[dict]:
    """The result of every row (in the rows' order): predicted, measured, abs_pct_error,
    status ("ok", "skipped" or "error") and reason."""
    items, results = prepare_rows(rows, overrides=overrides, calibration=calibration)
    preds, feas = predict_items(items, run=lambda s, m, p: jax.device_get(_eval_group(s, m, p)))
    for it, pred, ok in zip(items, preds, feas, strict=True):
        extra = {} if ok is None else {"feasible": bool(float(ok) > 0.5)}
        results.append(_scored(it.base, float(pred), it.row, **extra))
    order = {str(r["id"]): i for i, r in enumerate(rows)}
    results.sort(key=lambda r: order.get(r["id"], len(order)))
    return results


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


def summarise(results: list[dict]) -> dict:
    """Row counts and error statistics, overall and by kind, system and source."""
    ok = [r for r in results if r["status"] == "ok"]
    by_kind, by_system, by_source = defaultdict(list), defaultdict(list), defaultdict(list)
    for r in ok:
        by_kind[r["kind"]].append(r["abs_pct_error"])
        by_system[r["system"]].append(r["abs_pct_error"])
        by_source[r["source"]].append(r["abs_pct_error"])
    return {
        "rows": len(results),
        "modelled": len(ok),
        "skipped": sum(r["status"] == "skipped" for r in results),
        "errors": sum(r["status"] == "error" for r in results),
        "all": _stats([r["abs_pct_error"] for r in ok]),
        "by_kind": {k: _stats(v) for k, v in sorted(by_kind.items())},
        "by_system": {k: _stats(v) for k, v in sorted(by_system.items())},
        "by_source": {k: _stats(v) for k, v in sorted(by_source.items())},
    }


def validate_file(path=None, *, kind: str | None = None, overrides: dict | None = None) -> dict:
    """{"rows": every row's result, "summary": `summarise`} for a JSON Lines file (default:
    the shipped measurements), optionally only rows of one `kind` (KINDS)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown row kind '{kind}'; known: {', '.join(KINDS)}.")
    rows, problems = read_rows(path or default_measurements())
    if kind:
        rows = [r for r in rows if r.get("kind") == kind]
    results = problems + validate_rows(rows, overrides=overrides)
    for r in results:
        r.setdefault("predicted", None)
        r.setdefault("measured", None)
        r.setdefault("abs_pct_error", None)
    return {"rows": results, "summary": summarise(results)}


def format_report(report: dict, *, show_skipped: bool = False, skipped_hint: str = "") -> str:
    """The report as a text table and summary blocks (`skipped_hint`: how to see the reasons
    of skipped rows, shown beside their count)."""
    lines = []
    hdr = f"{'id':58} {'system':14} {'metric':26} {'predicted':>11} {'measured':>11} {'error':>7}"
    lines += [hdr, "-" * len(hdr)]
    for r in report["rows"]:
        if r["status"] == "ok":
            flag = "" if r.get("feasible", True) else "  (plan exceeds HBM in emu)"
            lines.append(
                f"{r['id'][:58]:58} {r['system']:14} {r['metric'][:26]:26} "
                f"{r['predicted']:11.4g} {r['measured']:11.4g} "
                f"{r['abs_pct_error']:6.1f}%{flag}"
            )
        elif show_skipped or r["status"] == "error":
            lines.append(f"{r['id'][:58]:58} {r['status'].upper()}: {r['reason']}")
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

    lines += [""] + block("by kind", {**s["by_kind"], "ALL": s["all"]})
    lines += [""] + block("by system", s["by_system"])
    lines += [""] + block("by source", s["by_source"])
    return "\n".join(lines)


def plot_report(report: dict, path) -> None:
    """Predicted vs measured on log-log axes, one colour per system, with the 1:1 line and
    +-10% bands; written as PNG (needs matplotlib: pip install 'cluster-emu[plot]'),
    atomically; the folder is created if missing."""
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
            fig.savefig(fh, format="png", dpi=120)
    finally:
        plt.close(fig)
