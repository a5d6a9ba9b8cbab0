"""Benchmark: evaluations per second of the emulator (jit + vmap on CPU).

    python experiments/bench_eval.py [--max 1e6]
        [--sections one,batch,options,train,grad,scale] [--rounds 3]

`one` and `batch` come first (issue 17's figures, printed side by side in one run):
0. `one`: one configuration (GPT-3 175B on 1,024 A100, the plan rule's plan): one call of
   `jax.jit(emu.objective.evaluate)` on the three pytrees, one call of the packed
   `emu.fast.Evaluator` (one flat float32 vector in, the full RunResult as one vector out;
   under asynchronous dispatch on its own synchronous CPU client, also timed on JAX's
   default client and with the inputs passed as a NumPy vector),
   and llm-analysis's `train` on a GPT-3 175B configuration (if installed:
   `pip install 'cluster-emu[bench]'`); each round runs one fresh process with JAX's
   default asynchronous CPU dispatch and one with synchronous dispatch
   (`jax_cpu_enable_async_dispatch=False`), interleaved; medians over `--rounds`.
1. `batch`: the packed batch program (`emu.fast.Evaluator.batch`, system and model folded
   in as constants, the plan knobs per row) over every valid Llama 3 70B training plan on
   144 GB200 GPUs, with the full result (every RunResult leaf), the four columns a sweep's
   merge needs (three computed, tokens/J divided on the host as the sweep does), and the
   step time alone (the full result also into one array reused call after call,
   `batch(out=...)`, which skips the kernel's zeroing of a new array's pages): configurations
   per second (best of 3 calls on 2^20 rows, each call a new array unless reused), FLOPs per
   configuration from XLA's `compiled.cost_analysis()`, the cores' measured float32 FMA
   rate (a 2048^2 matmul, jax and numpy, all cores) and the fraction of that arithmetic
   limit reached.
2. `options`: emu's XLA compile options (`emu.fast.ONE_COMPILE` for one configuration,
   `emu.fast.BATCH_COMPILE` for batches) against XLA's defaults, each program compiled both
   ways in one process and timed interleaved, so the machine's drift between processes
   cancels: times, their ratio and whether the values are identical.

Then, on GB200 NVL72 clusters:
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
import json
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from emu import fast, policy
from emu.catalog import load_model, load_system
from emu.cli import positive_int
from emu.objective import evaluate
from emu.parallelism import make_plan
from emu.search import COLUMNS, KNOBS, Problem, Space, plan_of
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


def _median_us(fn, n: int = 200, q: float = 50) -> float:
    fn()
    times = []
    for _ in range(n):
        s = time.perf_counter()
        fn()
        times.append(time.perf_counter() - s)
    return 1e6 * float(np.percentile(times, q))


def _llm_analysis_us() -> float | None:
    """One llm-analysis `train` call on GPT-3 175B (TP 8, PP 8, DP 16), median of 20."""
    try:
        import logging

        from llm_analysis.analysis import train
    except ImportError:
        return None
    logging.disable(logging.WARNING)
    kw = dict(model_name="megatron-lm-175b", gpu_name="a100-sxm-80gb",
              dtype_name="w16a16e16", log_level="ERROR", batch_size_per_gpu=1,
              global_batch_size=1536, seq_len=2048, activation_recomputation=2, tp_size=8,
              pp_size=8, dp_size=16, total_num_gpus=1024, flash_attn=False)  # fmt: skip
    return _median_us(lambda: train(**kw), n=20)


def _one_child() -> None:
    """One process's figures for `section_one` (its dispatch mode set by the parent), as
    one JSON line: jit on pytrees, the packed Evaluator (median and 10th percentile) and
    its RunResult, in microseconds."""
    system, model = load_system("dgx_a100"), load_model("gpt3_175b")
    plan = policy.auto_plan(system, model, 1024)
    jitted = jax.jit(evaluate)
    ev = fast.Evaluator(system, model, plan)
    x = ev.device(ev.pack(system, model, plan))
    fast.SYNC_ONE = False  # the same program on JAX's own client, for comparison
    ev_default = fast.Evaluator(system, model, plan)
    xd = ev_default.device(ev_default.pack(system, model, plan))
    fast.SYNC_ONE = True
    out = {
        "jit": _median_us(lambda: jax.block_until_ready(jitted(system, model, plan))),
        "packed": _median_us(lambda: np.asarray(ev(x)), n=1000),
        "packed_p10": _median_us(lambda: np.asarray(ev(x)), n=1000, q=10),
        "packed_default": _median_us(lambda: np.asarray(ev_default(xd)), n=1000),
        "packed_np": _median_us(lambda: np.asarray(ev(ev.x0)), n=1000),
        "result": _median_us(lambda: ev.result(x)),
    }
    print(json.dumps(out))


def section_one(rounds: int) -> None:
    print("\n0. one configuration: GPT-3 175B on 1,024 A100 (plan rule); each round one fresh "
          "process per CPU dispatch mode, interleaved; medians over the rounds")  # fmt: skip
    runs: dict[str, list[dict]] = {"async": [], "sync": []}
    for _ in range(rounds):
        for mode in runs:
            cmd = [sys.executable, __file__, "--one-child"] + (["--sync"] if mode == "sync" else [])
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"bench_eval: the {mode} child failed:\n{done.stderr[-2000:]}")
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))

    def med(mode, key):
        return float(np.median([r[key] for r in runs[mode]]))

    t_la = _llm_analysis_us()
    print(f"{'path (us per call)':58} {'async (default)':>15} {'sync':>9}")
    for key, label in (
        ("jit", "jax.jit(evaluate)(system, model, plan), full RunResult"),
        ("packed", "emu.fast.Evaluator: packed in, full result vector out"),
        ("packed_p10", "  the same, 10th percentile of 1000 calls"),
        ("packed_default", "  the same on JAX's default client (fast.SYNC_ONE = False)"),
        ("packed_np", "  the same, inputs passed as a NumPy vector"),
        ("result", "emu.fast.Evaluator.result: the same, as a RunResult"),
    ):
        print(f"{label:58} {med('async', key):15.1f} {med('sync', key):9.1f}")
    print("(sync: jax.config.update('jax_cpu_enable_async_dispatch', False) before JAX's "
          "first computation)")  # fmt: skip
    if t_la is not None:
        print(f"{'llm-analysis train() (GPT-3 175B, one call)':58} {t_la:15.1f}")
        print(f"ratios: packed {t_la / med('async', 'packed'):.0f}x (async) and "
              f"{t_la / med('sync', 'packed'):.0f}x (sync) faster than llm-analysis")  # fmt: skip
    else:
        print("(llm-analysis not installed: pip install 'cluster-emu[bench]')")


def _interleaved(calls: dict, rounds: int, reps: int) -> dict:
    """Median seconds per call of each of `calls` (name -> function), the calls interleaved
    over `rounds` rounds of `reps` calls each, and each one's median ratio to the first."""
    per = {k: [] for k in calls}
    for _ in range(rounds):
        for k, f in calls.items():
            s = time.perf_counter()
            for _ in range(reps):
                f()
            per[k].append((time.perf_counter() - s) / reps)
    first = np.asarray(per[next(iter(calls))])
    return {k: (float(np.median(v)), float(np.median(np.asarray(v) / first)))
            for k, v in per.items()}  # fmt: skip


