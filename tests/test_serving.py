"""emu.serving: a disaggregated prefill + decode deployment."""

import pytest

from emu.parallelism import make_plan
from emu.serving import disaggregated


def test_the_slower_side_sets_the_rate(catalog):
    sys, model = catalog["h100"], catalog["llama70"]
    pre = make_plan(tp=8, dp=2, microbatch=1, seq_len=4096, phase="prefill", recompute="none")
    dec = make_plan(tp=8, dp=2, microbatch=64, context=4096, phase="decode", recompute="none")
    r = disaggregated(sys, model, pre, dec, prompt_len=4096.0, output_len=512.0)
    pre_rps = float(r.prefill.tokens_per_s) / 4096
    dec_rps = float(r.decode.tokens_per_s) / 512
    assert float(r.requests_per_s) == pytest.approx(min(pre_rps, dec_rps), rel=1e-6)
    assert max(float(r.prefill_utilisation), float(r.decode_utilisation)) == pytest.approx(1.0)
    assert float(r.n_chips) == 32
    assert float(r.tokens_per_joule) == pytest.approx(
        float(r.tokens_per_s) / float(r.power_w), rel=1e-6
    )
    assert float(r.ttft_s) == float(r.prefill.ttft_s) and float(r.tpot_s) == float(r.decode.tpot_s)


@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_serving_exposes_every_tp_all_reduce_while_training_hides_a_share(catalog, phase):
    """Serving engines run each TP all-reduce between the layer's GEMMs (step.SERVING_TP_OVERLAP
    = 0); the fitted overlap.tp is Megatron's training-time TP overlap and moves only
    training steps."""
    import jax.numpy as jnp

    from emu import step
    from emu.objective import evaluate
    from emu.struct import replace

    sys, model = catalog["h100"], catalog["llama70"]
    assert step.SERVING_TP_OVERLAP == 0.0
    kw = dict(tp=8, dp=1, microbatch=8, seq_len=2048, context=2048, recompute="none")
    serve = make_plan(**kw, phase=phase)
    train = make_plan(tp=8, dp=1, microbatch=1, global_batch=8, seq_len=2048)
    hidden = replace(sys, overlap=replace(sys.overlap, tp=jnp.float32(0.9)))
    none = replace(sys, overlap=replace(sys.overlap, tp=jnp.float32(0.0)))
    b = evaluate(hidden, model, serve).breakdown
    assert float(b.tp_comm_s) > 0 and float(b.exposed_comm_s) == pytest.approx(
        float(b.tp_comm_s), rel=1e-6
    )
    assert float(evaluate(none, model, serve).step_time_s) == float(
        evaluate(hidden, model, serve).step_time_s
    )
    assert float(evaluate(none, model, train).step_time_s) > float(
        evaluate(hidden, model, train).step_time_s
    )


def test_disaggregated_decode_exposes_the_attention_ranks_tp_all_reduces():
    """Attention/expert disaggregation (expert_ranks > 0) keeps the attention ranks' TP
    all-reduces exposed in full as well: overlap.tp does not move the step, and the exposed
    communication holds all of them beside the (fully exposed) dispatch and combine."""
    import jax.numpy as jnp

    from emu.catalog import load_model, load_system
    from emu.objective import evaluate
    from emu.struct import replace

    sys, model = load_system("gb200_nvl72"), load_model("deepseek_r1")
    plan = make_plan(
        tp=2, dp=16, ep=32, expert_ranks=32, microbatch=16, context=2048, seq_len=2048,
        phase="decode", recompute="none", precision="fp8",
    )  # fmt: skip
    out = []
    for tp_overlap in (0.0, 0.9):
        s = replace(sys, overlap=replace(sys.overlap, tp=jnp.float32(tp_overlap)))
        out.append(evaluate(s, model, plan))
    assert float(out[0].step_time_s) == float(out[1].step_time_s)
    b = out[1].breakdown
    assert float(b.tp_comm_s) > 0
    assert float(b.exposed_comm_s) == pytest.approx(
        float(b.tp_comm_s + b.dispatch_s + b.combine_s + b.pp_comm_s), rel=1e-5
    )
