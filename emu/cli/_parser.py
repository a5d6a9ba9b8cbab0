"""The flags of every `emu` command (argparse). The plan flags (`--tp`, `--zero`, `--no-sp`,
...) are derived from the knob declarations of emu.plan (spelling, type, bounds, choices,
help), the `--objective` and `--kind` choices from the library's registries; flag values are
checked here, everything else by the library."""

from __future__ import annotations

import argparse
import math
import sys

from emu._argparse import repeated_flag
from emu.cli._cost import add_cost_args
from emu.cli._types import in_range
from emu.plan import KNOBS, KV_PRECISIONS
from emu.search import BUDGET, OBJECTIVES
from emu.struct import check_value
from emu.units import PRECISIONS
from emu.validation import KINDS

DEFAULT_COMPARE = ["cloudmatrix384", "gb200_nvl72"]
DEFAULT_MODEL = "llama3_70b"
#: --starts and --steps of `emu search`: the library's bounds (a typo must not run for days)
MAX_STARTS, MAX_STEPS = BUDGET["starts"][1], BUDGET["steps"][1]

PLAN_RULE = (
    "Degrees left out are chosen by a stated rule: training takes the plan with the most "
    "tokens/s that fits, of a few candidates, one per TP (1, 2, 4, 8 dividing the heads "
    "inside the innermost scale-up tier), each with CP = 1, PP = smallest divisor of the "
    "layers that fits in HBM (selective recompute, then full), DP = the rest and, for MoE "
    "models, EP inside the scale-up domain or as wide as the ranks allow; sequences of 32K "
    "tokens or more also try CP 2, 4, 8, ...; the fastest is then tried at micro-batch 2, "
    "4 and 8 where it waits on the host and, with a pipeline, interleaved 2 and 4 ways. "
    "Serving "
    "(--phase prefill|decode): TP = 1 and EP = all ranks up to max(scale-up domain, "
    "experts) for MoE models; the batch per DP rank is the largest meeting "
    "--ttft-slo/--tpot-slo; a model with MTP modules decodes with one MTP draft accepted "
    "70% of the time unless --mtp-accept (0: none), --draft-tokens or --accept-len is given. "
    "Precision "
    "left out: bf16 in training, the chip's fp8 (else int8) in serving. --plan best replaces "
    "the rule by a quick search."
)


class CliError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


