"""The `emu` command line: list, describe, run, compare, sensitivity, validate.

Every command takes `--json` (machine-readable, SI units, on stdout) and `--set PATH=VALUE`
(repeatable) to override a field by dotted path: system fields as listed by
`emu list --fields SYSTEM` (e.g. chip.hbm_bytes_per_s), model fields as `model.<field>`,
plan fields as `plan.<field>`. Bad input prints one line on stderr and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

__all__ = ["main"]

DEFAULT_COMPARE = ["cloudmatrix384", "gb200_nvl72"]
DEFAULT_MODEL = "llama3_70b"


class CliError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        raise CliError(f"{message} (see `{self.prog} --help`)")


def _workload_args(
    p: argparse.ArgumentParser, *, system: bool = True, chips_list: bool = False
) -> None:
    if system:
        p.add_argument("--system", default="gb200_nvl72", help="catalog name or TOML path")
    p.add_argument("--model", default=DEFAULT_MODEL, help="catalog name or TOML path")
    if chips_list:
        p.add_argument(
            "--chips",
            help="chips used, or comma-separated candidates (the chip count becomes a knob, "
            "e.g. under --power-cap); default: one system unit",
        )
    else:
        p.add_argument("--chips", type=int, help="chips used (default: one system unit)")
    for name, hlp in (
        ("tp", "tensor-parallel degree"),
        ("pp", "pipeline-parallel degree"),
        ("dp", "data-parallel degree"),
        ("cp", "context-parallel degree"),
        ("vpp", "virtual pipeline chunks per stage (interleaved 1F1B)"),
    ):
        p.add_argument(f"--{name}", type=int, help=hlp)
    p.add_argument("--microbatch", type=int, default=1, help="sequences per micro-batch")
    p.add_argument("--global-batch", type=int, help="sequences per step (default: >= 4Mi tokens)")
    p.add_argument("--seq-len", type=int, default=8192, help="tokens per sequence")
    p.add_argument("--recompute", choices=["none", "selective", "full"])
    p.add_argument("--zero", type=int, default=1, choices=[0, 1, 2, 3], help="ZeRO stage")
    p.add_argument("--no-sp", action="store_true", help="disable sequence parallelism")
    p.add_argument("--precision", default="bf16", help="bf16, fp16, fp8, int8 or fp4")
    p.add_argument("--algorithm", default="hierarchical", choices=["hierarchical", "ring"])
    moe = p.add_argument_group("MoE")
    moe.add_argument("--ep", type=int, help="expert-parallel degree")
    moe.add_argument("--etp", type=int, default=1, help="expert tensor-parallel degree")
    moe.add_argument(
        "--moe-imbalance",
        type=float,
        default=1.0,
        help="busiest rank's routed tokens / mean (>= 1)",
    )
    moe.add_argument(
        "--a2a-overlap",
        action="store_true",
        help="two-micro-batch overlap of dispatch/combine with compute",
    )
    inf = p.add_argument_group("inference")
    inf.add_argument("--phase", default="train", choices=["train", "prefill", "decode"])
    inf.add_argument(
        "--batch",
        type=int,
        help="sequences per DP-attention rank (default: the largest meeting the SLO)",
    )
    inf.add_argument("--context", type=int, help="decode: KV-cache length (default --seq-len)")
    inf.add_argument(
        "--tpot-slo",
        type=float,
        default=0.05,
        help="decode: time-per-output-token SLO in seconds (default 0.05)",
    )
    inf.add_argument(
        "--ttft-slo",
        type=float,
        default=2.0,
        help="prefill: time-to-first-token SLO in seconds (default 2.0)",
    )
    inf.add_argument(
        "--mtp-accept",
        type=float,
        default=0.0,
        help="acceptance rate of one MTP draft token (0 = no MTP)",
    )
    inf.add_argument(
        "--cache-hit",
        type=float,
        default=0.0,
        help="prefill: share of prompt tokens served from a prefix cache",
    )
    _common(p)


def _search_args(p: argparse.ArgumentParser) -> None:
    """The flags `emu search` and `emu sweep` share: `emu run`'s workload, then the search."""
    _workload_args(p, chips_list=True)
    p.set_defaults(microbatch=None, zero=None)  # given on the command line = fixed
    g = p.add_argument_group("search")
    g.add_argument(
        "--objective",
        default="tokens_per_joule",
        help="run field to optimise: tokens_per_joule (default), tokens_per_s, "
        "tokens_per_s_per_chip, mfu (maximised); step_time_s, power_w, ttft_s, tpot_s, "
        "energy_per_step_j (minimised)",
    )
    g.add_argument(
        "--free",
        help="comma-separated plan knobs that vary (default: every knob not given on the "
        "command line): tp, pp, cp, ep, microbatch, vpp, zero, recompute, sp",
    )
    g.add_argument("--power-cap", type=float, metavar="W", help="IT power cap, watts")
    g.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="also search a topology knob (domain, scaleup_bw, scaleout_bw, "
        "oversubscription, optics_share) or a system field path over these values "
        "(repeatable: product)",
    )
    g.add_argument("--top", type=int, default=10, help="best configurations listed")
    g.add_argument(
        "--out", metavar="FILE", help="every evaluated configuration as CSV or Parquet (.parquet)"
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field by dotted path (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="emu", description="Differentiable emulator of AI clusters.")
    sub = ap.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("list", help="systems and models in the catalog")
    p.add_argument("--fields", metavar="NAME", help="list the settable fields of a system/model")
    _common(p)

    p = sub.add_parser("describe", help="system totals computed from the parts")
    p.add_argument("system", help="catalog name or TOML path")
    _common(p)

    p = sub.add_parser(
        "run",
        help="emulate one training step",
        description="Emulate one training step. " + _PLAN_RULE,
    )
    _workload_args(p)

    p = sub.add_parser(
        "compare",
        help="several systems on one workload",
        description="Several systems on one workload. " + _PLAN_RULE,
    )
    p.add_argument(
        "--systems",
        default=",".join(DEFAULT_COMPARE),
        help="comma-separated catalog names or TOML paths",
    )
    _workload_args(p, system=False)

    p = sub.add_parser(
        "serve",
        help="disaggregated prefill + decode deployment",
        description="A prefill instance and a decode instance, each with its own chips and "
        "plan (chosen by the serving rule), serving requests of --prompt-len input and "
        "--output-len output tokens. Batches default to the largest meeting the SLOs.",
    )
    p.add_argument("--system", default="cloudmatrix384", help="catalog name or TOML path")
    p.add_argument("--model", default="deepseek_r1", help="catalog name or TOML path")
    p.add_argument("--prefill-chips", type=int, default=96)
    p.add_argument("--decode-chips", type=int, default=160)
    p.add_argument("--prompt-len", type=int, default=4096)
    p.add_argument("--output-len", type=int, default=1024)
    p.add_argument("--prefill-batch", type=int, help="prompts per DP rank per prefill batch")
    p.add_argument("--decode-batch", type=int, help="sequences per DP rank in decode")
    p.add_argument("--tpot-slo", type=float, default=0.05)
    p.add_argument("--ttft-slo", type=float, default=2.0)
    p.add_argument(
        "--precision",
        default=None,
        help="default: the chip's 8-bit format (fp8, else int8), else bf16",
    )
    p.add_argument("--mtp-accept", type=float, default=0.0)
    p.add_argument("--moe-imbalance", type=float, default=1.0)
    p.add_argument("--a2a-overlap", action="store_true")
    _common(p)

    p = sub.add_parser(
        "search",
        help="best plan (and topology) by gradient search, exactly re-evaluated",
        description="Maximise --objective over the parallel plan (and the --grid topology "
        "knobs) by gradient over a relaxed plan, then round to valid plans and polish them "
        "by a discrete local search (emu.search.gradient_search). Knobs given on the "
        "command line (--tp 8) stay fixed; --free lists the knobs that vary. The exhaustive "
        "alternative is `emu sweep` with the same flags.",
    )
    _search_args(p)
    p.add_argument("--starts", type=int, help="random starts (default: by the space size)")
    p.add_argument("--steps", type=int, default=40, help="optimiser steps per start")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser(
        "sweep",
        help="evaluate every valid plan (one compiled, vmapped, resumable sweep)",
        description="Evaluate every valid discrete plan (times the --grid values) of a "
        "problem in chunks with one compilation, sharded over all JAX devices (and over "
        "processes with --coordinator/--num-processes/--process-id or the "
        "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID variables; processes "
        "share the output folder). Chunks stream to OUT.parts/ as they finish; the same "
        "command resumes a killed sweep.",
    )
    _search_args(p)
    p.add_argument("--chunk", type=int, default=1 << 16, help="plans per compiled call")
    p.add_argument("--coordinator", metavar="HOST:PORT")
    p.add_argument("--num-processes", type=int)
    p.add_argument("--process-id", type=int)

    p = sub.add_parser("sensitivity", help="elasticities of tokens/J and tokens/s (jax.grad)")
    _workload_args(p)
    p.add_argument("--top", type=int, default=15, help="rows in the table (all in --json)")

    p = sub.add_parser("validate", help="predict published measurements and report errors")
    p.add_argument("file", nargs="?", help="JSON Lines (default: the shipped measurement set)")
    p.add_argument("--kind", help="only rows of this kind (train, prefill, decode, collective)")
    p.add_argument("--show-skipped", action="store_true", help="list skipped rows in the table")
    p.add_argument("--plot", metavar="FILE", help="write a predicted-vs-measured PNG")
    _common(p)

    p = sub.add_parser(
        "calibrate",
        help="fit the shared parameters to measurements (optax through the emulator)",
        description="Fit the shared physical parameters (per chip family, per link type, "
        "overlap fractions) from the priors in configs/calibration/defaults.toml to the "
        "measurements, and write the overlay that emu loads by default.",
    )
    p.add_argument("file", nargs="?", help="JSON Lines (default: the shipped measurement set)")
    p.add_argument("--steps", type=int, default=150, help="optimiser steps (default 150)")
    p.add_argument(
        "--cv",
        action="store_true",
        help="also leave-one-source-out and leave-one-system-out cross-validation",
    )
    p.add_argument(
        "--out", metavar="PATH", help="overlay to write (default: configs/calibration/fitted.toml)"
    )
    p.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    _common(p)
    return ap


_PLAN_RULE = (
    "Degrees left out are chosen by a stated rule: TP = largest power of two <= 8 dividing "
    "the heads inside the innermost scale-up tier; CP = 1; PP = smallest divisor of the "
    "layers that fits in HBM (selective recompute, then full); DP = the rest."
)


def _split_overrides(items: list[str]) -> tuple[dict, dict, dict]:
    from emu.config import parse_override

    sys_o, model_o, plan_o = {}, {}, {}
    for item in items:
        path, value = parse_override(item)
        if path.startswith("model."):
            model_o[path[6:]] = value
        elif path.startswith("plan."):
            plan_o[path[5:]] = value
        else:
            sys_o[path] = value
    return sys_o, model_o, plan_o


def _setup(args, system_name: str):
    if getattr(args, "batch", None) is not None and args.batch < 1:
        raise CliError(f"--batch must be a positive integer (got {args.batch}).")
    from emu.config import apply_overrides, load_model, load_system
    from emu.runner import auto_plan, check_plan

    sys_o, model_o, plan_o = _split_overrides(args.set)
    system = load_system(system_name, sys_o)
    model = load_model(args.model, model_o)
    chips = args.chips if args.chips is not None else int(float(system.n_chips))
    plan = auto_plan(
        system,
        model,
        chips,
        seq_len=args.seq_len,
        global_batch=args.global_batch,
        microbatch=args.batch if args.phase != "train" and args.batch else args.microbatch,
        tp=args.tp,
        pp=args.pp,
        dp=args.dp,
        cp=args.cp,
        vpp=1 if args.vpp is None else args.vpp,
        zero=args.zero,
        recompute=args.recompute,
        sp=not args.no_sp,
        precision=args.precision,
        ep=args.ep,
        etp=args.etp,
        phase=args.phase,
        context=args.context,
        mtp_accept=args.mtp_accept,
        moe_imbalance=args.moe_imbalance,
        a2a_overlap=args.a2a_overlap,
        cache_hit=args.cache_hit,
    )
    if args.algorithm != "hierarchical":
        from emu.struct import replace

        plan = replace(plan, algorithm=args.algorithm)
    if plan_o:
        from emu.config import PLAN_BOUNDS

        plan = apply_overrides(plan, plan_o, bounds=PLAN_BOUNDS)
        check_plan(system, model, plan, args.chips)
    if plan.phase != "train" and args.batch is None:
        from emu.runner import largest_batch
        from emu.struct import replace as _replace

        slo = args.tpot_slo if plan.phase == "decode" else args.ttft_slo
        if not (slo > 0 and math.isfinite(slo)):
            raise CliError(f"the SLO must be a positive number of seconds (got {slo}).")
        n = largest_batch(system, model, plan, slo)
        plan = _replace(plan, microbatch=plan.microbatch * 0 + n, global_batch=plan.dp * n)
    return system, model, plan


# ----------------------------------------------------------------------------- output


def _si(x: float, unit: str) -> str:
    if x == 0 or not math.isfinite(x):
        return f"{x:g} {unit}"
    for factor, prefix in (
        (1e18, "E"),
        (1e15, "P"),
        (1e12, "T"),
        (1e9, "G"),
        (1e6, "M"),
        (1e3, "k"),
        (1, ""),
        (1e-3, "m"),
        (1e-6, "u"),
        (1e-9, "n"),
    ):
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(r, widths, strict=True))
    )
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *[fmt(r) for r in rows]])


