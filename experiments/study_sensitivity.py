"""Which hardware numbers move tokens per joule? CloudMatrix 384 vs GB200 NVL72.

    python experiments/study_sensitivity.py [--out experiments/figures/study] [--top 12]

Llama 3 70B training at sequence length 8192 on one unit of each system (384 NPUs, 72 GPUs),
with the plan rule's plan (`emu.policy.auto_plan`). `emu.analysis.sensitivity` gives, from one
reverse-mode pass, the elasticity d ln(y) / d ln(x) of y = tokens/J and y = tokens/s for every
float field x of the system. Writes sensitivity.png (grouped horizontal bars of the largest
|elasticity of tokens/J| across both systems) and sensitivity.md (every parameter).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import emu
from emu.analysis import sensitivity
from emu.cli import positive_int
from emu.policy import auto_plan
from emu.storage import enable_compilation_cache as enable_cache

SYSTEMS = (("cloudmatrix384", "CloudMatrix 384", 384), ("gb200_nvl72", "GB200 NVL72", 72))
MODEL, SEQ = "llama3_70b", 8192
COLORS = ("#c0392b", "#2e86c1")

CATEGORIES = (
    "Compute",
    "Memory",
    "Chip power",
    "Scale-up network",
    "Scale-out network",
    "Network power",
    "Host",
    "Facility",
    "Software overlap",
    "System size",
)
TIER_NAMES = {
    "ub_node": "UB node",
    "ub_supernode": "UB supernode",
    "roce": "RoCE",
    "nvlink": "NVLink",
    "scale_out": "IB",
}
# "†": a shared efficiency, latency, activity or overlap parameter of emu's model
# (configs/calibration), not a datasheet number.
CHIP_LABELS = {
    "chip.hbm_bytes_per_s": ("Memory", "HBM bandwidth"),
    "chip.hbm_efficiency": ("Memory", "HBM efficiency†"),
    "chip.hbm_bytes": ("Memory", "HBM capacity"),
    "chip.matmul_efficiency": ("Compute", "matmul efficiency†"),
    "chip.lowp_matmul_efficiency": ("Compute", "8/4-bit matmul efficiency†"),
    "chip.matmul_half_dim": ("Compute", "matmul half-efficiency size†"),
    "chip.grouped_matmul_efficiency": ("Compute", "grouped (MoE) GEMM efficiency†"),
    "chip.kernel_overhead_s": ("Compute", "kernel launch overhead†"),
    "chip.tdp_w": ("Chip power", "chip TDP"),
    "chip.idle_w": ("Chip power", "chip idle power"),
    "chip.matmul_power": ("Chip power", "activity power in matmuls†"),
    "chip.memory_power": ("Chip power", "activity power, memory-bound†"),
    "chip.comm_power": ("Chip power", "activity power, comm wait†"),
    "host.cpu_w": ("Host", "CPU power"),
    "host.cpus_per_chip": ("Host", "CPUs per chip"),
    "host.other_w_per_chip": ("Host", "other host W/chip (fans, DRAM, boards)"),
    "facility.psu_efficiency": ("Facility", "PSU efficiency"),
    "facility.pue": ("Facility", "PUE"),
    "n_chips": ("System size", "chips per unit"),
}
TIER_FIELDS = {
    "bytes_per_s": (None, "bandwidth"),
    "efficiency": (None, "link efficiency†"),
    "latency_s": (None, "step latency†"),
    "base_latency_s": (None, "call latency†"),
    "ring_chunking": (None, "ring chunking†"),
    "oversubscription": (None, "oversubscription"),
    "allreduce_speedup": (None, "in-switch all-reduce speed-up"),
    "domain_chips": (None, "domain size"),
    "switch_w_per_chip": ("Network power", "switch W/chip"),
    "optics_per_chip": ("Network power", "optics modules/chip"),
    "optic_w": ("Network power", "optics W/module"),
    "nic_w_per_chip": ("Network power", "NIC W/chip"),
}
# Pairs equal by construction (a product, or bandwidth x efficiency / oversubscription):
# the plot shows the first of each once; the table lists both.
ALIASES = {
    "chip.matmul_efficiency": "chip.peak_flops_per_s.bf16",
    "chip.hbm_efficiency": "chip.hbm_bytes_per_s",
    "host.cpus_per_chip": "host.cpu_w",
    "efficiency": "bytes_per_s",
    "oversubscription": "bytes_per_s",
    "optics_per_chip": "optic_w",
}


def tier_role(system, name: str) -> str:
    """Align tiers across systems: the innermost and the outermost tier by position."""
    names = [t.name for t in system.tiers]
    i = names.index(name)
    if i == len(names) - 1:
        return "scale-out"
    return "scale-up L1" if i == 0 else name


def canonical(system, path: str) -> tuple[str, str, str]:
    """(key shared across systems, category, short label) of a system field path."""
    if path.startswith("chip.peak_flops_per_s."):
        prec = path.rsplit(".", 1)[1]
        return path, "Compute", f"{prec.upper()} FLOP/s"
    if path in CHIP_LABELS:
        return (path, *CHIP_LABELS[path])
    if path.startswith("overlap."):
        what = path.split(".", 1)[1]
        return path, "Software overlap", f"{what.upper()} comm overlap†"
    if path.startswith("tiers."):
        _, tier, field = path.split(".", 2)
        role = tier_role(system, tier)
        cat, what = TIER_FIELDS.get(field, (None, field))
        if cat is None:
            cat = "Scale-out network" if role == "scale-out" else "Scale-up network"
        return f"{role}.{field}", cat, what
    return path, "Other", f"({path})"


def tier_label(role: str, names: list[str]) -> str:
    shown = " / ".join(dict.fromkeys(TIER_NAMES.get(n, n) for n in names))
    if role in ("scale-out", "scale-up L1"):
        return f"{role} ({shown})"
    return shown


def alias_of(key: str, row: dict) -> str | None:
    """The key of the row this one equals by construction, if any."""
    if not row["tiers"]:
        return ALIASES.get(key)
    head, field = key.rsplit(".", 1)
    return f"{head}.{ALIASES[field]}" if field in ALIASES else None


def collect(results: list[dict], systems: list) -> dict:
    """Rows keyed by the cross-system key: category, label, and per system (path, value,
    elasticity of tokens/J, elasticity of tokens/s)."""
    rows: dict[str, dict] = {}
    for k, (res, sys_) in enumerate(zip(results, systems, strict=True)):
        for path, e in res["elasticities"].items():
            key, cat, what = canonical(sys_, path)
            row = rows.setdefault(key, {"category": cat, "what": what, "tiers": [], "per": {}})
            if path.startswith("tiers."):
                row["tiers"].append(path.split(".")[1])
            row["per"][k] = (path, e["value"], e["tokens_per_joule"], e["tokens_per_s"])
    for key, row in rows.items():
        if row["tiers"]:
            row["label"] = f"{tier_label(key.rsplit('.', 1)[0], row['tiers'])} {row['what']}"
        else:
            row["label"] = row["what"]
    return rows


def size(row: dict) -> float:
    return max(abs(v[2]) for v in row["per"].values())


def check_aliases(rows: dict) -> list[str]:
    """Aliases shown once in the plot, after checking they really are equal in magnitude."""
    hidden = []
    for key, row in rows.items():
        target = alias_of(key, row)
        if target is None or target not in rows:
            continue
        same = all(
            abs(abs(v[2]) - abs(rows[target]["per"][k][2])) < 1e-4
            for k, v in row["per"].items()
            if k in rows[target]["per"]
        )
        if same:
            hidden.append(key)
    return hidden


def markdown(rows: dict, results: list[dict], names: list[str]) -> str:
    lines = [
        f"# Elasticities of tokens/J and tokens/s, Llama 3 70B training (seq {SEQ})",
        "",
        "Elasticity = d ln(y) / d ln(x): % change in y per % change in the parameter x, "
        "from `jax.grad` through `emu.evaluate` (`emu.analysis.sensitivity`). tokens/J counts "
        "IT power, so PUE has zero elasticity.",
        "",
    ]
    for name, res in zip(names, results, strict=True):
        p = res["plan"]
        lines.append(
            f"- {name}: TP {p['tp']:g} x PP {p['pp']:g} x DP {p['dp']:g} (VPP {p['vpp']:g}, "
            f"micro-batch {p['microbatch']:g}), global batch "
            f"{p['global_batch']:g} x {p['seq_len']:g} tokens, recompute {p['recompute']}; "
            f"{res['tokens_per_s']:,.0f} tokens/s, {res['tokens_per_joule']:.4f} tokens/J"
        )
    a, b = names
    lines += [
        "",
        f"| parameter | path | {a} value | {a} e(tok/J) | {a} e(tok/s) "
        f"| {b} value | {b} e(tok/J) | {b} e(tok/s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    zero = []
    for row in sorted(rows.values(), key=lambda r: -size(r)):
        per = row["per"]
        paths = list(dict.fromkeys(v[0] for v in per.values()))
        if all(abs(v[2]) < 5e-5 and abs(v[3]) < 5e-5 for v in per.values()):
            zero.append(" / ".join(paths))
            continue
        cells = []
        for k in range(2):
            if k in per:
                _, x, tpj, tps = per[k]
                cells += [f"{x:.4g}", f"{tpj:+.4f}", f"{tps:+.4f}"]
            else:
                cells += ["-", "-", "-"]
        path = " / ".join(f"`{p}`" for p in paths)
        lines.append(f"| {row['label']} | {path} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Zero (|elasticity| < 5e-5) in both systems: " + ", ".join(f"`{z}`" for z in zero) + ".",
        "",
        "† shared efficiency, latency, activity-power or overlap parameter of emu's model "
        "(configs/calibration), not a datasheet number. '-': the system has no such tier.",
    ]
    return "\n".join(lines) + "\n"


def plot(rows: dict, hidden: list[str], results: list[dict], names: list[str], top: int, path):
    try:  # the figures' library, an extra
        import matplotlib
    except ImportError:
        raise SystemExit("the figures need matplotlib: pip install 'cluster-emu[plot]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [k for k in rows if k not in hidden]
    chosen = sorted(shown, key=lambda k: -size(rows[k]))[:top]
    order = sorted(
        chosen,
        key=lambda k: (
            CATEGORIES.index(rows[k]["category"])
            if rows[k]["category"] in CATEGORIES
            else len(CATEGORIES),
            -size(rows[k]),
        ),
    )
    # y positions: a header line per category, then its rows (top to bottom)
    ys, labels, heads = [], [], []
    y = 0.0
    last = None
    for k in order:
        cat = rows[k]["category"]
        if cat != last:
            heads.append((y, cat))
            y -= 0.8
            last = cat
        ys.append(y)
        labels.append(rows[k]["label"])
        y -= 1.0
    h = 0.38
    fig, ax = plt.subplots(figsize=(12, 0.42 * (len(order) + len(heads)) + 2.6))
    for s, name in enumerate(names):
        vals = [rows[k]["per"].get(s, (None, 0, 0.0, 0.0))[2] for k in order]
        off = (0.5 - s) * h  # first system above, second below
        bars = ax.barh(
            [yy + off for yy in ys], vals, height=h, color=COLORS[s], label=name, zorder=3
        )
        for bar, v, k in zip(bars, vals, order, strict=True):
            if s not in rows[k]["per"]:
                txt, v = "n/a", 0.0
            else:
                txt = f"{v:+.2f}"
            ax.annotate(
                txt,
                (v, bar.get_y() + bar.get_height() / 2),
                xytext=(3 if v >= 0 else -3, 0),
                textcoords="offset points",
                ha="left" if v >= 0 else "right",
                va="center",
                fontsize=7.5,
                color="0.25",
            )
    ax.set_yticks(ys, labels, fontsize=9)
    for yy, cat in heads:
        ax.text(
            -0.01,
            yy,
            cat,
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="center",
            fontsize=9.5,
            fontweight="bold",
        )
        ax.axhline(yy + 0.5, color="0.8", lw=0.8, zorder=1)
    ax.axvline(0, color="black", lw=0.8, zorder=4)
    lim = max(size(rows[k]) for k in order) * 1.2
    ax.set_xlim(-lim, lim)
    ax.set_ylim(y + 0.5, 0.6)
    ax.grid(axis="x", color="0.9", zorder=0)
    ax.set_xlabel("elasticity: % change in tokens/J per % change in the parameter")
    plans = "  |  ".join(
        f"{n}: TP {r['plan']['tp']:g} x PP {r['plan']['pp']:g} (VPP {r['plan']['vpp']:g}) "
        f"x DP {r['plan']['dp']:g}, "
        f"{r['tokens_per_joule']:.2f} tokens/J"
        for n, r in zip(names, results, strict=True)
    )
    fig.suptitle(
        "Sensitivity of tokens per joule to hardware parameters\n"
        f"Llama 3 70B training, seq {SEQ}, one unit per system\n{plans}\n"
        "PUE has zero elasticity: emu's tokens/J counts IT power "
        "(facility power = PUE x IT power is reported separately)",
        fontsize=10,
        y=0.995,
    )
    pairs = []
    for k in hidden:
        if size(rows[k]) > 5e-3:
            other = rows[alias_of(k, rows[k])]
            sign = "=" if rows[k]["per"][0][2] * other["per"][0][2] > 0 else "= minus"
            pairs.append(f"{rows[k]['label']} {sign} {other['label']}")
    fig.text(
        0.01,
        0.01,
        f"Top {top} of {len(shown)} parameters by |elasticity of tokens/J| in either system; "
        "full list in sensitivity.md. † shared efficiency/activity/overlap parameter of emu's "
        "model (configs/calibration), not a datasheet number.\n"
        "Shown once (identical elasticity by construction): " + "; ".join(sorted(pairs)) + ".",
        fontsize=7.5,
        color="0.3",
        va="bottom",
        wrap=True,
    )
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout(rect=(0.08, 0.07, 1, 0.99))
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/figures/study")
    ap.add_argument("--top", type=positive_int, default=12, help="bars in the figure")
    args = ap.parse_args()
    enable_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = emu.load_model(MODEL)
    systems, results, names = [], [], []
    for name, title, chips in SYSTEMS:
        system = emu.load_system(name)
        plan = auto_plan(system, model, chips, seq_len=SEQ)
        systems.append(system)
        results.append(sensitivity(system, model, plan))
        names.append(title)
    rows = collect(results, systems)
    hidden = check_aliases(rows)
    md = markdown(rows, results, names)
    (out / "sensitivity.md").write_text(md)
    plot(rows, hidden, results, names, args.top, out / "sensitivity.png")
    print(md)
    print(
        f"wrote {out / 'sensitivity.png'} and {out / 'sensitivity.md'} "
        f"({time.perf_counter() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