def section_options() -> None:
    """emu's XLA options against XLA's defaults, each program compiled both ways in this one
    process and timed interleaved (process-to-process variation cancels)."""
    print("\nXLA options: emu.fast.ONE_COMPILE / BATCH_COMPILE against XLA's defaults, in one "
          "process, interleaved")  # fmt: skip
    system, model = load_system("dgx_a100"), load_model("gpt3_175b")
    plan = policy.auto_plan(system, model, 1024)
    ev = fast.Evaluator(system, model, plan)
    x = jnp.asarray(ev.pack(system, model, plan))
    low = ev._one.lower(x)
    base, opt = low.compile(), fast.compile_with(low, fast.ONE_COMPILE)
    same = np.array_equal(np.asarray(base(x)), np.asarray(opt(x)))
    r = _interleaved({"default": lambda: np.asarray(base(x)), "emu": lambda: np.asarray(opt(x))},
                     rounds=60, reps=100)  # fmt: skip
    print(f"one configuration (GPT-3 175B, 1,024 A100): XLA default {1e6 * r['default'][0]:.1f} "
          f"us, ONE_COMPILE {1e6 * r['emu'][0]:.1f} us, time ratio {r['emu'][1]:.3f} "
          f"(60 rounds of 100 calls; identical values: {same})")  # fmt: skip
    gb, gm = load_system("gb200_nvl72"), load_model("llama3_70b")
    problem = Problem("gb200_nvl72", "llama3_70b", 144, seq_len=8192)
    space = Space(gb, gm, problem, None)
    rows = np.column_stack([space.plans, space.gb]).astype(np.float32)
    bplan = plan_of(problem, space.describe([0], np.zeros((1, len(COLUMNS))))[0])
    vary = [f"plan.{name}" for name in KNOBS] + ["plan.global_batch"]
    rows = rows[np.arange(fast.BLOCK) % len(rows)]
    for label, outputs in (("step time only", ("step_time_s",)), ("full result", None)):
        e = fast.Evaluator(gb, gm, bplan, outputs=outputs, vary=vary)
        v = jnp.asarray(rows.T if e.columns else rows)  # see Evaluator.batch_fn
        spec = jax.ShapeDtypeStruct(v.shape, jnp.float32)
        lows = [f.lower(spec) for f in e.batch_fn()]
        base = [lo.compile() for lo in lows]
        opt = [fast.compile_with(lo, fast.BATCH_COMPILE) for lo in lows]
        same = all(np.array_equal(np.asarray(b(v)[0]), np.asarray(o(v)[0]))
                   for b, o in zip(base, opt, strict=True))  # fmt: skip
        r = _interleaved({"default": lambda b=base, v=v: _run_blocks(b, v),
                          "emu": lambda o=opt, v=v: _run_blocks(o, v)},
                         rounds=12, reps=10)  # fmt: skip
        print(f"batch, {label}: XLA default {fast.BLOCK / r['default'][0]:.3g}/s, "
              f"BATCH_COMPILE {fast.BLOCK / r['emu'][0]:.3g}/s, speed ratio "
              f"{1 / r['emu'][1]:.3f} (12 rounds of 10 blocks; identical values: "
              f"{same})")  # fmt: skip


