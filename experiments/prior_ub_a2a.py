"""The Unified Bus MoE kernels' fixed costs that CloudMatrix-Infer's own all-to-all
measurement (not a row of the measurement set) implies, as candidate priors for
`dispatch_latency_s` and `combine_latency_s` of [link.ub] in
configs/calibration/defaults.toml (tried as priors and judged by leave-one-source-out in
session 11, not shipped: docs/history.md, "Validation and calibration, by session", "Tried
in session 11 and not shipped").

    python experiments/prior_ub_a2a.py

CloudMatrix-Infer Table 7 (arXiv:2506.12708; facts §26): CM-Infer's UB dispatch and combine
kernels with 128 tokens per rank (DeepSeek-R1: hidden 7,168, top-8, INT8 dispatch, BF16
combine) take 116/131/133/141/152/152 us to dispatch at EP 8/16/32/64/128/256 and combine at
131/117/105/103/103/103 GB/s per rank (T K b / time). With every other UB parameter at its
prior (a2a_efficiency, a2a_peer_penalty, a2a_latency_hiding), the script finds the fixed cost
alpha of each kernel whose modelled times match the table best (the kernels are called
without a token count, so session 17's per-copy floor `a2a_message_s` stays off, as in
session 11's model) (least squares in log time
over the six group sizes, a grid of 1 us steps) and prints the table beside the model
(printed in session 11: 125 us dispatch, 61 us combine, against the shipped priors' 20 us;
the model is flatter in EP than the table, within 13% of it).

Caveat on the bytes: the combine times assume Table 7's GB/s count T K 2h bytes per rank
(BF16 combine, as DeepEP-Ascend states for its own kernels; facts §26 does not say). Its
dispatch pairs imply ~8.2 MB per rank (71 GB/s x 116 us), 12% more than T K (h + 4), so if
the combine's bytes are counted the same way its times are ~12% longer and its fixed cost
higher than printed. The constants below copy emu's validation defaults for the DeepEP-Ascend
rows (`emu.validation`'s collective rows; private there, so copied).
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import numpy as np

from emu import collectives
from emu.catalog import calibration, load_system
from emu.struct import replace

#: the DeepSeek-V3/R1 kernel profile of CM Table 7 (as emu's validation of the DeepEP-Ascend
#: rows): 128 tokens per rank, top-8, one copy INT8 h + one FP32 scale (dispatch), BF16 2 h
LOW_LATENCY_TOKENS, MOE_TOP_K, HIDDEN = 128, 8, 7168
TOKEN_BYTES = {"int8": HIDDEN + 4.0, "bf16": 2.0 * HIDDEN}
EP = (8, 16, 32, 64, 128, 256)
DISPATCH_US = (116.0, 131.0, 133.0, 141.0, 152.0, 152.0)
COMBINE_GBPS = (131.0, 117.0, 105.0, 103.0, 103.0, 103.0)


def _times(system, alpha, combine: bool) -> np.ndarray:
    """Modelled kernel times (us), shape (len(alpha), len(EP)): the fixed costs `alpha`
    (seconds, an array) broadcast through one evaluation per group size."""
    field = ("combine" if combine else "dispatch") + "_latency_s"
    alpha = jnp.asarray(alpha, jnp.float32)
    tiers = tuple(replace(t, **{field: alpha}) if t.link == "ub" else t for t in system.tiers)
    s = replace(system, tiers=tiers)
    nbytes = jnp.float32(LOW_LATENCY_TOKENS * TOKEN_BYTES["bf16" if combine else "int8"])
    cols = [
        collectives.moe_all_to_all_time(
            s, nbytes, float(MOE_TOP_K), jnp.float32(ep), dedup=0.0, combine=combine
        )
        for ep in EP
    ]
    return 1e6 * np.stack([np.broadcast_to(np.asarray(c), alpha.shape) for c in cols], axis=1)


def _best(system, measured_us, combine: bool) -> tuple[int, np.ndarray]:
    """The fixed cost on a 1-300 us grid with the least squared log error, and its times."""
    grid = np.arange(1, 301)
    t = _times(system, grid * 1e-6, combine)
    err = (np.log(t / np.asarray(measured_us)) ** 2).sum(axis=1)
    k = int(np.argmin(err))
    return int(grid[k]), t[k]


def main() -> None:
    system = load_system("cloudmatrix384", calibration=calibration(fitted=False))
    combine_bytes = LOW_LATENCY_TOKENS * MOE_TOP_K * TOKEN_BYTES["bf16"]
    combine_us = [combine_bytes / (g * 1e9) * 1e6 for g in COMBINE_GBPS]
    for name, meas, comb in (("dispatch", DISPATCH_US, False), ("combine", combine_us, True)):
        alpha, t = _best(system, meas, comb)
        print(f"UB {name}: fixed cost {alpha} us (other UB parameters at their priors)")
        print("  EP       " + "".join(f"{e:>8d}" for e in EP))
        print("  CM T7 us " + "".join(f"{m:8.0f}" for m in meas))
        print("  model us " + "".join(f"{p:8.0f}" for p in t))


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help
    main()
