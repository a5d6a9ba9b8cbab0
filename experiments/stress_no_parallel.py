"""Stress test of the row rules: every shipped row with its `parallel` fields blanked.

    python experiments/stress_no_parallel.py [file]    # ~3-4 min on 2 cores (session 30)
    python experiments/stress_no_parallel.py --blank shape   # the models' shapes instead
    python experiments/stress_no_parallel.py --blank each    # one parallel field at a time
    python experiments/stress_no_parallel.py --blank degrees # training plans, batch kept

Predicts every row of the measurement set (default: the shipped one) twice, as published
and with `parallel` set to null (the plan left to emu's documented defaults), and prints
how many rows are modelled and the median error by kind for both. Not a benchmark of
accuracy (the rows ran with their stated plans); a check that rows which state less are
still modelled, and how much a source's own plan is worth. Prints the rows that fail.
`--blank shape` nulls each model's n_layers, d_model, n_heads, n_kv_heads, d_ff and vocab
instead, keeping its name, seq_len and MoE fields: a row that names a catalog model then
takes the catalog's shape (`emu.validation.DENSE_CATALOG`); the others cannot be built.
`--blank each` nulls one parallel field at a time (global batch, micro-batch, tp, pp, dp,
ep; ~3 min) and counts the rows still modelled. `--blank batch` nulls the global batch
and micro-batch of every run (train, prefill, decode), `--blank precision` every row's
precision, `--blank seq` every run's model.seq_len: rows that leave these out read their
notes or take documented defaults (`emu validate`'s `approximates` says which).
`--blank degrees` nulls a training row's degrees, VPP and micro-batch (tp, pp, dp, cp, ep,
vpp, microbatch) and keeps its global batch, ZeRO stage and recomputation: a run that
states its batch but not how it split it takes the plan rule's plan at that batch. Each table
also gives the 90th percentile and the rows more than 100% off, by kind and over the rows
blanked (the runs, or every row for precision). `--rows` adds each run's signed error as
stated and blanked, with the plan the rule took.
"""

from __future__ import annotations

import argparse
import statistics

from emu.validation import MODEL_FIELDS, default_measurements, read_rows, validate_rows


def _shapeless(row: dict) -> dict:
    """`row` with its model's shape fields (MODEL_FIELDS) null."""
    m = row.get("model")
    if not isinstance(m, dict):
        return row
    return {**row, "model": {**m, **dict.fromkeys(MODEL_FIELDS)}}


#: the parallel fields `--blank each` nulls one at a time
EACH = ("global_batch", "microbatch", "tp", "pp", "dp", "ep")
#: the fields `--blank degrees` nulls on training rows
DEGREES = ("tp", "pp", "dp", "cp", "ep", "vpp", "microbatch")
RUNS = ("train", "prefill", "decode")


def _blanked(row: dict, what: str) -> dict:
    """`row` with the fields `--blank what` nulls (unchanged where it has none of them)."""
    if what == "parallel":
        return {**row, "parallel": None}
    if what == "shape":
        return _shapeless(row)
    if what == "precision":
        return {**row, "precision": None}
    m, p = row.get("model"), row.get("parallel")
    if row.get("kind") not in RUNS:
        return row
    if what == "degrees" and isinstance(p, dict) and row.get("kind") == "train":
        return {**row, "parallel": {**p, **dict.fromkeys(DEGREES)}}
    if what == "batch" and isinstance(p, dict):
        return {**row, "parallel": {**p, "global_batch": None, "microbatch": None}}
    if what == "seq" and isinstance(m, dict):
        return {**row, "model": {**m, "seq_len": None}}
    return row


def _stats(errors: list[float]) -> str:
    """median, 90th percentile and rows more than 100% off of absolute % errors."""
    e = sorted(errors)
    p90 = e[min(len(e) - 1, int(0.9 * len(e)))]
    return f"{statistics.median(e):7.1f}% {p90:7.1f}% {sum(x > 100 for x in e):5d}"


def _each(rows: list[dict]) -> None:
    """Every row with one parallel field at a time set to null: how many are modelled."""
    total = ok = 0
    for key in EACH:
        res = validate_rows(
            [{**r, "parallel": {**(r.get("parallel") or {}), key: None}} for r in rows]
        )
        good = sum(x["status"] == "ok" for x in res)
        total, ok = total + len(res), ok + good
        print(f"{key:13} blanked: {good} of {len(res)} modelled")
        for r, x in zip(rows, res, strict=True):
            if x["status"] != "ok":
                print(f"  not modelled: {r['id']}: {x.get('reason')}")
    print(f"all: {ok} of {total}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("file", nargs="?", help="measurements (default: the shipped set)")
    ap.add_argument(
        "--blank",
        choices=("parallel", "shape", "each", "batch", "precision", "seq", "degrees"),
        default="parallel",
        help="what to null",
    )
    ap.add_argument(
        "--rows",
        action="store_true",
        help="also print each run's signed error (predicted / measured - 1) as stated and "
        "blanked, and the plan rule's plan where it took one",
    )
    args = ap.parse_args()
    try:
        rows, _ = read_rows(args.file or default_measurements())
    except ValueError as e:  # a missing or unreadable file: its one line
        ap.error(str(e))
    if args.blank == "each":
        _each(rows)
        return
    stated = validate_rows(rows)
    blank = validate_rows([_blanked(r, args.blank) for r in rows])
    ok = [x for x in blank if x["status"] == "ok"]
    print(f"modelled with {args.blank} blanked: {len(ok)} of {len(blank)}")
    print(f"{'kind':12} {'rows':>5} {'median, blanked':>16} {'median, as stated':>18}"
          f"   blanked: {'median':>7} {'p90':>8} {'>100%':>5}")  # fmt: skip
    touched = {"batch": RUNS, "seq": RUNS, "degrees": ("train",)}.get(
        args.blank, (*RUNS, "collective")
    )
    for kind in (*RUNS, "collective", "blanked"):
        kinds = touched if kind == "blanked" else (kind,)
        e = [x["abs_pct_error"] for x in ok if x["kind"] in kinds]
        e0 = [x["abs_pct_error"] for x in stated if x["status"] == "ok" and x["kind"] in kinds]
        if e:
            print(f"{kind:12} {len(e):5d} {statistics.median(e):15.1f}% "
                  f"{statistics.median(e0):17.1f}%   {'':8}{_stats(e)}")  # fmt: skip
    for r, x in zip(rows, blank, strict=True):
        if x["status"] != "ok":
            print(f"  not modelled: {r['id']}: {x.get('reason')}")
    if args.rows:
        _per_row(rows, stated, blank)


def _signed(x: dict) -> str:
    if x["status"] != "ok":
        return "     -"
    return f"{x['predicted'] / x['measured'] - 1:+6.0%}"


def _per_row(rows: list[dict], stated: list[dict], blank: list[dict]) -> None:
    """Each run: its error (predicted / measured - 1, on the metric as published: a time
    metric's sign is the speed's opposite) as stated and blanked, and the rule's plan."""
    print(f"\n{'row':52} {'stated':>7} {'blanked':>7}  plan rule's plan")
    for r, a, b in zip(rows, stated, blank, strict=True):
        if r.get("kind") not in RUNS:
            continue
        said = [t for t in b.get("approximates") or [] if "plan rule" in t]
        plan = said[0].split("plan rule", 1)[1].strip(" '") if said else ""
        print(f"{r['id'][:52]:52} {_signed(a):>7} {_signed(b):>7}  {plan[:70]}")


if __name__ == "__main__":
    main()
