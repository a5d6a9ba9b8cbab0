"""Regenerate the full validation report into a results folder.

    python experiments/validation.py [--out experiments/figures/validation] [--steps 150]

Writes: report.json (every row: prediction, measurement, error; summaries by kind, system
and source, with the committed calibration), table.txt (the `emu validate` table),
validation.png (predicted vs measured, log-log, one colour per system, 1:1 line and +-10%
bands), calibration.json (a from-scratch fit with in-sample, leave-one-source-out and
leave-one-system-out errors; the committed overlay is not modified).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from emu.calibration import cross_validate, fit
from emu.storage import enable_compilation_cache as enable_cache
from emu.validation import format_report, plot_report, validate_file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", help="measurements (default: the shipped set)")
    ap.add_argument("--out", default="experiments/figures/validation")
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    enable_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = validate_file(args.file)
    (out / "report.json").write_text(json.dumps(report, indent=1, allow_nan=False))
    (out / "table.txt").write_text(format_report(report, show_skipped=True) + "\n")
    plot_report(report, out / "validation.png")
    s = report["summary"]["all"]
    print(
        f"validate: {s['n']} rows, median {s['median_abs_pct_error']:.1f}%, "
        f"p90 {s['p90_abs_pct_error']:.1f}%  ({time.perf_counter() - t0:.0f} s)"
    )

    def progress(k, n, loss):
        if k == n or k % 50 == 0:
            print(f"  fit {k}/{n} loss {loss:.5f}", file=sys.stderr)

    fitted = fit(args.file, steps=args.steps, progress=progress)
    rep = fitted.to_json()  # parameter keys joined with "."
    cvs = [vars(cross_validate(fitted, by=by)) for by in ("source", "system")]
    cal = {
        "rows": rep["rows"],
        "parameters": rep["parameters"],
        "steps": rep["steps"],
        "in_sample": {
            "median_abs_pct_error": rep["median_abs_pct_error"],
            "p90_abs_pct_error": rep["p90_abs_pct_error"],
            "median_abs_pct_error_priors": rep["median_abs_pct_error_before"],
        },
        "cross_validation": cvs,
        "values": rep["values"],
        "uncertainty": rep["uncertainty"],
        "wall_s": rep["wall_s"],
    }
    (out / "calibration.json").write_text(json.dumps(cal, indent=1, allow_nan=False))
    print(
        f"calibration: {rep['parameters']} parameters, {rep['rows']} rows; in-sample median "
        f"{rep['median_abs_pct_error']:.1f}% (priors {rep['median_abs_pct_error_before']:.1f}%)"
        f", p90 {rep['p90_abs_pct_error']:.1f}%"
    )
    for c in cvs:
        print(
            f"leave-one-{c['by']}-out ({c['groups']} groups): median "
            f"{c['median_abs_pct_error']:.1f}%, p90 {c['p90_abs_pct_error']:.1f}%"
        )
    print(f"wrote {out}/ in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
