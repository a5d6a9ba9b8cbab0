"""emu.policy: the plan rule, the serving rule and the largest batch under an SLO; errors
name parameters, never flags."""

import pytest

import emu
from emu.policy import DEFAULT_BATCH_TOKENS, auto_plan, divisors, with_largest_batch


@pytest.fixture(scope="module")
def sys_models():
    return (
        emu.load_system("gb200_nvl72"),
        emu.load_model("llama3_70b"),
        emu.load_model("deepseek_v3"),
    )


def test_training_rule(sys_models):
    system, llama, _ = sys_models
    p = auto_plan(system, llama, 72, seq_len=8192)
    assert [int(p.tp), int(p.pp), int(p.dp), int(p.cp)] == [8, 1, 9, 1]
    tokens = float(p.global_batch) * 8192
    assert DEFAULT_BATCH_TOKENS <= tokens < DEFAULT_BATCH_TOKENS + 9 * 8192  # smallest multiple
    kept = auto_plan(system, llama, 72, seq_len=8192, tp=4, zero=3, recompute="full")
    assert int(kept.tp) == 4 and int(kept.zero) == 3 and float(kept.recompute) == 2.0


def test_serving_rule_for_moe(sys_models):
    system, _, ds = sys_models
    p = auto_plan(system, ds, 72, phase="decode", precision="fp8", seq_len=4096)
    assert int(p.tp) == 1 and int(p.dp) == 72 and 256 % int(p.ep) == 0
    assert float(p.zero) == 0 and float(p.recompute) == 0


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(tp=0), "tp must be a positive integer"),
        (dict(zero=7), "zero must be 0, 1, 2 or 3"),
        (dict(tpp=2), "unknown knob 'tpp'. Did you mean 'tp'"),
        (dict(tp=3), "must divide"),
        (dict(phase="decode", pp=2), "serving plans take tp, dp and ep only; drop pp"),
        (dict(mtp_accept=1.5), r"mtp_accept must be in \[0, 1\)"),
    ],
)
def test_errors_name_parameters_not_flags(sys_models, kw, needle):
    system, llama, _ = sys_models
    with pytest.raises(ValueError, match=needle) as e:
        auto_plan(system, llama, 72, **kw)
    assert "--" not in str(e.value)


def test_largest_batch_meets_the_slo_and_one_more_does_not(sys_models):
    system, llama, _ = sys_models
    plan = auto_plan(system, llama, 72, phase="decode", seq_len=4096)
    slo = 0.03
    best = with_largest_batch(system, llama, plan, slo)
    n = int(best.microbatch)
    assert float(emu.evaluate(system, llama, best).tpot_s) <= slo
    more = emu.struct.replace(best, microbatch=best.microbatch + 1)
    r = emu.evaluate(system, llama, more)
    assert float(r.tpot_s) > slo or float(r.feasible) < 0.5
    assert float(best.global_batch) == n * float(best.dp)
    with pytest.raises(ValueError, match="positive number of seconds"):
        with_largest_batch(system, llama, plan, -1.0)


def test_divisors():
    assert divisors(12) == [1, 2, 3, 4, 6, 12] and divisors(1) == [1]
