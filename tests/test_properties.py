"""Properties of the whole front end (issue 16): the CLI parsers and the API (`make_plan`,
`evaluate`, the loaders) driven with random and extreme values. A command exits 0 only with
finite, physically possible results (0 <= MFU <= 1, step time > 0, power > 0); otherwise it
exits 2 with one line on stderr, and the API raises ValueError with the same message.

Bounded: a few dozen examples per property on one small system and model, so each program
structure (phase x precision) compiles once."""

import json
import math
import re

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import emu
from emu import catalog, policy
from emu.cli import main
from emu.plan import KNOBS

SYSTEM, MODEL = "dgx_h100", "llama3_8b"
SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

EXTREME = st.sampled_from(
    ["0", "-1", "1e-45", "1e-39", "1.2e-38", "3e38", "1e39", "nan", "inf", "-inf", "1e30", "2.5"]
)
NUMBERS = st.one_of(
    st.integers(-4, 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=64).map(repr),
    EXTREME,
)
UNITS = st.sampled_from(["16TB/s", "80GB", "141GiB", "2us", "5ms", "1.2kW", "989TFLOPS", "3xx"])
VALUES = st.one_of(NUMBERS, UNITS, st.sampled_from(["", "x", "bf16", "fp8", "int8", "decode"]))

FLAGS = [
    "--tp", "--pp", "--dp", "--cp", "--ep", "--vpp", "--chips", "--seq-len", "--global-batch",
    "--microbatch", "--zero", "--batch", "--context", "--mtp-accept", "--cache-hit",
    "--moe-imbalance", "--tpot-slo", "--ttft-slo",
]  # fmt: skip
CHOICES = {
    "--phase": ["train", "prefill", "decode", "banana"],
    "--precision": ["bf16", "fp8", "int8", "fp4", "fp64"],
    "--recompute": ["none", "selective", "full", "some"],
}
SET_PATHS = [
    "chip.hbm_bytes", "chip.hbm_bytes_per_s", "chip.tdp_w", "chip.idle_w",
    "chip.peak_flops_per_s.bf16", "chip.matmul_efficiency", "tiers.nvlink.bytes_per_s",
    "tiers.nvlink.latency_s", "facility.pue", "facility.psu_efficiency", "host.cpu_w",
    "model.n_layers", "model.d_model", "model.vocab", "plan.zero", "plan.moe_imbalance",
]  # fmt: skip


def _finite(obj) -> bool:
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list):
        return all(_finite(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


def _physical(r: dict) -> None:
    assert _finite(r), r
    assert r["step_time_s"] > 0 and r["power_w"] > 0 and r["tokens_per_s"] >= 0
    assert 0 <= r["mfu"] <= 1 + 1e-6, r["mfu"]
    assert r["memory"]["total_bytes"] > 0


def _cli(capsys, args):
    """(exit status, parsed JSON or None, stderr); only 0 or 2, one line on 2."""
    code = main(args)
    out, err = capsys.readouterr()
    event(f"exit {code}")  # --hypothesis-show-statistics: both outcomes are exercised
    assert code in (0, 2), (args, code, err)
    if code == 2:
        assert err.startswith("emu: error: ") and err.count("\n") == 1, (args, err)
        assert "Traceback" not in err and "internal error" not in err
        return code, None, err
    return code, json.loads(out), err


flag_pairs = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(FLAGS), VALUES),
        st.sampled_from(list(CHOICES)).flatmap(
            lambda f: st.tuples(st.just(f), st.sampled_from(CHOICES[f]))
        ),
    ),
    max_size=4,
)
set_pairs = st.lists(st.tuples(st.sampled_from(SET_PATHS), VALUES), max_size=2)


@SETTINGS
@given(pairs=flag_pairs, sets=set_pairs)
def test_run_exits_0_only_with_physical_results(capsys, pairs, sets):
    args = ["run", "--system", SYSTEM, "--model", MODEL, "--seq-len", "2048", "--json"]
    for flag, value in pairs:
        args += [flag, value]
    for path, value in sets:
        args += ["--set", f"{path}={value}"]
    code, d, _ = _cli(capsys, args)
    if code == 0:
        _physical(d)
        assert d["feasible"] == (not d["infeasible_reasons"])


