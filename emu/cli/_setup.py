"""Flags -> the (system, model, plan) of `run`, `compare` and `sensitivity`, with the notes a
user should see about how they were chosen: which catalog name a spelling resolved to, the
precision picked for each system, the `--set` overrides applied, an uncalibrated chip family
or link type, and a plan from a quick search (`--plan best`)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from emu import catalog, policy
from emu.advice import either
from emu.cli import _cost as cost_flags
from emu.cli._parser import FLAG_DEFAULTS, MAX_INTEGER_KNOB, SLO_DEFAULTS, CliError
from emu.overrides import apply_overrides, parse_override, split_overrides
from emu.plan import KNOBS, KV_PRECISIONS, MOE_ONLY_KNOBS, Plan
from emu.topology import System
from emu.workload import Model


@dataclasses.dataclass
class Setup:
    """One configuration to evaluate and what the user should be told about it."""

    system: System
    model: Model
    plan: Plan
    slo_s: float | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def overrides(args) -> tuple[dict, dict, dict]:
    """(system, model, plan) overrides of the --set flags (values may carry units)."""
    parsed = {}
    for item in args.set:
        try:
            path, value = parse_override(item)
        except ValueError as e:
            raise CliError(f"--set {cost_flags.plain_number_message(item, e) or e}") from None
        if path in parsed:  # the last one won, and the note listed both as applied
            raise CliError(f"--set {path} is given twice; give it once.")
        parsed[path] = value
    if hasattr(args, "region"):  # cost.* and region.* go to the cost flags (emu.cli._cost)
        parsed = {p: v for p, v in parsed.items() if not cost_flags.is_cost_path(p)}
    return split_overrides(parsed)


def set_note(args) -> list[str]:
    """'--set applied: ...' (what the user changed, as typed), or nothing; and what a
    changed TDP means (--set or --grid chip.tdp_w)."""
    given = list(getattr(args, "set", None) or [])
    notes = [f"--set applied: {', '.join(given)}"] if given else []
    paths = [item.partition("=")[0].strip() for item in given + list(getattr(args, "grid", []))]
    if "chip.tdp_w" in paths:  # a lower TDP read as a power cap gave free efficiency
        notes.append(
            "chip.tdp_w sets the power drawn at the same clocks (a more or less efficient "
            "chip): emu models no power capping, so a chip held below its TDP, which would "
            "also run slower, is not what this computes"
        )
    return notes


def resolved(name: str, kind: str, notes: list[str]) -> str:
    """The catalog name `name` spells (a note when it differs), or `name` if it is a path."""
    s = str(name)
    if s.endswith((".toml", ".json")) or "/" in s:
        return s
    if kind == "models" and catalog.path_is(Path(s) / "config.json", "is_file"):
        # a Hugging Face folder in the working directory (`--model hf`): it wins over a
        # catalog model of the same name, and says so
        notes.append(f"model '{s}' is the Hugging Face folder ./{s} (its config.json)")
        return s
    canonical = catalog.resolve_name(s, kind)
    if canonical != s:
        notes.append(f"{kind[:-1]} '{s}' is the catalog's '{canonical}'")
    return canonical


def load_model(args, notes: list[str], model_o: dict) -> Model:
    """The --model with its --set model.* overrides, refusing what it would ignore: an
    expert-only field or flag on a dense model, --mtp-accept on a model without MTP."""
    try:
        model = catalog.load_model(resolved(args.model, "models", notes), model_o, prefix="model.")
    except catalog.DenseModelError as e:
        raise CliError(
            f"--set model.{e.field} applies to MoE models' experts ({e.model} is dense: "
            "n_experts = 0); drop it, or make the model MoE with --set model.n_experts=N."
        ) from None
    refuse_moe_flags(args, model)
    refuse_mtp_flag(args, model)
    return model


def refuse_moe_flags(args, model: Model) -> None:
    """An expert-only flag on a dense model did nothing and said nothing (`--ep` and
    `--expert-ranks` are refused by the plan rules, `--set model.top_k` and the other
    expert-only fields by `load_model`): refuse it in one line."""
    if float(model.n_experts) > 0:
        return
    given = [
        flag
        for name, flag, idle in ((k.name, k.flag, k.default) for k in KNOBS)
        if name in MOE_ONLY_KNOBS  # their defaults do nothing on any model
        and getattr(args, name, None) is not None
        and getattr(args, name) != idle
    ]
    if given:
        raise CliError(
            f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to MoE models' "
            f"experts ({model.name} is dense); drop {'it' if len(given) == 1 else 'them'}."
        )


def refuse_mtp_flag(args, model: Model) -> None:
    """--mtp-accept on a model without MTP modules: the plan's own error named the plan
    fields draft_tokens and accept_len, which `serve` has no flags for."""
    if not getattr(args, "mtp_accept", None) or float(model.mtp_layers) > 0:
        return  # not given, or 0 (no speculation: valid on any model)
    other = (
        "for another draft model use --draft-tokens K --accept-len A"
        if hasattr(args, "draft_tokens") and args.command not in ("search", "sweep")
        else f"{args.command} models no other draft model (emu run --phase decode "
        "--draft-tokens K --accept-len A does)"
    )
    raise CliError(f"--mtp-accept needs a model with MTP modules ({model.name} has none); {other}.")


def slo(args, phase: str) -> float | None:
    """The latency SLO of `phase` (decode: --tpot-slo, prefill: --ttft-slo; their defaults
    when not given); a SLO flag the phase would ignore is refused."""
    own = {"decode": "tpot_slo", "prefill": "ttft_slo"}.get(phase)
    for name in SLO_DEFAULTS:
        if getattr(args, name, None) is not None and name != own:
            flag = "--" + name.replace("_", "-")
            use = f"; --{own.replace('_', '-')} is the {phase} SLO" if own else ""
            raise CliError(f"{flag} does not apply to {phase} plans; drop it{use}.")
    if own is None:
        return None
    value = getattr(args, own, None)
    return SLO_DEFAULTS[own] if value is None else value


#: SLOs at or above these many seconds read like milliseconds given as seconds (a 50 s TPOT
#: is one token per 50 s): said in a note, not refused (an offline job may mean them)
SLO_LOOKS_LIKE_MS = {"tpot_slo": 1.0, "ttft_slo": 100.0}


def slo_notes(args) -> list[str]:
    """A note for each SLO flag given at a value that looks like milliseconds."""
    notes = []
    for name, limit in SLO_LOOKS_LIKE_MS.items():
        value = getattr(args, name, None)  # `seconds`: a float that knows its unit was typed
        if value is not None and value >= limit and not getattr(value, "unit_typed", False):
            notes.append(
                f"--{name.replace('_', '-')} {value:g} is in seconds ({value:g} s); for "
                f"{value:g} ms give {value:g}ms or {value / 1000:g}"
            )
    return notes


def plan_knobs(args) -> dict:
    """The plan knobs given on the command line, by name (the rest is left to the plan rule
    and the declared defaults); a flag the plan's phase would ignore is refused."""
    given = {k.name: getattr(args, k.name) for k in KNOBS if getattr(args, k.name) is not None}
    phase = given.get("phase", "train")
    if phase == "train" and args.batch is not None:
        raise CliError("--batch is the serving batch per DP rank; in training use --microbatch.")
    for k in KNOBS:
        if k.name not in given or k.kind == "static" or k.name in FLAG_DEFAULTS:
            continue
        if phase != "train" and k.name in ("microbatch", "global_batch"):
            raise CliError(f"a {phase} plan's batch is --batch (per DP rank); drop {k.flag}.")
        if not k.applies_to(phase):
            raise CliError(
                f"{k.flag} applies to {'/'.join(k.phases)} plans only; drop it (--phase {phase})."
            )
    if phase != "train" and args.batch is not None:
        given["microbatch"] = args.batch
    return given


