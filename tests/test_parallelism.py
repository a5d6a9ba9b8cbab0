"""emu.parallelism: what a plan puts on each chip (shapes, parameters, memory)."""

import jax.numpy as jnp
import pytest

from emu import parallelism as par
from emu.plan import make_plan
from emu.struct import replace
from emu.workload import example_model, params_total


def test_plan_names_are_still_importable_from_parallelism():
    from emu import plan

    for name in ("Plan", "make_plan", "validate_plan", "plan_dict", "n_chips", "RECOMPUTE"):
        assert getattr(par, name) is getattr(plan, name)


def test_parameters_split_over_tp_and_pp_add_up(catalog):
    model = catalog["llama70"]
    whole = float(par.params_per_chip(model, make_plan()))
    assert whole == pytest.approx(float(params_total(model)), rel=1e-3)
    tp8 = float(par.params_per_chip(model, make_plan(tp=8)))
    assert tp8 == pytest.approx(whole / 8, rel=1e-3)


def test_local_experts_round_up_for_replicas():
    from emu.catalog import load_model

    moe = load_model("deepseek_v3")  # 256 routed experts
    assert float(par.local_experts(moe, make_plan(ep=8, dp=8))) == 32.0
    uneven = replace(make_plan(), ep=jnp.float32(72.0))
    assert float(par.local_experts(moe, uneven)) == 4.0  # ceil(256 / 72)


def test_train_memory_shards_optimizer_states_with_zero(catalog):
    model, hbm = catalog["llama8"], jnp.float32(80e9)
    z0 = par.memory(model, make_plan(dp=8, zero=0, global_batch=8), hbm)
    z1 = par.memory(model, make_plan(dp=8, zero=1, global_batch=8), hbm)
    assert float(z1.optimizer_bytes) == pytest.approx(float(z0.optimizer_bytes) / 8, rel=1e-6)
    assert float(z1.kv_cache_bytes) == 0.0
    parts = z1.weights_bytes + z1.gradients_bytes + z1.optimizer_bytes + z1.activations_bytes
    assert float(z1.total_bytes) == pytest.approx(float(parts), rel=1e-6)
    assert float(z0.optimizer_bytes) == pytest.approx(
        par.OPTIMIZER_BYTES * float(par.params_per_chip(model, make_plan())), rel=1e-6
    )


def test_kv_cache_is_its_own_field_when_serving():
    m, hbm = example_model(), jnp.float32(80e9)
    plan = make_plan(tp=8, microbatch=16, context=8192, phase="decode", recompute="none")
    mem = par.memory(m, plan, hbm)
    # Llama 3 8B: 8 KV heads over tp=8 -> one head (2 x 128 bf16 elements) per layer per token
    want = 16 * 8192 * 32 * (2 * 128 * 2)
    assert float(mem.kv_cache_bytes) == pytest.approx(want, rel=1e-6)
    assert float(mem.optimizer_bytes) == float(mem.gradients_bytes) == 0.0
    assert par.memory(m, plan, hbm).total_bytes == par.inference_memory(m, plan, hbm).total_bytes


def test_activations_with_full_recompute_keep_only_the_layer_input(catalog):
    model = catalog["llama8"]
    kept, stored = par.activation_bytes_per_layer(model, make_plan(tp=8, recompute="full"))
    assert float(kept) < 0.1 * float(stored)
    kept_sel, _ = par.activation_bytes_per_layer(model, make_plan(tp=8))
    assert float(kept_sel) == float(stored)


def test_a_share_of_layers_recomputed_keeps_that_share_of_inputs_only(catalog):
    """Megatron's block method recomputes N of a stage chunk's layers: recompute_fraction f
    of the layers keep their input only, the rest their full activations."""
    model = catalog["llama8"]
    full, stored = par.activation_bytes_per_layer(model, make_plan(tp=8, recompute="full"))
    for f in (0.1, 0.5):
        kept, _ = par.activation_bytes_per_layer(
            model, make_plan(tp=8, recompute="full", recompute_fraction=f)
        )
        assert float(kept) == pytest.approx(f * float(full) + (1 - f) * float(stored), rel=1e-6)
    with pytest.raises(ValueError, match="needs recompute=full"):
        make_plan(tp=8, recompute="selective", recompute_fraction=0.5)
    with pytest.raises(ValueError, match="recompute_fraction"):
        make_plan(tp=8, recompute="full", recompute_fraction=0.0)


