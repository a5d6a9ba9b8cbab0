"""Measurement rows (../shared/data/MEASUREMENTS.md): reading a JSON Lines file, checking a
row (chip count, unit), its fit weight, and the model it describes.

Plans are in `_plans` (training, inference, the serving rule); collective rows in
`_collectives`. Every default a rule takes is a named constant here or there, with its
source.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import stat
from pathlib import Path

from emu.catalog import load_model, model_from_dict, parse_failure
from emu.struct import replace
from emu.workload import Model

#: the row kinds a measurement file may hold (`validate_file(kind=...)`)
KINDS = ("train", "prefill", "decode", "collective")
REQUIRED = ("id", "kind", "system", "n_chips", "metric", "value")
#: a row's n_chips must be a whole number in [1, MAX_CHIPS] (issue 16: 2.5 or 1e30 chips
#: were modelled); the largest published run in the set is 16,384 GPUs, the largest system
#: domain 100,000 (the system's own outermost tier is checked when the row is predicted)
MAX_CHIPS = 1_000_000
#: the measured values a row may state, in its metric's unit (the shipped rows span 1.1 to
#: 180,000): a value outside (a denormal such as 5e-324, or 1e300) is a typo, and its
#: relative error would overflow to inf% and turn the summary's p90 into NaN
VALUE_RANGE = (1e-6, 1e12)
#: the unit a metric is published in (MEASUREMENTS.md "Metrics"): a row whose `unit` names
#: another quantity is refused (issue 16: the unit field was ignored). A row may omit `unit`.
METRIC_UNITS = {
    "iteration_time": r"s",
    "train_step_time": r"s",
    "layer_fwd_plus_bwd_time": r"ms",
    "tokens_per_s_per_gpu": r"tokens/s/(gpu|npu)",
    "achieved_tflops_per_gpu": r"tflop/s/(gpu|npu)",
    "tflops_per_gpu": r"tflop/s/(gpu|npu)",
    "mfu": r"%",
    "gpu_hours_per_trillion_tokens": r"(\w+ )?gpu-hours/1t tokens",
    "input_tokens_per_s_per_node": r"tokens/s/(\d+-(gpu|npu) )?node",
    "input_tokens_per_s_per_gpu": r"(input )?tokens/s/(gpu|npu)",
    "input_tokens_per_s_per_npu": r"(input )?tokens/s/(gpu|npu)",
    "output_tokens_per_s_per_node": r"tokens/s/(\d+-(gpu|npu) )?node",
    "output_tokens_per_s_per_gpu": r"(output )?tokens/s/(gpu|npu)",
    "output_tokens_per_s_per_npu": r"(output )?tokens/s/(gpu|npu)",
    "allreduce_busbw": r"gb/s",
    "allreduce_busbw_peak": r"gb/s",
    "effective_nvlink_busbw_ring": r"gb/s",
    "moe_dispatch_bandwidth": r"gb/s",
    "moe_combine_bandwidth": r"gb/s",
    "moe_dispatch_bottleneck_bandwidth": r"gb/s",
    "moe_combine_bottleneck_bandwidth": r"gb/s",
    "moe_dispatch_latency": r"us",
    "moe_combine_latency": r"us",
}
#: metrics that are times (smaller is faster): a prediction interval and a residual of
#: "speed" use their inverse (`speed_sign`)
TIME_METRICS = frozenset(
    {
        "iteration_time",
        "train_step_time",
        "layer_fwd_plus_bwd_time",
        "gpu_hours_per_trillion_tokens",
        "moe_dispatch_latency",
        "moe_combine_latency",
    }
)

#: Fit weights from a row's `confidence` (MEASUREMENTS.md: rows marked LOW or "read off a
#: figure" deserve less weight): w = value part x config part (fidelity DESIGN §4). The
#: value part: an exact table/log/text value 1.0, a derived or secondary-source value 0.7,
#: a value read off a figure 0.5, a value the source itself marks LOW 0.3.
CONFIDENCE_VALUE = (("low", 0.3), ("read off a figure", 0.5), ("derived", 0.7), ("secondary", 0.7))
#: the config part, from "config: high|medium|low" (default: high, i.e. stated)
CONFIDENCE_CONFIG = {"high": 1.0, "medium": 0.8, "low": 0.5, "unknown": 0.5}

#: Models built from a row's fields (names not in the catalog), defaults for what the row
#: leaves out (fidelity DESIGN §3e): vocab 51,200 (GPT-2's 50,257 padded, Megatron's
#: default); the dense FFN 4 d_model, or an MoE model's expert width (and an MoE expert
#: width: d_ff, else 4 d_model); n_heads = d_model / DEFAULT_HEAD_WIDTH; d_head = d_model /
#: n_heads; n_kv_heads = n_heads (MHA); GQA attention; no dense leading layers, except
#: that "alternates dense and MoE" layers (Llama 4 Maverick) give n_layers / 2 dense ones.
DEFAULT_VOCAB = 51200
#: heads when a row gives none: d_model / 128, the head width of GPT-3 175B, Llama 2 and 3,
#: Mistral and Qwen2.5 (their config.json files); `approximations` says so
DEFAULT_HEAD_WIDTH = 128
#: model families with a gated FFN (SwiGLU / GeGLU: three matrices): their published
#: configs (Llama, Qwen, Mistral, Yi, InternLM, ChatGLM, Gemma, Baichuan, DeepSeek, Pangu,
#: Grok); other dense names (GPT, BLOOM, OPT) keep a GELU MLP and tied embeddings
#: (Megatron GPT)
GATED_FFN = (
    "llama", "qwen", "mistral", "mixtral", "yi", "internlm", "chatglm", "glm", "gemma",
    "baichuan", "deepseek", "pangu", "grok",
)  # fmt: skip
#: MoE rows naming one of these models use the catalog's (MLA dims, dense layers, MTP
#: modules the row schema cannot carry), after checking the row agrees with it
MOE_CATALOG = {
    "deepseekv3": "deepseek_v3",
    "deepseekr1": "deepseek_r1",
    "qwen3235ba22b": "qwen3_235b_a22b",
    "qwen330ba3b": "qwen3_30b_a3b",
    "gptoss120b": "gpt_oss_120b",
    "internal352bmoe": "msmoe_352b",
    "mixtral8x7b": "mixtral_8x7b",
    "llama4scout": "llama4_scout",
}
#: dense rows naming one of these catalog models (a regex on the lower-case name) take the
#: catalog's value for every dimension the row leaves null (a source that names a
#: published model often states none of its shape), when the dimensions it does state
#: agree with the catalog's; a row that states another shape is built from its fields
DENSE_CATALOG = (
    (r"llama[\s\-_]*2\b.*?(?<![\d.])7b\b", "llama2_7b"),
    (r"llama[\s\-_]*2\b.*?(?<![\d.])13b\b", "llama2_13b"),
    (r"llama[\s\-_]*2\b.*?(?<![\d.])70b\b", "llama2_70b"),
    (r"llama[\s\-_]*3(?:\.1|/3\.1)?(?![.\d]).*?(?<![\d.])8b\b", "llama3_8b"),
    (r"llama[\s\-_]*3(?:\.[13]|/3\.1)?(?![.\d]).*?(?<![\d.])70b\b", "llama3_70b"),
    (r"llama[\s\-_]*3(?:\.1)?(?![.\d]).*?(?<![\d.])405b\b", "llama3_405b"),
    (r"gpt[\s\-_]*3\b.*?(?<![\d.])17(?:5|4\.6)b\b|^gpt[\s\-_]*17(?:5|4\.6)b\b", "gpt3_175b"),
    # Megatron's GPT sizes (Narayanan et al. SC21 Table 1, Korthikanti et al. Tables 4-5)
    (r"\bgpt[\s\-_]*1\.7b\b", "gpt_1_7b"),
    (r"\bgpt[\s\-_]*3\.6b\b", "gpt_3_6b"),
    (r"\bgpt[\s\-_]*7\.5b\b", "gpt_7_5b"),
    (r"\bgpt[\s\-_]*18\.4b\b", "gpt_18_4b"),
    (r"\bgpt[\s\-_]*22b\b", "gpt_22b"),
    (r"\bgpt[\s\-_]*39(?:\.1)?b\b", "gpt_39b"),
    (r"\bgpt[\s\-_]*76(?:\.1)?b\b", "gpt_76b"),
    (r"\bgpt[\s\-_]*(?:145\.6|146)b\b", "gpt_146b"),
    (r"\bgpt[\s\-_]*310(?:\.1)?b\b", "gpt_310b"),
    (r"\bgpt[\s\-_]*(?:529\.6|530)b\b|\bmt[\s\-_]*nlg\b|megatron[\s\-_]*turing", "gpt_530b"),
    (r"\bgpt[\s\-_]*(?:1t|1008(?:\.0)?b)\b", "gpt_1t"),
    (r"qwen[\s\-_]*3\b.*?(?<![\d.])32b\b", "qwen3_32b"),
    (r"gemma[\s\-_]*2\b.*?(?<![\d.])27b\b", "gemma2_27b"),
)
#: the fields a row's model gives (the catalog fills those it leaves null)
MODEL_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab")
#: a training row's sequence length when neither its model nor its notes state one:
#: 4,096 tokens, the median of the shipped set's 160 training rows (2,048 the most common,
#: 51 rows, 4,096 48); said in the row's result (`approximations`)
DEFAULT_TRAIN_SEQ = 4096
#: a training row's sequence length when neither its model nor its notes state one but its
#: model's name is a family with a published pre-training context (first match, lower-case
#: name): GPT-3 and Megatron's GPT sizes 2,048 (Brown et al. 2020, arXiv:2005.14165 Table
#: 2.1 n_ctx; SC21 and Korthikanti et al. train them at 2,048), MT-NLG 2,048 (Smith et al.
#: 2022), LLaMA 2,048 (arXiv:2302.13971 §2.2), Llama 2 4,096 (arXiv:2307.09288 Table 1),
#: Llama 3 / 3.1 8,192 (arXiv:2407.21783 §3.4: 8K-token sequences), BLOOM 2,048
#: (arXiv:2211.05100 §3.4), Code Llama 4,096 (Llama 2's). Of the 106 shipped training rows
#: naming these families, 87 state these lengths; the others are long-context runs and two
#: Llama 3 70B runs at 4,096
TRAIN_CONTEXTS = (
    (
        r"\bgpt[\s\-_]*3\b(?!\.)|(?:^|megatron[\s\-_]*)gpt[\s\-_]*\d+(?:\.\d+)?[bt]\b"
        r"|\bmt[\s\-_]*nlg\b|megatron[\s\-_]*turing",
        2048,
        "GPT-3",
    ),
    (r"\bllama[\s\-_]*2(?![\d.])|code[\s\-_]*llama", 4096, "Llama 2"),
    (r"\bllama[\s\-_]*3(?:\.\d)?(?![\d.])", 8192, "Llama 3"),
    (r"\bllama(?:[\s\-_]*\d+(?:\.\d+)?b\b|$)", 2048, "LLaMA"),
    (r"\bbloom\b", 2048, "BLOOM"),
)
#: a smaller number after "seq" in the notes is not a training length ("sequence 1 of 3")
MIN_TRAIN_SEQ = 128
#: published head widths of model families whose head width is not d_model / n_heads: a
#: model built from a row's fields (the row schema has no head width) takes the width of
#: the first pattern its lower-case name matches. Sources: each model's Hugging Face
#: config.json `head_dim` (configs/models/qwen3_32b.toml and gemma2_27b.toml cite two):
#: - every Qwen3 size, dense and MoE, 0.6B-235B (Qwen3-32B: 64 x 128 = 8,192 != 5,120);
#:   Qwen3-Next: 16 x 256 on d_model 2,048; not Qwen3.5 (its width is not sourced here);
#: - Gemma 2 27B and Gemma 3 27B (and their 27B derivatives): 128 (query_pre_attn_scalar
#:   144 / 168 scales the logits only); every other Gemma (1: 2B, 7B; 2: 2B, 9B; 3: 1B,
#:   4B, 12B): 256; not RecurrentGemma;
#: - GLM-4.5/4.6/4.7 (and -Air): 96 heads x 128 on d_model 5,120 (Air: 4,096);
#: - Mistral NeMo 12B and Mistral Small 24B: 32 x 128 on d_model 5,120 (Small 22B: 48 x 128 on
#:   6,144, the same either way);
#: - gpt-oss (20B; 120B is in the catalog): 64 x 64 on d_model 2,880.
HEAD_WIDTHS = (
    (r"qwen[\-_ ]?3[.\-_ ]?next", 256),
    (r"qwen[\-_ ]?3(?![\d.])", 128),
    (r"(?<!recurrent)(?<!recurrent[\-_ ])gemma.*\b27b", 128),
    (r"(?<!recurrent)(?<!recurrent[\-_ ])gemma", 256),
    (r"glm[\-_ ]?4\.[5-7]", 128),
    (r"mistral[\-_ ]?(nemo|small)", 128),
    (r"gpt[\-_ ]?oss", 64),
)
#: model families with DeepSeek's multi-head latent attention that are not in the catalog:
#: built from a row's fields as GQA, their KV cache would be n_kv_heads x 2 x 128 wide
#: instead of the 576-wide latent (about 28x too large at 64 heads). The MLA dimensions
#: and dense leading layers of each family's config.json (kv_lora_rank, q_lora_rank,
#: qk_nope_head_dim, qk_rope_head_dim, v_head_dim, first_k_dense_replace):
#: - Kimi K2 (moonshotai/Kimi-K2-Instruct, DeepSeek-V3 architecture): 512, 1536, 128, 64,
#:   128, 1 dense layer;
#: - DeepSeek-V2, V2.5 and Coder-V2 (deepseek-ai/DeepSeek-V2): 512, 1536, 128, 64, 128, 1;
#:   the Lite models: no query compression (q_lora_rank null).
#: Applied to MoE rows only: the dense R1 distillations are Llama and Qwen models.
MLA = dict(attention="mla", kv_lora_rank=512, q_lora_rank=1536, rope_head_dim=64, d_head=128,
           v_head_dim=128, n_dense_layers=1)  # fmt: skip
MLA_FAMILIES = (
    (r"deepseek.*v2.*lite", {**MLA, "q_lora_rank": 0}),
    (r"kimi[\-_ ]?k2|deepseek.*v2", MLA),
    # DeepSeek-V3/R1 (3 dense layers) when a row's dimensions differ from the catalog's
    (r"deepseek[\-_ ]?(v3|r1)", {**MLA, "n_dense_layers": 3}),
)
#: published sliding-window attention of model families built from a row's fields (the row
#: schema has no window): the first pattern the lower-case name matches gives the window
#: (keys) and the layers that use it, of n_layers (`Model.attention_window`,
#: `window_layers`). Sources: each model's Hugging Face config.json `sliding_window` and
#: layer pattern:
#: - Mistral 7B (Jiang et al., arXiv:2310.06825, Table 1: window_size 4096, every layer;
#:   mistralai/Mistral-7B-v0.1 config sliding_window 4096); v0.2 and later have none
#:   (config sliding_window null), so a name with "v0.2"/"v0.3" takes no window, and a bare
#:   "Mistral-7B" is taken as the paper's model (MindSpeed's 32K row runs its window; a
#:   serving row of a later version should name it);
#: - Gemma 2 (every size; arXiv:2408.00118: local 4,096-token windows on every other layer),
#:   not Gemma 1's "gemma-2b";
#: - Gemma 3 (five local layers to one global: n - n // 6 local), not Gemma 3n: 1,024-token
#:   windows at 4B, 12B and 27B (arXiv:2503.19786), 512 at 1B and 270M (their config.json
#:   `sliding_window`), the size read from the name ("gemma-3-1b-it", "Gemma 3 270M",
#:   "gemma3:1b"; not a 27B draft named "gemma-3-27b-1b-draft");
#: - gpt-oss (20B; 120B is in the catalog): 128-token windows on every other layer.
SLIDING_WINDOWS = (
    (r"mistral[\-_ ]?7b(?!.*v0?\.?[2-9])", 4096, lambda n: n),
    (r"(?<!recurrent)(?<!recurrent[\-_ ])gemma[\-_ ]?2(?![\db])", 4096, lambda n: n // 2),
    (
        r"(?<!recurrent)(?<!recurrent[\-_ ])gemma[\-_ ]?3(?![\dn])"
        r"[\-_ :]?(?:[a-z]+[\-_ ])?\(?(?:1b|270m)(?![a-z0-9])",
        512,
        lambda n: n - n // 6,
    ),
    (r"(?<!recurrent)(?<!recurrent[\-_ ])gemma[\-_ ]?3(?![\dn])", 1024, lambda n: n - n // 6),
    (r"gpt[\-_ ]?oss", 128, lambda n: n // 2),
)
#: model families that tie the input embedding and the output head although their FFN is
#: gated (the field rule takes gated = untied, as Llama): Gemma (every version, config
#: tie_word_embeddings true; no lm_head weight in the checkpoints)
TIED_FAMILIES = (r"(?<!recurrent)(?<!recurrent[\-_ ])gemma",)
#: structure emu does not model, said in a row's result (`approximations`)
APPROXIMATIONS = (
    (r"dsa sparse attention|deepseek-v3\.2", "DSA sparse attention modelled as dense MLA"),
    (r"alternates dense and moe", "alternating dense/MoE layers modelled as n_layers/2 dense"),
)


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
        text = p.read_text(encoding="utf-8-sig")  # a byte-order mark is not a row
    except FileNotFoundError:
        raise ValueError(f"measurement file '{p}' not found.") from None
    except IsADirectoryError:
        raise ValueError(f"measurement path '{p}' is a directory, not a JSON Lines file.") from None
    except UnicodeDecodeError:
        raise ValueError(f"measurement file '{p}' is not UTF-8 text.") from None
    except OSError as e:
        raise ValueError(f"cannot read measurement file '{p}': {e.strerror}.") from None
    if text.lstrip().startswith("["):  # a JSON array (pretty-printed or not): one hint
        raise ValueError(
            f"measurement file '{p}' is a JSON array; emu reads JSON Lines, one row object per "
            f"line (convert it with: jq -c '.[]' {p} > rows.jsonl)."
        )
    rows, problems, first_line = [], [], {}
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        line = line.removeprefix("\ufeff")  # files joined with `cat`: a BOM inside is no row
        try:
            row = json.loads(line)
        except (RecursionError, ValueError) as e:  # JSONDecodeError is a ValueError
            why = e.msg if isinstance(e, json.JSONDecodeError) else parse_failure(e)
            if why is None:
                raise
            if why == "Extra data":  # two objects on one line
                why = "Extra data: one row object per line"
            problems.append(
                {"id": f"line {i}", "status": "error", "reason": f"line {i}: invalid JSON ({why})"}
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
        if not isinstance(row["id"], str) or not row["id"].strip():
            problems.append(
                {
                    "id": f"line {i}",
                    "status": "error",
                    "reason": f"line {i}: id must be a non-empty string (got {row['id']!r})",
                }
            )
            continue
        v = row["value"]
        lo, hi = VALUE_RANGE
        if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
            problems.append(
                {
                    "id": str(row["id"]),
                    "status": "error",
                    "reason": f"line {i}: value must be a positive number in [{lo:g}, {hi:g}] "
                    f"in the metric's unit (got {v!r})",
                }
            )
            continue
        if row["id"] in first_line:
            problems.append(
                {
                    "id": row["id"],
                    "status": "error",
                    "reason": f"line {i}: duplicate id {row['id']!r} (first on line "
                    f"{first_line[row['id']]}); give each row its own id",
                }
            )
            continue
        first_line[row["id"]] = i
        row = with_kind(row)  # "Training" is train before any filter by kind reads it
        row["_line"] = i
        rows.append(row)
    if not rows and not problems:
        raise ValueError(f"measurement file '{p}' is empty; expected JSON Lines rows.")
    return rows, problems


#: spellings of the chip precisions (emu.units.PRECISIONS) a row may give: the format family
#: sets the peak rate (MXFP8 and FP8 with current or delayed scaling run at the FP8 rate;
#: NVFP4 and MXFP4 at the FP4 rate; W8A8 / W4A8 at the INT8 rate, the activations' format)
PRECISION_SPELLINGS = (
    (r"^(bf16|bfloat16)$", "bf16"),
    (r"^(fp16|float16|half)$", "fp16"),
    (r"^(mx|nv)?fp8([\-_ ]?(cs|ds|mx|e4m3(fn)?|hybrid|delayed|current))?$", "fp8"),
    (r"^(nv|mx)?fp4$", "fp4"),
    (r"^(int8|w8a8|a8w8|w4a8|w8a8c8)([\-_ ]?dynamic)?$", "int8"),
)


def row_source(row: dict) -> str:
    """The source a row's results and the leave-one-source-out groups name: the document,
    i.e. its `source` up to the first "|" (what follows locates the table or figure within
    it), less a closing parenthesis (it names the edition, venue or copy read: the shipped
    set spells one SGLang document "... 'Best Practice on Ascend NPU' (sgl-project/sglang
    docs/...; copy read from ...)" with and without the file path in it, and those 16 rows
    are one source, held out together). Merging two spellings can only make
    leave-one-source-out stricter."""
    text = str(row.get("source", "")).split("|")[0].strip()
    if text.endswith(")"):
        depth = 0
        for k in range(len(text) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(text[k], 0)
            if depth == 0:
                return text[:k].strip() or text
    return text


def row_precision(value) -> str | None:
    """A row's `precision` as one of emu.units.PRECISIONS (None stays None: the rules'
    default applies), a closing parenthetical ignored; a spelling not in PRECISION_SPELLINGS
    is returned as given (and refused where a plan is made, with the list).

    >>> row_precision("FP8 (blockwise, DeepSeek recipe)"), row_precision("bf16/fp8")
    ('fp8', 'bf16/fp8')
    """
    if not isinstance(value, str):
        return value
    # a closing parenthetical qualifies the format ("fp8 (blockwise scaling)")
    low = re.sub(r"\s*\([^()]*\)\s*$", "", value.strip().lower())
    # a MoE kernel's "INT8 dispatch / BF16 combine": the dispatch's (the combine is bf16)
    low = re.sub(r"^(\S+)[\s\-]+dispatch(?:\s*[/,+&]\s*\S+[\s\-]+combine)?$", r"\1", low)
    return next((p for pattern, p in PRECISION_SPELLINGS if re.match(pattern, low)), value)


#: a format word as rows and their notes spell it (PRECISION_SPELLINGS reads it)
_FORMAT = r"((?:mx|nv)?fp(?:8|4|16)(?:-(?:cs|mx))?|bf16|bfloat16|int8|w8a8|w4a8)"
#: where a row's notes name its precision when the `precision` field is empty, strongest
#: first: the format a MoE dispatch sends ("FP8 dispatch", "INT8 dispatching"; its combine
#: is bf16 anyway), then "precision FP8", then "FP8 training", "FP8 mixed precision", "FP8
#: GEMMs", then "NVFP4 weights", "W8A8 quantization" (not after "not", "no" or "without",
#: nor a baseline's: "an FP8 training baseline")
_NOT = r"(?<!not )(?<!no )(?<!without )"
_PRECISION_SAID = (
    ("dispatch", re.compile(rf"{_NOT}\b{_FORMAT}[\s-]+dispatch", re.I)),
    ("run", re.compile(rf"\bprecision[:=\s]+(?:is\s+)?{_FORMAT}\b", re.I)),
    ("run", re.compile(
        rf"{_NOT}\b{_FORMAT}[\s-]+(?:mixed[\s-]+precision|training|gemms?|inference)\b"
        r"(?![\s-]+baseline)", re.I)),
    ("run", re.compile(
        rf"{_NOT}\b{_FORMAT}[\s-]+(?:weights|quantization|quantized|checkpoint|model)\b"
        r"(?![\s-]+baseline)", re.I)),
)  # fmt: skip


def notes_precision(row: dict) -> tuple[str | None, str | None]:
    """(precision, the words read) a row's notes state when its `precision` field is empty:
    the strongest kind of phrase that names one (`_PRECISION_SAID`: a dispatch row's
    dispatch format, else the run's), as PRECISION_SPELLINGS reads it; (None, None) when
    they name none, or two different formats in phrases of the same strength ("BF16
    weights, FP8 GEMMs" reads the GEMMs'; "FP8 training ... BF16 training" reads none)."""
    text = str(row.get("notes") or "")
    kind = "dispatch" if "dispatch" in str(row.get("metric") or "") else "run"
    known = {p for _, p in PRECISION_SPELLINGS}
    for k, pattern in _PRECISION_SAID:
        if k != kind:
            continue
        found = {}
        for m in pattern.finditer(text):
            prec = row_precision(next(g for g in m.groups() if g).lower())
            if prec in known:
                found.setdefault(prec, m.group(0).strip())
        if len(found) == 1:
            return next(iter(found.items()))
        if len(found) > 1:
            return None, None
    return None, None


def unit_key(unit: str) -> str:
    """A unit in the spelling METRIC_UNITS matches: lower case; µs as us; "per" and
    spaces around "/" as "/"; token/tok as tokens; /sec as /s; TFLOPS as TFLOP/s; GBps as
    GB/s ("Tokens/sec per GPU" and "tokens/s/GPU" are one unit). Bits stay bits: Gb/s and
    Gbps (gigabits) become gbit/s, which no byte-rate metric matches."""
    u = re.sub(r"\b([KMGT])b(ps|/s)\b", r"\1bit/s", unit.strip())
    u = u.lower().replace("µ", "u").replace("μ", "u").strip()
    u = re.sub(r"\s*/\s*(per[\-\s]+)?|\s+per[\-\s]+", "/", u)
    u = re.sub(r"\b(tokens?|toks?)\b", "tokens", u)
    u = re.sub(r"/sec\b|/second\b", "/s", u)
    # a time unit spelled out: "sec", "seconds", "msec", "milliseconds", "usec"
    u = re.sub(r"^(milli|m)(?:sec|secs|seconds?)$", "ms", u)
    u = re.sub(r"^(micro|u)(?:sec|secs|seconds?)$", "us", u)
    u = re.sub(r"^(?:sec|secs|seconds?)$", "s", u)
    u = re.sub(r"\btflops\b", "tflop/s", u)
    u = re.sub(r"\bgbps\b", "gb/s", u)
    u = re.sub(r"^((?:output |input )?)tokens/(gpu|npu|card|chip)/s$", r"\1tokens/s/\2", u)
    u = re.sub(r"/(?:card|chip|accelerator)$", "/gpu", u)  # one chip, however named
    u = re.sub(r"^(?:s|sec|secs|seconds?)/(?:step|iter|iteration)$", "s", u)
    u = re.sub(r"^(?:ms|msec|milliseconds?)/(?:step|iter|iteration)$", "ms", u)
    return re.sub(r"\s+", " ", u)


#: `parallel` fields that are counts: null (not stated) or a whole number >= 1; a fraction
#: is cut and any other value taken as not stated (`int_or`), and `approximates` says so
WHOLE_PARALLEL = ("tp", "pp", "dp", "ep", "cp", "etp", "vpp", "microbatch", "global_batch")


#: kinds as other sources spell them (case and spaces aside)
_KIND_ALIASES = {
    "training": "train",
    "pretrain": "train",
    "pretraining": "train",
    "pre-train": "train",
    "pre-training": "train",
}


def with_kind(row: dict) -> dict:
    """`row` with its kind as emu spells it: case and surrounding spaces ignored, and a few
    synonyms ("training" is train); other rows as they are (`check_row` names them)."""
    kind = row.get("kind")
    if not isinstance(kind, str):
        return row
    k = kind.strip().lower()
    k = _KIND_ALIASES.get(k, k)
    return row if k == kind or k not in KINDS else {**row, "kind": k}


#: the moe block's fields (MEASUREMENTS.md) and the names other sources give them (Hugging
#: Face configs, Megatron flags), read as the field
MOE_KEYS = ("n_experts", "top_k", "d_ff_expert", "n_shared")
_MOE_ALIASES = {
    "num_experts": "n_experts",
    "n_routed_experts": "n_experts",
    "num_local_experts": "n_experts",
    "num_moe_experts": "n_experts",
    "num_experts_per_tok": "top_k",
    "moe_router_topk": "top_k",
    "topk": "top_k",
    "moe_intermediate_size": "d_ff_expert",
    "moe_ffn_hidden_size": "d_ff_expert",
    "expert_intermediate_size": "d_ff_expert",
    "n_shared_experts": "n_shared",
    "num_shared_experts": "n_shared",
}


def with_moe_keys(row: dict) -> dict:
    """`row` with its model's moe block in MOE_KEYS (`_MOE_ALIASES` read as the field they
    name); ValueError for a key neither names, or a field given twice. Other rows as they
    are (`check_row` refuses a moe block that is not an object)."""
    moe = (row.get("model") or {}).get("moe") if isinstance(row.get("model"), dict) else None
    if not isinstance(moe, dict) or all(k in MOE_KEYS for k in moe):
        return row
    out = _named_table(moe, "model.moe", MOE_KEYS, _MOE_ALIASES)
    return {**row, "model": {**row["model"], "moe": out}}


#: a row's own fields (MEASUREMENTS.md); others may ride along, but one a letter or two
#: from a field the row lacks ("paralel") is a misspelling, not metadata
ROW_KEYS = (
    "id", "source", "kind", "system", "hardware", "precision", "n_chips", "model", "parallel",
    "metric", "value", "unit", "confidence", "notes",
)  # fmt: skip
PARALLEL_KEYS = (
    "tp", "pp", "dp", "ep", "etp", "cp", "sp", "zero", "vpp", "microbatch", "global_batch",
    "recompute",
)  # fmt: skip
MODEL_KEYS = (
    "name", "n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab", "seq_len", "moe",
)  # fmt: skip
#: the names Megatron flags and Hugging Face configs give those fields, read as the field
_PARALLEL_ALIASES = {
    "tensor_model_parallel_size": "tp", "tensor_parallel_size": "tp", "tp_size": "tp",
    "pipeline_model_parallel_size": "pp", "pipeline_parallel_size": "pp", "pp_size": "pp",
    "data_parallel_size": "dp", "dp_size": "dp",
    "expert_model_parallel_size": "ep", "expert_parallel_size": "ep", "ep_size": "ep",
    "expert_tensor_parallel_size": "etp",
    "context_parallel_size": "cp", "cp_size": "cp",
    "sequence_parallel": "sp",
    "virtual_pipeline_model_parallel_size": "vpp",
    "micro_batch_size": "microbatch", "micro_batch": "microbatch", "mbs": "microbatch",
    "global_batch_size": "global_batch", "gbs": "global_batch",
}  # fmt: skip
_MODEL_ALIASES = {
    "num_hidden_layers": "n_layers", "num_layers": "n_layers",
    "hidden_size": "d_model",
    "num_attention_heads": "n_heads",
    "num_key_value_heads": "n_kv_heads", "num_query_groups": "n_kv_heads",
    "intermediate_size": "d_ff", "ffn_hidden_size": "d_ff",
    "vocab_size": "vocab",
    "seq_length": "seq_len", "sequence_length": "seq_len",
}  # fmt: skip


def _did_you_mean(key: str, known) -> str:
    import difflib

    near = difflib.get_close_matches(key.lower(), known, n=1, cutoff=0.6)
    return f"; did you mean '{near[0]}'?" if near else "."


def _could_be(field: str, value) -> bool:
    """Whether `value` has the type the row field takes (MEASUREMENTS.md)."""
    if field in ("model", "parallel"):
        return value is None or isinstance(value, dict)
    if field in ("n_chips", "value"):
        return isinstance(value, int | float | str) and not isinstance(value, bool)
    return value is None or isinstance(value, str)


def _named_block(row: dict, block: str, keys, aliases) -> dict:
    table = row.get(block)
    if not isinstance(table, dict) or all(k in keys for k in table):
        return row
    return {**row, block: _named_table(table, block, keys, aliases)}


def _named_table(table: dict, block: str, keys, aliases) -> dict:
    """`table` with its fields under their own names (`aliases` read as the field they
    name); ValueError for a key neither names or a field given twice with two values (a
    null one is one not stated)."""
    out = {}
    for key, value in table.items():
        low = str(key).lower()
        field = low if low in keys else aliases.get(low)
        if field is None:
            raise ValueError(
                f"{block} has an unknown field '{key}'{_did_you_mean(str(key), keys)} "
                f"Its fields are {', '.join(keys)} (MEASUREMENTS.md)"
            )
        if field in out and value is not None and out[field] is not None:
            if out[field] != value:
                raise ValueError(
                    f"{block} gives {field} twice (as '{key}' too), {out[field]!r} and "
                    f"{value!r}; keep one"
                )
            continue
        if field not in out or out[field] is None:  # a null field is one not stated
            out[field] = value
    return out


def with_field_names(row: dict) -> dict:
    """`row` with its `parallel` and `model` fields under their own names (Megatron's and
    Hugging Face's names read as the field they name); ValueError for a field of those
    blocks neither names ("globalbatch"), a field given twice with two values, or a
    top-level key that is a misspelling of a field the row lacks ("paralel"). Keys starting
    with "_" are the reader's own."""
    import difflib

    for key, value in row.items():
        if key.startswith("_") or key in ROW_KEYS:
            continue
        near = difflib.get_close_matches(key.lower(), ROW_KEYS, n=1, cutoff=0.8)
        # metadata of its own ("confidence_note", "hardware_id", a collective's "mode":
        # "out-of-place") is not the field: a prefix of it, or a value the field cannot be
        if near and (key.lower().startswith(near[0] + "_") or not _could_be(near[0], value)):
            continue
        if near and near[0] not in row:
            raise ValueError(
                f"unknown field '{key}'; did you mean '{near[0]}'? (a row's fields: "
                "MEASUREMENTS.md)"
            )
    row = _named_block(row, "parallel", PARALLEL_KEYS, _PARALLEL_ALIASES)
    return _named_block(row, "model", MODEL_KEYS, _MODEL_ALIASES)


#: the names a `parallel` count may carry in its value ("TP8", "ep=72", "MBS 2")
_DEGREE_NAMES = {
    "tp": ("tp",), "pp": ("pp",), "dp": ("dp",), "ep": ("ep",), "cp": ("cp",),
    "etp": ("etp",), "vpp": ("vpp",), "microbatch": ("mbs", "mb", "microbatch"),
    "global_batch": ("gbs", "gb", "global_batch"),
}  # fmt: skip


def with_parallel_counts(row: dict) -> dict:
    """`row` with each `parallel` count written with its own name ("TP8", "ep=72", "MBS 2")
    as the number; a value naming another degree ("EP8" as tp) stays as given (read as not
    stated, and said)."""
    p = row.get("parallel")
    if not isinstance(p, dict):
        return row
    out = dict(p)
    for key, names in _DEGREE_NAMES.items():
        v = p.get(key)
        m = (
            re.fullmatch(r"\s*([a-z_]+)\s*[=:]?\s*(\d+)\s*", v, re.I)
            if isinstance(v, str)
            else None
        )
        if m and m.group(1).lower() in names:
            out[key] = int(m.group(2))
    return row if out == p else {**row, "parallel": out}


def check_row(row: dict) -> None:
    """ValueError when a row cannot describe a run: n_chips not a whole number in
    [1, MAX_CHIPS] (a collective: at least 2), an unknown kind, or a `unit` that does not
    match the metric (METRIC_UNITS)."""
    for key in ("kind", "system", "metric"):
        if not isinstance(row.get(key), str):
            raise ValueError(f"{key} must be a string (got {row.get(key)!r}); see MEASUREMENTS.md")
    if row["kind"] not in KINDS:
        raise ValueError(f"unknown kind '{row['kind']}'; known: {', '.join(KINDS)}")
    n = row.get("n_chips")
    if n is None:  # a source that does not say how many chips ran: nothing to scale by
        raise ValueError(
            "n_chips is null: a row must state the chips its run used (a per-chip figure "
            "without them cannot be modelled); drop the row or give the count"
        )
    ok = isinstance(n, int | float) and not isinstance(n, bool) and math.isfinite(n)
    if not ok or n != int(n) or not 1 <= n <= MAX_CHIPS:
        raise ValueError(
            f"n_chips must be a whole number of chips in [1, {MAX_CHIPS:,}] (got {n!r})"
        )
    if row.get("kind") == "collective" and n < 2:
        raise ValueError(f"a collective row needs n_chips >= 2 (got {n!r})")
    for key in ("model", "parallel"):
        if row.get(key) is not None and not isinstance(row[key], dict):
            raise ValueError(f"{key} must be a JSON object or null (got {row[key]!r})")
    moe = (row.get("model") or {}).get("moe")
    if moe is not None and (not isinstance(moe, dict) or not moe):
        raise ValueError(
            f"model.moe must be a JSON object or null (got {moe!r}); give it as "
            '{"n_experts": 128, "top_k": 8, "d_ff_expert": 768, "n_shared": 0}'
        )
    if moe is not None:  # 0 experts with a top-k ran as some other, dense model, silently
        ne, tk = moe.get("n_experts"), moe.get("top_k")
        if ne == 0 and isinstance(tk, int | float) and not isinstance(tk, bool) and tk > 0:
            raise ValueError(
                f"model.moe has n_experts 0 but top_k {tk!r}: give the expert count, or "
                '"moe": null for a dense model'
            )
    unit = row.get("unit")
    want = METRIC_UNITS.get(row["metric"])
    if unit is not None and want is not None:
        if not isinstance(unit, str) or not re.fullmatch(want, unit_key(unit)):
            raise ValueError(
                f"unit {unit!r} does not match metric '{row['metric']}' "
                f"(expected {want.replace(chr(92) + 'd+', 'N').replace(chr(92), '')})"
            )


#: units a row may state its value in, as a multiple of the metric's own unit
#: (METRIC_UNITS), for the metrics whose unit is a time or a byte rate (`in_metric_unit`)
_SCALES = {
    "s": {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0},
    "ms": {"s": 1e3, "ms": 1.0, "us": 1e-3},
    "us": {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3},
    "gb/s": {
        "gb/s": 1.0,
        "tb/s": 1e3,
        "mb/s": 1e-3,
        "gbit/s": 1 / 8,
        "tbit/s": 1e3 / 8,
        "gib/s": 2**30 / 1e9,
        "mib/s": 2**20 / 1e9,
    },
}


#: how a converted row's unit is written (METRIC_UNITS keys are lower case)
_DISPLAY = {"s": "s", "ms": "ms", "us": "us", "gb/s": "GB/s"}


def _mfu_fraction(unit, value) -> bool:
    """An MFU given as a fraction: its unit says so ("fraction", "ratio"), or it names none
    and the value is at most 1 (no published run reports an MFU of 1% or less)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        return False
    return unit is None or (isinstance(unit, str) and unit.strip().lower() in _FRACTION_UNITS)


#: units naming an MFU given as a fraction of the peak
_FRACTION_UNITS = ("", "fraction", "ratio", "fraction of peak")


def in_metric_unit(row: dict) -> dict:
    """`row` with its value in its metric's unit when it states a commensurable one (an
    iteration time in ms, a latency in ms, a bus bandwidth in TB/s or Gb/s): value scaled,
    `unit` replaced and the stated (value, unit) kept in `_stated` (`item_notes` says so).
    ValueError when the converted value leaves VALUE_RANGE. Other rows are returned as they
    are (`check_row` refuses a unit that does not match)."""
    row = {k: v for k, v in row.items() if k != "_stated"}
    unit, value, metric = row.get("unit"), row.get("value"), row.get("metric")
    want = METRIC_UNITS.get(metric) if isinstance(metric, str) else None
    if want == "%" and _mfu_fraction(unit, value):  # 0.69 for 69%: a percent of 1 or less
        stated = unit or "(no unit: a fraction)"
        return {**row, "value": 100.0 * value, "unit": "%", "_stated": (value, stated)}
    if want == "%" and isinstance(value, int | float) and not isinstance(value, bool):
        if value > 100:
            raise ValueError(
                f"an MFU is a percentage of the chip's peak, at most 100 (got {value:g} %)"
            )
        if 0 < value <= 1:  # stated in %, yet no published run reports 1% or less
            raise ValueError(
                f"an MFU of {value:g} % is below any published run's: if {value:g} is a "
                f"fraction of the peak, give it as {100 * value:g} (%) or with unit "
                '"fraction"'
            )
    if not isinstance(unit, str) or want not in _SCALES:
        return row
    if isinstance(value, bool) or not isinstance(value, int | float):
        return row
    scale = _SCALES[want].get(unit_key(unit))
    if scale is None or scale == 1.0:
        return row
    converted = value * scale
    lo, hi = VALUE_RANGE
    if not lo <= converted <= hi:
        raise ValueError(
            f"value {value:g} {unit} is {converted:g} {_DISPLAY[want]}, outside [{lo:g}, {hi:g}]"
        )
    return {**row, "value": converted, "unit": _DISPLAY[want], "_stated": (value, unit)}


def speed_sign(metric: str) -> float:
    """+1 for a rate (tokens/s, TFLOP/s, MFU, GB/s), -1 for a time (TIME_METRICS): the sign
    that turns log(predicted / measured) into log(predicted / measured speed)."""
    return -1.0 if metric in TIME_METRICS else 1.0


def row_weight(row: dict) -> float:
    """The fit weight of a row from its `confidence` text (CONFIDENCE_VALUE x
    CONFIDENCE_CONFIG). "exact (table); config: medium" -> 0.8; "read off a figure ...;
    parallel config: unknown" -> 0.25; "... LOW confidence; parallel config: high" -> 0.3.

    >>> row_weight({"confidence": "exact (table); parallel config: medium (from a script)"})
    0.8
    """
    text = str(row.get("confidence") or "").lower()
    value_text, _, config_text = text.partition("config:")
    value = 1.0
    # "for the total; per-GPU derived (total / TP)" is exact arithmetic on an exact value
    value_text = re.sub(r"per-(gpu|npu) (value )?derived[^;]*", "", value_text)
    for needle, w in CONFIDENCE_VALUE:
        pattern = r"\blow\b(?!-)" if needle == "low" else re.escape(needle)
        if re.search(pattern, value_text):
            value = w
            break
    m = re.match(r"\s*(low-medium|high|medium|low|unknown)", config_text)
    level = (m.group(1) if m else "high").replace("low-medium", "low")
    return value * CONFIDENCE_CONFIG[level]


def row_text(row: dict) -> str:
    """The notes and id of a row, lower case: what the rules read."""
    return f"{row.get('notes', '')} {row['id']}".lower()


def approximations(row: dict) -> list[str]:
    """The structure of a row emu does not model (APPROXIMATIONS), as short phrases."""
    text = f"{row_text(row)} {(row.get('model') or {}).get('name', '')}".lower()
    out = [say for pattern, say in APPROXIMATIONS if re.search(pattern, text)]
    m = row.get("model")
    name = _catalog_of(m) if isinstance(m, dict) else None
    catalog = False  # the catalog model is used: its dimensions, not defaults
    if name is not None:
        try:
            _catalog_model(m, name)
            catalog = True
            if not m.get("moe"):
                out.append(f"model.moe not stated: the catalog {name}'s experts")
        except ValueError as e:
            out.append(f"built from the row's fields: {e}")
    filled = (_filled(m) if not m.get("moe") else m) if isinstance(m, dict) else {}
    if isinstance(m, dict) and not catalog and not filled.get("n_heads") and _heads_default(m):
        w = _head_width(m)
        out.append(f"n_heads not stated: {_heads_default(m)} (d_model / {w}, heads of {w})")
    moe = m.get("moe") if isinstance(m, dict) and not catalog else None
    if isinstance(moe, dict) and not moe.get("d_ff_expert") and _moe_ffn_default(m):
        how = "its d_ff" if m.get("d_ff") else "4 d_model (no d_ff either)"
        out.append(
            f"moe.d_ff_expert not stated: {how}, {_moe_ffn_default(m)} (Megatron-Core's "
            "default expert width)"
        )
    if isinstance(m, dict) and not m.get("moe"):
        filled = _filled(m)
        missing = [f for f in MODEL_FIELDS if m.get(f) is None and filled.get(f) is not None]
        if missing:
            out.append(f"{', '.join(missing)} not stated: catalog {dense_catalog_of(m)}'s")
    unnamed = isinstance(m, dict) and not str(m.get("name") or "").strip()
    if unnamed and not m.get("moe"):  # (an MoE row's experts are gated: SwiGLU, untied)
        out.append(
            "model.name not stated: a GELU MLP with tied embeddings (Megatron's GPT) assumed"
        )
    if row.get("kind") == "train" and isinstance(m, dict):
        said = train_seq_len(row)[1]
        if said:
            out.append(said)
    return out


def _ffn(m: dict) -> str:
    name = str(m.get("name", "")).lower()
    return "swiglu" if any(k in name for k in GATED_FFN) else "gelu"


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


#: not a setting the row ran but one it is compared with ("1.8x over no MTP", "faster than
#: without MTP", "vs no speculative decoding")
_COMPARING = ("over", "than", "vs", "vs.", "versus", "compared to", "compared with",
              "relative to", "against", "unlike")  # fmt: skip
COMPARED = "".join(rf"(?<!{re.escape(w)} )" for w in _COMPARING)
#: a row that turns its model's multi-token prediction off: "no MTP", "without MTP", "do
#: not enable MTP", "MTP disabled", "MTP off" (a catalog model's MTP modules are then not
#: run: no drafts in decode, no MTP block and head in training)
NO_MTP = re.compile(
    COMPARED + r"\b(?:no|without|not enable|disable[sd]?)\s+(?:the\s+)?mtp\b(?![-\w])"
    r"(?!\s+(?:baseline|run|case|config\w*))"
    r"|\bmtp\s+(?:is\s+)?(?:off|disabled)\b(?!\s+(?:for|in|on)\s+(?:the\s+)?prefill)"
)


def row_model(row: dict) -> Model:
    """The model of a row: the catalog MoE model it names (MOE_CATALOG) when the row's
    dimensions agree with it, or one built from its fields with the documented defaults
    (module constants), the family's published head width (HEAD_WIDTHS), sliding window
    (SLIDING_WINDOWS) and latent attention (MLA_FAMILIES)."""
    m = row.get("model")
    if not isinstance(m, dict):
        raise ValueError("no model description")
    moe = m.get("moe")
    name = _catalog_of(m)  # a catalog MoE model named without its moe block is that model
    if name is not None:
        try:
            model = _catalog_model(m, name)
        except ValueError:  # dimensions of another variant: built from the row's fields
            pass  # (`approximations` says so)
        else:
            if float(model.mtp_layers) > 0 and NO_MTP.search(row_text(row)):
                model = replace(model, mtp_layers=0.0)
            return model
    m = _filled(m) if not moe else m
    gated = _ffn(m) == "swiglu" or bool(moe)
    label = str(m.get("name", "")).lower()
    text = row_text(row)
    data = {
        "name": "row",
        "ffn": "swiglu" if gated else "gelu",
        # Megatron GPT ties embeddings; Llama-like do not, Gemma does (TIED_FAMILIES)
        "tied_embeddings": not gated or any(re.search(t, label) for t in TIED_FAMILIES),
        "n_layers": m.get("n_layers"),
        "d_model": m.get("d_model"),
        "n_heads": m.get("n_heads") or _heads_default(m),
        "n_kv_heads": m.get("n_kv_heads") or m.get("n_heads") or _heads_default(m),
        "d_ff": m.get("d_ff") or (4 * m["d_model"] if m.get("d_model") else None),
        "vocab": m.get("vocab") or DEFAULT_VOCAB,
    }
    if moe:
        de = moe.get("d_ff_expert") or _moe_ffn_default(m)
        data.update(
            n_experts=moe.get("n_experts"),
            top_k=moe.get("top_k"),
            d_ff_expert=de,
            d_ff=m.get("d_ff") or de,
            n_shared_experts=moe.get("n_shared") or 0,
            n_dense_layers=0,
        )
        if re.search(r"alternates dense and moe", text) and m.get("n_layers"):
            data["n_dense_layers"] = int(m["n_layers"]) // 2
        # one wide shared expert (Qwen2-57B: intermediate 20,480 = 8 expert widths)
        wide = re.search(r"shared expert of intermediate ([\d,]+)", text)
        if wide and de:
            data["n_shared_experts"] = round(float(wide.group(1).replace(",", "")) / de)
    width = _family_head_width(label)
    if width is not None:
        data["d_head"] = width
    window = next((w for w in SLIDING_WINDOWS if re.search(w[0], label)), None)
    if window is not None and m.get("n_layers"):
        data["attention_window"] = window[1]
        data["window_layers"] = window[2](int(m["n_layers"]))
    mla = next((f for pattern, f in MLA_FAMILIES if re.search(pattern, label)), None)
    if mla is not None and moe:
        data.update(mla)
    for k, v in data.items():
        if v is None:
            raise ValueError(
                f"model.{k} is null, and {m.get('name')!r} names no catalog model whose "
                "shape agrees with the row's: give the row's model its dimensions"
            )
    return model_from_dict(data, f"row {row['id']} model")


def _family_head_width(label: str) -> int | None:
    """The published head width of the model family a lower-case name names (HEAD_WIDTHS)."""
    return next((w for pattern, w in HEAD_WIDTHS if re.search(pattern, label)), None)


def _head_width(m: dict) -> int:
    """The head width of a row's model family, else DEFAULT_HEAD_WIDTH."""
    return int(_family_head_width(str(m.get("name", "")).lower()) or DEFAULT_HEAD_WIDTH)


def _heads_default(m: dict) -> int | None:
    """Attention heads of a row's model that states none: d_model over its family's head
    width (`_head_width`), at least 1."""
    d = m.get("d_model")
    if not isinstance(d, int | float) or isinstance(d, bool) or d <= 0:
        return None
    return max(1, int(d) // _head_width(m))


def _moe_ffn_default(m: dict) -> int | None:
    """An MoE row's expert FFN width when it states none: its FFN width `d_ff`, else
    4 d_model (the dense default), as Megatron-Core does (`moe_ffn_hidden_size` defaults to
    `ffn_hidden_size`, TransformerConfig); `approximations` says so."""
    if m.get("d_ff"):
        return m["d_ff"]
    return 4 * m["d_model"] if m.get("d_model") else None


def train_seq_len(row: dict) -> tuple[int | None, str | None]:
    """A training row's sequence length and, when the row's model does not give it, where it
    came from: (model.seq_len, None); else the length its notes state ("seq 4K", "sequence
    length 8192"), else its model family's pre-training context (TRAIN_CONTEXTS), else
    DEFAULT_TRAIN_SEQ, with a phrase saying so; (None, None) when model.seq_len is given
    but is not a positive integer."""
    raw = (row.get("model") or {}).get("seq_len")
    if raw is not None:
        return int_or(raw, None), None
    for hit in re.finditer(
        r"\bseq(?:uence)?(?:[\s_\-]*len(?:gth)?)?\b\s*(?:of\s+)?[=:]?\s*"
        r"(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?!\d|[.,]\d)\s*(k\b)?",
        str(row.get("notes") or "").lower(),
    ):
        value = float(hit.group(1).replace(",", "")) * (1024 if hit.group(2) else 1)
        n = int(value)
        # a smaller number is not a training length ("sequence 1 of 3"), nor a fraction
        if n >= MIN_TRAIN_SEQ and n == value:
            return n, f"seq_len not stated in the model: {n} from the notes"
    name = str((row.get("model") or {}).get("name") or "").lower()
    for pattern, seq, family in TRAIN_CONTEXTS:
        if re.search(pattern, name):
            return seq, f"seq_len not stated: {seq}, {family}'s pre-training context"
    return DEFAULT_TRAIN_SEQ, f"seq_len not stated: {DEFAULT_TRAIN_SEQ} assumed"


def dense_catalog_of(m: dict) -> str | None:
    """The DENSE_CATALOG model a dense row's model names, if any: the patterns read the name
    up to its first size ("Llama-2-70B (vs a 7B baseline)" is a 70B)."""
    label = str(m.get("name", "")).lower()
    size = re.search(r"(?<![\w.])\d+(?:\.\d+)?[bt]\b", label)
    label = label[: size.end()] if size else label
    return next((v for pattern, v in DENSE_CATALOG if re.search(pattern, label)), None)


def _filled(m: dict) -> dict:
    """A dense row's model with the null fields of MODEL_FIELDS taken from the catalog model
    it names (DENSE_CATALOG), when the fields it states agree with that model's; else as
    given."""
    name = dense_catalog_of(m)
    if name is None or all(m.get(f) is not None for f in MODEL_FIELDS):
        return m
    model = _catalog_load(name)
    try:
        if _disagreeing(m, model, MODEL_FIELDS):
            return m
    except (TypeError, ValueError):  # a malformed field: the row's own checks say which
        return m
    return {**m, **{f: int(float(getattr(model, f))) for f in MODEL_FIELDS if m.get(f) is None}}


def _disagreeing(m: dict, model: Model, fields) -> str | None:
    """The first of `fields` the row's dict `m` states with another value than `model`."""
    return next(
        (f for f in fields if m.get(f) is not None and float(m[f]) != float(getattr(model, f))),
        None,
    )


def _catalog_of(m: dict) -> str | None:
    """The MOE_CATALOG model a row's model name names, if any."""
    key = _norm(str(m.get("name", "")))
    return next((v for k, v in MOE_CATALOG.items() if key.startswith(k)), None)


@functools.lru_cache(maxsize=64)
def _catalog_load(name: str) -> Model:
    """A catalog model, parsed once per process (`approximations` and `row_model` ask for
    the same few models once per MoE row; the files are the shipped catalog)."""
    return load_model(name)


def _catalog_model(m: dict, name: str) -> Model:
    """The catalog model `name` for a row that names it, after checking it agrees with the
    row (the row schema has no MLA dims or dense-layer count)."""
    model = _catalog_load(name)
    field = _disagreeing(m, model, ("n_layers", "d_model", "n_heads"))
    if field:
        raise ValueError(
            f"catalog model {name} has {field}={float(getattr(model, field)):g}, the row {m[field]}"
        )
    field = _disagreeing(m["moe"], model, ("n_experts", "top_k")) if m.get("moe") else None
    if field:
        raise ValueError(f"catalog model {name} disagrees with the row on {field}")
    return replace(model, name="row")


def num_in(pattern: str, text: str, default=None):
    """The first number a regex group captures in `text` (commas allowed), else default."""
    m = re.search(pattern, text, re.I)
    if not m:
        return default
    return float(m.group(1).replace(",", ""))


def int_or(x, default):
    """`x` as an int when it is a finite number >= 1 (or a string of one: "8"; a fraction
    is cut: 2.5 -> 2), else `default`."""
    if isinstance(x, bool) or x is None:
        return default
    if isinstance(x, str) and re.fullmatch(r"\s*\d+(?:\.0*)?\s*", x):
        x = float(x)
    if isinstance(x, int | float) and math.isfinite(x) and x >= 1:
        return int(x)
    return default
