"""The plan policy: which plan when the user leaves degrees out, and the largest batch that
meets a latency SLO.

Chips are packages; plan degrees count ranks (dies as ranks, issue 11): `chips` packages of
a chip with d dies (Ascend 910C: 2) give chips x d ranks, and the rules below apply to ranks
and to each rank's share of HBM (`emu.topology.rank_system`).

Training rule (stated in `emu run --help` and the README): the fastest (most tokens/s, by
emu's own step time) of a few candidate plans that fit in HBM (`training_candidates`; knobs
given are kept in every one). Each candidate is the base rule at one TP (1, 2, 4 or 8,
dividing the heads, inside the scale-up node `emu.topology.node_tier`): CP = 1; PP = the
smallest divisor of the layers that makes the plan fit in HBM, with selective recomputation,
else with full; DP takes the remaining ranks; MoE models: EP = the largest divisor of the
experts that divides tp*dp*cp and fits in the scale-up domain, or (a second candidate) the
largest that divides tp*dp*cp / etp at all; a sequence of LONG_CONTEXT tokens or more also
with CP = 2, 4, ..., 64 (each rank keeping >= 4,096 tokens). The fastest of these is then
tried at micro-batch 2, 4 and 8 where its micro-batches wait on the host and, with a
pipeline of at least pp micro-batches, interleaved 2 and 4 ways at the best micro-batch
(`schedule_candidates`: its TP,
CP and EP kept; the global batch the same or, by default, within 1/8 of it). The default
global batch is the smallest multiple of dp * microbatch holding >= DEFAULT_BATCH_TOKENS
tokens; a given one is kept, and only plans whose dp * microbatch divide it are compared
(`BatchError`, naming the batches the plans take, where none does); a dp, pp or VPP given
that the base rule's TP cannot take is tried at the other TPs (`RuleError` where none can).
Before session 31 the rule was the base rule at the largest such TP alone: TP 8 for
Llama 3 8B on 8 GPUs (35% MFU in emu, where TP 2 gives 50%) and EP inside one 8-GPU node
for DeepSeek-V3; until session 32 every plan had micro-batch 1 and no interleaving
(Qwen3-30B-A3B on 8 B300 then waits on the host for 78% of its step in emu: 6.3K tokens/s
per GPU, 25K at micro-batch 4).

Serving rule: pp = cp = 1; TP = 1 for MoE models (data-parallel attention, expert-parallel
MoE), else the smallest power of two <= 8 whose weights fit in HBM; EP = the largest divisor
of the chip count no larger than max(scale-up domain, experts): every rank of an NVL72 or a
CloudMatrix 384 (where EP does not divide the experts, the extra slots hold redundant
replicas, as DeepSeek's and CloudMatrix's deployments place them), and across nodes on
8-GPU servers. The batch per DP rank defaults to the largest meeting the phase's
SLO (`largest_batch`). A model with MTP modules (DeepSeek-V3/R1) decodes with one MTP draft
token accepted DEFAULT_MTP_ACCEPT of the time unless the plan sets its speculation
(mtp_accept, draft_tokens or accept_len; mtp_accept 0 turns it off).

Precision (`default_precision`): training BF16 (FP16 on a chip without BF16); serving the
chip's 8-bit format (FP8, else INT8), else BF16. FP4 only when asked: it changes the model.

>>> from emu.catalog import load_system, load_model
>>> plan = auto_plan(load_system("gb200_nvl72"), load_model("llama3_70b"), 72, seq_len=8192)
>>> [int(plan.tp), int(plan.pp), int(plan.dp)]
[2, 4, 9]
>>> [int(plan.microbatch), int(plan.vpp)]
[1, 4]
"""

from __future__ import annotations

import math

import numpy as np

from emu._backend import jax, jnp
from emu.advice import CHECKED_FIELDS, check_result, diagnose, either, gb_of
from emu.hardware import peak_flops, usable_hbm_bytes
from emu.objective import evaluate, inference_memory, max_batch_under_slo
from emu.parallelism import memory
from emu.plan import KNOBS, Plan, make_plan, n_microbatches, n_ranks, validate_plan
from emu.struct import check, check_value, has_tracer, is_concrete, real_scalar, replace
from emu.topology import System, node_tier, rank_system
from emu.units import PRECISIONS
from emu.workload import Model

__all__ = [
    "auto_plan",
    "BatchError",
    "RuleError",
    "ServingFitError",
    "training_candidates",
    "schedule_candidates",
    "check_plan",
    "largest_batch",
    "with_largest_batch",
    "serving_precision",
    "default_precision",
    "checked_evaluate",
    "check_inputs",
    "scale_up_domain",
    "divisors",
    "DEFAULT_BATCH_TOKENS",
    "LONG_CONTEXT",
    "default_global_batch",
    "DEFAULT_MTP_ACCEPT",
    "default_mtp_accept",
    "RULE_KNOBS",
    "diagnose",
    "check_result",
]

#: tokens per training step when no global batch is given (4 Mi, a common pre-training size)
DEFAULT_BATCH_TOKENS = 4 * 2**20


def divisors(n: int) -> list[int]:
    """The positive divisors of n, ascending."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _int(x) -> int:
    return int(round(float(x)))


def _dies(system: System) -> int:
    return _int(system.chip.dies_per_chip)


def _ranks_text(system: System, ranks: int) -> str:
    """ "the chip count 64", or "the rank count 768 (384 chips x 2 dies)" on multi-die chips."""
    d = _dies(system)
    return (
        f"the chip count {ranks}"
        if d == 1
        else (f"the rank count {ranks} ({ranks // d} chips x {d} dies)")
    )


def _capacity(system: System):
    """HBM one rank may use (bytes): its share of the package, less the runtime's reserve."""
    return usable_hbm_bytes(rank_system(system).chip)


