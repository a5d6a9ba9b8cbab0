"""Measurement rows (../shared/data/MEASUREMENTS.md): reading a JSON Lines file, and the
model and plan a row describes.

Where a row leaves a field null, the documented default applies (see `row_plan`):
micro-batch 1; dp = n_chips / (tp pp cp) (also when the published degrees do not multiply to
n_chips); tp = the largest power of two <= 8 dividing the heads and the model-parallel size
when only t*p is known; ZeRO 1 (distributed optimizer) unless the row says FSDP/ZeRO-3 (3);
recomputation "selective" (flash attention); SP on when tp > 1; vpp 1; expert-parallel
serving rows (prefill/decode with ep > 1) use two-micro-batch overlap unless they say "no"
or "without" it.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import NamedTuple

from emu.catalog import load_model, model_from_dict
from emu.parallelism import Plan, make_plan, validate_plan
from emu.struct import replace
from emu.workload import Model

REQUIRED = ("id", "kind", "system", "n_chips", "metric", "value")
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


class RowPlan(NamedTuple):
    """The plan of a row and, for a decode row that gives a per-user speed instead of a
    batch, the TPOT SLO (s) its batch must meet (else None)."""

    plan: Plan
    slo_s: float | None


def default_measurements() -> Path:
    """The measurement set shipped with emu (emu/data/measurements.jsonl)."""
    from importlib import resources

    return Path(str(resources.files("emu.data"))) / "measurements.jsonl"


def read_rows(path) -> tuple[list[dict], list[dict]]:
    """(rows, problems): bad lines are reported with their line number, never fatal."""
    p = Path(path)
    try:
        if not stat.S_ISREG(os.stat(p).st_mode) and not p.is_dir():
            raise ValueError(f"measurement path '{p}' is not a regular file.")
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


def row_model(row: dict) -> Model:
    """The model of a row: its dimensions (dense rows), or the catalog model it names (MoE
    rows), checked against the row."""
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


def _catalog_moe(row: dict, m: dict) -> Model:
    """MoE rows name their model; the row schema has no MLA dims or dense-layer count, so the
    catalog model of that name is used, after checking it agrees with the row."""
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


def _degrees(row: dict, p: dict, model: Model) -> tuple[int, int, int, int, int]:
    """(n_chips, tp, pp, dp, cp) of a row: dp = n / (tp pp cp); tp = the largest power of
    two <= 8 dividing the heads and the model-parallel size when neither tp nor pp is given."""
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
    return n, tp, pp, dp, cp


def _moe_settings(row: dict, model: Model, tp: int, text: str) -> tuple[int, int, bool, float]:
    """(ep, etp, a2a_overlap, moe_imbalance) of a row from its degrees and its text."""
    p = row.get("parallel") or {}
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
    return ep, etp, overlap, imbalance


def row_plan(row: dict, model: Model) -> RowPlan:
    """The plan of a row, with the documented defaults for null fields (module doc)."""
    p = row.get("parallel") or {}
    if not isinstance(p, dict):
        raise ValueError("parallel must be an object")
    n, tp, pp, dp, cp = _degrees(row, p, model)
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
    ep, etp, overlap, imbalance = _moe_settings(row, model, tp, f"{notes} {json.dumps(p).lower()}")
    if row["kind"] in ("prefill", "decode"):
        return _inference_plan(row, model, n, tp, dp * pp, ep, prec, notes, overlap, imbalance)
    seq = _int_or((row.get("model") or {}).get("seq_len"), None)
    if seq is None:
        raise ValueError("model.seq_len is null")
    plan = make_plan(
        ep=ep, etp=etp, moe_imbalance=imbalance, a2a_overlap=overlap, tp=tp, pp=pp, dp=dp,
        cp=cp, microbatch=mb, global_batch=gb, seq_len=seq, vpp=vpp, zero=_zero(p.get("zero")),
        recompute=_recompute(p.get("recompute")), sp=sp, precision=prec, lora="lora" in notes,
    )  # fmt: skip
    return RowPlan(validate_plan(plan, model, even_layers=False), None)


def _inference_plan(row, model, n, tp, dp, ep, prec, notes, overlap, imbalance) -> RowPlan:
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
        return RowPlan(validate_plan(plan, model, even_layers=False, even_experts=False), None)
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
    return RowPlan(validate_plan(plan, model, even_layers=False, even_experts=False), slo)
