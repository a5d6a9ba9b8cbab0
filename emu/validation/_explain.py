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
from types import SimpleNamespace

from emu.analysis import interval_table, run
from emu.validation._collectives import (
    allreduce_algorithm,
    message_size,
    predict_allreduce_busbw,
    predict_moe_comm,
)
from emu.validation._plans import _default_lengths, lengths
from emu.validation._predict import (
    METRICS_INFERENCE,
    MFU_PEAK_FLOPS,
    chips_per_unit,
    deployment_rate,
    mfu_peak,
    predict_metric,
    prepare_rows,
    with_referenced_notes,
)
from emu.validation._report import check_overrides, score_item
from emu.validation._rows import default_measurements, in_metric_unit, read_rows

__all__ = ["RowExplanation", "explain_row"]

#: close ids offered when the one asked for is not in the file
_SUGGESTIONS = 5


@dataclasses.dataclass(frozen=True)
class RowExplanation:
    """One row as emu modelled it.

    - `result`: the row's entry of the validation report (predicted, measured,
      abs_pct_error, status, reason, interval, inside, approximates, feasible), with the
      row's `unit`;
    - `runs`: `analysis.run` objects (plan, breakdown, memory, intervals) of the steps the
      prediction is made of, named by `roles`: ["step"] for a training, prefill or decode
      row; ["decode instance"] or ["decode instance", "prefill instance"] for a deployment
      (`deployment` set); empty for collective rows and rows that were not modelled;
    - `deployment`: for a serving deployment, {mode, prompt_len, output_len (None when the
      row states none and decodes alone), context (the decode plan's mean context), cards,
      chips_per_unit, ramp, batch_cap, kv_reserve, decode_tokens_per_s,
      prefill_tokens_per_s, rate_tokens_per_s (`deployment_rate`), per_unit}; else None;
    - `collective`: for a collective row, what it measures ({"op": "all-reduce", bytes,
      bytes_assumed, algorithm, ranks} or {"op": "dispatch"/"combine", and
      `moe_comm_setup`'s fields}); else None;
    - `derived`: the published metric computed from `runs` / `deployment` (the
      `predicted` of `result`; None for collective rows and rows not modelled);
    - `notes`: conventions of the published metric the runs' own figures do not show (the
      peak an MFU row is normalised by)."""

    result: dict
    runs: list[dict]
    roles: list[str]
    deployment: dict | None
    collective: dict | None
    derived: float | None
    notes: list[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        """JSON form: the fields above, runs as `emu run --json` objects with their role."""
        return {
            "result": self.result,
            "runs": [{"role": role, **r} for role, r in zip(self.roles, self.runs, strict=True)],
            "deployment": self.deployment,
            "collective": self.collective,
            "derived": self.derived,
            "notes": self.notes,
        }


def _not_found(row_id: str, rows: list[dict], problems: list[dict], path) -> ValueError:
    ids = [r["id"] for r in rows if isinstance(r.get("id"), str)]
    close = difflib.get_close_matches(row_id, ids, n=_SUGGESTIONS, cutoff=0.5)
    hint = f"; close: {', '.join(close)}" if close else ""
    if problems:  # an id on a line the reader refused (invalid JSON) cannot be seen
        hint += f"; {len(problems)} lines refused ({problems[0]['reason']})"
    return ValueError(
        f"no row '{row_id}' in '{path}' ({len(ids)} rows){hint}. --row takes a row's \"id\" "
        f"(grep '\"id\"' {path} lists them)."
    )


def _unmodelled(entry: dict, unit) -> RowExplanation:
    result = {"predicted": None, "measured": None, "abs_pct_error": None, **entry, "unit": unit}
    return RowExplanation(result, [], [], None, None, None)


def explain_row(row_id: str, path=None, *, overrides: dict | None = None) -> RowExplanation:
    """How emu modelled the row `row_id` of a JSON Lines file (default: the shipped set):
    see `RowExplanation`. The row is read with the notes of a row it names as its setup
    ("same setup as <id>"), as in the full report; a line the reader refused under that id
    (a missing field) is explained by its reason. ValueError when no line has that id (the
    closest ids are named), or when the system overrides fail on the row's system."""
    if not isinstance(row_id, str) or not row_id.strip():
        raise ValueError('--row needs a row id (a row\'s "id" field).')
    path = path or default_measurements()
    rows, problems = read_rows(path)
    matches = [r for r in with_referenced_notes(rows) if r.get("id") == row_id]
    if not matches:
        for bad in problems:  # a line the reader refused (a missing field, a bad value)
            if bad["id"] == row_id:
                return _unmodelled(bad, None)
        raise _not_found(row_id, rows, problems, path)
    row = matches[0]
    if overrides:  # a bad --set is the command's error, not the row's
        check_overrides([row], overrides)
    items, failures = prepare_rows([row], overrides=overrides)
    if failures:  # the unit of its value as reported (converted where it could be)
        try:
            unit = in_metric_unit(row).get("unit")
        except ValueError:
            unit = row.get("unit")
        return _unmodelled(failures[0], unit)
    it = items[0]
    table = interval_table()

    def scored(pred: float, ok) -> dict:  # in the metric's unit (`in_metric_unit`)
        return {**score_item(it, pred, ok, table), "unit": it.row.get("unit")}

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
        return RowExplanation(scored(pred, None), [], [], None, coll, None)
    if it.kind == "moe_comm":
        coll = {"op": "combine" if it.setup["combine"] else "dispatch", **it.setup}
        pred = float(predict_moe_comm(it.row, it.system, it.setup))
        return RowExplanation(scored(pred, None), [], [], None, coll, None)
    s = it.serving
    if s is None:
        r = _run(it, it.plan)
        derived = _metric_from_run(it, r)
        notes = _metric_notes(it, r)
        return RowExplanation(
            scored(derived, r["feasible"]), [r], ["step"], None, None, derived, notes
        )
    dec = _run(it, s.decode)
    if s.prefill is None:  # a deployment of decode alone: its output rate over the row's cards
        derived = dec["tokens_per_s"] / s.cards * chips_per_unit(it.row)
        deployment = _deployment(it, dec, None, dec["tokens_per_s"], derived)
        return RowExplanation(
            scored(derived, dec["feasible"]), [dec], ["decode instance"], deployment, None, derived
        )
    pre = _run(it, s.prefill)
    rate = float(
        deployment_rate(
            s.mode, dec["tokens_per_s"], pre["tokens_per_s"], s.prompt_len, s.output_len, s.ramp
        )
    )
    derived = rate / s.cards * chips_per_unit(it.row)
    deployment = _deployment(it, dec, pre, rate, derived)
    ok = dec["feasible"] and pre["feasible"]
    return RowExplanation(
        scored(derived, ok),
        [dec, pre],
        ["decode instance", "prefill instance"],
        deployment,
        None,
        derived,
    )


def _metric_notes(it, r: dict) -> list[str]:
    """How the published metric is computed from the step shown (`predict_metric`), and what
    it divides by that the run's own figures do not show."""
    p, metric = it.plan, it.row["metric"]
    t, n = r["step_time_s"], r["n_chips"]
    batch = f"global batch {float(p.global_batch):g} x seq {float(p.seq_len):g}"
    formula = {
        "tokens_per_s_per_gpu": f"{batch} tokens / step {t:.4g} s / {n:g} chips",
        "iteration_time": f"the step time, {t:.4g} s",
        "train_step_time": f"the step time, {t:.4g} s",
        "tflops_per_gpu": f"model FLOPs per token (no recomputation) x {batch} / step {t:.4g} s"
        f" / {n:g} chips",
        "achieved_tflops_per_gpu": f"Megatron's 96 B s l h^2 (1 + s/6h + V/16lh) FLOPs / step "
        f"{t:.4g} s / {n:g} chips",
        "gpu_hours_per_trillion_tokens": f"{n:g} chips x the hours of 1e12 tokens at {batch} "
        f"tokens per {t:.4g} s step",
        "layer_fwd_plus_bwd_time": "one micro-batch's step less optimizer, exposed DP, bubble "
        "and head, per layer of the heaviest stage",
    }.get(metric)
    if metric in METRICS_INFERENCE:
        formula = f"{r['tokens_per_s_per_chip']:.4g} tokens/s per chip x {chips_per_unit(it.row):g}"
        formula += " chips per unit (a batch of the row's own; no deployment rule)"
    notes = [f"{metric} = {formula}"] if formula else []
    if metric == "mfu":
        peak = mfu_peak(it.row, it.system, p.precision)
        stated = any(k in str(it.row.get("source", "")).lower() for k in MFU_PEAK_FLOPS)
        whose = "the source's stated peak" if stated else f"emu's dense {p.precision} peak"
        notes.append(
            f"the published MFU divides model FLOP/s (PaLM's count) by {peak / 1e12:g} TFLOP/s "
            f"per chip ({whose}); the table's MFU is emu's own (its FLOPs over its peak)"
        )
    return notes


def _run(it, plan) -> dict:
    """`analysis.run` of one instance, named by the row's model (a model built from the
    row's fields is called "row" inside emu)."""
    r = run(it.system, it.model, plan, check=False)  # as the report predicted it
    model = it.row.get("model")
    stated = model.get("name") if isinstance(model, dict) else None
    if r["model"] == "row" and stated:
        r["model"] = str(stated)
    return r


def _metric_from_run(it, r: dict) -> float:
    """The row's metric from the run object of its step (the report's `predict_metric`,
    fed the run's figures)."""
    bd = SimpleNamespace(**r["breakdown"])
    res = SimpleNamespace(**{k: v for k, v in r.items() if k != "breakdown"}, breakdown=bd)
    return float(predict_metric(it.row["metric"], res, it.row, it.model, it.plan, it.system))


def _deployment(it, dec: dict, pre: dict | None, rate: float, derived: float) -> dict:
    s = it.serving
    alone = pre is None
    stated_output = _default_lengths(it.row, *lengths(it.row))[1]
    return {
        "mode": s.mode,
        "prompt_len": float(s.prompt_len),
        # decode alone uses no output length; a row that states none gets the prompt's
        "output_len": None if alone and stated_output is None else float(s.output_len),
        "context": float(dec["plan"]["context"]),
        "cards": int(s.cards),
        "chips_per_unit": chips_per_unit(it.row),
        "ramp": float(s.ramp),
        "batch_cap": s.batch_cap,
        "kv_reserve": None if s.kv_reserve is None else float(s.kv_reserve),
        "decode_tokens_per_s": float(dec["tokens_per_s"]),
        "prefill_tokens_per_s": None if alone else float(pre["tokens_per_s"]),
        "rate_tokens_per_s": float(rate),
        "per_unit": derived,
    }
