"""Rows as other curators write them (a red-team pass, session 36): the hidden rows that judge
emu come from other sources, so a spelling MEASUREMENTS.md allows, or a reasonable one it
does not list, must be read as meant (or refused in one line saying what to change), never
misread in silence. Each case here was misread or refused before."""

import re

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
                      # the same field twice with two values (the same value twice is read)
                      ({**hf, "top_k": 4}, "model.moe gives top_k twice")):  # fmt: skip
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


# --- Session 37: rows transcribed by read-only helpers from sources outside the set (the
# CloudMatrix-Infer paper, SGLang's GB200 blogs, TensorRT-LLM's DeepSeek-R1 guide, DeepEP V2,
# UCCL-EP, torchtitan, OPT); each case below was misread in their first pass.


def _decode(rid="sglang_h100_decode_2k", notes=None, **changes):
    base = ROWS[rid]
    return {**base, **changes, "notes": base["notes"] if notes is None else notes}


@pytest.mark.parametrize(
    ("notes", "lengths"),
    [
        ("TPOT SLO 50 ms | prompt 1024 | output 1024 | batch 128", (1024, 1024)),
        ("'Batch = 1, ISL = 1K, OSL = 2K, num_requests = 10'", (1024, 2048)),
        ("Workload ISL 128K / OSL 8K", (131072, 8192)),
        ("ISL/OSL 1024/2048", (1024, 2048)),
        ("input 6000, output 1600", (6000, 1600)),
        ("for 2,000-token input lengths", (2000, None)),
    ],
)
def test_prompt_and_output_lengths_as_other_sources_write_them(notes, lengths):
    from emu.validation._plans import lengths as read

    assert read({"id": "x", "notes": notes}) == lengths


def test_a_decode_row_with_a_batch_and_no_lengths_reads_its_context_from_seq_len():
    """CloudMatrix-Infer's rows were decoded at a 4,096-token context whatever their
    seq_len; a row's KV length, then its lengths, still come first."""
    from emu.validation._plans import _context

    def context(notes, seq=2000):
        r = _decode(notes=notes, model={**ROWS["sglang_h100_decode_2k"]["model"], "seq_len": seq})
        return _context(r, notes.lower())

    assert context("batch 256 per device") == 2000  # seq_len
    assert context("kv cache length 3,000") == 3000
    assert context("prompt 1024 | output 1024") == 1536  # prompt + output / 2
    assert context("batch 256 per device", seq=None) == 4096  # DEFAULT_PROMPT


@pytest.mark.parametrize(
    "notes",
    ["no MTP ('other bars do not enable MTP')", "MTP disabled", "without MTP", "MTP is off"],
)
def test_a_row_that_turns_mtp_off_runs_no_drafts(notes):
    """ "do not enable MTP" matched "enable mtp": one draft at 70% acceptance."""
    from emu.validation._plans import _mtp_accept, speculation

    model = V.row_model(ROWS["sglang_h100_decode_2k"])
    assert speculation(notes.lower(), model) == (0.0, 1.0)
    assert _mtp_accept(notes.lower()) == 0.0
    assert speculation("with mtp", model) == (1.0, 1.7)  # still read where it is on


def test_a_training_row_that_turns_mtp_off_has_no_mtp_block():
    r = ROWS["mbridge_25.11_DGX-B200_DeepSeekV3_w_MTP_FP8-MX_256_pretrain"]
    on = V.row_model(r)
    off = V.row_model({**r, "notes": r["notes"] + " MTP disabled."})
    assert float(on.mtp_layers) > 0 and float(off.mtp_layers) == 0


def test_nextn_predict_layers_are_a_chain_of_drafts_on_a_batch_row_too():
    """TensorRT-LLM's "num_nextn_predict_layers 3" was one MTP draft (the batch path read
    only "MTP"); now three, as the serving rule reads "3 steps"."""
    r = _decode(notes=ROWS["sglang_h100_decode_2k"]["notes"].replace(
        "no MTP", "MTP with num_nextn_predict_layers 3 (acceptance not stated)"))  # fmt: skip
    plan = V.row_plan(r, V.row_model(r))[0]
    assert float(plan.draft_tokens) == 3 and float(plan.accept_len) == pytest.approx(2.533, 1e-3)


