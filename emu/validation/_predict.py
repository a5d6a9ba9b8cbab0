"""Predictions for measurement rows: each modelled row becomes an `Item` (its system, and for
runs the model and plan(s) of the row); items with the same program structure are stacked
and evaluated in one vmapped call; collective rows use emu's collective models
(`_collectives`). Every prediction is a jnp scalar, differentiable in the systems
(emu.calibration fits through it).
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

import jax
import jax.numpy as jnp

from emu.catalog import list_systems, load_system, resolve_name
from emu.hardware import peak_flops, usable_hbm_bytes
from emu.numerics import safe_div
from emu.objective import evaluate
from emu.parallelism import Plan, memory, stage_layers
from emu.policy import DEFAULT_BATCH_TOKENS, with_largest_batch
from emu.serving import disaggregated
from emu.struct import replace, stack
from emu.topology import System, rank_system
from emu.validation._collectives import (
    METRICS_ALLREDUCE,
    METRICS_MOE_COMM,
    collective_link,
    message_size,
    moe_comm_setup,
    predict_allreduce_busbw,
    predict_moe_comm,
)
from emu.validation._plans import (
    DEFAULT_PROMPT,
    STEP_TIME_METRICS,
    ServingRow,
    global_batch_of,
    lengths,
    needs_serving_rule,
    pd_separated,
    prefill_shape,
    ranks_of,
    row_plan,
    script_plan,
    serving_row,
    states_no_degrees,
    states_nothing,
)
from emu.validation._rows import (
    WHOLE_PARALLEL,
    approximations,
    check_row,
    in_metric_unit,
    int_or,
    notes_precision,
    row_model,
    row_precision,
    row_source,
    row_text,
    with_field_names,
    with_kind,
    with_moe_keys,
    with_parallel_counts,
)
from emu.workload import Model, model_flops_per_token

METRICS_TRAIN = {
    "iteration_time",
    "train_step_time",
    "tokens_per_s_per_gpu",
    "achieved_tflops_per_gpu",
    "tflops_per_gpu",
    "mfu",
    "layer_fwd_plus_bwd_time",
    "gpu_hours_per_trillion_tokens",
}
#: inference metrics: (phase, chips per unit)
METRICS_INFERENCE = {
    "input_tokens_per_s_per_node": ("prefill", 8.0),
    "input_tokens_per_s_per_gpu": ("prefill", 1.0),
    "input_tokens_per_s_per_npu": ("prefill", 1.0),
    "output_tokens_per_s_per_node": ("decode", 8.0),
    "output_tokens_per_s_per_gpu": ("decode", 1.0),
    "output_tokens_per_s_per_npu": ("decode", 1.0),
}


def chips_per_unit(row: dict) -> float:
    """Chips per unit of an inference metric: for "..._per_node" the 8 chips of the
    measurement schema's node ("per 8-chip node", emu/data/MEASUREMENTS.md), unless the
    row's unit, then its notes, say another count ("tokens/s per 4-GPU node", "4 GPUs per
    node"; a number glued to a word, as in "8 B200 GPUs", is a model name); else 1."""
    per = METRICS_INFERENCE[row["metric"]][1]
    if per == 1.0:
        return per
    count = r"(?<![\w.\-])(\d+)"
    for text in (str(row.get("unit") or ""), str(row.get("notes") or "")):
        text = text.lower()
        m = re.search(count + r"[\s\-](?:gpu|npu|chip|card)s? node", text) or re.search(
            count + r"\s*(?:gpus?|npus?|cards?|chips?|accelerators?)\s*(?:per|/)\s*(?:node|server)",
            text,
        )
        if m and 0 < int(m.group(1)) <= 64:
            return float(m.group(1))
    return per


#: the peak FLOP/s a source's MFU is normalised by, when the source states one (a published
#: convention of the source, not a fitted factor): MindSpeed-LLM's MFU uses 313 TF per 910B
#: (facts §26: 153 tok/s x 1.076 TF/token = 165 TF = 52.6% of 313). Keyed by a substring of
#: the row's `source`; other sources: emu's dense peak of the chip at the row's precision.
MFU_PEAK_FLOPS = {"mindspeed": 313e12}