def _plan_text(p: dict) -> str:
    return (
        f"tp={p['tp']} pp={p['pp']} dp={p['dp']} cp={p['cp']} vpp={p['vpp']} "
        f"mb={p['microbatch']} gbs={p['global_batch']} seq={p['seq_len']} "
        f"zero={p['zero']} recompute={p['recompute']} sp={p['sp']} {p['precision']}"
    )


_BREAKDOWN_ROWS = [
    ("matmul_s", "projections + dense FFN"),
    ("expert_s", "MoE experts + router"),
    ("attention_s", "attention core"),
    ("memory_s", "memory-bound ops"),
    ("head_s", "output head (+ loss)"),
    ("compute_s", "= compute"),
    ("tp_comm_s", "TP comm (raw)"),
    ("cp_comm_s", "CP comm (raw)"),
    ("pp_comm_s", "PP comm (raw)"),
    ("dp_comm_s", "DP comm (raw)"),
    ("dispatch_s", "MoE dispatch (raw)"),
    ("combine_s", "MoE combine (raw)"),
    ("exposed_comm_s", "exposed comm"),
    ("bubble_s", "pipeline bubble"),
    ("optimizer_s", "optimizer"),
    ("total_s", "= step time"),
]


def _run_text(results: list[dict]) -> str:
    head = ["", *[r["system"] for r in results]]
    rows = [
        ["model", *[r["model"] for r in results]],
        ["chips", *[f"{r['n_chips']:.0f}" for r in results]],
        ["phase", *[r["phase"] for r in results]],
        ["step time", *[_si(r["step_time_s"], "s") for r in results]],
        *(
            [["TTFT", *[_si(r["ttft_s"], "s") if r["ttft_s"] else "-" for r in results]]]
            if any(r.get("ttft_s") for r in results)
            else []
        ),
        *(
            [["TPOT", *[_si(r["tpot_s"], "s") if r["tpot_s"] else "-" for r in results]]]
            if any(r.get("tpot_s") for r in results)
            else []
        ),
        ["tokens/s", *[_si(r["tokens_per_s"], "tok/s") for r in results]],
        ["tokens/s per chip", *[f"{r['tokens_per_s'] / r['n_chips']:.0f}" for r in results]],
        ["power (IT)", *[_si(r["power_w"], "W") for r in results]],
        ["power (facility)", *[_si(r["facility_power_w"], "W") for r in results]],
        ["tokens/J (IT)", *[f"{r['tokens_per_joule']:.3g}" for r in results]],
        ["MFU", *[f"{100 * r['mfu']:.1f}%" for r in results]],
        [
            "memory/chip",
            *[
                f"{_si(r['memory']['total_bytes'], 'B')} of "
                f"{_si(r['memory']['capacity_bytes'], 'B')}"
                for r in results
            ],
        ],
        ["feasible", *[("yes" if r["feasible"] else "NO (out of memory)") for r in results]],
    ]
    out = [_table(rows, head), ""]
    rows = [
        [label, *[_si(r["breakdown"][k], "s") if k in r["breakdown"] else "-" for r in results]]
        for k, label in _BREAKDOWN_ROWS
        if any(k in r["breakdown"] for r in results)
    ]
    out += [_table(rows, ["step breakdown", *[r["system"] for r in results]]), ""]
    for r in results:
        out.append(f"plan ({r['system']}): {_plan_text(r['plan'])}")
    out.append(
        f"compile {sum(r['compile_s'] for r in results):.2f} s, "
        f"evaluate {sum(r['eval_s'] for r in results) * 1e3:.1f} ms"
    )
    return "\n".join(out)


