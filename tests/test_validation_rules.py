"""The row rules of `emu validate` on the 340-row set (issue 11 "every row modelled"): checks
(chip counts, units), confidence weights, models from fields, dies as ranks, the serving
rule, script plans, collective row conventions, the MFU normaliser. Small row subsets; the
every-row count reads the session's validate report."""

import json
import math

import pytest

from emu import validation as V
from emu.catalog import load_system
from emu.plan import RECOMPUTE

ROWS = {json.loads(line)["id"]: json.loads(line) for line in open(V.default_measurements())}


def row(rid: str, **changes) -> dict:
    return {**ROWS[rid], **changes}


@pytest.mark.xdist_group("validate")  # one worker computes the session's validate_reports
def test_at_least_98_percent_of_the_rows_are_modelled_and_skips_say_why(validate_reports):
    rep = validate_reports["default"]
    s = rep["summary"]
    assert s["rows"] == len(ROWS) == 340
    assert s["modelled"] >= math.ceil(0.98 * 340) and s["errors"] == 0
    for r in rep["rows"]:
        if r["status"] != "ok":
            assert r["status"] == "skipped" and len(r["reason"]) > 20
    skipped = {r["id"] for r in rep["rows"] if r["status"] == "skipped"}
    assert not skipped  # every row, the 768-die disaggregated decode included


@pytest.mark.parametrize("n", [2.5, 1e30, 0, -8, "8", True])
def test_rows_with_fractional_or_absurd_chip_counts_are_refused(n):
    res = V.validate_rows([row("limulidae_910b_allreduce_8npu", n_chips=n)])[0]
    assert res["status"] == "error" and "n_chips must be a whole number" in res["reason"]


def test_a_row_without_its_chip_count_says_to_give_it():
    res = V.validate_rows([row("limulidae_910b_allreduce_8npu", n_chips=None)])[0]
    assert res["status"] == "error" and "n_chips is null" in res["reason"]
    assert "give the count" in res["reason"]


def test_a_unit_that_does_not_match_the_metric_is_refused():
    res = V.validate_rows([row("limulidae_910b_allreduce_8npu", unit="us")])[0]
    assert res["status"] == "error" and "unit 'us' does not match" in res["reason"]
    V.check_row(row("limulidae_910b_allreduce_8npu", unit="GB/s"))
    V.check_row({k: v for k, v in ROWS["limulidae_910b_allreduce_8npu"].items() if k != "unit"})
    for r in ROWS.values():  # every published unit matches its metric
        V.check_row(r)
    # spellings of the same unit are that unit; another unit is still refused
    for rid, unit in (("limulidae_910b_allreduce_8npu", "GBps"),
                      ("sc21_t1_1.7B", "TFLOPS per GPU"),
                      ("deepep_v1_ll_dispatch_ep8", "µs"),
                      ("sglang_a3_dsr1_mixed_8c_2k_2k_50ms", "Tokens/sec per NPU")):  # fmt: skip
        V.check_row(row(rid, unit=unit))
    with pytest.raises(ValueError, match="does not match metric 'moe_dispatch_latency'"):
        V.check_row(row("deepep_v1_ll_dispatch_ep8", unit="ms"))
    for bits in ("Gb/s", "Gbps"):  # gigabits are 8x fewer bytes: refused, not taken as GB/s
        with pytest.raises(ValueError, match=f"unit '{bits}' does not match"):
            V.check_row(row("limulidae_910b_allreduce_8npu", unit=bits))


def test_precision_spellings_are_the_chip_format_they_name():
    # 'MXFP8', 'W4A8' and 'NVFP4' were errors ("unknown precision"); they run at the FP8,
    # INT8 and FP4 rates, the predictions of the rows that spell them fp8, int8 and fp4
    spelled = {
        "mbridge_26.06_DGX-B300_Qwen3_30B_a3B_MXFP8_8_pretrain": "MXFP8",
        "sglang_a3_dsr1_mixed_8c_2k_2k_50ms": "W4A8",
        "trtllm_nvl1sided_gb200_dispatch_bw_ep8_bs2048_nvfp4": "NVFP4",
    }
    for rid, spelling in spelled.items():
        a, b = V.validate_rows([ROWS[rid], row(rid, precision=spelling)])
        assert b["status"] == "ok" and b["predicted"] == a["predicted"]
    res = V.validate_rows([row("sc21_t1_1.7B", precision="fp7")])[0]
    assert res["status"] == "error" and "unknown precision 'fp7'" in res["reason"]


def test_rows_that_state_no_parallel_config_are_modelled_by_the_documented_defaults():
    """Every shipped row with `parallel` null is modelled (14 of 340 were errors): the plan
    rule's EP beside a text's expert TP (MegaScale-MoE), EP over every rank in serving
    (DeepSeek's decode, 656 GB per chip at EP 1), half the cards decoding in a PD-separated
    deployment (SGLang), decode alone without an output length (Pangu)."""
    ids = ["msmoe_t3_Megatron-LM_240", "ds_infer_decode", "sglang_a3_dsr1_pdsep_16c_2k_2k_50ms",
           "pangu_pro_moe_800ia2_decode_bs456"]  # fmt: skip
    res = V.validate_rows([row(i, parallel=None) for i in ids])
    assert [r["status"] for r in res] == ["ok"] * 4, [r.get("reason") for r in res]
    assert all(r["predicted"] > 0 for r in res)
    r = row("sglang_a3_dsr1_pdsep_16c_2k_2k_50ms", parallel=None)
    s = V.serving_row(r, V.row_model(r), dies=2)
    assert (float(s.decode.tp) * float(s.decode.dp), s.mode) == (16.0, "separated")  # 8 of 16


def test_a_run_larger_than_the_system_is_refused():
    res = V.validate_rows([row("limulidae_910b_allreduce_8npu", n_chips=200000)])[0]
    assert res["status"] == "error" and "exceed the largest" in res["reason"]


@pytest.mark.parametrize(
    "confidence,weight",
    [
        ("exact (table)", 1.0),
        ("exact (table); config: medium (ep inferred)", 0.8),
        ("exact (table) for the total; per-GPU derived (total / TP); parallel config: high", 1.0),
        ("derived (busbw = algbw x 2(n-1)/n); secondary third-party repo", 0.7),
        ("read off a figure (labels); parallel config: unknown (not stated)", 0.25),
        ("exact (text of a worked example) — LOW confidence; parallel config: high", 0.3),
        ("exact (Table 6 + text); parallel config: low-medium (4 accelerators stated)", 0.5),
        (None, 1.0),
    ],
)
def test_confidence_weights(confidence, weight):
    assert V.row_weight({"confidence": confidence}) == pytest.approx(weight)


def test_every_row_has_a_weight_in_the_documented_range():
    ws = [V.row_weight(r) for r in ROWS.values()]
    assert min(ws) >= 0.25 and max(ws) == 1.0
    assert sum(w < 1 for w in ws) >= 40  # the figure, LOW, derived and medium-config rows


@pytest.mark.parametrize(
    ("source", "document"),
    [
        ("Paper (SC21) | Table 1", "Paper"),
        ("Doc 'Title' (repo docs/a.md; copy read from x@abc)", "Doc 'Title'"),
        ("Doc 'Title' (repo; copy read from x@abc)", "Doc 'Title'"),
        ("Team (Meta), The Herd of Models", "Team (Meta), The Herd of Models"),
        ("Tables (legacy) (docs/legacy.md)", "Tables (legacy)"),
        ("README 'sample (excerpt)'", "README 'sample (excerpt)'"),
        ("(only a parenthesis)", "(only a parenthesis)"),
        ("unbalanced b)", "unbalanced b)"),
    ],
)
def test_a_rows_source_is_its_document_without_the_closing_parenthesis(source, document):
    assert V.row_source({"source": source}) == document


def test_the_shipped_sglang_ascend_rows_are_one_source():
    doc = "Best Practice on Ascend NPU"
    sources = {V.row_source(r) for r in ROWS.values() if doc in r["source"]}
    assert sources == {"SGLang / Ascend team, 'Best Practice on Ascend NPU'"}
    # the pre-check of `calibrate --cv` and the leave-one-source-out groups use the same key
    assert len({V.row_source(r) for r in ROWS.values()}) == 32


def test_moe_models_not_in_the_catalog_are_built_from_the_row():
    m = V.row_model(ROWS["mindspeed_tps_qwen2_57b_a14b_4k_8x8"])
    assert float(m.n_experts) == 64 and float(m.top_k) == 8 and float(m.d_ff_expert) == 2560
    assert float(m.n_shared_experts) == 8  # one shared expert of 20,480 = 8 x 2,560
    mav = V.row_model(ROWS["dgxc_recipe_llama4_maverick_bf16_128gb200"])
    assert float(mav.n_dense_layers) == 24  # "alternates dense and MoE layers"
    assert (
        "alternating dense/MoE"
        in V.approximations(ROWS["dgxc_recipe_llama4_maverick_bf16_128gb200"])[0]
    )
    pangu = V.row_model(ROWS["pangu_pro_moe_800ia2_decode_bs456"])
    assert pangu.ffn == "swiglu" and float(pangu.vocab) == 153376
    glm = V.row_model(ROWS["flagperf_chatglm3_6b_ds_a2_1x8_tokens_per_s_per_gpu"])
    assert glm.ffn == "swiglu" and not glm.tied_embeddings


