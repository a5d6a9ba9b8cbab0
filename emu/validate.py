"""`emu validate`: predict published measurements and report the error of every row.

Rows follow ../shared/data/MEASUREMENTS.md. Each modelled row becomes (system, model, plan);
rows with the same program structure are stacked and evaluated in one vmapped call. Where a
row leaves a field null, the documented default applies (see `row_plan`): micro-batch 1;
dp = n_chips / (tp pp cp) (also when the published degrees do not multiply to n_chips);
tp = the largest power of two <= 8 dividing the heads and the model-parallel size when only
t*p is known; ZeRO 1 (distributed optimizer) unless the row says FSDP/ZeRO-3 (3);
recomputation "selective" (flash attention); SP on when tp > 1; vpp 1; expert-parallel
serving rows (prefill/decode with ep > 1) use two-micro-batch overlap unless they say "no"
or "without" it.

Error = |predicted - measured| / measured on the metric as published.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from emu.config import load_system, model_from_dict
from emu.objective import evaluate
from emu.parallelism import make_plan, validate_plan
from emu.struct import replace, stack
from emu.workload import model_flops_per_token

__all__ = ["validate_file", "validate_rows", "format_report", "default_measurements"]

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
METRICS_ALLREDUCE = {"allreduce_busbw", "allreduce_busbw_peak", "effective_nvlink_busbw_ring"}
REQUIRED = ("id", "kind", "system", "n_chips", "metric", "value")
#: message size when a row gives none: "peak" bus bandwidth is reached with GB-scale buffers
DEFAULT_MESSAGE_BYTES = 4e9
METRICS_INFERENCE = {
    "input_tokens_per_s_per_node": ("prefill", 8.0),
    "input_tokens_per_s_per_gpu": ("prefill", 1.0),
    "input_tokens_per_s_per_npu": ("prefill", 1.0),
    "output_tokens_per_s_per_node": ("decode", 8.0),
    "output_tokens_per_s_per_gpu": ("decode", 1.0),
    "output_tokens_per_s_per_npu": ("decode", 1.0),
}
METRICS_MOE_COMM = {
    "moe_dispatch_bandwidth",
    "moe_combine_bandwidth",
    "moe_dispatch_bottleneck_bandwidth",
    "moe_combine_bottleneck_bandwidth",
    "moe_dispatch_latency",
    "moe_combine_latency",
}
#: Documented defaults for MoE/inference rows that leave a quantity out:
#: production expert-load imbalance (perfect-EPLB projections are 1.18x faster than default
#: EPLB: facts §5, CM Table 3 5,655 -> 6,688 and SGLang 6,288 -> 7,417 tok/s);
DEFAULT_MOE_IMBALANCE = 1.18
#: expert-parallel serving (DP attention + EP over several nodes) uses two-micro-batch overlap
#: when a row does not say: the published designs all do (DeepSeek's inference system, facts
#: §5; SGLang large-scale EP; CloudMatrix-Infer's micro-batch pipelining)
DEFAULT_EP_SERVING_OVERLAP = True
#: MTP draft acceptance when a row says "with MTP" but not the rate (CM paper's 70%, facts §5);
DEFAULT_MTP_ACCEPT = 0.7
#: DeepSeek's prefill profile: 16,384 tokens per device, 4K prompts (facts §5; row notes).
DEFAULT_PREFILL_TOKENS = 16384
DEFAULT_PROMPT = 4096
#: DeepEP benchmark settings (DeepEP README): hidden 7168, top-8; normal mode 4,096 tokens
#: per rank, low-latency mode 128.
DEEPEP = {"hidden": 7168, "top_k": 8, "normal_tokens": 4096, "ll_tokens": 128}


def default_measurements() -> Path:
    from importlib import resources

    return Path(str(resources.files("emu.data"))) / "measurements.jsonl"


def read_rows(path) -> tuple[list[dict], list[dict]]:
    """(rows, problems): bad lines are reported with their line number, never fatal."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"measurement file '{p}' not found.") from None
    except IsADirectoryError:
        raise ValueError(f"measurement path '{p}' is a directory, not a JSON Lines file.") from None
    except UnicodeDecodeError:
        raise ValueError(f"measurement file '{p}' is not UTF-8 text.") from None
    except OSError as e:
        raise ValueError(f"cannot read measurement file '{p}': {e.strerror}.") from None
    rows, problems = [], []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(
                {
                    "id": f"line {i}",
                    "status": "error",
                    "reason": f"line {i}: invalid JSON ({e.msg})",
                }
            )
            continue
        if not isinstance(row, dict):
            problems.append(
                {
                    "id": f"line {i}",
                    "status": "error",
                    "reason": f"line {i}: expected a JSON object",
                }
            )
            continue
        missing = [k for k in REQUIRED if k not in row]
        if missing:
            problems.append(
                {
                    "id": str(row.get("id", f"line {i}")),
                    "status": "error",
                    "reason": f"line {i}: missing {', '.join(missing)}",
                }
            )
            continue
        v = row["value"]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            problems.append(
                {
                    "id": str(row["id"]),
                    "status": "error",
                    "reason": f"line {i}: value must be a positive number (got {v!r})",
                }
            )
            continue
        row["_line"] = i
        rows.append(row)
    if not rows and not problems:
        raise ValueError(f"measurement file '{p}' is empty; expected JSON Lines rows.")
    return rows, problems