@dataclasses.dataclass(frozen=True)
class Item:
    """One modelled row, ready to predict. `kind` is "run" (a step: `model` and `plan` set;
    a serving deployment also `serving`, whose decode plan is `plan`), "allreduce" or
    "moe_comm" (collective rows: the system, and for moe_comm the row's `setup`,
    `moe_comm_setup`); `base` holds the result fields of the row (id, kind, system, metric,
    measured, source)."""

    base: dict
    row: dict
    kind: str
    system: System
    model: Model | None = None
    plan: Plan | None = None
    serving: ServingRow | None = None
    setup: dict | None = None


def _base(row: dict) -> dict:
    return {
        "id": str(row["id"]),
        "kind": row["kind"],
        "system": row["system"],
        "metric": row["metric"],
        "measured": float(row["value"]),
        "source": row_source(row),
    }


def _failed(base: dict, status: str, reason: str) -> dict:
    return {**base, "predicted": None, "abs_pct_error": None, "status": status, "reason": reason}


def _canonical_system(name):
    """The catalog system a row's `system` spells, case, hyphens, dots and spaces aside
    ("DGX-H100" is dgx_h100; `catalog.resolve_name`); anything else as it is
    (`_row_system` refuses it)."""
    if not isinstance(name, str):
        return name
    try:
        return resolve_name(name, "systems")
    except ValueError:
        return name


def _row_system(name) -> str:
    """A row names a catalog system, never a file (a FIFO or a huge file would hang)."""
    if not isinstance(name, str) or name not in list_systems():
        raise ValueError(
            f"unknown system {name!r}; rows name catalog systems: {', '.join(list_systems())}."
        )
    return name


def dies_of(system: System) -> int:
    """Ranks per chip (package) of a system (Ascend 910C: 2)."""
    return int(round(float(system.chip.dies_per_chip)))


def _check_size(row: dict, system: System) -> None:
    """A row's chips (ranks on a collective row) must fit the system's largest cluster."""
    dies = dies_of(system)
    largest = float(system.tiers[-1].domain_chips) * dies
    ranks = float(row["n_chips"]) * (1 if row["kind"] == "collective" else dies)
    if ranks > largest:
        raise ValueError(
            f"{ranks:g} ranks exceed the largest {system.name} cluster ({largest:g} ranks)"
        )


@jax.jit
def _feasible(system: System, model: Model, plan: Plan):
    """Whether `plan` fits in the usable HBM of a rank (as `evaluate` checks it; the
    memory model alone compiles in a fraction of the step's time)."""
    chip = rank_system(system).chip
    return memory(model, plan, usable_hbm_bytes(chip)).feasible


def _largest_fitting(system: System, model: Model, plan: Plan, cap: int, reserve=None) -> Plan:
    """`plan` with the largest batch per DP rank in [1, cap] that fits in memory (the
    offline serving rule; batch 1 if none does). `reserve`: the tokens of KV cache each
    sequence holds while it runs, when the scheduler reserves more than the plan's mean
    `context` (`ServingRow.kv_reserve`: TensorRT-LLM's GUARANTEED_NO_EVICT capacity policy
    admits a request only with KV blocks for its whole prompt + output); the returned plan
    keeps its own context (the step time reads the mean)."""
    fit_plan = plan if reserve is None else replace(plan, context=jnp.float32(reserve))

    def fits(b):
        p = replace(fit_plan, microbatch=jnp.float32(b), global_batch=plan.dp * jnp.float32(b))
        return float(_feasible(system, model, p)) > 0.5

    lo, hi = 1, int(cap)
    if fits(hi):
        lo = hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return replace(plan, microbatch=jnp.float32(lo), global_batch=plan.dp * jnp.float32(lo))


