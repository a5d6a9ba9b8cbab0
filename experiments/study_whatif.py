"""Study 5: topology what-ifs, answered by gradient search.

    python experiments/study_whatif.py [--out experiments/figures/study] [--jobs 2]

1. Optics parity: at what power per optical transceiver would CloudMatrix 384 match GB200
   NVL72 in tokens/J on Llama 3 70B training (8K sequences, one unit each)? Each system's
   plan comes from `emu.search.gradient_search` (tokens/J). CloudMatrix's tokens/J as a
   function of a scale s on every tier's optic_w is a differentiable JAX function, so
   Newton's method with jax.grad finds the crossing if one exists; if even free optics
   (s = 0) fall short, the plan is searched again with free optics to make sure a
   different plan does not close the gap.
2. NVL72 with a larger NVLink domain: 576 GB200 GPUs whose NVLink domain is a search axis
   (`grid={"domain": 8 ... 576, "optics_share": ...}`; copper reaches 72 GPUs, so a domain D
   needs an optical share >= 1 - 72/D, and the optics' watts count), on DeepSeek-V3 and
   Llama 3 405B training, maximising tokens/J. One gradient search over plans x domain x
   optics per model gives the answer; one exhaustive sweep of the same space draws the
   curve (best tokens/J at each domain size) and checks the search.
3. Best scale-up domain size for a fixed power budget: GB200 GPUs under a 1 MW IT cap,
   DeepSeek-V3 training, maximising tokens/s; the chip count (432 ... 720) is a knob too,
   so a larger domain's optics cost GPUs. One gradient search, checked by one sweep.
The searches over the grid run with a larger budget than the default (32 starts, 100 steps,
16 polished): the domain and the optical share must move together, and the default budget
stopped at domain 72 in question 3. Writes whatif.md and whatif.png.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq

import emu
from emu.cli import positive_int
from emu.search import Problem, gradient_search, plan_of, sweep, write_table
from emu.struct import replace

DOMAINS = [8, 18, 36, 72, 144, 288, 576]
#: the least optical share each domain above 72 needs (1 - 72/D), and none
SHARES = [0.0, 0.5, 0.75, 0.875]
GRID = {"domain": DOMAINS, "optics_share": SHARES}
BUDGET_W = 1.0e6
BUDGET_CHIPS = (432, 504, 576, 648, 720)
SEQ = {"llama3_70b": 8192, "llama3_405b": 8192, "deepseek_v3": 4096}
LABEL = {"llama3_405b": "Llama 3 405B", "deepseek_v3": "DeepSeek-V3", "llama3_70b": "Llama 3 70B"}


def optics_scaled(system, s):
    return replace(system, tiers=tuple(replace(t, optic_w=t.optic_w * s) for t in system.tiers))


def plan_text(row: dict) -> str:
    rec = ("none", "selective", "full")[int(row["recompute"])]
    s = f"tp{row['tp']} pp{row['pp']} dp{row['dp']} cp{row['cp']}"
    if row["ep"] > 1:
        s += f" ep{row['ep']}"
    return s + f" mb{row['microbatch']} zero{row['zero']} {rec}"


def load(system_name: str, optics_scale: float = 1.0):
    s = emu.load_system(system_name)
    return s if optics_scale == 1.0 else optics_scaled(s, optics_scale)


def n_chips(row: dict) -> int:
    return int(row["tp"] * row["pp"] * row["dp"] * row["cp"])


def search(system_name, model_name, chips, optics_scale=1.0, **kw):
    system = load(system_name, optics_scale)
    problem = Problem(system.name, model_name, chips, seq_len=SEQ[model_name], **{
        k: v for k, v in kw.items() if k in ("objective", "power_cap")
    })  # fmt: skip
    t0 = time.perf_counter()
    grid = kw.get("grid")
    # the grid's domain and optics share must move together: a larger budget than the
    # default finds the optimum more often (checked against the sweep below)
    budget = dict(starts=32, steps=100, polish=16) if grid else {}
    res = gradient_search(system, emu.load_model(model_name), problem, grid=grid, **budget)
    return problem, res, time.perf_counter() - t0


def exhaustive(system_name, model_name, chips, **kw):
    """Best objective at each (domain, optics share) point of GRID: one sweep, every row
    written (emu.search.write_table) and grouped."""
    system = emu.load_system(system_name)
    problem = Problem(system.name, model_name, chips, seq_len=SEQ[model_name], **kw)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        res = sweep(system, emu.load_model(model_name), problem, d, grid=GRID, top=1)
        path = write_table(res, Path(d) / "all.parquet")
        t = pq.read_table(path, columns=["domain", "optics_share", "objective", "feasible"])
    dom, obj = t.column("domain").to_numpy(), t.column("objective").to_numpy()
    ok = t.column("feasible").to_numpy() > 0.5
    curve = {}
    for dval in DOMAINS:
        m = ok & (dom == dval)
        curve[dval] = float(obj[m].max()) if m.any() else float("nan")
    return {"curve": curve, "best": res.best, "wall_s": time.perf_counter() - t0,
            "evaluations": res.evaluations}  # fmt: skip


def main() -> None:
    try:  # the figures' library, an extra
        import matplotlib
    except ImportError:
        raise SystemExit("the figures need matplotlib: pip install 'cluster-emu[plot]'") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/figures/study")
    ap.add_argument("--jobs", type=positive_int, default=2, help="searches run at once (processes)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    dom_models = ("deepseek_v3", "llama3_405b")
    cm, nv = "cloudmatrix384", "gb200_nvl72"
    ctx = multiprocessing.get_context("spawn")
    # one process per core (compilation is single-threaded); the longest jobs first
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        f_swcap = pool.submit(
            exhaustive, nv, "deepseek_v3", BUDGET_CHIPS, objective="tokens_per_s",
            power_cap=BUDGET_W,
        )  # fmt: skip
        f_sw = {m: pool.submit(exhaustive, nv, m, 576) for m in dom_models}
        f_cap = pool.submit(
            search, nv, "deepseek_v3", BUDGET_CHIPS, grid=GRID, objective="tokens_per_s",
            power_cap=BUDGET_W,
        )  # fmt: skip
        f_dom = {m: pool.submit(search, nv, m, 576, grid=GRID) for m in dom_models}
        f_cm = pool.submit(search, cm, "llama3_70b", 384)
        f_nv = pool.submit(search, nv, "llama3_70b", 72)
        f_free = pool.submit(search, cm, "llama3_70b", 384, optics_scale=0.0)
        (p_cm, r_cm, t_cm), (_, r_nv, t_nv), (_, r_free, _) = (
            f_cm.result(),
            f_nv.result(),
            f_free.result(),
        )
        dom = {m: f.result() for m, f in f_dom.items()}
        _, r_cap, t_cap = f_cap.result()
        sw = {m: f.result() for m, f in f_sw.items()}
        swcap = f_swcap.result()

    # 1. optics parity: Newton on tokens/J(s) - target with d/ds from jax.grad
    model, cm = emu.load_model("llama3_70b"), emu.load_system(cm)
    cm_plan, nv_tpj = plan_of(p_cm, r_cm.best), r_nv.best["tokens_per_joule"]

    def tpj_of(s):
        return emu.evaluate(optics_scaled(cm, s), model, cm_plan).tokens_per_joule

    tpj, dtpj = jax.jit(tpj_of), jax.jit(jax.grad(tpj_of))
    optic_w = max(float(t.optic_w) for t in cm.tiers)  # the UB and RoCE modules (same W)
    at_zero, at_one = float(tpj(jnp.float32(0.0))), float(tpj(jnp.float32(1.0)))
    free_best = r_free.best["tokens_per_joule"]
    if max(at_zero, free_best) < nv_tpj:
        crossing = None
        verdict = (
            f"**not reachable**: even free optics give CloudMatrix 384 {at_zero:.3g} tokens/J "
            f"with today's plan and {free_best:.3g} with a plan searched for free optics "
            f"({plan_text(r_free.best)}), {100 * max(at_zero, free_best) / nv_tpj:.0f}% of "
            f"NVL72's {nv_tpj:.3g}"
        )
    else:
        s = jnp.float32(0.5)
        for _ in range(20):
            s = s - (tpj(s) - nv_tpj) / dtpj(s)
        crossing = float(s) * optic_w
        verdict = f"crossing at **{crossing:.2f} W per transceiver** (today {optic_w:g} W)"
    lines = [
        "## 1. Optics power at which CloudMatrix 384 matches NVL72 in tokens/J",
        "",
        "Llama 3 70B training, 8K sequences, BF16; plans from `emu search` (tokens/J).",
        "",
        f"- CloudMatrix 384 (384 NPUs): {at_one:.3g} tokens/J with {plan_text(r_cm.best)}"
        f" (search {t_cm:.0f} s)",
        f"- GB200 NVL72 (72 GPUs): {nv_tpj:.3g} tokens/J with {plan_text(r_nv.best)}"
        f" (search {t_nv:.0f} s)",
        f"- d(tokens/J)/d(W per transceiver) at today's {optic_w:g} W: "
        f"{float(dtpj(jnp.float32(1.0))) / optic_w:.3g} per W (jax.grad)",
        f"- {verdict}",
        "",
    ]
    ss = jnp.linspace(0.0, 2.0, 41, dtype=jnp.float32)
    curve = np.asarray(jax.vmap(tpj)(ss))

    # 2. larger NVLink domain at 576 GPUs
    lines += [
        "## 2. NVL72 with a larger NVLink domain (576 GB200 GPUs, tokens/J)",
        "",
        "Gradient search over plans x NVLink domain x optical share (copper reaches 72 GPUs); "
        "exhaustive sweep of the same space for the curve.",
        "",
        "| model | NVLink domain | " + " | ".join(str(d) for d in DOMAINS) + " | search's best |",
        "|---|---|" + "---|" * len(DOMAINS) + "---|",
    ]
    for m in dom_models:
        b = dom[m][1].best
        lines.append(
            f"| {LABEL[m]} | best tokens/J (sweep) | "
            + " | ".join(f"{sw[m]['curve'][d]:.3g}" for d in DOMAINS)
            + f" | domain {b['domain']:g}, optics {b['optics_share']:g}: "
            f"{b['tokens_per_joule']:.3g} tokens/J, {plan_text(b)} |"
        )
    lines.append("")
    for m in dom_models:
        r, s_ = dom[m][1], sw[m]
        lines.append(
            f"- {LABEL[m]}: gradient search {r.evaluations} evaluations in "
            f"{dom[m][2]:.0f} s, {100 * r.best['objective'] / s_['best']['objective']:.1f}% "
            f"of the sweep's optimum ({s_['evaluations']} evaluations, {s_['wall_s']:.0f} s; "
            f"domain {s_['best']['domain']:g})"
        )
    # 3. fixed power budget
    b = r_cap.best
    nchips = n_chips(b)
    lines += [
        "",
        f"## 3. Best scale-up domain for a fixed {BUDGET_W / 1e6:g} MW IT budget "
        "(GB200 GPUs, DeepSeek-V3 training, tokens/s)",
        "",
        "| NVLink domain | " + " | ".join(str(d) for d in DOMAINS) + " |",
        "|---|" + "---|" * len(DOMAINS),
        "| best tokens/s (sweep) | "
        + " | ".join(f"{swcap['curve'][d]:.4g}" for d in DOMAINS)
        + " |",
        "",
        f"- gradient search ({t_cap:.0f} s, {r_cap.evaluations} evaluations): **domain "
        f"{b['domain']:g}** (optical share {b['optics_share']:g}), {nchips} GPUs, "
        f"{b['tokens_per_s']:.4g} tokens/s at {b['power_w'] / 1e3:.0f} kW, "
        f"{b['tokens_per_joule']:.3g} tokens/J, {plan_text(b)}; "
        f"{100 * b['objective'] / swcap['best']['objective']:.1f}% of the sweep's optimum "
        f"(domain {swcap['best']['domain']:g}, "
        f"{n_chips(swcap['best'])} GPUs)",
    ]
    text = "\n".join(lines)
    (out / "whatif.md").write_text(text + "\n")
    print(text)

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(17, 5))
    a1.plot(np.asarray(ss) * optic_w, curve, color="#c0392b", label="CloudMatrix 384 (384 NPUs)")
    a1.axhline(nv_tpj, color="#2e86c1", ls="--", label="GB200 NVL72 (72 GPUs), today")
    a1.axvline(optic_w, color="grey", ls=":", lw=1)
    xt = a1.get_xaxis_transform()
    a1.text(optic_w, 0.02, f" today: {optic_w:g} W", color="grey", fontsize=8, transform=xt)
    if crossing is not None:
        a1.plot([crossing], [nv_tpj], "k*", ms=12, label=f"parity at {crossing:.2f} W")
    else:
        a1.plot([0], [free_best], "^", color="#c0392b", label="CM384, plan searched at 0 W")
        a1.annotate(
            f"free optics: {100 * max(at_zero, free_best) / nv_tpj:.0f}% of NVL72",
            (0, max(at_zero, free_best)), (1.0, 1.2), fontsize=9, color="#c0392b",
            arrowprops=dict(arrowstyle="->", color="#c0392b"),
        )  # fmt: skip
    a1.set_ylim(0, nv_tpj * 1.15)
    a1.set_xlabel("CloudMatrix optical transceiver power (W per module)")
    a1.set_ylabel("tokens per joule (IT power)")
    a1.set_title("1. Llama 3 70B training: transceiver power vs tokens/J")
    a1.legend(fontsize=8, loc="center right")
    a1.grid(alpha=0.3)
    colors = {"deepseek_v3": "#8e44ad", "llama3_405b": "#27ae60"}
    for m in dom_models:
        ref = sw[m]["curve"][72]
        a2.plot(
            DOMAINS, [sw[m]["curve"][d] / ref for d in DOMAINS], "o-", color=colors[m],
            label=f"{LABEL[m]}: best plan per domain (sweep); 72 = {ref:.3g} tokens/J",
        )  # fmt: skip
        bst = dom[m][1].best
        a2.plot(
            [bst["domain"]], [bst["tokens_per_joule"] / ref], "*", color=colors[m], ms=16,
            mec="k", label=f"{LABEL[m]}: gradient search's pick (domain {bst['domain']:g})",
        )  # fmt: skip
    a2.axhline(1.0, color="grey", lw=0.8)
    a2.axvline(72, color="grey", ls=":", lw=1)
    a2.text(
        72,
        0.97,
        " NVL72 today",
        color="grey",
        fontsize=8,
        va="top",
        transform=a2.get_xaxis_transform(),
    )
    a2.set_xscale("log", base=2)
    a2.set_xticks(DOMAINS, [str(d) for d in DOMAINS])
    a2.set_xlabel("NVLink domain size (GPUs); > 72 needs optics; 576 GB200 GPUs in all")
    a2.set_ylabel("tokens/J relative to a 72-GPU domain")
    a2.set_title("2. NVL72 with a larger NVLink domain (training)")
    a2.legend(fontsize=7.5, loc="lower right")
    a2.grid(alpha=0.3)
    a3.plot(DOMAINS, [swcap["curve"][d] / 1e6 for d in DOMAINS], "o-", color="#8e44ad",
            label="best plan and GPU count per domain (sweep)")  # fmt: skip
    a3.plot([b["domain"]], [b["tokens_per_s"] / 1e6], "*", color="#8e44ad", ms=16, mec="k",
            label=f"gradient search's pick: domain {b['domain']:g}, {nchips} GPUs")  # fmt: skip
    a3.axvline(72, color="grey", ls=":", lw=1)
    a3.text(
        72,
        0.97,
        " NVL72 today",
        color="grey",
        fontsize=8,
        va="top",
        transform=a3.get_xaxis_transform(),
    )
    a3.set_xscale("log", base=2)
    a3.set_xticks(DOMAINS, [str(d) for d in DOMAINS])
    a3.set_xlabel("NVLink domain size (GPUs); GPU count 432-720 chosen within the cap")
    a3.set_ylabel("DeepSeek-V3 training throughput (million tokens/s)")
    a3.set_title(f"3. Best domain under a {BUDGET_W / 1e6:g} MW IT budget (GB200 GPUs)")
    a3.legend(fontsize=8, loc="lower right")
    a3.grid(alpha=0.3)
    fig.suptitle("Topology what-ifs (emu; plans and topology from gradient search)")
    fig.tight_layout()
    fig.savefig(out / "whatif.png", dpi=100)
    plt.close(fig)
    print(f"wrote {out}/whatif.md and whatif.png in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