def _emit(args, obj: Any, text: str) -> None:
    if args.json:
        print(json.dumps(obj, indent=2, allow_nan=False))
    else:
        print(text)


# ----------------------------------------------------------------------------- commands


def cmd_list(args) -> None:
    from emu.config import list_models, list_systems, load_model, load_system
    from emu.struct import float_leaves

    if args.fields:
        name = args.fields
        sys_o, model_o, _ = _split_overrides(args.set)
        if name in list_models() and name not in list_systems():
            leaves = {f"model.{k}": v for k, v in float_leaves(load_model(name, model_o)).items()}
        else:
            leaves = float_leaves(load_system(name, sys_o))
        values = {k: float(v) for k, v in leaves.items()}
        text = _table(
            [[k, f"{v:.6g}", _unit(k)] for k, v in values.items()], ["path", "value", "unit"]
        )
        _emit(args, values, text)
        return
    systems, models = list_systems(), list_models()
    text = "systems: " + ", ".join(systems) + "\nmodels:  " + ", ".join(models)
    _emit(args, {"systems": systems, "models": models}, text)


def _unit(path: str) -> str:
    leaf = path.rsplit(".", 1)[-1]
    if ".peak_flops_per_s." in path:
        return "FLOP/s"
    for suffix, unit in (
        ("_bytes_per_s", "B/s"),
        ("bytes_per_s", "B/s"),
        ("_bytes", "B"),
        ("_w", "W"),
        ("_s", "s"),
        ("_per_chip", "per chip"),
    ):
        if leaf.endswith(suffix):
            return unit
    return "-"