#: acceptance of the one MTP draft token a model with MTP modules decodes with when the plan
#: leaves speculation out: CloudMatrix-Infer's stated assumption, 70% (facts §5), also what
#: `emu.validation` gives a row that says "with MTP" without its rate. The published
#: DeepSeek-V3/R1 deployments decode with MTP (DeepSeek's own, SGLang's, CloudMatrix-Infer,
#: xDeepServe: facts §5, the measurement set's decode rows)
DEFAULT_MTP_ACCEPT = 0.7
#: the knobs that set a decode plan's speculation
SPECULATION_KNOBS = ("mtp_accept", "draft_tokens", "accept_len")
#: knobs the rule chooses when they are left out (None)
RULE_KNOBS = ("tp", "pp", "dp", "cp", "ep", "global_batch", "recompute")
#: knobs a serving plan fixes: no pipeline, context or expert-tensor parallelism
_SERVING_FIXED = ("pp", "cp", "etp", "vpp")


def _check_knobs(chips, system: System, knobs: dict) -> int:
    """`chips` as an int after checking it, that every name is a plan knob and that every
    given count (degrees, integers) is valid by its declaration."""
    x = real_scalar(chips)
    if x is None or not math.isfinite(x) or x < 1 or x != int(x):
        raise ValueError(f"chips must be a positive integer (got {chips!r}).")
    chips = int(chips)
    max_chips = float(system.tiers[-1].domain_chips)
    if chips > max_chips:
        raise ValueError(
            f"chips = {chips} exceeds the largest cluster of {system.name} ({max_chips:g}); "
            "use fewer chips or raise the outermost tier's domain_chips."
        )
    declared = {k.name: k for k in KNOBS}
    for name, v in knobs.items():
        k = declared.get(name)
        if k is None:
            make_plan(**{name: v})  # raises "unknown knob ... Did you mean"
            continue
        if k.kind in ("degree", "int", "float"):
            check_value(v, k, name)  # the knob's declared bounds, as make_plan checks them
    return chips


def default_global_batch(unit: int, seq_len: float) -> int:
    """The rule's global batch when none is given: the smallest multiple of `unit` (dp x
    micro-batch sequences) holding DEFAULT_BATCH_TOKENS tokens of `seq_len`."""
    return int(unit * max(1, math.ceil(DEFAULT_BATCH_TOKENS / seq_len / unit)))


def auto_plan(system: System, model: Model, chips: int, **knobs) -> Plan:
    """A valid plan for `chips` chips. `knobs` are Plan knobs by name (emu.plan.KNOBS):
    those given (not None) are kept; the degrees, global batch and recomputation of
    RULE_KNOBS that are left out are chosen by the rule of the module doc; the others take
    their declared defaults (seq_len: 4096), except a decode plan's speculation
    (`default_mtp_accept`). A training plan is the fastest (tokens/s, by emu's own step
    time) of the rule's candidates (`training_candidates`) that fits in HBM; where none
    fits, the base rule's plan (at the largest TP that takes the knobs given), which the
    diagnosis then explains."""
    knobs = {k: v for k, v in knobs.items() if v is not None}
    if knobs.get("phase", "train") != "train":
        return _rule_plan(system, model, chips, knobs)
    try:
        base, err = _rule_plan(system, model, chips, knobs), None  # bad input raises here
    except RuleError as e:  # a knob given that the base TP's pipelines cannot take
        base, err = None, e
    candidates = training_candidates(system, model, chips, knobs)
    if err is not None:  # another of the rule's candidates may take it
        base = _other_plan(system, model, chips, knobs, candidates, err)
    wide = _int(model.n_experts) > 0 and "ep" not in knobs  # also try EP across nodes
    if not candidates and not wide and not schedule_candidates(model, knobs, base):
        return base  # every degree, the micro-batch and VPP given: not even rated
    best, best_rate, waits = base, -1.0, False
    for cand in [None, *candidates]:  # None: the base plan
        try:
            plans = [base if cand is None else _rule_plan(system, model, chips, cand)]
        except ValueError:
            continue  # a candidate the knobs given rule out (dp not dividing, ...)
        if wide:
            try:
                plans.append(_widest_ep_plan(system, model, chips, cand or knobs, plans[0]))
            except ValueError:
                pass  # an EP whose groups cannot tile the plan's ranks
        for plan in plans:
            rate, host = _rated(system, model, plan)
            if rate > 0 and rate > best_rate * (1.0 + _TIE):  # fits, and faster
                best, best_rate, waits = plan, rate, host
    if best_rate <= 0:
        return best  # nothing fits: the base plan, for the diagnosis
    return _best_schedule(system, model, chips, knobs, best, best_rate, waits)


def _whole(x):
    """A count as an int where it is whole (printed without an exponent or ".0")."""
    return int(x) if float(x).is_integer() else x


class RuleError(ValueError):
    """A knob given (dp, pp, VPP, global batch) that the base rule's pipelines at its own TP
    cannot take; another of the rule's TPs may (`auto_plan` tries them before raising)."""