@pytest.mark.parametrize(
    ("notes", "kv"),
    [
        ("FP8 KV cache/attention, NVFP4 MoE", "fp8"),
        ("BF16/FP16 KV cache", "bf16"),
        ("kv_cache_dtype fp8; CUDA graphs", "fp8"),
        ("NVFP4 MoE; attention/KV BF16 in min-latency recipe", "bf16"),
        ("KV cache in INT8", "fp8"),  # one byte per element
        ("kv_cache_free_gpu_mem_fraction 0.93", None),  # not a format: the stack's default
    ],
)
def test_a_kv_cache_format_the_notes_state_is_used(notes, kv):
    """The KV format followed the stack alone (TensorRT-LLM at FP8/FP4: fp8, else bf16)."""
    from emu.validation._plans import kv_precision

    trt = {"id": "trtllm_x", "precision": "fp4", "notes": notes}
    assert kv_precision(trt) == (kv or "fp8")
    assert kv_precision({**trt, "id": "sglang_x"}) == (kv or "bf16")


@pytest.mark.parametrize(
    ("notes", "separated"),
    [
        ("PD separation, 2 prefill nodes", True),
        ("PD disaggregated (Dynamo)", True),
        ("P/D disaggregation over RDMA", True),
        ("prefill-decode disaggregation", True),
        ("disaggregated prefill on 4 nodes", True),
        ("PD mixed on 8 cards", False),
        ("attention/expert disaggregation (768 dies)", False),
        ("no PD disaggregation", False),
    ],
)
def test_pd_separation_as_other_sources_write_it(notes, separated):
    """Only "pd separation" was read; "PD disaggregated" rows ran as PD mixed (SGLang's
    GB200 decode row: 2,000-token prefills on its decode GPUs, -90%)."""
    from emu.validation._plans import pd_separated

    assert pd_separated(notes.lower()) is separated


def test_a_separated_row_whose_chips_are_all_decode_ranks_is_its_decode_rate():
    """DP48 EP48 on its 48 chips, "PD disaggregated": the prefill instance's cards are not
    in the row. It was an error ("PD separation leaves no cards ...") or, spelled
    "disaggregated", a PD-mixed deployment; now the decode instance alone, and said."""
    base = ROWS["sglang_h100_decode_2k"]
    r = {**base, "n_chips": 72, "parallel": {**base["parallel"], "microbatch": None},
         "notes": "PD disaggregated; decode-only throughput per decode GPU; no MTP; "
                  "batch 256 per device; input 2000, output 100."}  # fmt: skip
    got = one(r)
    assert got["status"] == "ok", got
    assert any("decode instance's" in a for a in got["approximates"])
    assert got["predicted"] == pytest.approx(one(base)["predicted"], rel=0.05)


def test_an_offline_row_with_a_batch_counts_its_prefills():
    """A stated batch in an offline run where prefill and decode share the GPUs took the
    decode rate alone (+31-33% on TensorRT-LLM's max-throughput rows); its lengths now make
    it a PD-mixed deployment."""
    from emu.validation._plans import needs_serving_rule

    r = _decode(notes="Offline max throughput, prefill+decode interleaved; "
                      "ISL = 1K, OSL = 2K; no MTP")  # fmt: skip
    assert needs_serving_rule(r)
    assert not needs_serving_rule(_decode(notes="ISL = 1K, OSL = 2K; no MTP"))
    mixed, alone = one(r), one(_decode(notes="ISL = 1K, OSL = 2K; no MTP"))
    assert mixed["status"] == alone["status"] == "ok"
    assert mixed["predicted"] < alone["predicted"]


def test_tensorrt_llm_splits_the_experts_over_its_whole_tp_group():
    """--tp 8 --ep 2 is EP2 x expert-TP4 on TensorRT-LLM (moe_tp x moe_ep = tp); emu held
    half of the experts unsplit on each GPU (166 GB of 148 on an H200)."""
    from emu.validation._plans import expert_tp

    assert expert_tp({"id": "trtllm_x"}, "", 8, 2) == 4
    assert expert_tp({"id": "sglang_x"}, "", 8, 2) == 1
    assert expert_tp({"id": "x"}, "moe tp4xep2", 8, 2) == 4
    assert expert_tp({"id": "x"}, "etp2 ", 8, 4) == 2