def _run_blocks(compiled, v) -> None:
    for c in compiled:
        jax.block_until_ready(c(v))


def fma_rate() -> tuple[float, float]:
    """float32 FLOP/s of a 2048^2 matmul on every core: (jax, numpy)."""
    a = np.random.default_rng(0).random((2048, 2048), np.float32)
    aj = jnp.asarray(a)
    mm = jax.jit(lambda x: x @ x)
    t_j = _median_us(lambda: jax.block_until_ready(mm(aj)), n=10) * 1e-6
    t_n = _median_us(lambda: a @ a, n=10) * 1e-6
    flops = 2 * 2048**3
    return flops / t_j, flops / t_n


def section_batch() -> None:
    print("\n1. batches (emu.fast.Evaluator.batch): every Llama 3 70B training plan on 144 "
          "GB200, system and model folded in")  # fmt: skip
    system, model = load_system("gb200_nvl72"), load_model("llama3_70b")
    problem = Problem("gb200_nvl72", "llama3_70b", 144, seq_len=8192)
    space = Space(system, model, problem, None)
    rows = np.column_stack([space.plans, space.gb]).astype(np.float32)
    base = plan_of(problem, space.describe([0], np.zeros((1, len(COLUMNS))))[0])
    n = 1 << 20
    rows = rows[np.arange(n) % len(rows)]
    vary = [f"plan.{name}" for name in KNOBS] + ["plan.global_batch"]
    rate_j, rate_n = fma_rate()
    peak = max(rate_j, rate_n)
    print(f"FMA rate of the cores (float32 matmul): jax {rate_j:.3g} FLOP/s, numpy "
          f"{rate_n:.3g} FLOP/s; the limit below uses {peak:.3g}")  # fmt: skip
    print(f"{'outputs':24} {'compile_s':>9} {'configs/s':>10} {'FLOPs/cfg':>9} "
          f"{'B moved/cfg':>11} {'limit/s':>9} {'of limit':>8}")  # fmt: skip
    merge = ("feasible", "tokens_per_s", "power_w")  # + tokens/J on the host (the sweep's)
    for label, outputs in (("full result (all)", None), ("sweep merge (3 + host)", merge),
                           ("step time only", ("step_time_s",))):  # fmt: skip
        ev = fast.Evaluator(system, model, base, outputs=outputs, vary=vary)
        t0 = time.perf_counter()
        compiled = ev.compile_batch()  # one program per output up to fast.SPLIT outputs
        compile_s = time.perf_counter() - t0
        flops = moved = 0.0
        for c in compiled:
            ca = c.cost_analysis()
            ca = ca[0] if isinstance(ca, list) else ca
            flops += float(ca.get("flops", 0.0)) / ev.block
            moved += float(ca.get("bytes accessed", 0.0)) / ev.block
        run = ev.batch if outputs != merge else lambda r, e=ev: _with_tokens_per_joule(e, r)
        runs = [(label, run)]
        if outputs is None:  # the same into one array reused call after call (`out=`)
            buf = np.empty((len(ev.outputs), n), np.float32).T
            runs.append(("  into a reused array",
                         lambda r, e=ev, b=buf: e.batch(r, out=b[: len(r)])))  # fmt: skip
        for name, fn in runs:
            fn(rows[: 2 * ev.block])  # warm
            t = min(_timed_once(lambda f=fn: f(rows)) for _ in range(3))
            per_s = n / t
            limit = peak / max(flops, 1.0)
            print(f"{name:24} {compile_s:9.2f} {per_s:10.3g} {flops:9.0f} {moved:11.0f} "
                  f"{limit:9.3g} {100 * per_s / limit:7.1f}%", flush=True)  # fmt: skip