class ServingFitError(ValueError):
    """A serving plan no batch of which works (`largest_batch`): `reason` is "memory" (even
    batch 1's weights and KV cache overflow HBM), "experts" (the expert ranks of an
    attention/expert disaggregation cannot hold their experts) or "slo" (even batch 1 misses
    the latency SLO); `detail` states the numbers, `fixes` the moves in plan-field words (the
    message is both), `degrees` the plan's degrees that could still grow on its ranks,
    `weights_fit` whether the weights alone fit (else a shorter context or a smaller KV cache
    cannot help). A command line with other flags words the moves its own way."""

    def __init__(self, reason, phase, detail, fixes, degrees=(), *, weights_fit=True):
        self.reason, self.phase, self.detail, self.fixes = reason, phase, detail, fixes
        self.degrees, self.weights_fit = tuple(degrees), weights_fit
        super().__init__(f"{detail}; {fixes}.")


class BatchError(RuleError):
    """A given global batch that no pipeline of a plan's TP and CP divides into whole
    micro-batches per DP rank (`units`: the dp x micro-batch of those it tried)."""

    def __init__(self, global_batch, units, where: str = "", advice: str = "or set dp and pp"):
        global_batch = _whole(global_batch)
        self.global_batch, self.units = global_batch, sorted({_whole(u) for u in units})
        near = min(
            (m for u in self.units for m in (u * (global_batch // u), u * -(-global_batch // u))
             if m > 0),
            key=lambda m: (abs(m - global_batch), m),
        )  # fmt: skip
        super().__init__(
            f"Plan: global_batch={global_batch} is not a multiple of dp x micro-batch of any "
            f"plan the rule tries{where} (dp x micro-batch: "
            f"{', '.join(str(u) for u in self.units)}); give a multiple of one of them "
            f"(nearest: {near}), {advice}."
        )


def _batch_advice(dp) -> str:
    """A BatchError's other way out: the degrees, unless dp is given (then the micro-batch)."""
    return "or set dp and pp" if dp is None else "or change dp or the micro-batch"


def _other_plan(system, model, chips, knobs, candidates, err: RuleError) -> Plan:
    """The first of the rule's candidate plans (`training_candidates`: other TPs, CPs) that
    takes the knobs given, where the base plan's TP cannot (`err`); else an error: a
    BatchError where the base plan or another candidate failed on the global batch alone
    (naming their dp x micro-batch and the nearest batch one of them divides), otherwise
    `err`, saying that the other TPs were tried."""
    units = list(err.units) if isinstance(err, BatchError) else []
    for cand in candidates:
        try:
            return _rule_plan(system, model, chips, cand)
        except BatchError as e:  # this candidate takes the other knobs: the batch is the trouble
            units += e.units
        except ValueError:
            continue  # a candidate the knobs given rule out otherwise
    if units:
        d = _dies(system)
        where = f" on {int(chips) * d} ranks" + (
            f" ({int(chips)} chips x {d} dies)" if d > 1 else ""
        )
        raise BatchError(knobs["global_batch"], units, where, _batch_advice(knobs.get("dp")))
    base_tp = _default_tp(
        system, model, int(chips) * _dies(system), cp=int(knobs.get("cp", 1)),
        dp=knobs.get("dp"), pp=knobs.get("pp"),
    )  # fmt: skip
    tps = sorted({int(c["tp"]) for c in candidates} - {base_tp})
    if "tp" not in knobs and tps:
        cond, _, advice = str(err).partition("; ")  # "<what>; <advice>."
        raise RuleError(
            f"{cond} at the rule's TP {base_tp}, and no other TP it tries "
            f"({', '.join(map(str, tps))}) gives a plan either" + (f"; {advice}" if advice else ".")
        ) from None
    raise err


def schedule_candidates(
    model: Model, knobs: dict, plan: Plan, part: str = "both", *, host_bound: bool = True
) -> list[dict]:
    """The knob sets the training rule tries after its degrees (module doc): `plan` (the
    fastest of `training_candidates`) at micro-batch 2, 4 and 8 where its micro-batches wait
    on the host (`host_bound`; `part` "microbatch"), and with its pipeline interleaved 2 and
    4 ways at its micro-batch ("vpp") where the pipeline holds at least pp micro-batches
    (Megatron's interleaved schedule needs them); TP, CP and EP (and the pipeline depth, for
    interleaving) kept, PP and recomputation left to the base rule, knobs given never
    changed. Empty where the micro-batch and interleaving are given or cannot apply."""
    fixed = {**knobs, "tp": _int(plan.tp), "cp": _int(plan.cp), "ep": _int(plan.ep)}
    out = []
    if part != "vpp" and "microbatch" not in knobs and host_bound:
        out += [{**fixed, "microbatch": m} for m in _MICROBATCHES]
    pp, layers = _int(plan.pp), _int(model.n_layers)
    if part != "microbatch" and "vpp" not in knobs and pp > 1 and float(n_microbatches(plan)) >= pp:
        mb = {"microbatch": knobs.get("microbatch", _int(plan.microbatch))}
        out += [{**fixed, **mb, "pp": pp, "vpp": v} for v in _VPPS if layers % (pp * v) == 0]
    return out


#: micro-batches (sequences per pipeline step) and interleaving degrees the rule tries on its
#: fastest plan: fine-grained MoE models issue many small per-expert kernels per micro-batch,
#: so one sequence per micro-batch can leave the GPU waiting on the host (Qwen3-30B-A3B on 8
#: B300: 4x the tokens/s at 4 sequences, emu's host-bound model in `emu.step`); where it
#: does not wait, one sequence keeps the bubble and the activations smallest and a larger
#: micro-batch gains at most a few percent of GEMM efficiency in emu (Llama 3 8B on 8 H100:
#: 1.6% at 2), so only a host-bound plan tries them (each try costs an evaluation of the
#: first answer); a pipeline's bubble shrinks with interleaving (Narayanan et al. SC21 §2.2)
_MICROBATCHES = (2, 4, 8)
_VPPS = (2, 4)
#: a micro-batch candidate is compared only where its global batch (the rule's default for
#: its dp x micro-batch) stays within this share of the plan's, so that no candidate wins by
#: taking a much larger batch (twice as many tokens where dp x micro-batch sequences exceed
#: the default's 4 Mi tokens; at most 1/8 more here)
_BATCH_SLACK = 0.125


def _best_schedule(system, model, chips, knobs, plan, rate, waits: bool):
    """`plan` or the fastest of `schedule_candidates` that fits (micro-batch first, where
    `plan` `waits` on the host, then interleaving at the best micro-batch), at the same
    global batch: exactly the given one, else the rule's default within _BATCH_SLACK of the
    plan's."""
    gb = float(plan.global_batch)
    for part in ("microbatch", "vpp"):  # the interleaving at the best micro-batch's pipeline
        for cand in schedule_candidates(model, knobs, plan, part, host_bound=waits):
            try:
                other = _rule_plan(system, model, chips, cand)
            except ValueError:
                continue  # a pipeline or batch the knobs given rule out
            # a given batch is every candidate's (make_plan refuses one that dp x micro-batch
            # does not divide); the rule's default batch is the candidate's own
            if (
                "global_batch" not in knobs
                and abs(float(other.global_batch) / gb - 1.0) > _BATCH_SLACK
            ):
                continue
            r = _rated(system, model, other)[0]
            if r > 0 and r > rate * (1.0 + _TIE):
                plan, rate = other, r
    return plan


#: a candidate replaces the best so far only when faster by more than this share (so that
#: float rounding never flips the choice between plans of equal speed)
_TIE = 1e-3


def _rated(system: System, model: Model, plan: Plan) -> tuple[float, bool]:
    """(tokens/s of `plan` where it fits in HBM, else -1; whether its micro-batches wait on
    the host)."""
    r = _evaluate(system, model, plan)
    rate = float(r.tokens_per_s) if float(r.feasible) > 0.5 else -1.0
    return rate, float(r.breakdown.host_wait_s) > 0.0


def training_candidates(system: System, model: Model, chips: int, knobs: dict) -> list[dict]:
    """The knob sets the training rule compares besides the base rule's own (module doc):
    one for each other TP of 1, 2, 4 and 8 that divides the heads (and KV heads) and fits in
    the scale-up node (none where TP is given), each left to the base rule for the rest
    (the shallowest pipeline that fits, selective recomputation before full); for an MoE
    model without a given EP, `auto_plan` also tries each of these plans (the base rule's
    too) with the largest EP dividing the experts and the ranks of its TP x DP groups
    (`_widest_ep_plan`: across nodes, as DeepSeek-V3's EP 64 and Qwen3's EP 32 on 8-GPU
    servers), where the base rule keeps EP inside the scale-up domain; a sequence of
    LONG_CONTEXT tokens or more without a given CP, each TP also with CP = 2, 4, ...,
    _CP_MAX while each rank keeps >= _CP_MIN tokens. `knobs` are None-free (as `auto_plan`
    passes them) and kept in each. One evaluation per plan (~7 ms on the NumPy backend,
    GPT-3 175B): at most 8 below LONG_CONTEXT."""
    ranks = int(chips) * _dies(system)
    cp = int(knobs.get("cp", 1))  # a given CP; the candidates' own CP is chosen below
    tps = _tp_choices(system, model, ranks, cp=cp, dp=knobs.get("dp"), pp=knobs.get("pp"))
    base_tp = knobs.get("tp", tps[-1])
    if "tp" in knobs:
        tps = [base_tp]
    seq = int(knobs.get("seq_len", 4096))
    cps = [1]
    if "cp" not in knobs and seq >= LONG_CONTEXT:  # long sequences: split each over cp ranks
        cps += [c for c in (2, 4, 8, 16, 32, _CP_MAX) if seq % c == 0 and seq // c >= _CP_MIN]
    return [
        {**knobs, "tp": t, **({"cp": c} if c > 1 else {})}
        for t in [base_tp, *(t for t in tps if t != base_tp)]
        for c in cps
        if (t != base_tp or c != 1) and ranks % (t * c) == 0
    ]


#: sequences at least this long (tokens) also try context parallelism (CP 2, 4, ..., _CP_MAX
#: while each rank keeps >= _CP_MIN tokens): NeMo's and Megatron-Bridge's long-context recipes
#: split 32K-1M sequences over 2-32 ranks, and a rule without CP put a 1M-token sequence's
#: activations through an 8-stage pipeline instead (NeMo's Llama 2 7B at 1M tokens on 1,024
#: H100, its plan blanked: 85% slow). Shorter sequences (the 8K default) keep CP = 1, so
#: the first answer evaluates at most eight candidates.
LONG_CONTEXT = 32768
_CP_MIN, _CP_MAX = 4096, 64


def _widest_ep_plan(system: System, model: Model, chips: int, knobs: dict, plan: Plan) -> Plan:
    """`plan` (the rule's for `knobs`, its EP inside the scale-up domain) with the largest EP
    dividing the experts and its TP x DP x CP / ETP ranks, at its pipeline depth (unless dp
    is given)."""
    group = _int(plan.tp) * _int(plan.dp) * _int(plan.cp) // max(_int(plan.etp), 1)
    widest = max(d for d in divisors(_int(model.n_experts)) if group % d == 0)
    kept = {"pp": _int(plan.pp)} if "dp" not in knobs else {}
    return _rule_plan(system, model, chips, {**knobs, **kept, "ep": widest})


def _rule_plan(system: System, model: Model, chips: int, knobs: dict) -> Plan:
    """The rule's plan for one set of knobs (None-free): serving by `_auto_inference_plan`;
    training with TP, PP, EP, global batch and recomputation filled in as the module doc's
    base rule says."""
    knobs = dict(knobs)
    knobs.setdefault("seq_len", 4096)
    packages = _check_knobs(chips, system, knobs)
    chips = packages * _dies(system)  # ranks from here on
    if knobs.get("phase", "train") != "train":
        bad = [k for k in _SERVING_FIXED if knobs.get(k, 1) != 1]
        if bad:
            raise ValueError(f"serving plans take tp, dp and ep only; drop {', '.join(bad)}.")
        return _auto_inference_plan(system, model, chips, knobs)
    _check_precision(system, knobs.get("precision", "bf16"))
    tp, pp, dp = knobs.pop("tp", None), knobs.pop("pp", None), knobs.pop("dp", None)
    cp, ep = knobs.pop("cp", 1), knobs.pop("ep", None)
    vpp, microbatch = knobs.setdefault("vpp", 1), knobs.setdefault("microbatch", 1)
    etp, global_batch = knobs.get("etp", 1), knobs.pop("global_batch", None)
    recompute = knobs.pop("recompute", None)
    if recompute is None and float(knobs.get("recompute_fraction", 1.0)) < 1.0:
        recompute = "full"  # a share of layers recomputed in full is full recomputation
    tp = _default_tp(system, model, chips, cp=cp, dp=dp, pp=pp) if tp is None else tp
    rest = chips / (tp * cp)
    if rest != int(rest):
        raise ValueError(
            f"Plan: tp*cp = {tp * cp} must divide {_ranks_text(system, chips)}; adjust tp or cp."
        )
    rest = int(rest)
    candidates = _pp_candidates(model, rest, pp=pp, dp=dp, vpp=vpp)
    if global_batch is not None:  # a given batch: the pipelines whose dp x micro-batch divide it
        units = [rest // d * microbatch for d in candidates]
        candidates = [d for d in candidates if global_batch % (rest // d * microbatch) == 0]
        if not candidates:
            raise BatchError(global_batch, units, advice=_batch_advice(dp))

    def build(pp_, rc):
        dp_ = rest // pp_
        gb = global_batch
        if gb is None:
            gb = default_global_batch(dp_ * microbatch, knobs["seq_len"])
        ep_ = ep if ep is not None else _auto_ep(system, model, tp * dp_ * cp // etp)
        return make_plan(
            **knobs, ep=ep_, tp=tp, pp=pp_, dp=dp_, cp=cp, global_batch=gb, recompute=rc
        )

    chosen = _first_fitting(system, model, build, candidates, recompute)
    if dp is not None and _int(chosen.dp) != dp:
        raise ValueError(
            f"Plan: tp*pp*dp*cp = {tp * _int(chosen.pp) * dp * cp} must equal "
            f"{_ranks_text(system, chips)}; adjust dp (got dp={dp})."
        )
    return check_plan(system, model, chosen, packages)


def _tp_choices(system: System, model: Model, chips: int, *, cp: int, dp, pp) -> list[int]:
    """The TPs a plan may take, ascending: the powers of two <= 8 dividing the heads (and the
    KV heads, or vice versa) inside the scale-up node (node_tier, in ranks) and the ranks
    left by cp (and dp, pp when given); 1 always."""
    heads, kv = _int(model.n_heads), _int(model.n_kv_heads)
    inner = _int(node_tier(system).domain_chips) * _dies(system)
    free = chips // cp if chips % cp == 0 else 1
    if dp is not None and pp is not None:
        free = max(1, free // max(dp * pp, 1))
    return [1] + [
        t for t in (2, 4, 8)
        if t <= inner and heads % t == 0 and (kv % t == 0 or t % kv == 0) and free % t == 0
    ]  # fmt: skip


def _default_tp(system: System, model: Model, chips: int, *, cp: int, dp, pp) -> int:
    """The base rule's TP: the largest of `_tp_choices`."""
    return _tp_choices(system, model, chips, cp=cp, dp=dp, pp=pp)[-1]


def _pp_candidates(model: Model, rest: int, *, pp, dp, vpp: int) -> list[int]:
    """Pipeline degrees to try, shallowest first, for `rest` = chips / (tp cp)."""
    layers = _int(model.n_layers)
    if pp is not None and pp * vpp > layers:  # no TP changes this: not a RuleError
        raise ValueError(
            f"Plan: pp*vpp = {pp * vpp} exceeds n_layers={layers}: every chunk needs a layer; "
            "lower pp or vpp."
        )
    if pp is None and dp is not None:
        pp = rest // dp if rest % dp == 0 else None
        if pp is None:
            raise RuleError(f"Plan: dp={dp} must divide chips/(tp*cp) = {rest}; adjust dp.")
    if pp is not None and rest % pp:
        raise RuleError(
            f"Plan: pp={pp} must divide chips/(tp*cp) = {rest}; adjust pp or the chip count."
        )
    if pp is not None:
        return [pp]
    candidates = [d for d in divisors(rest) if layers % (d * vpp) == 0 and (vpp == 1 or d > 1)]
    if not candidates:
        what = (
            f"divides both n_layers={layers} and chips/(tp*cp)={rest}"
            if vpp == 1
            else f"pp divides chips/(tp*cp)={rest} with pp*vpp (vpp={vpp}) dividing "
            f"n_layers={layers} (the rule splits the layers evenly)"
        )
        raise RuleError(f"Plan: no pipeline degree {what}; set pp and dp explicitly.")
    return candidates


def _first_fitting(system, model, build, candidates, recompute) -> Plan:
    """The first plan `build(pp, recompute)` that fits in HBM, trying every pipeline degree
    with selective recomputation, then with full; else the deepest pipeline (reported as
    infeasible)."""
    recomputes = [recompute] if recompute else ["selective", "full"]
    for rc in recomputes:
        for p in candidates:
            plan = build(p, rc)
            if float(memory(model, plan, _capacity(system)).feasible) > 0.5:
                return plan
    return build(candidates[-1], recomputes[-1])


def scale_up_domain(system: System) -> float:
    """Ranks in the largest domain below the scale-out tier (NVL72: 72, CM384: 384 chips x 2
    dies = 768)."""
    tiers = system.tiers
    return float((tiers[-2] if len(tiers) > 1 else tiers[0]).domain_chips) * _dies(system)


def _auto_ep(system: System, model: Model, ranks: int, *, limit: float | None = None) -> int:
    """Training: the largest divisor of the experts that divides `ranks` and fits in the
    scale-up domain (or `limit`)."""
    experts = _int(model.n_experts)
    if experts == 0:
        return 1
    cap = scale_up_domain(system) if limit is None else limit
    return max(d for d in divisors(experts) if ranks % d == 0 and d <= cap)


def _serving_ep(system: System, model: Model, chips: int) -> int:
    """Serving: the largest divisor of `chips` no larger than max(scale-up domain,
    n_experts): every rank of a large scale-up domain (NVL72: 72, CloudMatrix 384: 384,
    expert slots beyond n_experts being redundant replicas), and across nodes on small ones
    (8-GPU servers: up to one rank per expert, as DeepSeek's deployment)."""
    experts = _int(model.n_experts)
    if experts == 0:
        return 1
    cap = max(scale_up_domain(system), experts)
    return max(d for d in divisors(chips) if d <= cap)


def _serving_tp(system, model, chips, knobs: dict) -> int:
    """TP of a serving plan: 1 for MoE models, else the smallest power of two <= 8 whose
    weights (and KV cache) fit in HBM."""
    heads = _int(model.n_heads)
    tp = 1
    if _int(model.n_experts) > 0:
        return tp
    probe_knobs = {k: knobs[k] for k in ("seq_len", "phase", "microbatch", "context", "precision")
                   if k in knobs}  # fmt: skip
    for t in (1, 2, 4, 8):
        if heads % t or chips % t:
            continue
        tp = t
        probe = make_plan(tp=t, dp=chips // t, **probe_knobs)
        if float(inference_memory(model, probe, _capacity(system)).feasible) > 0.5:
            break
    return tp


def default_mtp_accept(model: Model, phase: str) -> float:
    """The serving rule's MTP acceptance for a plan that leaves speculation out:
    DEFAULT_MTP_ACCEPT for a decode plan of a model with MTP modules, else 0 (none)."""
    return DEFAULT_MTP_ACCEPT if phase == "decode" and _int(model.mtp_layers) > 0 else 0.0


def _auto_inference_plan(system, model, chips: int, knobs: dict) -> Plan:
    knobs = dict(knobs)
    tp, dp, ep = knobs.pop("tp", None), knobs.pop("dp", None), knobs.pop("ep", None)
    microbatch = knobs.pop("microbatch", 1)
    for name in ("pp", "cp", "vpp", "zero", "recompute", "global_batch"):
        knobs.pop(name, None)  # a serving plan has none of them (the batch is dp x microbatch)
    # attention/expert disaggregation: the expert ranks leave chips - expert_ranks ranks
    # for attention, and form the EP group
    er = _int(knobs.get("expert_ranks") or 0)
    if er and _int(model.n_experts) == 0:
        raise ValueError(f"Plan: expert_ranks={er} needs an MoE model ({model.name} is dense).")
    if not 0 <= er < chips:
        raise ValueError(
            f"Plan: expert_ranks={er} must be below {_ranks_text(system, chips)}; reduce it."
        )
    att = chips - er
    if tp is None:
        tp = _serving_tp(system, model, att, {**knobs, "microbatch": microbatch})
    if att % tp:
        plus = f" - expert_ranks {er}" if er else ""
        raise ValueError(
            f"Plan: tp={tp} must divide {_ranks_text(system, chips)}{plus}; adjust tp."
        )
    dp_ = att // tp
    if dp is not None and dp != dp_:
        plus = " + expert_ranks" if er else ""
        raise ValueError(
            f"Plan: tp*pp*dp*cp{plus} = {tp * dp + er} must equal "
            f"{_ranks_text(system, chips)}; adjust dp (got dp={dp})."
        )
    ep_ = ep if ep is not None else (er or _serving_ep(system, model, chips))
    if not any(k in knobs for k in SPECULATION_KNOBS):
        knobs["mtp_accept"] = default_mtp_accept(model, knobs.get("phase", "train"))
    plan = make_plan(
        **knobs, tp=tp, dp=dp_, ep=ep_, microbatch=microbatch, global_batch=dp_ * microbatch,
        recompute="none", zero=0,
    )  # fmt: skip
    return check_plan(system, model, plan, chips // _dies(system))


def _check_precision(system: System, precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; known: {', '.join(PRECISIONS)}.")
    if float(peak_flops(system.chip, precision)) <= 0:
        have = [p for p in PRECISIONS if float(peak_flops(system.chip, p)) > 0]
        raise ValueError(
            f"{system.chip.name} has no {precision} support; use one of: {', '.join(have)}."
        )


def serving_precision(system: System) -> str:
    """The serving default: the chip's 8-bit format (fp8, else int8), else bf16."""
    return next(p for p in ("fp8", "int8", "bf16") if float(peak_flops(system.chip, p)) > 0)


def default_precision(system: System, phase: str = "train") -> str:
    """Each system's own precision when none is given: training bf16 (fp16 on a chip
    without bf16); serving `serving_precision` (fp8, else int8, else bf16)."""
    if phase != "train":
        return serving_precision(system)
    return "bf16" if float(peak_flops(system.chip, "bf16")) > 0 else "fp16"


def check_plan(system: System, model: Model, plan: Plan, chips: int | None = None) -> Plan:
    """Validate a fully specified plan against the system and model: a precision the chip
    has, the chip count, at most the largest cluster the system builds, and the model's
    divisibility rules. Pipeline stages may hold unequal layer counts (Megatron's uneven
    first and last stages); serving EP need not divide the experts (redundant slots)."""
    _check_precision(system, plan.precision)
    if chips is not None:
        n = _int(n_ranks(plan))
        if n != chips * _dies(system):
            plus = " + expert_ranks" if float(plan.expert_ranks) > 0 else ""
            raise ValueError(
                f"Plan: tp*pp*dp*cp{plus} = {n} must equal "
                f"{_ranks_text(system, chips * _dies(system))}; adjust dp (got dp={_int(plan.dp)})."
            )
    return validate_plan(
        plan,
        model,
        max_chips=float(system.tiers[-1].domain_chips),
        dies_per_chip=float(system.chip.dies_per_chip),
        even_layers=False,
        even_experts=plan.phase == "train",
    )


#: a batch evaluated eagerly (not under jit/vmap) has each of up to this many elements
#: checked as one plan; every element's result is checked whatever the size
BATCH_CHECK_MAX = 1024


def check_inputs(system: System, model: Model, plan: Plan) -> None:
    """The checks of a concrete evaluation before it runs: every system and model leaf
    against its declared bounds (a system built with `emu.struct.replace` skips the
    loaders' checks: zero HBM bandwidth made a step faster), then `check_plan`."""
    check(system, system.name)
    check(model, model.name)
    check_plan(system, model, plan)


def checked_evaluate(system: System, model: Model, plan: Plan):
    """`emu.objective.evaluate`, after `check_inputs` when the inputs are concrete (a
    system or model value out of its bounds, or a plan the system cannot run, raises
    ValueError: a degree that does not divide the heads, more chips than the system builds,
    a precision the chip lacks). Under jit, vmap or grad the inputs are tracers and pass
    through unchecked: traced code never raises. A concrete result is also checked
    physically possible (`check_result`). A batch passed eagerly (leaves with batch axes
    that broadcast to one shape, not under vmap) is checked element by element (up to
    BATCH_CHECK_MAX elements; every result always), naming the element."""
    for name, value, cls, how in (
        ("system", system, System, "emu.load_system(NAME)"),
        ("model", model, Model, "emu.load_model(NAME)"),
        ("plan", plan, Plan, "emu.make_plan(...)"),
    ):
        if not isinstance(value, cls):
            raise ValueError(
                f"evaluate(system, model, plan): {name} must be an emu {cls.__name__} (got "
                f"{type(value).__name__}); make one with {how}."
            )
    if has_tracer(system, model, plan):
        return evaluate(system, model, plan)
    if not is_concrete(system, model, plan):
        return _checked_batch(system, model, plan)
    check_inputs(system, model, plan)
    r = evaluate(system, model, plan)
    check_result(
        {
            "system": system.name,
            "model": model.name,
            **{k: float(getattr(r, k)) for k in CHECKED_FIELDS},
        }
    )
    return r


def _checked_batch(system: System, model: Model, plan: Plan):
    """`checked_evaluate` of inputs with batch axes, evaluated eagerly: each element of the
    batch (its leaves broadcast to one shape; up to BATCH_CHECK_MAX elements) checked as one
    configuration, on host copies of the leaves; then every element's result. Batch axes
    that do not broadcast are refused in one line."""
    trees = (system, model, plan)
    shapes = {tuple(jnp.shape(x)) for x in jax.tree_util.tree_leaves(trees) if jnp.ndim(x)}
    try:
        shape = np.broadcast_shapes(*shapes)
    except ValueError:
        raise ValueError(
            f"the batched fields have shapes {sorted(shapes)}, which do not broadcast to one "
            "batch; give every batched field the same shape (or one that broadcasts)."
        ) from None
    n = math.prod(shape)
    if n <= BATCH_CHECK_MAX:
        host = jax.tree_util.tree_map(  # one transfer, then cheap slices
            lambda x: np.broadcast_to(np.asarray(x), shape).reshape(n) if np.ndim(x) else x,
            trees,
        )
        for i in range(n):
            one = jax.tree_util.tree_map(lambda x, i=i: x[i] if np.ndim(x) else x, host)
            try:
                check_inputs(*one)
            except ValueError as e:
                at = np.unravel_index(i, shape)
                where = i if len(shape) == 1 else tuple(int(j) for j in at)
                raise ValueError(f"element {where} of the batch: {e}") from None
    r = evaluate(system, model, plan)
    check_result(
        {"system": system.name, "model": model.name, **{k: getattr(r, k) for k in CHECKED_FIELDS}}
    )  # each element's result; the first impossible one is named
    return r


_evaluate = jax.jit(evaluate)
_max_batch = jax.jit(max_batch_under_slo)  # module level: compiled once per structure


def _check_slo(slo_s) -> None:
    x = real_scalar(slo_s)
    if not (x is not None and x > 0 and math.isfinite(x)):
        raise ValueError(
            f"the SLO must be a positive number of seconds, e.g. 0.05 (got {slo_s!r})."
        )


def largest_batch(system: System, model: Model, plan: Plan, slo_s: float) -> int:
    """The largest integer batch per DP rank meeting the phase's latency SLO (exactly
    re-evaluated) and fitting in HBM, or ValueError if even one sequence misses either."""

    if plan.phase == "train":
        raise ValueError("largest_batch sizes a prefill or decode plan; got a train plan.")
    _check_slo(slo_s)
    check_plan(system, model, plan)

    def ev(k):
        return _evaluate(system, model, replace(plan, microbatch=jnp.float32(k)))

    # batch 1 must fit in HBM (weights + KV cache) before any SLO question
    one = ev(1)
    phase = "decode" if plan.phase == "decode" else "prefill"
    moe = float(model.n_experts) > 0
    # the degrees that could still grow on these ranks (tp * dp of them; EP up to all)
    can = (["ep"] if moe and _int(plan.ep) < _int(plan.tp * plan.dp) else []) + (
        ["tp"] if _int(plan.dp) > 1 else []
    )
    widen = f"raise {' or '.join(can)}" if can else ""
    if float(one.feasible) < 0.5:
        used, cap = float(one.memory.total_bytes), float(one.memory.capacity_bytes)
        er = _int(plan.expert_ranks)
        if er and used <= cap:  # disaggregation: the expert ranks cannot hold their experts
            need = cap + float(one.memory.overshoot_bytes)
            raise ServingFitError(
                "experts", phase,
                f"the {er} expert ranks cannot hold their experts on {system.name} "
                f"({gb_of(need, cap)} each)",
                "raise expert_ranks",
            )  # fmt: skip
        weights = float(one.memory.weights_bytes)
        moves = ["use an 8-bit precision"] if plan.precision in ("bf16", "fp16") else []
        moves += [widen] if widen else []
        moves += ["add chips"] + (["shorten the context"] if weights < cap else [])
        raise ServingFitError(
            "memory", phase,
            f"even batch 1 does not fit in HBM on {system.name} ({gb_of(used, cap)} "
            f"per {'die' if _dies(system) > 1 else 'chip'}, {_gb(weights)} of it weights, at "
            f"tp={_int(plan.tp)}{f', ep={_int(plan.ep)}' if moe else ''})",
            either(moves), can, weights_fit=weights < cap,
        )  # fmt: skip
    b, _, ok = _max_batch(system, model, plan, jnp.float32(slo_s))
    if float(ok) < 0.5:
        what = "TPOT" if phase == "decode" else "TTFT"
        lat = float(getattr(one, "tpot_s" if phase == "decode" else "ttft_s"))
        raise ServingFitError(
            "slo", phase,
            f"no batch meets the {what} SLO of {slo_s:g} s on {system.name}: even batch 1 "
            f"takes {lat:.3g} s",
            f"relax the SLO, add chips, {widen + ', ' if widen else ''}or shorten "
            f"the {'context' if phase == 'decode' else 'prompt'}", can,
        )  # fmt: skip
    n = max(1, int(float(b)))
    lat = "tpot_s" if plan.phase == "decode" else "ttft_s"

    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if float(ev(mid).feasible) > 0.5 else (lo, mid - 1)
    n = lo
    while n > 1:  # exact re-evaluation at the integer batch
        if float(getattr(ev(n), lat)) <= slo_s:
            break
        n -= 1
    return n


def with_largest_batch(
    system: System, model: Model, plan: Plan, slo_s: float, *, widen_tp: bool = False
) -> Plan:
    """`plan` (prefill or decode) with the batch per DP rank of `largest_batch`. With
    `widen_tp` (TP left to the rule), when even batch 1 misses the SLO at the plan's TP, the
    smallest TP in 2, 4, 8 (dp shrinking to keep the ranks) whose batch 1 meets it (prefill:
    one long prompt split over a few ranks, as prefill deployments do; decode likewise)."""
    try:  # largest_batch checks the SLO and the plan
        n = largest_batch(system, model, plan, slo_s)
    except ServingFitError as e:
        if not widen_tp or e.reason != "slo":
            raise
        tp, ranks = _int(plan.tp), _int(plan.tp * plan.dp)
        for t in (t for t in (2, 4, 8) if t > tp and ranks % t == 0):
            wider = replace(plan, tp=jnp.float32(t), dp=jnp.float32(ranks // t))
            try:  # a wider plan the model cannot take fails largest_batch's check_plan
                return with_largest_batch(system, model, wider, slo_s)
            except ValueError:
                continue
        raise
    return replace(plan, microbatch=jnp.float32(n), global_batch=plan.dp * n)


def _gb(x: float) -> str:
    return f"{x / 1e9:.0f} GB" if x >= 1e10 else f"{x / 1e9:.3g} GB"