def test_recomputing_the_activation_drops_its_outputs_from_the_stored_bytes(catalog):
    """MindSpeed's --recompute-activation-function: a layer keeps no bf16 FFN activation
    output (the down projection's input: d_ff / tp per token dense; (top_k + n_shared)
    d_ff_e / tp on MoE layers), 2 bytes each; in FP8 training nothing (the down projection
    keeps its own FP8 copy)."""
    from emu.catalog import load_model

    llama8, dsv3 = catalog["llama8"], load_model("deepseek_v3")  # d_ff 14336; 2048, top-8 + 1
    moe_share = 58 / 61  # DeepSeek-V3: 3 dense layers (d_ff 18432) of 61
    widths = {"llama8": 14336 / 4, "dsv3": (1 - moe_share) * 18432 / 4 + moe_share * 9 * 2048 / 4}
    for name, model in (("llama8", llama8), ("dsv3", dsv3)):
        base = make_plan(tp=4, ep=4 if name == "dsv3" else 1, seq_len=4096)
        assert float(par.activation_output_width(model, base)) == pytest.approx(widths[name])
        for prec, left in (("bf16", 2.0), ("fp8", 0.0)):
            plan = replace(base, precision=prec)
            _, s0 = par.activation_bytes_per_layer(model, plan)
            _, s1 = par.activation_bytes_per_layer(
                model, replace(plan, recompute_activation=jnp.float32(1.0))
            )
            assert float(s0) - float(s1) == pytest.approx(4096 * left * widths[name], rel=1e-5)
    with pytest.raises(ValueError, match="recompute_activation"):
        make_plan(phase="decode", recompute_activation=True)


def test_stage_layers_price_the_heaviest_stage():
    from emu.catalog import load_model

    llama405 = load_model("llama3_405b")  # 126 layers, head 128256 x 16384
    # PP16: interior stages of 8 layers; first and last give up the 2 missing (7 each); one
    # layer (3.2e9 params) outweighs the head (2.1e9), so an interior stage is the heaviest
    layers, head = par.stage_layers(llama405, make_plan(pp=16))
    assert (float(layers), float(head)) == (8.0, 0.0)
    assert float(par.full_stage_layers(llama405, make_plan(pp=16))) == 8.0
    # even splits: the last stage, with the head, as before
    layers, head = par.stage_layers(llama405, make_plan(pp=2))
    assert (float(layers), float(head)) == (63.0, 1.0)
    small = example_model()  # 32 layers, head 128256 x 4096 outweighs a layer
    layers, head = par.stage_layers(small, make_plan(pp=3))  # 11 + 11 + 10
    assert (float(layers), float(head)) == (10.0, 1.0)
    assert float(par.full_stage_layers(small, make_plan(pp=3))) == 11.0
    # interleaved: pp * vpp chunks of ceil(L / (pp vpp)) layers
    assert float(par.full_stage_layers(llama405, make_plan(pp=8, vpp=2))) == 16.0


def test_redundant_expert_slots_share_the_routed_load():
    from emu.catalog import load_model

    moe = load_model("deepseek_v3")  # 256 routed experts, top-8
    t = jnp.float32(4096.0)
    flops = {}
    for ep in (64, 72, 320):
        plan = replace(make_plan(dp=ep, ep=ep), moe_imbalance=jnp.float32(1.0))
        slots = float(par.expert_slots(moe, plan))
        assert slots == ep * float(par.local_experts(moe, plan)) >= 256
        m, n, k, c = par.moe_matmuls(moe, plan, t)["expert_out"]
        flops[ep] = float(2 * m * n * k * c)
    # every rank computes its fair share T K of the routed tokens, replicas or not
    assert flops[72] == pytest.approx(flops[64], rel=1e-5)
    assert flops[320] == pytest.approx(flops[64], rel=1e-5)
    # and holds the weights of all its slots, replicas included
    dense72, expert72 = par.params_split_per_chip(moe, make_plan(dp=72, ep=72))
    _, expert64 = par.params_split_per_chip(moe, make_plan(dp=64, ep=64))
    assert float(expert72) == pytest.approx(float(expert64), rel=1e-6)  # 4 slots each


def test_speculation_reads_the_mtp_case_and_the_draft_knobs():
    from emu.catalog import load_model

    ds, dense = load_model("deepseek_v3"), example_model()
    k, a = par.speculation(ds, make_plan(phase="decode", mtp_accept=0.7))
    assert (float(k), float(a)) == pytest.approx((1.0, 1.7))
    k, a = par.speculation(ds, make_plan(phase="decode", draft_tokens=3, accept_len=2.5))
    assert (float(k), float(a)) == pytest.approx((3.0, 2.5))
    k, a = par.speculation(dense, make_plan(phase="decode"))
    assert (float(k), float(a)) == (0.0, 1.0)