def _check_metric_name(row: dict) -> None:
    """ValueError for a metric that is another kind's (a train metric on a prefill row) or
    a misspelling of a modelled one: a row that says what it meant is an error to fix, not
    a metric emu has yet to model (skipped)."""
    by_kind = {
        "train": set(METRICS_TRAIN),
        "prefill": set(METRICS_INFERENCE),
        "decode": set(METRICS_INFERENCE),
        "collective": {*METRICS_ALLREDUCE, *METRICS_MOE_COMM},
    }
    metric, kind = row["metric"], row["kind"]
    if metric in by_kind.get(kind, ()):
        return
    other = [k for k, ms in by_kind.items() if metric in ms and k != kind]
    if other:
        raise ValueError(
            f"metric '{metric}' is a {' or '.join(other)} metric, but the row's kind is "
            f"'{kind}'; fix the kind or the metric (MEASUREMENTS.md)"
        )
    # a near spelling with the same "per X" (per_card is not per_node; a p99 latency is not
    # the mean): a metric emu does not model stays a skip, not an error with a wrong hint
    tail = metric.rsplit("_per_", 1)[-1] if "_per_" in metric else None
    near = [
        m
        for m in sorted(set().union(*by_kind.values()))
        if _edits(metric, m) <= 2 and (m.rsplit("_per_", 1)[-1] if "_per_" in m else None) == tail
    ]
    if near:
        raise ValueError(f"unknown metric '{metric}'; did you mean '{near[0]}'? (MEASUREMENTS.md)")


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (a misspelling is a letter or two)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _run_item(row: dict, base: dict, system_of) -> Item:
    """The Item of a train/prefill/decode row (NotImplementedError: not modelled yet)."""
    _check_metric_name(row)
    if row["kind"] not in ("train", "prefill", "decode"):  # a collective's other metrics
        known = sorted({*METRICS_ALLREDUCE, *METRICS_MOE_COMM})
        raise NotImplementedError(
            f"collective metric '{row['metric']}' is not modelled yet; modelled: "
            f"{', '.join(known)} (MEASUREMENTS.md)"
        )
    known = METRICS_TRAIN if row["kind"] == "train" else set(METRICS_INFERENCE)
    if row["metric"] not in known:
        raise NotImplementedError(
            f"{row['kind']} metric '{row['metric']}' is not modelled yet; modelled: "
            f"{', '.join(sorted(known))} (MEASUREMENTS.md)"
        )
    system = system_of(row["system"])
    dies = dies_of(system)
    row = script_plan(row) or row
    model = row_model(row)
    if needs_serving_rule(row, ranks_of(row, dies)):
        s = serving_row(row, model, dies=dies)
        _check_precision(system, s.decode)
        if s.batch_cap is not None:
            plan = _largest_fitting(system, model, s.decode, s.batch_cap, s.kv_reserve)
            s = s._replace(decode=plan)
        return Item(base, row, "run", system, model, s.decode, s)
    plan, slo = row_plan(row, model, dies=dies, system=system)
    if slo is not None:
        plan = with_largest_batch(system, model, plan, slo)
    _check_precision(system, plan)
    return Item(base=base, row=row, kind="run", system=system, model=model, plan=plan)


def _check_precision(system: System, plan: Plan) -> None:
    if float(system.chip.peak_flops_per_s.get(plan.precision, 0.0)) <= 0:
        raise ValueError(f"{system.chip.name} has no {plan.precision} support")


#: a row whose notes say it was measured in the "same setup as <id>" of another row
#: (xDeepServe's combine row names the dispatch row it was timed beside, and states its
#: tokens per die only there)
SAME_SETUP = re.compile(
    r"(?<!not )(?<!not the )\bsame (?:setup|run|deployment) as ([a-z0-9_][\w.\-]*\w)", re.I
)


