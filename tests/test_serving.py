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