def test_rows_of_families_with_a_published_head_width_take_it():
    # Qwen3-32B: 64 heads x 128 = 8,192 != d_model 5,120; built from the row's fields alone
    # it got d_model / n_heads = 80, so 0.62x its KV cache and attention projections
    q = V.row_model(ROWS["sglang_a2_qwen3_32b_tp4_2k_2k_50ms"])
    assert float(q.d_head) == 128 and float(q.d_model) == 5120 and not q.tied_embeddings
    g = V.row_model(ROWS["mindspeed_tps_gemma2_27b_8k_2x8"])
    assert float(g.d_head) == 128 and g.tied_embeddings  # 32 x 128 = 4,096 != 4,608
    # other rows keep d_model / n_heads
    assert float(V.row_model(ROWS["mindspeed_tps_llama2_7b_4k_1x8"]).d_head) == 128
    assert float(V.row_model(ROWS["sc21_t1_1.7B"]).d_head) == 96  # 2,304 / 24

    def width(name):
        return float(
            V.row_model(
                row("sc21_t1_1.7B", model={**ROWS["sc21_t1_1.7B"]["model"], "name": name})
            ).d_head
        )

    cases = {"Qwen3-0.6B": 128, "Qwen 3 8B": 128, "Qwen3-Next-80B-A3B": 256, "gemma-2-9b": 256,
             "Gemma 3 27B": 128, "medgemma-27b": 128, "RecurrentGemma-9B": 96,
             "Recurrent Gemma 9B": 96, "GLM-4.5-Air": 128, "Mistral-Small-24B-2501": 128,
             "gpt-oss-20b": 64, "Qwen2.5-32B": 96, "qwen3.5-27b": 96,
             "DeepSeek-R1-Distill-Qwen-32B": 96}  # fmt: skip
    assert {n: width(n) for n in cases} == cases


def test_mla_families_outside_the_catalog_get_latent_attention_and_their_published_size():
    from emu.workload import kv_cache_bytes_per_token, params_active, params_total

    moe = {"n_experts": 384, "top_k": 8, "d_ff_expert": 2048, "n_shared": 1}
    k2 = {"name": "Kimi-K2-Instruct", "n_layers": 61, "d_model": 7168, "n_heads": 64,
          "n_kv_heads": 64, "d_ff": 18432, "vocab": 163840, "moe": moe}  # fmt: skip
    m = V.row_model({"id": "k2", "model": k2})
    # Moonshot: 1.04T total, 32B activated; the KV cache is the 512 + 64 latent (bf16)
    assert m.attention == "mla" and float(m.n_dense_layers) == 1
    assert float(params_total(m)) == pytest.approx(1.03e12, rel=0.02)
    assert float(params_active(m)) == pytest.approx(32e9, rel=0.03)
    assert float(kv_cache_bytes_per_token(m)) == (512 + 64) * 2
    lite = {"name": "DeepSeek-V2-Lite", "n_layers": 27, "d_model": 2048, "n_heads": 16,
            "d_ff": 10944, "vocab": 102400,
            "moe": {"n_experts": 64, "top_k": 6, "d_ff_expert": 1408, "n_shared": 2}}  # fmt: skip
    m = V.row_model({"id": "lite", "model": lite})
    assert float(m.q_lora_rank) == 0 and float(params_total(m)) == pytest.approx(15.7e9, rel=0.02)
    coder = V.row_model({"id": "c", "model": {**lite, "name": "DeepSeek-Coder-V2-Lite"}})
    assert coder.attention == "mla" and float(coder.q_lora_rank) == 0
    # a dense R1 distillation is the Llama it was distilled into, not a latent-attention model
    distill = {"name": "DeepSeek-R1-Distill-Llama-70B", "n_layers": 80, "d_model": 8192,
               "n_heads": 64, "n_kv_heads": 8, "d_ff": 28672, "vocab": 128256}  # fmt: skip
    assert V.row_model({"id": "d", "model": distill}).attention == "gqa"


def test_a_row_of_another_variant_of_a_catalog_moe_model_is_built_from_its_fields():
    # 62 layers (the MTP module counted): the catalog's 61-layer DeepSeek-V3 does not fit;
    # the row was an error ("catalog model deepseek_v3 has n_layers=61"), now it is modelled
    # from its fields with DeepSeek's latent attention, and says so
    r = row("ds_infer_decode", model={**ROWS["ds_infer_decode"]["model"], "n_layers": 62})
    m = V.row_model(r)
    assert m.attention == "mla" and float(m.n_layers) == 62 and float(m.n_dense_layers) == 3
    assert V.approximations(r) == [
        "built from the row's fields: catalog model deepseek_v3 has n_layers=61, the row 62"
    ]
    assert V.row_model(ROWS["ds_infer_decode"]).attention == "mla"  # the catalog's, as before
    assert not V.approximations(ROWS["ds_infer_decode"])


def test_a_dense_row_naming_a_catalog_model_takes_its_shape_for_what_it_leaves_out():
    # a source that names a published model often states none of its shape; such a row was
    # an error ("model.n_layers is null"), or took d_ff = 4 d_model (16,384 for Llama 2 7B,
    # whose published FFN is 11,008) and MHA for a GQA model
    full = ROWS["mindspeed_tps_llama2_7b_4k_1x8"]
    bare = row(full["id"], model={"name": "Llama-2-7B", "seq_len": 4096})
    for f in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab", "d_head"):
        assert float(getattr(V.row_model(bare), f)) == float(getattr(V.row_model(full), f)), f
    assert V.approximations(bare) == [
        "n_layers, d_model, n_heads, n_kv_heads, d_ff, vocab not stated: catalog llama2_7b's"
    ]
    got = V.validate_rows([full, bare])
    assert got[1]["status"] == "ok" and got[1]["predicted"] == pytest.approx(got[0]["predicted"])
    # GQA and the FFN width from the catalog where only they are missing (Llama 3 8B: 8 KV
    # heads, 14,336)
    r = row("nemo2407_pre_LLAMA3-8B_8")
    m = V.row_model(row(r["id"], model={**r["model"], "n_kv_heads": None, "d_ff": None}))
    assert float(m.n_kv_heads) == 8 and float(m.d_ff) == 14336
    for name, catalog in (("Meta-Llama-3.1-70B-Instruct", "llama3_70b"),
                          ("Llama 3.3 70B", "llama3_70b"), ("Llama-3/3.1-8B", "llama3_8b"),
                          ("GPT-3 175B", "gpt3_175b"), ("Qwen3-32B", "qwen3_32b"),
                          ("llama-2-70b-chat", "llama2_70b"), ("Llama-3.2-3B", None),
                          ("GPT 1.7B", "gpt_1_7b"), ("MT-NLG 530B", "gpt_530b"),
                          ("GPT 1008.0B", "gpt_1t"), ("gpt-oss-20b", None),
                          ("Llama-2-34B (CodeLlama-34B architecture)", None),
                          ("DeepSeek-R1-Distill-Llama-70B", None),
                          ("Llama-2-70B (vs a 7B baseline)", "llama2_70b"),
                          ("Llama-3.2-8B", None), ("GPT 175B", "gpt3_175b"),
                          ("Megatron-Turing NLG 530B", "gpt_530b")):  # fmt: skip
        assert V.dense_catalog_of({"name": name}) == catalog, name
    # a row that states another shape is not given the catalog's: its null field is an error
    # that says what to give
    other = row(full["id"], model={"name": "Llama-2-7B", "n_layers": 40, "seq_len": 4096})
    res = V.validate_rows([other])[0]
    assert res["status"] == "error"
    assert "model.d_model is null" in res["reason"] and "give the row's model" in res["reason"]


def test_a_training_row_without_seq_len_takes_its_notes_or_the_documented_default():
    """model.seq_len, else the notes' length, else the model family's pre-training context
    (TRAIN_CONTEXTS: GPT-3 2,048, Llama 2 4,096, Llama 3 8,192, ...), else 4,096."""
    r = ROWS["mindspeed_tps_llama2_7b_4k_1x8"]
    model = {**r["model"], "seq_len": None}
    stated = row(r["id"], model=model, notes="MindSpeed table, seq 4K, bf16")
    assert V.train_seq_len(stated) == (4096, "seq_len not stated in the model: 4096 from the notes")
    assert V.train_seq_len(row(r["id"], model=model, notes="sequence length 8,192"))[0] == 8192
    bare = row(r["id"], model=model, notes="")  # Llama 2: its pre-training context
    assert V.train_seq_len(bare) == (4096, "seq_len not stated: 4096, Llama 2's pre-training "
                                     "context")  # fmt: skip
    anon = row(r["id"], model={**model, "name": "Model-7B"}, notes="")
    assert V.train_seq_len(anon) == (V.DEFAULT_TRAIN_SEQ, "seq_len not stated: 4096 assumed")
    for name, n in (("GPT-3 175B", 2048), ("GPT 22B", 2048), ("MT-NLG 530B", 2048),
                    ("LLaMA-33B", 2048), ("Llama-3.1-405B", 8192), ("Llama-3/3.1-70B", 8192),
                    ("BLOOM-176B", 2048), ("CodeLlama-34B", 4096), ("Qwen2-7B", 4096)):  # fmt: skip
        got = V.train_seq_len(row(r["id"], model={**model, "name": name}, notes=""))[0]
        assert got == n, name
    for notes, n in (("seq 2048, global batch 512", 2048), ("sequence 1 of 3", 4096),
                     ("a seq2seq model", 4096), ("seq 4.5k", 4608),
                     ("sequence 1 of 3; seq len 2048", 2048), ("seq 2048,16 nodes", 4096),
                     ("SP=2 (seq 2), seq_len 8192", 8192)):  # fmt: skip
        assert V.train_seq_len(row(r["id"], model=model, notes=notes))[0] == n, notes
    got = V.validate_rows([r, stated, bare, anon])
    assert all(g["status"] == "ok" for g in got)
    assert got[1]["predicted"] == pytest.approx(got[0]["predicted"])
    assert got[2]["predicted"] == pytest.approx(got[0]["predicted"])
    assert "seq_len not stated: 4096, Llama 2's pre-training context" in got[2]["approximates"]
    assert "seq_len not stated: 4096 assumed" in got[3]["approximates"]
    assert V.train_seq_len(r) == (4096, None) and not V.approximations(r)
    bad = V.validate_rows([row(r["id"], model={**r["model"], "seq_len": "long"})])[0]
    assert bad["status"] == "error" and "model.seq_len must be a positive integer" in bad["reason"]