def test_fp8_training_keeps_one_byte_per_linear_input_element():
    """Transformer Engine saves the FP8 cast of a linear layer's input
    (`fp8_linear_input_saving`): FP8 activations are the bf16 ones less one byte per such
    element, counted by hand for Llama 3 8B (dense), Mixtral 8x7B (MoE, no shared expert)
    and DeepSeek-V3 (MLA, a shared expert); other precisions save nothing."""
    from emu.catalog import load_model

    plan = dict(tp=4, sp=True, global_batch=8, seq_len=4096)
    t = 4096.0

    def saved(model, **kw):
        _, bf16 = par.activation_bytes_per_layer(model, make_plan(**plan, **kw))
        _, fp8 = par.activation_bytes_per_layer(model, make_plan(**plan, **kw, precision="fp8"))
        assert 0.0 < float(fp8) < float(bf16)
        return float(bf16) - float(fp8)

    dense = example_model()  # Llama 3 8B: d 4096, d_ff 14336
    # the QKV and FFN normalised inputs (sequence-parallel over 4), the down-projection input
    assert saved(dense) == pytest.approx(t * (2 * 4096 / 4 + 14336 / 4), rel=1e-5)
    assert float(par.fp8_linear_input_saving(dense, make_plan(**plan))) == 0.0
    # every layer MoE: the QKV input, and per routed copy (top-2) the expert's input and
    # down-projection input; the router keeps the bf16 FFN input
    mixtral = load_model("mixtral_8x7b")  # d 4096, d_ff_e 14336
    assert saved(mixtral, ep=2) == pytest.approx(t * (4096 / 4 + 2 * (4096 + 14336) / 4), rel=1e-5)
    # MLA: no QKV saving; 3 dense layers of 61, the MoE ones with top-8 copies and one
    # shared expert (its down-projection input saved, an FP8 copy of its input added)
    v3 = load_model("deepseek_v3")  # d 7168, d_ff 18432, d_ff_e 2048
    f = 58 / 61
    moe = (8 * (7168 + 2048) + 2048 - 7168) / 4
    want = t * ((1 - f) * (7168 / 4 + 18432 / 4) + f * moe)
    assert saved(v3, ep=8) == pytest.approx(want, rel=1e-4)
    # without sequence parallelism the normalised inputs are whole on every TP rank: the
    # QKV/FFN ones saved whole, and the shared expert's added copy is d, not d / tp
    # (Megatron itself requires SP for MoE with TP; emu's plans allow it)
    plan["sp"] = False
    moe = (8 * (7168 + 2048) + 2048) / 4 - 7168
    want = t * ((1 - f) * (7168 + 18432 / 4) + f * moe)
    assert saved(v3, ep=8) == pytest.approx(want, rel=1e-4)
    assert saved(dense) == pytest.approx(t * (2 * 4096 + 14336 / 4), rel=1e-5)


def test_pipeline_peak_is_the_larger_of_the_first_and_last_stage():
    """The first stage holds min(pp, n_mb) micro-batches (interleaved: x (1 + (pp-1)/(pp
    vpp))); the last one (((vpp - 1) pp + 1) / vpp chunks) plus the fp32 logits; the
    activations are the larger, not the first stage's plus the logits."""
    m, hbm = example_model(), jnp.float32(1e15)
    for vpp in (1, 2):
        p = make_plan(tp=1, pp=4, vpp=vpp, sp=False, global_batch=32, seq_len=4096)
        _, per_layer = par.activation_bytes_per_layer(m, p)
        layers = float(par.full_stage_layers(m, p))  # 8 of the 32 layers
        logits = 4096 * 128256 * 4.0
        first = 4 * (1 + 3 / (4 * vpp)) if vpp > 1 else 4.0
        last = ((vpp - 1) * 4 + 1) / vpp
        want = max(layers * float(per_layer) * first, layers * float(per_layer) * last + logits)
        got = float(par.memory(m, p, hbm).activations_bytes)
        assert got == pytest.approx(want, rel=1e-5)
        assert got < layers * float(per_layer) * first + logits
    # a vocabulary large enough that the last stage (((vpp - 1) pp + 1) / vpp = 2.5
    # micro-batches, plus the logits) outweighs the first (4 x (1 + 3/8) = 5.5)
    big = replace(m, vocab=jnp.float32(2e6))
    p = make_plan(tp=1, pp=4, vpp=2, sp=False, global_batch=32, seq_len=4096)
    _, per_layer = par.activation_bytes_per_layer(big, p)
    logits = 4096 * 2e6 * 4.0
    assert 8 * float(per_layer) * 2.5 + logits > 8 * float(per_layer) * 5.5
    got = float(par.memory(big, p, hbm).activations_bytes)
    assert got == pytest.approx(8 * float(per_layer) * 2.5 + logits, rel=1e-5)
    # fewer micro-batches than stages: each stage holds what it has, the last one of them
    p = make_plan(tp=1, pp=8, sp=False, global_batch=1, seq_len=4096)
    _, per_layer = par.activation_bytes_per_layer(m, p)
    want = 4 * float(per_layer) + 4096 * 128256 * 4.0  # 4 layers per stage, one micro-batch
    assert float(par.memory(m, p, hbm).activations_bytes) == pytest.approx(want, rel=1e-5)
    # one stage: the whole model's micro-batch plus its logits
    p = make_plan(tp=1, pp=1, sp=False, global_batch=32, seq_len=4096)
    _, per_layer = par.activation_bytes_per_layer(m, p)
    want = 32 * float(per_layer) + 4096 * 128256 * 4.0
    assert float(par.memory(m, p, hbm).activations_bytes) == pytest.approx(want, rel=1e-5)
