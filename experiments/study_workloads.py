"""Study 2 and 3: CloudMatrix 384 vs GB200 NVL72 on four workloads, and Pareto fronts.

    python experiments/study_workloads.py [--out experiments/figures/study]

Training (Llama 3 405B and DeepSeek-V3, BF16 on both: the 910C has no FP8) uses each
system's best plan for tokens/J from an exhaustive `emu sweep`; serving DeepSeek-R1 uses the
serving rule (data-parallel attention, expert-parallel MoE) with INT8 on CloudMatrix 384 (as
in the CM paper) and FP8 on NVL72, prefill under a 2 s TTFT SLO (4K prompts) and decode under
a 50 ms TPOT SLO (4K context, MTP with 70% acceptance). Two scales: equal chip count (1,152 =
3 supernodes = 16 racks) and equal power (one CloudMatrix 384 against the NVL72 racks that
fit in its full-load power). Writes workloads.md, workloads.png (tokens/J and tokens/s per
chip, with step-time breakdowns) and pareto.png (tokens/s vs IT power over every feasible
Llama 3 405B plan at several sizes).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from emu.config import load_model, load_system
from emu.power import full_load_power
from emu.runner import auto_plan, enable_cache, largest_batch, run
from emu.search import Problem, plan_of, sweep
from emu.struct import replace

SYSTEMS = {"cloudmatrix384": "CloudMatrix 384", "gb200_nvl72": "GB200 NVL72"}
PARTS = [
    ("matmul_s", "projections/FFN"),
    ("expert_s", "experts"),
    ("attention_s", "attention"),
    ("memory_s", "memory-bound"),
    ("head_s", "head"),
    ("exposed_comm_s", "exposed comm"),
    ("bubble_s", "bubble"),
]


def equal_power_chips(name: str) -> int:
    """NVL72 GPUs (whole racks) within one CloudMatrix 384's full-load power."""
    cm = float(full_load_power(load_system("cloudmatrix384")).it_w)
    if name == "cloudmatrix384":
        return 384
    rack = float(full_load_power(load_system(name)).it_w)
    return 72 * int(cm // rack)


def best_training(system_name, model_name, chips, precision="bf16"):
    system, model = load_system(system_name), load_model(model_name)
    seq = 4096 if "deepseek" in model_name else 8192
    problem = Problem(system_name, model_name, chips, seq_len=seq, precision=precision)
    with tempfile.TemporaryDirectory() as d:
        res = sweep(system, model, problem, d, top=1)
    if res["best"] is None:
        return None
    return run(system, model, plan_of(problem, res["best"]))


def serving(system_name, phase, chips):
    system, model = load_system(system_name), load_model("deepseek_r1")
    prec = "int8" if system_name == "cloudmatrix384" else "fp8"
    plan = auto_plan(
        system,
        model,
        chips,
        seq_len=4096,
        phase=phase,
        context=4096,
        mtp_accept=0.7 if phase == "decode" else 0.0,
        precision=prec,
    )
    slo = 0.05 if phase == "decode" else 2.0
    n = largest_batch(system, model, plan, slo)
    plan = replace(plan, microbatch=jnp.float32(n), global_batch=plan.dp * n)
    return run(system, model, plan)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/figures/study")
    args = ap.parse_args()
    enable_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scales = {
        "equal chips": {s: 1152 for s in SYSTEMS},
        "equal power": {s: equal_power_chips(s) for s in SYSTEMS},
    }
    work = {
        "Llama 3 405B train": lambda s, n: best_training(s, "llama3_405b", n),
        "DeepSeek-V3 train": lambda s, n: best_training(s, "deepseek_v3", n),
        "DeepSeek-R1 prefill": lambda s, n: serving(s, "prefill", n),
        "DeepSeek-R1 decode": lambda s, n: serving(s, "decode", n),
    }
    results = {}
    lines = [
        "| scale | workload | system | chips | plan | tokens/s per chip | tokens/J | "
        "MFU | IT power kW | feasible |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scale, chips in scales.items():
        for wname, fn in work.items():
            for s in SYSTEMS:
                r = fn(s, chips[s])
                results[(scale, wname, s)] = r
                p = r["plan"]
                plan = (
                    f"tp{p['tp']} pp{p['pp']} dp{p['dp']} cp{p['cp']} ep{p['ep']} "
                    f"mb{p['microbatch']} z{p['zero']} {p['recompute']} {p['precision']}"
                )
                lines.append(
                    f"| {scale} | {wname} | {SYSTEMS[s]} | {chips[s]} | {plan} | "
                    f"{r['tokens_per_s_per_chip']:.4g} | {r['tokens_per_joule']:.3g} | "
                    f"{100 * r['mfu']:.1f}% | {r['power_w'] / 1e3:.0f} | "
                    f"{'yes' if r['feasible'] else 'NO'} |"
                )
                print(lines[-1])
    (out / "workloads.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    colors = {"cloudmatrix384": "#c0392b", "gb200_nvl72": "#2e86c1"}
    names = list(work)
    for ax, (scale, metric, label) in zip(
        axes[0],
        [
            ("equal chips", "tokens_per_joule", "tokens per joule (IT)"),
            ("equal power", "tokens_per_s", "tokens/s (whole deployment)"),
        ],
        strict=True,
    ):
        x = np.arange(len(names))
        for j, s in enumerate(SYSTEMS):
            vals = [results[(scale, w, s)][metric] for w in names]
            ax.bar(
                x + (j - 0.5) * 0.38,
                vals,
                0.38,
                color=colors[s],
                label=f"{SYSTEMS[s]} ({scales[scale][s]} chips)",
            )
        ax.set_xticks(x, names, rotation=12)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.set_title(f"{scale}: {label}")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax, scale in zip(axes[1], scales, strict=True):
        x = np.arange(len(names))
        for j, s in enumerate(SYSTEMS):
            bottom = np.zeros(len(names))
            for k, (key, lab) in enumerate(PARTS):
                frac = []
                for w in names:
                    b = results[(scale, w, s)]["breakdown"]
                    frac.append(b.get(key, 0.0) / b["total_s"])
                ax.bar(
                    x + (j - 0.5) * 0.38,
                    frac,
                    0.38,
                    bottom=bottom,
                    color=plt.get_cmap("tab10")(k),
                    label=lab if j == 0 else None,
                    edgecolor=colors[s],
                    linewidth=1.2,
                )
                bottom += np.asarray(frac)
        ax.set_xticks(x, names, rotation=12)
        ax.set_ylabel("share of step time (left bar CM384, right NVL72)")
        ax.set_title(f"{scale}: step-time breakdown")
        ax.legend(fontsize=7, ncol=2)
    fig.suptitle("CloudMatrix 384 vs GB200 NVL72 (emu; best plan per system)")
    fig.tight_layout()
    fig.savefig(out / "workloads.png", dpi=110)
    plt.close(fig)

    # Pareto fronts: every feasible Llama 3 405B plan at several sizes
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    sizes = {"cloudmatrix384": [384, 768, 1152], "gb200_nvl72": [288, 576, 864, 1152]}
    for s, ns in sizes.items():
        pts = []
        for n in ns:
            with tempfile.TemporaryDirectory() as d:
                res = sweep(
                    load_system(s),
                    load_model("llama3_405b"),
                    Problem(s, "llama3_405b", n, seq_len=8192),
                    d,
                    top=1,
                )
            pts += [(p["power_w"], p["tokens_per_s"]) for p in res["pareto"]]
        pts.sort()
        front, best = [], -1.0
        for w, t in pts:
            if t > best:
                front.append((w, t))
                best = t
        ax.plot(
            [w / 1e3 for w, _ in front],
            [t for _, t in front],
            "o-",
            color=colors[s],
            label=SYSTEMS[s],
            ms=3,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("average IT power (kW)")
    ax.set_ylabel("training throughput (tokens/s)")
    ax.set_title("Llama 3 405B training: Pareto fronts over all feasible plans and sizes")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    plt.close(fig)
    print(f"wrote {out}/workloads.md, workloads.png, pareto.png")


if __name__ == "__main__":
    main()