def _precision(args, system: System, phase: str, notes: list[str]) -> str:
    if args.precision is not None:
        return args.precision
    p = policy.default_precision(system, phase)
    why = "training default" if phase == "train" else "the chip's serving format"
    notes.append(f"precision on {system.name}: {p} ({why}; --precision to change)")
    return p


def mtp_note(model: Model, accept: float) -> str:
    """The note of a decode plan the serving rule gave MTP (`policy.DEFAULT_MTP_ACCEPT`)."""
    return (
        f"MTP on: {model.name} decodes with its MTP module, one draft token accepted "
        f"{accept:.0%} of the time (the rate CloudMatrix-Infer assumes); --mtp-accept to "
        "change, 0 to turn it off"
    )


def setup(args, system_name: str) -> Setup:
    """The configuration of the workload flags of run/compare/sensitivity on one system."""
    notes: list[str] = []
    sys_o, model_o, plan_o = overrides(args)
    for name, value in plan_o.items():  # the flags' float32 cap (`--global-batch 1e30`)
        k = next((k for k in KNOBS if k.name == name), None)
        big = isinstance(value, int | float) and not isinstance(value, bool)
        if k is not None and k.integer and big and value > MAX_INTEGER_KNOB:
            raise CliError(
                f"--set plan.{name}: must be {k.describe()} up to {MAX_INTEGER_KNOB:,} (got "
                f"{value:g}): emu computes in float32, which holds integers exactly only up to "
                "2^24."
            )
    knobs = plan_knobs(args)
    typed = {k: v for k, v in knobs.items() if FLAG_DEFAULTS.get(k, object()) != v}
    both = [p for p in plan_o if p.removeprefix("plan.") in typed]  # (a flag's default: not typed)
    if both:
        name = both[0].removeprefix("plan.")
        flag = next(k.flag for k in KNOBS if k.name == name)
        if name == "microbatch" and getattr(args, "batch", None) is not None:
            flag = "--batch"
        raise CliError(f"--set plan.{name} and {flag} both set the plan's {name}; drop one.")
    phase = knobs.get("phase", "train")
    batch_set = [k for k in ("microbatch", "global_batch") if k in plan_o]
    if phase != "train" and batch_set:  # the SLO rule or --batch sets it (and the global batch)
        raise CliError(
            f"a {phase} plan's batch is --batch (per DP rank); drop --set plan.{batch_set[0]}."
        )
    slo_s = slo(args, phase)
    notes += slo_notes(args)
    system = catalog.load_system(resolved(system_name, "systems", notes), sys_o)
    system = cost_flags.with_region(args, system)
    model = load_model(args, notes, model_o)
    knobs["precision"] = _precision(args, system, phase, notes)
    missing = catalog.uncalibrated(system)
    if missing:
        notes.append(
            f"uncalibrated: {', '.join(missing)} (parameters declared in the file, not fitted "
            "to measurements); expect larger errors"
        )
    chips = args.chips if args.chips is not None else int(float(system.n_chips))
    share = plan_o.get("recompute_fraction")
    if isinstance(share, int | float) and share < 1.0:
        if "recompute" not in knobs and "recompute" not in plan_o:
            knobs["recompute"] = "full"  # a share of layers recomputed in full (as the flag)
    for name in _RULE_SET["train" if phase == "train" else "serve"]:  # the rule (or --plan
        value = plan_o.get(name)  # best's search) plans at these, as at the flags' (a bad
        if _rule_knob_value(name, value):  # value is left to apply_overrides, naming --set)
            knobs[name] = value if name == "recompute_fraction" else int(value)
    # the serving rule's MTP (policy.default_mtp_accept) unless speculation is set (--set
    # too: the rule's MTP and a --set draft would be "both"); --plan best searches with it
    spec = [k for k in policy.SPECULATION_KNOBS if k in knobs or k in plan_o]
    if "mtp_accept" not in knobs:
        knobs["mtp_accept"] = 0.0 if spec else policy.default_mtp_accept(model, phase)
    if getattr(args, "plan", "rule") == "best":
        from emu.cli._search_commands import quick_search

        plan, text = quick_search(args, system, model, chips, knobs, slo_s)
        notes.append(text)
    else:
        plan = policy.auto_plan(system, model, chips, **knobs)
    if plan_o:
        if "mtp_accept" in plan_o and not {"accept_len", "draft_tokens"} & set(plan_o):
            try:  # accept_len derives from mtp_accept (make_plan); --set replaces leaves only
                plan_o = {**plan_o, "accept_len": 1.0 + float(plan_o["mtp_accept"])}
            except (TypeError, ValueError):
                pass  # not a number: apply_overrides says so, naming the path
        plan = apply_overrides(plan, plan_o, "Plan", prefix="plan.")
        try:  # the chips asked for, or the system's
            policy.check_plan(system, model, plan, chips)
        except ValueError as e:  # a --set the rule did not plan for (not a degree it takes)
            sets = ", ".join(f"plan.{k}" for k in plan_o if k not in knobs)
            if not sets:
                raise
            msg = str(e).rstrip(".")
            raise CliError(f"{msg} (after --set {sets} on the plan the rule chose).") from None
    if plan.phase != "train" and args.batch is None:
        widen = knobs.get("tp") is None and not plan_o and getattr(args, "plan", "rule") != "best"
        try:
            chosen = policy.with_largest_batch(system, model, plan, slo_s, widen_tp=widen)
        except policy.ServingFitError as e:  # its moves in run's flags
            fixes = serving_fixes(
                e, plan, chips=f"--chips (now {chips})",
                slo=f"--{'tpot' if e.phase == 'decode' else 'ttft'}-slo (now {slo_s:g} s)",
                shorter="--context" if e.phase == "decode" else "--seq-len",
                expert_ranks="--expert-ranks",
                degrees=" or ".join(f"--{d}" for d in e.degrees),
            )  # fmt: skip
            raise (SloMissed if e.reason == "slo" else CliError)(f"{e.detail}; {fixes}.") from None
        if int(float(chosen.tp)) != int(float(plan.tp)):
            notes.append(
                f"tp={int(float(chosen.tp))}: at tp={int(float(plan.tp))} even batch 1 misses "
                f"the SLO of {slo_s:g} s on {system.name} (--tp to choose)"
            )
        plan = chosen
    if not spec and float(plan.mtp_accept) > 0:
        notes.append(mtp_note(model, float(plan.mtp_accept)))
    return Setup(system, model, plan, slo_s, notes + idle_flag_notes(args, plan))


