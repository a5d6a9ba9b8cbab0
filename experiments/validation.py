"""Regenerate the full validation report into a results folder.

    python experiments/validation.py [file] [--out experiments/figures/validation] [--steps 300]
        [--holdout experiments/data/out_of_sample.jsonl]

Writes: report.json (every row: prediction, measurement, error, 80% interval; summaries by
kind, system and source, with the committed calibration; the out-of-sample coverage of the
shipped intervals), table.txt (the `emu validate` table), validation.png (predicted vs
measured, log-log, one colour per system, 1:1 line and +-10% bands), calibration.json (a
from-scratch fit with in-sample and leave-one-source-out errors by system, kind and source,
leave-one-system-out, and the coverage of intervals built from these residuals),
residuals.jsonl and intervals.toml (what `emu calibrate --cv` ships, for comparison; the
committed overlay is not modified; `--holdout` as `emu calibrate --cv --holdout`: rows of
sources the fit never saw join the residuals the intervals are calibrated on). Prints the
headline tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from emu.calibration import (
    cross_validate,
    fit,
    holdout_residuals,
    interval_records,
    read_holdout,
    with_holdout,
    write_intervals,
    write_residuals,
)
from emu.cli import positive_int
from emu.storage import enable_compilation_cache as enable_cache
from emu.struct import json_safe
from emu.validation import (
    coverage,
    format_report,
    holdout_line,
    plot_report,
    tails_text,
    validate_file,
)


def _table(title: str, ins: dict, held: dict | None) -> list[str]:
    out = [
        f"{title:52} {'n':>4} {'median':>7} {'p90':>7}" + ("  LOSO med  LOSO p90" if held else "")
    ]
    for name, v in ins.items():
        if not v["n"]:
            continue
        med, p90 = v["median_abs_pct_error"], v["p90_abs_pct_error"]
        line = f"{name[:52]:52} {v['n']:4d} {med:6.1f}% {p90:6.1f}%"
        h = (held or {}).get(name)
        if h and h["n"]:
            line += f" {h['median_abs_pct_error']:8.1f}% {h['p90_abs_pct_error']:8.1f}%"
        out.append(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", help="measurements (default: the shipped set)")
    ap.add_argument("--out", default="experiments/figures/validation")
    ap.add_argument("--steps", type=positive_int, default=300)
    ap.add_argument("--no-fit", action="store_true", help="only the report (no refit)")
    ap.add_argument("--holdout", help="rows of sources the fit never saw, for the intervals")
    args = ap.parse_args()
    if args.holdout and args.no_fit:
        sys.exit("validation.py: --holdout calibrates the refit's intervals; drop --no-fit.")
    try:  # before the fit of minutes
        held_rows = read_holdout(args.holdout, args.file) if args.holdout else []
    except (OSError, ValueError) as e:
        sys.exit(f"validation.py: {e}")
    enable_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = validate_file(args.file)
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=1, allow_nan=False))
    (out / "table.txt").write_text(format_report(report, show_skipped=True) + "\n")
    plot_report(report, out / "validation.png")
    s = report["summary"]
    print(
        f"validate (shipped calibration, in sample): {s['modelled']}/{s['rows']} rows modelled, "
        f"median {s['all']['median_abs_pct_error']:.1f}%, p90 {s['all']['p90_abs_pct_error']:.1f}%"
        f"  ({time.perf_counter() - t0:.0f} s)"
    )
    if args.no_fit:
        return

    def progress(k, n, loss):
        if k == n or k % 50 == 0:
            print(f"  fit {k}/{n} loss {loss:.5f}", file=sys.stderr)

    fitted = fit(args.file, steps=args.steps, progress=progress)
    rep = fitted.to_json()  # parameter keys joined with "."
    by_source = cross_validate(fitted, by="source")
    by_system = cross_validate(fitted, by="system")
    if held_rows:
        extra = holdout_residuals(fitted, held_rows)
        by_source = with_holdout(by_source, extra)
    cov = coverage(interval_records(by_source))
    write_residuals(by_source, out / "residuals.jsonl")
    write_intervals(by_source, out / "intervals.toml", command="experiments/validation.py")
    cal = {
        "rows": rep["rows"],
        "parameters": rep["parameters"],
        "steps": rep["steps"],
        "weights": rep["weights"],
        "in_sample": by_source.summary["in_sample"],
        "leave_one_source_out": by_source.summary["held_out"],
        "leave_one_system_out": by_system.summary["held_out"],
        "holdout": by_source.summary.get("holdout"),
        "coverage": cov,
        "values": rep["values"],
        "uncertainty": rep["uncertainty"],
        "wall_s": time.perf_counter() - t0,
    }
    (out / "calibration.json").write_text(json.dumps(json_safe(cal), indent=1, allow_nan=False))
    ins, held = by_source.summary["in_sample"], by_source.summary["held_out"]
    lines = [
        f"refit: {rep['parameters']} shared parameters, {rep['rows']} rows, {rep['steps']} steps, "
        f"weights {rep['weights']}",
        f"in sample: median {ins['all']['median_abs_pct_error']:.1f}%, p90 "
        f"{ins['all']['p90_abs_pct_error']:.1f}%",
        f"leave-one-source-out ({by_source.groups} sources): median "
        f"{held['all']['median_abs_pct_error']:.1f}%, p90 {held['all']['p90_abs_pct_error']:.1f}%",
        f"leave-one-system-out ({by_system.groups} systems): median "
        f"{by_system.median_abs_pct_error:.1f}%, p90 {by_system.p90_abs_pct_error:.1f}%",
        *([holdout_line(by_source.summary["holdout"])] if "holdout" in by_source.summary else []),
        f"interval coverage (80% band, out of sample, level calibrated without the row's source): "
        f"{100 * cov['out_of_sample']:.1f}% of {cov['rows']} rows (tails "
        f"{tails_text(cov['tail'])}, median width {cov['median_width']:.2f}x)",
        "",
        *_table("by system", ins["by_system"], held["by_system"]),
        "",
        *_table("by kind", ins["by_kind"], held["by_kind"]),
        "",
        *_table("by source", ins["by_source"], held["by_source"]),
        "",
        "coverage by kind: "
        + ", ".join(
            f"{k} {100 * v['coverage']:.0f}% ({v['n']})" for k, v in cov["by_kind"].items()
        ),
    ]
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}/ in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