def test_910c_degrees_count_dies():
    r = ROWS["xds_decode_colocated_dp288_ep288"]
    model = V.row_model(r)
    plan, _ = V.row_plan(r, model, dies=2)
    assert (float(plan.tp), float(plan.dp), float(plan.ep)) == (1.0, 288.0, 288.0)
    assert float(plan.microbatch) == 60 and float(plan.context) == 3072  # 2K + 2K/2
    assert float(plan.mtp_accept) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="ep\\*etp=288 must divide tp\\*dp\\*cp=144"):
        V.row_plan(r, model, dies=1)  # counted as packages, EP288 cannot be placed


def test_serving_rule_on_a_pd_mixed_row_with_known_numbers():
    """SGLang A3 DeepSeek-R1, PD mixed on 8 cards (16 dies): --tp 16 --dp-size 16,
    --max-running-requests 256, NEXTN 3 steps / 4 draft tokens, accept length 2.82,
    2048 in / 2048 out."""
    r = ROWS["sglang_a3_dsr1_mixed_8c_2k_2k_50ms"]
    assert V.needs_serving_rule(r)
    s = V.serving_row(r, V.row_model(r), dies=2)
    d, p = s.decode, s.prefill
    assert s.mode == "mixed" and s.cards == 8 and (s.prompt_len, s.output_len) == (2048, 2048)
    assert (float(d.tp), float(d.dp), float(d.ep)) == (1.0, 16.0, 16.0)
    assert float(d.microbatch) == 16  # 256 running / 16 DP ranks
    assert (float(d.draft_tokens), float(d.accept_len)) == (3.0, pytest.approx(2.82))
    assert float(d.context) == 2048 + 1024
    assert (float(p.tp), float(p.dp), float(p.ep)) == (1.0, 16.0, 16.0)
    assert float(p.microbatch) == 16384 // 2048 and float(p.seq_len) == 2048


def test_serving_rule_puts_prefill_on_the_other_cards_when_separated():
    r = ROWS["sglang_a3_dsr1_pdsep_32c_3p5k_1p5k_50ms"]  # decode tp 32 dies of 32 cards
    s = V.serving_row(r, V.row_model(r), dies=2)
    assert s.mode == "separated" and (s.prompt_len, s.output_len) == (3500, 1500)
    assert float(s.decode.dp) == 32 and float(s.decode.microbatch) == 26  # 832 / 32
    assert float(s.prefill.tp * s.prefill.dp) == 64 - 32


def test_offline_rows_take_the_largest_batch_that_fits_with_kv_for_prompt_and_output():
    """TensorRT-LLM's GUARANTEED_NO_EVICT scheduler admits a request only with KV blocks for
    its whole prompt + output: the batch is the largest that fits at context 1000 + 1000,
    while the step time reads the mean context 1000 + 500."""
    items, fails = V.prepare_rows([ROWS["trtllm_perf_dgx_h100_llama33_70b_tp2_fp8_1000_1000"]])
    assert not fails
    it = items[0]
    assert it.serving.mode == "mixed" and it.serving.batch_cap == V.OFFLINE_MAX_BATCH
    assert it.serving.kv_reserve == 1000 + 1000
    assert float(it.plan.context) == 1500.0 and float(it.plan.kv_precision) == 1.0  # fp8 KV
    b = float(it.plan.microbatch)
    assert 1 < b < V.OFFLINE_MAX_BATCH
    from emu.objective import evaluate
    from emu.struct import replace

    def fits(k, ctx):
        p = replace(it.plan, microbatch=k, global_batch=k, context=ctx, seq_len=ctx)
        return float(evaluate(it.system, it.model, p).feasible)

    assert fits(b, 2000.0) == 1.0 and fits(b + 1, 2000.0) == 0.0
    assert fits(b + 1, 1500.0) == 1.0  # the mean context alone would admit more


def test_tensorrt_llm_rows_at_fp8_or_fp4_keep_an_fp8_kv_cache():
    """trtllm-bench forces the FP8 KV cache for FP8/NVFP4 models (and NVIDIA's ModelOpt
    checkpoints carry kv_cache_quant_algo FP8); other stacks and BF16 rows keep bf16."""
    assert V.kv_precision(ROWS["trtllm_perf_gb200_llama33_70b_tp1_fp4_1000_1000"]) == "fp8"
    assert V.kv_precision(ROWS["azure_gb200_trtllm_llama_3p1_8b_tp1_128_128"]) == "fp8"
    trt = ROWS["trtllm_perf_dgx_h100_llama33_70b_tp2_fp8_1000_1000"]
    assert V.kv_precision({**trt, "precision": "bf16"}) == "bf16"
    sglang = ROWS["sglang_h100_decode_2k"]  # an FP8 model on SGLang: KV in the model dtype
    assert sglang["precision"] == "fp8" and V.kv_precision(sglang) == "bf16"
    for rid in ("sglang_a3_dsr1_mixed_8c_2k_2k_50ms", "xds_decode_colocated_dp288_ep288"):
        assert V.kv_precision(ROWS[rid]) == "bf16"  # int8 Ascend rows
    assert V.kv_precision({**trt, "precision": "FP8"}) == "fp8"
    assert V.kv_precision({**trt, "precision": None}) == "bf16"  # bf16 when unstated
    # the engine is read from the hardware field and the id, not from a comparison in notes
    other = {**sglang, "notes": "2x faster than TensorRT-LLM on this benchmark"}
    assert not V.trtllm_row(other) and V.kv_precision(other) == "bf16"
    assert V.trtllm_row({"id": "x", "hardware": "8x H100, TensorRT LLM 1.0"})


def test_only_tensorrt_llm_offline_rows_reserve_kv_for_the_whole_request():
    """vLLM and SGLang admit requests by their current tokens (and preempt), so the
    prompt + output reservation is TensorRT-LLM's alone."""
    trt = ROWS["trtllm_perf_dgx_h100_llama33_70b_tp2_fp8_1000_1000"]
    model = V.row_model(trt)
    assert V.serving_row(trt, model).kv_reserve == 2000.0
    vllm = {**trt, "id": "vllm_h100_1000_1000", "hardware": "8x H100, vLLM 0.9 offline"}
    s = V.serving_row(vllm, model)
    assert s.batch_cap == V.OFFLINE_MAX_BATCH and s.kv_reserve is None


def test_mixed_serving_rate_is_the_harmonic_composition():
    import jax.numpy as jnp

    from emu.objective import evaluate

    items, _ = V.prepare_rows([ROWS["sglang_a2_qwen3_32b_tp4_2k_2k_50ms"]])
    it = items[0]
    s = it.serving
    rate, _ = V.serving_rate(
        it.system, it.model, s.decode, s.prefill, (jnp.float32(2000), jnp.float32(2000)),
        mode="mixed",
    )  # fmt: skip
    d = float(evaluate(it.system, it.model, s.decode).tokens_per_s)
    p = float(evaluate(it.system, it.model, s.prefill).tokens_per_s)
    assert float(rate) == pytest.approx(1 / (1 / d + 1 / p), rel=1e-5)
    pred, _ = V.predict_items(items)
    assert float(pred[0]) == pytest.approx(float(rate) / 4, rel=1e-5)  # per card, 4 cards


def test_separated_serving_pays_the_first_wave_of_prefills():
    """A closed-loop benchmark of N prompts at concurrency C queues its first C prompts for
    the prefill instance: N out tokens take N out / R + C in / P (R the steady state)."""
    import jax.numpy as jnp

    from emu.objective import evaluate

    r = ROWS["sglang_a3_dsr1_pdsep_32c_3p5k_1p5k_50ms"]  # concurrency 832, 3328 prompts
    items, _ = V.prepare_rows([r])
    it = items[0]
    s = it.serving
    assert s.mode == "separated" and s.ramp == pytest.approx(832 / 3328)
    paced = ROWS["sglang_a3_dsr1_pdsep_16c_2k_2k_50ms"]  # request rate 8: no first wave
    assert V.serving_row(paced, V.row_model(paced), dies=2).ramp == 0.0
    mixed = ROWS["sglang_a3_dsr1_mixed_8c_2k_2k_50ms"]  # mixed: prefill already in the rate
    assert V.serving_row(mixed, V.row_model(mixed), dies=2).ramp == 0.0
    isl, osl = jnp.float32(3500), jnp.float32(1500)
    steady, _ = V.serving_rate(
        it.system, it.model, s.decode, s.prefill, (isl, osl), mode="separated"
    )  # fmt: skip
    rate, _ = V.serving_rate(
        it.system, it.model, s.decode, s.prefill, (isl, osl, jnp.float32(0.25)), mode="separated"
    )  # fmt: skip
    p = float(evaluate(it.system, it.model, s.prefill).tokens_per_s)
    assert 1 / float(rate) == pytest.approx(1 / float(steady) + 0.25 * (3500 / 1500) / p, rel=1e-5)
    pred, _ = V.predict_items(items)
    assert float(pred[0]) == pytest.approx(float(rate) / 32, rel=1e-5)  # per card, 32 cards