def _with_tokens_per_joule(ev, rows) -> np.ndarray:
    """The merge columns as a sweep gets them: feasible, tokens/s and watts computed,
    tokens/J divided on the host (the sweep's host columns: float32, 0 where no watts)."""
    out = ev.batch(rows)
    tps, pw = out[:, 1], out[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        tpj = np.where(pw != 0, tps / np.where(pw != 0, pw, 1), 0).astype(np.float32)
    return np.column_stack([out, tpj])


def _timed_once(fn) -> float:
    s = time.perf_counter()
    fn()
    return time.perf_counter() - s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max", type=positive_int, default=10**6, help="largest batch (default 1e6)")
    ap.add_argument("--sections", default="one,batch,options,train,grad,scale")
    ap.add_argument(
        "--rounds", type=positive_int, default=3, help="`one`: rounds of fresh processes"
    )
    ap.add_argument("--one-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sync", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_child:
        if args.sync:
            jax.config.update("jax_cpu_enable_async_dispatch", False)
        _one_child()
        return
    sections = set(args.sections.split(","))
    known = {"one", "batch", "options", "train", "grad", "scale"}
    if sections - known:
        ap.error(f"unknown section(s) {', '.join(sorted(sections - known))}; "
                 f"choose from {','.join(sorted(known))}.")  # fmt: skip
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {jax.device_count()} device(s)")
    if "one" in sections:
        section_one(args.rounds)
    if "batch" in sections:
        section_batch()
    if "options" in sections:
        section_options()
    if not sections & {"train", "grad", "scale"}:
        return
    system = load_system("gb200_nvl72")
    system = set_path(system, "tiers.scale_out.domain_chips", 1e6)  # room for 1e6 chips
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