@SETTINGS
@given(
    kind=st.sampled_from(["describe", "list"]),
    sets=st.lists(st.tuples(st.sampled_from(SET_PATHS[:11]), VALUES), min_size=1, max_size=2),
)
def test_describe_and_list_fields_refuse_or_stay_finite(capsys, kind, sets):
    args = ["describe", SYSTEM] if kind == "describe" else ["list", "--fields", SYSTEM]
    for path, value in sets:
        args += ["--set", f"{path}={value}"]
    code, d, _ = _cli(capsys, [*args, "--json"])
    if code == 0:
        assert _finite(d)
        if kind == "describe":
            assert d["power_w"] > 0 and d["facility_power_w"] >= d["power_w"]


@SETTINGS
@given(
    flag=st.sampled_from(
        [
            "--output-len",
            "--prompt-len",
            "--decode-chips",
            "--tpot-slo",
            "--mtp-accept",
            "--moe-imbalance",
        ]
    ),  # fmt: skip
    value=NUMBERS,
)
def test_serve_refuses_or_answers_physically(capsys, flag, value):
    code, d, _ = _cli(capsys, ["serve", "--system", "dgx_h100", "--model", "mixtral_8x7b",
                               "--prefill-chips", "8", "--decode-chips", "8", flag, value,
                               "--json"])  # fmt: skip
    if code == 0:
        assert _finite(d)
        assert d["requests_per_s"] > 0 and d["tokens_per_s"] > 0 and d["power_w"] > 0


@SETTINGS
@given(path=st.sampled_from(SET_PATHS[:11]), value=NUMBERS)
def test_set_errors_are_the_api_errors(capsys, path, value):
    """`--set PATH=VALUE` fails exactly when `emu.load_system(name, {PATH: value})` does,
    with the same message."""
    from emu.overrides import parse_override

    try:
        p, v = parse_override(f"{path}={value}")
        catalog.load_system(SYSTEM, {p: v})
        api_error = None
    except ValueError as e:
        api_error = str(e)
    code, _, err = _cli(capsys, ["describe", SYSTEM, "--set", f"{path}={value}", "--json"])
    if api_error is None:
        assert code == 0
    else:
        assert code == 2 and err.strip().endswith(api_error), (err, api_error)


KNOB_VALUES = {
    "tp": st.sampled_from([1, 2, 3, 4, 8, 16]),
    "pp": st.sampled_from([1, 2, 3, 4, 32]),
    "dp": st.sampled_from([1, 2, 3, 9]),
    "cp": st.sampled_from([1, 2, 3]),
    "microbatch": st.sampled_from([1, 2, 5]),
    "zero": st.sampled_from([0, 1, 2, 3]),
    "vpp": st.sampled_from([1, 2]),
    "recompute": st.sampled_from(["none", "selective", "full"]),
    "recompute_fraction": st.sampled_from([0.25, 1.0]),
    "precision": st.sampled_from(["bf16", "fp8", "fp4"]),
}


@SETTINGS
@given(knobs=st.fixed_dictionaries({}, optional=KNOB_VALUES))
def test_plan_errors_are_the_same_in_the_cli_and_the_api(capsys, knobs):
    """Valid knob values in any combination: the CLI and `emu.policy.auto_plan` (the
    library call behind it) agree, message for message; a plan they accept evaluates to a
    physical result through `emu.evaluate` too."""
    system, model = emu.load_system(SYSTEM), emu.load_model(MODEL)
    chips = 8 * knobs.get("pp", 1) * knobs.get("cp", 1) * knobs.get("dp", 1)
    try:
        plan = policy.auto_plan(system, model, chips, seq_len=2048, **knobs)
        api_error = None
    except ValueError as e:
        api_error = str(e)
    args = ["run", "--system", SYSTEM, "--model", MODEL, "--seq-len", "2048", "--json"]
    args += ["--chips", str(chips)]
    for name, v in knobs.items():
        args += [next(k.flag for k in KNOBS if k.name == name), str(v)]
    code, d, err = _cli(capsys, args)
    if api_error is not None:
        assert code == 2 and err == f"emu: error: {api_error}\n"
        return
    if code == 0:
        _physical(d)
        try:
            r = emu.evaluate(system, model, plan)
        except ValueError as e:  # the same rule the CLI applied to its result
            pytest.fail(f"the API refused what the CLI answered: {e}")
        assert float(r.step_time_s) == pytest.approx(d["step_time_s"], rel=1e-5)