#: words other tools use for emu's flags
_FLAG_ALIASES = {
    "--gpus": "--chips", "--npus": "--chips", "--num-gpus": "--chips", "--n-gpus": "--chips",
    "--num-chips": "--chips", "--devices": "--chips", "--world-size": "--chips",
    "--batch-size": "--batch", "--micro-batch": "--microbatch", "--micro-batch-size":
    "--microbatch", "--global-batch-size": "--global-batch", "--seq-length": "--seq-len",
    "--sequence-length": "--seq-len", "--tensor-parallel": "--tp", "--pipeline-parallel": "--pp",
    "--expert-parallel": "--ep", "--dtype": "--precision", "--tp-size": "--tp",
    "--tensor-parallel-size": "--tp", "--pipeline-parallel-size": "--pp",
    "--expert-parallel-size": "--ep",
}  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors, no abbreviated flags (`--system` is not `--systems`)
    and a flag that takes one value refused when given twice (the last would silently win:
    `--tp 2 --tp 4`, `--model a --model b`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, exit 2, no usage dump
        if message.startswith("unrecognized arguments:"):
            flag = next((w for w in message.split()[2:] if w.startswith("--")), None)
            hint = self._flag_hint(flag) if flag else ""
            if hint:
                message += f"; did you mean {hint}?" if " " not in hint else f"; {hint}"
        raise CliError(f"{message} (see `{self.prog} --help`)")

    def _flag_hint(self, flag: str) -> str:
        """What an unrecognised `flag` likely meant, among the visible flags of the command
        given ("--gpus" for "--chips", "--tpot_slo" for "--tpot-slo", a near spelling), or
        that it belongs after the command or to other commands; "" when nothing is close."""
        import difflib

        subs = {
            cmd: sub
            for action in self._actions
            for cmd, sub in (getattr(action, "choices", None) or {}).items()
            if isinstance(sub, argparse.ArgumentParser)
        }
        argv = getattr(self, "_argv", [])
        cmd = next((w for w in argv if w in subs), None)
        name = flag.split("=", 1)[0]

        def visible(parser):
            return {
                f
                for a in parser._actions
                if a.help is not argparse.SUPPRESS
                for f in a.option_strings
                if f.startswith("--")
            }

        own = visible(subs[cmd]) if cmd else visible(self)
        if cmd and name in own:  # given before the command: "--json list"
            return f"{name} is a flag of emu {cmd}: give it after the command"
        owners = [c for c, sub in subs.items() if name in visible(sub)]
        if owners:  # a flag of other commands
            cmds = " and ".join(f"emu {c}" for c in owners)
            return f"{name} is a flag of {cmds}, not of {'emu ' + cmd if cmd else 'emu'}"
        spelled = name.lower().replace("_", "-")
        for guess in (_FLAG_ALIASES.get(spelled), spelled):
            if guess in own:
                return guess
        longer = sorted(f for f in own if f.startswith(spelled) and len(spelled) >= 5)
        if len(longer) == 1:  # "--tpot" for "--tpot-slo"
            return longer[0]
        near = difflib.get_close_matches(spelled, sorted(own), 1, cutoff=0.75)
        return near[0] if near else ""

    def parse_known_args(self, args=None, namespace=None):
        self._argv = sys.argv[1:] if args is None else list(args)  # for `_flag_hint`
        twice = repeated_flag(self, self._argv)
        if twice:
            raise CliError(twice)
        return super().parse_known_args(args, namespace)


#: the largest integer an integer flag takes, however spelled (float64 holds every integer
#: up to it; plan knobs stop at MAX_INTEGER_KNOB)
MAX_INTEGER_FLAG = 2**53


def as_int(text: str, cap: int | None = MAX_INTEGER_FLAG) -> int | None:
    """`text` as an integer: an integer literal, or an integer spelled as a float (1e3,
    1024.0), as the plan knobs' flags take it; None for a fraction, inf, nan, anything else,
    or a size above `cap`."""
    try:
        v = int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            return None
        v = int(f) if math.isfinite(f) and f == int(f) else None
    return v if v is not None and (cap is None or abs(v) <= cap) else None


def _int_at_least(text: str, lo: int, words: str) -> int:
    v = as_int(text)
    if v is None or v < lo:
        big = v is None and as_int(text, cap=None) is not None
        cap = f" up to 2^53 = {MAX_INTEGER_FLAG:,}" if big else ""
        raise argparse.ArgumentTypeError(f"must be a {words} integer{cap} (got {text!r})")
    return v


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1, "positive")


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "non-negative")


class Seconds(float):
    """A time in seconds parsed from the command line; `unit_typed`: the text named its unit
    ("50ms", "2s"), so a bare "50" (seconds, perhaps meant as ms) can be told apart."""

    unit_typed = False