def cmd_describe(args) -> None:
    from emu.config import load_system
    from emu.runner import describe

    sys_o, model_o, plan_o = _split_overrides(args.set)
    if model_o or plan_o:
        raise CliError("describe takes only system fields in --set (no model./plan. paths).")
    d = describe(load_system(args.system, sys_o))
    rows = [["chips", f"{d['n_chips']} x {d['chip']}"]]
    rows += [[f"peak {k} (dense)", _si(v, "FLOP/s")] for k, v in d["peak_flops_per_s"].items()]
    rows += [
        ["HBM capacity", _si(d["hbm_bytes"], "B")],
        ["HBM bandwidth", _si(d["hbm_bytes_per_s"], "B/s")],
    ]
    for t in d["tiers"]:
        rows.append(
            [
                f"tier {t['name']} ({t['link']})",
                f"{_si(t['bytes_per_s_per_chip'], 'B/s')}/chip/dir, domain {t['domain_chips']:.0f}",
            ]
        )
    rows += [["power (IT, full load)", _si(d["power_w"], "W")]]
    rows += [[f"  {k}", _si(v, "W")] for k, v in d["power"].items() if k not in ("it_w",)]
    rows += [["facility power (PUE)", f"{_si(d['facility_power_w'], 'W')} (PUE {d['pue']:g})"]]
    _emit(args, d, f"{d['system']}\n" + _table(rows, ["quantity", "value"]))