def idle_flag_notes(args, plan: Plan) -> list[str]:
    """A note for each flag given that the chosen plan leaves without effect: --no-sp at
    tp 1 (sequence parallelism splits across the TP group), --algorithm where the plan has
    no all-reduce or reduce-scatter to run (tp 1 in serving; tp, dp and cp 1 in training)."""
    tp = int(float(plan.tp))
    notes = []
    if getattr(args, "sp", None) is False and tp == 1:
        notes.append("--no-sp has no effect at tp=1 (sequence parallelism splits across TP)")
    degrees = tp if plan.phase != "train" else tp * int(float(plan.dp * plan.cp))
    algorithm = next(k for k in KNOBS if k.name == "algorithm")
    if getattr(args, "algorithm", None) not in (None, algorithm.default) and degrees == 1:
        what = "tp=1 serving" if plan.phase != "train" else "tp=dp=cp=1"
        notes.append(f"--algorithm has no effect: a {what} plan runs no all-reduce")
    return notes


class SloMissed(CliError):
    """No serving batch meets the SLO on the system (`compare` shows such a system as an
    infeasible column at batch 1 instead of dropping the others' results)."""


def serving_fixes(
    e, plan, *, chips: str, slo: str, shorter: str, expert_ranks: str, degrees: str = ""
) -> str:
    """The moves, in a command's own flags, that would let the serving plan of a
    `policy.ServingFitError` hold a batch: `chips`, `slo`, `shorter` and `expert_ranks`
    name its flags (with their values), `degrees` the degrees it could raise (run: "--ep or
    --tp"; serve has none)."""
    if e.reason == "experts":
        return f"raise {expert_ranks}"
    moves = [f"a looser {slo}"] if e.reason == "slo" else []
    kv = e.reason != "memory" or e.weights_fit  # a shorter context / smaller KV cache helps
    if e.reason == "memory":
        moves += ["an 8-bit --precision"] if plan.precision in ("bf16", "fp16") else []
        bf16_kv = float(plan.kv_precision) == KV_PRECISIONS["bf16"]
        moves += ["--kv-precision fp8"] if kv and e.phase == "decode" and bf16_kv else []
    moves += [f"a higher {degrees}"] if degrees else []
    moves += [f"more {chips}"] + ([f"a shorter {shorter}"] if kv else [])
    return "try " + either(moves)


#: `--set plan.<name>` values the plan rule (and `--plan best`'s search, as fixed knobs) takes
#: as it takes the flags' (training; serving):
#: a degree set after the rule had planned the rest used to change the chip count silently
#: (`--set plan.tp=4` on one NVL72 ran 144 GPUs: tp 4 x the rule's pp 4 x dp 9), and the
#: rule's batch, pipeline and interleaving were chosen for other values
_RULE_SET = {
    "train": (
        "tp", "pp", "dp", "cp", "ep", "etp", "seq_len", "global_batch", "microbatch", "vpp",
        "recompute_fraction",
    ),
    "serve": ("tp", "dp", "ep", "expert_ranks", "attention_groups", "seq_len", "context"),
}  # fmt: skip


def _rule_knob_value(name: str, value) -> bool:
    """Whether a `--set plan.<name>` value is one the plan rule can take as a knob: a
    number in range (a positive whole degree, batch, length, micro-batch or VPP, a
    recomputed share in (0, 1]); any other is left to apply_overrides, whose error names
    --set."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    x = float(value)
    if not math.isfinite(x) or x <= 0:
        return False
    return x <= 1.0 if name == "recompute_fraction" else x.is_integer()
