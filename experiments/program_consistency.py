"""The flax reference program (emu/examples/llama.py) traced on 8 and 64 virtual devices and
costed by emu.program, against emu.evaluate for the same model and plan.

    python experiments/program_consistency.py            # Llama 3 8B, TP8 x DP1 and TP8 x DP8
    python experiments/program_consistency.py --small    # the test's model: 16 layers of
                                                         # d_model 2048, TP4 x DP2 on 8 devices

The plan is the program's: tp x dp, one micro-batch of batch/dp sequences per DP rank,
sequence parallelism, ZeRO 0 (weights and Adam state replicated over 'data'), bf16 gradients
(the program reduces the gradients of its bf16 weights: grad_bytes = 2), selective recompute
(nothing beyond flash attention's own). Targets: FLOPs within 2%, bytes per collective kind
within 10%, step time within 15%.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import emu
from emu.examples import llama
from emu.program import trace_program
from emu.program.compare import compare

#: the model of tests/test_program.py: Llama widths, few layers (tracing time does not depend
#: on the widths; 16 layers keep the embedding's and head's own collectives at 2 of 64)
SMALL = dict(
    n_layers=16, d_model=2048, n_heads=16, n_kv_heads=8, d_ff=8192, vocab=32000, seq_len=2048
)


def load_model(conf: llama.Config):
    """The reference program's model through emu's catalog loader (a TOML file)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reference_llama.toml"
        path.write_text(llama.emu_model_toml(conf))
        return emu.load_model(path)


def run(cfg: dict, tp: int, dp: int, systems: list[str]) -> list[dict]:
    size = "tiny" if "d_model" in cfg else "8b"
    kwargs = {"size": size, "tp": tp, **{k: v for k, v in cfg.items()}}
    t0 = time.perf_counter()
    prog = trace_program("emu/examples/llama.py:train", devices=tp * dp, kwargs=kwargs)
    trace_s = time.perf_counter() - t0
    conf = llama._config(size, {k: v for k, v in cfg.items()})
    model = load_model(conf)
    plan = emu.make_plan(
        tp=tp,
        dp=dp,
        microbatch=conf.batch // dp,
        global_batch=conf.batch,
        seq_len=conf.seq_len,
        zero=0,
        grad_bytes=2,
        sp=conf.sp,
    )
    rows = []
    for name in systems:
        r = compare(prog, emu.load_system(name), model, plan)
        r["trace_s"] = trace_s
        r["config"] = f"TP{tp} x DP{dp}"
        rows.append(r)
    return rows


def run_decode(tp: int, batch: int, context: int, systems: list[str]) -> list[str]:
    """The decode step against emu.evaluate's decode phase (step time only)."""
    kwargs = {"size": "8b", "tp": tp, "batch": batch, "context": context}
    prog = trace_program("emu/examples/llama.py:decode", devices=tp, kwargs=kwargs)
    model = load_model(llama._config("8b", {"batch": batch, "context": context}))
    plan = emu.make_plan(
        tp=tp, dp=1, microbatch=batch, global_batch=batch, phase="decode", context=context
    )
    out = []
    for name in systems:
        system = emu.load_system(name)
        got = prog.estimate(system, tokens_per_step=batch)[0].step_time_s
        want = float(emu.evaluate(system, model, plan).step_time_s)
        out.append(
            f"decode TP{tp} batch {batch} context {context} on {name}: program "
            f"{got * 1e3:.2f} ms, emu {want * 1e3:.2f} ms ({100 * (got / want - 1):+.1f}%)"
        )
    return out


def show(rows: list[dict]) -> None:
    def pct(e):
        return "-" if e is None else f"{100 * e:+.1f}%"

    print(
        f"{'config':12s} {'system':15s} {'FLOPs/dev':>10s} {'err':>6s}  "
        f"{'all-gather':>10s} {'err':>6s}  {'red-scat':>9s} {'err':>6s}  "
        f"{'all-reduce':>10s} {'err':>6s}  {'step prog':>9s} {'step emu':>9s} {'err':>6s}  trace"
    )
    for r in rows:
        b = r["bytes"]
        print(
            f"{r['config']:12s} {r['system']:15s} {r['flops'][0]:10.3e} {pct(r['flops'][2]):>6s}  "
            f"{b['all-gather'][0]:10.3e} {pct(b['all-gather'][2]):>6s}  "
            f"{b['reduce-scatter'][0]:9.3e} {pct(b['reduce-scatter'][2]):>6s}  "
            f"{b['all-reduce'][0]:10.3e} {pct(b['all-reduce'][2]):>6s}  "
            f"{1e3 * r['step_time_s'][0]:7.2f}ms {1e3 * r['step_time_s'][1]:7.2f}ms "
            f"{pct(r['step_time_s'][2]):>6s}  {r['trace_s']:.1f}s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="the test's small model on 8 devices")
    ap.add_argument("--system", action="append", help="systems (default gb200_nvl72, cm384)")
    ap.add_argument("--seq-len", type=int, default=4096)
    args = ap.parse_args()
    systems = args.system or ["gb200_nvl72", "cloudmatrix384"]
    rows = []
    if args.small:
        rows += run({**SMALL, "batch": 4}, 4, 2, systems)
    else:
        rows += run({"seq_len": args.seq_len, "batch": 1}, 8, 1, systems)
        rows += run({"seq_len": args.seq_len, "batch": 8}, 8, 8, systems)
    show(rows)
    if not args.small:
        print("\n".join(run_decode(8, 8, args.seq_len, systems)))


if __name__ == "__main__":
    main()