def test_a_prefill_batch_that_does_not_divide_is_whole_sequences():
    """16,384 tokens per rank over a 2,000-token prompt was 8.192 sequences: an error."""
    base = ROWS["dsprofile_prefill"]
    r = {**base, "notes": "input length 2,000", "model": {**base["model"], "seq_len": 2000}}
    got = one(r)
    assert got["status"] == "ok", got
    assert any("(8 sequences)" in a for a in got["approximates"])


def test_a_training_batch_written_in_tokens_is_read():
    """OPT's "batch 2M tokens" (1,024 x 2,048) took the plan rule's 5M-token default."""
    from emu.validation._plans import global_batch_of

    base = ROWS["sc21_t1_1.7B"]
    r = {**base, "parallel": {**base["parallel"], "global_batch": None},
         "model": {**base["model"], "seq_len": 2048},
         "notes": "batch 2M tokens, seq 2048"}  # fmt: skip
    n, said = global_batch_of(r)
    assert n == 1024 and "batch in tokens" in said
    assert global_batch_of({**r, "notes": "global batch size of 4M tokens"})[0] == 2048


@pytest.mark.parametrize(
    ("metric", "notes", "tokens", "hidden", "dedup"),
    [
        # "8K" was missed (4,096 assumed) and "7168 hidden," was not a hidden size
        ("moe_dispatch_bandwidth", "we tested with 8K tokens per batch, hidden 7168", 8192,
         7168, 1.0),
        ("moe_dispatch_bandwidth", "4096 tokens per rank, 4096 hidden, top-8", 4096, 4096, 1.0),
        # a latency of the normal kernels was read as a low-latency kernel (one copy per
        # routed expert), also through "not a low-latency kernel"
        ("moe_dispatch_latency", "one UCCL-EP normal (high-throughput) dispatch kernel, not a "
         "low-latency kernel; 128 tokens per rank, 7168 hidden", 128, 7168, 1.0),
        ("moe_dispatch_latency", "low-latency kernel, 128 tokens per rank, hidden 7168", 128,
         7168, 0.0),
    ],
)  # fmt: skip
def test_dispatch_rows_read_tokens_hidden_size_and_kernel(metric, notes, tokens, hidden, dedup):
    from emu.validation._collectives import moe_comm_setup

    base = ROWS["deepep_v1_ll_dispatch_ep8"]
    s = moe_comm_setup({**base, "id": "x", "metric": metric, "notes": notes}, None)
    ref = moe_comm_setup({**base, "notes": "hidden 7168"}, None)
    assert s["tokens"] == tokens and s["dedup"] == dedup
    assert s["token_bytes"] == pytest.approx(ref["token_bytes"] * hidden / 7168)
    assert not any("hidden size" in a for a in s["assumed"])


def test_nccl_picking_ring_is_the_ring_algorithm():
    from emu.validation._collectives import allreduce_algorithm

    r = {
        "id": "x",
        "metric": "allreduce_busbw",
        "notes": "NCCL does not select NVLS at 4 GPUs and picks Ring",
    }
    assert allreduce_algorithm(r) == "ring"
    assert allreduce_algorithm({**r, "notes": "NCCL default"}) == "hierarchical"
    small = "NCCL uses Ring/LL up to 1MiB and NVLS/SIMPLE from 2MiB up"
    assert allreduce_algorithm({**r, "notes": small}) == "hierarchical"


@pytest.mark.parametrize(
    ("notes", "spec"),
    [
        # a quoted accept length of another run does not turn speculation on
        ("Without MTP. (The MTP3 run's accept length was 2.82.)", (0.0, 1.0)),
        ("No speculative decoding in this row; accept length 2.9 elsewhere", (0.0, 1.0)),
        ("no MTP; EAGLE3 3 steps, accept length 2.5", (3.0, 2.5)),  # a draft model
        ("MTP3, acceptance rate ~3.06", (3.0, 3.06)),
        ("Eagle3 with max_draft_len 3", (3.0, 1.0 + 0.7 + 0.49 + 0.343)),
        ("accept 2.86.", (3.0, 2.86)),  # a full stop is not a digit
        ("with MTP at an acceptance rate of 90%", (1.0, 1.7)),  # a percentage is no length
    ],
)
def test_speculation_as_other_sources_write_it(notes, spec):
    from emu.validation._plans import speculation

    model = V.row_model(ROWS["sglang_h100_decode_2k"])
    k, acc = speculation(notes.lower(), model)
    assert (k, acc) == pytest.approx(spec)


