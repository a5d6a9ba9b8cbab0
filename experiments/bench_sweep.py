"""Benchmark: exhaustive sweep throughput and memory (dense training model, CPU).

    python experiments/bench_sweep.py [--sizes 1e5,1e6,4e6]

Sweeps every valid Llama 3 70B training plan on 144 GB200 NVL72 GPUs times a grid of HBM
and NVLink bandwidths sized to reach each target, streaming chunks to a temporary folder.
Each size runs in a fresh process, so peak RSS shows whether memory stays flat as the
sweep grows. Reports configurations, wall time (including the one compilation),
configurations per second and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, tempfile, time
import numpy as np
from emu.config import load_model, load_system
from emu.search import Problem, enumerate_plans, sweep
n_target = float(sys.argv[1])
system, model = load_system("gb200_nvl72"), load_model("llama3_70b")
problem = Problem("gb200_nvl72", "llama3_70b", 144, seq_len=8192)
n_plans = len(enumerate_plans(system, model, problem))
g = max(1, int(round(n_target / n_plans)))
a = max(1, int(g ** 0.5)); b = max(1, g // a)
grid = {"chip.hbm_bytes_per_s": list(np.geomspace(4e12, 16e12, a)),
        "tiers.nvlink.bytes_per_s": list(np.geomspace(4e11, 1.8e12, b))}
with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    r = sweep(system, model, problem, d, grid=grid, chunk=1 << 18)
    wall = time.perf_counter() - t
print(json.dumps({"configurations": r["evaluations"], "wall_s": wall,
                  "per_s": r["evaluations"] / wall,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1e5,1e6,1e7")
    args = ap.parse_args()
    print(f"{'configurations':>15} {'wall_s':>8} {'configs/s':>11} {'peak_rss_MB':>12}")
    for size in args.sizes.split(","):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, size], capture_output=True, text=True, check=True
        )
        d = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{d['configurations']:15d} {d['wall_s']:8.2f} {d['per_s']:11.3g} "
            f"{d['peak_rss_mb']:12.0f}"
        )


if __name__ == "__main__":
    main()
