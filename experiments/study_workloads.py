"""Study 2 and 3: CloudMatrix 384 vs GB200 NVL72 on four workloads, and Pareto fronts.

    python experiments/study_workloads.py [--out experiments/figures/study] [--jobs 2]

Every plan comes from `emu search` (`emu.search.gradient_search`), one search per system,
workload and scale. Training: Llama 3 405B (8K sequences) and DeepSeek-V3 (4K), BF16 on both
(the 910C has no FP8), >= 4 Mi tokens per step. Serving DeepSeek-R1 (INT8 on CloudMatrix 384
as in the CM paper, FP8 on NVL72; 4K prompts / 4K context): prefill under a 2 s TTFT SLO,
decode under a 50 ms TPOT SLO with MTP at 70% acceptance; the plan space is tp x ep x batch
per DP rank (data-parallel attention, dp = chips / tp).

Two scales:
- equal chips: 1,152 of each (3 supernodes = 16 racks), maximising tokens/J;
- equal power: the IT power of one CloudMatrix 384 at full load (559 kW): its 384 NPUs
  against the whole NVL72 racks whose full-load power fits in it (4 racks, 288 GPUs),
  maximising tokens/s under that power cap.
(With the chip count as a search knob under the cap, `Problem(chips=(72, 144, ...),
power_cap=W)`, the search returned a poor DeepSeek-V3 plan, so the rack count is fixed.)

The search's decode batch per DP rank is a power of two; the script then raises it to the
largest batch meeting the TPOT SLO (`emu.policy.largest_batch`) when that stays within HBM
and the power cap (the table shows both). Study 3: Pareto fronts of tokens/s vs IT power
over every feasible Llama 3 405B training plan at 3-4 sizes per system (one exhaustive
`sweep` per system, the chip count a knob).

Writes workloads.md, workloads.png (tokens/J, tokens/s, MFU and step-time breakdowns) and
pareto.png.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import emu
from emu.analysis import interval, interval_group
from emu.cli import positive_int
from emu.policy import largest_batch
from emu.power import full_load_power
from emu.search import Problem, gradient_search, plan_of, sweep
from emu.struct import replace

SYSTEMS = {"cloudmatrix384": "CloudMatrix 384", "gb200_nvl72": "GB200 NVL72"}
SHORT = {"cloudmatrix384": "CM384", "gb200_nvl72": "NVL72"}
COLORS = {"cloudmatrix384": "#c0392b", "gb200_nvl72": "#2e86c1"}
#: (label, model, phase, seq_len)
WORKLOADS = (
    ("Llama 3 405B train", "llama3_405b", "train", 8192),
    ("DeepSeek-V3 train", "deepseek_v3", "train", 4096),
    ("DeepSeek-R1 prefill", "deepseek_r1", "prefill", 4096),
    ("DeepSeek-R1 decode", "deepseek_r1", "decode", 4096),
)
EQUAL_CHIPS = 1152
TTFT_SLO, TPOT_SLO, MTP_ACCEPT = 2.0, 0.05, 0.7
PARTS = [
    ("matmul_s", "projections/FFN"),
    ("expert_s", "experts"),
    ("attention_s", "attention"),
    ("memory_s", "memory-bound"),
    ("head_s", "head"),
    ("exposed_comm_s", "exposed comm"),
    ("bubble_s", "pipeline bubble"),
    ("other_s", "other (optimizer, host wait)"),
]


def power_budget_w() -> float:
    """IT power of one CloudMatrix 384 with every NPU at TDP: the equal-power budget."""
    return float(full_load_power(emu.load_system("cloudmatrix384")).it_w)


def equal_power_chips(system: str, budget: float) -> int:
    """Chips of whole units (a CloudMatrix 384, an NVL72 rack) whose full-load IT power fits
    in `budget` W."""
    s = emu.load_system(system)
    unit = int(float(s.n_chips))
    return unit * int(budget // float(full_load_power(s).it_w))


def problem_for(system: str, workload: tuple, scale: str, budget: float) -> Problem:
    _, model, phase, seq = workload
    prec = "bf16" if phase == "train" else ("int8" if system == "cloudmatrix384" else "fp8")
    kw = {}
    if phase != "train":
        kw = dict(ttft_slo=TTFT_SLO) if phase == "prefill" else {}
        if phase == "decode":  # a prefill problem reads no TPOT SLO, KV context or MTP drafts
            kw.update(tpot_slo=TPOT_SLO, context=4096, mtp_accept=MTP_ACCEPT)
    if scale == "equal chips":
        chips, obj, cap = EQUAL_CHIPS, "tokens_per_joule", None
    else:
        chips = equal_power_chips(system, budget)
        obj, cap = "tokens_per_s", budget
    return Problem(
        system, model, chips, seq_len=seq, precision=prec, phase=phase, objective=obj,
        power_cap=cap, **kw,
    )  # fmt: skip


def solve(system_name: str, workload: tuple, scale: str, budget: float) -> dict:
    """Best plan by gradient search, then (decode) the SLO batch, evaluated exactly."""
    system, model = emu.load_system(system_name), emu.load_model(workload[1])
    problem = problem_for(system_name, workload, scale, budget)
    t0 = time.perf_counter()
    res = gradient_search(system, model, problem)
    wall = time.perf_counter() - t0
    row = res.best
    if row is None:
        raise ValueError(f"no feasible plan for {system_name} {workload[0]} at {scale}")
    plan = plan_of(problem, row)
    r = emu.evaluate(system, model, plan)  # eager: cheaper than compiling it once more
    batch = int(row["microbatch"])
    if problem.phase == "decode":  # the search's batch is a power of two: fill to the SLO
        n = largest_batch(system, model, plan, problem.tpot_slo)
        if n > batch:
            p2 = replace(plan, microbatch=jnp.float32(n), global_batch=plan.dp * n)
            r2 = emu.evaluate(system, model, p2)
            cap_ok = problem.power_cap is None or float(r2.power_w) <= problem.power_cap
            if float(r2.feasible) > 0.5 and cap_ok:
                plan, r = p2, r2
    iv = interval(1.0, interval_group(system, problem.phase))  # the band as factors
    b = r.breakdown
    parts = {k: float(getattr(b, k, 0.0)) for k, _ in PARTS[:-1]}
    parts["other_s"] = max(float(b.total_s) - sum(parts.values()), 0.0)
    return {
        "row": row,
        "search_s": wall,
        "evaluations": res.evaluations,
        "space": res.space_size,
        "chips": int(float(r.n_chips)),
        "batch": int(float(plan.microbatch)),
        "search_batch": batch,
        "tokens_per_s": float(r.tokens_per_s),
        "tokens_per_s_per_chip": float(r.tokens_per_s_per_chip),
        "tokens_per_joule": float(r.tokens_per_joule),
        "mfu": float(r.mfu),
        "power_w": float(r.power_w),
        "tpot_s": float(r.tpot_s),
        "ttft_s": float(r.ttft_s),
        "feasible": float(r.feasible) > 0.5,
        "band": (iv["low"], iv["high"], iv["basis"]),
        "parts": parts,
        "total_s": float(b.total_s),
    }


def plan_text(phase: str, r: dict) -> str:
    p = r["row"]
    if phase != "train":
        b = f"b{r['batch']}" + (
            f" (search b{r['search_batch']})" if r["batch"] != r["search_batch"] else ""
        )
        return f"tp{p['tp']} dp{p['dp']} ep{p['ep']} {b}"
    rec = ("none", "selective", "full")[int(p["recompute"])]
    s = f"tp{p['tp']} pp{p['pp']} dp{p['dp']} cp{p['cp']}"
    if p["ep"] > 1:
        s += f" ep{p['ep']}"
    s += f" mb{p['microbatch']}"
    if p["vpp"] > 1:
        s += f" vpp{p['vpp']}"
    return s + f" zero{p['zero']} {rec}" + (" sp" if p["sp"] else "")


def pareto_points(system_name: str, sizes: list[int]) -> list[tuple[float, float, int]]:
    """(IT power W, tokens/s, chips) on the Pareto front of every feasible Llama 3 405B
    training plan at `sizes` chips (one exhaustive sweep, the chip count a knob)."""
    problem = Problem(system_name, "llama3_405b", tuple(sizes), seq_len=8192)
    with tempfile.TemporaryDirectory() as d:
        res = sweep(emu.load_system(system_name), emu.load_model("llama3_405b"), problem, d, top=1)
    pts = [
        (p["power_w"], p["tokens_per_s"], int(p["tp"] * p["pp"] * p["dp"] * p["cp"]))
        for p in res.pareto
    ]
    return sorted(pts)


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/figures/study")
    ap.add_argument("--jobs", type=positive_int, default=2, help="searches run at once (processes)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    budget = power_budget_w()
    scales = ("equal chips", "equal power")
    tasks = [(sc, w, s) for sc in scales for w in WORKLOADS for s in SYSTEMS]
    pareto_sizes = {"cloudmatrix384": [384, 768, 1152], "gb200_nvl72": [288, 576, 864, 1152]}
    # one process per core (compilation is single-threaded); the longest searches first
    tasks.sort(key=lambda t: (t[1][2] != "train", t[1][1] != "deepseek_v3"))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        futs = {t: pool.submit(solve, t[2], t[1], t[0], budget) for t in tasks}
        pfuts = {s: pool.submit(pareto_points, s, n) for s, n in pareto_sizes.items()}
        results = {(sc, w[0], s): f.result() for (sc, w, s), f in futs.items()}
        fronts = {s: f.result() for s, f in pfuts.items()}

    lines = [
        f"Equal chips: {EQUAL_CHIPS} of each, objective tokens/J. Equal power: "
        f"{budget / 1e3:.0f} kW IT budget (one CloudMatrix 384 at full load; NVL72: the "
        "whole racks within it at full load), objective tokens/s. Plans from `emu search` "
        "(gradient_search); decode batch filled to the 50 ms TPOT SLO.",
        "",
        "| scale | workload | system | chips | plan (emu search) | tokens/s | tokens/s per chip "
        "| tokens/J | MFU | IT power kW | search s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for sc in scales:
        for w in WORKLOADS:
            for s in SYSTEMS:
                r = results[(sc, w[0], s)]
                lines.append(
                    f"| {sc} | {w[0]} | {SYSTEMS[s]} | {r['chips']} | {plan_text(w[2], r)} | "
                    f"{r['tokens_per_s']:.4g} | {r['tokens_per_s_per_chip']:.4g} | "
                    f"{r['tokens_per_joule']:.3g} | {100 * r['mfu']:.1f}% | "
                    f"{r['power_w'] / 1e3:.0f} | {r['search_s']:.0f} |"
                    + ("" if r["feasible"] else " INFEASIBLE")
                )
    lines += [
        "",
        "| scale | workload | NVL72 / CM384 tokens/s | NVL72 / CM384 tokens/J "
        "| tokens/J ratio, band ends |",
    ]
    lines += ["|---|---|---|---|---|"]
    for sc in scales:
        for w in WORKLOADS:
            c, n = results[(sc, w[0], "cloudmatrix384")], results[(sc, w[0], "gb200_nvl72")]
            ratio = n["tokens_per_joule"] / c["tokens_per_joule"]
            lo, hi = ratio * n["band"][0] / c["band"][1], ratio * n["band"][1] / c["band"][0]
            lines.append(
                f"| {sc} | {w[0]} | {n['tokens_per_s'] / c['tokens_per_s']:.2f}x | "
                f"{ratio:.2f}x | {lo:.2f}x - {hi:.2f}x |"
            )
    lines += [
        "",
        "Band ends: each system's 80% throughput interval (`emu.analysis.interval`, from the "
        "held-out residuals of its chip family and kind: leave-one-source-out, and rows of "
        "sources the fit never saw) applied at opposite ends; "
        "tokens/J shares the throughput's band (power is modelled, not measured). Bases:",
        "",
    ]
    bases = sorted({(SYSTEMS[k[2]], r["band"][2]) for k, r in results.items()})
    lines += [f"- {s_}: {b_}" for s_, b_ in bases]
    text = "\n".join(lines)
    (out / "workloads.md").write_text(text + "\n")
    print(text)

    # workloads.png: top row the headline metric of each scale, middle MFU, bottom breakdowns
    names = [w[0] for w in WORKLOADS]
    x = np.arange(len(names))
    wd = 0.38
    fig, axes = plt.subplots(3, 2, figsize=(14, 13))
    panels = [
        ("equal chips", "tokens_per_joule", "tokens per joule (IT power)"),
        ("equal power", "tokens_per_s", "tokens/s (whole deployment)"),
    ]
    for ax, (sc, metric, label) in zip(axes[0], panels, strict=True):
        for j, s in enumerate(SYSTEMS):
            vals = [results[(sc, w, s)][metric] for w in names]
            chips = sorted({results[(sc, w, s)]["chips"] for w in names})
            bars = ax.bar(
                x + (j - 0.5) * wd, vals, wd, color=COLORS[s],
                label=f"{SYSTEMS[s]} ({'/'.join(map(str, chips))} chips)",
            )  # fmt: skip
            ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=1)
        ax.set_xticks(x, names)
        ax.set_yscale("log")
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 3)  # room for the legend above the bars
        ax.set_ylabel(label)
        sub = f"{EQUAL_CHIPS} chips each" if sc == "equal chips" else f"{budget / 1e3:.0f} kW IT"
        ax.set_title(f"{sc} ({sub}): {label}, higher is better")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(axis="y", which="both", alpha=0.3)
    for ax, sc in zip(axes[1], scales, strict=True):
        for j, s in enumerate(SYSTEMS):
            vals = [100 * results[(sc, w, s)]["mfu"] for w in names]
            bars = ax.bar(x + (j - 0.5) * wd, vals, wd, color=COLORS[s], label=SYSTEMS[s])
            ax.bar_label(bars, fmt="%.0f%%", fontsize=7, padding=1)
        ax.set_xticks(x, names)
        ax.set_ylabel("MFU (%) at the plan's precision")
        ax.set_ylim(0, 75)
        ax.set_title(f"{sc}: model FLOP utilisation")
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(axis="y", alpha=0.3)
    cmap = plt.get_cmap("tab10")
    for ax, sc in zip(axes[2], scales, strict=True):
        for j, s in enumerate(SYSTEMS):
            bottom = np.zeros(len(names))
            for k, (key, lab) in enumerate(PARTS):
                frac = np.array(
                    [
                        results[(sc, w, s)]["parts"][key] / results[(sc, w, s)]["total_s"]
                        for w in names
                    ]
                )
                ax.bar(
                    x + (j - 0.5) * wd, frac, wd, bottom=bottom, color=cmap(k),
                    label=lab if j == 0 else None, edgecolor="white", linewidth=0.5,
                )  # fmt: skip
                bottom += frac
            for xi in x:
                ax.text(xi + (j - 0.5) * wd, 1.01, SHORT[s], ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, names)
        ax.set_ylim(0, 1.12)
        ax.set_ylabel("share of step time (per chip)")
        ax.set_title(f"{sc}: step-time breakdown (left bar CM384, right NVL72)")
    for ax in axes.flat:
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle(
        "CloudMatrix 384 vs GB200 NVL72, each with its best plan from emu search "
        "(training BF16; serving INT8 on CM384, FP8 on NVL72)",
        fontsize=12,
    )
    handles, labels = axes[2][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=8, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.025, 1, 1))
    fig.savefig(out / "workloads.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5.8))
    markers = ["o", "s", "^", "D"]
    for s, pts in fronts.items():
        ax.plot([w / 1e3 for w, _, _ in pts], [t for _, t, _ in pts], "-", color=COLORS[s], lw=1)
        for k, n in enumerate(pareto_sizes[s]):
            sel = [(w, t) for w, t, c in pts if c == n]
            if sel:
                ax.plot(
                    [w / 1e3 for w, _ in sel], [t for _, t in sel], markers[k % 4],
                    color=COLORS[s], ms=4, label=f"{SYSTEMS[s]}, {n} chips",
                )  # fmt: skip
    ax.axvline(budget / 1e3, color="grey", ls=":", lw=1)
    ax.text(
        budget / 1e3, 0.02, f" {budget / 1e3:.0f} kW: one CM384 at full load",
        color="grey", fontsize=8,
        transform=ax.get_xaxis_transform(),
    )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("average IT power (kW)")
    ax.set_ylabel("training throughput (tokens/s)")
    ax.set_title(
        "Llama 3 405B training (BF16, 8K sequences): Pareto fronts of\n"
        "tokens/s vs power over every feasible plan and size (up-left is better)"
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=110)
    plt.close(fig)
    print(
        f"wrote {out}/workloads.md, workloads.png, pareto.png "
        f"in {time.perf_counter() - t_start:.0f} s"
    )


if __name__ == "__main__":
    main()