def test_script_weak_scaling_plan_for_rows_without_a_plan():
    r = V.script_plan(ROWS["mindspeed_gpt3_175b_mfu_7968"])
    p = r["parallel"]
    assert (p["tp"], p["pp"], p["vpp"], p["microbatch"]) == (8, 16, 3, 2)
    assert r["n_chips"] == 7936 and p["dp"] == 62  # the largest multiple of tp*pp = 128
    assert p["global_batch"] == 1024 * 62  # GBS 1024 at dp 1 (16x8 NPUs), weak-scaled
    assert r["precision"] == "fp16" and r["model"]["seq_len"] == 2048
    assert V.script_plan(ROWS["mindspeed_tps_llama2_7b_4k_1x8"]) is None  # has a plan


def test_a_training_row_that_states_no_degrees_takes_the_plan_rule():
    """Without tp, pp and dp (and no script to weak-scale), a training row runs the plan
    `emu run` would pick for its system, model and chips, with what it does state kept (its
    global batch and micro-batch), and its result says so; before, all its ranks went to
    TP x PP (Megatron SC21's 39.1B row: 512 GPUs as TP 8 x PP 64 over 48 layers, refused)."""
    from emu.policy import auto_plan

    base = ROWS["sc21_t1_39.1B"]
    par = {k: None for k in base["parallel"]}
    r = row("sc21_t1_39.1B", parallel=dict(par, global_batch=1536, microbatch=1))
    assert V.states_no_degrees(r["parallel"]) and not V.states_no_degrees(base["parallel"])
    system, model = load_system(r["system"]), V.row_model(r)
    plan, slo = V.row_plan(r, model, system=system)
    prec = r.get("precision") or "bf16"
    want = auto_plan(system, model, r["n_chips"], seq_len=r["model"]["seq_len"],
                     precision=prec, global_batch=1536, microbatch=1)  # fmt: skip
    for k in ("tp", "pp", "dp", "cp", "global_batch", "microbatch", "recompute"):
        assert float(getattr(plan, k)) == float(getattr(want, k)), k
    assert slo is None and float(plan.global_batch) == 1536
    assert float(plan.pp) * float(plan.vpp) <= float(model.n_layers)
    res = V.validate_rows([r])[0]
    assert res["status"] == "ok" and res["predicted"] > 0
    assert any(a.startswith("plan not stated: emu's plan rule (tp") for a in res["approximates"])
    # without the system (the old call) the degree rule still applies, and refuses it
    with pytest.raises(ValueError, match="exceeds n_layers"):
        V.row_plan(r, model)


def test_a_row_without_degrees_takes_the_plan_the_rule_picks_at_its_stated_batch():
    """Korthikanti's 22B layer rows state a global batch of 4 on 8 A100 and, blanked, no
    degrees or micro-batch: the rule compares its plans at 4 sequences (exactly the plan
    `auto_plan(..., global_batch=4)` gives), not at its own 4 Mi-token default with the
    batch applied afterwards."""
    from emu.policy import auto_plan

    rid = "korth_t4_22B_Baseline_no_recompute"
    par = {**ROWS[rid]["parallel"], **dict.fromkeys(("tp", "pp", "dp", "microbatch", "vpp"))}
    r = row(rid, parallel=par)
    system, model = load_system(r["system"]), V.row_model(r)
    plan, _ = V.row_plan(r, model, system=system)
    want = auto_plan(system, model, 8, seq_len=r["model"]["seq_len"], precision="bf16",
                     global_batch=4, recompute="none", sp=False)  # fmt: skip
    for k in ("tp", "pp", "dp", "vpp", "microbatch", "global_batch"):
        assert float(getattr(plan, k)) == float(getattr(want, k)), k
    assert float(plan.global_batch) == 4


def test_a_row_without_degrees_keeps_every_knob_it_states():
    """The plan rule fills in the degrees only: CP, ZeRO ("FSDP" -> 3), recomputation,
    micro-batch and SP stay as stated, and a stated global batch is rounded to whole
    micro-batches per DP rank of the rule's plan (not refused)."""
    rid = "sc21_t1_39.1B"
    par = {k: None for k in ROWS[rid]["parallel"]}
    par.update(cp=2, zero="FSDP", recompute="full", microbatch=2, global_batch=1000, sp=True)
    r = row(rid, parallel=par)
    system, model = load_system(r["system"]), V.row_model(r)
    plan, _ = V.row_plan(r, model, system=system)
    assert (float(plan.cp), float(plan.zero), float(plan.microbatch)) == (2.0, 3.0, 2.0)
    assert float(plan.recompute) == RECOMPUTE["full"] and float(plan.sp) == 1.0
    unit = float(plan.dp) * 2
    gb = float(plan.global_batch)
    assert gb % unit == 0 and abs(gb - 1000) <= unit / 2


def test_a_deployment_row_without_lengths_takes_them_from_its_seq_len():
    """A decode row for the serving rule that states no prompt or output length predicts
    as if it said prompt = output = seq_len / 2 (the set's convention: seq_len = prompt +
    output); with only the prompt, the output is seq_len - prompt; with neither lengths nor
    seq_len it takes the documented default prompt (DEFAULT_PROMPT, as a decode row's
    context does), decodes alone (no output length to share ranks by) and says so."""
    rid = "trtllm_perf_gb200_llama4_scout_tp1_fp4_2048_2048"  # seq_len 4096, 2048/2048
    base = ROWS[rid]
    text = base["notes"].replace("'2048/2048'", "'fixed'").replace("ISL/OSL", "lengths")
    blind = row(rid, id="trtllm_perf_gb200_llama4_scout_tp1_fp4", notes=text)
    assert V.lengths(blind) == (None, None) and V.lengths(base) == (2048, 2048)
    got, want = V.validate_rows([blind, base])
    assert got["status"] == want["status"] == "ok"
    assert got["predicted"] == pytest.approx(want["predicted"], rel=1e-6)
    prompt_only = row(rid, id=blind["id"], notes=text + " input length 1,000.")
    s = V.serving_row(prompt_only, V.row_model(prompt_only))
    assert (s.prompt_len, s.output_len) == (1000, 3096)
    odd = row(rid, id=blind["id"], notes=text, model={**base["model"], "seq_len": 4095})
    s = V.serving_row(odd, V.row_model(odd))  # whole tokens: 2047 + 2048, context 3071
    assert (s.prompt_len, s.output_len, float(s.decode.context)) == (2047, 2048, 3071)
    none = row(rid, id=blind["id"], notes=text, model={**base["model"], "seq_len": None})
    s = V.serving_row(none, V.row_model(none))
    assert (s.prompt_len, s.output_len, s.mode) == (4096, 4096, "decode")
    assert float(s.decode.context) == 4096
    res = V.validate_rows([none])[0]
    assert res["status"] == "ok"
    assert "prompt length not stated: 4096 tokens assumed" in res["approximates"]
    assert any(a.startswith("no output length: decoded alone") for a in res["approximates"])
    bad = row(rid, id=blind["id"], notes=text, model={**base["model"], "seq_len": "4k"})
    said = V.validate_rows([bad])[0]["approximates"]
    assert "prompt length not stated: 4096 tokens assumed" in said


def test_an_moe_row_without_its_expert_width_takes_megatrons_default():
    """An MoE model the catalog does not name, with no expert width: d_ff_expert = its
    d_ff (Megatron-Core's moe_ffn_hidden_size default), else 4 d_model, and the result says
    so; a stated width is kept."""
    rid = "mindspeed_tps_mixtral_8x22b_32k_8x8"  # d_ff 16384 = the expert width
    base = ROWS[rid]
    model = {**base["model"], "name": "SomeNewMoE", "moe": {**base["model"]["moe"]}}
    model["moe"]["d_ff_expert"] = None
    r = row(rid, model=model)
    assert float(V.row_model(r).d_ff_expert) == base["model"]["d_ff"]
    said = [a for a in V.approximations(r) if a.startswith("moe.d_ff_expert not stated")]
    assert said and str(base["model"]["d_ff"]) in said[0]
    bare = row(rid, model={**model, "d_ff": None})
    assert float(V.row_model(bare).d_ff_expert) == 4 * base["model"]["d_model"]
    assert float(V.row_model(row(rid)).d_ff_expert) == base["model"]["moe"]["d_ff_expert"]