def _int_or(x, default):
    if isinstance(x, bool) or x is None:
        return default
    if isinstance(x, int | float) and math.isfinite(x) and x >= 1:
        return int(x)
    return default


def _ffn(m: dict) -> str:
    name = str(m.get("name", "")).lower()
    return "swiglu" if any(k in name for k in ("llama", "qwen", "mistral", "mixtral")) else "gelu"


def row_model(row: dict):
    m = row.get("model")
    if not isinstance(m, dict):
        raise ValueError("no model description")
    if m.get("moe"):
        return _catalog_moe(row, m)
    gpt = _ffn(m) == "gelu"
    data = {
        "name": "row",
        "ffn": _ffn(m),
        "tied_embeddings": gpt,  # Megatron GPT ties embeddings; Llama does not
        "n_layers": m.get("n_layers"),
        "d_model": m.get("d_model"),
        "n_heads": m.get("n_heads"),
        "n_kv_heads": m.get("n_kv_heads") or m.get("n_heads"),
        "d_ff": m.get("d_ff") or (4 * m["d_model"] if m.get("d_model") else None),
        "vocab": m.get("vocab") or 51200,
    }
    for k, v in data.items():
        if v is None:
            raise ValueError(f"model.{k} is null")
    return model_from_dict(data, f"row {row['id']} model")