def cmd_run(args) -> None:
    from emu.runner import enable_cache, run

    enable_cache()
    system, model, plan = _setup(args, args.system)
    r = run(system, model, plan)
    _emit(args, r, _run_text([r]))


def cmd_compare(args) -> None:
    from emu.runner import enable_cache, run

    enable_cache()
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not names:
        raise CliError("--systems is empty; give comma-separated system names.")
    results = []
    for name in names:
        system, model, plan = _setup(args, name)
        results.append(run(system, model, plan))
    _emit(args, {"results": results}, _run_text(results))


def cmd_sensitivity(args) -> None:
    from emu.runner import enable_cache, sensitivity

    enable_cache()
    system, model, plan = _setup(args, args.system)
    d = sensitivity(system, model, plan)
    rows = [
        [k, f"{v['value']:.4g}", f"{v['tokens_per_joule']:+.4f}", f"{v['tokens_per_s']:+.4f}"]
        for k, v in list(d["elasticities"].items())[: args.top]
    ]
    text = (
        f"{d['system']} / {d['model']}: tokens/J {d['tokens_per_joule']:.4g}, "
        f"tokens/s {d['tokens_per_s']:.4g}\nelasticity d ln(y) / d ln(x), "
        f"largest |tokens/J| first\n" + _table(rows, ["field", "value", "tokens/J", "tokens/s"])
    )
    _emit(args, d, text)


def cmd_validate(args) -> None:
    from emu.runner import enable_cache
    from emu.validate import format_report, validate_file

    enable_cache()
    sys_o, model_o, plan_o = _split_overrides(args.set)
    if model_o or plan_o:
        raise CliError("validate takes only system fields in --set (rows define model and plan).")
    report = validate_file(args.file, kind=args.kind, overrides=sys_o)
    if args.plot:
        from emu.validate import plot_report

        plot_report(report, args.plot)
    _emit(args, report, format_report(report, show_skipped=args.show_skipped))


