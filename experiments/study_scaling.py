"""Scaling Llama 3 405B training from one unit to ~100k chips: CloudMatrix 384 vs GB200 NVL72.

    python experiments/study_scaling.py [--out experiments/figures/study] [--repeats 5]

A fixed global batch of 16 Mi tokens (2,048 sequences of 8,192; rounded up to a multiple of
dp) and a fixed model split per system, over ranks (a 910C is two dies, each a rank with
64 GB): CloudMatrix 384 TP 8 x PP 6 (48 dies = 24 NPUs per replica, dp = 2 x chips / 48)
with full recomputation (selective needs ~130 GB per die there), GB200 NVL72 TP 8 x PP 9
(one rack per replica, dp = racks) with selective recomputation; micro-batch 1, 1F1B,
ZeRO-1. Chip counts are powers of two of the unit (384 ...
98,304 NPUs; 72 ... 73,728 GPUs, plus 98,280), joined by each system's scale-out network.
`emu.evaluate` is compiled once per system (the plan's degrees are float leaves) and timed at
every size. Writes scaling.png (tokens/s per chip and tokens/J vs chips) and scaling.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import jax

import emu
from emu.cli import positive_int
from emu.storage import enable_compilation_cache as enable_cache

MODEL, SEQ, BATCH_SEQS, TP = "llama3_405b", 8192, 2048, 8
# (catalog name, title, unit chips, pipeline degree, units per point, recomputation)
SYSTEMS = (
    ("cloudmatrix384", "CloudMatrix 384", 384, 6, [2**k for k in range(9)], "full"),
    ("gb200_nvl72", "GB200 NVL72", 72, 9, [2**k for k in range(11)] + [1365], "selective"),
)
COLORS = ("#c0392b", "#2e86c1")


def plan_for(ranks: int, pp: int, recompute: str):
    """The plan over `ranks` (chips x dies per chip): TP x PP fixed, DP the rest."""
    dp = ranks // (TP * pp)
    assert dp * TP * pp == ranks, (ranks, pp)
    gb = dp * math.ceil(BATCH_SEQS / dp)
    return emu.make_plan(tp=TP, pp=pp, dp=dp, global_batch=gb, seq_len=SEQ, recompute=recompute)


def sweep(repeats: int) -> tuple[list[dict], dict]:
    model = emu.load_model(MODEL)
    evaluate = jax.jit(emu.evaluate)
    rows, compile_s = [], {}
    for name, title, unit, pp, units, rc in SYSTEMS:
        system = emu.load_system(name)
        dies = int(system.chip.dies_per_chip)
        t0 = time.perf_counter()
        jax.block_until_ready(evaluate(system, model, plan_for(unit * units[0] * dies, pp, rc)))
        compile_s[title] = time.perf_counter() - t0
        for u in units:
            chips = unit * u
            plan = plan_for(chips * dies, pp, rc)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                r = jax.block_until_ready(evaluate(system, model, plan))
                times.append(time.perf_counter() - t0)
            b, m = r.breakdown, r.memory
            rows.append(
                {
                    "system": title,
                    "chips": chips,
                    "units": u,
                    "tp": TP,
                    "pp": pp,
                    "recompute": rc,
                    "dies": dies,
                    "dp": int(plan.dp),
                    "global_batch": int(plan.global_batch),
                    "microbatches": int(plan.global_batch) // int(plan.dp),
                    "step_s": float(r.step_time_s),
                    "tokens_per_s": float(r.tokens_per_s),
                    "tokens_per_s_per_chip": float(r.tokens_per_s_per_chip),
                    "tokens_per_joule": float(r.tokens_per_joule),
                    "power_mw": float(r.power_w) / 1e6,
                    "mfu": float(r.mfu),
                    "bubble_share": float(b.bubble_s) / float(b.total_s),
                    "exposed_dp_s": float(b.exposed_dp_s),
                    "mem_gb": float(m.total_bytes) / 1e9,
                    "cap_gb": float(m.capacity_bytes) / 1e9,
                    "feasible": float(r.feasible) > 0.5,
                    "eval_ms": 1e3 * statistics.median(times),
                }
            )
    return rows, compile_s


def markdown(rows: list[dict], compile_s: dict, repeats: int) -> str:
    lines = [
        f"# Llama 3 405B training scaling (seq {SEQ}, global batch {BATCH_SEQS} sequences "
        "= 16 Mi tokens, rounded up to a multiple of dp)",
        "",
        "Plans over ranks (a 910C is two dies, each a rank): CloudMatrix 384 TP 8 x PP 6 with "
        "full recomputation (selective does not fit in a die's 64 GB), GB200 NVL72 TP 8 x PP 9 "
        "with selective recomputation; DP = the remaining ranks; micro-batch 1, 1F1B, ZeRO-1. "
        "tokens/J counts IT power. HBM GB is per rank (per die on CloudMatrix). "
        "'OOM': the plan does not fit in HBM (kept in the table, marked in the figure). "
        f"eval ms: median of {repeats} calls of the compiled `emu.evaluate` "
        "(compile: " + ", ".join(f"{k} {v:.2f} s" for k, v in compile_s.items()) + ").",
        "",
        "Where 2048 is not a multiple of dp the batch rounds up, so that point is not at the "
        "same batch as the others: "
        + "; ".join(
            f"{r['system']} {r['chips']:,} chips (dp {r['dp']:,}): {r['global_batch']:,} sequences"
            for r in rows
            if r["global_batch"] != BATCH_SEQS
        )
        + ".",
        "",
        "| system | chips | units | dp | global batch | micro-batches/rank | step s | "
        "tokens/s | tokens/s/chip | MFU | bubble share | IT MW | tokens/J | HBM GB "
        "| fits | eval ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['system']} | {r['chips']:,} | {r['units']} | {r['dp']} | "
            f"{r['global_batch']} | {r['microbatches']} | {r['step_s']:.2f} | "
            f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_chip']:.1f} | {r['mfu']:.3f} | "
            f"{r['bubble_share']:.2f} | {r['power_mw']:.3f} | {r['tokens_per_joule']:.4f} | "
            f"{r['mem_gb']:.0f}/{r['cap_gb']:.0f} | {'yes' if r['feasible'] else 'OOM'} | "
            f"{r['eval_ms']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path) -> None:
    try:  # the figures' library, an extra
        import matplotlib
    except ImportError:
        raise SystemExit("the figures need matplotlib: pip install 'cluster-emu[plot]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    panels = (
        ("tokens_per_s_per_chip", "throughput per chip (tokens/s per chip)"),
        ("tokens_per_joule", "energy efficiency (tokens/J, IT power)"),
    )
    any_oom = False
    for ax, (key, ylabel) in zip(axes, panels, strict=True):
        for (_, title, _unit, pp, _, rc), color in zip(SYSTEMS, COLORS, strict=True):
            rs = [r for r in rows if r["system"] == title]
            x = [r["chips"] for r in rs]
            y = [r[key] for r in rs]
            ax.plot(
                x,
                y,
                "-",
                color=color,
                lw=1.8,
                label=f"{title} (TP {TP} x PP {pp} over ranks, {rc} recompute)",
            )
            ok = [r["feasible"] for r in rs]
            ax.plot(
                [a for a, f in zip(x, ok, strict=True) if f],
                [b for b, f in zip(y, ok, strict=True) if f],
                "o",
                color=color,
                ms=5,
            )
            bad = [(a, b) for a, b, f in zip(x, y, ok, strict=True) if not f]
            if bad:
                any_oom = True
                ax.plot(*zip(*bad, strict=True), "x", color="black", ms=9, mew=2, zorder=5)
                ax.plot(
                    *zip(*bad, strict=True), "o", mfc="white", mec=color, ms=9, mew=1.5, zorder=4
                )
            odd = [r for r in rs if r["global_batch"] != BATCH_SEQS]
            for r in odd:
                ax.annotate(
                    f"batch {r['global_batch']} seqs\n(multiple of DP {r['dp']})",
                    (r["chips"], r[key]),
                    xytext=(-6, 10),
                    textcoords="offset points",
                    ha="right",
                    fontsize=7.5,
                    color=color,
                    bbox={"fc": "white", "ec": "none", "alpha": 0.85, "pad": 1},
                )
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax.set_xlabel("chips (NPUs or GPUs), log scale")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", color="0.88")
        ax.grid(True, which="minor", axis="x", color="0.95")
    axes[0].set_title("Throughput per chip")
    axes[1].set_title("Tokens per joule")
    handles, labels = axes[0].get_legend_handles_labels()
    if any_oom:
        handles.append(Line2D([], [], marker="x", color="black", ls="none", ms=9, mew=2))
        labels.append("plan does not fit in HBM (OOM)")
    axes[0].legend(handles, labels, fontsize=8.5, loc="lower left")
    fig.suptitle(
        f"Llama 3 405B training, seq {SEQ}, fixed global batch of 16 Mi tokens "
        f"({BATCH_SEQS} sequences, rounded up to a multiple of DP): one unit to ~100k chips\n"
        "micro-batch 1, 1F1B, ZeRO-1 (ranks: a 910C is two dies). With a fixed batch the "
        "micro-batches per pipeline fall as DP grows, so the pipeline bubble takes over at "
        "scale.\ntokens/J counts IT power (PUE not included)",
        fontsize=10.5,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/figures/study")
    ap.add_argument("--repeats", type=positive_int, default=5, help="timed calls per size")
    args = ap.parse_args()
    enable_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, compile_s = sweep(args.repeats)
    md = markdown(rows, compile_s, args.repeats)
    (out / "scaling.md").write_text(md)
    plot(rows, out / "scaling.png")
    print(md)
    for title in compile_s:
        ms = [r["eval_ms"] for r in rows if r["system"] == title]
        print(
            f"{title}: compile {compile_s[title]:.2f} s; one evaluation {min(ms):.2f}-"
            f"{max(ms):.2f} ms over {len(ms)} sizes "
            f"({rows[[r['system'] for r in rows].index(title)]['chips']:,} to "
            f"{max(r['chips'] for r in rows if r['system'] == title):,} chips)"
        )
    print(
        f"wrote {out / 'scaling.png'} and {out / 'scaling.md'} ({time.perf_counter() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
