"""The plan a measurement row describes, with the documented default for every field it
leaves out.

Training rows (`row_plan`): micro-batch 1; dp = ranks / (tp pp cp) (also when the published
degrees do not multiply to the ranks); tp = the largest power of two <= 8 dividing the heads
and the model-parallel size when only t*p is known; ZeRO 1 (distributed optimizer) unless the
row says FSDP/ZeRO-3 (3); recomputation "selective" (flash attention); SP on when tp > 1;
vpp 1; expert TP = 1 unless the row says TP applies to experts, names an ETP, or has no
expert parallelism (EP1: experts split over TP like any MLP). A row with no
parallel config whose notes cite the repo's example script at n0 chips takes the script's
plan, weak-scaled to the row's chips (`script_plan`). A training row that states none of
tp, pp and dp otherwise takes the degrees, global batch and recomputation `emu run` would
choose for its system, model and chips (`emu.policy.auto_plan`, the plan rule), keeping
what it does state (cp, ep, micro-batch, global batch, vpp, ZeRO, recomputation, SP,
precision, sequence length): splitting all its ranks into tensor and pipeline parallelism,
as the degree rule above does, gives a pipeline of one micro-batch, or more stages than
layers; an expert TP its text names is halved until the rule's EP groups tile its ranks.
(Prefill and decode rows with a batch or an SLO keep the degree rule: TP over the
instance, as serving stacks launch by default; an MoE one that states no EP spreads the
experts over every rank, as `emu run` does; an MoE one that states nothing of its
deployment, no tp, dp, ep, batch or micro-batch (`states_nothing`), takes `emu run`'s
serving rule instead: TP 1, attention DP over every rank.)

Ranks: a row's parallel degrees count ranks, and on a system whose chips hold several dies
(Ascend 910C: 2) a rank is a die while `n_chips` counts packages (MEASUREMENTS.md
"Conventions"): ranks = n_chips x dies_per_chip.

Serving rows (KV cache bf16, FP8 on TensorRT-LLM rows at FP8/FP4: `kv_precision`):
prefill/decode rows that give a per-rank batch (or a per-user speed, the SLO
the batch must meet) are one instance (`row_plan`); expert-parallel ones overlap two
micro-batches unless they say "no" or "without" it. Decode rows that give neither describe
a deployment (`serving_row`, fidelity DESIGN §2 "serving rule"; a PD-separated one that
does not size its decode instance decodes on half the cards, DEFAULT_DECODE_SHARE). A
decode row whose published attention ranks (tp * dp * cp) and expert ranks (ep) add up to
its ranks runs attention/expert disaggregation (`expert_ranks` = ep; `attention_groups` = the "N DP
domains" it states, else 1: `_disaggregation`).
"""

from __future__ import annotations

import json
import math
import re
from typing import NamedTuple

from emu._backend import jnp
from emu.parallelism import Plan, make_plan, validate_plan
from emu.policy import DEFAULT_MTP_ACCEPT, BatchError, auto_plan, default_global_batch
from emu.struct import replace
from emu.validation._rows import COMPARED, NO_MTP, int_or, num_in, row_text, train_seq_len
from emu.workload import Model

#: production expert-load imbalance when a MoE row does not say (perfect-EPLB projections
#: are 1.18x faster than default EPLB: facts §5, CM Table 3 5,655 -> 6,688 and SGLang
#: 6,288 -> 7,417 tok/s); "perfect EPLB" / "force-balanced" rows use 1.0
DEFAULT_MOE_IMBALANCE = 1.18
#: expert-parallel serving (DP attention + EP over several nodes) uses two-micro-batch overlap
#: when a row does not say: the published designs all do (DeepSeek's inference system, facts
#: §5; SGLang large-scale EP; CloudMatrix-Infer's micro-batch pipelining)
DEFAULT_EP_SERVING_OVERLAP = True
#: a training row with MoE layers, TP > 1 and no expert parallelism (EP1) shards its
#: experts over the TP group (Megatron's MoE MLPs are tensor-parallel unless experts are
#: expert-parallel; fidelity DESIGN §5 "expert TP default")
DEFAULT_ETP_WITHOUT_EP = True
# (a row that says "with MTP" but not the rate: `emu.policy.DEFAULT_MTP_ACCEPT`, 70%)
#: DeepSeek's prefill profile: 16,384 tokens per device, 4K prompts (facts §5; row notes)
DEFAULT_PREFILL_TOKENS = 16384
DEFAULT_PROMPT = 4096
#: draft steps of a row that gives an accept length but not the steps (SGLang's EAGLE3 rows
#: of the same doc state 3 steps / 4 draft tokens)
DEFAULT_DRAFT_STEPS = 3.0
#: offline max-throughput serving without a stated batch (TensorRT-LLM trtllm-bench): the
#: largest batch per rank that fits in usable HBM, capped at TRT-LLM's default
#: `max_batch_size` 2,048 and at the request count the row states. On TensorRT-LLM the batch
#: that fits keeps KV cache for each request's whole prompt + output
#: (`ServingRow.kv_reserve`): its default capacity scheduler policy, GUARANTEED_NO_EVICT,
#: starts a request only when blocks for all its tokens are free (trtllm-bench sizes
#: max_batch_size the same way: KV memory / (ISL + OSL), tensorrt_llm/bench/build/tuning.py);
#: the step time reads the mean context prompt + output / 2. Other stacks (vLLM, SGLang)
#: admit by the current tokens and preempt.
OFFLINE_MAX_BATCH = 2048
#: share of a PD-separated deployment's cards that decode when the row does not state the
#: decode instance's size (its tp): half (an assumption; the shipped SGLang rows state it)
DEFAULT_DECODE_SHARE = 0.5

#: a count as notes write it: "832", "1,536" (thousands grouped by commas), whole (no
#: shorter prefix of it is read), not one of a list ("1,2,4,8")
_COUNT = r"(\d{1,3}(?:,\d{3})+(?!\d|,\d)|\d+(?!\d|,\d))"
#: the largest count read as a batch or a number of requests (a list of sizes, "64,128,256",
#: reads as one number: above this, none)
_MAX_COUNT = 10**6
#: a count that is not the whole of a quantity: a decimal ("8.5"), a range or a product
#: ("4-64", "60 x 288"), a rate per device, or a size in tokens ("16k tokens", "4M")
_NOT_A_COUNT = r"(?!\.\d|\s*[-\u2013x\u00d7*/]\s*\d|\s*per\b|\s*[kmb]\b|\s*[kmb]?\s*tokens?\b)"
#: SGLang's --max-running-requests (a server's admission bound: its DP ranks together) and
#: "max N running" bound a deployment's running requests; the decode instance's when the
#: notes name both instances (`_decode_side`). vLLM's --max-num-seqs and TensorRT-LLM's
#: max_batch_size bound each engine (attention-DP rank) and are not read
_ADMISSION = (
    rf"max[-_ ]running[-_ ]requests[=:\s]+{_COUNT}{_NOT_A_COUNT}",
    rf"\bmax {_COUNT} running\b",
)
#: a closed-loop benchmark's concurrency (--max-concurrency 32, "200 concurrent users")
_CONCURRENCY = (
    rf"\bconcurrency[=:\s]+(?:of\s+)?{_COUNT}{_NOT_A_COUNT}",
    rf"{_COUNT} concurrent (?:requests|users|sequences|streams)\b",
)
#: a decode batch named as such ("batch 456", "batch size 1", "bs=8"), not a micro-batch,
#: a local or prefill batch, a product, range, decimal or token count: read as the batch of
#: each attention-DP rank (`serving_row`), as "batch 128" is in DeepSeek's per-GPU
#: profiles and as a deployment without attention DP has one rank's batch
_BATCH_SAID = re.compile(
    rf"(?<![\w.-])(?<!micro )(?<!local )(?<!prefill )(?:batch(?: size)?|bs)[=:\s]+(?:of\s+)?"
    rf"{_COUNT}{_NOT_A_COUNT}"
)


def _decode_side(notes: str, pos: int) -> bool | None:
    """Whether the instance the notes name last before `pos` is the decode one (True), the
    prefill one (False), or none is named (None)."""
    before = notes[:pos].lower()
    d, p = before.rfind("decode"), before.rfind("prefill")
    return None if d == p == -1 else d > p


