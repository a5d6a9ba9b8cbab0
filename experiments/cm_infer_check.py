"""CloudMatrix-Infer's published results against emu, out of sample.

The CloudMatrix paper (Zuo et al., arXiv:2506.12708; facts §5) is not a source of the
measurement set, so emu was never fitted to it: its decode and prefill figures for
DeepSeek-R1 (INT8) on CloudMatrix 384 are a check of the seed system that no fit has seen.
Each is run through `emu run` as published (the plan the paper states, the validation
rule's defaults for what it does not: production expert imbalance 1.18 and two-micro-batch
overlap of the all-to-alls, as `emu.validation` models serving rows), at the shipped
calibration.

    python experiments/cm_infer_check.py            # table
    python experiments/cm_infer_check.py --json     # machine-readable

Columns: the figure, its source table, the measured value, emu's, emu / measured, and
whether the measurement lies in emu's 80% interval. Decode figures are tokens/s per NPU
package at the stated batch per NPU (half per die) and TPOT; the per-layer latencies are
emu's decode step over DeepSeek-R1's 61 layers.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

#: (label, source, phase, batch per NPU, context or prompt, MTP acceptance, imbalance,
#: measured value, unit); decode on one instance of 160 NPUs = 320 dies, EP320 with DP320
#: attention; prefill on one instance of 16 NPUs = 32 dies, EP32 (facts §5, CM §5.1)
FIGURES = [
    ("decode b96, KV 4K, TPOT 49.4 ms", "CM Table 4", "decode", 96, 4096, 0.7, 1.18, 1943.0,
     "tok/s/NPU"),
    ("decode 1K/1K b128, TPOT 46.8 ms", "CM Table 5", "decode", 128, 1024 + 512, 0.7, 1.18,
     2733.0, "tok/s/NPU"),
    ("decode 2K/256 b112, TPOT 47.4 ms", "CM Table 5", "decode", 112, 2048 + 128, 0.7, 1.18,
     2360.0, "tok/s/NPU"),
    ("decode 30 ms SLO b24, TPOT 24.6 ms", "CM Table 5", "decode", 24, 4096, 0.7, 1.18, 974.0,
     "tok/s/NPU"),
    ("decode 15 ms SLO b8, TPOT 14.9 ms", "CM Table 5", "decode", 8, 4096, 0.7, 1.18, 538.0,
     "tok/s/NPU"),
    ("decode layer b96 with MTP", "CM §5.4.2", "layer", 96, 4096, 0.7, 1.18, 1260.0, "us"),
    ("decode layer b96 without MTP", "CM §5.4.2", "layer", 96, 4096, 0.0, 1.18, 874.0, "us"),
    ("prefill 4K, 16K tokens/NPU, default EPLB", "CM Table 3", "prefill", 4, 4096, 0.0, 1.18,
     5655.0, "tok/s/NPU"),
    ("prefill 4K, 16K tokens/NPU, perfect EPLB", "CM Table 3", "prefill", 4, 4096, 0.0, 1.0,
     6688.0, "tok/s/NPU"),
]  # fmt: skip
LAYERS = 61  # DeepSeek-R1


def _run(phase: str, batch: int, length: int, mtp: float, imbalance: float) -> dict:
    """`emu run --json` of one figure's plan (no SLO: the batch is the paper's)."""
    decode = phase in ("decode", "layer")
    ranks = 320 if decode else 32
    args = [
        sys.executable, "-m", "emu", "run", "--model", "deepseek_r1", "--system",
        "cloudmatrix384", "--precision", "int8", "--chips", str(ranks // 2), "--tp", "1",
        "--dp", str(ranks), "--ep", str(ranks), "--batch", str(batch // 2),
        "--moe-imbalance", str(imbalance), "--a2a-overlap", "--json",
    ]  # fmt: skip
    if decode:
        # the MTP rate as stated, 0 included (emu's serving rule would otherwise add its own)
        args += ["--phase", "decode", "--context", str(length), "--tpot-slo", "10"]
        args += ["--mtp-accept", str(mtp)]
    else:
        args += ["--phase", "prefill", "--seq-len", str(length), "--ttft-slo", "100"]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main(as_json: bool = False) -> None:
    table = []
    for label, src, phase, batch, length, mtp, imb, measured, unit in FIGURES:
        r = _run(phase, batch, length, mtp, imb)
        iv = r["interval"]
        if phase == "layer":
            value = r["step_time_s"] / LAYERS * 1e6
            lo, hi = iv["step_time_s"]["low"], iv["step_time_s"]["high"]
            lo, hi = lo / LAYERS * 1e6, hi / LAYERS * 1e6
        else:
            value = r["tokens_per_s_per_chip"]
            scale = value / r["tokens_per_s"]
            lo, hi = iv["tokens_per_s"]["low"] * scale, iv["tokens_per_s"]["high"] * scale
        table.append({
            "figure": label, "source": src, "unit": unit, "measured": measured,
            "emu": value, "ratio": value / measured, "log_error": math.log(value / measured),
            "interval": [lo, hi], "inside": lo <= measured <= hi,
        })  # fmt: skip
    if as_json:
        print(json.dumps(table, indent=1))
        return
    print(f"{'figure':42s} {'source':11s} {'measured':>9s} {'emu':>9s} {'emu/meas':>8s}  in 80%")
    for t in table:
        print(
            f"{t['figure']:42s} {t['source']:11s} {t['measured']:9.0f} {t['emu']:9.0f} "
            f"{t['ratio']:8.2f}  {'yes' if t['inside'] else 'no'} "
            f"[{t['interval'][0]:.0f}, {t['interval'][1]:.0f}] {t['unit']}"
        )
    errs = sorted(abs(t["log_error"]) for t in table)
    inside = sum(t["inside"] for t in table)
    print(
        f"median |log error| {errs[len(errs) // 2]:.3f}; inside the 80% interval: {inside} of "
        f"{len(table)}"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    main(ap.parse_args().json)