def seconds(text: str) -> float:
    """argparse type: a positive time in seconds, with an optional unit (50ms, 2s, 500us)."""
    from emu.overrides import parse_value

    try:
        v = parse_value(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if getattr(v, "dim", "s") != "s" or not 0 < v <= 3600:
        raise argparse.ArgumentTypeError(f"must be a time in (0, 3600] s, e.g. 0.05 (got {text!r})")
    out = Seconds(v)
    out.unit_typed = hasattr(v, "dim")
    return out


def watts(text: str) -> float:
    """argparse type: a positive power in watts, with an optional unit (60kW, 1MW)."""
    from emu.overrides import parse_value

    try:
        v = parse_value(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if getattr(v, "dim", "W") != "W" or not 0 < v < 1e12:
        raise argparse.ArgumentTypeError(
            f"the power cap must be a positive number of watts below 1e12, e.g. 60e3 or 60kW "
            f"(got {text!r})"
        )
    return float(v)


def _bounded_int(lo: int, hi: int):
    def parse(text: str) -> int:
        v = as_int(text)
        if v is None or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in [{lo}, {hi}] (got {text!r})")
        return v

    return parse


def _common(p: argparse.ArgumentParser, *, set_help: bool = True) -> None:
    """--set and --json. `set_help` False hides --set from the help of a command that
    refuses it in its own words (calibrate fits the fields --set would change)."""
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="PATH=VALUE",
        help="override a field by dotted path (repeatable)" if set_help else argparse.SUPPRESS,
    )
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


#: plan knobs a search Problem takes as given (it varies the searchable ones)
PROBLEM_KNOBS = (
    "seq_len", "global_batch", "precision", "phase", "context", "a2a_overlap",
    "moe_imbalance", "mtp_accept", "cache_hit", "kv_precision",
)  # fmt: skip
#: plan knobs a search neither varies nor takes as given: kept at their defaults (a flag
#: setting one is refused); dp is derived from --chips besides
SEARCH_FIXED_KNOBS = frozenset(
    k.name for k in KNOBS if not k.searchable and k.name not in PROBLEM_KNOBS
)


#: flag defaults that differ from the knob's declared default (`emu run` models an 8k step)
FLAG_DEFAULTS = {"seq_len": 8192}
#: the latency SLO of each serving phase when its flag is not given (seconds)
SLO_DEFAULTS = {"tpot_slo": 0.05, "ttft_slo": 2.0}


#: the largest integer a plan knob flag takes: float32 holds every integer up to 2^24 and
#: no odd one beyond (`--microbatch 1e30` was refused as "not a positive integer")
MAX_INTEGER_KNOB = 2**24


def _knob_type(k):
    """argparse type of a numeric knob: its declared rule (bounds, integrality)."""

    def parse(text: str):
        try:
            v = float(text)
            check_value(v, k, k.name)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {k.describe()} (got {text!r})") from None
        if k.integer and v > MAX_INTEGER_KNOB:
            raise argparse.ArgumentTypeError(
                f"must be {k.describe()} up to {MAX_INTEGER_KNOB:,} (got {text!r}): emu computes "
                "in float32, which holds integers exactly only up to 2^24"
            )
        return int(v) if k.integer else v

    parse.__name__ = k.kind  # argparse names the type in some messages
    return parse


def _knob_flag(g, k, *, hidden: bool = False) -> None:
    """The flag of one plan knob, from its declaration (emu.plan.KNOBS): spelling, type,
    choices, help. Unset flags are None (the library's default or rule applies), except
    static knobs and FLAG_DEFAULTS. `hidden`: parsed (a command can refuse it with its own
    message) but left out of --help."""
    hlp = k.help + (f" ({k.unit})" if k.unit else "")
    if hidden:
        g = _Hidden(g)
    if k.name == "precision":  # left out: each system's own (emu.policy.default_precision)
        hlp += " (default: bf16 in training; serving: the chip's fp8, else int8)"
        g.add_argument(k.flag, default=None, choices=list(k.choices), help=hlp)
    elif k.kind == "static":
        g.add_argument(k.flag, default=k.default, choices=list(k.choices), help=hlp)
    elif k.kind == "bool":
        action = "store_false" if k.default is True else "store_true"
        hlp = f"turn off: {hlp}" if k.default is True else hlp
        g.add_argument(k.flag, dest=k.name, action=action, default=None, help=hlp)
    elif k.kind == "choice":
        g.add_argument(k.flag, choices=list(k.names), help=hlp)
    else:
        default = FLAG_DEFAULTS.get(k.name)
        if default is not None:
            hlp += f" (default {default})"
        g.add_argument(k.flag, type=_knob_type(k), default=default, metavar="N", help=hlp)


class _Hidden:
    """An argument group whose arguments are parsed but not listed in --help."""

    def __init__(self, group):
        self._group = group

    def add_argument(self, *args, **kwargs):
        kwargs["help"] = argparse.SUPPRESS
        return self._group.add_argument(*args, **kwargs)


def _knob_args(p: argparse.ArgumentParser, hide=frozenset()) -> None:
    g = p.add_argument_group("plan (every knob of emu.plan.KNOBS; left out: the plan rule)")
    for k in KNOBS:
        _knob_flag(g, k, hidden=k.name in hide)


def _serving_args(p: argparse.ArgumentParser) -> None:
    inf = p.add_argument_group("serving")
    inf.add_argument(
        "--batch",
        type=positive_int,
        help="sequences per DP-attention rank (default: the largest meeting the SLO)",
    )
    inf.add_argument(
        "--tpot-slo",
        type=seconds,
        help="decode only: time-per-output-token SLO in seconds (default 0.05; 50ms works)",
    )
    inf.add_argument(
        "--ttft-slo",
        type=seconds,
        help="prefill only: time-to-first-token SLO in seconds (default 2.0; 2s works)",
    )


def _workload_args(
    p: argparse.ArgumentParser, *, system: bool = True, chips_list: bool = False, hide=frozenset()
) -> None:
    if system:
        p.add_argument("--system", default="gb200_nvl72", help="catalog name or TOML path")
    p.add_argument("--model", default=DEFAULT_MODEL, help="catalog name or TOML path")
    if chips_list:
        p.add_argument(
            "--chips",
            help="chips used, or comma-separated candidates (the chip count becomes a knob, "
            "e.g. under --power-cap); default: one system unit",
        )
    else:
        p.add_argument("--chips", type=positive_int, help="chips used (default: one system unit)")
    _knob_args(p, hide)
    _serving_args(p)
    add_cost_args(p)
    _common(p)


def _objective_help() -> str:
    up = [n for n, o in OBJECTIVES.items() if o.sign > 0]
    down = [n for n, o in OBJECTIVES.items() if o.sign < 0]
    return (
        f"objective to optimise (default tokens_per_joule): {', '.join(up)} (maximised); "
        f"{', '.join(down)} (minimised)"
    )


def _search_args(p: argparse.ArgumentParser) -> None:
    """The flags `emu search` and `emu sweep` share: `emu run`'s workload, then the search.
    The plan knobs a search neither varies nor takes as given (dp, derived from --chips, and
    those its Problem has no place for) are parsed, so they are refused with one line, but
    not listed."""
    _workload_args(p, chips_list=True, hide=SEARCH_FIXED_KNOBS | {"dp"})
    g = p.add_argument_group("search")
    g.add_argument(
        "--objective",
        default="tokens_per_joule",
        choices=list(OBJECTIVES),
        metavar="NAME",
        help=_objective_help(),
    )
    g.add_argument(
        "--free",
        help="comma-separated plan knobs that vary (default: every knob not given on the "
        "command line): " + ", ".join(k.name for k in KNOBS if k.searchable and k.name != "dp"),
    )
    g.add_argument("--power-cap", type=watts, metavar="W", help="IT power cap, watts (or 60kW)")
    g.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2,...",
        help="also search a topology knob (domain, scaleup_bw, scaleout_bw, "
        "oversubscription, optics_share) or a system field path over these values "
        "(repeatable: product)",
    )
    g.add_argument("--top", type=positive_int, default=10, help="best configurations listed")
    g.add_argument(
        "--out", metavar="FILE", help="every evaluated configuration as CSV or Parquet (.parquet)"
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file (without it, an existing file is refused)",
    )