def test_a_prompt_length_in_k_is_read_whole():
    """ "Input length 128k" was a 128-token prompt."""
    from emu.validation._plans import lengths, prefill_shape

    base = ROWS["dsprofile_prefill"]
    assert prefill_shape({**base, "notes": "Input length 128k"})[0] == 131072
    assert lengths({"id": "x", "notes": "input length 128k"}) == (131072, None)


def test_experts_without_expert_parallelism_are_split_over_tp_when_serving():
    """SGLang's TP8 EP1 held every expert on every GPU in serving (663 GB of 148); Megatron's
    rule (DEFAULT_ETP_WITHOUT_EP) now applies to serving plans too."""
    from emu.validation._plans import expert_tp

    assert expert_tp({"id": "sglang_x"}, "", 8, 1) == 8
    r = _decode(parallel={**ROWS["sglang_h100_decode_2k"]["parallel"], "tp": 8, "dp": 9,
                          "ep": 1})  # fmt: skip
    assert float(V.row_plan(r, V.row_model(r))[0].etp) == 8


def test_static_batch_runs_and_named_shared_gpus_count_their_prefills():
    from emu.validation._plans import needs_serving_rule

    for notes in ("static-batch throughput benchmark; input 2048, output 128",
                  "prefill and decode share the 8 GPUs; ISL = 1K, OSL = 1K"):  # fmt: skip
        assert needs_serving_rule(_decode(notes=notes)), notes
    # the shipped SGLang rows' boilerplate is not a count of GPUs: they keep their reading
    assert not needs_serving_rule(
        _decode(notes="prefill and decode share the cards; ISL 1K OSL 1K")
    )


def test_fsdp2_and_a_fake_balanced_gate_are_read():
    from emu.validation._plans import _moe_settings, _zero

    assert _zero("FSDP2 (sharding degree 8)") == 3
    r = ROWS["mbridge_25.11_DGX-B200_Qwen3_235B_a22B_FP8-MX_64_pretrain"]
    model = V.row_model(r)
    assert _moe_settings(r, model, 1, "fake balanced gate")[3] == 1.0
    assert _moe_settings(r, model, 1, "")[3] > 1.0


def test_the_out_of_sample_rows_are_well_formed_and_cite_their_sources():
    """experiments/data/out_of_sample.jsonl (README, "Out of sample"): every row reads,
    passes the row checks but for the two a source gives no chip count for, and names a
    URL, an arXiv id or a commit."""
    from pathlib import Path

    from emu.validation._rows import check_row

    path = Path(__file__).resolve().parents[1] / "experiments" / "data" / "out_of_sample.jsonl"
    rows, problems = V.read_rows(path)
    assert len(rows) == 150 and not problems
    refused = []
    for r in rows:
        assert re.search(r"https?://|arxiv:\d|commit [0-9a-f]{7}", r["source"], re.I), r["id"]
        try:
            check_row(r)
        except ValueError as e:
            refused.append((r["id"], str(e)))
    assert [rid for rid, _ in refused] == [
        "oos_sglang_gb300_nvl72_longctx_128k8k_nomtp",
        "oos_sglang_gb200_nvl72_longctx_128k8k_nomtp",
    ]
    assert all("n_chips is null" in why for _, why in refused)


# --- Session 37, the review of the reading above: what it misread in turn.


@pytest.mark.parametrize(
    ("notes", "spec"),
    [
        ("measured over 64 steps.", (0.0, 1.0)),  # not draft steps (64 was an error)
        ("runs 2 steps per second", (0.0, 1.0)),
        ("mtp1 198, mtp3 253, mtp5 239 tok/s", (0.0, 1.0)),  # runs compared: none read
        ("num_nextn_predict_layers: 1", (1.0, 1.7)),  # one draft ("mtp1")
        ("mtp3, accept length 2.8 (1.8x over no mtp)", (3.0, 2.8)),  # a comparison
        ("with mtp, 1.5x faster than without mtp", (1.0, 1.7)),
        ("eagle3 3 steps, accept length 2.5 vs no speculative decoding baseline", (3.0, 2.5)),
        ("--speculative-num-steps 2, accept length 2.4", (2.0, 2.4)),
    ],
)
def test_speculation_is_not_read_from_other_steps_or_compared_runs(notes, spec):
    from emu.validation._plans import speculation

    model = V.row_model(ROWS["sglang_h100_decode_2k"])
    assert speculation(notes, model) == pytest.approx(spec)


