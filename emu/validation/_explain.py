"""How emu modelled one measurement row (`emu validate --row ID`): the row's result (as in the
report), the step of each instance it ran (`analysis.run`: plan, breakdown, memory), how a
serving deployment composes them into the published figure, or what a collective row
measures. A row that is far off can then be read part by part instead of from its error.

The explanation rebuilds the row's item as the report does (`prepare_rows`) and computes the
published metric from the runs it shows (`RowExplanation.derived`, the `predicted` of its
`result`), one `analysis.run` per instance instead of the report's stacked, vmapped
evaluation; a test checks that both give the same figure on rows of every kind.
"""

from __future__ import annotations

import dataclasses
import difflib

from emu.analysis import interval_table, run
from emu.validation._collectives import (
    allreduce_algorithm,
    message_size,
    predict_allreduce_busbw,
    predict_moe_comm,
)
from emu.validation._predict import (
    chips_per_unit,
    deployment_rate,
    predict_metric,
    prepare_rows,
    with_referenced_notes,
)
from emu.validation._report import score_item
from emu.validation._rows import default_measurements, read_rows

__all__ = ["RowExplanation", "explain_row"]

#: close ids offered when the one asked for is not in the file
_SUGGESTIONS = 5


@dataclasses.dataclass(frozen=True)
class RowExplanation:
    """One row as emu modelled it.

    - `result`: the row's entry of the validation report (predicted, measured,
      abs_pct_error, status, reason, interval, inside, approximates, feasible);
    - `runs`: `analysis.run` objects (plan, breakdown, memory, intervals) of the steps the
      prediction is made of, named by `roles`: ["step"] for a training, prefill or decode
      row; ["decode instance", "prefill instance"] for a deployment (`deployment` set);
      empty for collective rows and rows that were not modelled;
    - `deployment`: for a serving deployment, {mode, prompt_len, output_len, cards,
      chips_per_unit, ramp, batch_cap, kv_reserve, decode_tokens_per_s,
      prefill_tokens_per_s, rate_tokens_per_s (`deployment_rate`)}; else None;
    - `collective`: for a collective row, what it measures ({"op": "all-reduce", bytes,
      algorithm, ranks} or {"op": "dispatch"/"combine", and `moe_comm_setup`'s fields});
      else None;
    - `derived`: the published metric computed from `runs` / `deployment` (the
      `predicted` of `result`; None for collective rows and rows not modelled)."""

    result: dict
    runs: list[dict]
    roles: list[str]
    deployment: dict | None
    collective: dict | None
    derived: float | None

    def to_json(self) -> dict:
        """JSON form: the fields above, runs as `emu run --json` objects with their role."""
        return {
            "result": self.result,
            "runs": [{"role": role, **r} for role, r in zip(self.roles, self.runs, strict=True)],
            "deployment": self.deployment,
            "collective": self.collective,
            "derived": self.derived,
        }


def _find(rows: list[dict], row_id: str, path) -> dict:
    ids = [r["id"] for r in rows if isinstance(r.get("id"), str)]
    for r in rows:
        if r.get("id") == row_id:
            return r
    close = difflib.get_close_matches(row_id, ids, n=_SUGGESTIONS, cutoff=0.5)
    hint = f"; close: {', '.join(close)}" if close else ""
    raise ValueError(
        f"no row '{row_id}' in '{path}' ({len(ids)} rows){hint}. --row takes a row's \"id\" "
        "(`emu validate --json` lists them)."
    )


