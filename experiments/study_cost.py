"""Study: cost per million tokens of CloudMatrix 384 and GB200 NVL72, by region (issue 13).

    python experiments/study_cost.py [--out experiments/figures/study] [--jobs 2]

Workloads (as experiments/study_workloads.py): Llama 3 405B training (BF16, 8K sequences,
>= 4 Mi tokens per step) and DeepSeek-R1 serving, prefill (4K prompts, TTFT <= 2 s) and decode
(4K context, TPOT <= 50 ms, MTP at 70% acceptance), INT8 on CloudMatrix 384 and FP8 on NVL72;
1,152 chips of each (3 supernodes, 16 racks). Every plan comes from emu's search
(`emu.search.gradient_search`, then `plan_of`) with the registered objective `usd_per_mtoken`
(minimised; `Problem(cost=(Cost, Region))` prices each configuration) in us_average, facility
charged on the full-load IT power of the chips; the command-line equivalent is e.g.

    emu search --system cloudmatrix384 --model deepseek_r1 --phase decode --precision int8 \
        --seq-len 4096 --chips 1152 --context 4096 --mtp-accept 0.7 \
        --objective usd_per_mtoken --region us_average

Decode batches are then filled to the TPOT SLO (`emu.policy.largest_batch`) when that stays in
HBM. The same plan is priced in every region (the plan barely depends on the electricity
price; the crossovers below hold the plan fixed).

Costs: emu.cost (the model) with configs/costs/<system>.toml and configs/regions/*.toml
(loaded by emu.costs_catalog). For scale, NVL72
is also priced at SemiAnalysis's all-in 2.21 USD per GPU-hour (facts §28).

Crossovers, solved by Newton's method on jax.grad (`emu.cost.newton`), holding plans fixed:
- the capital cost per 910C package at which CloudMatrix 384 matches NVL72 per token;
- the B200 price at which NVL72 would lose its lead;
- one electricity price paid by both at which they match (negative: no price does);
- the CloudMatrix throughput (x emu's) at which it matches;
- the NVL72 utilisation at which it matches CloudMatrix at the default 80%.

Writes cost.md and cost.png under --out; prints the tables. Nothing is cached.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from emu.cli import positive_int

SYSTEMS = {"cloudmatrix384": "CloudMatrix 384", "gb200_nvl72": "GB200 NVL72"}
SHORT = {"cloudmatrix384": "CM384", "gb200_nvl72": "NVL72"}
COLORS = {"cloudmatrix384": "#c0392b", "gb200_nvl72": "#2e86c1"}
#: (label, model, phase, seq_len)
WORKLOADS = (
    ("Llama 3 405B train", "llama3_405b", "train", 8192),
    ("DeepSeek-R1 prefill", "deepseek_r1", "prefill", 4096),
    ("DeepSeek-R1 decode", "deepseek_r1", "decode", 4096),
)
REGIONS = ("us_average", "us_iowa", "china_coast", "china_dc_subsidy", "south_africa")
SEARCH_REGION = "us_average"
CHIPS = 1152
TTFT_SLO, TPOT_SLO, MTP_ACCEPT = 2.0, 0.05, 0.7
SA_HOURLY_GB200 = 2.21  # facts §28, SA-TCO per GPU-hour


def solve(system_name: str, workload: tuple) -> dict:
    """The plan of least cost per token (emu search), evaluated exactly; floats only."""
    import emu
    from emu import costs_catalog as K
    from emu.policy import largest_batch
    from emu.power import full_load_power
    from emu.search import Problem, gradient_search, plan_of
    from emu.struct import replace

    _, model_name, phase, seq = workload
    system, model = emu.load_system(system_name), emu.load_model(model_name)
    price = (K.load_cost(system_name), K.load_region(SEARCH_REGION))

    prec = "bf16" if phase == "train" else ("int8" if system_name == "cloudmatrix384" else "fp8")
    kw = {}
    if phase != "train":
        kw = dict(ttft_slo=TTFT_SLO) if phase == "prefill" else {}
        if phase == "decode":  # a prefill problem reads no TPOT SLO, KV context or MTP drafts
            kw.update(tpot_slo=TPOT_SLO, context=4096, mtp_accept=MTP_ACCEPT)
    problem = Problem(
        system_name, model_name, CHIPS, seq_len=seq, precision=prec, phase=phase,
        objective="usd_per_mtoken", cost=price, **kw,
    )  # fmt: skip
    t0 = time.perf_counter()
    res = gradient_search(system, model, problem)
    wall = time.perf_counter() - t0
    row = res.best
    if row is None:
        raise ValueError(f"no feasible plan for {system_name} {workload[0]}")
    plan = plan_of(problem, row)
    r = emu.evaluate(system, model, plan)
    batch = int(row["microbatch"])
    if phase == "decode":  # the search's batch is a power of two: fill to the SLO
        n = largest_batch(system, model, plan, TPOT_SLO)
        if n > batch:
            p2 = replace(plan, microbatch=jnp.float32(n), global_batch=plan.dp * n)
            r2 = emu.evaluate(system, model, p2)
            if float(r2.feasible) > 0.5:
                plan, r = p2, r2
    return {
        "row": {k: v for k, v in row.items() if isinstance(v, int | float)},
        "search_usd_per_mtoken": row["usd_per_mtoken"],
        "batch": int(float(plan.microbatch)),
        "search_s": wall,
        "n_chips": float(r.n_chips),
        "tokens_per_s": float(r.tokens_per_s),
        "power_w": float(r.power_w),
        "provisioned_w": float(full_load_power(system, r.n_chips).it_w),
        "mfu": float(r.mfu),
        "feasible": float(r.feasible) > 0.5,
    }


def plan_text(phase: str, r: dict) -> str:
    p = r["row"]
    if phase != "train":
        return f"tp{p['tp']} dp{p['dp']} ep{p['ep']} b{r['batch']}"
    rec = ("none", "selective", "full")[int(p["recompute"])]
    s = f"tp{p['tp']} pp{p['pp']} dp{p['dp']} cp{p['cp']} mb{p['microbatch']}"
    if p["vpp"] > 1:
        s += f" vpp{p['vpp']}"
    return s + f" zero{p['zero']} {rec}" + (" sp" if p["sp"] else "")


def price(cost, region, r: dict):
    from emu import cost as C

    return C.run_cost(
        cost,
        region,
        n_chips=r["n_chips"],
        power_w=r["power_w"],
        tokens_per_s=r["tokens_per_s"],
        provisioned_w=r["provisioned_w"],
    )


def split(c) -> str:
    """'hardware + facility + energy = **total**' USD per million tokens of a CostBreakdown."""
    k = float(c.usd_per_mtoken) / float(c.usd_per_hour)  # USD per hour -> USD per Mtok
    hw, fac, en = (
        k * float(v) for v in (c.hardware_usd_per_hour, c.facility_usd_per_hour,
                               c.energy_usd_per_hour)
    )  # fmt: skip
    return f"{hw:.3g} + {fac:.3g} + {en:.3g} = **{float(c.usd_per_mtoken):.3g}**"


def crossovers(costs: dict, region, cm: dict, nv: dict) -> dict:
    """Parity points of CloudMatrix 384 vs NVL72 per token, by Newton on jax.grad."""
    from emu import cost as C
    from emu.struct import replace

    cmc, nvc = costs["cloudmatrix384"], costs["gb200_nvl72"]

    def usd(cost, reg, r, tps_scale=1.0):
        return C.usd_per_mtoken(
            cost,
            reg,
            n_chips=r["n_chips"],
            power_w=r["power_w"],
            tokens_per_s=r["tokens_per_s"] * tps_scale,
            provisioned_w=r["provisioned_w"],
        )

    nv_usd, cm_usd = usd(nvc, region, nv), usd(cmc, region, cm)
    out = {}
    # capital cost per 910C: linear in the price, so the root may be negative (= impossible)
    x, ok = C.newton(
        lambda x: usd(replace(cmc, chip_usd=x), region, cm) - nv_usd,
        float(cmc.chip_usd),
        log_space=False,
    )
    out["chip_910c_usd"] = x if ok else float("nan")
    x, ok = C.newton(lambda x: usd(replace(nvc, chip_usd=x), region, nv) - cm_usd, 35000.0)
    out["chip_b200_usd"] = x if ok else float("nan")

    def common_price(x):
        reg = replace(region, electricity_usd_per_kwh=x, subsidised_electricity_usd_per_kwh=x)
        return usd(cmc, reg, cm) - usd(nvc, reg, nv)

    x, ok = C.newton(common_price, 0.08, log_space=False)
    out["electricity_usd_per_kwh"] = x if ok else float("nan")
    x, ok = C.newton(lambda m: usd(cmc, region, cm, m) - nv_usd, 1.0)
    out["cm_throughput_x"] = x if ok else float("nan")
    x, ok = C.newton(lambda u: usd(replace(nvc, utilisation=u), region, nv) - cm_usd, 0.5)
    out["nvl72_utilisation"] = x if ok else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/figures/study")
    ap.add_argument("--jobs", type=positive_int, default=2, help="searches run at once (processes)")
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        ap.error(f"--out '{out}' is a file; give a folder for the figures and tables")
    try:  # the figures' library, an extra: said before the searches run
        import matplotlib
    except ImportError:
        ap.error("the figures need matplotlib: pip install 'cluster-emu[plot]'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emu import costs_catalog as K
    from emu.struct import replace

    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    tasks = [(w, s) for w in WORKLOADS for s in SYSTEMS]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        futs = {(w[0], s): pool.submit(solve, s, w) for w, s in tasks}
        runs = {k: f.result() for k, f in futs.items()}

    costs = {s: K.load_cost(s) for s in SYSTEMS}
    regions = {g: K.load_region(g) for g in REGIONS}
    sa = replace(costs["gb200_nvl72"], hourly_usd_per_chip=jnp.float32(SA_HOURLY_GB200))
    table = {}
    for w in WORKLOADS:
        for g in REGIONS:
            for s in SYSTEMS:
                table[(w[0], g, s)] = price(costs[s], regions[g], runs[(w[0], s)])

    lines = [
        f"{CHIPS} chips of each; plans from `emu search` (gradient_search) minimising cost per "
        f"token in {SEARCH_REGION}; training BF16, serving INT8 (CM384) / FP8 (NVL72). Cost "
        "per million tokens (training: tokens trained; prefill: prompt tokens; decode: output "
        "tokens) with utilisation 80%, hardware life 4 years, facility 25 USD/W over 10 years.",
        "",
        "| workload | system | plan (emu search) | tokens/s per chip | IT kW | MFU | search s |",
        "|---|---|---|---|---|---|---|",
    ]
    for w in WORKLOADS:
        for s in SYSTEMS:
            r = runs[(w[0], s)]
            lines.append(
                f"| {w[0]} | {SYSTEMS[s]} | {plan_text(w[2], r)} | "
                f"{r['tokens_per_s'] / r['n_chips']:.4g} | {r['power_w'] / 1e3:.0f} | "
                f"{100 * r['mfu']:.1f}% | {r['search_s']:.0f} |"
                + ("" if r["feasible"] else " INFEASIBLE")
            )
    lines += [
        "",
        "USD per million tokens (hardware + facility + energy = total; energy share). "
        "`NVL72 @SA` prices NVL72 at SemiAnalysis's all-in 2.21 USD per GPU-hour instead.",
        "",
        "| workload | region | USD/kWh CM / NVL | CM384 USD/Mtok | NVL72 USD/Mtok | "
        "CM / NVL | energy share CM / NVL | NVL72 @SA |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for w in WORKLOADS:
        for g in REGIONS:
            c, n = table[(w[0], g, "cloudmatrix384")], table[(w[0], g, "gb200_nvl72")]
            at_sa = price(sa, regions[g], runs[(w[0], "gb200_nvl72")])
            lines.append(
                f"| {w[0]} | {g} | {float(c.electricity_usd_per_kwh):.4f} / "
                f"{float(n.electricity_usd_per_kwh):.4f} | {split(c)} | {split(n)} | "
                f"{float(c.usd_per_mtoken) / float(n.usd_per_mtoken):.2f}x | "
                f"{100 * float(c.energy_share):.0f}% / {100 * float(n.energy_share):.0f}% | "
                f"{float(at_sa.usd_per_mtoken):.3g} |"
            )
    lines += [
        "",
        "Crossovers (Newton on jax.grad, plans held fixed): the value at which CloudMatrix 384 "
        "and NVL72 cost the same per token. A negative price means no price does it.",
        "",
        "| workload | region | 910C capital USD (now "
        f"{float(costs['cloudmatrix384'].chip_usd):,.0f}) | B200 price USD (now "
        f"{float(costs['gb200_nvl72'].chip_usd):,.0f}) | common electricity USD/kWh | "
        "CM384 tokens/s x | NVL72 utilisation (CM at 80%) |",
        "|---|---|---|---|---|---|---|",
    ]
    cross = {}
    for w in WORKLOADS:
        for g in REGIONS:
            x = crossovers(
                costs, regions[g], runs[(w[0], "cloudmatrix384")], runs[(w[0], "gb200_nvl72")]
            )
            cross[(w[0], g)] = x
            lines.append(
                f"| {w[0]} | {g} | {x['chip_910c_usd']:,.0f} | {x['chip_b200_usd']:,.0f} | "
                f"{x['electricity_usd_per_kwh']:.3f} | {x['cm_throughput_x']:.2f} | "
                f"{100 * x['nvl72_utilisation']:.0f}% |"
            )
    ratio = [
        float(table[(w[0], g, "cloudmatrix384")].usd_per_mtoken)
        / float(table[(w[0], g, "gb200_nvl72")].usd_per_mtoken)
        for w in WORKLOADS
        for g in REGIONS
    ]
    share = [
        100 * float(table[(w[0], g, "cloudmatrix384")].energy_share)
        for w in WORKLOADS
        for g in REGIONS
    ]
    chip = [x["chip_910c_usd"] for x in cross.values()]
    util = [100 * x["nvl72_utilisation"] for x in cross.values()]
    tput = [x["cm_throughput_x"] for x in cross.values()]
    lines += [
        "",
        f"Summary: CloudMatrix 384 costs {min(ratio):.2f}-{max(ratio):.2f}x NVL72 per token "
        f"across these workloads and regions. Electricity is {min(share):.0f}-{max(share):.0f}% "
        "of CloudMatrix's cost, so cheap or subsidised power moves the ratio by a few percent; "
        "the gap is capital per token (hardware, and facility capital sized by power). Parity "
        f"needs a 910C capital cost of {max(chip):,.0f} USD or less (negative: not even a free "
        f"chip suffices), or {min(tput):.2f}-{max(tput):.2f}x emu's CloudMatrix throughput, or "
        f"NVL72 busy only {min(util):.0f}-{max(util):.0f}% of the year.",
        "",
        "Estimates (say so when quoting): every capital cost (BER 3.4 M USD per NVL72 rack, "
        "capacitymedia 'up to 8.2 M USD' per CM384, both secondary; the split into chips, "
        "hosts, network and optics is assumed, and the 910C price is the remainder of the "
        "CM384 total); switch-port and transceiver prices (a vendor blog); facility capex "
        "25 USD/W (secondary); 4-year hardware life; 80% utilisation; every PUE; the China "
        "coastal and inland prices; South Africa's Megaflex average (energy charge only, "
        "network and capacity charges excluded). Measured or published: the EIA US prices, "
        "the FT's 0.4 CNY/kWh subsidised price, the exchange rates. The tokens/s are emu's "
        "predictions. NVIDIA GB200 cannot be bought new in China (export controls): NVL72 rows "
        "in the China regions are hypothetical.",
    ]
    text = "\n".join(lines)
    (out / "cost.md").write_text(text + "\n")
    print(text)

    # cost.png: one panel per workload; per region, CM384 and NVL72 stacked bars
    fig, axes = plt.subplots(1, len(WORKLOADS), figsize=(16, 5.2))
    x = np.arange(len(REGIONS))
    wd = 0.38
    parts = [
        ("hardware_usd_per_hour", "hardware", 1.0),
        ("facility_usd_per_hour", "facility", 0.6),
        ("energy_usd_per_hour", "energy", 0.3),
    ]
    for ax, w in zip(axes, WORKLOADS, strict=True):
        for j, s in enumerate(SYSTEMS):
            bottom = np.zeros(len(REGIONS))
            for key, lab, alpha in parts:
                vals = np.array(
                    [
                        float(getattr(table[(w[0], g, s)], key))
                        * 1e6
                        / (3600.0 * runs[(w[0], s)]["tokens_per_s"])
                        for g in REGIONS
                    ]
                )
                ax.bar(
                    x + (j - 0.5) * wd, vals, wd, bottom=bottom, color=COLORS[s], alpha=alpha,
                    label=f"{SHORT[s]} {lab}", edgecolor="white", linewidth=0.5,
                )  # fmt: skip
                bottom += vals
            for xi, v in zip(x, bottom, strict=True):
                ax.text(xi + (j - 0.5) * wd, v, f"{v:.3g}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [g.replace("_", "\n") for g in REGIONS], fontsize=8)
        ax.set_ylabel("USD per million tokens")
        ax.set_title(w[0])
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=9, frameon=False)
    fig.suptitle(
        f"Cost per million tokens, {CHIPS} chips each, plans from emu search "
        "(left bar CloudMatrix 384, right NVL72; capital costs are estimates)",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out / "cost.png", dpi=100)
    plt.close(fig)
    print(f"wrote {out}/cost.md, cost.png in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