def _counts(patterns, notes: str) -> list[tuple[int, str, bool | None]]:
    """(count, words, decode side) of every positive count the patterns find in `notes`."""
    out = []
    for pattern in patterns:
        for m in re.finditer(pattern, notes, re.I):
            n = int(m.group(1).replace(",", ""))
            if 1 <= n <= _MAX_COUNT:
                out.append((n, m.group(0).strip(), _decode_side(notes, m.start())))
    return out


def running_requests(notes: str) -> tuple[int | None, str | None]:
    """(running requests, the words read) a deployment row's notes state when its
    `global_batch` is empty: the smaller of the admission bound (`_ADMISSION`: the decode
    instance's where the notes name it, else the largest not named for the prefill one)
    and the smallest concurrency (`_CONCURRENCY`); (None, None) when it states neither."""
    admission = _counts(_ADMISSION, notes)
    decode = [a for a in admission if a[2]] or [a for a in admission if a[2] is None]
    bounds = [max(decode)[:2]] if decode else []
    concurrency = _counts(_CONCURRENCY, notes)
    bounds += [min(concurrency)[:2]] if concurrency else []
    return min(bounds) if bounds else (None, None)


def batch_said(notes: str) -> int | None:
    """The decode batch a deployment row's notes name as such ("batch 1", `_BATCH_SAID`),
    else None."""
    m = _BATCH_SAID.search(notes)
    return n if m and 1 <= (n := int(m.group(1).replace(",", ""))) <= _MAX_COUNT else None


#: TRT-LLM's default `max_num_tokens` 8,192: the prompt tokens per rank of one in-flight
#: prefill chunk (dense models on NVIDIA); MoE and Ascend prefill use DEFAULT_PREFILL_TOKENS
PREFILL_CHUNK_TOKENS = 8192
#: TensorRT-LLM serves FP8 and NVFP4 models with an FP8 KV cache: `trtllm-bench build`
#: forces it ("If the quantization is NVFP4 or FP8, force the KV cache dtype to FP8",
#: tensorrt_llm/bench/build/build.py) and NVIDIA's ModelOpt checkpoints that its
#: perf-overview tables use carry `kv_cache_quant_algo: FP8` in hf_quant_config.json, which
#: the PyTorch backend's "auto" KV dtype follows. Serving rows of that stack at these
#: precisions keep their KV cache in FP8; other stacks keep the bf16 default. A row is on
#: TensorRT-LLM when its `hardware` (which names the serving engine) or id says so.
TRTLLM_STACK = re.compile(r"tensorrt[-_ ]?llm|trt[-_ ]?llm")
FP8_KV_PRECISIONS = ("fp8", "fp4")
#: the "script weak scaling" rule: a row with no parallel config whose notes say the repo's
#: example script "uses TP t PP p VPP v ..., MBS m, GBS g, seq s, <precision> on a x b"
#: chips takes t, p, v, m, s from the script, dp = (ranks // (t p)) (the largest multiple of
#: the model-parallel size that fits; MFU and per-chip rates are per chip) and the global
#: batch g weak-scaled with dp (MindSpeed's linearity figure: 128 -> 7,968 NPUs)
SCRIPT_PATTERN = re.compile(
    r"uses tp(\d+) pp(\d+) vpp(\d+)[^,]*, mbs(\d+), gbs(\d+), seq (\d+), (bf16|fp16|fp8)? ?"
    r"on (\d+)x(\d+)"
)


class RowPlan(NamedTuple):
    """The plan of a row and, for a decode row that gives a per-user speed instead of a
    batch, the TPOT SLO (s) its batch must meet (else None)."""

    plan: Plan
    slo_s: float | None


class ServingRow(NamedTuple):
    """A decode row that describes a deployment (the serving rule, `serving_row`).

    `decode`: the decode instance's plan (batch per DP rank; 1 when `batch_cap` asks for the
    largest that fits); `prefill`: the prefill instance's plan or None; `mode`: "separated"
    (own cards: rate = min(D, P x out/in)), "mixed" (the same cards: rate = 1 / (1/D +
    (in/out)/P)) or "decode" (decode alone, D) with D, P the instances' output and prompt
    tokens/s; `prompt_len`, `output_len`: tokens per request; `cards`: the chips (packages)
    a per-card figure divides the rate by (all of them, prefill included); `batch_cap`:
    None, or the cap of the largest batch that fits (offline rows); `ramp`: the share
    C / N of the benchmark's requests in its first wave (concurrency C, N prompts; 0 when
    the row does not state both), whose prompts queue for the prefill instance before
    their decode starts (`emu.validation.serving_rate`); `kv_reserve`: None, or the tokens
    of KV cache each running sequence holds when the scheduler reserves them for the whole
    request (TensorRT-LLM offline rows: prompt + output), which the largest batch that fits
    is sized by; `batch_read`: None, or how the decode batch was read from the notes of
    a row whose `global_batch` is empty (`running_requests`, `batch_said`), said in the
    prediction's `approximates`."""

    decode: Plan
    prefill: Plan | None
    mode: str
    prompt_len: float
    output_len: float
    cards: float
    batch_cap: int | None
    ramp: float = 0.0
    kv_reserve: float | None = None
    batch_read: str | None = None


def ranks_of(row: dict, dies: int) -> int:
    """Ranks of a train/prefill/decode row: n_chips packages x `dies` per package."""
    n = int_or(row.get("n_chips"), None)
    if n is None:
        raise ValueError("n_chips must be a positive integer")
    return n * dies


def _zero(z) -> int:
    """A row's ZeRO stage: a number as given; else, its parentheticals set aside: FSDP or
    FSDP2 (FULL_SHARD) 3, SHARD_GRAD_OP 2, "ZeRO-N" / "zero_stage=N" / "ZeRO stage: N" / a field
    that starts "stage N" N; plain DDP (no distributed optimizer named) or "none" 0;
    otherwise (a distributed optimizer, a spelling not listed, null) 1, Megatron's
    distributed optimizer."""
    if isinstance(z, int | float) and not isinstance(z, bool):
        return int(z)
    text = re.sub(r"\([^()]*\)", " ", str(z).lower()) if isinstance(z, str) else ""
    if re.search(r"\bfsdp2?\b|full_shard", text) and not re.search(r"\bno\s+fsdp", text):
        return 3
    if "shard_grad_op" in text:
        return 2
    m = re.search(r"\bzero[\s_\-]*(?:stage)?[\s_\-=:]*([0-3])\b", text) or re.match(
        r"\s*stage[\s_\-=:]*([0-3])\b", text
    )
    if m:
        return int(m.group(1))
    if re.fullmatch(r"\s*(?:none|no)\s*", text) or (
        re.search(r"\bddp\b", text) and "distributed optimizer" not in text
    ):
        return 0
    return 1


def _recompute(r) -> str:
    """A row's recompute field as "full", "selective" or "none": none when it says so
    ("disabled", "off", "no recompute", "recompute: none"; a field that starts with
    "selective" stays selective); else the word it starts with; else full when it names full
    granularity ("--recompute-granularity full", "activation checkpointing (full)");
    otherwise (null, a module list, "partial") "selective" (with flash attention: nothing
    rebuilt)."""
    if not isinstance(r, str):
        return "selective"
    low = r.strip().lower()
    said = r"(?:recompute|recomputation|checkpointing)"
    negated = (  # outside parentheses ("partial (not full recompute)" is partial)
        r"\bdisabled\b|\boff\b|^(?:no|false)\b|\b(?:no|not|without)\s+(?:full\s+)?"
        r"(?:activation\s+)?(?:recomput|checkpoint)"
    )
    bare = re.sub(r"\([^()]*\)", " ", low)
    if not low.startswith("selective") and (
        re.search(negated, bare) or re.search(rf"{said}[=:\s(]+none\b", low)
    ):
        return "none"
    for k in ("full", "selective", "none"):
        if low.startswith(k):
            return k
    full = rf"granularity[=:\s]+full\b|\bfull (?:activation )?{said}"
    named = re.search(full, bare) or re.search(rf"{said}[=:\s(]+full\b", low)
    return "full" if named else "selective"


#: Megatron's block recompute method named in a row (not "blockwise FP8" or "transformer
#: block"): `--recompute-method block`, "recompute_method: block", "block method"
_BLOCK_METHOD = re.compile(r"recompute[-_]method[=:\s]+block\b|\bblock method\b|\bmethod block\b")