@pytest.mark.parametrize(
    "said, stage",
    [("ZeRO-2", 2), ("zero stage 2", 2), ("FSDP", 3), ("ZeRO stage 3", 3), ("DDP", 0),
     ("distributed optimizer/DDP", 1), (None, 1), (3, 3), ("zero_stage=2", 2),
     ("ZeRO stage: 2", 2), ("none (DDP)", 0), ("SHARD_GRAD_OP", 2), ("FULL_SHARD", 3),
     ("ZeRO-1 (distributed optimizer, like stage 2 memory)", 1), ("pipeline stage 2", 1)],
)  # fmt: skip
def test_a_rows_zero_spelling_is_the_stage_it_names(said, stage):
    rid = "mindspeed_tps_llama2_7b_4k_1x8"
    r = row(rid, parallel={**ROWS[rid]["parallel"], "zero": said})
    plan, _ = V.row_plan(r, V.row_model(r), system=load_system(r["system"]))
    assert float(plan.zero) == stage


@pytest.mark.parametrize(
    "said, kind",
    [("--recompute-granularity full --recompute-method uniform", "full"),
     ("activation checkpointing: full", "full"), ("full (method block, 70 layers)", "full"),
     ("no recompute", "none"), ("selective: moe_act, layernorm", "selective"),
     ("--recompute-method block (no --recompute-granularity flag)", "selective"),
     (None, "selective"), ("activation checkpointing (full)", "full"),
     ("no full recompute", "none"), ("recompute: none", "none"),
     ("full recompute disabled", "none"), ("partial (not full recompute)", "selective")],
)  # fmt: skip
def test_a_rows_recompute_spelling_is_the_granularity_it_names(said, kind):
    rid = "mindspeed_tps_llama2_7b_4k_1x8"
    r = row(rid, parallel={**ROWS[rid]["parallel"], "recompute": said})
    plan, _ = V.row_plan(r, V.row_model(r), system=load_system(r["system"]))
    assert float(plan.recompute) == RECOMPUTE[kind]


@pytest.mark.parametrize(
    "rid, unit, scale",
    [("korth_t4_22B_Baseline_no_recompute", "us", 1e3),  # a layer time in ms
     ("deepep_v1_ll_dispatch_ep8", "ms", 1e-3),  # a kernel latency in us
     ("deepep_v1_ll_dispatch_ep8", "msec", 1e-3),
     ("oci_gb200_128gpu_2rack_allreduce_1048576", "Gbps", 8.0)],  # busbw in GB/s
)  # fmt: skip
def test_a_value_in_a_commensurable_unit_is_converted(rid, unit, scale):
    base = ROWS[rid]
    r = row(rid, id="converted", unit=unit, value=base["value"] * scale)
    got, want = V.validate_rows([r, base])
    assert got["status"] == "ok"
    assert got["measured"] == pytest.approx(want["measured"], rel=1e-9)
    assert got["abs_pct_error"] == pytest.approx(want["abs_pct_error"], rel=1e-6)
    assert any(a.startswith(f"stated as {r['value']:g} {unit}") for a in got["approximates"])
    bad = V.validate_rows([row(rid, id="bad", unit="tokens/s")])[0]
    assert bad["status"] == "error" and "does not match metric" in bad["reason"]


def test_a_unit_spelled_out_is_its_metrics_unit_and_a_conversion_stays_in_range():
    rid = next(k for k, r in ROWS.items() if r["metric"] == "iteration_time")
    for unit in ("sec", "Seconds", "secs"):
        assert V.validate_rows([row(rid, unit=unit)])[0]["status"] == "ok"
    lat = "deepep_v1_ll_dispatch_ep8"
    assert V.validate_rows([row(lat, unit="usec")])[0]["status"] == "ok"
    tiny = V.validate_rows([row(lat, id="tiny", unit="ns", value=1e-4)])[0]
    assert tiny["status"] == "error" and "outside" in tiny["reason"]


def test_a_row_whose_metric_is_not_a_string_says_so():
    rid = "mindspeed_tps_llama2_7b_4k_1x8"
    res = V.validate_rows([row(rid, metric=["tokens_per_s_per_gpu"])])[0]
    assert res["status"] == "error" and "metric must be a string" in res["reason"]


def test_degrees_written_as_strings_are_read():
    rid = "mindspeed_tps_llama2_7b_4k_1x8"  # TP1 PP2, micro-batch 1, global batch 256
    p = ROWS[rid]["parallel"]
    spelled = {k: str(v) if isinstance(v, int) else v for k, v in p.items()}
    got, want = V.validate_rows([row(rid, id="spelled", parallel=spelled), ROWS[rid]])
    assert got["predicted"] == pytest.approx(want["predicted"], rel=1e-6)


def test_a_model_without_heads_takes_the_usual_head_width():
    rid = "mindspeed_tps_llama2_7b_4k_1x8"  # d_model 4096, 32 heads of 128
    new = {**ROWS[rid]["model"], "name": "NewModel"}  # a name the catalog does not fill
    r = row(rid, model={**new, "n_heads": None})
    m = V.row_model(r)
    assert float(m.n_heads) == float(m.n_kv_heads) == 4096 / V.DEFAULT_HEAD_WIDTH
    got, want = V.validate_rows([r, row(rid, id="stated", model={**new, "n_kv_heads": 32})])
    assert got["predicted"] == pytest.approx(want["predicted"], rel=1e-6)
    assert "n_heads not stated: 32 (d_model / 128, heads of 128)" in got["approximates"]


def test_a_pd_separated_row_whose_degrees_add_up_is_not_taken_for_disaggregation():
    rid = "sglang_a3_dsr1_pdsep_16c_2k_2k_50ms"  # tp 16 + ep 16 = 32 dies when dp is 1
    r = row(rid, parallel={**ROWS[rid]["parallel"], "dp": 1})
    assert V.validate_rows([r])[0]["status"] == "ok"


def test_a_catalog_moe_model_reports_no_defaults_it_does_not_use():
    rid = "sglang_a3_qwen3_235b_mixed_8c_2k_2k"  # Qwen3-235B-A22B: the catalog's dims
    m = ROWS[rid]["model"]
    r = row(rid, model={**m, "n_heads": None, "moe": {**m["moe"], "d_ff_expert": None}})
    notes = V.approximations(r)
    assert not any("not stated" in a for a in notes), notes
    assert float(V.row_model(r).d_ff_expert) == m["moe"]["d_ff_expert"]


def test_a_disaggregated_decode_row_without_its_batch_says_what_to_add():
    base = ROWS["xds_decode_disagg_moe_attention_768dies"]
    r = row(base["id"], parallel={**base["parallel"], "microbatch": None, "global_batch": None})
    res = V.validate_rows([r])[0]
    assert res["status"] == "error" and "needs its batch per attention rank" in res["reason"]


def test_a_deployment_row_without_dp_gets_an_attention_tp_that_divides_the_heads():
    """48 ranks (24 Atlas A3 cards) of Qwen3-235B (64 heads) with no TP or DP stated: the
    serving rule's attention DP 1 would need TP 48; it takes DP 3, TP 16 instead of
    refusing the row."""
    rid = "sglang_a3_qwen3_235b_mixed_8c_2k_2k"
    r = row(rid, n_chips=24, parallel={**ROWS[rid]["parallel"], "tp": None, "dp": None})
    s = V.serving_row(r, V.row_model(r), dies=2)
    assert (float(s.decode.tp), float(s.decode.dp)) == (16.0, 3.0)
    assert V.validate_rows([r])[0]["status"] == "ok"


def test_a_moe_deployment_row_that_states_no_plan_takes_data_parallel_attention():
    """DeepSeek's 16-node decode profile with its parallel fields blanked (V.states_nothing):
    `emu run`'s
    serving rule (TP 1, attention DP over every rank, EP over all), not SGLang's --tp-size
    reading (attention TP 128 over 128 ranks: 99% slow); with the batch its notes name per
    rank, it comes out near the stated plan's prediction. A row that states some of its
    deployment keeps the --tp-size reading."""
    rid = "dsprofile_decode"
    r = row(rid, parallel=None)
    s = V.serving_row(r, V.row_model(r))
    assert (float(s.decode.tp), float(s.decode.dp)) == (1.0, 128.0)
    blanked, stated = V.validate_rows([r, ROWS[rid]])
    assert blanked["status"] == "ok"
    assert abs(blanked["predicted"] / stated["predicted"] - 1) < 0.15
    said = row(rid, parallel={"tp": 16, "global_batch": 256})
    assert float(V.serving_row(said, V.row_model(said)).decode.tp) == 16.0
    # a prefill row likewise: SGLang's DeepSeek prefill on 32 H100 states TP 1, DP 32, EP 32,
    # which is what the serving rule gives it blanked (it took TP 8 x PP 4 before)
    rid = "sglang_h100_prefill_4096"
    blanked, stated = V.validate_rows([row(rid, parallel=None), ROWS[rid]])
    assert blanked["predicted"] == pytest.approx(stated["predicted"], rel=1e-5)


def test_mindspeed_mfu_uses_the_source_peak():
    s = load_system("atlas800t_a2")
    assert V.mfu_peak(ROWS["mindspeed_mfu_llama2_7b"], s, "bf16") == 313e12
    flag = ROWS["flagperf_chatglm3_6b_ds_a2_1x8_mfu"]
    assert V.mfu_peak(flag, s, "bf16") == float(s.chip.peak_flops_per_s["bf16"])


