"""jax.grad of tokens per joule w.r.t. every float leaf of a system: finite, and equal to
central finite differences in log space within 1e-3 (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from emu.catalog import load_model, load_system
from emu.objective import evaluate
from emu.parallelism import make_plan
from emu.struct import float_leaves, replace, set_path


def _f64(tree):
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), tree)


def _elasticity_and_fd(f, x, h=1e-4):
    """(x f'(x) from jax.grad, checked finite; the central difference of f in log x) for a
    scalar f of a float64 scalar x: equal when the gradient is right."""
    g = float(jax.grad(f)(x))
    assert np.isfinite(g)
    fd = (float(f(x * np.exp(h))) - float(f(x * np.exp(-h)))) / (2 * h)
    return float(x) * g, fd


@pytest.mark.parametrize("name", ["gb200_nvl72", "cloudmatrix384"])
def test_grad_of_tokens_per_joule_matches_finite_differences(name):
    with jax.enable_x64(True):
        system = _f64(load_system(name))
        model = _f64(load_model("llama3_8b"))
        # 48 chips: no group (nor pipeline pair) fills a tier's domain exactly, so no leaf
        # sits on a kink of the exact (piecewise-linear) placement.
        plan = _f64(make_plan(tp=4, pp=4, dp=3, global_batch=48, seq_len=4096))
        f = jax.jit(lambda s: jnp.log(evaluate(s, model, plan).tokens_per_joule))
        grads = float_leaves(jax.grad(f)(system))
        values = float_leaves(system)
        h = 1e-4
        checked = 0
        for path, x in values.items():
            g = float(grads[path])
            assert np.isfinite(g), path
            x = float(x)
            if x == 0.0:
                continue
            up = f(set_path(system, path, jnp.float64(x * np.exp(h))))
            dn = f(set_path(system, path, jnp.float64(x * np.exp(-h))))
            fd = (float(up) - float(dn)) / (2 * h)
            assert x * g == pytest.approx(fd, rel=1e-3, abs=1e-6), path
            checked += 1
        assert checked > 30


def test_gradients_finite_for_edge_plans(catalog):
    model = catalog["llama8"]
    f = jax.grad(lambda s, p: jnp.log(evaluate(s, model, p).tokens_per_joule))
    for plan in (
        make_plan(tp=1, pp=1, dp=1, global_batch=1, seq_len=1),
        make_plan(tp=8, pp=32, dp=1, global_batch=1, seq_len=128),
        make_plan(tp=1, pp=1, dp=100000, global_batch=100000, seq_len=8192, zero=3),
    ):
        g = f(catalog["h100"], plan)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(g))


def test_grouped_gemm_efficiency_slows_only_moe_layers_and_its_gradient_is_right():
    """`chip.grouped_matmul_efficiency` scales the rate of the routed experts' grouped GEMMs:
    a dense model does not see it; an MoE training step slows as it falls, and d log
    tokens/J / d log (it) equals central finite differences (float64)."""
    with jax.enable_x64(True):
        system = _f64(load_system("gb200_nvl72"))
        plan = _f64(make_plan(tp=2, pp=1, dp=4, ep=4, global_batch=16, seq_len=4096))
        path = "chip.grouped_matmul_efficiency"
        x = float(float_leaves(system)[path])
        dense = _f64(load_model("llama3_8b"))
        dense_plan = _f64(make_plan(tp=2, pp=1, dp=4, global_batch=16, seq_len=4096))
        t = lambda s, m, p: float(evaluate(s, m, p).step_time_s)  # noqa: E731
        half = set_path(system, path, jnp.float64(x / 2))
        assert t(half, dense, dense_plan) == t(system, dense, dense_plan)
        moe = _f64(load_model("mixtral_8x7b"))
        assert t(half, moe, plan) > 1.05 * t(system, moe, plan)
        f = jax.jit(lambda s: jnp.log(evaluate(s, moe, plan).tokens_per_joule))
        g = float(float_leaves(jax.grad(f)(system))[path])
        h = 1e-4
        up = f(set_path(system, path, jnp.float64(x * np.exp(h))))
        dn = f(set_path(system, path, jnp.float64(x * np.exp(-h))))
        fd = (float(up) - float(dn)) / (2 * h)
        assert np.isfinite(g) and x * g > 0
        assert x * g == pytest.approx(fd, rel=1e-3)


def test_a_sliding_window_shortens_long_sequences_only_and_its_gradient_is_right():
    """Mistral 7B's 4,096-key window (Llama 3 8B's shape with the window on every layer):
    at 4K tokens a step is unchanged; at 32K training, prefill and decode are faster, decode
    keeps ~4,096/context of the KV cache; d log step / d log window is finite and matches
    central differences (float64) in training and in decode."""
    base = load_model("llama3_8b")
    swa = replace(base, attention_window=jnp.float32(4096), window_layers=jnp.float32(32))
    system = load_system("dgx_h100")
    short = make_plan(tp=8, dp=1, global_batch=8, seq_len=4096)
    assert float(evaluate(system, swa, short).step_time_s) == pytest.approx(
        float(evaluate(system, base, short).step_time_s), rel=1e-6
    )
    long = make_plan(tp=8, dp=1, global_batch=8, seq_len=32768)
    prefill = make_plan(tp=8, dp=1, phase="prefill", seq_len=32768, microbatch=1)
    decode = make_plan(tp=8, dp=1, phase="decode", context=32768, microbatch=16)
    for plan in (long, prefill, decode):
        assert float(evaluate(system, swa, plan).step_time_s) < 0.9 * float(
            evaluate(system, base, plan).step_time_s
        )
    kv = lambda m: float(evaluate(system, m, decode).memory.kv_cache_bytes)  # noqa: E731
    assert kv(swa) == pytest.approx(kv(base) * 4096 / 32768, rel=1e-5)
    # a prefill pass writes the whole prompt's K and V before any block is freed
    kv_pf = lambda m: float(evaluate(system, m, prefill).memory.kv_cache_bytes)  # noqa: E731
    assert kv_pf(swa) == kv_pf(base)
    with jax.enable_x64(True):
        s64 = _f64(system)
        for plan in (long, decode):
            p64 = _f64(plan)
            m64 = _f64(swa)
            f = jax.jit(
                lambda w, p=p64, m=m64: jnp.log(
                    evaluate(s64, replace(m, attention_window=w), p).step_time_s
                )
            )
            e, fd = _elasticity_and_fd(f, jnp.float64(4096.0))
            assert e == pytest.approx(fd, rel=1e-3, abs=1e-6)
            assert fd > 1e-3  # a wider window costs time at 32K


def test_the_recomputed_share_of_layers_has_a_right_gradient():
    """d log step / d log recompute_fraction is finite and positive (recomputing more layers
    costs time) and matches central differences (float64); d log memory is negative."""
    system = load_system("gb200_nvl72")
    model = load_model("llama3_70b")
    plan = make_plan(tp=8, pp=2, dp=4, global_batch=64, seq_len=8192, recompute="full")
    with jax.enable_x64(True):
        s64, m64, p64 = _f64(system), _f64(model), _f64(plan)
        for out in ("step_time_s", "memory"):

            def f(r, out=out):
                res = evaluate(s64, m64, replace(p64, recompute_fraction=r))
                return jnp.log(res.step_time_s if out == "step_time_s" else res.memory.total_bytes)

            e, fd = _elasticity_and_fd(jax.jit(f), jnp.float64(0.5))
            assert e == pytest.approx(fd, rel=1e-3, abs=1e-7)
            assert (fd > 1e-3) if out == "step_time_s" else (fd < -1e-3)