def _recompute_text(p: dict, notes: str) -> str:
    """A row's recompute field and notes, lower case: where its recompute flags are read."""
    return f"{p.get('recompute') or ''} {notes}".lower()


def _recompute_fraction(p: dict, notes: str, layers: int, pp: int, vpp: int) -> float:
    """The share of a stage's layers a full-recompute row recomputes: Megatron's block
    method recomputes the first N layers of each stage chunk (`--recompute-method block
    --recompute-num-layers N`, "recompute_num_layers: N", "block method, 1 layer per
    stage"), N / (layers / (pp vpp)) capped at 1; 0 for N = 0 (no layer recomputed); 1
    otherwise (the uniform method, or no N, recomputes every layer)."""
    text = _recompute_text(p, notes)
    if _recompute(p.get("recompute")) != "full" or not _BLOCK_METHOD.search(text):
        return 1.0
    if re.search(r"recompute[-_]method[=:\s]+uniform", text):
        return 1.0
    n = num_in(r"(?:recompute[-_]num[-_]layers[=:\s]+|method block,? |block method,? )(\d+)", text)
    if n is None:
        return 1.0
    return min(1.0, n / (layers / max(1, pp * vpp)))


def _recompute_activation(p: dict, notes: str) -> bool:
    """Whether a row recomputes its FFN activation function in backward (MindSpeed's
    `--recompute-activation-function`, "activation-function recompute")."""
    text = _recompute_text(p, notes)
    spelled = (
        r"(?<!without --)(?<!without )(?<!no --)(?<!no )recompute[-_]activation[-_]function"
        r"|(?<!no )activation[- ]function recompute"
    )
    return bool(re.search(spelled, text))


def _with_recompute_share(plan, share: float):
    """`plan` with the recomputed share of layers (`_recompute_fraction`); a share of 0 is no
    full recomputation at all."""
    if share <= 0.0:
        return replace(plan, recompute=jnp.float32(0.0))
    return replace(plan, recompute_fraction=jnp.float32(share))


