"""Where one evaluation's ~20 us go: the single-configuration program of `emu.fast.Evaluator`
(GPT-3 175B on 1,024 A100, the full result) beside programs that isolate each cost, all on
emu's synchronous CPU client, timed interleaved in this one process.

    python experiments/one_eval_anatomy.py            # ~1 min on 2 cores
    python experiments/one_eval_anatomy.py --rounds 9

Rows (median microseconds per call over the rounds, each round the median of `--calls`):
- `Evaluator(x)`: what a caller gets (the packed call, a NumPy vector out);
- `execute`: the compiled program alone, its output wrapped as a JAX array;
- `execute_sharded`: the same without wrapping the output (nothing can read it then: the
  difference is the cost of building the array);
- `one copy`: a program that copies two inputs out, the floor of a call through PjRt;
- `200 chained fusions`: 200 exponentials each used twice, so each is a fusion of its own;
- `stack output`: the program as it was before session 23 (its outputs by `jnp.stack`);
- `reciprocal safe_div`: every `emu.numerics.safe_div` as num * (1 / den), which XLA may
  duplicate into its consumers (inexact: the largest relative change of any output printed);
- `no fusion pass`: the program compiled with XLA's fusion pass disabled.
with the number of fusions of each compiled program.
"""

from __future__ import annotations

import argparse
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from emu import fast, policy
from emu.catalog import load_model, load_system
from emu.cli import positive_int


def _us(f, calls: int) -> float:
    ts = []
    for _ in range(calls):
        s = time.perf_counter()
        f()
        ts.append(time.perf_counter() - s)
    return float(np.median(ts)) * 1e6


def _fusions(exe) -> int:
    return len(re.findall(r"\bfusion\(", exe.hlo_modules()[0].to_string()))


def _reciprocal_safe_div():
    """Every emu module's safe_div as a product with a reciprocal (restored by the caller)."""

    def safe_div(num, den, default=0.0):
        den = jnp.asarray(den)
        ok = den != 0
        return jnp.where(ok, num * (1.0 / jnp.where(ok, den, jnp.ones_like(den))), default)

    saved = {}
    for name, mod in list(sys.modules.items()):
        if name.startswith("emu") and hasattr(mod, "safe_div"):
            saved[name] = mod.safe_div
            mod.safe_div = safe_div
    return saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=positive_int, default=5)
    ap.add_argument("--calls", type=positive_int, default=1000)
    args = ap.parse_args()
    from jax._src import core
    from jax._src.lib import _jax
    from jax._src.lib import xla_client as xc
    from jax.sharding import SingleDeviceSharding

    system, model = load_system("dgx_a100"), load_model("gpt3_175b")
    plan = policy.auto_plan(system, model, 1024)
    ev = fast.Evaluator(system, model, plan)
    x = ev.device(ev.pack(system, model, plan))
    if not isinstance(ev._one_c, fast._SyncOne):
        raise SystemExit("one_eval_anatomy: this JAX lacks the client API emu's sync path uses")
    client, dev = fast._sync_cpu_client(), ev._one_c._dev
    devices = xc.DeviceList((dev,))

    def compile_text(text, options=None):
        return client.compile_and_load(text, devices, fast._one_options(options))

    def put(a):
        a = np.asarray(a, np.float32)
        shape = core.ShapedArray(a.shape, np.dtype(np.float32))
        return _jax.batched_device_put(shape, SingleDeviceSharding(dev), [a], [dev])

    exe = ev._one_c._exe
    ref = np.asarray(ev(x))
    spec = jax.ShapeDtypeStruct(ev.x0.shape, jnp.float32)

    def stacked(v):
        return jnp.stack(ev._outputs(fast._evaluate(*ev._unpack(v))))

    def chain(v):
        a, b = v[0], v[1]
        for _ in range(200):
            c = jnp.exp(a * 0.001 + b)
            a, b = c * 0.5 + a, c - b
        return jnp.stack([a, b])

    text = jax.jit(ev._flat).lower(spec).as_text()
    programs = {
        "one copy": compile_text(jax.jit(lambda v: v[:2] * 1.0).lower(spec).as_text()),
        "200 chained fusions": compile_text(jax.jit(chain).lower(spec).as_text()),
        "stack output": compile_text(jax.jit(stacked).lower(spec).as_text()),
        "no fusion pass": compile_text(
            text, {**fast.ONE_COMPILE, "xla_disable_hlo_passes": "fusion"}
        ),
    }
    saved = _reciprocal_safe_div()
    try:
        recip_text = jax.jit(lambda v: ev._flat(v)).lower(spec).as_text()
    finally:
        for name, f in saved.items():
            sys.modules[name].safe_div = f
    programs["reciprocal safe_div"] = compile_text(recip_text)
    recip = np.asarray(programs["reciprocal safe_div"].execute([x])[0])
    change = np.max(np.abs(recip - ref) / np.maximum(np.abs(ref), 1e-30))
    same = np.array_equal(np.asarray(programs["stack output"].execute([x])[0]), ref, equal_nan=True)

    xs = put(np.ones(ev.x0.shape, np.float32))
    calls = {
        "Evaluator(x)": (lambda: ev(x), _fusions(exe)),
        "execute": (lambda: exe.execute([x]), _fusions(exe)),
        "execute_sharded (output not wrapped)": (lambda: exe.execute_sharded([x]), _fusions(exe)),
    }
    for name, p in programs.items():
        arg = xs if name in ("one copy", "200 chained fusions") else x
        calls[name] = ((lambda p=p, arg=arg: p.execute([arg])), _fusions(p))
    times = {k: [] for k in calls}
    for _ in range(args.rounds):
        for k, (f, _n) in calls.items():
            times[k].append(_us(f, args.calls))
    print(f"jax {jax.__version__}; GPT-3 175B on 1,024 A100, full result; us per call, median "
          f"of {args.rounds} interleaved rounds of {args.calls} calls")  # fmt: skip
    print(f"{'program':40} {'us':>8} {'fusions':>8}")
    for k, (_f, n) in calls.items():
        print(f"{k:40} {np.median(times[k]):8.2f} {n:8d}")
    print(f"stack output gives the same vector bit for bit: {same}")
    print(f"reciprocal safe_div: largest relative change of an output {change:.2e}")


if __name__ == "__main__":
    main()
