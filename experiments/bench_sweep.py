"""Benchmark: exhaustive sweep throughput and memory (dense training model, CPU).

    python experiments/bench_sweep.py [--sizes 1e5,1e6,1e7,4e7] [--columns all,merge,cli]

Sweeps every valid Llama 3 70B training plan on 144 GB200 NVL72 GPUs times a grid of HBM
and NVLink bandwidths sized to reach each target, streaming chunks (2^18 configurations,
11 float32 outputs each) to a temporary folder. Each size runs in a fresh process, so peak
RSS shows whether memory stays flat as the sweep grows. Reports configurations, wall time
end to end (enumeration, the one compilation, evaluation, checksummed chunk writes and the
merge), configurations per second end to end, the steady rate after the first chunk
(compilation excluded), and peak RSS. With --cached the children use JAX's persistent
compilation cache (as `emu sweep` does), so a repeated sweep of the same shape skips
compilation; without it every child compiles from scratch. `--columns` runs each size
with every output column (`all`, 12 per configuration) and with only the four the merge
needs (`merge`: objective, feasible, tokens/s, watts; `emu.search.sweep(columns=())`), side
by side: the outputs a sweep does not ask for are neither computed nor stored. `cli` runs
the same sweep as a user does, `emu sweep ... --grid ... --json` in a fresh process (its
default chunk; without --out it scans spaces of `FILL_MIN` configurations or more with the
merge's columns and evaluates the rows it shows in full): wall_s and configs/s are the
sweep's own (its JSON `wall_s`), first_chunk_s its first chunk, and the process's whole
wall time (imports and setup included) is printed after the row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

GRID = r"""
def bench_grid(n_target):
    import numpy as np
    from emu.catalog import load_model, load_system
    from emu.search import Problem, enumerate_plans
    system, model = load_system("gb200_nvl72"), load_model("llama3_70b")
    problem = Problem("gb200_nvl72", "llama3_70b", 144, seq_len=8192)
    n_plans = len(enumerate_plans(system, model, problem))
    g = max(1, int(round(n_target / n_plans)))
    a = max(1, int(g ** 0.5)); b = max(1, g // a)
    return {"chip.hbm_bytes_per_s": list(np.geomspace(4e12, 16e12, a)),
            "tiers.nvlink.bytes_per_s": list(np.geomspace(4e11, 1.8e12, b))}
"""

CHILD = (
    r"""
import json, resource, sys, tempfile, time
import numpy as np
if sys.argv[2] == "1":
    from emu.storage import enable_compilation_cache
    enable_compilation_cache()
from emu.catalog import load_model, load_system
from emu.search import Problem, enumerate_plans, sweep
n_target = float(sys.argv[1])
system, model = load_system("gb200_nvl72"), load_model("llama3_70b")
problem = Problem("gb200_nvl72", "llama3_70b", 144, seq_len=8192)
"""
    + GRID
    + r"""
grid = bench_grid(n_target)
chunk = 1 << 18
columns = None if sys.argv[3] == "all" else ()
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    r = sweep(system, model, problem, d, grid=grid, chunk=chunk, columns=columns)
    wall = time.perf_counter() - t
n = r.evaluations
steady = (n - min(n, chunk)) / max(wall - r.first_chunk_s, 1e-9) if n > chunk else None
print(json.dumps({"configurations": n, "wall_s": wall, "per_s": n / wall,
                  "first_chunk_s": r.first_chunk_s, "steady_per_s": steady,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
)


def _sizes(text: str) -> list[str]:
    """argparse type: comma-separated positive counts, kept as spelled (the child reads them)."""
    from emu.cli import positive_int

    sizes = [s for s in text.split(",") if s.strip()]
    for s in sizes:
        positive_int(s)
    if not sizes:
        raise argparse.ArgumentTypeError("give at least one size, e.g. 1e5,1e6")
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--sizes",
        type=_sizes,
        default="1e5,1e6,1e7,4e7",
        help="configurations per row, comma-separated (default 1e5,1e6,1e7,4e7)",
    )
    ap.add_argument("--cached", action="store_true", help="use the compilation cache")
    ap.add_argument("--columns", default="all,merge",
                    help="all, merge and/or cli, comma-separated (default all,merge)")  # fmt: skip
    args = ap.parse_args()
    bad = sorted(set(args.columns.split(",")) - {"all", "merge", "cli"})
    if bad:
        ap.error(f"--columns: unknown mode {bad[0]!r}; use all, merge or cli, comma-separated")
    print(
        f"{'columns':>8} {'configurations':>15} {'wall_s':>8} {'configs/s':>11} "
        f"{'first_chunk_s':>14} {'steady/s':>10} {'peak_rss_MB':>12}"
    )
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        if not args.cached:  # a private, empty cache: every child compiles from scratch
            env["XDG_CACHE_HOME"] = cache
        for size, cols in [(s, c) for s in args.sizes for c in args.columns.split(",")]:
            if cols == "cli":
                _cli_row(size, env)
                continue
            out = subprocess.run(
                [sys.executable, "-c", CHILD, size, "1" if args.cached else "0", cols],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            d = json.loads(out.stdout.strip().splitlines()[-1])
            steady = f"{d['steady_per_s']:10.3g}" if d["steady_per_s"] else f"{'-':>10}"
            print(
                f"{cols:>8} {d['configurations']:15d} {d['wall_s']:8.2f} {d['per_s']:11.3g} "
                f"{d['first_chunk_s']:14.2f} {steady} {d['peak_rss_mb']:12.0f}",
                flush=True,
            )


def _cli_row(size: str, env: dict) -> None:
    """One `emu sweep` process on the benchmark's space (the `cli` columns mode)."""
    scope: dict = {}
    exec(GRID, scope)
    grid = scope["bench_grid"](float(size))
    flags = [f"--grid={k}=" + ",".join(f"{v:.6g}" for v in vals) for k, vals in grid.items()]
    cmd = [sys.executable, "-m", "emu", "sweep", "--system", "gb200_nvl72", "--model",
           "llama3_70b", "--chips", "144", "--seq-len", "8192", "--top", "5", "--json",
           *flags]  # fmt: skip
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env,
                         cwd=tempfile.gettempdir())  # fmt: skip
    process_s = time.perf_counter() - t
    d = json.loads(out.stdout)
    n, wall = d["evaluations"], d["wall_s"]
    print(f"{'cli':>8} {n:15d} {wall:8.2f} {n / wall:11.3g} {d['first_chunk_s']:14.2f} "
          f"{'-':>10} {'-':>12}   (process {process_s:.2f} s: {n / process_s:.3g}/s)",
          flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
