"""`emu validate`: predict published measurements and report the error of every row.

Rows follow ../shared/data/MEASUREMENTS.md. Each modelled row becomes (system, model, plan);
rows with the same program structure are stacked and evaluated in one vmapped call. Where a
row leaves a field null, the documented default applies (see `row_plan`): micro-batch 1;
dp = n_chips / (tp pp cp) (also when the published degrees do not multiply to n_chips);
tp = the largest power of two <= 8 dividing the heads and the model-parallel size when only
t*p is known; ZeRO 1 (distributed optimizer) unless the row says FSDP/ZeRO-3 (3);
recomputation "selective" (flash attention); SP on when tp > 1; vpp 1.

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
    overlap = bool(re.search(r"dualpipe|two-(micro)?batch overlap|two-microbatch", text))
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
    if phase == "prefill":
        prompt = _num_in(r"(?:prompt|input) length ([\d,]+)", notes) or (
            1024 * _num_in(r"(\d+)k prompt", notes, DEFAULT_PROMPT / 1024)
        )
        per_dev = _num_in(r"([\d,]+) tokens per device", notes, DEFAULT_PREFILL_TOKENS)
        batch = max(1.0, per_dev / prompt)
        hit = _num_in(r"([\d.]+)% of [\w\s]*input tokens hit", notes, 0.0) / 100.0
        plan = make_plan(
            tp=tp,
            dp=dp,
            ep=ep,
            microbatch=batch,
            global_batch=batch * dp,
            seq_len=prompt,
            phase="prefill",
            cache_hit=hit,
            a2a_overlap=overlap,
            moe_imbalance=imbalance,
            precision=prec,
            recompute="none",
            zero=0,
        )
        return validate_plan(plan, model, even_layers=False, even_experts=False), None
    ctx = _num_in(r"kv (?:cache )?length (?:per output token )?([\d,]+)", notes) or _num_in(
        r"kv ([\d,]+)", notes, DEFAULT_PROMPT
    )
    accept = 0.0
    if "mtp" in notes and "no mtp" not in notes:
        accept = _num_in(r"(\d+)% acceptance", notes, 100 * DEFAULT_MTP_ACCEPT) / 100.0
    batch = _int_or(p.get("microbatch"), None)
    slo = None
    if batch is None:
        lo_hi = re.search(r"([\d.]+)-([\d.]+) tokens/s per user", notes)
        if not lo_hi:
            raise ValueError("decode row gives neither a batch nor a per-user speed (SLO)")
        slo = 2.0 / (float(lo_hi.group(1)) + float(lo_hi.group(2)))
        batch = 1
    plan = make_plan(
        tp=tp,
        dp=dp,
        ep=ep,
        microbatch=batch,
        global_batch=batch * dp,
        seq_len=ctx,
        context=ctx,
        phase="decode",
        mtp_accept=accept,
        a2a_overlap=overlap,
        moe_imbalance=imbalance,
        precision=prec,
        recompute="none",
        zero=0,
    )
    return validate_plan(plan, model, even_layers=False, even_experts=False), slo


def predict_moe_comm(row: dict, system) -> float:
    """DeepEP dispatch/combine kernels: bandwidth in GB/s over the bottleneck link (bytes that
    cross the slowest tier / kernel time) or latency in us, from the all-to-all model.
    Dispatch payloads are FP8 (1 byte per element), combine BF16."""
    from emu import collectives
    from emu.topology import participants

    ep = float(row["n_chips"])
    if ep < 2:
        raise ValueError("an all-to-all needs n_chips >= 2")
    metric = row["metric"]
    low_latency = "latency" in metric or "low-latency" in str(row.get("notes", "")).lower()
    tokens = DEEPEP["ll_tokens"] if low_latency else DEEPEP["normal_tokens"]
    el = 1.0 if "dispatch" in metric else 2.0
    nbytes = np.float32(tokens * DEEPEP["top_k"] * DEEPEP["hidden"] * el)
    t = float(collectives.all_to_all_time(system, nbytes, np.float32(ep)))
    if "latency" in metric:
        return t * 1e6
    n = participants(system.tiers, np.float32(ep), np.float32(1.0))
    inside, worst = 1.0, 0.0
    for tier, nk in zip(system.tiers, n, strict=True):
        leaving = 1.0 - inside / ep
        load = leaving * float(nbytes) / float(collectives.effective_bandwidth(tier))
        if load > worst:
            worst, crossing = load, leaving * float(nbytes)
        inside *= float(nk)
    return crossing / t / 1e9


def predict_metric(metric: str, r, row: dict, model, plan) -> float:
    n = float(r.n_chips)
    t = float(r.step_time_s)
    tokens = float(plan.global_batch * plan.seq_len)
    if metric in ("iteration_time", "train_step_time"):
        return t
    if metric == "tokens_per_s_per_gpu":
        return tokens / t / n
    if metric == "achieved_tflops_per_gpu":
        b, s, n_l, h, v = (
            float(plan.global_batch),
            float(plan.seq_len),
            float(model.n_layers),
            float(model.d_model),
            float(model.vocab),
        )
        flops = 96 * b * s * n_l * h * h * (1 + s / (6 * h) + v / (16 * n_l * h))
        return flops / (t * n) / 1e12
    if metric == "tflops_per_gpu":
        return float(model_flops_per_token(model, plan.seq_len)) * tokens / (t * n) / 1e12
    if metric == "mfu":
        return 100.0 * float(r.mfu)
    if metric == "layer_fwd_plus_bwd_time":
        bd = r.breakdown
        nmb = float(plan.global_batch / (plan.dp * plan.microbatch))
        layers = float(model.n_layers / plan.pp)
        per_mb = (
            float(bd.total_s - bd.optimizer_s - bd.exposed_dp_s - bd.bubble_s) / nmb
            - float(bd.head_s) / nmb
        )
        return per_mb / layers * 1e3
    if metric == "gpu_hours_per_trillion_tokens":
        return n * 1e12 / (tokens / t) / 3600.0
    if metric in METRICS_INFERENCE:
        return float(r.tokens_per_s_per_chip) * METRICS_INFERENCE[metric][1]
    raise NotImplementedError(f"metric '{metric}' is not modelled yet")


_eval_batch = jax.jit(jax.vmap(evaluate))


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


def predict_allreduce_busbw(row: dict, system) -> float:
    """nccl-tests bus bandwidth (GB/s) = size / time * 2 (n - 1) / n. The ring metric
    ("NCCL_ALGO=RING or non-allreduce ops") uses a flat ring without in-switch reduction."""
    from emu import collectives

    n = float(row["n_chips"])
    if n < 2:
        raise ValueError("a collective needs n_chips >= 2")
    b = message_bytes(row)
    algo = "ring" if row["metric"] == "effective_nvlink_busbw_ring" else "hierarchical"
    t = float(collectives.all_reduce_time(system, np.float32(b), np.float32(n), algorithm=algo))
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


def validate_rows(rows: list[dict], *, overrides: dict | None = None) -> list[dict]:
    results = []
    prepared = []
    systems: dict = {}
    for row in rows:
        base = {
            "id": str(row["id"]),
            "kind": row["kind"],
            "system": row["system"],
            "metric": row["metric"],
            "measured": float(row["value"]),
            "source": str(row.get("source", "")).split("|")[0].strip(),
        }
        try:
            if row["kind"] == "collective" and row["metric"] in METRICS_ALLREDUCE:
                if row["system"] not in systems:
                    systems[row["system"]] = load_system(row["system"], overrides)
                pred = predict_allreduce_busbw(row, systems[row["system"]])
                results.append(_scored(base, pred, row))
                continue
            if row["kind"] == "collective" and row["metric"] in METRICS_MOE_COMM:
                if row["system"] not in systems:
                    systems[row["system"]] = load_system(row["system"], overrides)
                pred = predict_moe_comm(row, systems[row["system"]])
                results.append(_scored(base, pred, row))
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
            if row["system"] not in systems:
                systems[row["system"]] = load_system(row["system"], overrides)
            system = systems[row["system"]]
            if slo is not None:
                from emu.runner import largest_batch

                b = largest_batch(system, model, plan, slo)
                plan = replace(plan, microbatch=jnp.float32(b), global_batch=plan.dp * b)
            prec = plan.precision
            if float(system.chip.peak_flops_per_s.get(prec, 0.0)) <= 0:
                raise ValueError(f"{system.chip.name} has no {prec} support")
            prepared.append((base, row, system, model, plan))
        except NotImplementedError as e:
            results.append(
                {
                    **base,
                    "predicted": None,
                    "abs_pct_error": None,
                    "status": "skipped",
                    "reason": str(e),
                }
            )
        except (ValueError, KeyError, TypeError, AttributeError, ArithmeticError) as e:
            results.append(
                {
                    **base,
                    "predicted": None,
                    "abs_pct_error": None,
                    "status": "error",
                    "reason": f"line {row.get('_line')}: {e}",
                }
            )
    groups = defaultdict(list)
    for item in prepared:
        _, _, system, model, plan = item
        key = (
            system.name,
            model.ffn,
            model.attention,
            model.tied_embeddings,
            plan.precision,
            plan.algorithm,
            plan.phase,
        )
        groups[key].append(item)
    for items in groups.values():
        sys_b = stack([i[2] for i in items])
        mod_b = stack([i[3] for i in items])
        plan_b = stack([i[4] for i in items])
        out = jax.device_get(_eval_batch(sys_b, mod_b, plan_b))
        for j, (base, row, _system, model, plan) in enumerate(items):
            r = jax.tree_util.tree_map(lambda x, j=j: np.asarray(x)[j], out)
            pred = predict_metric(row["metric"], r, row, model, plan)
            results.append(_scored(base, pred, row, feasible=bool(float(r.feasible) > 0.5)))
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