def explain_row(row_id: str, path=None, *, overrides: dict | None = None) -> RowExplanation:
    """How emu modelled the row `row_id` of a JSON Lines file (default: the shipped set):
    see `RowExplanation`. The row is read with the notes of a row it names as its setup
    ("same setup as <id>"), as in the full report. ValueError when no row has that id (the
    closest ids are named)."""
    path = path or default_measurements()
    rows, problems = read_rows(path)
    for bad in problems:  # a line the reader refused (invalid JSON, a missing field)
        if bad["id"] == row_id:
            return RowExplanation({"predicted": None, **bad}, [], [], None, None, None)
    row = _find(with_referenced_notes(rows), row_id, path)
    items, failures = prepare_rows([row], overrides=overrides)
    if failures:
        result = {"predicted": None, "abs_pct_error": None, **failures[0]}
        return RowExplanation(result, [], [], None, None, None)
    it = items[0]
    table = interval_table()
    if it.kind == "allreduce":
        size, assumed = message_size(it.row)
        coll = {
            "op": "all-reduce",
            "bytes": size,
            "bytes_assumed": assumed,
            "algorithm": allreduce_algorithm(it.row),
            "ranks": float(it.row["n_chips"]),
        }
        pred = float(predict_allreduce_busbw(it.row, it.system))
        return RowExplanation(score_item(it, pred, None, table), [], [], None, coll, None)
    if it.kind == "moe_comm":
        coll = {"op": "combine" if it.setup["combine"] else "dispatch", **it.setup}
        pred = float(predict_moe_comm(it.row, it.system, it.setup))
        return RowExplanation(score_item(it, pred, None, table), [], [], None, coll, None)
    s = it.serving
    if s is None or s.prefill is None:
        r = _run(it, it.plan)
        if s is None:
            derived = _metric_from_run(it, r)
            deployment = None
        else:  # a deployment of decode alone: its output rate over the row's cards
            derived = r["tokens_per_s"] / s.cards * chips_per_unit(it.row)
            deployment = _deployment(it, r["tokens_per_s"], None, derived)
        result = score_item(it, derived, float(r["feasible"]), table)
        return RowExplanation(result, [r], ["step"], deployment, None, derived)
    dec = _run(it, s.decode)
    pre = _run(it, s.prefill)
    rate = float(
        deployment_rate(
            s.mode, dec["tokens_per_s"], pre["tokens_per_s"], s.prompt_len, s.output_len, s.ramp
        )
    )
    derived = rate / s.cards * chips_per_unit(it.row)
    deployment = _deployment(it, dec["tokens_per_s"], pre["tokens_per_s"], derived, rate)
    ok = float(dec["feasible"] and pre["feasible"])
    return RowExplanation(
        score_item(it, derived, ok, table),
        [dec, pre],
        ["decode instance", "prefill instance"],
        deployment,
        None,
        derived,
    )


def _run(it, plan) -> dict:
    """`analysis.run` of one instance, named by the row's model (a model built from the
    row's fields is called "row" inside emu)."""
    r = run(it.system, it.model, plan)
    model = it.row.get("model")
    stated = model.get("name") if isinstance(model, dict) else None
    if r["model"] == "row" and stated:
        r["model"] = str(stated)
    return r


def _metric_from_run(it, r: dict) -> float:
    """The row's metric from the run object of its step (the report's `predict_metric`,
    fed the run's figures)."""
    from types import SimpleNamespace

    bd = SimpleNamespace(**r["breakdown"])
    res = SimpleNamespace(**{k: v for k, v in r.items() if k != "breakdown"}, breakdown=bd)
    return float(predict_metric(it.row["metric"], res, it.row, it.model, it.plan, it.system))


def _deployment(it, decode_rate, prefill_rate, derived, rate=None) -> dict:
    s = it.serving
    return {
        "mode": s.mode,
        "prompt_len": float(s.prompt_len),
        "output_len": float(s.output_len),
        "cards": int(s.cards),
        "chips_per_unit": chips_per_unit(it.row),
        "ramp": float(s.ramp),
        "batch_cap": s.batch_cap,
        "kv_reserve": None if s.kv_reserve is None else float(s.kv_reserve),
        "decode_tokens_per_s": float(decode_rate),
        "prefill_tokens_per_s": None if prefill_rate is None else float(prefill_rate),
        "rate_tokens_per_s": float(decode_rate if rate is None else rate),
        "per_unit": derived,
    }