def test_collective_rows_read_size_tokens_bytes_and_convention():
    assert V.message_bytes(ROWS["azure_gb200_4gpu_allreduce_ring_67M"]) == 2**26
    assert V.message_bytes(ROWS["dgxc_nccl_h100_8gpu_allreduce_1048576"]) == 1048576
    assert V.message_bytes(ROWS["limulidae_910b_allreduce_8npu"]) == V.DEFAULT_MESSAGE_BYTES
    assert V.allreduce_algorithm(ROWS["oci_gb200_128gpu_2rack_allreduce_1048576"]) == "ring"
    assert V.allreduce_algorithm(ROWS["dgxc_nccl_h100_8gpu_allreduce_1048576"]) == "hierarchical"
    gb, cm = load_system("gb200_nvl72"), load_system("cloudmatrix384")
    s = V.moe_comm_setup(ROWS["trtllm_nvl1sided_gb200_dispatch_bw_ep8_bs2048_mxfp8"], gb)
    assert (s["tokens"], s["token_bytes"], s["dedup"], s["convention"]) == (
        2048, 7392, 0.0, "logical",
    )  # fmt: skip
    assert s["moved"] == 2048 * 8 * 7392
    s = V.moe_comm_setup(ROWS["deepep_ascend_a3_normal_dispatch_ep16"], cm)
    assert (s["tokens"], s["token_bytes"], s["dedup"], s["convention"]) == (
        4096, 7168 + 4, 1.0, "bottleneck",
    )  # fmt: skip
    assert s["group"] == 16  # ranks are dies
    s = V.moe_comm_setup(ROWS["xds_dispatch_insitu_ep288_bs60"], cm)
    assert s["tokens"] == 120 and s["dedup"] == 0.0  # 60 requests x 2 tokens (MTP)
    s = V.moe_comm_setup(ROWS["deepep_ascend_a3_ll_combine_bw_ep8"], cm)
    assert (s["token_bytes"], s["convention"], s["moved"]) == (14336, "per_rank", 128 * 8 * 14336)


def test_a_row_measured_in_the_same_setup_as_another_reads_that_rows_notes_too():
    # xDeepServe's combine row states its tokens per die only through the dispatch row it
    # was timed beside ("Same setup as xds_dispatch_insitu_ep288_bs60."): 60 requests x 2
    # tokens (MTP), not the row's own batch of 60
    pair = [ROWS["xds_dispatch_insitu_ep288_bs60"], ROWS["xds_combine_insitu_ep288_bs60"]]
    items, failures = V.prepare_rows(pair)
    assert not failures
    assert [it.setup["tokens"] for it in items] == [120, 120]
    alone, _ = V.prepare_rows(pair[1:])  # without the named row: its own batch
    assert alone[0].setup["tokens"] == 60
    # a name that is no row of the file changes nothing
    rows = [pair[0], {**pair[1], "notes": "Same setup as no_such_row_42."}]
    assert V.with_referenced_notes(rows) == rows
    rows = [pair[0], {**pair[1], "notes": f"Not the same setup as {pair[0]['id']}."}]
    assert V.with_referenced_notes(rows) == rows  # a negation names no setup to share
    # malformed rows (an id that is a list, a row without notes, not an object) pass through
    # untouched, for the row checks to refuse with their own line
    odd = [{"id": ["x"], "notes": "same setup as y"}, {"id": "y"}, "not a row", None]
    assert V.with_referenced_notes(odd) == odd
    # the xDeepServe E2A row reads the hidden size and top-k its A2E row states ...
    a2e, e2a = ROWS["xds_a2e_latency_ep288"], ROWS["xds_e2a_latency_ep288"]
    assert "hidden" not in e2a["notes"] and "top-8" in a2e["notes"]
    items, _ = V.prepare_rows([a2e, e2a])
    assert not items[1].setup["assumed"] and items[1].setup["top_k"] == 8
    # ... and what a row states itself comes first
    own = {**e2a, "notes": "hidden 5120, top-6 experts. " + e2a["notes"]}
    s = V.prepare_rows([a2e, own])[0][1].setup
    scaled = items[1].setup["token_bytes"] * 5120 / 7168
    assert s["top_k"] == 6 and s["token_bytes"] == pytest.approx(scaled)


def test_collective_rows_from_other_sources_read_what_their_notes_state():
    # a row whose id does not end with its size (another source's naming) reads it from its
    # notes; one that states none takes the plateau buffer and says so (not silently)
    base = {**ROWS["dgxc_nccl_h100_8gpu_allreduce_1048576"], "id": "other_h100_allreduce"}
    for notes, size in (("busbw at size 33554432 B, 8 ranks", 33554432),
                        ("all_reduce_perf with 32 MB messages", 32e6),
                        ("Message size: 512 MiB, NCCL 2.21", 512 * 2**20),
                        ("4-8 GB messages", math.sqrt(32) * 1e9),
                        ("at large sizes (>256 MB)", 256e6),
                        ("8x A100-80GB, 1 GB messages", 1e9),  # a GPU name is not a size
                        ("NCCL_BUFFSIZE 8 MB buffers; 1 GB messages", 1e9),
                        ("4 - 8 GB messages", math.sqrt(32) * 1e9),  # a range, not 8 GB
                        ("1,024 MB messages", 1.024e9)):  # fmt: skip
        assert V.message_size({**base, "notes": notes}) == (size, None), notes
    none = {**base, "notes": "8x H100-80GB, 80 GB HBM3, 400 Gb/s NICs, 100 Gb messages"}
    assert V.message_size(none) == (
        V.DEFAULT_MESSAGE_BYTES,
        "message size not stated: 4 GB assumed (the busbw plateau)",
    )
    got = V.validate_rows([{**base, "notes": "busbw at size 1048576 B"}, none])
    ref = V.validate_rows([ROWS["dgxc_nccl_h100_8gpu_allreduce_1048576"]])[0]
    assert got[0]["predicted"] == pytest.approx(ref["predicted"]) and not got[0]["approximates"]
    assert got[1]["approximates"] == [V.message_size(none)[1]]
    # an all-to-all benchmark of another model: its tokens per rank, hidden size and top-k
    h800 = load_system("hgx_h800")
    ll = ROWS["deepep_v1_ll_dispatch_ep16"]
    s0 = V.moe_comm_setup(ll, h800)
    assert (s0["tokens"], s0["top_k"], s0["assumed"]) == (128, 8, [])
    notes = "low-latency kernel, 256 tokens per rank, hidden 4096, top-6 experts, BF16"
    s = V.moe_comm_setup({**ll, "notes": notes, "precision": "bf16"}, h800)
    assert (s["tokens"], s["token_bytes"], s["top_k"]) == (256, 2 * 4096, 6)
    # the DeepSeek profile (hidden 7,168, top-8) and the kernel's token count when unstated,
    # and the row says so
    bare = V.moe_comm_setup({**ll, "notes": "low-latency kernel"}, h800)
    assert (bare["tokens"], bare["top_k"], bare["token_bytes"]) == (128, 8, s0["token_bytes"])
    assert bare["assumed"] == [
        "tokens per rank not stated: 128 (low-latency kernels) assumed",
        "hidden size not stated: 7168 (DeepSeek-V3) assumed",
        "top-k not stated: 8 (DeepSeek-V3) assumed",
    ]
    res = V.validate_rows([{**ll, "notes": "low-latency kernel"}])[0]
    assert res["status"] == "ok" and res["approximates"] == bare["assumed"]
    # numbers that are not hidden sizes or top-k (layers, node-limited routing) are not read
    odd = V.moe_comm_setup({**ll, "notes": "61 hidden layers, top-4 nodes, topk=6"}, h800)
    assert (odd["token_bytes"], odd["top_k"]) == (s0["token_bytes"], 6)
    assert "hidden size not stated: 7168 (DeepSeek-V3) assumed" in odd["assumed"]
    for notes in ("hidden_size=4096, top-4 expert groups, top-6 experts",
                  "hidden dim of 4096; top-2 servers; top_k: 6"):  # fmt: skip
        spelled = V.moe_comm_setup({**ll, "notes": notes, "precision": "bf16"}, h800)
        assert (spelled["token_bytes"], spelled["top_k"]) == (2 * 4096, 6), notes
    # the top-k reaches the prediction: fewer copies per token, a faster kernel
    t4, t8 = V.validate_rows([{**ll, "notes": f"low-latency, top-{k} experts"} for k in (4, 8)])
    assert t4["predicted"] < t8["predicted"]
    assert t8["predicted"] == pytest.approx(V.validate_rows([ll])[0]["predicted"])