def with_referenced_notes(rows: list[dict]) -> list[dict]:
    """`rows`, each row whose notes name another row of `rows` by "same setup as <id>"
    (SAME_SETUP; the first such phrase, one step: a chain of references is not followed)
    with that row's notes appended after its own, so the rules read the setup there
    (tokens per rank, hidden size, top-k) where the row itself does not state it. A rule
    that takes the first number it finds reads the row's own statement first; a rule that
    looks for a phrase anywhere (a kernel flavour such as "low-latency", xDeepServe's
    "tokens per die per dispatch are ~N") reads the named row's too, as a setup shared
    with it. Only rows validated together are joined: `emu validate --kind` keeps a
    collective row's partner, other subsets may not. Other rows are returned as they are."""
    by_id = {r["id"]: r for r in rows if isinstance(r, dict) and isinstance(r.get("id"), str)}
    out = []
    for row in rows:
        notes = row.get("notes") if isinstance(row, dict) else None
        hit = SAME_SETUP.search(notes) if isinstance(notes, str) else None
        ref = by_id.get(hit.group(1)) if hit else None
        if ref is not None and ref is not row and isinstance(ref.get("notes"), str):
            row = {**row, "notes": f"{notes} [setup of {ref['id']}:] {ref['notes']}"}
        out.append(row)
    return out