def test_mtp_turned_off_for_prefill_only_or_in_another_word_is_not_off():
    from emu.validation._rows import NO_MTP

    for notes in ("mtp disabled for prefill only", "no mtp-specific tuning", "over no mtp"):
        assert not NO_MTP.search(notes), notes
    assert NO_MTP.search("mtp disabled") and NO_MTP.search("no mtp; bf16 kv")


def test_a_prefill_rate_per_gpu_is_not_its_batch():
    from emu.validation._plans import prefill_shape

    r = {**ROWS["dsprofile_prefill"], "notes": "input length 2,000; 22,480 tokens per GPU per "
         "second", "model": {**ROWS["dsprofile_prefill"]["model"], "seq_len": 2000}}  # fmt: skip
    prompt, batch, said = prefill_shape(r)
    assert (prompt, batch) == (2000, 8) and any("not stated" in a for a in said)
    assert prefill_shape({**r, "notes": "ISL=2K"})[0] == 2048
    assert prefill_shape({**r, "notes": "input length 1.5k"})[0] == 1536


def test_a_batch_row_goes_to_the_serving_rule_only_for_a_shared_run_of_its_own_ranks():
    from emu.validation._plans import needs_serving_rule

    for notes in ("weights quantized offline; ISL 1K OSL 1K",
                  "interleaved sliding-window attention; ISL 1K OSL 1K"):  # fmt: skip
        assert not needs_serving_rule(_decode(notes=notes)), notes
    shared = _decode(notes="prefill and decode run on the same GPU (no disaggregation); "
                           "ISL 1K OSL 1K")  # fmt: skip
    assert needs_serving_rule(shared, 72) and needs_serving_rule(shared)
    # tp1 with no dp on 8 chips: the batch path's dp 8, not one TP1 instance over 8 cards
    dense = {**shared, "parallel": {**shared["parallel"], "dp": None}}
    assert not needs_serving_rule(dense, 72)


def test_a_request_rate_is_not_a_request_count():
    par = {**ROWS["sglang_h100_decode_2k"]["parallel"], "microbatch": None}
    r = _decode(notes="offline; 2.82 requests per second sustained; ISL 1K OSL 128", parallel=par)
    s = V.serving_row(r, V.row_model(r))
    assert s.batch_cap == 2048  # OFFLINE_MAX_BATCH, not 82 requests


def test_serving_experts_without_ep_are_split_over_the_instance():
    """--tp 8 --enable-dp-attention without EP: attention TP 1 over DP 8, and the experts
    split over all 8 ranks (they were whole on each: etp from the attention TP)."""
    r = _decode(notes="SGLang --tp 8 --dp 8 --enable-dp-attention; batch 32 per device; "
                      "input 1000, output 1000", n_chips=8,
                parallel={**ROWS["sglang_h100_decode_2k"]["parallel"], "tp": 8, "dp": 8,
                          "ep": 1, "microbatch": None})  # fmt: skip
    s = V.serving_row(r, V.row_model(r))
    assert float(s.decode.tp) == 1 and float(s.decode.ep) * float(s.decode.etp) == 8


@pytest.mark.parametrize(
    ("notes", "separated"),
    [
        ("pd separation not used", False),
        ("not pd-disaggregated", False),
        ("non-pd-disaggregated", False),
        ("pd disaggregation disabled", False),
        ("unlike the pd-disaggregated run", False),
        ("vs pd disaggregation", False),
        ("pd-separated, 2 prefill nodes", True),
    ],
)
def test_pd_separation_negated_or_compared_is_not_read(notes, separated):
    from emu.validation._plans import pd_separated

    assert pd_separated(notes) is separated


@pytest.mark.parametrize(
    ("notes", "kv"),
    [
        ("weights bf16 / kv cache fp8", "fp8"),
        ("model in bf16 kv cache fp8", "fp8"),
        ("kv-cache: fp8_e4m3", "fp8"),
        ("--kv_cache_dtype=fp8_e5m2", "fp8"),
        ("bf16 weights, fp8 kv", "fp8"),
    ],
)
def test_the_kv_format_is_the_one_said_of_the_cache(notes, kv):
    from emu.validation._plans import kv_precision

    assert kv_precision({"id": "x", "precision": "bf16", "notes": notes}) == kv