_MOE_CATALOG = {
    "deepseekv3": "deepseek_v3",
    "deepseekr1": "deepseek_r1",
    "qwen3235ba22b": "qwen3_235b_a22b",
    "qwen330ba3b": "qwen3_30b_a3b",
    "gptoss120b": "gpt_oss_120b",
    "internal352bmoe": "msmoe_352b",
    "mixtral8x7b": "mixtral_8x7b",
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _catalog_moe(row: dict, m: dict):
    """MoE rows name their model; the row schema has no MLA dims or dense-layer count, so the
    catalog model of that name is used, after checking it agrees with the row."""
    from emu.config import load_model

    key = _norm(str(m.get("name", "")))
    name = next((v for k, v in _MOE_CATALOG.items() if key.startswith(k)), None)
    if name is None:
        raise NotImplementedError(f"MoE model '{m.get('name')}' is not in the catalog")
    model = load_model(name)
    for field in ("n_layers", "d_model", "n_heads"):
        if m.get(field) is not None and float(getattr(model, field)) != float(m[field]):
            raise ValueError(
                f"catalog model {name} has {field}={float(getattr(model, field)):g}, "
                f"the row {m[field]}"
            )
    moe = m["moe"]
    for field, key2 in (("n_experts", "n_experts"), ("top_k", "top_k")):
        if moe.get(key2) is not None and float(getattr(model, field)) != float(moe[key2]):
            raise ValueError(f"catalog model {name} disagrees with the row on {field}")
    return replace(model, name="row")


def _num_in(pattern: str, text: str, default=None):
    """The first number a regex group captures in `text` (commas allowed), else default."""
    m = re.search(pattern, text, re.I)
    if not m:
        return default
    return float(m.group(1).replace(",", ""))


def _zero(z) -> int:
    if isinstance(z, int | float) and not isinstance(z, bool):
        return int(z)
    if isinstance(z, str) and re.search(r"fsdp|zero-?3", z, re.I):
        return 3
    return 1


def _recompute(r) -> str:
    if isinstance(r, str):
        low = r.lower()
        for k in ("full", "selective", "none"):
            if low.startswith(k):
                return k
    return "selective"


def row_plan(row: dict, model):
    """The plan of a row, with the documented defaults for null fields."""
    p = row.get("parallel") or {}
    if not isinstance(p, dict):
        raise ValueError("parallel must be an object")
    n = _int_or(row.get("n_chips"), None)
    if n is None:
        raise ValueError("n_chips must be a positive integer")
    cp = _int_or(p.get("cp"), 1)
    tp, pp, dp = _int_or(p.get("tp"), None), _int_or(p.get("pp"), None), _int_or(p.get("dp"), None)
    heads = int(float(model.n_heads))
    if tp is None and pp is None:
        mp = n // ((dp or 1) * cp)
        if mp < 1:
            raise ValueError(f"dp*cp = {(dp or 1) * cp} exceeds n_chips = {n}")
        tp = max(t for t in (1, 2, 4, 8) if heads % t == 0 and mp % t == 0)
        pp = mp // tp
    elif tp is None:
        tp = max(1, n // (pp * (dp or 1) * cp))
    elif pp is None:
        pp = max(1, n // (tp * (dp or 1) * cp))
    dp = n // (tp * pp * cp)
    if dp < 1 or tp * pp * cp * dp != n:
        raise ValueError(f"tp*pp*cp = {tp * pp * cp} does not divide n_chips = {n}")
    mb = _int_or(p.get("microbatch"), 1)
    gb = _int_or(p.get("global_batch"), dp * mb)
    if gb % (dp * mb):
        gb = dp * mb * max(1, round(gb / (dp * mb)))
    sp = p.get("sp")
    sp = (tp > 1) if sp is None else bool(sp)
    vpp = _int_or(p.get("vpp"), 1) if pp > 1 else 1
    layers = int(float(model.n_layers))
    if layers % (pp * vpp):
        vpp = 1
    prec = row.get("precision") or "bf16"
    notes = f"{row.get('notes', '')} {row['id']}".lower()
    text = f"{notes} {json.dumps(p).lower()}"
    moe = float(model.n_experts) > 0
    ep = _int_or(p.get("ep"), 1) if moe else 1
    # "TP=8 ... for attention and experts" (Megatron-LM): experts are tensor-parallel too
    etp = tp if (moe and re.search(r"for attention and experts", text)) else 1
    off = bool(re.search(r"\b(no|without) (two-(micro)?batch overlap|tbo)\b", text))
    overlap = not off and bool(
        re.search(r"dualpipe|two-(micro)?batch overlap|two-microbatch", text)
    )
    if row["kind"] in ("prefill", "decode") and ep > 1:
        # expert-parallel serving overlaps one micro-batch's dispatch/combine with the other's
        # compute unless the row says otherwise (DEFAULT_EP_SERVING_OVERLAP)
        overlap = overlap or (DEFAULT_EP_SERVING_OVERLAP and not off)
    balanced = bool(re.search(r"perfect eplb|force-balanced", text))
    imbalance = 1.0 if (balanced or not moe) else DEFAULT_MOE_IMBALANCE
    if row["kind"] in ("prefill", "decode"):
        return _inference_plan(row, model, n, tp, dp * pp, ep, prec, notes, overlap, imbalance)
    seq = _int_or((row.get("model") or {}).get("seq_len"), None)
    if seq is None:
        raise ValueError("model.seq_len is null")
    plan = make_plan(
        ep=ep,
        etp=etp,
        moe_imbalance=imbalance,
        a2a_overlap=overlap,
        tp=tp,
        pp=pp,
        dp=dp,
        cp=cp,
        microbatch=mb,
        global_batch=gb,
        seq_len=seq,
        vpp=vpp,
        zero=_zero(p.get("zero")),
        recompute=_recompute(p.get("recompute")),
        sp=sp,
        precision=prec,
        lora="lora" in notes,
    )
    return validate_plan(plan, model, even_layers=False)


def _inference_plan(row, model, n, tp, dp, ep, prec, notes, overlap, imbalance):
    phase = row["kind"]
    p = row.get("parallel") or {}
    common = dict(
        tp=tp,
        dp=dp,
        ep=ep,
        a2a_overlap=overlap,
        moe_imbalance=imbalance,
        precision=prec,
        recompute="none",
        zero=0,
    )
    if phase == "prefill":
        prompt = _num_in(r"(?:prompt|input) length ([\d,]+)", notes) or (
            1024 * _num_in(r"(\d+)k prompt", notes, DEFAULT_PROMPT / 1024)
        )
        per_dev = _num_in(r"([\d,]+) tokens per device", notes, DEFAULT_PREFILL_TOKENS)
        batch = max(1.0, per_dev / prompt)
        hit = _num_in(r"([\d.]+)% of [\w\s]*input tokens hit", notes, 0.0) / 100.0
        plan = make_plan(
            **common,
            microbatch=batch,
            global_batch=batch * dp,
            seq_len=prompt,
            phase="prefill",
            cache_hit=hit,
        )
        return validate_plan(plan, model, even_layers=False, even_experts=False), None
    ctx = _num_in(r"kv (?:cache )?length (?:per output token )?([\d,]+)", notes) or _num_in(
        r"kv ([\d,]+)", notes, DEFAULT_PROMPT
    )
    accept = 0.0
    if "mtp" in notes and not re.search(r"\b(no|without) mtp", notes):
        accept = _num_in(r"([\d.]+)% acceptance", notes, 100 * DEFAULT_MTP_ACCEPT) / 100.0
    batch = _int_or(p.get("microbatch"), None)
    slo = None
    if batch is None:
        lo_hi = re.search(r"([\d.]+)-([\d.]+) tokens/s per user", notes)
        if not lo_hi:
            raise ValueError("decode row gives neither a batch nor a per-user speed (SLO)")
        slo = 2.0 / (float(lo_hi.group(1)) + float(lo_hi.group(2)))
        batch = 1
    plan = make_plan(
        **common,
        microbatch=batch,
        global_batch=batch * dp,
        seq_len=ctx,
        context=ctx,
        phase="decode",
        mtp_accept=accept,
    )
    return validate_plan(plan, model, even_layers=False, even_experts=False), slo


def predict_moe_comm(row: dict, system) -> float:
    """DeepEP dispatch/combine kernels: bandwidth in GB/s over the bottleneck link (bytes that
    cross the slowest tier / kernel time) or latency in us, from the all-to-all model.
    Dispatch payloads are FP8 (1 byte per element), combine BF16."""
    from emu import collectives
    from emu.topology import participants

    ep = float(row["n_chips"])
    if not ep >= 2:
        raise ValueError("an all-to-all needs n_chips >= 2")
    metric = row["metric"]
    low_latency = "latency" in metric or "low-latency" in str(row.get("notes", "")).lower()
    tokens = DEEPEP["ll_tokens"] if low_latency else DEEPEP["normal_tokens"]
    el = 1.0 if "dispatch" in metric else 2.0
    nbytes = jnp.float32(tokens * DEEPEP["top_k"] * DEEPEP["hidden"] * el)
    t = collectives.all_to_all_time(system, nbytes, jnp.float32(ep))
    if "latency" in metric:
        return t * 1e6
    # bytes over the bottleneck tier (the one with the largest load), per kernel time
    n = participants(system.tiers, jnp.float32(ep), jnp.float32(1.0))
    inside = 1.0
    worst = jnp.float32(0.0)
    crossing = jnp.float32(0.0)
    for tier, nk in zip(system.tiers, n, strict=True):
        leaving = 1.0 - inside / ep
        load = leaving * nbytes / collectives.effective_bandwidth(tier)
        crossing = jnp.where(load > worst, leaving * nbytes, crossing)
        worst = jnp.maximum(load, worst)
        inside = inside * nk
    return crossing / t / 1e9


def predict_metric(metric: str, r, row: dict, model, plan):
    """The row's metric, as published, from a RunResult (jnp: differentiable)."""
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
        return 100.0 * r.mfu
    if metric == "layer_fwd_plus_bwd_time":
        bd = r.breakdown
        nmb = plan.global_batch / (plan.dp * plan.microbatch)
        layers = model.n_layers / plan.pp
        per_mb = (bd.total_s - bd.optimizer_s - bd.exposed_dp_s - bd.bubble_s - bd.head_s) / nmb
        return per_mb / layers * 1e3
    if metric == "gpu_hours_per_trillion_tokens":
        return n * 1e12 / (tokens / t) / 3600.0
    if metric in METRICS_INFERENCE:
        return r.tokens_per_s_per_chip * METRICS_INFERENCE[metric][1]
    raise NotImplementedError(f"metric '{metric}' is not modelled yet")


def message_bytes(row: dict) -> float:
    """Buffer size of a collective row from its notes ("4-8 GB messages" -> geometric mean,
    ">256 MB" -> 256 MB); DEFAULT_MESSAGE_BYTES when the notes give none."""
    notes = str(row.get("notes", ""))
    unit = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "K": 1e3, "M": 1e6, "G": 1e9}
    m = re.search(r"(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB)\b", notes)
    if m:
        u = unit[m.group(3)]
        return math.sqrt(float(m.group(1)) * float(m.group(2))) * u
    m = re.search(r">\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB)\b", notes)
    if m:
        return float(m.group(1)) * unit[m.group(2)]
    return DEFAULT_MESSAGE_BYTES


def predict_allreduce_busbw(row: dict, system):
    """nccl-tests bus bandwidth (GB/s) = size / time * 2 (n - 1) / n. The ring metric
    ("NCCL_ALGO=RING or non-allreduce ops") uses a flat ring without in-switch reduction.
    Differentiable in `system`."""
    from emu import collectives

    n = float(row["n_chips"])
    if not n >= 2:
        raise ValueError("a collective needs n_chips >= 2")
    b = message_bytes(row)
    algo = "ring" if row["metric"] == "effective_nvlink_busbw_ring" else "hierarchical"
    t = collectives.all_reduce_time(system, jnp.float32(b), jnp.float32(n), algorithm=algo)
    return b / t * 2.0 * (n - 1.0) / n / 1e9


def _scored(base: dict, pred: float, row: dict, **extra) -> dict:
    """The result of a modelled row: its error, or an error status if not finite."""
    if not math.isfinite(pred):
        return {
            **base,
            "predicted": None,
            "abs_pct_error": None,
            "status": "error",
            "reason": f"line {row.get('_line')}: prediction is not finite "
            "(inputs outside float32 range)",
        }
    err = abs(pred - base["measured"]) / base["measured"]
    return {
        **base,
        "predicted": pred,
        "abs_pct_error": 100.0 * err,
        "status": "ok",
        "reason": None,
        **extra,
    }


def _base(row: dict) -> dict:
    return {
        "id": str(row["id"]),
        "kind": row["kind"],
        "system": row["system"],
        "metric": row["metric"],
        "measured": float(row["value"]),
        "source": str(row.get("source", "")).split("|")[0].strip(),
    }


def _failed(base: dict, status: str, reason: str) -> dict:
    return {**base, "predicted": None, "abs_pct_error": None, "status": status, "reason": reason}


def prepare_rows(rows: list[dict], *, overrides=None, calibration=None):
    """Turn rows into prediction items. Returns (items, failures): an item is a dict with
    `base`, `row`, `kind` ("run", "allreduce" or "moe_comm"), `system` and, for runs,
    `model` and `plan`; failures are result dicts (skipped or error, with the reason)."""
    items, failures, systems = [], [], {}

    def system_of(name):
        if name not in systems:
            systems[name] = load_system(name, overrides, calibration=calibration)
        return systems[name]

    for row in rows:
        base = _base(row)
        try:
            if row["kind"] == "collective" and row["metric"] in METRICS_ALLREDUCE:
                items.append(
                    dict(base=base, row=row, kind="allreduce", system=system_of(row["system"]))
                )
                continue
            if row["kind"] == "collective" and row["metric"] in METRICS_MOE_COMM:
                items.append(
                    dict(base=base, row=row, kind="moe_comm", system=system_of(row["system"]))
                )
                continue
            known = METRICS_TRAIN if row["kind"] == "train" else set(METRICS_INFERENCE)
            if row["kind"] not in ("train", "prefill", "decode"):
                raise NotImplementedError(f"kind '{row['kind']}' metric '{row['metric']}'")
            if row["metric"] not in known:
                raise NotImplementedError(f"metric '{row['metric']}' is not modelled yet")
            model = row_model(row)
            plan = row_plan(row, model)
            slo = None
            if isinstance(plan, tuple):
                plan, slo = plan
            system = system_of(row["system"])
            if slo is not None:
                from emu.runner import largest_batch

                b = largest_batch(system, model, plan, slo)
                plan = replace(plan, microbatch=jnp.float32(b), global_batch=plan.dp * b)
            prec = plan.precision
            if float(system.chip.peak_flops_per_s.get(prec, 0.0)) <= 0:
                raise ValueError(f"{system.chip.name} has no {prec} support")
            items.append(
                dict(base=base, row=row, kind="run", system=system, model=model, plan=plan)
            )
        except NotImplementedError as e:
            failures.append(_failed(base, "skipped", str(e)))
        except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as e:
            failures.append(_failed(base, "error", f"line {row.get('_line')}: {e}"))
    return items, failures


def run_groups(items: list[dict]) -> dict:
    """Run items grouped by program structure (one compiled, vmapped call per group)."""
    groups = defaultdict(list)
    for idx, it in enumerate(items):
        if it["kind"] != "run":
            continue
        system, model, plan = it["system"], it["model"], it["plan"]
        key = (
            system.name,
            model.ffn,
            model.attention,
            model.tied_embeddings,
            plan.precision,
            plan.algorithm,
            plan.phase,
        )
        groups[key].append(idx)
    return groups


def predict_items(items: list[dict], systems: dict | None = None, *, run=None):
    """Predictions for every item, as jnp scalars (differentiable in the systems).
    `systems` maps a system name to the System to use (default: each item's own);
    `run` evaluates a stacked (models, plans) batch on one system (default: vmapped
    evaluate). Returns (predictions, feasible) lists aligned with `items`."""
    preds = [None] * len(items)
    feas = [None] * len(items)
    sys_of = lambda it: (systems or {}).get(it["system"].name, it["system"])
    run = run or (lambda s, m, p: jax.vmap(evaluate, in_axes=(None, 0, 0))(s, m, p))
    for idxs in run_groups(items).values():
        first = items[idxs[0]]
        out = run(
            sys_of(first),
            stack([items[i]["model"] for i in idxs]),
            stack([items[i]["plan"] for i in idxs]),
        )
        for j, i in enumerate(idxs):
            it = items[i]
            r = jax.tree_util.tree_map(lambda x, j=j: x[j], out)
            preds[i] = predict_metric(it["row"]["metric"], r, it["row"], it["model"], it["plan"])
            feas[i] = r.feasible
    for i, it in enumerate(items):
        if it["kind"] == "allreduce":
            preds[i] = predict_allreduce_busbw(it["row"], sys_of(it))
        elif it["kind"] == "moe_comm":
            preds[i] = predict_moe_comm(it["row"], sys_of(it))
    return preds, feas


_eval_group = jax.jit(jax.vmap(evaluate, in_axes=(None, 0, 0)))


def validate_rows(
    rows: list[dict], *, overrides: dict | None = None, calibration: dict | None = None
) -> list[dict]:
    items, results = prepare_rows(rows, overrides=overrides, calibration=calibration)
    preds, feas = predict_items(items, run=lambda s, m, p: jax.device_get(_eval_group(s, m, p)))
    for it, pred, ok in zip(items, preds, feas, strict=True):
        extra = {} if ok is None else {"feasible": bool(float(ok) > 0.5)}
        results.append(_scored(it["base"], float(pred), it["row"], **extra))
    order = {str(r["id"]): i for i, r in enumerate(rows)}
    results.sort(key=lambda r: order.get(r["id"], len(order)))
    return results


def _stats(errors: list[float]) -> dict:
    if not errors:
        return {"n": 0, "median_abs_pct_error": None, "p90_abs_pct_error": None}
    a = np.asarray(errors)
    return {
        "n": int(a.size),
        "median_abs_pct_error": float(np.median(a)),
        "p90_abs_pct_error": float(np.percentile(a, 90)),
        "mean_abs_pct_error": float(np.mean(a)),
    }


def summarise(results: list[dict]) -> dict:
    ok = [r for r in results if r["status"] == "ok"]
    by_kind, by_system, by_source = defaultdict(list), defaultdict(list), defaultdict(list)
    for r in ok:
        by_kind[r["kind"]].append(r["abs_pct_error"])
        by_system[r["system"]].append(r["abs_pct_error"])
        by_source[r["source"]].append(r["abs_pct_error"])
    return {
        "rows": len(results),
        "modelled": len(ok),
        "skipped": sum(r["status"] == "skipped" for r in results),
        "errors": sum(r["status"] == "error" for r in results),
        "all": _stats([r["abs_pct_error"] for r in ok]),
        "by_kind": {k: _stats(v) for k, v in sorted(by_kind.items())},
        "by_system": {k: _stats(v) for k, v in sorted(by_system.items())},
        "by_source": {k: _stats(v) for k, v in sorted(by_source.items())},
    }


def validate_file(path=None, *, kind: str | None = None, overrides: dict | None = None) -> dict:
    rows, problems = read_rows(path or default_measurements())
    if kind:
        rows = [r for r in rows if r.get("kind") == kind]
    results = problems + validate_rows(rows, overrides=overrides)
    for r in results:
        r.setdefault("predicted", None)
        r.setdefault("measured", None)
        r.setdefault("abs_pct_error", None)
    return {"rows": results, "summary": summarise(results)}


def format_report(report: dict, *, show_skipped: bool = False) -> str:
    lines = []
    hdr = f"{'id':58} {'system':14} {'metric':26} {'predicted':>11} {'measured':>11} {'error':>7}"
    lines += [hdr, "-" * len(hdr)]
    for r in report["rows"]:
        if r["status"] == "ok":
            flag = "" if r.get("feasible", True) else "  (plan exceeds HBM in emu)"
            lines.append(
                f"{r['id'][:58]:58} {r['system']:14} {r['metric'][:26]:26} "
                f"{r['predicted']:11.4g} {r['measured']:11.4g} "
                f"{r['abs_pct_error']:6.1f}%{flag}"
            )
        elif show_skipped or r["status"] == "error":
            lines.append(f"{r['id'][:58]:58} {r['status'].upper()}: {r['reason']}")
    s = report["summary"]
    lines += [
        "",
        f"rows {s['rows']}: modelled {s['modelled']}, skipped {s['skipped']} "
        f"(use --show-skipped for reasons), errors {s['errors']}",
    ]

    def block(title, d):
        out = [f"{title:44} {'n':>4} {'median':>8} {'p90':>8}"]
        for k, v in d.items():
            if v["n"]:
                out.append(
                    f"{k[:44]:44} {v['n']:4d} {v['median_abs_pct_error']:7.1f}% "
                    f"{v['p90_abs_pct_error']:7.1f}%"
                )
        return out

    lines += [""] + block("by kind", {**s["by_kind"], "ALL": s["all"]})
    lines += [""] + block("by system", s["by_system"])
    lines += [""] + block("by source", s["by_source"])
    return "\n".join(lines)


def plot_report(report: dict, path) -> None:
    """Predicted vs measured on log-log axes, one colour per system, with the 1:1 line and
    +-10% bands; written as PNG (needs matplotlib: pip install 'cluster-emu[plot]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ValueError(
            "--plot needs matplotlib; install it with pip install 'cluster-emu[plot]'."
        ) from None
    ok = [r for r in report["rows"] if r["status"] == "ok"]
    if not ok:
        raise ValueError("no modelled rows to plot.")
    fig, ax = plt.subplots(figsize=(7.5, 7))
    systems = sorted({r["system"] for r in ok})
    cmap = plt.get_cmap("tab10")
    for i, s in enumerate(systems):
        pts = [(r["measured"], r["predicted"]) for r in ok if r["system"] == s]
        ax.scatter(*zip(*pts, strict=True), s=18, color=cmap(i % 10), label=s, alpha=0.8)
    lo = min(min(r["measured"], r["predicted"]) for r in ok) * 0.7
    hi = max(max(r["measured"], r["predicted"]) for r in ok) * 1.4
    xs = np.geomspace(lo, hi, 50)
    ax.plot(xs, xs, color="black", lw=1, label="1:1")
    ax.fill_between(xs, xs * 0.9, xs * 1.1, color="grey", alpha=0.25, label="+-10%")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    s = report["summary"]["all"]
    ax.set_title(
        f"emu validate: {s['n']} rows, median |error| {s['median_abs_pct_error']:.1f}%"
        f", p90 {s['p90_abs_pct_error']:.1f}%"
    )
    ax.set_xlabel("measured (each row's metric, as published: s, tok/s, TFLOP/s, GB/s, us)")
    ax.set_ylabel("predicted (same unit)")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    import os

    os.replace(tmp, out)
