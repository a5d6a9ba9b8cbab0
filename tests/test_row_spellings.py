"""Rows as other curators write them (a red-team pass, session 36): the hidden rows that judge
emu come from other sources, so a spelling MEASUREMENTS.md allows, or a reasonable one it
does not list, must be read as meant (or refused in one line saying what to change), never
misread in silence. Each case here was misread or refused before."""

import pytest

from emu import validation as V
from emu.validation._collectives import message_size

ROWS = {r["id"]: r for r in V.read_rows(V.default_measurements())[0]}


def row(rid: str, **changes) -> dict:
    return {**ROWS[rid], **changes}


def one(r: dict) -> dict:
    return V.validate_rows([r])[0]


@pytest.mark.parametrize(
    ("rid", "notes", "size"),
    [
        # an id closing in a rank count was read as a 1,024-byte message: the notes come first
        ("gb200_128gpu_allreduce_1024", "busbw at size 1073741824 B", 2**30),
        ("x", "Out-of-place busbw at 128 MiB", 2**27),
        ("x", "size 134217728 bytes (in-place within 1%)", 2**27),
        ("x", "all_reduce_perf -b 1G -e 1G -f 2 -g 1", 2**30),
        ("x", "size: 1 GiB", 2**30),
    ],
)
def test_a_message_size_in_the_notes_is_read(rid, notes, size):
    """These were "message size not stated: 4 GB assumed" (the rows predicted 12-19% off)."""
    assert message_size({"id": rid, "notes": notes}) == (size, None)


def test_a_sweep_a_rate_or_a_memory_is_not_a_message_size():
    for notes in ("all_reduce_perf -b 8 -e 8G -f 2", "480 GB/s at 8 GPUs", "A100-80GB nodes",
                  "HBM at 80 GB each", "memory size: 80 GB", "chunk size 4 MB",
                  "256 bytes per element"):  # fmt: skip
        assert message_size({"id": "x", "notes": notes})[1] is not None  # the default, said
    # the message named as such wins over another size the notes give
    for notes in ("HBM at 80 GB each; 1GB messages", "at 2 MB chunk size, 1 GB messages"):
        assert message_size({"id": "x", "notes": notes}) == (1e9, None)


@pytest.mark.parametrize(
    "speed",
    [
        "20-22 tokens/s per user",
        "21 tokens/s per user",
        "20\u201322 tokens/s per user",
        "21 tok/s per user",
        "21 tokens/s/user",
        "20 to 22 output tokens per second per user",
        "21.0 tokens/s per user",
    ],
)
def test_a_per_user_speed_is_the_decode_slo_however_spelled(speed):
    """Only "20-22 tokens/s per user" was read; the others left the batch at the largest that
    fits (+36% on DeepSeek's decode row), silently."""
    base = one(ROWS["ds_infer_decode"])
    notes = ROWS["ds_infer_decode"]["notes"].replace("20-22 tokens/s per user", speed)
    got = one(row("ds_infer_decode", notes=notes))
    assert got["status"] == "ok" and got["predicted"] == pytest.approx(base["predicted"])


def test_a_per_user_speed_with_a_thousands_separator_is_read_whole():
    from emu.validation._plans import per_user_slo

    assert per_user_slo("1,000 tokens/s per user") == pytest.approx(1e-3)  # it read "000"


def test_a_degree_named_in_its_value_is_read_only_under_its_own_name():
    """ "EP72" as the ep is 72; "EP8" given as the tp names another degree: not stated, and
    said (a 2-3 letter prefix of any kind was read as the number before the review)."""
    rid = "sglang_h100_decode_2k"
    par = ROWS[rid]["parallel"]
    base = one(ROWS[rid])
    got = one(row(rid, parallel={**par, "ep": "EP72", "dp": "dp=72"}))
    assert got["predicted"] == pytest.approx(base["predicted"])
    got = one(row("sc21_t1_1.7B", parallel={**ROWS["sc21_t1_1.7B"]["parallel"], "tp": "EP8"}))
    assert any(a.startswith("parallel.tp 'EP8' is not a whole number") for a in got["approximates"])


def test_a_decode_batch_per_device_in_the_notes_is_read_and_a_largest_batch_is_said():
    """ "batch size per GPU: 256" was not read (the largest batch that fits was taken, -29%),
    and that assumption was not in `approximates`."""
    par = {**ROWS["sglang_h100_decode_2k"]["parallel"], "microbatch": None}
    notes = ROWS["sglang_h100_decode_2k"]["notes"]
    assert "batch 256 per device" in notes  # the spelling read before
    base = one(row("sglang_h100_decode_2k", parallel=par))
    for said in ("batch size per GPU: 256", "256 requests per GPU"):
        got = one(row("sglang_h100_decode_2k", parallel=par,
                      notes=notes.replace("batch 256 per device", said)))  # fmt: skip
        assert got["status"] == "ok" and got["predicted"] == pytest.approx(base["predicted"])
    got = one(row("sglang_h100_decode_2k", parallel=par,
                  notes=notes.replace("batch 256 per device", "")))  # fmt: skip
    assert got["predicted"] != pytest.approx(base["predicted"])
    assert any(a.startswith("decode batch not stated: the largest") for a in got["approximates"])