def _plan_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plan",
        choices=["rule", "best"],
        default="rule",
        help="degrees left out: 'rule' (the stated plan rule, default) or 'best' (a quick "
        "gradient search for the most tokens/J; `emu search` is the full one)",
    )


def _add_simple_commands(sub) -> None:
    p = sub.add_parser(
        "list",
        help="systems and models in the catalog, one line each",
        description="Systems (chips, peak, memory) and models (parameters, layers, experts) "
        "of the catalog; --fields NAME lists the settable fields of a system, a model or "
        "'plan' (the plan knobs).",
    )
    p.add_argument(
        "--fields",
        metavar="NAME",
        help="settable fields of a system or model (dotted paths for --set), or 'plan'",
    )
    p.add_argument("--regions", action="store_true", help="the regions with their sources")
    add_cost_args(p)
    _common(p)

    p = sub.add_parser("describe", help="system totals computed from the parts")
    p.add_argument("system", help="catalog name or TOML path")
    _common(p)

    p = sub.add_parser(
        "run",
        help="emulate one training step",
        description="Emulate one training step (or, with --phase, one prefill batch or decode "
        "step). " + PLAN_RULE,
    )
    _workload_args(p)
    _plan_choice(p)

    p = sub.add_parser(
        "compare",
        help="several systems on one workload",
        description="Several systems on one workload. " + PLAN_RULE,
    )
    p.add_argument(
        "--systems",
        "--system",
        default=",".join(DEFAULT_COMPARE),
        help="comma-separated catalog names or TOML paths",
    )
    _workload_args(p, system=False)
    _plan_choice(p)

    p = sub.add_parser("sensitivity", help="elasticities of tokens/J and tokens/s (jax.grad)")
    _workload_args(p)
    p.add_argument("--top", type=positive_int, default=15, help="rows in the table (all in --json)")