def prepare_rows(
    rows: list[dict], *, overrides=None, calibration=None
) -> tuple[list[Item], list[dict]]:
    """Turn rows into prediction items. Returns (items, failures); failures are result
    dicts (status skipped or error, with the reason). `overrides` (dotted system paths) and
    `calibration` (an overlay dict) apply to every system. A row measured in the same setup
    as another row of `rows` is read with that row's notes too (`with_referenced_notes`)."""
    items, failures, systems = [], [], {}
    rows = with_referenced_notes(rows)

    def system_of(name):
        if name not in systems:
            systems[name] = load_system(_row_system(name), overrides, calibration=calibration)
        return systems[name]

    for row in rows:
        row = with_kind(row)  # rows built in code, not read by read_rows: "Train" is train
        row = {**row, "system": _canonical_system(row.get("system"))}
        try:  # "ms" for a time in s: the value in the metric's unit, before it is read
            row = in_metric_unit(with_field_names(row))
        except ValueError as e:
            failures.append(_failed(_base(row), "error", f"line {row.get('_line')}: {e}"))
            continue
        base = _base(row)
        # a precision spelled another way (MXFP8, W4A8) is the chip format it names
        row = {**row, "precision": row_precision(row.get("precision"))}
        if row["precision"] is None:  # the format its notes name, if any (said below)
            prec, words = notes_precision(row)
            if prec is not None:
                row = {**row, "precision": prec, "_precision_read": words}
        try:
            row = with_parallel_counts(with_moe_keys(row))  # "num_experts_per_tok", "TP8"
            check_row(row)
            system = system_of(row["system"])
            _check_size(row, system)
            if row["kind"] == "collective" and row["metric"] in METRICS_ALLREDUCE:
                items.append(Item(base, row, "allreduce", system))
            elif row["kind"] == "collective" and row["metric"] in METRICS_MOE_COMM:
                setup = moe_comm_setup(row, system)
                items.append(Item(base, row, "moe_comm", system, setup=setup))
            else:
                items.append(_run_item(row, base, system_of))
        except NotImplementedError as e:
            failures.append(_failed(base, "skipped", str(e)))
        except OverflowError as e:  # "1e400 tokens" in the notes: Python's words, then ours
            failures.append(
                _failed(
                    base,
                    "error",
                    f"line {row.get('_line')}: a number in the row or its notes is too large "
                    f"to use ({e}); give counts and sizes as finite numbers",
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as e:
            failures.append(_failed(base, "error", f"line {row.get('_line')}: {e}"))
    return items, failures


def item_group(item: Item) -> str:
    """The interval basis group of an item (`analysis.basis_keys`): "train/<chip family>",
    "serve/<chip family>" (prefill and decode) or "collective/<link type>" (the outermost
    tier the group spans)."""
    if item.kind == "run":
        kind = "train" if item.base["kind"] == "train" else "serve"
        return f"{kind}/{item.system.chip.family}"
    return f"collective/{collective_link(item.system, float(item.row['n_chips']))}"


def item_notes(item: Item) -> list[str]:
    """What a row's prediction approximates (`_rows.approximations`), for a training row
    that states no degrees the plan rule's plan it was predicted with, and for a collective
    row what it does not state and emu assumed (message size; tokens per rank, hidden size,
    top-k)."""
    notes = approximations(item.row)
    par = item.row.get("parallel") or {}
    for key in WHOLE_PARALLEL:  # a stated value that is no count (tp 0, 2.5, "thirty")
        raw, used = par.get(key), int_or(par.get(key), None)
        if raw is None or (key == "vpp" and isinstance(raw, str)):  # vpp: a schedule in words
            continue
        if used is None and key != "global_batch":  # (its own note says what was taken)
            notes.append(f"parallel.{key} {raw!r} is not a whole number >= 1: taken as not stated")
        elif isinstance(raw, int | float) and raw != used:
            notes.append(f"parallel.{key} {raw!r} is not a whole number: {used} used")
    dp = int_or(par.get("dp"), None)
    if item.kind == "run" and item.row["kind"] == "train" and dp and dp != float(item.plan.dp):
        p = item.plan
        ranks = float(p.dp * p.tp * p.pp * p.cp)
        notes.append(  # the ranks fix dp: n_chips x dies / (tp pp cp)
            f"parallel.dp {dp} at tp {float(p.tp):g}, pp {float(p.pp):g}, cp {float(p.cp):g} "
            f"is not the row's {ranks:g} ranks: dp {float(p.dp):g} used"
        )
    if "_stated" in item.row:  # exact: the value converted into the metric's unit
        (value, unit), r = item.row["_stated"], item.row
        notes.append(f"stated as {value:g} {unit}: {r['value']:g} {r['unit']}")
    if item.serving is not None and lengths(item.row)[0] is None:
        if int_or((item.row.get("model") or {}).get("seq_len"), None) is None:
            notes.append(f"prompt length not stated: {DEFAULT_PROMPT} tokens assumed")
            if item.serving.prefill is None:
                notes.append(
                    "no output length: decoded alone (the prefill's share of the ranks is "
                    "not modelled)"
                )
    if "_precision_read" in item.row:
        notes.append(
            f"precision not stated: {item.row['precision']} from the notes "
            f"('{item.row['_precision_read']}')"
        )
    elif item.kind == "run" and item.row.get("precision") is None:
        notes.append(f"precision not stated: {item.plan.precision} assumed")
    if (
        item.serving is not None
        and item.serving.prefill is None
        and pd_separated(row_text(item.row))
    ):
        notes.append(
            "PD-separated, and the row's chips are its decode instance's: their decode rate "
            "alone (the prefill instance's cards are not in the row)"
        )
    if item.serving is not None and item.serving.batch_read:
        notes.append(item.serving.batch_read)
    if item.kind == "run" and item.serving is None and item.row["kind"] == "prefill":
        notes.extend(prefill_shape(item.row)[2])
    said = message_size(item.row)[1] if item.kind == "allreduce" else None
    if said:
        notes.append(said)
    if item.kind == "moe_comm":
        notes.extend(item.setup.get("assumed", []))
    if item.kind == "run" and item.row["kind"] == "train":
        gb, read = global_batch_of(item.row)
        if read:
            notes.append(read)
        elif gb is None:
            timed = item.row["metric"] in STEP_TIME_METRICS
            if timed or not states_no_degrees(item.row.get("parallel") or {}):
                raw = (item.row.get("parallel") or {}).get("global_batch")
                said = "not stated" if raw is None else f"{raw!r} is not a positive integer"
                notes.append(
                    f"global batch {said}: {float(item.plan.global_batch):g} sequences "
                    f"(emu's default, >= {DEFAULT_BATCH_TOKENS / 2**20:g} Mi tokens)"
                    + (": a step time scales with it" if timed else "")
                )
    if (
        item.kind == "run"
        and item.row["kind"] == "train"
        and states_no_degrees(item.row.get("parallel") or {})
    ):
        p = item.plan
        deg = " ".join(
            f"{k}{float(getattr(p, k)):g}" for k in ("tp", "pp", "dp", "cp", "ep", "vpp")
        )
        deg += f", micro-batch {float(p.microbatch):g}"
        notes.append(
            f"plan not stated: emu's plan rule ({deg}, global batch {float(p.global_batch):g})"
        )
    elif item.kind == "run" and states_nothing(item.row.get("parallel") or {}):
        p = item.plan  # a serving row that states nothing of its deployment
        deg = " ".join(f"{k}{float(getattr(p, k)):g}" for k in ("tp", "dp", "ep"))
        notes.append(
            f"deployment not stated: emu's serving rule ({deg}, batch "
            f"{float(p.microbatch):g} per DP rank)"
        )
    return notes


def _structure(it: Item) -> tuple:
    s, m, p = it.system, it.model, it.plan
    key = (s.name, m.ffn, m.attention, m.tied_embeddings, p.precision, p.algorithm, p.phase)
    if it.serving is None:
        return key
    pre = it.serving.prefill
    return (*key, it.serving.mode) + (() if pre is None else (pre.precision, pre.algorithm))


def run_groups(items: list[Item]) -> dict[tuple, list[int]]:
    """Indices of the run items by program structure (one compiled, vmapped call each)."""
    groups = defaultdict(list)
    for idx, it in enumerate(items):
        if it.kind == "run":
            groups[_structure(it)].append(idx)
    return groups


def serving_rate(system: System, model: Model, decode: Plan, prefill, lengths, *, mode: str):
    """Output tokens/s of a deployment (`ServingRow`): "decode" D; "separated"
    1 / (1/R + w (in/out)/P) with R = `serving.disaggregated`'s min(D, P out/in) the steady
    state and w = C/N the benchmark's first-wave share (`ServingRow.ramp`): a closed loop of
    N requests at concurrency C starts with C prompts queued for the prefill instance,
    C in / P seconds before the last of them decodes, so N out tokens take
    N out / R + C in / P; "mixed" 1 / (1/D + (in/out)/P) (prefill and decode take turns on
    the same ranks, the first wave's prefill included). `lengths` = (prompt_len,
    output_len[, ramp]). Returns (rate, feasible)."""
    if prefill is None:
        r = evaluate(system, model, decode)
        return r.tokens_per_s, r.feasible
    isl, osl = lengths[0], lengths[1]
    s = disaggregated(system, model, prefill, decode, prompt_len=isl, output_len=osl)
    ramp = lengths[2] if len(lengths) > 2 else 0.0
    d, p = s.decode.tokens_per_s, s.prefill.tokens_per_s
    return deployment_rate(mode, d, p, isl, osl, ramp), s.feasible


def deployment_rate(mode: str, d, p, isl, osl, ramp=0.0):
    """Output tokens/s of a deployment (`serving_rate`'s composition) from its decode
    instance's output rate `d` and its prefill instance's prompt rate `p` (tokens/s):
    "decode" d; "separated" 1 / (1/R + ramp (in/out)/p), R = min(p/in, d/out) out
    (`serving.disaggregated`'s steady state); "mixed" 1 / (1/d + (in/out)/p)."""
    if mode == "decode":
        return d
    if mode == "separated":
        steady = jnp.minimum(safe_div(p, isl), safe_div(d, osl)) * osl
        fill = ramp * safe_div(isl / osl, p)
        return safe_div(1.0, safe_div(1.0, steady) + fill)
    return safe_div(1.0, safe_div(1.0, d) + safe_div(isl / osl, p))


_SERVE = {}


def _serve_batch(mode: str):
    """The jitted, vmapped `serving_rate` of one mode (compiled once per structure)."""
    if mode not in _SERVE:
        fn = lambda s, m, d, p, ln: serving_rate(s, m, d, p, ln, mode=mode)
        _SERVE[mode] = jax.jit(jax.vmap(fn, in_axes=(None, 0, 0, 0, 0)))
    return _SERVE[mode]


def _evaluate_group(system, items: list[Item], run):
    """RunResults (or serving (rate, feasible)) of a group of items of one structure."""
    first = items[0]
    models = stack([it.model for it in items])
    plans = stack([it.plan for it in items])
    if first.serving is None:
        return run(system, models, plans)
    pre = first.serving.prefill
    pres = None if pre is None else stack([it.serving.prefill for it in items])
    lengths = (
        jnp.asarray([it.serving.prompt_len for it in items], jnp.float32),
        jnp.asarray([it.serving.output_len for it in items], jnp.float32),
        jnp.asarray([it.serving.ramp for it in items], jnp.float32),
    )
    return _serve_batch(first.serving.mode)(system, models, plans, pres, lengths)


def predict_items(items: list[Item], systems: dict | None = None, *, run=None):
    """Predictions for every item, as jnp scalars (differentiable in the systems).
    `systems` maps a system name to the System to use (default: each item's own);
    `run` evaluates a stacked (models, plans) batch on one system (default: vmapped
    evaluate). Returns (predictions, feasible) lists aligned with `items` (feasible is None
    for collective rows)."""
    preds = [None] * len(items)
    feas = [None] * len(items)
    sys_of = lambda it: (systems or {}).get(it.system.name, it.system)
    run = run or (lambda s, m, p: jax.vmap(evaluate, in_axes=(None, 0, 0))(s, m, p))
    for idxs in run_groups(items).values():
        group = [items[i] for i in idxs]
        out = _evaluate_group(sys_of(group[0]), group, run)
        for j, i in enumerate(idxs):
            it = items[i]
            r = jax.tree_util.tree_map(lambda x, j=j: x[j], out)
            if it.serving is not None:
                rate, ok = r
                preds[i] = rate / it.serving.cards * chips_per_unit(it.row)
                feas[i] = ok
                continue
            preds[i] = predict_metric(it.row["metric"], r, it.row, it.model, it.plan, it.system)
            feas[i] = r.feasible
    for i, it in enumerate(items):
        if it.kind == "allreduce":
            preds[i] = predict_allreduce_busbw(it.row, sys_of(it))
        elif it.kind == "moe_comm":
            preds[i] = predict_moe_comm(it.row, sys_of(it), it.setup)
    return preds, feas


def mfu_peak(row: dict, system: System, precision: str) -> float:
    """The peak FLOP/s per chip (package) a row's MFU is normalised by: the source's stated
    peak (MFU_PEAK_FLOPS) or emu's dense peak of the chip at `precision`."""
    src = str(row.get("source", "")).lower()
    for key, peak in MFU_PEAK_FLOPS.items():
        if key in src:
            return peak
    return float(peak_flops(system.chip, precision))


def predict_metric(metric: str, r, row: dict, model, plan, system: System | None = None):
    """The row's metric, as published, from a RunResult (jnp: differentiable). MFU is the
    sources' convention: PaLM model FLOPs per token (`workload.model_flops_per_token`) x
    tokens/s over the chips' peak (`mfu_peak`)."""
    n = r.n_chips
    t = r.step_time_s
    tokens = plan.global_batch * plan.seq_len
    if metric in ("iteration_time", "train_step_time"):
        return t
    if metric == "tokens_per_s_per_gpu":
        return tokens / t / n
    if metric == "achieved_tflops_per_gpu":
        b, s, n_l, h, v = (
            plan.global_batch,
            plan.seq_len,
            model.n_layers,
            model.d_model,
            model.vocab,
        )
        flops = 96 * b * s * n_l * h * h * (1 + s / (6 * h) + v / (16 * n_l * h))
        return flops / (t * n) / 1e12
    if metric == "tflops_per_gpu":
        return model_flops_per_token(model, plan.seq_len) * tokens / (t * n) / 1e12
    if metric == "mfu":
        if system is None:
            return 100.0 * r.mfu
        flops = model_flops_per_token(model, plan.seq_len) * tokens / t
        return 100.0 * flops / (n * mfu_peak(row, system, plan.precision))
    if metric == "layer_fwd_plus_bwd_time":
        bd = r.breakdown
        nmb = plan.global_batch / (plan.dp * plan.microbatch)
        layers = stage_layers(model, plan)[0]  # the heaviest stage the step is priced on
        per_mb = (bd.total_s - bd.optimizer_s - bd.exposed_dp_s - bd.bubble_s - bd.head_s) / nmb
        return per_mb / layers * 1e3
    if metric == "gpu_hours_per_trillion_tokens":
        return n * 1e12 / (tokens / t) / 3600.0
    if metric in METRICS_INFERENCE:
        return r.tokens_per_s_per_chip * chips_per_unit(row)
    raise NotImplementedError(f"metric '{metric}' is not modelled yet")
