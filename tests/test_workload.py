import jax.numpy as jnp
import pytest

import emu
from emu.catalog import load_model
from emu.struct import check, field_info, replace
from emu.workload import (
    Model,
    example_model,
    kv_cache_bytes_per_token,
    model_flops_per_token,
    params_active,
    params_total,
)


@pytest.mark.parametrize(
    "name,billions",
    [
        ("gpt3_175b", 174.6),  # SC21 Table 2 (tied embeddings, vocab 51200)
        ("gpt_530b", 529.6),  # SC21 Table 1
        ("llama3_8b", 8.03),  # Llama 3 Table 3
        ("llama3_70b", 70.6),
        ("llama3_405b", 405.9),
    ],
)
def test_parameter_counts(name, billions):
    assert float(params_total(load_model(name))) / 1e9 == pytest.approx(billions, rel=0.005)


def test_pangu_ultra_is_the_published_135b():
    # arXiv:2504.07866 gives "135 billion parameters", rounded; with untied embeddings
    # (an assumption: the paper does not say) the count is 133.9B, tied 132.0B
    assert float(params_total(load_model("pangu_ultra"))) / 1e9 == pytest.approx(135, rel=0.01)


def test_model_flops_match_nemo_convention():
    # NeMo 24.07 (measurements row nemo2407_pre_LLAMA2-7B_8): 780 TFLOP/s/GPU at
    # 16,934 tokens/s/GPU => 46.06 GFLOP per token at seq 4096.
    m = load_model("llama2_7b")
    assert float(model_flops_per_token(m, 4096.0)) == pytest.approx(780e12 / 16934, rel=0.005)


def test_model_flops_are_six_active_params_plus_attention():
    m = example_model()
    qk = float(m.d_head)
    want = 6 * float(params_active(m)) + 6 * 32 * 8192 * 32 * 2 * qk
    assert float(model_flops_per_token(m, 8192.0)) == pytest.approx(want, rel=1e-6)


def test_kv_cache_per_token():
    m = example_model()  # Llama 3 8B: 8 KV heads of 128, bf16
    assert float(kv_cache_bytes_per_token(m)) == 2 * 8 * 128 * 2


def test_every_model_field_declares_its_bounds():
    info = field_info(Model)
    leaves = [f for f, v in Model.__dataclass_fields__.items() if v.metadata.get("pytree_node")]
    assert set(leaves) <= set(info)
    assert all(info[f].help for f in leaves)


@pytest.mark.parametrize("name", emu.list_models())
def test_catalog_models_pass_their_bounds(name):
    check(load_model(name), name)


@pytest.mark.parametrize(
    "change,needle",
    [
        (dict(n_layers=jnp.float32(0)), "n_layers must be an integer in"),
        (dict(vocab=jnp.float32(1.5)), "vocab must be an integer"),
        (dict(n_kv_heads=jnp.float32(5)), "n_kv_heads=5 must divide n_heads=32"),
        (dict(n_experts=jnp.float32(8)), "top_k=0 must be between 1 and n_experts=8"),
        (dict(attention="mla"), "needs kv_lora_rank > 0"),
        (dict(ffn="relu"), "unknown ffn 'relu'"),
        (dict(d_head=jnp.float32(0)), "d_head must be"),
    ],
)
def test_bad_models_are_rejected(change, needle):
    with pytest.raises(ValueError, match=needle):
        check(replace(example_model(), **change), "model")


def test_a_sliding_window_needs_its_layers_and_fits_the_model():
    with pytest.raises(ValueError, match="set both"):
        check(replace(example_model(), attention_window=jnp.float32(4096)), "model")
    with pytest.raises(ValueError, match="set both"):
        check(replace(example_model(), window_layers=jnp.float32(8)), "model")
    with pytest.raises(ValueError, match="window_layers=40 must be <= n_layers=32"):
        bad = dict(attention_window=jnp.float32(4096), window_layers=jnp.float32(40))
        check(replace(example_model(), **bad), "model")


def test_causal_pair_fraction_counts_the_pairs_a_window_scores():
    """The scored share of a causal pass of s tokens, against a direct count of the
    (query, key) pairs with key <= query < key + w, layers mixed by window_layers."""
    from emu.workload import attended_context, causal_pair_fraction

    m = example_model()
    assert float(causal_pair_fraction(m, 8192.0)) == pytest.approx(0.5)
    for w, s, local in ((4096, 32768, 32), (128, 4096, 16), (4096, 4096, 32), (8192, 4096, 8)):
        mw = replace(m, attention_window=jnp.float32(w), window_layers=jnp.float32(local))
        pairs = sum(min(i, w) for i in range(1, s + 1)) / s**2  # windowed layers
        want = (local * pairs + (32 - local) * 0.5 * (s + 1) / s) / 32
        assert float(causal_pair_fraction(mw, float(s))) == pytest.approx(want, rel=2e-3)
        # decode: a windowed layer reads at most w cached tokens
        ctx = 10_000.0
        want_ctx = (local * min(ctx, w) + (32 - local) * ctx) / 32
        assert float(attended_context(mw, ctx)) == pytest.approx(want_ctx)
