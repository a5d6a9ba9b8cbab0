"""Collective rows: what a row's all-reduce or MoE dispatch/combine measures (buffer size,
tokens, bytes per token, algorithm, byte convention, ranks), and emu's prediction of it.

Every value a row leaves out takes a named default with its source. Ranks are what
`n_chips` counts on a collective row (dies on Ascend 910C, MEASUREMENTS.md "Conventions");
the collectives of emu work on ranks (`topology.rank_system`). Predictions are jnp scalars,
differentiable in the system (emu.calibration fits the link parameters through them).
"""

from __future__ import annotations

import math
import re

import jax.numpy as jnp

from emu import collectives
from emu.topology import participants, rank_system
from emu.validation._rows import int_or, row_precision, row_text

METRICS_ALLREDUCE = {"allreduce_busbw", "allreduce_busbw_peak", "effective_nvlink_busbw_ring"}
METRICS_MOE_COMM = {
    "moe_dispatch_bandwidth",
    "moe_combine_bandwidth",
    "moe_dispatch_bottleneck_bandwidth",
    "moe_combine_bottleneck_bandwidth",
    "moe_dispatch_latency",
    "moe_combine_latency",
}
#: all-reduce buffer when a row gives none ("peak" / "plateau" busbw, limulidae's unstated
#: size): nccl-tests reach the plateau with GB-scale buffers (facts §27: Azure 4-GPU 680 GB/s
#: at 8 GB, dgxc H100 480 GB/s at 8-16 GB)
DEFAULT_MESSAGE_BYTES = 4e9
#: the DeepSeek-V3/R1 profile every MoE-communication benchmark in the set uses (DeepEP,
#: DeepEP-Ascend, TRT-LLM, xDeepServe notes): hidden 7,168, top-8
MOE_HIDDEN = 7168
MOE_TOP_K = 8
#: a hidden size read from a row's notes outside this range is not one (layer counts,
#: microseconds): the DeepSeek profile is assumed instead
HIDDEN_RANGE = (256, 65536)
#: tokens per rank when the row gives none: DeepEP normal kernels 4,096 (the pre-training
#: setting), low-latency kernels 128 (the decode setting) (DeepEP README; DeepEP-Ascend notes)
NORMAL_TOKENS = 4096
LOW_LATENCY_TOKENS = 128
#: bytes per token of one copy, by payload: BF16 2 h; FP8 h + one FP32 scale per 128
#: (DeepEP); INT8 h + one FP32 scale per token (Ascend dispatch quantisation); FP4 h/2 + one
#: byte per 16 (NVFP4); a row's own table value ("| MXFP8 | 7392 |") wins
TOKEN_BYTES = {
    "bf16": 2.0 * MOE_HIDDEN,
    "fp16": 2.0 * MOE_HIDDEN,
    "fp8": MOE_HIDDEN + MOE_HIDDEN / 128 * 4,
    "int8": MOE_HIDDEN + 4.0,
    "fp4": MOE_HIDDEN / 2 + MOE_HIDDEN / 16,
}
#: an all-to-all's combine is a weighted sum of the top-k copies read from HBM; emu's
#: `moe_all_to_all_time(combine=True)` overlaps it with the transfer (the longer of the two)


#: byte units of a message size in a row's notes (decimal and binary spellings)
_SIZE_UNITS = {"B": 1.0, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KIB": 2.0**10, "MIB": 2.0**20,
               "GIB": 2.0**30}  # fmt: skip
# a number not glued to a word ("A100-80GB" is a GPU) and a byte unit ("Gb" is gigabits,
# "GB/s" a rate)
_NUM_UNIT = r"(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)\s*((?i:[kmg])i?B)(?![\w/])"
# not the end of a range ("4 - 8 GB", "4 to 8 GB") or of a number with thousands separators
_SIZE = r"(?<![\w.,\-\u2013])(?<!\d - )(?<!\d \u2013 )(?<!\d to )" + _NUM_UNIT
#: not a chunk, memory or HBM size ("HBM at 80 GB", "chunk size 4 MB")
_NOT_MEMORY = "".join(
    rf"(?<!{w} )" for w in ("chunk", "Chunk", "memory", "Memory", "HBM", "hbm", "GPU", "gpu")
)
_RANGE = r"(?<![\w.,\-])(\d+(?:\.\d+)?)\s*(?:-|\u2013|to)\s*" + _NUM_UNIT