def test_moe_blocks_with_other_spellings_or_none():
    """HF-style moe keys were ignored (shared experts silently 0), a moe of `true` or a string
    gave "'bool' object has no attribute 'get'", `{}` and a missing block on a catalog MoE
    model's name modelled a dense model (1.7x) without a word."""
    rid = "mbridge_25.11_DGX-H100_Qwen3_30B_a3B_FP8-CS_16_pretrain"
    base = one(ROWS[rid])
    model = ROWS[rid]["model"]
    hf = {"num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768,
          "n_shared_experts": 0}  # fmt: skip
    got = one(row(rid, model={**model, "moe": hf}))
    assert got["status"] == "ok" and got["predicted"] == pytest.approx(base["predicted"])
    got = one(row(rid, model={**model, "moe": None}))
    assert got["predicted"] == pytest.approx(base["predicted"])
    assert "model.moe not stated: the catalog qwen3_30b_a3b's experts" in got["approximates"]
    for bad, said in ((True, "model.moe must be a JSON object"), ({}, "model.moe must be a"),
                      ({"experts": 8}, "model.moe has an unknown field 'experts'"),
                      ({**hf, "top_k": 8}, "model.moe gives top_k twice")):  # fmt: skip
        got = one(row(rid, model={**model, "moe": bad}))
        assert got["status"] == "error" and said in got["reason"], got["reason"]


def test_units_precisions_systems_and_kinds_as_other_sources_spell_them():
    cases = [
        ("mindspeed_mfu_llama2_7b", dict(value=0.69, unit=None)),  # an MFU as a fraction
        ("sglang_h100_decode_2k", dict(system="DGX-H100")),  # was "unknown system"
        ("sc21_t1_1.7B", dict(kind="Pre-training")),
        ("trtllm_perf_dgx_h100_llama33_70b_tp2_fp8_1000_1000", dict(unit="tokens/GPU/s")),
        ("trtllm_perf_dgx_h100_llama33_70b_tp2_fp8_1000_1000", dict(unit="output tokens/s/GPU")),
        ("trtllm_perf_dgx_h100_llama33_70b_tp2_fp8_1000_1000", dict(precision="fp8_e4m3fn")),
        ("sglang_a3_dsr1_mixed_8c_2k_2k_50ms", dict(precision="W8A8-dynamic")),
    ]
    for rid, change in cases:
        base, got = one(ROWS[rid]), one(row(rid, **change))
        assert got["status"] == "ok", (rid, change, got["reason"])
        assert got["predicted"] == pytest.approx(base["predicted"]), (rid, change)
    got = one(row("mindspeed_mfu_llama2_7b", value=0.69, unit=None))
    assert got["measured"] == pytest.approx(69.0)
    assert "stated as 0.69 (no unit: a fraction): 69 %" in got["approximates"]
    dgx = ROWS["dgxc_nccl_h100_8gpu_allreduce_134217728"]
    got = one({**dgx, "value": dgx["value"] * 1e9 / 2**30, "unit": "GiB/s"})
    assert got["measured"] == pytest.approx(dgx["value"])
    got = one(row("sc21_t1_1.7B", precision=None, notes=""))  # (its notes say FP16)
    assert "precision not stated: bf16 assumed" in got["approximates"]


def test_a_serving_row_in_a_precision_the_chip_lacks_is_refused():
    """A decode row predicted by the serving rule ran FP4 on an H100 at 2.1x the FP8 row's
    rate; train and prefill rows were already refused."""
    rid = "trtllm_perf_dgx_h100_llama33_70b_tp2_fp8_1000_1000"
    got = one(row(rid, precision="fp4"))
    assert got["status"] == "error" and "has no fp4 support" in got["reason"]


def test_unmodelled_metrics_name_the_modelled_ones():
    got = one(row("dgxc_nccl_h100_8gpu_allreduce_134217728", metric="busbw"))
    assert got["status"] == "skipped" and "modelled: allreduce_busbw" in got["reason"]
    got = one(row("sc21_t1_1.7B", metric="MFU"))
    assert "train metric 'MFU' is not modelled yet; modelled: " in got["reason"]
    assert "mfu" in got["reason"]


def test_a_stated_dp_the_ranks_overrule_is_said():
    """dp is n_chips / (tp pp cp); a row whose dp disagrees (NeMo's long-sequence B200 table
    is internally inconsistent, its notes say) had its dp replaced without a word."""
    got = one(ROWS["nemo_ls_b200_llama3_8b_16k"])
    assert (
        "parallel.dp 4 at tp 1, pp 1, cp 1 is not the row's 16 ranks: dp 16 used"
        in (got["approximates"])
    )


def test_a_prefill_rows_prompt_is_its_seq_len_and_the_defaults_are_said():
    """A prefill row's `model.seq_len` is its prompt: Pangu Pro MoE's prefill row ("sequence
    length of 2k", seq_len 2048) ran a 4,096-token prompt; a row stating neither takes
    the default and says so, as it takes the default prompt tokens per rank."""
    from emu.validation._plans import prefill_shape

    pangu = ROWS["pangu_pro_moe_800ia2_prefill"]
    assert prefill_shape(pangu)[:2] == (2048, 2) and prefill_shape(pangu)[2] == []
    said = one(ROWS["ds_infer_prefill"])["approximates"]
    assert "prompt length not stated: 4,096 tokens assumed" in said
    assert any(a.startswith("prefill batch not stated: 16,384 prompt tokens") for a in said)


def test_a_deployment_or_a_model_name_left_out_is_said():
    """A decode row with `parallel: null` took the serving rule's deployment, and a model
    without a name a GELU MLP with tied embeddings, without a word (+18% on a Llama row)."""
    rid = "sglang_h100_decode_2k"
    got = one(row(rid, parallel=None))
    assert (
        "deployment not stated: emu's serving rule (tp1 dp72 ep72, batch 256 per DP rank)"
        in (got["approximates"])
    )
    model = {**ROWS["sc21_t1_1.7B"]["model"], "name": None}
    got = one(row("sc21_t1_1.7B", model=model))
    assert any(a.startswith("model.name not stated: a GELU MLP") for a in got["approximates"])