def _progress(label: str):
    """A one-line progress bar on stderr (no dependency); quiet when stderr is not a TTY
    except for a line every 10%."""
    tty = sys.stderr.isatty()
    last = [-1]

    def show(k, n, loss):
        pct = int(100 * k / n)
        if tty:
            bar = "#" * (pct // 4)
            print(f"\r{label} [{bar:<25}] {k}/{n} loss {loss:.5f}", end="", file=sys.stderr)
            if k == n:
                print(file=sys.stderr)
        elif pct // 10 != last[0]:
            last[0] = pct // 10
            print(f"{label}: {k}/{n} loss {loss:.5f}", file=sys.stderr)

    return show


def cmd_calibrate(args) -> None:
    import os

    from emu.calibrate import cross_validate, fit, write_overlay
    from emu.runner import enable_cache

    enable_cache()
    if args.steps < 1:
        raise CliError(f"--steps must be >= 1 (got {args.steps}).")
    if args.set:
        raise CliError("calibrate takes no --set: it fits the shared parameters itself.")
    from pathlib import Path

    ckpt_dir = (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "emu" / "calibrate"
    )
    report = fit(
        args.file,
        steps=args.steps,
        progress=_progress("fit"),
        checkpoint_dir=ckpt_dir,
        warn=lambda m: print(f"emu: warning: {m}", file=sys.stderr),
    )
    cvs = []
    if args.cv:
        for by in ("source", "system"):
            cvs.append(cross_validate(report, by=by))
    command = (
        "emu calibrate"
        + (f" {args.file}" if args.file else "")
        + (f" --steps {args.steps}" + (" --cv" if args.cv else ""))
    )
    path = None
    if not args.dry_run:
        path = write_overlay(report, args.out, command=command, cv=cvs)
    out = {k: v for k, v in report.items() if not k.startswith("_")}
    for key in ("values", "priors", "uncertainty"):
        out[key] = {".".join(x for x in k if x): v for k, v in out[key].items()}
    out["cross_validation"] = cvs
    out["overlay"] = str(path) if path else None
    rows = [
        [k, f"{v:.4g}", f"{out['uncertainty'][k]:.2g}", f"{out['priors'][k]:.4g}"]
        for k, v in out["values"].items()
    ]
    text = [
        f"fitted {out['parameters']} shared parameters to {out['rows']} rows "
        f"({out['steps']} steps, {out['wall_s']:.0f} s)",
        f"median |error| {out['median_abs_pct_error_before']:.1f}% -> "
        f"{out['median_abs_pct_error']:.1f}%, p90 {out['p90_abs_pct_error']:.1f}%",
        *[
            f"leave-one-{c['by']}-out ({c['groups']} groups): "
            f"median {c['median_abs_pct_error']:.1f}%, p90 {c['p90_abs_pct_error']:.1f}%"
            for c in cvs
        ],
        "",
        _table(rows, ["parameter", "fitted", "+- 1 sigma", "prior"]),
        "",
        f"overlay written to {path}" if path else "dry run: nothing written",
    ]
    _emit(args, out, "\n".join(text))


def cmd_serve(args) -> None:
    from emu.config import load_model, load_system
    from emu.runner import auto_plan, enable_cache, largest_batch, tree_to_dict
    from emu.serving import disaggregated
    from emu.struct import replace

    enable_cache()
    sys_o, model_o, plan_o = _split_overrides(args.set)
    if plan_o:
        raise CliError("serve takes system and model fields in --set, not plan fields.")
    for flag in ("prefill_batch", "decode_batch"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be a positive integer (got {v}).")
    system = load_system(args.system, sys_o)
    model = load_model(args.model, model_o)
    if args.precision is None:  # serving default: the chip's 8-bit format, else bf16
        from emu.hardware import peak_flops

        args.precision = next(
            p for p in ("fp8", "int8", "bf16") if float(peak_flops(system.chip, p)) > 0
        )
    common = dict(
        precision=args.precision, moe_imbalance=args.moe_imbalance, a2a_overlap=args.a2a_overlap
    )
    plans = {}
    for phase, chips, batch, slo in (
        ("prefill", args.prefill_chips, args.prefill_batch, args.ttft_slo),
        ("decode", args.decode_chips, args.decode_batch, args.tpot_slo),
    ):
        plan = auto_plan(
            system,
            model,
            chips,
            seq_len=args.prompt_len,
            microbatch=batch or 1,
            phase=phase,
            context=args.prompt_len + args.output_len // 2,
            mtp_accept=args.mtp_accept if phase == "decode" else 0.0,
            **common,
        )
        if batch is None:
            if not (slo > 0 and math.isfinite(slo)):
                raise CliError(f"the SLO must be a positive number of seconds (got {slo}).")
            n = largest_batch(system, model, plan, slo)
            plan = replace(plan, microbatch=plan.microbatch * 0 + n, global_batch=plan.dp * n)
        plans[phase] = plan
    r = disaggregated(
        system,
        model,
        plans["prefill"],
        plans["decode"],
        prompt_len=float(args.prompt_len),
        output_len=float(args.output_len),
    )
    d = tree_to_dict(r)
    d["feasible"] = bool(d["feasible"] > 0.5)
    for phase in ("prefill", "decode"):
        d[phase]["plan"] = plan_dict_of(plans[phase])
    out = {"system": system.name, "model": model.name, **d}
    rows = [
        ["chips (prefill + decode)", f"{args.prefill_chips} + {args.decode_chips}"],
        [
            "batch per DP rank (prefill, decode)",
            f"{d['prefill']['plan']['microbatch']}, {d['decode']['plan']['microbatch']}",
        ],
        ["requests/s", f"{d['requests_per_s']:.4g}"],
        ["output tokens/s", _si(d["tokens_per_s"], "tok/s")],
        ["output tokens/s per chip", f"{d['tokens_per_s_per_chip']:.4g}"],
        ["TTFT (prefill batch)", _si(d["ttft_s"], "s")],
        ["TPOT", _si(d["tpot_s"], "s")],
        [
            "utilisation (prefill, decode)",
            f"{d['prefill_utilisation']:.0%}, {d['decode_utilisation']:.0%}",
        ],
        ["power (IT)", _si(d["power_w"], "W")],
        ["output tokens/J", f"{d['tokens_per_joule']:.4g}"],
        ["feasible", "yes" if d["feasible"] else "NO (out of memory)"],
    ]
    _emit(args, out, f"{system.name} / {model.name}\n" + _table(rows, ["quantity", "value"]))


def _search_setup(args):
    """(system, model, problem, grid, out) of `emu search` / `emu sweep`, checked."""
    from pathlib import Path

    from emu.config import load_model, load_system
    from emu.parallelism import RECOMPUTE
    from emu.search import KNOBS, Problem, check_grid

    sys_o, model_o, plan_o = _split_overrides(args.set)
    if plan_o:
        raise CliError(
            f"{args.command} varies the plan itself; --set takes system and model fields."
        )
    if args.top < 1:
        raise CliError(f"--top must be >= 1 (got {args.top}).")
    if args.dp is not None:
        raise CliError(f"{args.command} derives dp from --chips; drop --dp.")
    if args.etp != 1 or args.algorithm != "hierarchical":
        raise CliError(f"{args.command} keeps --etp 1 and the hierarchical algorithm; drop them.")
    if args.phase == "train" and args.batch is not None:
        raise CliError("--batch is the serving batch per DP rank; in training use --microbatch.")
    if args.phase != "train":
        keys = ("pp", "cp", "vpp", "recompute", "zero", "microbatch", "global_batch")
        bad = [f"--{k.replace('_', '-')}" for k in keys if getattr(args, k) is not None]
        if bad:
            raise CliError(
                f"serving plans vary --tp, --ep and --batch only; drop {', '.join(bad)}."
            )
    system = load_system(args.system, sys_o)
    model = load_model(args.model, model_o)
    if args.chips is None:
        chips: int | tuple = int(float(system.n_chips))
    else:
        try:
            counts = tuple(int(c) for c in str(args.chips).split(",") if c.strip())
        except ValueError:
            raise CliError(
                f"--chips expects integers, e.g. 72 or 64,128,256 (got '{args.chips}')."
            ) from None
        if not counts:
            raise CliError("--chips is empty; give a chip count.")
        chips = counts[0] if len(counts) == 1 else counts
    explicit = {
        k: getattr(args, k)
        for k in ("tp", "pp", "cp", "vpp", "ep", "microbatch", "zero")
        if getattr(args, k) is not None
    }
    if args.recompute is not None:
        explicit["recompute"] = int(RECOMPUTE[args.recompute])
    if args.no_sp:
        explicit["sp"] = 0
    if args.phase != "train" and args.batch is not None:
        explicit["microbatch"] = args.batch
    plan_knobs = [k for k in KNOBS if k != "dp"]
    if args.free is not None:
        free = tuple(k.strip() for k in args.free.split(",") if k.strip())
        bad = [k for k in free if k not in plan_knobs]
        if bad:
            raise CliError(f"--free: unknown knob '{bad[0]}'; known: {', '.join(plan_knobs)}.")
        fixed = explicit
    else:
        free = tuple(k for k in plan_knobs if k not in explicit)
        fixed = explicit
    grid = {}
    for item in args.grid:
        path, sep, values = item.partition("=")
        if not sep or not values:
            raise CliError(f"--grid expects NAME=V1,V2,... (got '{item}').")
        if path.strip() in grid:
            raise CliError(f"--grid {path.strip()} is given twice; list all its values once.")
        try:
            grid[path.strip()] = [float(v) for v in values.split(",")]
        except ValueError:
            raise CliError(
                f"--grid {path.strip()}: values must be numbers (got '{values}')."
            ) from None
    check_grid(system, grid)
    problem = Problem(
        system=system.name,
        model=model.name,
        chips=chips,
        seq_len=args.seq_len,
        global_batch=args.global_batch,
        precision=args.precision,
        phase=args.phase,
        objective=args.objective,
        free=free,
        fixed=tuple(sorted(fixed.items())),
        power_cap=args.power_cap,
        tpot_slo=args.tpot_slo,
        ttft_slo=args.ttft_slo if args.phase == "prefill" else None,
        context=args.context,
        a2a_overlap=args.a2a_overlap,
        moe_imbalance=args.moe_imbalance,
        mtp_accept=args.mtp_accept,
        cache_hit=args.cache_hit,
    )
    out = Path(args.out) if args.out else None
    if out and not out.parent.exists():
        raise CliError(f"output folder '{out.parent}' does not exist.")
    if out and out.is_dir():
        raise CliError(f"--out '{out}' is a folder; give a file name such as results.csv.")
    if out and out.suffix.lower() not in (".csv", ".parquet"):
        raise CliError(f"--out '{out}': use a .csv or .parquet file name.")
    return system, model, problem, grid, out


def _best_run(system, model, problem, res) -> dict | None:
    """The `run` object (with its plan) of the best configuration, plus its grid values."""
    from emu.runner import run
    from emu.search import plan_of, system_of

    row = res["best"]
    if row is None:
        return None
    names = res["_space"].names
    r = run(system_of(system, row, names), model, plan_of(problem, row))
    r["grid"] = {n: row[n] for n in names}
    r["objective"] = {"name": res["objective"], "value": row["objective"]}
    return r


def _search_text(res: dict, what: str) -> str:
    names = res["_space"].names
    rows = [
        [
            str(i + 1),
            *[f"{r[n]:g}" for n in names],
            f"{r['tp']}/{r['pp']}/{r['dp']}/{r['cp']}/{r['ep']}",
            f"{r['microbatch']}",
            f"{r['vpp']}",
            f"{r['zero']}",
            ("none", "selective", "full")[r["recompute"]],
            f"{r['sp']}",
            f"{r['objective']:.4g}",
            _si(r["tokens_per_s"], "tok/s"),
            f"{r['tokens_per_joule']:.4g}",
            _si(r["power_w"], "W"),
        ]
        for i, r in enumerate(res["top"])
    ]
    head = ["#", *names, "tp/pp/dp/cp/ep", "mb", "vpp", "zero", "recompute", "sp"]
    head += [res["objective"], "tokens/s", "tokens/J", "power"]
    text = what + "\n" + (_table(rows, head) if rows else "no feasible configuration")
    if not rows:
        text += (
            " (none fits in memory, meets the SLO and stays under the power cap); relax "
            "--tpot-slo/--power-cap, add chips or fix fewer knobs."
        )
    return text


def _search_json(res: dict, best: dict | None, out) -> dict:
    shown = {k: v for k, v in res.items() if not k.startswith("_") and k != "best"}
    return {"best": best, **shown, "out": str(out) if out else None}


def cmd_search(args) -> None:
    from emu.runner import enable_cache
    from emu.search import gradient_search, write_table

    enable_cache()
    system, model, problem, grid, out = _search_setup(args)
    if args.starts is not None and args.starts < 1 or args.steps < 1:
        raise CliError("--starts and --steps must be >= 1.")

    def progress(stage: str, evaluations: int) -> None:
        if sys.stderr.isatty():
            print(f"\rsearch: {stage:<38} {evaluations:7d} evaluations", end="", file=sys.stderr)
            if stage == "done":
                print(file=sys.stderr)

    res = gradient_search(
        system,
        model,
        problem,
        grid=grid,
        starts=args.starts,
        steps=args.steps,
        top=args.top,
        seed=args.seed,
        progress=progress,
    )
    if out:
        write_table(res, out)
    best = _best_run(system, model, problem, res)
    what = (
        f"gradient search: {res['evaluations']} evaluations ({res['gradient_evaluations']} "
        f"gradient + {res['exact_evaluations']} exact) of a space of {res['space']}, "
        f"{res['wall_s']:.1f} s"
    )
    _emit(args, _search_json(res, best, out), _search_text(res, what))


def cmd_sweep(args) -> None:
    import os
    from pathlib import Path

    from emu.runner import enable_cache
    from emu.search import sweep, write_table

    coord = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    nproc = args.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "1"))
    pid = (
        args.process_id
        if args.process_id is not None
        else int(os.environ.get("JAX_PROCESS_ID", "0"))
    )
    if nproc < 1 or not 0 <= pid < nproc:
        raise CliError(f"--process-id must be in [0, {nproc}) (got {pid}).")
    if nproc > 1:
        if not coord:
            raise CliError("several processes need --coordinator HOST:PORT.")
        import jax

        jax.distributed.initialize(coordinator_address=coord, num_processes=nproc, process_id=pid)
    enable_cache()
    if args.chunk < 1:
        raise CliError("--chunk must be >= 1.")
    system, model, problem, grid, out = _search_setup(args)
    base = (
        out.with_name(out.name + ".parts") if out else (Path.home() / ".cache" / "emu" / "sweeps")
    )

    def progress(done, total, rows):
        if sys.stderr.isatty():
            bar = "#" * int(25 * done / total)
            print(f"\rsweep [{bar:<25}] {done}/{total} chunks", end="", file=sys.stderr)
            if done == total:
                print(file=sys.stderr)

    res = sweep(
        system,
        model,
        problem,
        base,
        grid=grid,
        top=args.top,
        chunk=args.chunk,
        process_id=pid,
        num_processes=nproc,
        progress=progress,
        warn=lambda m: print(f"emu: warning: {m}", file=sys.stderr),
    )
    if pid != 0:
        return
    if out:
        write_table(res, out)
    best = _best_run(system, model, problem, res)
    what = (
        f"{res['evaluations']} configurations ({res['grid_points']} grid points, "
        f"{res['feasible']} feasible), {res['chunks']} chunk(s), {res['resumed']} resumed, "
        f"{res['wall_s']:.2f} s"
    )
    text = _search_text(res, what) + f"\nPareto front (tokens/s vs W): {len(res['pareto'])} plans"
    _emit(args, _search_json(res, best, out), text)


def plan_dict_of(plan) -> dict:
    from emu.parallelism import plan_dict

    return plan_dict(plan)


COMMANDS = {
    "list": cmd_list,
    "describe": cmd_describe,
    "run": cmd_run,
    "compare": cmd_compare,
    "sensitivity": cmd_sensitivity,
    "serve": cmd_serve,
    "calibrate": cmd_calibrate,
    "search": cmd_search,
    "sweep": cmd_sweep,
    "validate": cmd_validate,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except (ValueError, CliError) as e:
        print(
            f"emu: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr
        )
        return 2
    except Exception as e:  # noqa: BLE001
        # never a traceback: a bug or an environment problem still gets one line
        first = str(e).splitlines()[0] if str(e) else ""
        print(
            f"emu: internal error ({type(e).__name__}): {first}; please report it", file=sys.stderr
        )
        return 1
    except KeyboardInterrupt:
        print("emu: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