def test_rows_stating_some_degrees_take_the_usual_defaults_for_the_others():
    # pp alone (MegaScale-MoE's pp 15 on 720 GPUs without its dp): tp was every remaining
    # rank (48, more than the 32 heads allow: an error); now TP within a node, DP the rest
    r = ROWS["msmoe_t3_MegaScale-MoE_720"]
    plan = V.row_plan(row(r["id"], parallel={**r["parallel"], "dp": None}), V.row_model(r))[0]
    assert (float(plan.tp), float(plan.pp), float(plan.dp)) == (8, 15, 6)
    # tp alone on a training row: no pipeline (Megatron's default), DP the rest
    r = ROWS["mindspeed_tps_llama3p1_70b_8k_4x8"]
    bare = {k: None for k in r["parallel"]} | {"tp": 8, "global_batch": 512}
    plan = V.row_plan(row(r["id"], parallel=bare), V.row_model(r))[0]
    assert (float(plan.tp), float(plan.pp), float(plan.dp)) == (8, 1, 4)
    # a decode deployment row with Megatron-style degrees (tp 1, dp 72) and no batch field:
    # the serving rule took tp as the instance's ranks (SGLang's --tp-size) and put EP 72 on
    # one rank (an error); it reads "batch 256 per device" from the notes too
    r = ROWS["sglang_h100_decode_2k"]
    s = V.serving_row(row(r["id"], parallel={**r["parallel"], "microbatch": None}), V.row_model(r))
    d = s.decode
    assert (float(d.tp), float(d.dp), float(d.ep), float(d.microbatch)) == (1, 72, 72, 256)
    # with attention DP over every rank and no dp field, the per-device batch is per DP rank
    bare = {**r["parallel"], "microbatch": None, "tp": None, "dp": None, "ep": None}
    d = V.serving_row(
        row(r["id"], parallel=bare, notes=r["notes"] + " Attention DP."), V.row_model(r)
    ).decode
    assert (float(d.dp), float(d.microbatch)) == (72, 256)
    # SGLang's own convention is kept: --tp-size 32 --dp-size 32 is 32 ranks
    a3 = ROWS["sglang_a3_dsr1_pdsep_32c_3p5k_1p5k_50ms"]
    d = V.serving_row(a3, V.row_model(a3), dies=2).decode
    assert float(d.tp) * float(d.dp) == 32


def test_per_node_throughput_counts_the_nodes_chips():
    # the schema's node is 8 chips; a row's unit, then its notes, may say another count
    r = ROWS["azure_gb200_trtllm_llama_3p1_8b_tp1_128_128"]
    node = dict(metric="output_tokens_per_s_per_node", unit="tokens/s/node")
    per_gpu, plain, noted, unit = V.validate_rows([
        r, row(r["id"], **node), row(r["id"], **node, notes=r["notes"] + " 4 GPUs per node"),
        row(r["id"], **{**node, "unit": "tokens/s per 2-GPU node"}),
    ])  # fmt: skip
    assert plain["predicted"] == pytest.approx(8 * per_gpu["predicted"])
    assert noted["predicted"] == pytest.approx(4 * per_gpu["predicted"])
    assert unit["predicted"] == pytest.approx(2 * per_gpu["predicted"])

    def chips(unit, notes):
        return V.chips_per_unit(dict(metric=node["metric"], unit=unit, notes=notes))

    assert chips("tokens/s per 4-GPU node", "8 GPUs per node") == 4  # the unit first
    assert chips("tokens/s/node", "8x GB200, 4 GPUs/node") == 4
    # a model number is not a count; nor is a rack
    assert chips("tokens/s/node", "B200 GPUs/node, H800 GPUs per node") == 8
    assert chips("tokens/s/node", "72 GPUs per rack") == 8
    assert V.chips_per_unit(ROWS["ds_infer_decode"]) == 8  # "tokens/s per 8-GPU node"


def test_interval_groups_of_collective_rows_name_the_outermost_link():
    gb, h800 = load_system("gb200_nvl72"), load_system("hgx_h800")
    assert V.collective_link(gb, 4) == "nvlink5"
    assert V.collective_link(gb, 1440) != "nvlink5"
    assert V.collective_link(h800, 8) == "nvlink4" and V.collective_link(h800, 16) == "ib"


def test_speculation_and_lengths_from_notes():
    m = V.row_model(ROWS["sglang_a2_qwen3_32b_tp8_4k_1p5k_lowlat"])
    assert V.speculation(V.row_text(ROWS["sglang_a2_qwen3_32b_tp8_4k_1p5k_lowlat"]), m) == (
        4.0, pytest.approx(2.04),
    )  # fmt: skip
    assert V.lengths(ROWS["sglang_a3_dsr1_pdsep_32c_6k_1p6k_20ms"]) == (6000, 1600)
    assert V.lengths(ROWS["trtllm_perf_gb200_llama33_70b_tp1_fp4_128_2048"]) == (128, 2048)
    assert V.lengths(ROWS["pangu_pro_moe_800ia2_decode_bs1"]) == (2048, None)


def test_rows_of_families_with_a_published_sliding_window_take_it():
    """MindSpeed's Mistral 7B at 32K runs `--sliding-window 4096` (its example script), as
    the Mistral 7B paper defines the model; built without it, the row was predicted 44%
    slow. Gemma 2 windows every other layer; gpt-oss (the catalog's 120B) too, at 128.
    Gemma 3's 1B and 270M configs window 512 keys, its larger sizes 1,024."""
    m = V.row_model(ROWS["mindspeed_tps_mistral_7b_32k_1x8"])
    assert (float(m.attention_window), float(m.window_layers)) == (4096, 32)
    g = V.row_model(ROWS["mindspeed_tps_gemma2_27b_8k_2x8"])
    assert (float(g.attention_window), float(g.window_layers)) == (4096, 23)
    oss = V.row_model(ROWS["mbridge_25.11_DGX-H100_GPT_OSS_120B_BF16_64_pretrain"])
    assert (float(oss.attention_window), float(oss.window_layers)) == (128, 18)
    assert float(V.row_model(ROWS["mindspeed_tps_llama2_7b_4k_1x8"]).attention_window) == 0

    def window(name, layers=32):
        base = ROWS["mindspeed_tps_mistral_7b_32k_1x8"]
        m = V.row_model(row(base["id"], model={**base["model"], "name": name, "n_layers": layers}))
        return float(m.attention_window), float(m.window_layers)

    cases = {"Mistral-7B-v0.1": (4096, 32), "Mistral-7B-Instruct-v0.2": (0, 0),
             "mistral-7b-v0.3": (0, 0), "Mixtral-8x7B": (0, 0), "gemma-2-9b": (4096, 16),
             "Gemma 3 27B": (1024, 27), "gemma-3-1b-it": (512, 27), "Gemma 3 270M": (512, 27),
             "gemma-3-4b-pt": (1024, 27), "gemma_3_1b_it": (512, 27), "gemma3:270m": (512, 27),
             "gemma-3-27b-1b-draft": (1024, 27), "RecurrentGemma-9B": (0, 0),
             "gpt-oss-20b": (128, 16),
             "Qwen2.5-7B": (0, 0), "gemma-2b": (0, 0), "Gemma 2B": (0, 0),
             "gemma-2-2b": (4096, 16), "gemma-3n-e4b": (0, 0)}  # fmt: skip
    assert {n: window(n) for n in cases} == cases