def message_size(row: dict) -> tuple[float, str | None]:
    """The all-reduce buffer of a row in bytes and, when the row does not state it, the phrase
    saying what was assumed. What the notes say first: a byte count ("at size 1048576 B"),
    one size named as the message ("32 MB messages", "message size 512 MiB"; then as the
    buffer), a count of bytes ("134217728 bytes", not "bytes per ..."), a size after "at" or
    "size" ("busbw at 128 MiB", "size: 1 GiB"; not a chunk, memory or HBM size), one
    nccl-tests size (`-b 1G -e 1G`, binary units); then the id: the byte count
    closing it ("..._allreduce_1048576"; an id may also end in a rank count, so the notes
    come first), a size label closing it ("..._ring_67M": the repo's labels for powers of
    two, Azure issue #8, so 2^26); then a range in the notes ("4-8 GB messages" -> the
    geometric mean) or ">256 MB"; else DEFAULT_MESSAGE_BYTES."""
    notes = str(row.get("notes", ""))
    unit = lambda u: _SIZE_UNITS[u.upper()]  # noqa: E731
    num = lambda x: float(x.replace(",", ""))  # noqa: E731
    m = re.search(r"\bat (?:size )?(\d{3,}) ?B\b", notes)
    if m:
        return num(m.group(1)), None
    for word in ("messages?", "buffers?"):
        m = re.search(_SIZE + rf"\s*(?i:{word})\b", notes) or re.search(
            rf"\b(?i:{word[:-2]})(?i: size)?s?\s*(?:of|=|:)?\s*" + _SIZE, notes
        )
        if m:
            return num(m.group(1)) * unit(m.group(2)), None
    m = re.search(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d{3,}) ?(?i:bytes)\b(?!\s*per\b)", notes)
    if m:
        return num(m.group(1)), None
    # "busbw at 128 MiB", "size: 1 GiB"; not a chunk, memory or HBM size
    m = re.search(_NOT_MEMORY + r"(?i:\bat|\bsize)\s*(?:of|=|:)?\s*" + _SIZE, notes)
    if m:
        return num(m.group(1)) * unit(m.group(2)), None
    m = re.search(r"(?<!\S)-b\s*(\d+)([KMG]?)\s+-e\s*(\d+)([KMG]?)(?!\S)", notes)
    if m and m.group(1, 2) == m.group(3, 4):  # nccl-tests: one size (a sweep names none)
        return float(m.group(1)) * 1024.0 ** " KMG".index(m.group(2) or " "), None
    rid = str(row["id"])
    m = re.search(r"allreduce_(\d{4,})$", rid)
    if m:
        return float(m.group(1)), None
    m = re.search(r"allreduce\w*_(\d+)([KMG])$", rid)
    if m:
        v = float(m.group(1)) * {"K": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]
        return float(2 ** round(math.log2(v))), None
    m = re.search(_RANGE, notes)
    if m:
        return math.sqrt(num(m.group(1)) * num(m.group(2))) * unit(m.group(3)), None
    m = re.search(r">\s*" + _NUM_UNIT, notes)
    if m:
        return num(m.group(1)) * unit(m.group(2)), None
    return DEFAULT_MESSAGE_BYTES, (
        f"message size not stated: {DEFAULT_MESSAGE_BYTES / 1e9:g} GB assumed (the busbw plateau)"
    )


def message_bytes(row: dict) -> float:
    """The all-reduce buffer of a row in bytes (`message_size`)."""
    return message_size(row)[0]


_NOT_SMALL = r"(?![/\s-]*(?:ll\b|up to|for small|for messages (?:below|under|up to)|below|under))"


