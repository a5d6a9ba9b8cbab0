"""emu.search's objective registry: every registered objective is a traceable scalar of the
RunResult (jit, vmap and grad agree and are finite), and adding one is a local change."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emu
from emu import costs_catalog
from emu.search import OBJECTIVES, Problem, get_objective, register_objective, sweep

PHASE_PLAN = {
    "train": dict(tp=8, dp=2, global_batch=64, seq_len=4096),
    "prefill": dict(tp=8, dp=2, global_batch=8, microbatch=4, seq_len=4096, phase="prefill"),
    "decode": dict(tp=8, dp=2, global_batch=64, microbatch=32, seq_len=4096, phase="decode"),
}


@pytest.fixture(scope="module")
def setup():
    return emu.load_system("dgx_h100"), emu.load_model("llama3_8b")


@pytest.mark.parametrize("phase", list(PHASE_PLAN))
def test_every_objective_runs_under_jit_vmap_and_grad(setup, phase):
    """All objectives of a phase in one function (one compilation each for jit, vmap and
    reverse mode): finite, positive, batch = single, and a nonzero finite gradient each."""
    system, model = setup
    objs = [o for o in OBJECTIVES.values() if phase in o.phases]
    assert len(objs) >= 8
    # the context an objective may need (usd_per_mtoken: a cost and a region)
    priced = Problem(
        "dgx_h100",
        "llama3_8b",
        cost=(costs_catalog.load_cost("dgx_h100"), costs_catalog.load_region("us_average")),
    )

    def values(s, p):
        r = emu.evaluate(s, model, p)
        return jnp.stack(
            [jnp.asarray(o.value(r, system=s, problem=priced), jnp.float32) for o in objs]
        )

    plan = emu.make_plan(**PHASE_PLAN[phase])
    one = np.asarray(jax.jit(values)(system, plan))
    assert np.all(np.isfinite(one)) and np.all(one > 0), [o.name for o in objs]
    plans = emu.struct.stack([plan, emu.struct.replace(plan, seq_len=jnp.float32(2048))])
    batch = np.asarray(jax.jit(jax.vmap(values, in_axes=(None, 0)))(system, plans))
    np.testing.assert_allclose(batch[0], one, rtol=1e-6)

    # The Jacobian row by row: one reverse pass per objective (the cotangent e_i), through one
    # compiled VJP. Same rows as jax.jacrev (which vmaps this VJP over the basis), at half the
    # compile time of the vmapped program.
    @jax.jit
    def row(s, cotangent):
        _, pull = jax.vjp(lambda s: jnp.log(values(s, plan)), s)
        (g,) = pull(cotangent)
        return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(g)])

    eye = np.eye(len(objs), dtype=np.float32)
    rows = np.stack([np.asarray(row(system, e)) for e in eye])
    assert np.all(np.isfinite(rows))
    for o, row in zip(objs, rows, strict=True):
        assert np.abs(row).max() > 0, f"{o.name} ({phase}) has no gradient in the system"


def test_directions_and_phases_are_declared():
    assert get_objective("tokens_per_joule").sign == 1.0
    assert get_objective("step_time_s").sign == -1.0
    assert get_objective("tpot_s").phases == ("decode",)
    with pytest.raises(ValueError, match="unknown objective 'speed'; known: tokens_per_joule"):
        get_objective("speed")
    with pytest.raises(ValueError, match="sign must be"):
        register_objective("bad", lambda r: r.mfu, sign=2.0)
    # a vector objective: one line while tracing (a reshape error from the sweep before)
    s, m = emu.load_system("dgx_h100"), emu.load_model("llama3_8b")
    r = emu.evaluate(s, m, emu.make_plan(**PHASE_PLAN["train"]))
    vector = get_objective(lambda r: jnp.stack([r.mfu, r.mfu]))
    with pytest.raises(ValueError, match=r"must return one number per evaluation \(got shape"):
        vector.value(r)


@pytest.fixture
def toy():
    """A toy objective: tokens per joule per chip (one function, one registry entry)."""
    obj = register_objective(
        "toy_tokens_per_joule_per_chip",
        lambda r: r.tokens_per_joule / r.n_chips,
        sign=1.0,
        help="tokens/J per chip",
    )
    yield obj
    del OBJECTIVES[obj.name]


def test_a_registered_toy_objective_is_searched_and_offered_by_the_cli(
    setup, toy, tmp_path, capsys
):
    system, model = setup
    problem = Problem("dgx_h100", "llama3_8b", (8, 16), seq_len=4096, free=("pp",))
    res = sweep(system, model, problem, tmp_path, objective=toy.name, chunk=64)
    assert res.objective == toy.name
    want = max(r["tokens_per_joule"] / (r["tp"] * r["pp"] * r["dp"] * r["cp"]) for r in res.top)
    assert res.best["objective"] == pytest.approx(want, rel=1e-5)
    from emu.cli._parser import build_parser

    args = build_parser().parse_args(["sweep", "--objective", toy.name])
    assert args.objective == toy.name
