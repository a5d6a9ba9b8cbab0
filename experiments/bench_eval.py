"""Benchmark: evaluations per second of the emulator (jit + vmap on CPU).

    python experiments/bench_eval.py [--max 1e6]

Three tables, on GB200 NVL72 clusters:
1. The training model (Llama 3 70B, random TP/PP/DP/micro-batch/ZeRO/recompute/SP plans)
   and the decode model (DeepSeek-R1, random TP/EP/batch/context plans): for batches of
   1 to `--max` plans, compile time, the steady wall time of one vmapped call (best of 3),
   evaluations per second and peak RSS.
2. Gradient evaluations per second: d tokens/J / d (every system leaf) for batches of
   plans (jax.vmap of jax.grad), with its compile time.
3. The time of one configuration as the cluster grows from 8 to 1e6 chips (data
   parallelism over the scale-out tier): it must not grow with the chip count.
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from emu.catalog import load_model, load_system
from emu.objective import evaluate
from emu.parallelism import make_plan
from emu.struct import replace, set_path


def _f32(x):
    return jnp.asarray(x, jnp.float32)


def train_plans(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    dp = 2.0 ** rng.integers(0, 10, n)
    mb = 2.0 ** rng.integers(0, 3, n)
    base = make_plan(tp=1, pp=1, dp=1, global_batch=1, seq_len=8192)
    base = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,)), base)
    return replace(
        base,
        tp=_f32(2.0 ** rng.integers(0, 4, n)),
        pp=_f32(2.0 ** rng.integers(0, 5, n)),
        dp=_f32(dp),
        microbatch=_f32(mb),
        global_batch=_f32(dp * mb * 16),
        zero=_f32(rng.integers(0, 4, n)),
        recompute=_f32(rng.integers(0, 3, n)),
        sp=_f32(rng.integers(0, 2, n)),
    )


def decode_plans(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    dp = 2.0 ** rng.integers(3, 9, n)
    batch = 2.0 ** rng.integers(0, 9, n)
    base = make_plan(tp=1, dp=1, seq_len=4096, phase="decode", precision="fp8", zero=0)
    base = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,)), base)
    return replace(
        base,
        dp=_f32(dp),
        ep=_f32(2.0 ** rng.integers(0, 6, n)),
        microbatch=_f32(batch),
        global_batch=_f32(dp * batch),
        context=_f32(2.0 ** rng.integers(10, 15, n)),
    )


def _timed(fn, *args, repeats=3):
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        s = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - s)
    return compile_s, min(times)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max", type=float, default=1e6, help="largest batch (default 1e6)")
    args = ap.parse_args()
    system = load_system("gb200_nvl72")
    system = set_path(system, "tiers.scale_out.domain_chips", 1e6)  # room for 1e6 chips
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    sizes = [10**k for k in range(int(np.log10(args.max)) + 1)]

    print("\n1. evaluations per second (jit + vmap)")
    print(
        f"{'model':8} {'batch':>9} {'compile_s':>10} {'call_s':>10} {'evals/s':>10} {'RSS_MB':>7}"
    )
    for name, model, plans in (
        ("train", load_model("llama3_70b"), train_plans),
        ("decode", load_model("deepseek_r1"), decode_plans),
    ):
        fn = jax.jit(jax.vmap(lambda p, m=model: evaluate(system, m, p)))
        for n in sizes:
            c, t = _timed(fn, plans(n))
            print(f"{name:8} {n:9d} {c:10.2f} {t:10.5f} {n / t:10.3g} {_rss_mb():7.0f}", flush=True)

    print("\n2. gradient evaluations per second: d tokens/J / d system (every leaf)")
    model = load_model("llama3_70b")
    grad = jax.jit(
        jax.vmap(
            jax.grad(lambda s, p: jnp.log(evaluate(s, model, p).tokens_per_joule)),
            in_axes=(None, 0),
        )
    )
    print(f"{'batch':>9} {'compile_s':>10} {'call_s':>10} {'grads/s':>10} {'RSS_MB':>7}")
    for n in [s for s in sizes if s <= 1e5]:
        c, t = _timed(grad, system, train_plans(n))
        print(f"{n:9d} {c:10.2f} {t:10.5f} {n / t:10.3g} {_rss_mb():7.0f}", flush=True)

    print("\n3. one configuration as the cluster grows (TP 8, PP 4, DP = chips / 32)")
    one = jax.jit(lambda p: evaluate(system, model, p).tokens_per_s)
    print(f"{'chips':>9} {'eval_ms':>9} {'tokens/s per chip':>18}")
    for chips in (8, 64, 512, 4096, 32768, 262144, 1048576):
        tp, pp = min(8, chips), 4 if chips >= 32 else 1
        dp = chips // (tp * pp)
        plan = make_plan(tp=tp, pp=pp, dp=dp, global_batch=dp * 16, seq_len=8192)
        jax.block_until_ready(one(plan))  # compile once (the chip count is a leaf)
        times = []
        for _ in range(20):
            s = time.perf_counter()
            v = jax.block_until_ready(one(plan))
            times.append(time.perf_counter() - s)
        print(f"{chips:9d} {1e3 * float(np.median(times)):9.3f} {float(v) / chips:18.1f}")


if __name__ == "__main__":
    main()
