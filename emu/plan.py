"""The parallel plan: every knob declared once, with its metadata, beside its field.

A knob is one field of `Plan` declared with `knob(kind, ...)`: its kind (a parallel
`degree`, an `int`, a `bool`, a named `choice` such as recompute none/selective/full, a
`float` rate, or a `static` name that changes the program), default, bounds, unit, help,
whether a search varies it, the phases it applies to and its CLI flag. Everything else is
derived from the declarations: `make_plan` (convert, default, validate), `validate_plan`
(integrality, bounds, cross-knob rules, rules against a model), `plan_dict` (the JSON form)
and `KNOBS` / `knobs()` (what the host reads for CLI flags, the search space and sweeps).
Adding a knob is one declaration plus the formula that reads it. Megatron conventions
(Narayanan et al. SC21): n_chips = tp * cp * dp * pp; a step processes `global_batch`
sequences as n_mb = global_batch / (dp * microbatch) micro-batches per pipeline.

>>> p = make_plan(tp=8, dp=4, global_batch=64, seq_len=8192, recompute="full")
>>> int(n_chips(p)), plan_dict(p)["recompute"], int(n_microbatches(p))
(32, 'full', 16)
>>> make_plan(tp=0)
Traceback (most recent call last):
...
ValueError: Plan: tp must be a positive integer (got tp=0).
>>> [k.flag for k in knobs(searchable=True)][:3]
['--tp', '--pp', '--dp']
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from emu._backend import jnp
from emu.collectives import ALGORITHMS
from emu.numerics import safe_div
from emu.struct import FieldInfo, check, dataclass, error, field, parse_bounds
from emu.units import PRECISIONS
from emu.workload import Model

__all__ = [
    "Plan",
    "Knob",
    "knob",
    "knobs",
    "KNOBS",
    "MOE_ONLY_KNOBS",
    "make",
    "make_plan",
    "validate_plan",
    "plan_dict",
    "n_chips",
    "n_ranks",
    "n_microbatches",
    "PHASES",
    "RECOMPUTE",
    "KV_PRECISIONS",
    "KINDS",
]

Array = jnp.ndarray
PHASES = ("train", "prefill", "decode")
RECOMPUTE = {"none": 0.0, "selective": 1.0, "full": 2.0}
#: KV-cache element formats: name -> bytes per element, the code a `kv_precision` leaf
#: stores (so the cost formulas read the bytes directly and `grad` reaches them). FP8 KV
#: caches: vLLM `--kv-cache-dtype fp8` (docs.vllm.ai, "Quantized KV Cache"), TensorRT-LLM
#: `KvCacheConfig(dtype='fp8')` or a ModelOpt checkpoint whose hf_quant_config.json says
#: "kv_cache_quant_algo": "FP8" (nvidia.github.io/TensorRT-LLM, features/quantization)
KV_PRECISIONS = {"bf16": 2.0, "fp8": 1.0}
#: knob kinds: how a Python value becomes the stored one and how it is searched
KINDS = ("static", "degree", "int", "bool", "choice", "float")
_F32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class Knob(FieldInfo):
    """The declaration of one plan knob (a `FieldInfo` with the plan-specific metadata).

    `kind` is one of KINDS; `default` the value `make_plan` uses when the knob is not given
    (None: `derive(values)` computes it from the other knobs); `searchable` whether plan
    searches vary it; `phases` the phases whose cost it changes; `inactive` the value it must
    hold in the other phases (None: ignored there); `names` name -> stored code of a
    `choice`; `flag_name` overrides the CLI spelling. `name` is filled in by `knobs()`.
    """

    name: str = ""
    kind: str = "float"
    default: Any = None
    derive: Callable[[dict], Any] | None = None
    searchable: bool = False
    phases: tuple = PHASES
    inactive: Any = None
    names: Mapping[str, float] | None = None
    flag_name: str | None = None

    @property
    def flag(self) -> str:
        """CLI spelling: --global-batch; a bool that defaults to true is --no-<name>."""
        if self.flag_name:
            return self.flag_name
        stem = self.name.replace("_", "-")
        return f"--no-{stem}" if self.kind == "bool" and self.default is True else f"--{stem}"

    @property
    def values(self) -> tuple | None:
        """Every admissible stored value when there are finitely many (else None)."""
        if self.kind == "static":
            return tuple(self.choices)
        if self.kind == "choice":
            return tuple(self.names.values())
        if self.integer and math.isfinite(self.lo) and math.isfinite(self.hi):
            return tuple(float(v) for v in range(int(self.lo), int(self.hi) + 1))
        return None

    @property
    def transform(self) -> str:
        """The coordinate a gradient search uses: 'log2' (degrees and counts), 'categorical'
        (finitely many values), 'logit' (rates in [0, 1]), 'log' (other positive floats)."""
        if self.values is not None:
            return "categorical"
        if self.integer:
            return "log2"
        return "logit" if self.lo >= 0 and self.hi <= 1 else "log"

    def applies_to(self, phase: str) -> bool:
        """Whether the knob changes the cost of a `phase` plan."""
        return phase in self.phases

    def describe(self) -> str:
        """The rule in words; small integer sets are listed ('0, 1, 2 or 3')."""
        if self.kind == "choice":
            return "one of " + ", ".join(f"{n} ({c:g})" for n, c in self.names.items())
        vals = self.values
        if vals is not None and len(vals) <= 4:
            words = [f"{v:g}" for v in vals]
            return f"{', '.join(words[:-1])} or {words[-1]}"
        return super().describe()

    def encode(self, value: Any, where: str = "Plan") -> float | str:
        """The stored value of a Python `value`: a name for static knobs, else a float
        (bool -> 0/1, choice name -> code). Bounds are checked later, by `validate_plan`."""
        if self.kind == "static":
            if not isinstance(value, str) or value not in self.choices:
                known = ", ".join(self.choices)
                raise error(where, f"unknown {self.name} {value!r}; known: {known}.")
            return value
        if self.kind == "bool" and isinstance(value, bool | np.bool_):
            return 1.0 if value else 0.0
        if self.kind == "choice" and isinstance(value, str):
            if value not in self.names:
                known = ", ".join(self.names)
                raise error(where, f"unknown {self.name} '{value}'; known: {known}.")
            return self.names[value]
        number = not isinstance(value, bool | str) and np.asarray(value).dtype.kind in "iuf"
        if not number or np.ndim(value):
            got = f"{type(value).__name__} {value!r}"
            raise error(where, f"{self.name} must be {self.describe()} (got {got}).")
        x = float(value)
        if math.isfinite(x) and abs(x) > _F32_MAX:
            raise error(where, f"{self.name} = {x:g} is outside the float32 range emu computes in.")
        return x

    def decode(self, x: Any) -> Any:
        """The JSON value of stored `x`: the name (static, choice), a bool, or an int where
        integral, else a float."""
        if self.kind == "static":
            return x
        v = float(x)
        if self.kind == "bool":
            return v > 0.5
        if self.kind == "choice":
            return {c: n for n, c in self.names.items()}.get(v, v)
        return int(v) if v == round(v) else v


def knob(
    kind: str,
    *,
    default: Any = None,
    bounds: str | None = None,
    unit: str = "",
    help: str,
    searchable: bool = False,
    phases: tuple = PHASES,
    derive: Callable[[dict], Any] | None = None,
    inactive: Any = None,
    names: Mapping[str, float] | None = None,
    choices: Any = None,
    flag: str | None = None,
) -> Any:
    """Declare a plan knob (a `Plan` field) of `kind` (see KINDS and `Knob`). Degrees are
    positive integers; bools 0/1; a choice stores the code of one of `names`; `int` and
    `float` take `bounds` in interval notation ('[0, 3]', '[0, 1)')."""
    if kind not in KINDS:
        raise ValueError(f"unknown knob kind '{kind}'; known: {', '.join(KINDS)}.")
    span: dict = {}
    if kind in ("degree", "bool"):
        span = dict(lo=1.0) if kind == "degree" else dict(lo=0.0, hi=1.0)
    elif kind == "choice":
        span = dict(lo=min(names.values()), hi=max(names.values()))
    elif bounds:
        span = parse_bounds(bounds)
    meta = dict(unit=unit, help=help, kind=kind, default=default, derive=derive, names=names)
    info = Knob(
        **span,
        **meta,
        integer=kind not in ("static", "float"),
        choices=choices,
        searchable=searchable,
        phases=tuple(phases),
        inactive=inactive,
        flag_name=flag,
    )
    if kind == "static":
        return field(static=True, info=info, default=default)
    return field(info=info)


_TRAIN = ("train",)


@dataclass
class Plan:
    """How a step is split over chips and run: one field per knob (see the declarations;
    `knobs()` lists them with their metadata). Every non-static knob is a float32 leaf so
    one compiled function serves a sweep and `grad` reaches it; `precision`, `algorithm`
    and `phase` change the program and are static."""

    precision: str = knob("static", default="bf16", choices=PRECISIONS, help="matmul precision")
    algorithm: str = knob(
        "static", default="hierarchical", choices=ALGORITHMS, help="TP/CP/DP collective algorithm"
    )
    phase: str = knob("static", default="train", choices=PHASES, help="train, prefill or decode")
    tp: Array = knob("degree", default=1, searchable=True, help="tensor-parallel degree")
    pp: Array = knob(
        "degree", default=1, searchable=True, phases=_TRAIN, inactive=1.0, help="pipeline stages"
    )
    dp: Array = knob("degree", default=1, searchable=True, help="data-parallel degree")
    cp: Array = knob(
        "degree",
        default=1,
        searchable=True,
        phases=_TRAIN,
        inactive=1.0,
        help="context-parallel degree (each sequence split over cp chips)",
    )
    ep: Array = knob("degree", default=1, searchable=True, help="expert-parallel degree")
    microbatch: Array = knob(
        "int",
        default=1,
        bounds="[1, inf)",
        unit="sequences",
        searchable=True,
        help="sequences per micro-batch per DP rank (serving: the batch per DP rank)",
    )
    global_batch: Array = knob(
        "int",
        bounds="[1, inf)",
        unit="sequences",
        derive=lambda v: v["dp"] * v["microbatch"],
        help="sequences per step (default dp * microbatch; the plan rule's: the smallest "
        "multiple of it holding >= 4 Mi tokens)",
    )
    seq_len: Array = knob(
        "int",
        default=2048,
        # 10M tokens: Llama 4 Scout's claimed context; float32 holds every whole number to 2^24
        bounds="[1, 1e7]",
        unit="tokens",
        phases=("train", "prefill"),
        help="tokens per sequence (prefill: the prompt)",
    )
    vpp: Array = knob(
        "degree",
        default=1,
        searchable=True,
        phases=_TRAIN,
        inactive=1.0,
        help="virtual pipeline chunks per stage (1 = 1F1B, > 1 = interleaved)",
    )
    zero: Array = knob(
        "int", default=1, bounds="[0, 3]", searchable=True, phases=_TRAIN, help="ZeRO stage"
    )
    recompute: Array = knob(
        "choice", default="selective", names=RECOMPUTE, searchable=True, phases=_TRAIN,
        help="activation recomputation",
    )  # fmt: skip
    recompute_fraction: Array = knob(
        "float",
        default=1.0,
        bounds="(0, 1]",
        phases=_TRAIN,
        inactive=1.0,
        help="under recompute=full, the share of each pipeline stage's layers recomputed "
        "(Megatron's block method: --recompute-num-layers N of a stage chunk's layers); 1: all",
    )
    recompute_activation: Array = knob(
        "bool",
        default=False,
        phases=_TRAIN,
        inactive=0.0,
        help="recompute the FFN activation function's output in backward instead of keeping "
        "it (MindSpeed --recompute-activation-function)",
    )
    sp: Array = knob(
        "bool", default=True, searchable=True, phases=_TRAIN, help="sequence parallelism with TP"
    )
    grad_bytes: Array = knob(
        "float",
        bounds="(0, 8]",
        unit="bytes",
        phases=_TRAIN,
        # Megatron keeps fp32 main grads and reduces them in fp32 for bf16/fp8 training;
        # fp16 training (SC21) reduces fp16 gradients.
        derive=lambda v: 2.0 if v["precision"] == "fp16" else 4.0,
        help="bytes per gradient element in the DP reduction (default: 2 fp16, else 4)",
    )
    lora: Array = knob(
        "bool",
        default=False,
        phases=_TRAIN,
        help="LoRA: frozen base weights (no weight gradients, optimizer states or DP "
        "reduction for them; adapters neglected)",
    )
    etp: Array = knob(
        "degree", default=1, help="expert tensor-parallel degree (EP x ETP grid of ep*etp)"
    )
    moe_imbalance: Array = knob(
        "float",
        default=1.0,
        bounds="[1, 1e3)",
        help="busiest rank's routed tokens / mean (scales its expert work and all-to-all)",
    )
    a2a_overlap: Array = knob(
        "bool", default=False, help="two-micro-batch overlap of dispatch/combine with compute"
    )
    moe_dedup: Array = knob(
        "bool",
        default=True,
        help="a token crosses a tier once per destination domain, then is forwarded inside "
        "it (DeepEP); false: one copy per routed expert",
    )
    context: Array = knob(
        "float",
        # a mean context may be fractional, and `emu serve` gives prompt + output / 2 of
        # prompts and outputs up to 1e7 each (float32 counts whole tokens exactly to 2^24)
        bounds="[1, 1.6e7]",
        unit="tokens",
        phases=("decode",),
        derive=lambda v: v["seq_len"],
        help="KV-cache length per sequence (default seq_len)",
    )
    # fmt: off
    mtp_accept: Array = knob(
        "float", default=0.0, bounds="[0, 1)", phases=("decode",),
        help="acceptance rate of one multi-token-prediction draft token (0 = no MTP; "
        "draft_tokens = 1 and accept_len = 1 + mtp_accept with the model's MTP module; the "
        "CLI's serving rule gives a model with MTP modules 0.7 when speculation is left out)",
    )
    draft_tokens: Array = knob(
        "int", default=0, bounds="[0, 16]", phases=("decode",), unit="tokens",
        help="speculative decoding: draft tokens verified per sequence per step (MTP or "
        "EAGLE drafts, one draft block + head pass each; 0 = none)",
    )
    accept_len: Array = knob(
        "float", bounds="[1, 17]", phases=("decode",), unit="tokens",
        derive=lambda v: 1.0 + v["mtp_accept"],
        help="mean tokens emitted per sequence per step with draft_tokens > 0 (1 <= "
        "accept_len <= 1 + draft_tokens; default 1 + mtp_accept)",
    )
    # fmt: on
    cache_hit: Array = knob(
        "float",
        default=0.0,
        bounds="[0, 1)",
        phases=("prefill",),
        help="share of prompt tokens served from a prefix cache",
    )
    kv_precision: Array = knob(
        "choice",
        default="bf16",
        names=KV_PRECISIONS,
        phases=("prefill", "decode"),
        help="KV-cache element format: bf16 (2 bytes per element) or fp8 (1 byte)",
    )
    # fmt: off
    expert_ranks: Array = knob(
        "int", default=0, bounds="[0, inf)", phases=("decode",), inactive=0.0,
        help="attention/expert disaggregation: ranks that hold only the MoE experts (routed "
        "and shared, one EP group of ep = expert_ranks) while tp*dp ranks run attention "
        "(xDeepServe on CloudMatrix 384); 0 = experts on the attention ranks",
    )
    attention_groups: Array = knob(
        "degree", default=1, phases=("decode",), inactive=1.0,
        help="with expert_ranks > 0: DP domains of the attention ranks that take turns on "
        "the expert ranks (xDeepServe: 3 domains of 160)",
    )
    # fmt: on

    def _cross_check(self, where: str, at: str) -> None:
        """Rules across knobs that need no model (validate_plan adds the model's)."""
        for k in knobs(type(self)):
            v = getattr(self, k.name)
            if k.inactive is not None and not k.applies_to(self.phase):
                if float(v) != k.inactive:
                    raise error(
                        where,
                        f"{k.name} applies to {'/'.join(k.phases)} plans only; set "
                        f"{k.name}={k.inactive:g} in a {self.phase} plan (got {k.name}="
                        f"{float(v):g}).",
                    )
        dp, mb, gb = float(self.dp), float(self.microbatch), float(self.global_batch)
        k, a, m = float(self.draft_tokens), float(self.accept_len), float(self.mtp_accept)
        er, g = float(self.expert_ranks), float(self.attention_groups)
        hit, seq = float(self.cache_hit), float(self.seq_len)
        # the largest float32 cache_hit that leaves one token; float32 rounds 1 - 1/seq by up
        # to 2^-24, i.e. up to seq 2^-24 tokens, which the test allows for
        top = np.float32(1.0 - 1.0 / max(seq, 1.0))
        top = float(
            np.nextafter(top, np.float32(0)) if float(top) > 1.0 - 1.0 / max(seq, 1.0) else top
        )
        rules = (
            (hit > 0 and seq * (1.0 - hit) < 1.0 - max(1e-3, seq * 2.0**-23),
             f"cache_hit={hit:.9g} leaves {seq * (1.0 - hit):.3g} of the {seq:g} prompt tokens "
             f"to compute; a prefill computes at least the last one: cache_hit <= 1 - 1/seq_len "
             f"(at most {top:.9g})."),
            (gb % (dp * mb), f"global_batch={gb:g} must be a multiple of dp*microbatch="
             f"{dp * mb:g}; adjust global_batch or microbatch."),
            (float(self.vpp) > 1 and float(self.pp) == 1,
             "vpp > 1 (interleaved schedule) needs pp > 1."),
            (float(self.recompute_fraction) < 1 and float(self.recompute) < 1.5,
             f"recompute_fraction={float(self.recompute_fraction):g} is the share of layers "
             "recomputed in full; it needs recompute=full (or drop it)."),
            (k > 0 and m > 0, f"set mtp_accept={m:g} or draft_tokens={k:g}, not both "
             "(mtp_accept is draft_tokens = 1 with accept_len = 1 + mtp_accept)."),
            (k > 0 and a > 1 + k, f"accept_len={a:g} must be <= 1 + draft_tokens = {1 + k:g}."),
            (k == 0 and abs(a - (1 + m)) > 1e-6,
             f"accept_len={a:g} needs draft_tokens > 0; set draft_tokens."),
            (er > 0 and float(self.ep) != er,
             f"expert_ranks={er:g} needs ep={er:g} (the expert ranks form the EP group; got "
             f"ep={float(self.ep):g})."),
            (er > 0 and float(self.etp) != 1, "expert_ranks > 0 needs etp=1."),
            (er > 0 and float(self.pp) != 1, "expert_ranks > 0 needs pp=1."),
            (g > 1 and er == 0, f"attention_groups={g:g} needs expert_ranks > 0 (the groups "
             "take turns on the expert ranks)."),
            (dp % g, f"attention_groups={g:g} must divide dp={dp:g}."),
            (er > 0 and float(self.a2a_overlap) > 0.5, "a2a_overlap does not apply with "
             "expert_ranks > 0 (attention domains take turns on the experts instead); drop it."),
        )  # fmt: skip
        for broken, text in rules:
            if broken:
                raise error(where, text)


@functools.cache  # a class's fields do not change; every plan made reads them (`make`)
def knobs(
    cls: type = Plan, *, phase: str | None = None, searchable: bool | None = None
) -> tuple[Knob, ...]:
    """The knob declarations of a plan class, in field order, with their names filled in;
    optionally only those that apply to `phase` and/or have the given `searchable`."""
    out = []
    for f in dataclasses.fields(cls):
        info = f.metadata.get("emu")
        if not isinstance(info, Knob):
            continue
        k = dataclasses.replace(info, name=f.name)
        if phase is not None and not k.applies_to(phase):
            continue
        if searchable is not None and k.searchable != searchable:
            continue
        out.append(k)
    return tuple(out)


#: every knob of `Plan`, in field order (the host derives CLI flags and search spaces)
KNOBS = knobs(Plan)
#: plan knobs that only an MoE model's experts read (a dense model ignores them)
MOE_ONLY_KNOBS = ("moe_imbalance", "a2a_overlap", "moe_dedup")


def make(cls: type, /, **values: Any):
    """A validated plan of class `cls` (Plan or a subclass declaring more knobs) from Python
    values: names convert to codes, omitted knobs take their declared default (or derived
    value), then `validate_plan` runs. ValueError names the knob."""
    specs = knobs(cls)
    by_name = {k.name: k for k in specs}
    unknown = [name for name in values if name not in by_name]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(by_name), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"Plan: unknown knob '{unknown[0]}'.{hint} Known: {', '.join(by_name)}.")
    stored: dict[str, Any] = {}
    for k in specs:
        v = values.get(k.name)
        v = k.default if v is None else v
        if v is not None:
            stored[k.name] = k.encode(v)
    for k in specs:
        if k.name not in stored:
            stored[k.name] = k.encode(k.derive(stored))
    leaves = {k.name: jnp.float32(stored[k.name]) for k in specs if k.kind != "static"}
    return validate_plan(cls(**{**stored, **leaves}))


