"""Speed of emu.program on the reference program (Llama 3 8B, TP8 x DP8 on 64 devices).

    python experiments/program_speed.py [--devices 64] [--batch 10000]

Prints: tracing time (a fresh subprocess: JAX start, flax model, lower, XLA compile for 64
virtual CPU devices), op-table build time, the cost of one system (the first call of a
system shape compiles; later systems of the same shape, e.g. any 2-tier catalog system or a
changed bandwidth, reuse it), a vmapped batch of systems in one compiled call, and jax.grad.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp

import emu
from emu.cli import positive_int
from emu.program import Program, trace_program


def timed(f, *args):
    t0 = time.perf_counter()
    out = f(*args)
    jax.block_until_ready(out)
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=positive_int, default=64)
    ap.add_argument(
        "--batch", type=positive_int, default=10_000, help="systems in the vmapped call"
    )
    args = ap.parse_args()
    if args.devices % 8:
        ap.error(f"--devices must be a multiple of 8, the program's TP (got {args.devices})")
    kwargs = {"size": "8b", "seq_len": 4096, "batch": args.devices // 8, "tp": 8}
    t0 = time.perf_counter()
    prog = trace_program("emu/examples/llama.py:train", devices=args.devices, kwargs=kwargs)
    trace_s = time.perf_counter() - t0
    _, table_s = timed(lambda: Program(prog.traced))
    print(f"trace ({args.devices} devices, subprocess, cold): {trace_s:.1f} s")
    print(
        f"op table ({len(prog.table.ops)} rows from {len(prog.traced.hlo) / 1e3:.0f} kB HLO): "
        f"{table_s * 1e3:.0f} ms"
    )

    tokens = float(kwargs["batch"] * kwargs["seq_len"])
    fn = prog.cost_fn(tokens_per_step=tokens)
    gb, b200, cm = (emu.load_system(n) for n in ("gb200_nvl72", "dgx_b200", "cloudmatrix384"))
    step = lambda s: fn(s).step_time_s  # noqa: E731
    _, first = timed(step, gb)
    _, again = timed(step, gb)
    _, other = timed(step, b200)
    _, cm_first = timed(step, cm)
    _, cm_again = timed(step, dataclasses.replace(cm, n_chips=cm.n_chips * 2))
    print(
        f"cost, first 2-tier system (compiles): {first:.2f} s; same system again: "
        f"{again * 1e3:.2f} ms; another 2-tier system (dgx_b200): {other * 1e3:.2f} ms"
    )
    print(
        f"cost, first 3-tier system (cloudmatrix384, compiles): {cm_first:.2f} s; "
        f"changed cloudmatrix384: {cm_again * 1e3:.2f} ms"
    )
    _, eager = timed(lambda: prog.cost(gb, tokens_per_step=tokens).step_time_s)
    _, eager2 = timed(lambda: prog.cost(gb, tokens_per_step=tokens).step_time_s)
    print(f"cost, eager (no jit): first {eager:.2f} s, then {eager2 * 1e3:.1f} ms")

    n = args.batch
    batch = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), gb)
    up = batch.tiers[0]
    bw = up.bytes_per_s * jnp.linspace(0.25, 4.0, n, dtype=jnp.float32)
    batch = dataclasses.replace(
        batch, tiers=(dataclasses.replace(up, bytes_per_s=bw), *batch.tiers[1:])
    )
    out, v_first = timed(lambda: prog.batch_cost(batch, tokens_per_step=tokens).step_time_s)
    out, v_again = timed(lambda: prog.batch_cost(batch, tokens_per_step=tokens).step_time_s)
    print(
        f"vmap over {n} systems, one compiled call: first {v_first:.2f} s (compiles), then "
        f"{v_again * 1e3:.1f} ms ({v_again / n * 1e6:.2f} us per system); step time "
        f"{float(out[0]) * 1e3:.1f} ms at 1/4 of NVLink's bandwidth, "
        f"{float(out[-1]) * 1e3:.1f} ms at 4x"
    )

    grad = jax.jit(jax.grad(lambda s: prog.cost(s, tokens_per_step=tokens).tokens_per_joule))
    g, g_first = timed(grad, gb)
    _, g_again = timed(grad, gb)
    print(
        f"jax.grad of tokens/J: first {g_first:.1f} s (compiles), then {g_again * 1e3:.1f} ms; "
        f"d(tokens/J)/d(log NVLink bytes/s) = "
        f"{float(g.tiers[0].bytes_per_s * gb.tiers[0].bytes_per_s):.3f}"
    )


if __name__ == "__main__":
    main()