def allreduce_algorithm(row: dict) -> str:
    """ "ring" when the row measures rings only (the ring metric, NCCL_ALGO=Ring, NVLS
    disabled), else emu's default algorithm (NVLS inside a switch domain where it exists)."""
    text = f"{row_text(row)} {str(row.get('hardware', '')).lower()}"
    ring = (
        row["metric"] == "effective_nvlink_busbw_ring"
        or any(k in text for k in ("nccl_algo=ring", "ring algorithm", "nvls_enable=0", "nvls off"))
        # "NCCL picks Ring"; not "uses Ring/LL up to 1MiB" (small messages only)
        or bool(re.search(r"\b(?:picks|selects|chooses|uses) (?:the )?ring\b" + _NOT_SMALL, text))
    )
    return "ring" if ring else "hierarchical"


def predict_allreduce_busbw(row: dict, system):
    """nccl-tests bus bandwidth (GB/s) = size / time * 2 (n - 1) / n over n = `n_chips`
    ranks. Differentiable in `system`."""
    n = float(row["n_chips"])
    if not n >= 2:
        raise ValueError("a collective needs n_chips >= 2")
    b = message_bytes(row)
    t = collectives.all_reduce_time(
        system, jnp.float32(b), jnp.float32(n), algorithm=allreduce_algorithm(row)
    )
    return b / t * 2.0 * (n - 1.0) / n / 1e9


def moe_comm_setup(row: dict, system) -> dict:
    """What a dispatch/combine row measures on `system` (host values, from the topology
    only): {tokens (per rank), token_bytes (one copy), dedup (1: one copy per destination
    rank/domain, DeepEP normal; 0: one copy per routed expert, low-latency and one-sided
    kernels), max_domains (node-limited routing), group (ranks), combine, convention
    ("latency", "bottleneck", "logical", "per_rank"), moved (the bytes the published
    bandwidth divides by the kernel time; 0 for a latency and for "bottleneck", whose
    bytes are the prediction's own `AllToAll.bottleneck_bytes`)}."""
    text = row_text(row)
    metric = row["metric"]
    combine = "combine" in metric
    # a low-latency kernel: said so (not "not a low-latency kernel"), an "_ll_" id, or a
    # latency metric unless the notes name the normal (high-throughput) kernels
    said_ll = re.search(
        r"(?<!not a )(?<!not the )(?<!not )(?<!non-)(?<!non )(?<!not using )(?<!no )"
        r"\blow[- ]latency",
        text,
    )
    normal = re.search(
        r"\bnormal (?:\(high-throughput\) )?(?:mode|kernels?|dispatch|combine)"
        r"|(?:\bnot a |\bnot the |\bnot |\bnon-|\bnon |\bno )low[- ]latency",
        text,
    )
    low_latency = bool(said_ll) or "_ll_" in row["id"] or ("latency" in metric and not normal)
    one_sided = "one-sided" in text or "a2e" in text or "e2a" in text or "in-situ" in text
    p = row.get("parallel") or {}
    assumed = []
    stated = re.search(
        r"(?<![\d.])(\d[\d,]*(?:\.\d+)?)\s*(k?)\s*tokens? per (?:batch|rank|gpu|die|npu|device)\b",
        text,
    )  # "4096 tokens per rank", "8K tokens per batch" (K: 1,024)
    tokens = int_or(p.get("microbatch"), None) or (
        round(float(stated.group(1).replace(",", "")) * (1024 if stated.group(2) else 1))
        if stated
        else None
    )
    if not tokens:
        tokens = LOW_LATENCY_TOKENS if low_latency else NORMAL_TOKENS
        kernel = "low-latency" if low_latency else "normal"
        assumed.append(f"tokens per rank not stated: {tokens} ({kernel} kernels) assumed")
    # in-situ decode kernels carry the MTP draft too: "tokens per die per dispatch are ~120"
    m = re.search(r"tokens per die per dispatch are ~(\d+)", text)
    if m:
        tokens = int(m.group(1))
    number = r"(\d{1,3}(?:,\d{3})+|\d{3,})(?!\d|,\d{3}(?!\d))"
    hid = re.search(
        r"hidden(?:[\s_\-](?:size|dim(?:ension)?))?\s*(?:of\s+)?[=:]?\s*" + number, text
    ) or re.search(number + r"[\s_\-]hidden\b(?![\s_\-](?:layers?|states?)\b)", text)
    hidden = int(hid.group(1).replace(",", "")) if hid else 0
    table = re.search(r"\| (?:mxfp8|nvfp4) \| (\d+)", text)
    tabled = bool(table) and not combine  # the row's own bytes per token: no hidden size
    if not HIDDEN_RANGE[0] <= hidden <= HIDDEN_RANGE[1]:
        hidden = MOE_HIDDEN
        if not tabled:
            assumed.append(f"hidden size not stated: {MOE_HIDDEN} (DeepSeek-V3) assumed")
    # "top-8 experts", "topk=6"; not DeepSeek's "top-4 groups" or node-limited "top-4 nodes"
    k = re.search(
        r"\btop[\-_\s]?k?\s*[=:]?\s*(\d+)\b(?!\s*(?:\w+\s+)?(?:groups?|nodes?|devices?|ranks?"
        r"|domains?|servers?|machines?|racks?)\b|\s*%)",
        text,
    )
    top_k = int(k.group(1)) if k else 0
    if top_k <= 0:
        top_k = MOE_TOP_K
        assumed.append(f"top-k not stated: {MOE_TOP_K} (DeepSeek-V3) assumed")
    prec = "bf16" if combine else (row_precision(row.get("precision")) or "bf16")
    token_bytes = float(table.group(1)) if tabled else TOKEN_BYTES.get(prec)
    if token_bytes is None:
        raise ValueError(f"no bytes per token for a {prec} payload")
    if not tabled:  # TOKEN_BYTES are per DeepSeek-V3 token: scale to h
        token_bytes *= hidden / MOE_HIDDEN
    if metric.endswith("latency"):
        convention = "latency"
    elif metric.endswith("bottleneck_bandwidth"):
        convention = "bottleneck"
    elif "logical" in text:
        convention = "logical"
    else:
        convention = "per_rank"
    setup = {
        "tokens": float(tokens),
        "token_bytes": token_bytes,
        "dedup": 0.0 if (low_latency and convention != "bottleneck") or one_sided else 1.0,
        "max_domains": 4.0 if "top-4 groups" in text else 0.0,
        "group": float(row["n_chips"]),
        "combine": combine,
        "convention": convention,
        "top_k": float(top_k),
        "assumed": assumed,
    }
    per_copy = setup["tokens"] * token_bytes
    if convention == "logical":
        moved = min(setup["group"], top_k) * per_copy
    elif convention == "per_rank":
        moved = top_k * per_copy
    else:  # a latency, or the bottleneck bytes of the prediction itself
        moved = 0.0
    return {**setup, "moved": moved}


