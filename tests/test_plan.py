"""emu.plan: each knob declared once; make_plan, validate_plan, plan_dict and the knob specs
derived from the declarations; adding a knob is one declaration plus its formula."""

import dataclasses
import inspect
import math

import jax
import jax.numpy as jnp
import pytest

import emu
from emu import plan as plan_mod
from emu.plan import KNOBS, Plan, knob, knobs, make, make_plan, plan_dict, validate_plan
from emu.step import train_step
from emu.struct import dataclass, replace
from emu.topology import example_system
from emu.workload import example_model


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(tp=0), "tp"),
        (dict(tp=-8), "tp"),
        (dict(tp=float("nan")), "tp"),
        (dict(tp=2.5), "tp"),
        (dict(zero=7), "zero"),
        (dict(algorithm="banana"), "algorithm"),
        (dict(algorithm="tree"), "algorithm"),
        (dict(mtp_accept=2), "mtp_accept"),
        (dict(cache_hit=-1), "cache_hit"),
        (dict(recompute="sometimes"), "recompute"),
        (dict(precision="fp6"), "precision"),
        (dict(phase="serve"), "phase"),
        (dict(sp=0.5), "sp"),
        (dict(moe_imbalance=0.5), "moe_imbalance"),
        (dict(grad_bytes=0), "grad_bytes"),
        (dict(context=0), "context"),
        (dict(seq_len=1e40), "seq_len"),
        (dict(tp="8"), "tp"),
        (dict(global_batch=3, dp=2), "global_batch"),
        (dict(pp=2, phase="decode"), "pp"),
        (dict(cp=2, phase="prefill"), "cp"),
        (dict(vpp=2), "vpp"),
        (dict(tpp=2), "tpp"),
    ],
)
def test_make_plan_rejects_bad_values_naming_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name) as e:
        make_plan(**kwargs)
    assert "--" not in str(e.value)  # the library names parameters; only the CLI has flags


def test_make_plan_converts_names_bools_and_derived_defaults():
    p = make_plan(dp=4, microbatch=2, seq_len=4096, recompute="full", sp=False, precision="fp16")
    assert float(p.global_batch) == 8.0  # dp * microbatch
    assert float(p.context) == 4096.0  # seq_len
    assert float(p.grad_bytes) == 2.0  # fp16 reduces fp16 gradients
    assert float(p.recompute) == 2.0 and float(p.sp) == 0.0
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(p))
    # numeric codes and 0/1 are accepted for choices and bools (search tables store them)
    assert float(make_plan(recompute=1, a2a_overlap=1).a2a_overlap) == 1.0


def test_plan_dict_round_trips_and_uses_names():
    p = make_plan(tp=8, dp=9, global_batch=72, seq_len=4096, recompute="none", lora=True)
    d = plan_dict(p)
    assert d["recompute"] == "none" and d["lora"] is True and d["sp"] is True
    assert d["tp"] == 8 and isinstance(d["tp"], int)
    assert d["a2a_overlap"] is False and d["moe_dedup"] is True
    assert list(d) == [k.name for k in KNOBS]
    again = make_plan(**d)
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda a, b: bool(a == b), p, again))


def test_every_plan_field_is_a_declared_knob_with_metadata():
    fields = [f.name for f in dataclasses.fields(Plan)]
    assert [k.name for k in KNOBS] == fields
    for k in KNOBS:
        assert k.kind in plan_mod.KINDS and k.help and k.flag.startswith("--")
        assert set(k.phases) <= set(plan_mod.PHASES)
        assert k.default is not None or k.derive is not None
    by = {k.name: k for k in KNOBS}
    assert by["global_batch"].flag == "--global-batch"
    assert by["sp"].flag == "--no-sp" and by["a2a_overlap"].flag == "--a2a-overlap"
    assert by["recompute"].values == (0.0, 1.0, 2.0)
    assert by["zero"].values == (0.0, 1.0, 2.0, 3.0)
    assert by["precision"].values == emu.units.PRECISIONS
    assert by["tp"].transform == "log2" and by["mtp_accept"].transform == "logit"
    assert by["pp"].phases == ("train",) and by["cache_hit"].phases == ("prefill",)


def test_searchable_knobs_are_the_search_columns_in_order():
    # emu.search varies these plan leaves, in this column order
    want = ("tp", "pp", "dp", "cp", "ep", "microbatch", "vpp", "zero", "recompute", "sp")
    assert tuple(k.name for k in knobs(searchable=True)) == want
    assert [k.name for k in knobs(phase="decode", searchable=True)] == [
        "tp",
        "dp",
        "ep",
        "microbatch",
    ]


def test_make_plan_signature_and_doc_come_from_the_declarations():
    sig = inspect.signature(make_plan)
    assert list(sig.parameters) == [k.name for k in KNOBS]
    assert sig.parameters["recompute"].default == "selective"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in sig.parameters.values())
    for k in KNOBS:
        assert f"    {k.name} (" in make_plan.__doc__


def test_algorithm_choices_read_the_collective_registry(monkeypatch):
    from emu import collectives

    with pytest.raises(ValueError, match="known: hierarchical, ring"):
        make_plan(algorithm="tree")
    monkeypatch.setitem(collectives.ALGORITHMS, "tree", collectives.ALGORITHMS["ring"])
    assert make_plan(algorithm="tree").algorithm == "tree"


