"""Benchmark: the first answer a researcher waits for, emu against Calculon, side by side.

    python experiments/bench_first_answer.py [--rounds 5] [--calculon DIR] [--python PY]

Each measurement is one fresh process (wall time, `time.perf_counter` around
`subprocess.run`), and the cases run in interleaved rounds, so that a busy machine slows
every tool alike. Cases:

- `run-1024`: `emu run --system dgx_a100 --model gpt3_175b --chips 1024` (the plan rule);
- `run-3072`: `emu run` on Calculon's example configuration (GPT-3 175B, 3,072 A100, TP 4,
  PP 64, DP 12, micro-batch 4, batch 3072, full recomputation, fp16, sequence 2048);
- `compare`: `emu compare` (the README's first command: two systems, Llama 3 70B);
- `calculon`: `calculon llm models/gpt3-175B.json examples/3072_t4_p64_d12_mbs4_full.json
  systems/a100_80g.json out.json` (the same configuration as `run-3072`);
- floors: `python -c "import numpy"`, `python -c "import jax.numpy"` and `emu --version`
  (what any emu process pays before its first line of work: Python, NumPy, the parser).

A fresh `emu run` / `emu compare` process evaluates on NumPy (`emu._backend`: nothing is
imported from JAX, nothing compiled). For reference the JAX paths run too
(`EMU_BACKEND=jax`): `jax-cold` (an empty cache folder: `XDG_CACHE_HOME` fresh per run, no
executable on disk, so the configuration is evaluated eagerly), `jax-warm` (executables
stored by `emu.fast.aot` in a prepared cache folder) and the path before those
(`EMU_AOT=off`: `jax.jit` with JAX's persistent compilation cache) cold and warm. `cold`
and `warm` are the NumPy process with a fresh and a prepared cache folder (it reads none).
Reports the median and the minimum per case and its ratio to Calculon's median.

Calculon is not part of emu: fetch it into a scratch folder and give its folder
(`--calculon`, or $CALCULON; default /tmp/calc/calculon) and a Python with its
dependencies (`--python`, default <folder>/../venv/bin/python, else this Python):

    git clone https://github.com/calculon-ai/calculon /tmp/calc/calculon
    python3 -m venv /tmp/calc/venv && /tmp/calc/venv/bin/pip install numpy pandas psutil
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from emu.cli import positive_int

EMU = [sys.executable, "-m", "emu"]
CASES = {
    "run-1024": ["run", "--system", "dgx_a100", "--model", "gpt3_175b", "--chips", "1024"],
    "run-3072": [
        "run", "--system", "dgx_a100", "--model", "gpt3_175b", "--chips", "3072", "--tp", "4",
        "--pp", "64", "--dp", "12", "--microbatch", "4", "--global-batch", "3072",
        "--recompute", "full", "--seq-len", "2048", "--precision", "fp16", "--no-sp",
    ],
    "compare": ["compare"],
}  # fmt: skip
FLOORS = {
    "import numpy": [sys.executable, "-c", "import numpy"],
    "import jax.numpy": [sys.executable, "-c", "import jax.numpy"],
    "emu --version": [sys.executable, "-m", "emu", "--version"],
}


def _timed(cmd, env=None, cwd=None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)  # fmt: skip
    return time.perf_counter() - t


def _calculon(args) -> tuple[list[str], Path] | None:
    root = Path(args.calculon or os.environ.get("CALCULON") or "/tmp/calc/calculon")
    if not (root / "bin" / "calculon").exists():
        return None
    py = args.python or str(root.parent / "venv" / "bin" / "python")
    py = py if Path(py).exists() else sys.executable
    out = Path(tempfile.mkdtemp()) / "calculon.json"
    example = "examples/3072_t4_p64_d12_mbs4_full.json"
    cmd = [py, "./bin/calculon", "llm", "models/gpt3-175B.json", example,
           "systems/a100_80g.json", str(out)]  # fmt: skip
    return cmd, root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=positive_int, default=5)
    ap.add_argument("--calculon", help="Calculon's folder (default $CALCULON, /tmp/calc/calculon)")
    ap.add_argument("--python", help="a Python with Calculon's dependencies")
    ap.add_argument("--cases", default="run-1024,run-3072,compare")
    ap.add_argument("--no-old", action="store_true", help="skip the EMU_AOT=off reference")
    args = ap.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = [c for c in cases if c not in CASES]
    if unknown or not cases:
        what = f"unknown case {unknown[0]!r}" if unknown else "no case given"
        ap.error(f"--cases: {what}; choose from {', '.join(CASES)}")
    calc = _calculon(args)
    if calc is None:
        print(__doc__.split("Calculon is not part of emu:")[1].strip())
        print("\n(Calculon not found: emu's figures only.)\n")
    modes = ["cold", "warm", "jax-cold", "jax-warm"]
    modes += [] if args.no_old else ["old-cold", "old-warm"]
    scratch = Path(tempfile.mkdtemp(prefix="emu-first-answer-"))
    warm = {m: scratch / m for m in ("warm", "jax-warm", "old-warm")}
    skip = ("EMU_AOT", "EMU_NO_AOT", "EMU_BACKEND")
    base = {k: v for k, v in os.environ.items() if k not in skip}

    def env(mode: str, tag: str) -> dict:
        """A cold run gets a cache folder of its own (per case and round)."""
        e = dict(base, PYTHONUNBUFFERED="1")
        if mode.startswith(("jax", "old")):
            e["EMU_BACKEND"] = "jax"
        if mode.startswith("old"):
            e["EMU_AOT"] = "off"
        e["XDG_CACHE_HOME"] = str(warm[mode] if mode in warm else scratch / f"{mode}-{tag}")
        return e

    # prepare the warm caches: executables (EMU_AOT=sync) and JAX's persistent cache
    for case in cases:
        _timed(EMU + CASES[case], env=env("warm", ""))
        _timed(EMU + CASES[case], env=dict(env("jax-warm", ""), EMU_AOT="sync"))
        if not args.no_old:
            _timed(EMU + CASES[case], env=env("old-warm", ""))
    times: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for name, cmd in FLOORS.items():
            times.setdefault(name, []).append(_timed(cmd))
        if calc is not None:
            e = dict(os.environ, PYTHONPATH=str(calc[1]))  # Calculon runs from its checkout
            times.setdefault("calculon", []).append(_timed(calc[0], env=e, cwd=calc[1]))
        for case in cases:
            for mode in modes:
                t = _timed(EMU + CASES[case], env=env(mode, f"{case}-{r}"))
                times.setdefault(f"emu {case} {mode}", []).append(t)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    ref = statistics.median(times["calculon"]) if "calculon" in times else None
    print(f"{args.rounds} interleaved rounds, fresh processes, wall seconds")
    print(f"{'case':28} {'median_s':>9} {'min_s':>7} {'x Calculon':>11}")
    for name, ts in times.items():
        med = statistics.median(ts)
        ratio = f"{med / ref:10.2f}x" if ref else f"{'-':>11}"
        print(f"{name:28} {med:9.2f} {min(ts):7.2f} {ratio}")


if __name__ == "__main__":
    main()