@SETTINGS
@given(
    values=st.dictionaries(
        st.sampled_from([k.name for k in KNOBS]),
        st.one_of(
            st.integers(-2, 10**6),
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from(["banana", "bf16", "decode", "full", True, None]),
        ),
        max_size=5,
    )
)
def test_make_plan_validates_or_builds_a_checked_plan(values):
    try:
        plan = emu.make_plan(**values)
    except ValueError as e:
        assert str(e).startswith("Plan: "), e
        return
    emu.struct.check(plan, "Plan")  # what make_plan returns passes the one validation path


MODEL_KEYS = ["num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
              "intermediate_size", "vocab_size", "n_routed_experts", "num_experts_per_tok",
              "moe_intermediate_size", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim",
              "first_k_dense_replace", "head_dim"]  # fmt: skip


@SETTINGS
@given(
    cfg=st.dictionaries(
        st.sampled_from(MODEL_KEYS),
        st.one_of(
            st.integers(-5, 10**7),
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from([None, "x", [1], True]),
        ),
        max_size=10,
    ),
    hf=st.booleans(),
)
def test_model_loaders_validate_or_build_a_checked_model(cfg, hf):
    """A Hugging Face config.json or a TOML table of any content: a checked Model or one
    ValueError (never another exception)."""
    base = {"num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
            "vocab_size": 1000, "intermediate_size": 512}  # fmt: skip
    try:
        if hf:
            m = catalog.model_from_hf({**base, **cfg}, "fuzz")
        else:
            names = {"num_hidden_layers": "n_layers", "hidden_size": "d_model",
                     "num_attention_heads": "n_heads", "vocab_size": "vocab",
                     "intermediate_size": "d_ff"}  # fmt: skip
            data = {names.get(k, k): v for k, v in {**base, **cfg}.items()}
            m = catalog.model_from_dict({"name": "fuzz", **data}, "model 'fuzz'")
    except ValueError as e:
        assert re.match(r"model '", str(e)), e
        return
    emu.struct.check(m, "model")


@SETTINGS
@given(
    knobs=st.fixed_dictionaries(
        {
            "tp": st.sampled_from([1, 2, 3, 8, 64]),
            "dp": st.sampled_from([1, 3, 16, 10**5]),
            "microbatch": st.sampled_from([1, 4, 4096]),
            "seq_len": st.sampled_from([1, 4096, 2**20]),
        },
        optional={
            "pp": st.sampled_from([1, 2, 7, 64]),
            "cp": st.sampled_from([1, 2, 16]),
            "ep": st.sampled_from([1, 3, 8]),
            "precision": st.sampled_from(["bf16", "fp8", "int8", "fp4"]),
            "phase": st.sampled_from(["train", "prefill", "decode"]),
            "zero": st.sampled_from([0, 3]),
        },
    ),
    model=st.sampled_from(["llama3_8b", "mixtral_8x7b"]),
)
def test_evaluate_on_any_valid_plan_raises_or_is_physical(knobs, model):
    """Any plan make_plan accepts, on any model: `emu.evaluate` raises ValueError (naming
    the rule the plan breaks on this system) or returns a physically possible result."""
    if knobs.get("phase", "train") != "train":
        knobs = {k: v for k, v in knobs.items() if k not in ("pp", "cp", "zero")}
    try:
        plan = emu.make_plan(**knobs, global_batch=knobs["dp"] * knobs["microbatch"])
    except ValueError:
        return
    try:
        r = emu.evaluate(emu.load_system(SYSTEM), emu.load_model(model), plan)
    except ValueError as e:
        event("ValueError")
        assert str(e).split(":")[0] in ("Plan", f"{SYSTEM}/{model}") or "support" in str(e), e
        return
    event("result")
    assert 0 < float(r.step_time_s) < math.inf and 0 < float(r.power_w) < math.inf
    assert 0 <= float(r.mfu) <= 1 + 1e-6 and float(r.tokens_per_s) >= 0