def make_plan(**values: Any) -> Plan:
    """A validated `Plan` from Python values, one keyword per knob (every knob is optional;
    see `KNOBS` for defaults, bounds and units). Raises ValueError naming the knob."""
    return make(Plan, **values)


def _signature_and_doc() -> None:
    params = [
        inspect.Parameter(k.name, inspect.Parameter.KEYWORD_ONLY, default=k.default) for k in KNOBS
    ]
    make_plan.__signature__ = inspect.Signature(params, return_annotation="Plan")
    if not make_plan.__doc__:  # python -OO strips docstrings
        return
    rows = [
        f"    {k.name} ({k.kind}{', ' + k.unit if k.unit else ''}; default "
        f"{k.default if k.default is not None else 'derived'}): {k.help}."
        for k in KNOBS
    ]
    make_plan.__doc__ += "\n\n    Knobs:\n" + "\n".join(rows) + "\n"


_signature_and_doc()


def validate_plan(
    plan: Plan,
    model: Model | None = None,
    *,
    max_chips: float | None = None,
    dies_per_chip: float = 1.0,
    even_layers: bool = False,
    even_experts: bool = False,
):
    """Host-side checks with messages that name the knob and say how to fix it; returns the
    plan. Every knob against its declaration (integrality, bounds, names), the cross-knob
    rules of the plan class, then, with `max_chips` (packages; `dies_per_chip` ranks each),
    the cluster size, and with a `model` the rules against it. Plan degrees count ranks.
    Stages may hold unequal layer counts (Megatron's uneven first/last stages: the step is
    priced on the heaviest stage, `parallelism.stage_layers`) and EP need not divide the
    experts (redundant expert slots, `parallelism.local_experts`); `even_layers=True` /
    `even_experts=True` ask for the stricter divisibility anyway."""
    check(plan, "Plan", echo=True)
    ranks = float(n_chips(plan))
    if max_chips is not None and ranks > max_chips * dies_per_chip:
        per = f" ({max_chips:g} chips x {dies_per_chip:g} dies)" if dies_per_chip != 1 else ""
        raise ValueError(
            f"Plan: tp*pp*dp*cp (+ expert_ranks) = {ranks:g} ranks exceeds the largest "
            f"cluster of this system{per}: {max_chips * dies_per_chip:g} ranks; reduce dp."
        )
    if model is not None:
        _check_against_model(plan, model, even_layers=even_layers, even_experts=even_experts)
    return plan


