"""Study 1: CloudMatrix 384 vs GB200 NVL72 (and GB300 NVL72) system table, from the configs.

    python experiments/study_systems.py [--out experiments/figures/study]

Peak compute per precision, HBM capacity and bandwidth, scale-up and scale-out bandwidth,
full-load IT power and their per-watt ratios, all computed from the parts by
`emu.analysis.describe`, with SemiAnalysis's published ratios beside them (facts §4).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emu.analysis import describe
from emu.catalog import load_system

SYSTEMS = ("cloudmatrix384", "gb200_nvl72", "gb300_nvl72")
#: SemiAnalysis, CM384 / NVL72 (facts §4 "efficiency ratios"; secondary)
PUBLISHED = {
    "dense BF16 PFLOP/s": 1.7,
    "HBM TB": 3.6,
    "HBM TB/s": 2.1,
    "power kW": 3.9,
    "W per BF16 FLOP/s": 2.3,
    "W per HBM TB/s": 1.8,
    "W per HBM TB": 1.1,
}


def rows() -> dict:
    out = {}
    for name in SYSTEMS:
        d = describe(load_system(name))
        up = d["tiers"][-2] if len(d["tiers"]) > 1 else d["tiers"][0]
        out[name] = {
            "chips": d["n_chips"],
            "dense BF16 PFLOP/s": d["peak_flops_per_s"].get("bf16", 0) / 1e15,
            "dense FP8 PFLOP/s": d["peak_flops_per_s"].get("fp8", 0) / 1e15,
            "dense INT8 POPS": d["peak_flops_per_s"].get("int8", 0) / 1e15,
            "HBM TB": d["hbm_bytes"] / 1e12,
            "HBM TB/s": d["hbm_bytes_per_s"] / 1e12,
            "scale-up TB/s (uni)": up["total_bytes_per_s"] / 1e12,
            "scale-out TB/s (uni)": d["tiers"][-1]["total_bytes_per_s"] / 1e12,
            "power kW": d["power_w"] / 1e3,
        }
        r = out[name]
        r["W per BF16 FLOP/s"] = d["power_w"] / (r["dense BF16 PFLOP/s"] * 1e15)
        r["W per HBM TB/s"] = d["power_w"] / r["HBM TB/s"]
        r["W per HBM TB"] = d["power_w"] / r["HBM TB"]
        r["BF16 TFLOP/s per kW"] = 1e3 * r["dense BF16 PFLOP/s"] / r["power kW"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="experiments/figures/study")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r = rows()
    cm, nv = r["cloudmatrix384"], r["gb200_nvl72"]
    keys = list(cm)
    lines = [
        "| quantity | CloudMatrix 384 | GB200 NVL72 | GB300 NVL72 | CM384 / NVL72 (emu) "
        "| CM384 / NVL72 (SemiAnalysis) |",
        "|---|---|---|---|---|---|",
    ]
    for k in keys:
        ratio = cm[k] / nv[k] if nv[k] else float("nan")
        pub = PUBLISHED.get(k)
        lines.append(
            f"| {k} | {cm[k]:.4g} | {nv[k]:.4g} | {r['gb300_nvl72'][k]:.4g} | "
            f"{ratio:.2f}x | {f'{pub:.1f}x' if pub else '-'} |"
        )
    text = "\n".join(lines)
    (out / "systems.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
