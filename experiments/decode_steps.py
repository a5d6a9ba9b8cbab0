"""Decode rows that also print their TPOT: emu's decode step against the measured one.

A serving row's metric is its throughput per card, which mixes the decode step with the
deployment (prefill share, first-wave ramp). Rows whose notes also give the mean TPOT (and,
with speculative decoding, the accept length) let the decode step be checked alone: the
measured step is TPOT x accept length (tokens accepted per sequence per step), emu's the
`inference_step` of the row's decode plan, at the shipped calibration.

    python experiments/decode_steps.py                 # every row with a TPOT in its notes
    python experiments/decode_steps.py sglang_a3       # rows whose id contains the text

Columns: the row, emu's decode plan (TP, DP, EP, batch per rank), measured TPOT and accept
length, measured step (ms), emu's step (ms) and accept length, and the step's ratio
emu / measured (> 1: emu's step is slower), then the row's throughput error in sample
(predicted / measured - 1 at the shipped fit), and, for a deployment row (`ServingRow`),
the throughput error emu's deployment rule would make with the *measured* TPOT in place of
its own decode step ("at TPOT"): D = the decode instance's running sequences / TPOT, emu's
prefill rate P, composed as `emu.validation.serving_rate` composes them. It isolates the
deployment rule (prefill share, first wave) from the decode step model.
"""

from __future__ import annotations

import argparse
import re
import sys

import numpy as np

from emu.objective import evaluate
from emu.parallelism import speculation
from emu.step import inference_step
from emu.validation import (
    chips_per_unit,
    default_measurements,
    deployment_rate,
    predict_items,
    prepare_rows,
    read_rows,
)

NUM = r"(\d+(?:\.\d+)?)"
TPOT = re.compile(rf"tpot (?:of )?{NUM} ?ms")
ACCEPT = re.compile(rf"accept(?:ance)? length {NUM}|accept {NUM}")
#: an MTP draft accepted at a rate: accept length 1 + rate
RATE = re.compile(rf"acceptance rate of (?:about )?{NUM}%")


def _first(pattern: re.Pattern, text: str) -> float | None:
    m = pattern.search(text)
    return float(next(g for g in m.groups() if g)) if m else None


def _at_tpot(it, tpot_s: float) -> float | None:
    """Per-card throughput of a deployment row with the measured TPOT as its decode step
    (module doc); None for a row that is one instance."""
    sv = it.serving
    if sv is None:
        return None
    d = float(np.asarray(sv.decode.global_batch)) / tpot_s
    p = 0.0 if sv.prefill is None else evaluate(it.system, it.model, sv.prefill).tokens_per_s
    rate = deployment_rate(sv.mode, d, p, sv.prompt_len, sv.output_len, sv.ramp)
    return float(np.asarray(rate)) / sv.cards * chips_per_unit(it.row)


def main(pattern: str = "") -> None:
    rows, _ = read_rows(default_measurements())
    picked = [
        r for r in rows
        if r["kind"] == "decode" and pattern in r["id"] and _first(TPOT, r.get("notes", "").lower())
    ]  # fmt: skip
    if not picked:  # an empty table said nothing
        sys.exit(f"decode_steps.py: no decode row with a stated TPOT has '{pattern}' in its id.")
    items, failures = prepare_rows(picked)
    for f in failures:
        print(f"{f['id']}: not modelled ({f['reason']})")
    predicted, _ = predict_items(items)
    head = (
        "row | tp/dp/ep/batch | TPOT ms | accept | step ms | emu step ms | emu accept | ratio"
        " | throughput | at TPOT"
    )
    print(head)
    print("-" * len(head))
    for it, pred in zip(items, predicted, strict=True):
        notes = it.row.get("notes", "").lower()
        tpot = _first(TPOT, notes)
        emu_accept = float(np.asarray(speculation(it.model, it.plan)[1]))
        accept = _first(ACCEPT, notes)
        if accept is None and _first(RATE, notes) is not None:
            accept = 1.0 + _first(RATE, notes) / 100.0
        accept = emu_accept if accept is None else accept  # not stated: emu's
        plan = it.plan
        step = inference_step(it.system, it.model, plan)
        emu_ms = float(np.asarray(step.total_s)) * 1e3
        measured_ms = tpot * accept
        err = float(np.asarray(pred)) / it.base["measured"] - 1.0
        at = _at_tpot(it, tpot / 1e3)
        at_text = "" if at is None else f" | {at / it.base['measured'] - 1.0:+.0%}"
        degrees = "/".join(str(int(float(x))) for x in (plan.tp, plan.dp, plan.ep, plan.microbatch))
        print(
            f"{it.base['id'][:44]:44s} | {degrees:14s} | {tpot:6.2f} | {accept:4.2f} | "
            f"{measured_ms:7.1f} | {emu_ms:7.1f} | {emu_accept:4.2f} | "
            f"{emu_ms / measured_ms:5.2f} | {err:+.0%}{at_text}"
        )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pattern", nargs="?", default="", help="only rows whose id contains it")
    main(ap.parse_args().pattern)