def _add_serve(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="disaggregated prefill + decode deployment",
        description="A prefill instance and a decode instance, each with its own chips and "
        "plan (chosen by the serving rule), serving requests of --prompt-len input and "
        "--output-len output tokens. Batches default to the largest meeting the SLOs.",
    )
    p.add_argument("--system", default="cloudmatrix384", help="catalog name or TOML path")
    p.add_argument("--model", default="deepseek_r1", help="catalog name or TOML path")
    p.add_argument("--prefill-chips", type=positive_int, default=96)
    p.add_argument("--decode-chips", type=positive_int, default=160)
    p.add_argument("--prompt-len", type=_bounded_int(1, 10_000_000), default=4096)
    p.add_argument("--output-len", type=_bounded_int(1, 10_000_000), default=1024)
    p.add_argument("--prefill-batch", type=positive_int, help="prompts per DP rank per batch")
    p.add_argument("--decode-batch", type=positive_int, help="sequences per DP rank in decode")
    p.add_argument("--tpot-slo", type=seconds, default=0.05, help="seconds (default 0.05)")
    p.add_argument("--ttft-slo", type=seconds, default=2.0, help="seconds (default 2.0)")
    p.add_argument(
        "--precision",
        default=None,
        choices=list(PRECISIONS),
        help="default: the chip's 8-bit format (fp8, else int8), else bf16",
    )
    p.add_argument(
        "--kv-precision",
        default="bf16",
        choices=list(KV_PRECISIONS),
        help="KV-cache element format of both instances (default bf16)",
    )
    p.add_argument(
        "--mtp-accept",
        type=in_range(0.0, 1.0, "an acceptance rate in [0, 1)", closed_hi=False),
        default=None,
        help="share of multi-token-prediction drafts accepted, in [0, 1) (default: 0.7 for a "
        "model with MTP modules, as the serving rule decodes them; 0 turns MTP off)",
    )
    p.add_argument(
        "--moe-imbalance",
        type=in_range(
            1.0, 1000.0, "a load ratio in [1, 1000) (busiest expert / mean)", closed_hi=False
        ),  # fmt: skip
        default=1.0,
        help="busiest expert's load over the mean, in [1, 1000) (default 1: balanced)",
    )
    p.add_argument("--a2a-overlap", action="store_true")
    p.add_argument(
        "--decode-expert-ranks",
        type=nonnegative_int,
        default=0,
        help="attention/expert disaggregation in the decode instance: ranks (dies on a "
        "CloudMatrix 384) that hold only the experts (default 0: colocated)",
    )
    p.add_argument(
        "--decode-attention-groups",
        type=positive_int,
        default=1,
        help="with --decode-expert-ranks: DP domains taking turns on the expert ranks",
    )
    add_cost_args(p)
    _common(p)


def _add_search_commands(sub) -> None:
    p = sub.add_parser(
        "search",
        help="best plan (and topology) by gradient search, exactly re-evaluated",
        description="Maximise --objective over the parallel plan (and the --grid topology "
        "knobs) by gradient over a relaxed plan, then round to valid plans and polish them "
        "by a discrete local search (emu.search.gradient_search). Knobs given on the "
        "command line (--tp 8) stay fixed; --free lists the knobs that vary. On a small "
        "space (--method auto) it evaluates every configuration instead, and says so; "
        "`emu sweep` is the resumable, multi-process exhaustive search.",
    )
    _search_args(p)
    p.add_argument(
        "--method",
        choices=("auto", "gradient", "exhaustive"),
        default="auto",
        help="auto (default): evaluate every configuration when the space is small enough "
        "for that to beat the gradient search (emu.search.EXHAUSTIVE_MAX) and no gradient "
        "flag (--starts, --steps, --seed) is given; the output says which ran",
    )
    p.add_argument(
        "--starts",
        type=_bounded_int(1, MAX_STARTS),
        help="random starts (default: by the space size)",
    )
    p.add_argument(
        "--steps", type=_bounded_int(1, MAX_STEPS), help="optimiser steps per start (default 40)"
    )
    p.add_argument(
        "--seed", type=_bounded_int(0, 2**32 - 1), help="random seed in [0, 2^32) (default 0)"
    )

    p = sub.add_parser(
        "sweep",
        help="evaluate every valid plan (one compiled, vmapped, resumable sweep)",
        description="Evaluate every valid discrete plan (times the --grid values) of a "
        "problem in chunks with one compilation, sharded over all JAX devices (and over "
        "processes with --coordinator/--num-processes/--process-id or the "
        "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID variables; processes "
        "share the output folder). Chunks stream to OUT.parts/ as they finish (removed after "
        "success); the same command resumes a killed sweep.",
    )
    _search_args(p)
    p.add_argument(
        "--chunk",
        type=_bounded_int(*BUDGET["chunk"]),
        default=1 << 16,
        help="plans per compiled call",
    )
    p.add_argument("--coordinator", metavar="HOST:PORT")
    p.add_argument("--num-processes", type=positive_int)
    p.add_argument("--process-id", type=int)
    p.add_argument(
        "--coordinator-timeout",
        type=positive_int,
        default=None,
        metavar="S",
        help="seconds to wait for all processes to connect (default 120)",
    )
    p.add_argument("--throttle-s", type=float, default=0.0, help=argparse.SUPPRESS)  # tests