def test_block_recompute_of_n_layers_recomputes_that_share_of_a_stage():
    """Megatron's block method recomputes the first N layers of each stage chunk
    (MindSpeed's Llama 2 13B MFU row: --recompute-num-layers 1 of 40 layers / pp4 = 10 per
    stage, so 0.1); N >= a chunk's layers, the uniform method or no N recompute them all; a
    method without full granularity recomputes nothing in full."""
    r = ROWS["mindspeed_mfu_llama2_13b"]
    plan13 = V.row_plan(r, V.row_model(r))[0]
    assert float(plan13.recompute_fraction) == pytest.approx(0.1)
    # its script's --recompute-activation-function, read too (the row then fits its HBM)
    assert float(plan13.recompute_activation) == 1.0
    other = ROWS["mindspeed_mfu_llama2_7b"]
    assert float(V.row_plan(other, V.row_model(other))[0].recompute_activation) == 0.0
    from emu.validation._plans import _recompute_activation

    said = {"--recompute-activation-function": True, "activation-function recompute": True,
            "run without --recompute-activation-function": False,
            "no activation-function recompute": False, "recompute activations": False}  # fmt: skip
    assert {t: _recompute_activation({}, t) for t in said} == said

    def share(recompute, notes="", pp=4, vpp=None):
        p = {**r["parallel"], "recompute": recompute, "pp": pp, "dp": 2 * 4 // pp, "vpp": vpp}
        plan = V.row_plan(row(r["id"], parallel=p, notes=notes), V.row_model(r))[0]
        return float(plan.recompute), round(float(plan.recompute_fraction), 4)

    assert share("full (method block, 70 layers)") == (2.0, 1.0)
    assert share("full", "--recompute-granularity full --recompute-method block "
                 "--recompute-num-layers 2") == (2.0, 0.2)  # fmt: skip
    assert share("full", "--recompute-method block --recompute-num-layers 2", pp=2) == (2.0, 0.1)
    assert share("full", "--recompute-method block --recompute-num-layers 2", vpp=2) == (2.0, 0.4)
    assert share("full", "--recompute-method uniform --recompute-num-layers 1") == (2.0, 1.0)
    assert share("full") == (2.0, 1.0)
    assert share("--recompute-method block --recompute-num-layers 3 (no granularity)")[1] == 1.0
    # "blockwise FP8" or "transformer block" is not the block method; YAML spells it too
    assert share("full", "uniform method, recompute_num_layers 1, blockwise FP8") == (2.0, 1.0)
    assert share("full", "recompute_method: block\nrecompute_num_layers: 5") == (2.0, 0.5)
    # block method with N = 0 recomputes no layer in full
    assert share("full", "--recompute-method block --recompute-num-layers 0") == (0.0, 1.0)
    # a row that states no degrees: N of the plan rule's stages (here one stage of 40)
    bare = {**r["parallel"], "tp": None, "pp": None, "dp": None, "vpp": None}
    plan = V.row_plan(
        row(r["id"], parallel=bare), V.row_model(r), system=load_system("atlas800t_a2")
    )[0]
    chunk = 40 / (float(plan.pp) * float(plan.vpp))
    assert float(plan.recompute_fraction) == pytest.approx(min(1.0, 1 / chunk))


def test_a_deployment_row_without_its_batch_reads_the_running_requests_its_notes_state():
    """A decode row whose global_batch is empty takes the running requests its notes bound
    (the largest engine admission flag, the decode instance's, and the smallest
    closed-loop concurrency), else a batch it names, per attention-DP rank; where it named
    neither it decoded at the largest batch that fits (SGLang's 20 ms Atlas A3 rows at
    concurrency 32: +533% to +917% with the field blanked, their stated-batch +3% to +29%).
    Each says what it read."""
    from emu.validation._plans import batch_said, running_requests

    pd = "prefill --max-running-requests 8; decode --max-running-requests 832. concurrency 832"
    assert running_requests(pd)[0] == 832
    assert running_requests("prefill max 1 running request, decode max 32 running, "
                            "concurrency 32, 64 prompts")[0] == 32  # fmt: skip
    assert running_requests("--max-concurrency 16, --max-num-seqs 64")[0] == 16
    assert running_requests("200 concurrent users")[0] == 200
    assert running_requests("concurrency 0; 3,000 requests") == (None, None)
    assert running_requests("prefill --max-running-requests 4096; decode "
                            "--max-running-requests 128")[0] == 128  # fmt: skip
    for notes in ("concurrency 128 per gpu", "concurrency 4-64 sweep", "concurrency 1,2,4,8",
                  "--max-num-seqs 64", "max_batch_size 128"):  # fmt: skip
        assert running_requests(notes) == (None, None), notes
    assert batch_said("prefill batch 8, decode batch 256") == 256
    for notes in ("batch 16k tokens", "micro batch 4", "batch 8.5", "batch 1,2,4,8"):
        assert batch_said(notes) is None, notes
    assert batch_said("table 6: batch 1, tpot 18.44 ms") == 1
    assert batch_said("global batch size of 60 x 288 = 17,280") is None
    assert batch_said("cuda-graph bs 12-26 per rank") is None
    for rid in ("sglang_a3_dsr1_pdsep_32c_3p9k_1k_20ms", "sglang_a3_dsr1_pdsep_32c_3p5k_1p5k_50ms",
                "sglang_a2_qwen3_32b_tp8_4k_1p5k_lowlat"):  # fmt: skip
        base = ROWS[rid]
        blank = row(rid, id=rid + "_nobatch", parallel={**base["parallel"], "global_batch": None})
        got, want = V.validate_rows([blank, base])
        assert got["predicted"] == pytest.approx(want["predicted"], rel=1e-6)
        assert any(
            a.startswith("running requests not in global_batch") for a in got["approximates"]
        )
        assert not any("global_batch" in a for a in want["approximates"])
    # a known limit: Pangu's "batch 1" is its 4-card instance's, read per attention-DP rank
    # (4 sequences over 4 ranks: +213% where the stated batch gives -6%)
    rid = "pangu_pro_moe_800ia2_decode_bs1"
    blank = row(rid, id=rid + "_nobatch", parallel={**ROWS[rid]["parallel"], "global_batch": None})
    s = V.serving_row(blank, V.row_model(blank))
    assert float(s.decode.microbatch) == 1 and s.batch_cap is None
    assert "batch 1 read per attention-DP rank" in s.batch_read


def test_a_training_row_without_its_global_batch_reads_its_notes_or_takes_the_rule_default():
    """A training row whose global_batch is empty reads the batch its notes write ("GBS=64",
    "global batch size 1,536"), else takes the plan rule's (>= 4 Mi tokens, as `emu run`
    does) where it took one micro-batch per DP rank (DeepSeek-V3's PP16 run, blanked, came
    out 14x slow: one micro-batch in a 16-stage pipeline). Each says what it read, and a
    step-time row that the default reaches says its time scales with the batch."""
    from emu.validation._plans import global_batch_of

    rid = "nemo2407_pre_GPT3-175B_128"  # tp4 pp8 dp4 vpp6 mb1, global batch 256
    base = ROWS[rid]
    blank = {**base["parallel"], "global_batch": None}
    said = row(rid, id=rid + "_gbs", parallel=blank, notes=base["notes"] + " (GBS=256)")
    assert global_batch_of(said) == (256, "global batch not in parallel.global_batch: 256 "
                                     "from the notes ('gbs=256')")  # fmt: skip
    assert global_batch_of(row(rid, notes="global batch size of 1,536 sequences"))[0] == 256
    assert global_batch_of(row(rid, parallel=blank, notes="global batch size 1,536"))[0] == 1536
    for notes in ("global batch size of 60 x 288", "GBS 4,096 tokens",
                  "global batch sizes 1,2,4"):  # fmt: skip
        assert global_batch_of(row(rid, parallel=blank, notes=notes))[0] is None, notes
    # a batch in tokens is its sequences (session 37), not a count of 16
    tokens = row(rid, parallel=blank, notes="global batch of 16M tokens")
    assert global_batch_of(tokens)[0] == 2**24 // 2048
    none = row(rid, id=rid + "_nogbs", parallel=blank)
    got, want, rule = V.validate_rows([said, base, none])
    assert got["predicted"] == pytest.approx(want["predicted"], rel=1e-6)
    assert any(
        a.startswith("global batch not in parallel.global_batch") for a in got["approximates"]
    )
    # the rule's default: >= 4 Mi tokens of 2,048 -> 2,048 sequences (512 micro-batches per
    # DP rank), a smaller bubble than the stated 256: faster
    assert rule["status"] == "ok" and rule["predicted"] > want["predicted"]
    assert "global batch not stated: 2048 sequences (emu's default" in " ".join(
        rule["approximates"]
    )
    odd = row(rid, id=rid + "_odd", parallel={**blank, "global_batch": "abc"})
    assert "global batch 'abc' is not a positive integer: 2048 sequences" in " ".join(
        V.validate_rows([odd])[0]["approximates"]
    )
    timed = next(r for r in ROWS.values() if r["metric"] == "iteration_time")
    gone = row(timed["id"], id="t", parallel={**timed["parallel"], "global_batch": None})
    res = V.validate_rows([gone])[0]
    assert res["status"] == "ok"
    assert any(a.endswith("a step time scales with it") for a in res["approximates"])


def test_a_row_without_its_precision_reads_the_format_its_notes_name():
    """A row whose precision field is empty takes the format its notes name: what a MoE
    dispatch sends ("FP8 dispatch", "INT8 dispatching"), else the run's ("precision
    MXFP8", "FP8 mixed precision", "W8A8 quantization"); it took the rules' defaults (bf16
    dispatch: DeepEP's low-latency FP8 dispatch rows came out +115-127%). It says so."""
    from emu.validation._rows import notes_precision

    assert notes_precision({"metric": "moe_dispatch_latency", "notes": "INT8 dispatching"}) == (
        "int8", "INT8 dispatch")  # fmt: skip
    assert notes_precision({"metric": "moe_combine_latency", "notes": "INT8 dispatching"}) == (
        None, None)  # fmt: skip
    assert notes_precision({"metric": "mfu", "notes": "pretrain; precision MXFP8; x"})[0] == "fp8"
    assert notes_precision({"metric": "mfu", "notes": "W8A8 quantization"})[0] == "int8"
    assert notes_precision({"metric": "mfu", "notes": "FP8 mixed precision"})[0] == "fp8"
    assert notes_precision({"metric": "mfu", "notes": "a BF16 baseline"}) == (None, None)
    ids = ("deepep_v1_ll_dispatch_ep256", "deepep_ascend_a3_ll_dispatch_bw_ep8", "dsv3_pretrain")
    for rid in ids:
        got, want = V.validate_rows([row(rid, id=rid + "_x", precision=None), ROWS[rid]])
        assert got["predicted"] == pytest.approx(want["predicted"], rel=1e-6)
        assert any(a.startswith("precision not stated: ") for a in got["approximates"])


def test_notes_name_a_precision_and_a_pre_training_length_only_where_they_are_unambiguous():
    """The strongest phrase wins ("FP8 GEMMs" over "BF16 weights"); two formats in phrases
    of one strength, a negation or a baseline's format name none; GPT-2, GPT-4 and gpt-oss
    are not GPT-3's 2,048 context, Code Llama is Llama 2's 4,096."""
    from emu.validation._rows import TRAIN_CONTEXTS, notes_precision

    said = {
        "BF16 weights, FP8 GEMMs": "fp8",
        "FP8 training vs BF16 training": None,
        "not FP8 training; bf16": None,
        "an FP8 training baseline; this run BF16": None,
    }
    for notes, prec in said.items():
        assert notes_precision({"metric": "mfu", "notes": notes})[0] == prec, notes
    import re

    def context(name):
        return next((n for p, n, _ in TRAIN_CONTEXTS if re.search(p, name.lower())), None)

    assert [context(n) for n in ("GPT-2 1.5B", "GPT-4", "gpt-oss-120b", "GPT 1T",
                                 "Megatron GPT 8.3B", "Code Llama 34B")] == [
        None, None, None, 2048, 2048, 4096]  # fmt: skip