def test_a_micro_batch_in_tokens_is_not_the_global_batch():
    from emu.validation._plans import global_batch_of

    base = ROWS["sc21_t1_1.7B"]
    r = {**base, "parallel": {**base["parallel"], "global_batch": None},
         "model": {**base["model"], "seq_len": 2048}}  # fmt: skip
    assert global_batch_of({**r, "notes": "micro-batch 4 tokens"})[0] is None
    assert (
        global_batch_of({**r, "notes": "micro-batch 8192 tokens; global batch 2M tokens"})[0]
        == 1024
    )
    assert global_batch_of({**r, "notes": "global batch 1,048,576 tokens"})[0] == 512


def test_ring_for_small_messages_is_not_the_ring_algorithm():
    from emu.validation._collectives import allreduce_algorithm, moe_comm_setup

    r = {"id": "x", "metric": "allreduce_busbw"}
    for notes in ("nccl picks ring for small messages", "uses ring for messages below 1mb"):
        assert allreduce_algorithm({**r, "notes": notes}) == "hierarchical", notes
    base = ROWS["deepep_v1_ll_dispatch_ep8"]
    s = moe_comm_setup({**base, "id": "x", "notes": "non-low-latency kernel, 1.5k tokens per "
                        "rank, hidden 7168"}, None)  # fmt: skip
    assert s["dedup"] == 1.0 and s["tokens"] == 1536


# --- Session 37, a second review of the tightened rules.


def test_comparisons_and_statements_of_speculation_and_pd_after_the_second_review():
    from emu.validation._plans import pd_separated, speculation
    from emu.validation._rows import NO_MTP

    model = V.row_model(ROWS["sglang_h100_decode_2k"])
    # "to" alone is not a comparison: "thanks to PD disaggregation", "set to no MTP"
    assert pd_separated("thanks to pd disaggregation, 2 prefill nodes")
    assert NO_MTP.search("speculation set to no mtp")
    assert speculation("mtp3, accept length 2.8; 1.8x compared with no mtp", model) == (3, 2.8)
    eagle = "eagle3 3 steps; 2.1x over the no speculative decoding baseline"
    assert speculation(eagle, model) == pytest.approx((3, 1 + 0.7 + 0.49 + 0.343))


def test_the_first_kv_format_said_wins_and_offline_spellings_route_a_batch_row():
    from emu.validation._plans import kv_precision, needs_serving_rule

    for notes, kv in (("fp8 kv cache (vs kv cache in bf16)", "fp8"),
                      ("model in bf16 kv cache fp8", "fp8"),
                      ("weights bf16 / kv cache fp8", "fp8")):  # fmt: skip
        assert kv_precision({"id": "x", "notes": notes}) == kv, notes
    for notes in ("mlperf offline scenario", "offline (max throughput)",
                  "offline batch inference", "throughput benchmark (offline)"):  # fmt: skip
        assert needs_serving_rule(_decode(notes=notes + "; isl 1k, osl 1k")), notes
    assert not needs_serving_rule(_decode(notes="weights quantized offline; isl 1k, osl 1k"))
    # SGLang's --tp 8 --dp 8 on 8 GPUs: tp counts the ranks, dp splits them
    par = {**ROWS["sglang_h100_decode_2k"]["parallel"], "tp": 8, "dp": 8, "microbatch": 32}
    sgl = _decode(notes="offline throughput benchmark; isl 1k, osl 1k", parallel=par, n_chips=8)
    assert needs_serving_rule(sgl, 8)


def test_more_spellings_the_second_review_found():
    from emu.validation._collectives import allreduce_algorithm
    from emu.validation._plans import global_batch_of, lengths, prefill_shape

    assert lengths({"id": "x", "notes": "isl 1.5k/osl 2k"}) == (1536, 2048)
    base = ROWS["dsprofile_prefill"]
    for notes, batch in (("tokens per gpu 16384", 4), ("fp8, tokens per gpu: 16,384", 4),
                         ("9,000 tokens per gpu/sec", 4), ("8,192 tokens per gpu (per second)", 4),
                         ("8,192 tokens per gpu", 2)):  # fmt: skip
        assert prefill_shape({**base, "notes": "input length 4096; " + notes})[1] == batch, notes
    r = {**ROWS["sc21_t1_1.7B"], "notes": "per-device batch 4096 tokens",
         "parallel": {**ROWS["sc21_t1_1.7B"]["parallel"], "global_batch": None}}  # fmt: skip
    assert global_batch_of(r)[0] is None
    ring = {"id": "x", "metric": "allreduce_busbw"}
    for notes in ("nccl uses ring-based all-reduce", "picks ring for messages above 1 mb"):
        assert allreduce_algorithm({**ring, "notes": notes}) == "ring", notes