def test_validate_plan_checks_against_the_model(catalog):
    llama = catalog["llama70"]
    with pytest.raises(ValueError, match="tp=3 must divide the model's n_heads"):
        validate_plan(make_plan(tp=3), llama)
    with pytest.raises(ValueError, match="ep=2 needs an MoE model"):
        validate_plan(make_plan(ep=2, dp=2), llama)
    with pytest.raises(ValueError, match="mtp_accept needs a model with MTP"):
        validate_plan(make_plan(mtp_accept=0.5, phase="decode"), llama)
    with pytest.raises(ValueError, match="exceeds the largest cluster"):
        validate_plan(make_plan(dp=128), llama, max_chips=72)
    assert validate_plan(make_plan(tp=8, pp=4, dp=2, global_batch=8), llama) is not None
    # a plan changed after construction is re-checked knob by knob
    with pytest.raises(ValueError, match=r"zero must be 0, 1, 2 or 3 \(got zero=5\)"):
        validate_plan(replace(make_plan(), zero=jnp.float32(5)))
    # plan degrees count ranks: a two-die system admits twice its packages
    with pytest.raises(ValueError, match=r"800 ranks exceeds .* \(384 chips x 2 dies\)"):
        validate_plan(make_plan(dp=800), llama, max_chips=384, dies_per_chip=2)
    assert validate_plan(make_plan(dp=768), llama, max_chips=384, dies_per_chip=2)


def test_uneven_pipeline_stages_are_writable():
    from emu.catalog import load_model

    llama405 = load_model("llama3_405b")  # 126 layers; Llama 3: PP16, stages of 8 and 7
    plan = make_plan(tp=8, pp=16, dp=1, global_batch=16, seq_len=8192)
    assert validate_plan(plan, llama405) is plan
    with pytest.raises(ValueError, match="pp\\*vpp=16 must divide n_layers=126"):
        validate_plan(plan, llama405, even_layers=True)
    with pytest.raises(ValueError, match="pp\\*vpp=128 exceeds n_layers=126"):
        validate_plan(make_plan(pp=64, vpp=2, global_batch=1), llama405)


def test_expert_parallelism_need_not_divide_the_experts():
    from emu.catalog import load_model

    ds = load_model("deepseek_v3")  # 256 routed experts
    for ranks in (72, 288, 320):  # NVL72; xDeepServe DP288/EP288; CM paper DP320/EP320
        plan = make_plan(dp=ranks, ep=ranks, phase="decode", recompute="none", zero=0)
        assert validate_plan(plan, ds) is plan
    with pytest.raises(ValueError, match="ep=72 must divide the model's n_experts=256"):
        validate_plan(make_plan(dp=72, ep=72), ds, even_experts=True)
    with pytest.raises(ValueError, match="ep\\*etp=48 must divide tp\\*dp\\*cp=72"):
        validate_plan(make_plan(dp=72, ep=48), ds)


def test_speculative_decoding_knobs():
    from emu.catalog import load_model

    ds = load_model("deepseek_v3")
    spec = make_plan(phase="decode", draft_tokens=3, accept_len=2.8)
    assert float(spec.accept_len) == pytest.approx(2.8)
    assert float(make_plan(phase="decode", mtp_accept=0.7).accept_len) == pytest.approx(1.7)
    with pytest.raises(ValueError, match="accept_len=4.5 must be <= 1 \\+ draft_tokens = 4"):
        make_plan(phase="decode", draft_tokens=3, accept_len=4.5)
    with pytest.raises(ValueError, match="not both"):
        make_plan(phase="decode", draft_tokens=1, accept_len=1.5, mtp_accept=0.5)
    with pytest.raises(ValueError, match="accept_len=2 needs draft_tokens > 0"):
        make_plan(phase="decode", accept_len=2.0)
    with pytest.raises(ValueError, match="draft_tokens must be"):
        make_plan(phase="decode", draft_tokens=-1)
    # EAGLE-style drafts need no MTP modules; mtp_accept does
    assert validate_plan(make_plan(phase="decode", draft_tokens=2, accept_len=2.0), ds)


# --- adding a knob: one declaration (here in a subclass) plus the formula that reads it ---


@dataclass
class StragglerPlan(Plan):
    straggler: jnp.ndarray = knob(
        "float",
        default=0.0,
        bounds="[0, 1)",
        phases=("train",),
        help="share of each step lost waiting for the slowest rank",
    )


def straggler_step_time(system, model, plan):
    """The formula that uses the toy knob: the step stretched by the straggler share."""
    return train_step(system, model, plan).total_s / (1.0 - plan.straggler)


def test_a_toy_knob_is_one_declaration_plus_its_formula():
    p = make(StragglerPlan, tp=8, global_batch=16, seq_len=4096, straggler=0.2)
    spec = {k.name: k for k in knobs(StragglerPlan)}["straggler"]
    assert spec.flag == "--straggler" and spec.transform == "logit"
    assert plan_dict(p)["straggler"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match=r"straggler must be in \[0, 1\) \(got straggler=1\)"):
        make(StragglerPlan, straggler=1.0)
    assert float(make(StragglerPlan).straggler) == 0.0  # the declared default
    system, model = example_system(), example_model()
    base = float(train_step(system, model, p).total_s)
    f = jax.jit(lambda q: straggler_step_time(system, model, q))
    assert float(f(p)) == pytest.approx(base / 0.8, rel=1e-6)
    g = jax.grad(lambda s: straggler_step_time(system, model, replace(p, straggler=s)))
    assert float(g(jnp.float32(0.2))) == pytest.approx(base / 0.8**2, rel=1e-4)


def test_knob_descriptions():
    by = {k.name: k for k in KNOBS}
    assert by["tp"].describe() == "a positive integer"
    assert by["lora"].describe() == "0 or 1"
    assert by["recompute"].describe() == "one of none (0), selective (1), full (2)"
    assert by["mtp_accept"].describe() == "in [0, 1)"
    assert math.isinf(by["global_batch"].hi) and by["context"].hi == 1.6e7
