"""Which fitted parameters a source alone informs: the leave-one-source-out fold, parameter
by parameter.

    python experiments/loso_parameters.py                      # the 6 worst sources held out
    python experiments/loso_parameters.py "DeepEP V1" Oracle   # sources named by a substring
    python experiments/loso_parameters.py --top 10 --steps 150

`emu calibrate --cv` reports how far off each source's rows are when that source is held
out; this says why. It fits the shared parameters on every modelled row of the shipped set
(as `emu calibrate`), then for each chosen source refits from the priors without its rows
(`emu.calibration.refit_without`, the fold `cross_validate` runs) and prints the held-out
and in-sample median |error| of its rows and the parameters that moved most (by |log| of
the ratio held out / full). A parameter that returns to its prior when a source is held out
is informed by that source alone, so the held-out error there is that prior's error: a
prior from a published figure other than the source would help, a fit would not.

Without a name, the sources are the `--top` with the largest held-out median |error| in the
shipped residuals (configs/calibration/residuals.jsonl, written by `emu calibrate --cv`).
Cost: one full fit (about 9 minutes cold on 2 cores, less with the compilation cache warm)
and one refit per source (~10-20 s each).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time

from emu import calibration, storage
from emu.cli import positive_int
from emu.validation import default_measurements, read_rows, row_source


def _worst_sources(n: int) -> list[str]:
    path = calibration.overlay_files(calibration.overlay_path(), True)[1]
    if not path.is_file():
        raise SystemExit(f"{path} not found: run `emu calibrate --cv`, or name the sources.")
    by: dict[str, list[float]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r.get("r_cv") is not None and not r.get("holdout"):  # the fitted sources only
            by.setdefault(r["source"], []).append(abs(math.expm1(r["r_cv"])))
    return sorted(by, key=lambda s: -statistics.median(by[s]))[:n]


def _median_abs(log_errors) -> float:
    return 100 * statistics.median(abs(math.expm1(float(x))) for x in log_errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="*", help="substrings of source names (default: --top)")
    ap.add_argument("--top", type=positive_int, default=6, help="worst sources (default 6)")
    ap.add_argument("--steps", type=positive_int, default=150, help="Adam steps (default 150)")
    ap.add_argument("--show", type=positive_int, default=6, help="parameters per source")
    args = ap.parse_args()
    names = sorted({row_source(r) for r in read_rows(default_measurements())[0]})
    wanted = []  # each name matched before a fit of minutes
    for want in args.sources or _worst_sources(args.top):
        hits = [s for s in names if want in s]
        if len(hits) != 1:
            what = "no source" if not hits else f"{len(hits)} sources"
            ap.error(f"{want!r} matches {what} of the shipped set; give a longer substring")
        wanted.append(hits[0])
    storage.enable_compilation_cache()
    t0 = time.perf_counter()
    print(f"fitting {default_measurements().name} ({args.steps} steps) ...", flush=True)

    def progress(k, steps, loss):
        if k % 25 == 0 or k == steps:
            print(f"  step {k}/{steps}, loss {loss:.4g}", file=sys.stderr, flush=True)

    report = calibration.fit(steps=args.steps, progress=progress)
    print(f"fitted in {time.perf_counter() - t0:.0f} s: in sample median "
          f"{report.median_abs_pct_error:.2f}%", flush=True)  # fmt: skip
    r_in = report.problem.log_errors(report.u)
    for source in wanted:
        values, held = calibration.refit_without(report, source, steps=args.steps)
        mine = [i for i, it in enumerate(report.problem.items) if it.base["source"] == source]
        print(f"\n{source[:90]}\n  {len(mine)} rows: median |error| held out "
              f"{_median_abs(held):.1f}%, in sample {_median_abs(r_in[mine]):.1f}%")  # fmt: skip
        moved = sorted(values, key=lambda k: -abs(math.log(values[k] / report.values[k])))
        for key in moved[: args.show]:
            prior = report.priors[key]
            print(f"  {'.'.join(p for p in key if p):48} held out {values[key]:<10.4g} "
                  f"full {report.values[key]:<10.4g} prior {prior:.4g}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
