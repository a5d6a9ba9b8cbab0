"""Benchmark: gradient search against exhaustive enumeration on co-design problems.

    python experiments/bench_search.py [--only NAME] [--json FILE] [--sweep-columns SETS]

Each problem searches the parallel plan jointly with topology knobs (emu.topology.reshape)
on a grid, so the exhaustive space is plans x grid points. For every problem the script
runs the exhaustive sweep (`emu.search.sweep`, the optimum) and the gradient search
(`emu.search.gradient_search`, default settings), and prints both objectives, their ratio,
the evaluations each used (the gradient search counts each value-and-gradient call and
each exact evaluation) and the wall times (each including its compilation).
Done when: ratio >= 0.99 and gradient evaluations <= 5% of the space, on every row.
The sweep computes only the columns its merge needs (`sweep(columns=())`: objective,
feasible, tokens/s, watts; `emu search --method exhaustive` also computes the five its
table shows). The last problem
(`nvl72-405b-train-8192-1e8`, ~1e8 configurations: four fine topology and HBM axes) is
past the size where the gradient search, whose cost does not grow with the space, beats
the sweep in wall time (README "Speed": 16.4 s against 27.2 s in one run each, once the
gradient phase took its gradient by forward mode; timings vary ~1.5x between runs on the
shared machine; most of the search's time is still compiling that program).
`--sweep-columns merge,search,all` times only the sweep, with the merge's columns, those
`emu search --method exhaustive` computes, and every column (`emu sweep`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from emu.catalog import load_model, load_system
from emu.search import Problem, gradient_search, sweep

BW = [0.25, 0.5, 1.0, 2.0, 4.0]
#: ten factors from 1/4 to 4 (log-spaced)
FINE = [round(4 ** (k / 4.5 - 1), 4) for k in range(10)]
#: name -> (Problem, grid); the grids are the topology knobs of emu.topology.reshape
PROBLEMS = {
    "nvl72-70b-train-72": (
        Problem("gb200_nvl72", "llama3_70b", 72, seq_len=8192),
        {"scaleup_bw": BW, "optics_share": [0.0, 0.5, 1.0], "domain": [8, 18, 36, 72]},
    ),
    "cm384-70b-train-384": (
        Problem("cloudmatrix384", "llama3_70b", 384, seq_len=8192),
        {"scaleup_bw": BW, "domain": [8, 16, 32, 64, 128, 384]},
    ),
    "nvl72-405b-train-8192": (
        Problem("gb200_nvl72", "llama3_405b", 8192, seq_len=8192),
        {"scaleout_bw": BW, "oversubscription": [1.0, 2.0, 4.0], "scaleup_bw": BW},
    ),
    "cm384-405b-train-6144": (
        Problem("cloudmatrix384", "llama3_405b", 6144, seq_len=8192),
        {"scaleout_bw": BW, "oversubscription": [1.0, 2.0, 4.0], "scaleup_bw": BW},
    ),
    "nvl72-dsv3-train-1152": (
        Problem("gb200_nvl72", "deepseek_v3", 1152, seq_len=4096),
        {"scaleout_bw": BW, "scaleup_bw": BW},
    ),
    "cm384-dsv3-train-1536": (
        Problem("cloudmatrix384", "deepseek_v3", 1536, seq_len=4096),
        {"scaleout_bw": BW, "scaleup_bw": BW},
    ),
    "cm384-r1-decode-384": (
        Problem(
            "cloudmatrix384",
            "deepseek_r1",
            (64, 128, 192, 256, 320, 384),
            seq_len=4096,
            phase="decode",
            precision="int8",
            objective="tokens_per_joule",
            tpot_slo=0.05,
            a2a_overlap=True,
        ),
        {"scaleup_bw": BW, "domain": [8, 16, 32, 64, 128, 384]},
    ),
    "nvl72-r1-prefill-72": (
        Problem(
            "gb200_nvl72",
            "deepseek_r1",
            (16, 32, 48, 64, 72),
            seq_len=4096,
            phase="prefill",
            precision="fp8",
            a2a_overlap=True,
        ),
        {"scaleup_bw": BW, "optics_share": [0.0, 0.5, 1.0], "domain": [8, 18, 36, 72]},
    ),
    "nvl72-70b-decode-powercap": (
        Problem(
            "gb200_nvl72",
            "llama3_70b",
            tuple(range(8, 73, 4)),
            seq_len=4096,
            phase="decode",
            precision="fp8",
            objective="tokens_per_s",
            power_cap=60e3,
            tpot_slo=0.03,
        ),
        {"scaleup_bw": BW, "domain": [8, 18, 36, 72]},  # 16 does not tile the 72-GPU rack
    ),
    "nvl72-405b-train-8192-1e8": (
        Problem("gb200_nvl72", "llama3_405b", 8192, seq_len=8192),
        {
            "scaleout_bw": FINE,
            "oversubscription": [1.0, 2.0, 3.0, 4.0],
            "scaleup_bw": FINE,
            "chip.hbm_bytes_per_s": [round(4e12 * 2 ** (k / 6.5)) for k in range(14)],
        },
    ),
}


def run(name: str) -> dict:
    problem, grid = PROBLEMS[name]
    system, model = load_system(problem.system), load_model(problem.model)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        ex = sweep(system, model, problem, d, grid=grid, columns=())
        t_ex = time.perf_counter() - t
    t = time.perf_counter()
    gs = gradient_search(system, model, problem, grid=grid)
    t_gs = time.perf_counter() - t
    best, found = ex.best["objective"], gs.best["objective"]
    sign = problem.sign()
    ratio = found / best if sign > 0 else best / found
    return {
        "problem": name,
        "objective": problem.objective_name(),
        "space": ex.evaluations,
        "exhaustive": best,
        "gradient": found,
        "ratio": ratio,
        "exhaustive_evals": ex.evaluations,
        "gradient_evals": gs.evaluations,
        "eval_share": gs.evaluations / ex.evaluations,
        "exhaustive_wall_s": t_ex,
        "gradient_wall_s": t_gs,
        "ok": ratio >= 0.99 and gs.evaluations <= 0.05 * ex.evaluations,
    }


#: the column sets of `--sweep-columns`: the merge's alone, those `emu search --method
#: exhaustive` computes (its table's five besides), and every column (`emu sweep`)
SWEEP_COLUMNS = {
    "merge": (),
    "search": ("tokens_per_joule", "mfu", "tpot_s", "ttft_s", "usd_per_mtoken"),
    "all": None,
}


def sweep_only(name: str, which: str) -> tuple[float, int]:
    """(wall seconds, configurations) of the sweep of problem `name` with a column set."""
    problem, grid = PROBLEMS[name]
    system, model = load_system(problem.system), load_model(problem.model)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        r = sweep(system, model, problem, d, grid=grid, columns=SWEEP_COLUMNS[which])
        return time.perf_counter() - t, r.evaluations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated problem names")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument(
        "--sweep-columns",
        help="instead: time only the sweep, with each of these column sets "
        f"({', '.join(SWEEP_COLUMNS)}; comma-separated)",
    )
    args = ap.parse_args()
    names = args.only.split(",") if args.only else list(PROBLEMS)
    unknown = [n for n in names if n not in PROBLEMS]
    if unknown:
        ap.error(f"--only: unknown problem {unknown[0]!r}; choose from {', '.join(PROBLEMS)}")
    if args.sweep_columns:
        bad = [w for w in args.sweep_columns.split(",") if w not in SWEEP_COLUMNS]
        if bad:
            ap.error(f"--sweep-columns: unknown set {bad[0]!r}; choose from "
                     f"{', '.join(SWEEP_COLUMNS)}")  # fmt: skip
        for name in names:
            for which in args.sweep_columns.split(","):
                wall, n = sweep_only(name, which)
                print(f"{name:28} sweep, {which:6} columns: {n:,} in {wall:.1f} s "
                      f"({n / wall:.3g}/s)", flush=True)  # fmt: skip
        return
    head = (
        f"{'problem':28} {'objective':22} {'space':>9} {'exhaustive':>11} {'gradient':>11} "
        f"{'ratio':>6} {'evals':>6} {'share':>6} {'wall ex/gr s':>13} ok"
    )
    print(head)
    rows = []
    for name in names:
        r = run(name)
        rows.append(r)
        print(
            f"{r['problem']:28} {r['objective']:22} {r['space']:9d} {r['exhaustive']:11.4g} "
            f"{r['gradient']:11.4g} {r['ratio']:6.3f} {r['gradient_evals']:6d} "
            f"{100 * r['eval_share']:5.1f}% "
            f"{r['exhaustive_wall_s']:6.1f}/{r['gradient_wall_s']:<6.1f} "
            f"{'yes' if r['ok'] else 'NO'}",
            flush=True,
        )
    n_ok = sum(r["ok"] for r in rows)
    print(f"{n_ok}/{len(rows)} problems within 1% of the optimum using <= 5% of the evaluations")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
