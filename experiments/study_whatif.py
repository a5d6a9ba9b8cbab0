"""Study 5: topology what-ifs.

    python experiments/study_whatif.py [--out experiments/figures/study]

1. Optics: how cheap would CloudMatrix 384's transceivers have to be for it to match GB200
   NVL72 in tokens/J on Llama 3 70B training (each system with its best plan from an
   exhaustive sweep)? tokens/J as a function of a scale s on every tier's optic_w is a
   differentiable JAX function, so Newton's method with jax.grad finds the crossing if one
   exists; otherwise the script reports how far even free optics (s = 0) leave it.
2. Scale-up domain size: GB200 NVL72 racks rebuilt with NVLink domains of 8 to 576 GPUs,
   576 GPUs in all (the same chips and power), on DeepSeek-V3 and Llama 3 405B training,
   each with its best plan: the tokens/J each domain size allows. This covers "NVL72 with a
   larger NVLink domain" (NVL144, NVL288, NVL576).
Writes whatif.md and whatif.png.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp

from emu.config import load_model, load_system
from emu.objective import evaluate
from emu.runner import enable_cache
from emu.search import Problem, plan_of, sweep
from emu.struct import replace


def best_plan(system, model, chips, seq_len=8192):
    problem = Problem(system.name, model.name, chips, seq_len=seq_len)
    with tempfile.TemporaryDirectory() as d:
        res = sweep(system, model, problem, d, top=1)
    return plan_of(problem, res["best"]), res["best"]["tokens_per_joule"]


def optics_scaled(system, s):
    return replace(system, tiers=tuple(replace(t, optic_w=t.optic_w * s) for t in system.tiers))


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
    lines = []

    # 1. optics
    model = load_model("llama3_70b")
    cm, nv = load_system("cloudmatrix384"), load_system("gb200_nvl72")
    cm_plan, cm_tpj = best_plan(cm, model, 384)
    nv_plan, nv_tpj = best_plan(nv, model, 72)
    tpj = jax.jit(lambda s: evaluate(optics_scaled(cm, s), model, cm_plan).tokens_per_joule)
    dtpj = jax.jit(
        jax.grad(lambda s: evaluate(optics_scaled(cm, s), model, cm_plan).tokens_per_joule)
    )
    at_zero = float(tpj(jnp.float32(0.0)))
    optic_w = max(float(t.optic_w) for t in cm.tiers)  # the UB/RoCE modules (same W)
    if at_zero < nv_tpj:
        verdict = (
            f"not reachable: even free optics give CloudMatrix 384 {at_zero:.3g} tokens/J"
            f", {100 * at_zero / nv_tpj:.0f}% of NVL72's {nv_tpj:.3g}"
        )
    else:
        s = jnp.float32(0.5)
        for _ in range(20):  # Newton on tpj(s) - target, gradient from jax.grad
            s = s - (tpj(s) - nv_tpj) / dtpj(s)
        verdict = f"crossing at {float(s) * optic_w:.2f} W per transceiver"
    lines += [
        "## Optics",
        "",
        f"- CloudMatrix 384 best plan: {cm_tpj:.3g} tokens/J; GB200 NVL72: {nv_tpj:.3g}",
        f"- d(tokens/J)/d(optics scale) at today's {optic_w:g} W/module: "
        f"{float(dtpj(jnp.float32(1.0))):.3g} per unit scale",
        f"- {verdict}",
        "",
    ]
    ss = jnp.linspace(0.0, 2.0, 21, dtype=jnp.float32)
    curve = jax.vmap(tpj)(ss)

    # 2. scale-up domain size
    sizes = [8, 18, 36, 72, 144, 288, 576]
    dom = {}
    for mname in ("deepseek_v3", "llama3_405b"):
        m = load_model(mname)
        seq = 4096 if mname == "deepseek_v3" else 8192
        vals = []
        for size in sizes:
            sysd = replace(
                nv, tiers=(replace(nv.tiers[0], domain_chips=jnp.float32(size)), *nv.tiers[1:])
            )
            _, v = best_plan(sysd, m, 576, seq_len=seq)
            vals.append(v)
        dom[mname] = vals
    lines += [
        "## Scale-up domain size (576 GB200 GPUs, best plan each)",
        "",
        "| NVLink domain | " + " | ".join(str(s) for s in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for mname, vals in dom.items():
        lines.append(f"| {mname} tokens/J | " + " | ".join(f"{v:.3g}" for v in vals) + " |")
    text = "\n".join(lines)
    (out / "whatif.md").write_text(text + "\n")
    print(text)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.6))
    a1.plot(ss * optic_w, curve, color="#c0392b", label="CloudMatrix 384")
    a1.axhline(nv_tpj, color="#2e86c1", ls="--", label="GB200 NVL72 (today)")
    a1.set_xlabel("CloudMatrix optical transceiver power (W per module)")
    a1.set_ylabel("tokens per joule (IT)")
    a1.set_title("Llama 3 70B training: optics power vs tokens/J")
    a1.legend()
    a1.grid(alpha=0.3)
    for mname, vals in dom.items():
        a2.plot(sizes, vals, "o-", label=mname)
    a2.set_xscale("log", base=2)
    a2.set_xticks(sizes, [str(s) for s in sizes])
    a2.set_xlabel("NVLink domain size (GPUs), 576 GB200 GPUs in all")
    a2.set_ylabel("tokens per joule (IT), best plan")
    a2.set_title("What a larger NVLink domain buys")
    a2.legend()
    a2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "whatif.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