def _degrees(n: int, p: dict, model: Model) -> tuple[int, int, int, int]:
    """(tp, pp, dp, cp) of a row on n ranks: dp = n / (tp pp cp); tp = the largest power of
    two <= 8 dividing the heads and the model-parallel size when neither tp nor pp is given,
    or when only pp is (and dp is not); pp = 1 when only tp is given (Megatron's default,
    dp takes the rest); with dp given, the missing one takes the rest."""
    cp = int_or(p.get("cp"), 1)
    tp, pp, dp = int_or(p.get("tp"), None), int_or(p.get("pp"), None), int_or(p.get("dp"), None)
    heads = int(float(model.n_heads))
    if tp is None and pp is None:
        mp = n // ((dp or 1) * cp)
        if mp < 1:
            raise ValueError(f"dp*cp = {(dp or 1) * cp} exceeds the {n} ranks")
        tp = max(t for t in (1, 2, 4, 8) if heads % t == 0 and mp % t == 0)
        pp = mp // tp
    elif tp is None and dp is None:
        mp = max(1, n // (pp * cp))
        tp = max(t for t in (1, 2, 4, 8) if heads % t == 0 and mp % t == 0)
    elif tp is None:
        tp = max(1, n // (pp * dp * cp))
    elif pp is None:
        pp = 1 if dp is None else max(1, n // (tp * dp * cp))
    dp = n // (tp * pp * cp)
    if dp < 1 or tp * pp * cp * dp != n:
        raise ValueError(f"tp*pp*cp = {tp * pp * cp} does not divide the {n} ranks")
    return tp, pp, dp, cp


def _moe_settings(row: dict, model: Model, tp: int, text: str) -> tuple[int, int, bool, float]:
    """(ep, etp, a2a_overlap, moe_imbalance) of a row from its degrees and its text."""
    p = row.get("parallel") or {}
    moe = float(model.n_experts) > 0
    ep = int_or(p.get("ep"), 1) if moe else 1
    # "TP=8 ... for attention and experts" (Megatron-LM): experts are tensor-parallel too;
    # "ETP4" (dgxc recipe tables) names the expert TP; without expert parallelism (EP1) the
    # experts are Megatron MLPs split over the TP group like the dense ones
    # (DEFAULT_ETP_WITHOUT_EP; MindSpeed Mixtral TP8 EP1)
    etp = expert_tp(row, text, tp, ep) if moe else 1
    if moe and re.search(r"for attention and experts", text):
        etp = tp
    off = bool(re.search(r"\b(no|without) (two-(micro)?batch overlap|tbo)\b", text))
    overlap = not off and bool(
        re.search(r"dualpipe|two-(micro)?batch overlap|two-microbatch", text)
    )
    if row["kind"] in ("prefill", "decode") and ep > 1:
        # expert-parallel serving overlaps one micro-batch's dispatch/combine with the other's
        # compute unless the row says otherwise (DEFAULT_EP_SERVING_OVERLAP)
        overlap = overlap or (DEFAULT_EP_SERVING_OVERLAP and not off)
    balanced = bool(re.search(r"perfect eplb|force-balanced|fake[ _-]balanced", text))
    imbalance = 1.0 if (balanced or not moe) else DEFAULT_MOE_IMBALANCE
    return ep, etp, overlap, imbalance


def expert_tp(row: dict, text: str, tp: int, ep: int) -> int:
    """The expert TP of an MoE row: "ETP4" (dgxc recipe tables) or "MoE TP4" / "moe_tp_size
    4" as stated; else tp without expert parallelism (DEFAULT_ETP_WITHOUT_EP: the experts are
    split over the TP group like the dense FFN, in Megatron and in SGLang's TP8 EP1); else, on
    TensorRT-LLM (`trtllm_row`), whose --tp counts the GPUs the experts are split over too
    (moe_tp x moe_ep = tp), tp / ep where ep divides tp; else 1."""
    m = re.search(r"\betp(\d+)|\bmoe[\s_-]*tp(?:[\s_-]*size)?[\s=:]*(\d+)", text)
    if m and int(m.group(1) or m.group(2)) > 0:
        return int(m.group(1) or m.group(2))
    if ep == 1 and DEFAULT_ETP_WITHOUT_EP:
        return tp
    if trtllm_row(row) and 1 < ep < tp and tp % ep == 0:
        return tp // ep
    return 1


def script_plan(row: dict) -> dict | None:
    """The row with the plan of the example script its notes cite, weak-scaled to its
    chips (SCRIPT_PATTERN), when the row gives no parallel config; else None."""
    p = row.get("parallel") or {}
    if any(v is not None for v in p.values()):
        return None
    m = SCRIPT_PATTERN.search(row_text(row))
    if not m:
        return None
    tp, pp, vpp, mbs, gbs, seq = (int(x) for x in m.groups()[:6])
    prec, a, b = m.group(7), int(m.group(8)), int(m.group(9))
    n = int(row["n_chips"]) // (tp * pp) * (tp * pp)
    if n < tp * pp:
        raise ValueError(f"the cited script's tp*pp = {tp * pp} exceeds n_chips")
    dp, dp0 = n // (tp * pp), max(1, a * b // (tp * pp))
    gb = max(dp * mbs, gbs * dp // dp0 // (dp * mbs) * dp * mbs)
    p = dict(p, tp=tp, pp=pp, vpp=vpp, microbatch=mbs, dp=dp, global_batch=gb)
    model = dict(row.get("model") or {}, seq_len=(row.get("model") or {}).get("seq_len") or seq)
    return dict(row, n_chips=n, parallel=p, model=model, precision=row.get("precision") or prec)


def _row_seq_len(row: dict) -> int:
    """A training row's sequence length (`_rows.train_seq_len`: model.seq_len, else its
    notes', else the documented default); one line naming what is wrong when model.seq_len
    is not a positive integer."""
    seq = train_seq_len(row)[0]
    if seq is None:
        raw = (row.get("model") or {}).get("seq_len")
        raise ValueError(f"model.seq_len must be a positive integer (got {raw!r})")
    return seq


#: a training row's global batch written in its notes: "GBS=64", "GBS1024", "global batch
#: size 1536", "global batch of 2,048", "global_batch_size: 512" (not a product, "global
#: batch size of 60 x 288", nor a size in tokens, "global batch of 16M tokens")
_GBS = re.compile(
    rf"(?:\bgbs[=:\s]*|\bglobal[ _]batch(?:[ _]size)?(?:[=:\s]+|\s+of\s+)){_COUNT}{_NOT_A_COUNT}"
)
#: a training batch written in tokens: "batch 2M tokens", "global batch size of 4M tokens",
#: "batch size: 16M tokens" (K and M binary: the batches are powers of two in sequences,
#: OPT's 2M is 1,024 x 2,048 and Llama 3's 16M 2,048 x 8,192); its sequences are the tokens
#: over the row's sequence length
_GBS_TOKENS = re.compile(
    r"(?<!micro-)(?<!micro )(?<!micro_)(?<!mini-)(?<!mini )(?<!local )(?<!per-gpu )"
    r"(?<!per gpu )(?<!per-device )(?<!per device )(?<!sub-)"
    r"\b(?:global[ _])?batch(?:[ _]size)?(?:\s+of|\s*[=:])?\s*(?:~|about\s+)?"
    r"(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)\s*([km]?)\s*tokens\b"
)
#: training metrics that are the time of one step: they scale with the global batch, which a
#: row that states none takes from the plan rule (`emu.policy.default_global_batch`), and
#: says so (`_predict.item_notes`): Korthikanti's 4-sequence iterations, blanked, are timed
#: for 2,048 sequences
STEP_TIME_METRICS = frozenset({"iteration_time", "train_step_time"})


def global_batch_of(row: dict) -> tuple[int | None, str | None]:
    """(global batch, how it was read) of a training row: its `parallel.global_batch`, else
    the batch its notes write (`_GBS`), else (None, None): the plan rule's
    (`emu.policy.default_global_batch`), where a row with degrees took one micro-batch per
    DP rank (DeepSeek-V3's PP16 run, blanked, came out 14x slow)."""
    p = row.get("parallel") or {}
    gb = int_or(p.get("global_batch"), None)
    if gb is not None:
        return gb, None
    text = row_text(row)
    m = _GBS.search(text)
    n = int(m.group(1).replace(",", "")) if m else 0
    if 1 <= n <= _MAX_COUNT:
        return n, f"global batch not in parallel.global_batch: {n} from the notes ('{m.group(0)}')"
    m, seq = _GBS_TOKENS.search(text), train_seq_len(row)[0]
    if m and seq:
        tokens = (
            float(m.group(1).replace(",", "")) * {"k": 2.0**10, "m": 2.0**20, "": 1.0}[m.group(2)]
        )
        n = max(1, round(tokens / seq))
        if n <= _MAX_COUNT:
            return n, (
                f"global batch not in parallel.global_batch: {n} sequences of {seq} tokens "
                f"from the notes' batch in tokens ('{m.group(0)}')"
            )
    return None, None


def states_no_degrees(p: dict) -> bool:
    """Whether a row's parallel config states none of tp, pp and dp."""
    return all(int_or(p.get(k), None) is None for k in ("tp", "pp", "dp"))


def _rule_plan(row: dict, model: Model, system, p: dict) -> RowPlan:
    """A training row that states none of tp, pp and dp: the plan rule's degrees, global
    batch and recomputation for its system, model and chips, with every knob it does state
    kept (module doc); a stated global batch is the one the rule compares its plans at
    (only plans whose dp x micro-batch divide it); where none does (`emu.policy.BatchError`),
    the rule's plan at its own batch, with the stated one rounded to whole micro-batches per
    DP rank."""
    seq = _row_seq_len(row)
    notes = row_text(row)
    knobs = {
        "cp": int_or(p.get("cp"), None),
        "ep": int_or(p.get("ep"), None) if float(model.n_experts) > 0 else None,
        "microbatch": int_or(p.get("microbatch"), None),
        "vpp": int_or(p.get("vpp"), None),
        "zero": _zero(p.get("zero")) if p.get("zero") is not None else None,
        "recompute": _recompute(p.get("recompute")) if p.get("recompute") is not None else None,
        "sp": None if p.get("sp") is None else bool(p.get("sp")),
        "recompute_activation": _recompute_activation(p, notes) or None,
    }
    common = dict(seq_len=seq, precision=row.get("precision") or "bf16", lora="lora" in notes)
    gb = global_batch_of(row)[0]  # else the rule's default (`default_global_batch`)
    plan = None
    if gb is not None:  # the rule compares its plans at the stated batch ...
        try:
            plan = auto_plan(system, model, int(row["n_chips"]), global_batch=gb, **common, **knobs)
        except BatchError:
            plan = None  # ... unless no plan's dp x micro-batch divides it
    if plan is None:
        plan = auto_plan(system, model, int(row["n_chips"]), **common, **knobs)
        if gb is not None:  # the stated batch, rounded to whole micro-batches per DP rank
            unit = int(float(plan.dp)) * int(float(plan.microbatch))
            plan = replace(plan, global_batch=jnp.float32(unit * max(1, round(gb / unit))))
    tp = int(float(plan.tp))
    _, etp, overlap, imbalance = _moe_settings(
        dict(row, parallel=dict(p, ep=int(float(plan.ep)))), model, tp,
        f"{notes} {json.dumps(p).lower()}",
    )  # fmt: skip
    # the text's expert TP where the rule's EP groups leave room for it, else halved until
    # they do ("TP=8 for attention and experts" beside the rule's EP 8 on 240 GPUs:
    # ep x etp = 64 does not tile tp x dp = 40 ranks; 8 x 4 = 32 does not either, 8 x 1 does)
    ranks = tp * int(float(plan.dp)) * int(float(plan.cp))
    while etp > 1 and ranks % (int(float(plan.ep)) * etp):
        etp //= 2
    plan = replace(
        plan, etp=jnp.float32(etp), moe_imbalance=jnp.float32(imbalance),
        a2a_overlap=jnp.float32(overlap),
    )  # fmt: skip
    if float(plan.recompute) > 1.5:  # block recompute of N layers of the rule's stages
        pp, vpp = int(float(plan.pp)), int(float(plan.vpp))
        share = _recompute_fraction(p, notes, int(float(model.n_layers)), pp, vpp)
        plan = _with_recompute_share(plan, share)
    return RowPlan(validate_plan(plan, model, even_layers=False, even_experts=False), None)


def states_nothing(p: dict) -> bool:
    """Whether a serving row's parallel config states nothing of its deployment (no tp, dp,
    ep, batch or micro-batch; pp and cp are not serving degrees): it takes `emu run`'s
    serving rule for MoE models (TP 1, data-parallel attention over every rank, EP over
    all), where a row that states some of it keeps its reading (a deployment row SGLang's
    convention, --tp-size counting the instance's ranks; an instance row the degree
    rule)."""
    keys = ("tp", "dp", "ep", "global_batch", "microbatch")
    return all(int_or(p.get(k), None) is None for k in keys)


def row_plan(row: dict, model: Model, *, dies: int = 1, system=None) -> RowPlan:
    """The plan of a train/prefill/decode row on ranks = n_chips x `dies`, with the
    documented defaults for null fields (module doc); `system` (the row's) lets a training
    row that states no degrees take the plan rule's (`_rule_plan`)."""
    p = row.get("parallel") or {}
    if not isinstance(p, dict):
        raise ValueError("parallel must be an object")
    if system is not None and row["kind"] == "train" and states_no_degrees(p):
        return _rule_plan(row, model, system, p)
    n = ranks_of(row, dies)
    er, groups = _disaggregation(row, n)
    if row["kind"] in ("prefill", "decode") and float(model.n_experts) > 0 and states_nothing(p):
        tp, pp, dp, cp = 1, 1, n - er, 1  # `emu run`'s serving rule: TP 1, attention DP
    else:
        tp, pp, dp, cp = _degrees(n - er, p, model)
    mb = int_or(p.get("microbatch"), 1)
    if row["kind"] == "train":  # stated (field or notes), else the plan rule's default
        gb = global_batch_of(row)[0] or default_global_batch(dp * mb, _row_seq_len(row))
    else:
        gb = int_or(p.get("global_batch"), dp * mb)
    if gb % (dp * mb):
        gb = dp * mb * max(1, round(gb / (dp * mb)))
    sp = p.get("sp")
    sp = (tp > 1) if sp is None else bool(sp)
    vpp = int_or(p.get("vpp"), 1) if pp > 1 else 1
    layers = int(float(model.n_layers))
    if layers < pp * vpp:
        vpp = 1
    prec = row.get("precision") or "bf16"
    notes = row_text(row)
    serving = row["kind"] in ("prefill", "decode")
    if serving and float(model.n_experts) > 0 and int_or(p.get("ep"), None) is None:
        # serving spreads the experts over every rank (the CLI's rule), and overlaps their
        # all-to-alls as expert-parallel serving does (`_moe_settings`)
        row = dict(row, parallel=dict(p, ep=tp * dp * pp))
    ep, etp, overlap, imbalance = _moe_settings(row, model, tp, f"{notes} {json.dumps(p).lower()}")
    if serving:
        disagg = dict(expert_ranks=er, attention_groups=groups) if er else {}
        overlap = overlap and not er  # domains take turns on the experts instead
        return _inference_plan(
            row, model, tp, dp * pp, ep, prec, notes, overlap, imbalance, etp=etp, **disagg
        )
    seq = _row_seq_len(row)
    plan = make_plan(
        ep=ep, etp=etp, moe_imbalance=imbalance, a2a_overlap=overlap, tp=tp, pp=pp, dp=dp,
        cp=cp, microbatch=mb, global_batch=gb, seq_len=seq, vpp=vpp, zero=_zero(p.get("zero")),
        recompute=_recompute(p.get("recompute")), sp=sp, precision=prec, lora="lora" in notes,
        recompute_activation=_recompute_activation(p, notes),
    )  # fmt: skip
    plan = _with_recompute_share(plan, _recompute_fraction(p, notes, layers, pp, vpp))
    return RowPlan(validate_plan(plan, model, even_layers=False, even_experts=False), None)


def trtllm_row(row: dict) -> bool:
    """Whether a serving row ran on TensorRT-LLM (TRTLLM_STACK in its hardware or id)."""
    return bool(TRTLLM_STACK.search(f"{row.get('hardware') or ''} {row['id']}".lower()))


#: a KV-cache format the notes state, the first said: "kv_cache_dtype fp8", "KV cache in
#: INT8", "attention/KV BF16", "kv-cache: fp8_e4m3", or "FP8 KV cache", "BF16/FP16 KV", "FP8
#: attention/KV" (not a format glued to a "kv cache fp8": "model in bf16 kv cache fp8")
_KV_FMT = r"(fp8|bf16|fp16|int8)(?:_e[45]m[23])?"
#: what may stand between "kv" and the format said of it: "kv cache in", "kv_cache_dtype=",
#: "kv-cache: ("
_KV_TO_FMT = r"(?:[\s_-]*cache)?(?:[\s_-]*dtype)?(?:\s*(?:in|=|:|is))?\s*\(?\b"
_KV_AFTER = re.compile(rf"\bkv{_KV_TO_FMT}{_KV_FMT}\b")
_KV_BEFORE = re.compile(
    rf"\b{_KV_FMT}(?:\s*/\s*(?:bf16|fp16))?[\s-]*(?:attention\s*(?:/|and)\s*)?kv\b"
    rf"(?!{_KV_TO_FMT}{_KV_FMT})"
)
#: the KV_PRECISIONS format of each stated one (an INT8 cache keeps one byte per element,
#: as FP8)
_KV_OF = {"fp8": "fp8", "int8": "fp8", "bf16": "bf16", "fp16": "bf16"}


def kv_precision(row: dict) -> str:
    """The KV-cache format of a serving row: the first its notes state (`_KV_AFTER`,
    `_KV_BEFORE`), else "fp8" for TensorRT-LLM rows at FP8/FP4 (`trtllm_row`,
    FP8_KV_PRECISIONS), else "bf16"."""
    text = row_text(row)
    found = [m for m in (_KV_AFTER.search(text), _KV_BEFORE.search(text)) if m]
    if found:  # the first said ("fp8 kv cache (vs kv cache in bf16)" is fp8)
        return _KV_OF[min(found, key=lambda m: m.start()).group(1)]
    low = str(row.get("precision") or "bf16").lower() in FP8_KV_PRECISIONS
    return "fp8" if low and trtllm_row(row) else "bf16"


def lengths(row: dict) -> tuple[float | None, float | None]:
    """(prompt, output) tokens per request of a serving row from its notes or id ("input
    6000, output 1600", "2048/2048 ->", "2K+2K workload", "..._3p5k_1p5k_...",
    "..._128_2048"); None where the row does not say."""
    notes = str(row.get("notes", "")).lower()
    rid = row["id"].lower()
    for pattern in (
        r"\b(?:input|prompt)s? (?:length )?(\d[\d,]*)\s*[,/|;]\s*outputs? (?:length )?(\d[\d,]*)",
        r"\bin (\d+) / out (\d+)",
        r"\b(\d{3,6})/(\d{3,6}) ->",
    ):
        m = re.search(pattern, notes)
        if m:
            return tuple(float(g.replace(",", "")) for g in m.groups())
    # "ISL = 1K, OSL = 2K", "ISL 128K / OSL 8K", "ISL/OSL 1024/2048" (K: 1,024 tokens)
    m = re.search(_ISL_OSL, notes)
    if m:
        isl, osl = (g for g in m.groups() if g)
        return _tokens(isl), _tokens(osl)
    m = re.search(r"\b(\d+)k\+(\d+)k workload", notes)  # "a fixed 2K+2K workload"
    if m:
        return tuple(1024.0 * float(g) for g in m.groups())
    m = re.search(r"_(\d+(?:p\d+)?)k_(\d+(?:p\d+)?)k(?:_|$)", rid)
    if m:
        return tuple(float(g.replace("p", ".")) * 1000 for g in m.groups())
    m = re.search(r"_(\d{2,6})_(\d{2,6})$", rid)
    if m:
        return float(m.group(1)), float(m.group(2))
    isl = num_in(r"(\d+)k-token prompts", notes)
    osl = num_in(r"(\d+)k-token outputs", notes)
    if isl:
        return 1024 * isl, (1024 * osl if osl else None)
    return stated_prompt(notes), None


#: a token count: "2,048", "2048", "2k", "1.5k" (K: 1,024 tokens)
_TOKENS = r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?k?)\b"
#: a prompt stated alone: "input length 4,096", "prompt length 128k", "2,000-token input(s)",
#: "ISL=2K", "ISL 1024"
_PROMPT = re.compile(
    rf"(?:input|prompt) length\s*[=:]?\s*{_TOKENS}|{_TOKENS}-token (?:input|prompt)"
    rf"|\bisl\s*[=:]?\s*{_TOKENS}"
)


def stated_prompt(notes: str) -> float | None:
    """The prompt tokens a (lower-case) text states alone (`_PROMPT`), else None."""
    m = _PROMPT.search(notes)
    return _tokens(next(g for g in m.groups() if g)) if m else None


#: the ISL/OSL pair of TensorRT-LLM's and InferenceMAX's tables: "isl = 1k, osl = 2k", "isl
#: 128k / osl 8k", "isl/osl 1024/2048"
_ISL_OSL = (
    rf"\bisl\s*[=:]?\s*{_TOKENS}\s*[,/;]?\s*osl\s*[=:]?\s*{_TOKENS}"
    rf"|\bisl\s*/\s*osl\s*[=:]?\s*{_TOKENS}\s*/\s*{_TOKENS}"
)


def _tokens(text: str) -> float:
    """Tokens of "2048", "2,048" or "2k" (1,024 a K)."""
    text = text.replace(",", "")
    return 1024.0 * float(text[:-1]) if text.endswith("k") else float(text)


def _context(row: dict, notes: str) -> float:
    """Decode context: the row's "kv (cache) length", else prompt + half the output, else
    the prompt, else its `model.seq_len` (on the shipped decode rows with a batch and no
    stated lengths, seq_len is the KV length their notes give), else DEFAULT_PROMPT."""
    ctx = num_in(r"kv (?:cache )?length (?:per output token )?([\d,]+)", notes) or num_in(
        r"kv ([\d,]+)", notes
    )
    if ctx:
        return ctx
    isl, osl = lengths(row)
    if isl:
        return isl + (osl or 0.0) / 2
    return float(int_or((row.get("model") or {}).get("seq_len"), None) or DEFAULT_PROMPT)


def _mtp_accept(notes: str) -> float:
    if "mtp" not in notes or NO_MTP.search(notes):
        return 0.0
    pct = num_in(r"([\d.]+)% acceptance", notes) or num_in(
        r"acceptance rate of (?:about )?([\d.]+)%", notes, 100 * DEFAULT_MTP_ACCEPT
    )
    return pct / 100.0


_GROUP_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "eight": 8}


def _disaggregation(row: dict, n: int) -> tuple[int, int]:
    """(expert_ranks, attention_groups) of a decode row that states attention/expert
    disaggregation: its published tp * dp * cp attention ranks and ep expert ranks add up to
    its n ranks (xDeepServe: 480 + 288 = 768 dies); the attention ranks form the "N DP
    domains" the row states (else 1). Other rows: (0, 1)."""
    p = row.get("parallel") or {}
    tp, dp, ep = (int_or(p.get(k), None) for k in ("tp", "dp", "ep"))
    cp = int_or(p.get("cp"), 1)
    if row["kind"] != "decode" or None in (tp, dp, ep) or tp * dp * cp + ep != n:
        return 0, 1
    m = re.search(r"\b(\d+|" + "|".join(_GROUP_WORDS) + r") dp domains", row_text(row))
    groups = 1 if m is None else _GROUP_WORDS.get(m.group(1)) or int(m.group(1))
    return ep, groups


def _inference_plan(row, model, tp, dp, ep, prec, notes, overlap, imbalance, **disagg) -> RowPlan:
    phase = row["kind"]
    p = row.get("parallel") or {}
    common = dict(
        **disagg,
        tp=tp,
        dp=dp,
        ep=ep,
        a2a_overlap=overlap,
        moe_imbalance=imbalance,
        precision=prec,
        recompute="none",
        zero=0,
        kv_precision=kv_precision(row),
    )
    if phase == "prefill":
        prompt, batch, _ = prefill_shape(row)
        hit = num_in(r"([\d.]+)% of [\w\s]*input tokens hit", notes, 0.0) / 100.0
        plan = make_plan(
            **common,
            microbatch=batch,
            global_batch=batch * dp,
            seq_len=prompt,
            phase="prefill",
            cache_hit=hit,
        )
        return RowPlan(validate_plan(plan, model, even_layers=False, even_experts=False), None)
    ctx = _context(row, notes)
    accept = _mtp_accept(notes) if float(model.mtp_layers) > 0 else 0.0
    # a chain of drafts the notes state ("3 steps", "num_nextn_predict_layers 3", an
    # accept length above 2) as the serving rule reads it; one MTP draft as mtp_accept
    k, acc = speculation(notes, model)
    spec = dict(draft_tokens=k, accept_len=acc, mtp_accept=0.0) if k > 1 else {}
    batch = int_or(p.get("microbatch"), None)
    slo = None
    if batch is None:
        slo = per_user_slo(notes)
        if slo is None:
            raise ValueError("decode row gives neither a batch nor a per-user speed (SLO)")
        batch = 1
    plan = make_plan(
        **common,
        microbatch=batch,
        global_batch=batch * dp,
        seq_len=ctx,
        context=ctx,
        phase="decode",
        **({"mtp_accept": accept} | spec),
    )
    return RowPlan(validate_plan(plan, model, even_layers=False, even_experts=False), slo)


def prefill_shape(row: dict) -> tuple[float, float, list[str]]:
    """(prompt tokens, sequences per rank, what was assumed) of a prefill row that is not a
    deployment: the prompt its notes state (`stated_prompt`: "input length 4,096", "ISL=2K";
    "4k prompt"), else its `model.seq_len` (a prefill row's sequence is its prompt), else
    DEFAULT_PROMPT; its micro-batch, else its prompt tokens per device ("16,384 tokens per
    device" or per accelerator, GPU, NPU, die or rank, else DEFAULT_PREFILL_TOKENS) over the
    prompt, in whole sequences (rounded down, at least one)."""
    p, notes, said = row.get("parallel") or {}, row_text(row), []
    prompt = stated_prompt(notes)
    k = num_in(r"(\d+)k prompt", notes)
    seq = int_or((row.get("model") or {}).get("seq_len"), None)
    if not prompt:
        prompt = 1024 * k if k else (seq or DEFAULT_PROMPT)
        if not (k or seq):
            said.append(f"prompt length not stated: {DEFAULT_PROMPT:,} tokens assumed")
    batch = int_or(p.get("microbatch"), None)
    if batch is None:
        # "16,384 tokens per device", "tokens per GPU: 16,384"; not a rate ("22,480 tokens
        # per GPU per second", "tokens per gpu/sec")
        dev = r"tokens per (?:device|accelerator|gpu|npu|die|rank)\b"
        rate = r"(?!\s*(?:\(?\s*per\s+s(?:ec(?:ond)?)?\b|/\s*s(?:ec(?:ond)?)?\b))"
        count = r"(\d{1,3}(?:,\d{3})+|\d+)"
        per_dev = num_in(rf"(?<![\w.,]){count} {dev}{rate}", notes) or num_in(
            rf"{dev}{rate}\s*[:=]?\s*{count}(?![\d.])", notes
        )
        batch = max(1.0, float((per_dev or DEFAULT_PREFILL_TOKENS) // prompt))  # whole sequences
        if per_dev is None:
            said.append(
                f"prefill batch not stated: {DEFAULT_PREFILL_TOKENS:,} prompt tokens per rank "
                f"assumed ({batch:g} sequences)"
            )
    return prompt, batch, said


#: prefill and decode named on the same devices: "prefill and decode share the 8 GPUs", "run
#: on the same GPU" (a count, or "same": the shipped SGLang rows' "share the cards in
#: pd-mixed mode" is said of PD-separated rows too)
_SAME_DEVICES = (
    r"prefill and decode (?:share the \d+|run on the same(?: \d+)?) "
    r"(?:gpus?|npus?|cards?|chips?|dies|devices?)\b"
)
#: a run whose prefills share the decode ranks: "PD mixed", "interleaved", "offline",
#: `_SAME_DEVICES`, "static-batch" benchmarks (each batch's context phase is timed with it)
_SHARED_RANKS = r"pd mixed|interleaved|offline|static[- ]batch|" + _SAME_DEVICES
#: a run with a stated batch whose prefills share its ranks: narrower than _SHARED_RANKS
#: ("interleaved sliding-window attention" and "quantized offline" are not such runs;
#: "MLPerf offline scenario", "offline (max throughput)" are)
_SHARED_BATCH = (
    r"pd mixed|static[- ]batch"
    r"|(?<!quantized )(?<!quantised )(?<!converted )(?<!calibrated )\boffline\b"
    r"(?![\s-]+(?:quantiz|quantis|calibrat|conver))"
    r"|(?:prefill|context)\s*(?:\+|and|/|&)\s*(?:decode|generation)\s+interleaved|" + _SAME_DEVICES
)


def needs_serving_rule(row: dict, ranks: int | None = None) -> bool:
    """A decode row that gives no per-user speed (SLO) and either no per-rank batch or a
    batch in a run where prefill and decode share the ranks (`_SHARED_BATCH`: "offline max
    throughput", "prefill+decode interleaved", "static-batch", "PD mixed") whose prompt and
    output lengths are stated or split from its seq_len (`_default_lengths`) and whose
    stated degrees are its `ranks` (tp x dp x pp, or SGLang's tp with a dp <= tp; else the
    batch path's degrees, `_degrees`, apply; `ranks` None skips this check): it
    describes a deployment, predicted by the serving rule (`serving_row`; the output rate
    of a mixed run counts its prefills)."""
    p = row.get("parallel") or {}
    notes = row_text(row)
    if row["kind"] != "decode" or per_user_slo(notes) is not None:
        return False
    if int_or(p.get("microbatch"), None) is None:
        return True
    tp, dp = int_or(p.get("tp"), 1), int_or(p.get("dp"), 1)
    # Megatron's tp x dp x pp ranks, or SGLang's --tp-size over all of them, --dp-size <= tp
    own = ranks is None or tp * dp * int_or(p.get("pp"), 1) == ranks or (tp == ranks and dp <= tp)
    return (
        bool(re.search(_SHARED_BATCH, notes))
        and _default_lengths(row, *lengths(row))[1] is not None
        and own
    )


#: a decode speed per user, one value or a range ("20-22 tokens/s per user", "21 tok/s/user",
#: "20 to 22 output tokens per second per user")
_PER_USER = re.compile(
    r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)"
    r"(?:\s*(?:-|\u2013|to)\s*(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?))?\s*(?:output\s+)?"
    r"(?:tokens?|toks?)\s*(?:/\s*s(?:ec)?\b|per second)\s*(?:per user|/\s*user)",
    re.I,
)


def per_user_slo(notes: str) -> float | None:
    """The TPOT SLO (s) a decode row's per-user speed sets (`_PER_USER`; a range: its
    mid-point), else None."""
    m = _PER_USER.search(notes)
    if m is None:
        return None
    lo = float(m.group(1).replace(",", ""))
    speed = (lo + float((m.group(2) or m.group(1)).replace(",", ""))) / 2.0
    return 1.0 / speed if speed > 0 else None


#: a row that runs no speculative decoding at all
_NO_SPEC = re.compile(
    COMPARED + r"\b(?:no|without) specul\w*\b(?!(?:\s+decoding)?\s+(?:baseline|run|case))"
    r"|\bspeculative decoding (?:is )?(?:off|disabled)\b"
)
#: a draft model other than the model's own MTP modules (a row may say "no MTP" and use one)
_DRAFT_MODEL = re.compile(r"eagle|medusa|draft model|n-?gram|lookahead")


def speculation(notes: str, model: Model) -> tuple[float, float]:
    """(draft tokens k, accept length A) of a decode row: "accept length 2.59" with
    "NEXTN 3 steps / 4 draft tokens" (k = steps = draft tokens - 1, the verified root
    excluded; the largest stated steps: a PD deployment's prefill instance runs NEXTN 1) or
    "EAGLE3 3 steps" (DEFAULT_DRAFT_STEPS when only the accept length is given; at least
    A - 1); steps > 1 without an accept length: A = 1 + a + ... + a^k with a =
    DEFAULT_MTP_ACCEPT (each draft accepted after its predecessor); "with MTP" without an
    accept length: one draft at DEFAULT_MTP_ACCEPT; (0, 1) without speculation, and for a
    row that turns it off ("no speculative decoding", or "no MTP" without an EAGLE or other
    draft model), whatever accept length it quotes of another run."""
    if _NO_SPEC.search(notes) or (NO_MTP.search(notes) and not _DRAFT_MODEL.search(notes)):
        return 0.0, 1.0
    # "accept length 2.59", "accept 2.94", "acceptance rate ~3.06" (not a percentage)
    acc = num_in(
        r"accept(?:ance)?(?: (?:length|rate))?\s*(?:of\s*|[:=]\s*)?[~\u2248]?\s*"
        r"(\d+(?:\.\d+)?)(?!\s*%|\d|\.\d)",
        notes,
    )
    # the decode instance's steps: the largest stated (PD prefill instances run NEXTN 1);
    # TensorRT-LLM's "num_nextn_predict_layers 3" and "MTP3" are three MTP drafts, its
    # EAGLE "max_draft_len 3" three drafts
    steps = [
        float(x)
        for x in re.findall(
            r"(?:nextn|eagle\d*|mtp|specul\w*|draft\w*)\W{1,3}(?:\w+\W{1,3}){0,2}?(\d+) steps"
            r"|speculative[-_]num[-_]steps[=:\s]+(\d+)|nextn (\d+)"
            r"|nextn_predict_layers[=:\s]+(\d+)|max_draft_len[=:\s]+(\d+)",
            notes,
        )
        for x in x
        if x and 0 < float(x) <= 16
    ]
    mtp_n = set(re.findall(r"\bmtp[\s-]?(\d)\b(?!\s*%)", notes))
    if len(mtp_n) == 1:  # "MTP3"; several ("MTP1 ..., MTP3 ...") compare runs: none read
        steps.append(float(mtp_n.pop()))
    drafts = num_in(r"(\d+) draft tokens", notes)
    if acc and acc > 1:
        k = max(steps) if steps else (drafts - 1 if drafts else DEFAULT_DRAFT_STEPS)
        k = max(k, math.ceil(acc - 1.0))  # an accept length needs that many drafts
        return k, acc
    if steps:  # steps without an accept length: a chain of drafts (one: "MTP1"),
        k = max(steps)  # each accepted with DEFAULT_MTP_ACCEPT after its predecessor
        return k, 1.0 + sum(DEFAULT_MTP_ACCEPT**i for i in range(1, int(k) + 1))
    if re.search(r"\bwith mtp\b|enable mtp", notes) and not NO_MTP.search(notes):
        return 1.0, 1.0 + DEFAULT_MTP_ACCEPT
    return 0.0, 1.0


def _default_lengths(row: dict, isl, osl) -> tuple[float, float | None]:
    """(prompt, output) of a deployment row whose text states neither or only the prompt:
    in the shipped set model.seq_len = prompt + output on 35 of the 37 decode rows that
    state both (xDeepServe's 2K + 2K rows give 4096), so a row without lengths takes half
    of seq_len for each (rounded down for the prompt), and one with only the prompt takes
    seq_len - prompt for the output (when positive); a row without seq_len keeps its
    missing output length (an error where the mode needs it) and, without a prompt, takes
    DEFAULT_PROMPT (`item_notes` says so)."""
    seq = int_or((row.get("model") or {}).get("seq_len"), None)
    if isl is None:
        if seq is None:  # nothing to split: the documented default prompt (`_context`'s)
            return float(DEFAULT_PROMPT), osl
        isl = float(seq // 2)
        return isl, (osl if osl is not None else float(seq) - isl)
    if osl is None and seq is not None and seq > isl:
        osl = float(seq - isl)
    return isl, osl


def serving_row(row: dict, model: Model, *, dies: int = 1) -> ServingRow:
    """The deployment a decode row without batch or SLO describes (fidelity DESIGN §2):

    - decode instance: R ranks (`tp`, dies on 910C; else all n_chips x dies, or half of
      them in a PD-separated deployment, DEFAULT_DECODE_SHARE), attention DP
      `dp` (MoE rows that say "attention DP" or state nothing of their deployment,
      `states_nothing`: R; else 1; dp <= the running requests, then
      raised, past them if need be, to the next divisor of R whose TP R/dp divides the heads
      and divides or is divided by the KV heads), attention TP R/dp, EP `ep` (MoE: R when
      null); batch per DP rank = `global_batch` (max
      running requests) / dp, or for
      offline max-throughput rows the largest that fits (batch_cap = min(OFFLINE_MAX_BATCH,
      the stated request count));
    - speculative decoding from the notes (`speculation`); context = prompt + output/2;
      a row that does not state the lengths takes them from its seq_len
      (`_default_lengths`: prompt + output = seq_len);
    - prefill instance: on the other cards ("PD separation"), on the same ranks ("PD
      mixed", offline / in-flight batching) or none (a decode-only measurement with a
      stated batch, or a mixed one that gives no output length to share the ranks by);
      TP 1 with EP for MoE models, the decode TP for dense ones;
      DEFAULT_PREFILL_TOKENS (MoE, Ascend) or PREFILL_CHUNK_TOKENS prompt tokens per rank;
    - a PD-separated closed-loop benchmark that states its concurrency C and N prompts (and
      no request rate) starts with C prompts queued for prefill: `ramp` = C / N;
    - TensorRT-LLM rows (`trtllm_row`) at FP8/FP4 keep an FP8 KV cache (`kv_precision`), and
      their offline batches are sized with KV for the whole prompt + output (`kv_reserve`);
    - the per-card figure divides by all n_chips cards."""
    p = row.get("parallel") or {}
    notes = row_text(row)
    cards = int(row["n_chips"])
    said = re.search(r"disagg\w*[\s_\-]+(?:moe|expert)|(?:moe|expert)[\s_\-/]+attention", notes)
    separated = pd_separated(notes)
    if said and not separated and _disaggregation(row, cards * dies)[0]:
        raise ValueError(
            "an attention/expert-disaggregated decode row needs its batch per attention rank "
            "(parallel.microbatch): the serving rule sizes only co-located deployments"
        )
    isl, osl = _default_lengths(row, *lengths(row))
    # mean context over the output (whole tokens: seq_len is an integer knob); the prompt
    # if unstated
    ctx = float(round(isl + (osl or 0.0) / 2))
    prec = row.get("precision") or "bf16"
    moe = float(model.n_experts) > 0
    k, acc = speculation(notes, model)
    # decode ranks: the stated decode TP; else all (PD separation without it: half the cards,
    # DEFAULT_DECODE_SHARE, the other half prefill)
    default = max(dies, int(cards * DEFAULT_DECODE_SHARE) * dies) if separated else cards * dies
    ranks = int_or(p.get("tp"), None) or default
    # SGLang's --tp-size counts the instance's ranks and --dp-size splits them (dp <= tp);
    # a row stating a larger dp gives Megatron-style degrees: tp x dp ranks
    dp_stated = int_or(p.get("dp"), None)
    if int_or(p.get("tp"), None) and dp_stated and dp_stated > ranks:
        ranks *= dp_stated
        if ranks > cards * dies:
            raise ValueError(
                f"decode tp x dp = {ranks} ranks exceeds the {cards * dies} ranks of the row"
            )
    if ranks > cards * dies:
        raise ValueError(f"decode tp = {ranks} ranks exceeds the {cards * dies} ranks of the row")
    gb = int_or(p.get("global_batch"), None)
    # data-parallel attention where the notes say so, or where the row states nothing of its
    # deployment (`emu run`'s serving rule: TP 1 for MoE models); a row that states some of
    # it reads as SGLang's --tp-size, the instance's ranks, with attention TP over them
    dp = dp_stated or (ranks if moe and ("attention dp" in notes or states_nothing(p)) else 1)
    per_rank = (
        int_or(p.get("microbatch"), None)
        or num_in(
            r"batch (?:size )?(?:of )?(\d[\d,]*) (?:sequences |requests )?"
            r"per (?:device|gpu|rank|die|npu)",
            notes,
        )
        or num_in(r"\blocal batch (?:size )?(?:of )?(\d[\d,]*)", notes)
        or num_in(r"\bbatch (?:size )?per (?:device|gpu|rank|die|npu)[=:\s]+(\d[\d,]*)", notes)
        or num_in(
            r"(?<![\w.,])(\d[\d,]*) (?:sequences|requests) per (?:device|gpu|rank|die|npu)\b"
            r"(?!\s*(?:per|/)\s*(?:s|sec|second|min|minute|h|hour)\b)",  # not a rate
            notes,
        )
    )
    per_rank = int(per_rank) if gb is None and per_rank else None  # per attention-DP rank
    read = None
    if gb is None and per_rank is None:  # the running requests the notes state, if any,
        gb, words = running_requests(notes)  # else a batch they name (per attention-DP rank)
        per_rank = batch_said(notes) if gb is None else None
        if gb is not None:
            read = f"running requests not in global_batch: {gb} from the notes ('{words}')"
        elif per_rank is not None:
            read = (
                f"decode batch not in global_batch: the notes' batch {per_rank} read per "
                "attention-DP rank"
            )
    # attention DP over more ranks than running requests would leave ranks without one
    dp = max(1, min(dp, ranks, gb or ranks))
    while ranks % dp:
        dp -= 1
    # attention TP must divide the heads: a row that does not state its DP (or states a DP
    # that leaves more TP ranks than heads allow) takes the next DP that does
    heads, kv = int(float(model.n_heads)), int(float(model.n_kv_heads))

    def splits_badly(d: int) -> bool:
        t = ranks // d
        return bool(ranks % d or heads % t or (kv % t and t % kv))

    while dp < ranks and splits_badly(dp):
        dp += 1
    att_tp = max(1, ranks // dp)
    if per_rank:  # the stated batch on each DP rank settled above
        gb = per_rank * dp
    ep = (int_or(p.get("ep"), None) or ranks) if moe else 1
    etp = expert_tp(row, notes, ranks, ep) if moe else 1  # the instance's experts: all ranks
    etp = etp if ranks % (ep * etp) == 0 else 1
    imbalance = DEFAULT_MOE_IMBALANCE if moe else 1.0
    common = dict(
        precision=prec, recompute="none", zero=0, moe_imbalance=imbalance,
        kv_precision=kv_precision(row),
    )  # fmt: skip
    spec = dict(draft_tokens=k, accept_len=acc) if k > 0 else {}
    cap = None
    if gb is None:
        cap = OFFLINE_MAX_BATCH
        requests = num_in(  # a count, not a rate ("2.82 requests per second")
            r"(?<![\d.,])(\d[\d,]*) requests\b"
            r"(?!\s*(?:per|/)\s*(?:s|sec|second|min|minute|h|hr|hour)\b)",
            notes,
        )
        if requests:
            cap = min(cap, int(requests))
        read = read or f"decode batch not stated: the largest that fits (capped at {cap})"
    b = max(1, round(gb / dp)) if gb else 1
    dec = make_plan(
        **common, **spec, tp=att_tp, dp=dp, ep=ep, etp=etp, microbatch=b, global_batch=b * dp,
        a2a_overlap=DEFAULT_EP_SERVING_OVERLAP and ep > 1, seq_len=ctx, context=ctx,
        phase="decode",
    )  # fmt: skip
    dec = validate_plan(dec, model, even_layers=False, even_experts=False)
    mixed = bool(re.search(_SHARED_RANKS, notes)) or gb is None
    pre_ranks = cards * dies - ranks if separated else ranks
    if not (separated or mixed) or (osl is None and not separated) or (separated and pre_ranks < 1):
        # decode alone; also a row that gives no output length to share the ranks by, and a
        # PD-separated row whose chips are all its decode instance's (the prefill instance
        # ran on cards the row does not count)
        return ServingRow(dec, None, "decode", isl, osl or isl, cards, cap, batch_read=read)
    if osl is None:
        raise ValueError("a PD deployment row gives no output length (serving rule)")
    if pre_ranks < 1:
        raise ValueError("PD separation leaves no cards for the prefill instance")
    ramp = _first_wave(notes) if separated else 0.0
    pre_tp = 1 if moe else att_tp
    pre_dp = max(1, pre_ranks // pre_tp)
    tokens = DEFAULT_PREFILL_TOKENS if (moe or dies > 1) else PREFILL_CHUNK_TOKENS
    pb = max(1.0, float(tokens // isl))
    pre = make_plan(
        **common, tp=pre_tp, dp=pre_dp, ep=pre_ranks if moe else 1, microbatch=pb,
        global_batch=pb * pre_dp, a2a_overlap=DEFAULT_EP_SERVING_OVERLAP and moe and pre_ranks > 1,
        seq_len=isl, phase="prefill",
    )  # fmt: skip
    pre = validate_plan(pre, model, even_layers=False, even_experts=False)
    mode = "separated" if separated else "mixed"
    reserve = isl + osl if cap is not None and trtllm_row(row) else None
    return ServingRow(dec, pre, mode, isl, osl, cards, cap, ramp, reserve, read)


#: a deployment with its own prefill cards: "PD separation", "PD disaggregated", "P/D
#: disaggregation", "prefill-decode disaggregation", "disaggregated prefill" (not after "no",
#: "without", "not", "non-", "unlike", "vs"..., nor followed by "not used" / "disabled")
_PD_SEPARATED = re.compile(
    COMPARED + r"(?<!no )(?<!without )(?<!not )(?<!non-)(?<!non )(?<!unlike the )"
    r"(?:\bp\s*/?\s*d[\s-]*|\bprefill[\s/-]*decode[\s-]*)"
    r"(?:separation|separated|disaggregat\w*)\b(?!\s+(?:is\s+)?(?:not used|disabled|off)\b)"
    r"|" + COMPARED + r"(?<!no )(?<!without )\bdisaggregated prefill"
)


def pd_separated(notes: str) -> bool:
    """Whether a serving row's (lower-case) notes say its prefill ran on other cards
    (`_PD_SEPARATED`)."""
    return bool(_PD_SEPARATED.search(notes))


def _first_wave(notes: str) -> float:
    """C / N of a closed-loop benchmark that states its concurrency C and its N prompts
    ("--max-concurrency 32 ... 32 prompts"), at most 1; 0 when it does not state both or
    paces arrivals at a stated request rate (no first wave then)."""
    if "request rate" in notes:
        return 0.0
    c = num_in(r"concurrency (\d[\d,]*)", notes)
    n = num_in(r"(\d[\d,]*) prompts", notes)
    return min(1.0, c / n) if c and n else 0.0
