"""Benchmark: evaluations per second of the full training model (jit + vmap on CPU).

For batches of 1e3..1e6 random plans of Llama 3 70B on GB200 NVL72 clusters, reports compile
time, the steady-state wall time of one vmapped call, evaluations per second and the peak
resident memory of the process. Run:  python experiments/bench_eval.py [--max 1e6]
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from emu.config import load_model, load_system
from emu.objective import evaluate
from emu.parallelism import make_plan
from emu.struct import replace


def random_plans(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tp = 2.0 ** rng.integers(0, 4, n)
    pp = 2.0 ** rng.integers(0, 5, n)
    dp = 2.0 ** rng.integers(0, 10, n)
    mb = 2.0 ** rng.integers(0, 3, n)
    base = make_plan(tp=1, pp=1, dp=1, global_batch=1, seq_len=8192)
    # every leaf gets the batch axis; the knobs below vary, the rest keep their defaults
    base = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,)), base)
    f = lambda x: jnp.asarray(x, jnp.float32)
    return replace(
        base,
        tp=f(tp),
        pp=f(pp),
        dp=f(dp),
        microbatch=f(mb),
        global_batch=f(dp * mb * 16),
        zero=f(rng.integers(0, 4, n)),
        recompute=f(rng.integers(0, 3, n)),
        sp=f(rng.integers(0, 2, n)),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max", type=float, default=1e6, help="largest batch (default 1e6)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    system, model = load_system("gb200_nvl72"), load_model("llama3_70b")
    fn = jax.jit(jax.vmap(lambda p: evaluate(system, model, p), in_axes=0))
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    print(f"{'batch':>9} {'compile_s':>10} {'call_s':>9} {'evals/s':>12} {'peak_rss_MB':>12}")
    n = 1000
    while n <= args.max:
        plans = random_plans(n)
        t0 = time.perf_counter()
        compiled = fn.lower(plans).compile()
        t1 = time.perf_counter()
        times = []
        for _ in range(args.repeats):
            s = time.perf_counter()
            jax.block_until_ready(compiled(plans))
            times.append(time.perf_counter() - s)
        call = min(times)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{n:9d} {t1 - t0:10.2f} {call:9.4f} {n / call:12.3g} {rss:12.0f}")
        n *= 10


if __name__ == "__main__":
    main()