def test_the_coverage_line_says_when_no_row_of_a_file_was_fitted():
    from emu.validation._report import coverage_lines

    report = {"summary": {"inside": {"share": 0.5, "n": 4}}, "coverage": None}
    lines = coverage_lines(report)
    assert "none of these rows is among the shipped calibration's residuals" in lines[1]
    assert "in sample for rows the calibration saw" not in lines[1]


def test_a_misspelt_field_is_refused_with_the_field_it_meant():
    """Session 42's red team: "paralel", a parallel "globalbatch" and a model "seqlen" were
    ignored in silence (the row ran on the plan rule's or the catalog's values, 25-63% off)."""
    base = ROWS["sc21_t1_1.7B"]
    cases = [
        ({**{k: v for k, v in base.items() if k != "parallel"}, "paralel": base["parallel"]},
         "unknown field 'paralel'; did you mean 'parallel'?"),
        ({**base, "parallel": {**base["parallel"], "globalbatch": 512}},
         "parallel has an unknown field 'globalbatch'; did you mean 'global_batch'?"),
        ({**base, "model": {**base["model"], "seqlen": 4096}},
         "model has an unknown field 'seqlen'; did you mean 'seq_len'?"),
        ({**{k: v for k, v in base.items() if k != "precision"}, "precison": "bf16"},
         "unknown field 'precison'; did you mean 'precision'?"),
        ({**base, "parallel": {**base["parallel"], "tp": 2, "tensor_model_parallel_size": 4}},
         "parallel gives tp twice"),
    ]  # fmt: skip
    for r, needle in cases:
        got = one(r)
        assert got["status"] == "error" and needle in got["reason"], got["reason"]
    # metadata of its own (not a near miss of a field) rides along
    assert one({**base, "url": "https://example.org"})["status"] == "ok"


def test_megatron_and_hugging_face_names_of_row_fields_are_read_as_the_field():
    rid = "msmoe_t3_Megatron-LM_240"
    stated = one(row(rid, parallel={**ROWS[rid]["parallel"], "microbatch": 2}))
    par = {k: v for k, v in ROWS[rid]["parallel"].items() if k != "microbatch"}
    for alias in ("micro_batch_size", "micro_batch", "mbs"):
        got = one(row(rid, parallel={**par, alias: 2}))
        assert got["predicted"] == pytest.approx(stated["predicted"]), alias
    # a null field is one not stated: the alias beside it gives the value
    got = one(row(rid, parallel={**ROWS[rid]["parallel"], "microbatch": None, "mbs": 2}))
    assert got["predicted"] == pytest.approx(stated["predicted"])
    base = ROWS["sc21_t1_1.7B"]
    hf = {"hidden_size" if k == "d_model" else k: v for k, v in base["model"].items()}
    assert one({**base, "model": hf})["predicted"] == pytest.approx(one(base)["predicted"])


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"metric": "achieved_tflop_per_gpu"}, "did you mean 'achieved_tflops_per_gpu'?"),
        ({"kind": "prefill"}, "is a train metric, but the row's kind is 'prefill'"),
    ],
)
def test_a_misspelt_metric_or_another_kinds_metric_is_an_error_not_a_skip(changes, needle):
    got = one(row("sc21_t1_1.7B", **changes))
    assert got["status"] == "error" and needle in got["reason"], got


@pytest.mark.parametrize(
    ("value", "unit", "needle"),
    [(150, "%", "at most 100"), (1e9, "%", "at most 100"), (0.69, "%", "give it as 69")],
)
def test_an_mfu_outside_what_a_run_can_reach_is_refused(value, unit, needle):
    mfu = next(r for r in ROWS.values() if r["metric"] == "mfu")
    got = one({**mfu, "value": value, "unit": unit})
    assert got["status"] == "error" and needle in got["reason"], got


def test_a_json_array_file_is_refused_with_how_to_convert_it(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[\n" + ",\n".join(__import__("json").dumps(r) for r in
                                         list(ROWS.values())[:2]) + "\n]\n")  # fmt: skip
    with pytest.raises(ValueError, match=r"is a JSON array; emu reads JSON Lines.*jq -c"):
        V.read_rows(path)