def predict_moe_comm(row: dict, system, setup: dict | None = None):
    """One dispatch or combine kernel of a row (`moe_comm_setup`, computed on the concrete
    system before `system` is traced): latency in us, or GB/s in the row's convention:
    "bottleneck" = bytes over the slowest tier / time (DeepEP normal), "logical" =
    T min(ep, K) b / time (TRT-LLM one-sided, includes the local share), "per_rank" = T K b /
    time (DeepEP low-latency tables)."""
    s = setup if setup is not None else moe_comm_setup(row, system)
    if not s["group"] >= 2:
        raise ValueError("an all-to-all needs n_chips >= 2")
    a2a = collectives.moe_all_to_all(
        system,
        jnp.float32(s["tokens"] * s["token_bytes"]),
        s["top_k"],
        jnp.float32(s["group"]),
        dedup=s["dedup"],
        max_domains=s["max_domains"],
        combine=s["combine"],
        tokens=jnp.float32(s["tokens"]),
    )
    if s["convention"] == "latency":
        return a2a.time_s * 1e6
    moved = a2a.bottleneck_bytes if s["convention"] == "bottleneck" else s["moved"]
    return moved / a2a.time_s / 1e9


def collective_link(system, ranks: float) -> str:
    """The link type of the outermost tier a group of `ranks` consecutive ranks spans (the
    basis of a collective row's interval)."""
    sys_r = rank_system(system)
    n = participants(sys_r.tiers, jnp.float32(ranks), jnp.float32(1.0))
    link = sys_r.tiers[0].link
    for tier, nk in zip(sys_r.tiers, n, strict=True):
        if float(nk) > 1.0 + 1e-6:
            link = tier.link
    return link