def _check_against_model(plan: Plan, model: Model, *, even_layers: bool, even_experts: bool):
    p = {f.name: float(getattr(plan, f.name)) for f in knobs(type(plan)) if f.kind != "static"}
    tp, cp, ep, etp, seq = p["tp"], p["cp"], p["ep"], p["etp"], p["seq_len"]
    experts, heads, kv = (float(x) for x in (model.n_experts, model.n_heads, model.n_kv_heads))
    ranks, stages, layers = tp * p["dp"] * cp, p["pp"] * p["vpp"], float(model.n_layers)
    rules = (
        (p["mtp_accept"] > 0 and float(model.mtp_layers) == 0,
         f"mtp_accept needs a model with MTP modules ({model.name} has none); for other "
         "draft models set draft_tokens and accept_len."),
        (even_experts and experts > 0 and experts % ep,
         f"ep={ep:g} must divide the model's n_experts={experts:g}; pick an ep that divides it."),
        (experts == 0 and ep > 1, f"ep={ep:g} needs an MoE model ({model.name} is dense)."),
        (p["expert_ranks"] > 0 and experts == 0,
         f"expert_ranks={p['expert_ranks']:g} needs an MoE model ({model.name} is dense)."),
        (ep * etp > 1 and ranks % (ep * etp) and p["expert_ranks"] == 0,
         f"ep*etp={ep * etp:g} must divide tp*dp*cp={ranks:g} (EP groups tile the ranks of a "
         "stage; ep may exceed or not divide the experts: slots are replicated)."),
        (experts == 0 and etp > 1, f"etp={etp:g} needs an MoE model."),
        (heads % tp,
         f"tp={tp:g} must divide the model's n_heads={heads:g}; pick a tp that divides it."),
        (kv % tp and tp % kv, f"tp={tp:g} and n_kv_heads={kv:g} must divide one another."),
        (even_layers and layers % stages, f"pp*vpp={stages:g} must divide n_layers={layers:g}."),
        (stages > layers,
         f"pp*vpp={stages:g} exceeds n_layers={layers:g}: every chunk needs a layer."),
        (seq % cp, f"cp={cp:g} must divide seq_len={seq:g}."),
    )  # fmt: skip
    for broken, text in rules:
        if broken:
            raise ValueError(f"Plan: {text}")


def plan_dict(plan: Plan) -> dict:
    """JSON form of a plan: knob name -> value (names for static and choice knobs, bools for
    bool knobs, ints where integral); `make_plan(**plan_dict(p))` rebuilds `p`."""
    return {k.name: k.decode(getattr(plan, k.name)) for k in knobs(type(plan))}


def n_chips(plan: Plan):
    """Ranks the plan occupies: tp * pp * dp * cp (EP and ETP reuse the DP ranks), plus the
    `expert_ranks` of an attention/expert-disaggregated decode plan. A rank is a
    software-visible device: a chip, or one die of a multi-die package (Ascend 910C)."""
    return plan.tp * plan.pp * plan.dp * plan.cp + plan.expert_ranks


#: the same count under its precise name (plan degrees count ranks)
n_ranks = n_chips


def n_microbatches(plan: Plan):
    """Micro-batches per pipeline per step: global_batch / (dp * microbatch)."""
    return safe_div(plan.global_batch, plan.dp * plan.microbatch)