def _add_measurement_commands(sub) -> None:
    p = sub.add_parser("validate", help="predict published measurements and report errors")
    p.add_argument("file", nargs="?", help="JSON Lines (default: the shipped measurement set)")
    p.add_argument("--kind", choices=KINDS, help="only rows of this kind")
    p.add_argument("--show-skipped", action="store_true", help="list skipped rows in the table")
    p.add_argument(
        "--plot", metavar="FILE", help="write a predicted-vs-measured plot (.png, .pdf or .svg)"
    )
    p.add_argument(
        "--row",
        metavar="ID",
        help="explain one row: its plan, deployment or collective setup, step breakdown and error",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 when a row could not be read (default: 0; the report and "
        "its JSON summary.errors count them)",
    )
    _common(p)

    p = sub.add_parser(
        "calibrate",
        help="fit the shared parameters to measurements (optax through the emulator)",
        description="Fit the shared physical parameters (per chip family, per link type, "
        "overlap fractions) from the priors in configs/calibration/defaults.toml to the "
        "measurements, and write the overlay that emu loads by default.",
    )
    p.add_argument("file", nargs="?", help="JSON Lines (default: the shipped measurement set)")
    p.add_argument(
        "--steps",
        type=_bounded_int(1, MAX_STEPS),  # 1e9 steps ran for days without a word
        default=150,
        help=f"optimiser steps, 1 to {MAX_STEPS:,} (default 150)",
    )
    p.add_argument(
        "--cv",
        action="store_true",
        help="also leave-one-source-out and leave-one-system-out cross-validation",
    )
    p.add_argument(
        "--out",
        metavar="PATH",
        help="overlay to write, a .toml file (default: configs/calibration/fitted.toml); "
        "with --cv, residuals.jsonl and intervals.toml are written beside it",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing files at --out (without it, they are refused; the default "
        "overlay is always replaced)",
    )
    p.add_argument(
        "--weights",
        # emu.calibration._fit.WEIGHTS and SOURCE_CORRELATION, spelt out: importing them
        # here would pull JAX into every command's start-up
        choices=("confidence", "source", "none"),
        default="confidence",
        help="row weights: the stated confidence (default); 'source': also divided by "
        "1 + 0.3 (n - 1), n the rows of the row's source, rescaled to the same total, so "
        "that a source counts by its information, not its row count; 'none': all alike",
    )
    p.add_argument(
        "--holdout",
        metavar="FILE",
        help="with --cv: JSON Lines of rows from sources the fit does not see (e.g. "
        "experiments/data/out_of_sample.jsonl); they are predicted with the fitted "
        "parameters and their residuals join the leave-one-source-out ones that calibrate "
        "the 80%% intervals (and residuals.jsonl), not the fit or its medians",
    )
    p.add_argument("--dry-run", action="store_true", help="fit and report, write nothing")
    p.add_argument("--throttle-s", type=float, default=0.0, help=argparse.SUPPRESS)  # tests
    _common(p, set_help=False)


def build_parser() -> argparse.ArgumentParser:
    """The `emu` parser (built per call: choices read the registries as they are now)."""
    from emu import __version__

    ap = _Parser(prog="emu", description="Differentiable emulator of AI clusters.")
    ap.add_argument("--version", action="version", version=f"emu {__version__}")
    sub = ap.add_subparsers(dest="command", parser_class=_Parser)
    sub.required = True
    _add_simple_commands(sub)
    _add_serve(sub)
    _add_search_commands(sub)
    _add_measurement_commands(sub)
    from emu.program.cli import add_program_parser

    add_program_parser(sub)
    return ap
