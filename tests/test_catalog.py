import re

import pytest

from emu.catalog import config_dir, list_models, list_systems, load_model, load_system


def test_catalog_has_every_system_of_the_issue():
    want = {
        "cloudmatrix384",
        "gb200_nvl72",
        "gb300_nvl72",
        "dgx_b200",
        "dgx_b300",
        "dgx_h100",
        "dgx_h200",
        "hgx_h800",
        "dgx_a100",
        "atlas800t_a2",
    }
    assert want <= set(list_systems())


@pytest.mark.parametrize("name", list_systems())
def test_system_loads_and_every_number_cites_a_source(name):
    load_system(name)
    for i, line in enumerate((config_dir() / "systems" / f"{name}.toml").read_text().splitlines()):
        if re.match(r"\s*[a-z0-9_]+\s*=\s*[-+0-9.]", line):
            assert "#" in line, f"{name}.toml line {i + 1} has no source comment: {line}"


@pytest.mark.parametrize("name", list_models())
def test_models_load(name):
    assert float(load_model(name).n_layers) >= 1


@pytest.mark.parametrize(
    "spelling,kind,name",
    [
        ("Llama-3-70B", "models", "llama3_70b"),
        ("llama3-70b", "models", "llama3_70b"),
        ("deepseek-r1", "models", "deepseek_r1"),
        ("DeepSeek.V3", "models", "deepseek_v3"),
        ("GB200-NVL72", "systems", "gb200_nvl72"),
        ("CloudMatrix384", "systems", "cloudmatrix384"),
    ],
)
def test_names_resolve_from_obvious_spellings(spelling, kind, name):
    from emu.catalog import resolve_name

    assert resolve_name(spelling, kind) == name
    load = load_model if kind == "models" else load_system
    assert load(spelling).name == load(name).name


def test_an_unknown_name_gets_a_guess():
    with pytest.raises(ValueError, match="unknown model 'llama-3-71b'. Did you mean 'llama3_70b'"):
        load_model("llama-3-71b")


@pytest.mark.parametrize("name", ["deepseek_v3", "llama3_70b", "mixtral_8x7b"])
def test_hugging_face_config_gives_the_catalog_model(name):
    """MoE (routed, shared, leading dense layers, group-limited routing), MLA and MTP fields
    of a transformers config.json map onto the catalog's fields, value for value."""
    from pathlib import Path

    from emu.struct import float_leaves

    path = Path(__file__).parent / "data" / "hf" / f"{name}_config.json"
    hf, ref = load_model(path), load_model(name)
    values = lambda m: {k: float(v) for k, v in float_leaves(m).items()}
    assert values(hf) == values(ref)
    assert (hf.ffn, hf.attention, hf.tied_embeddings) == (
        ref.ffn,
        ref.attention,
        ref.tied_embeddings,
    )


def test_hugging_face_errors(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="not a transformer config.json"):
        load_model(tmp_path)  # a folder holding config.json
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_model(bad)
    for text, kind in (("[1]", "an array"), ("null", "null"), ('"x"', "a string")):
        bad.write_text(text)  # valid JSON, but not an object (was an AttributeError)
        with pytest.raises(ValueError, match=f"must hold a JSON object .*not {kind}"):
            load_model(bad)


def _tpu_text(**replace) -> str:
    from pathlib import Path

    text = (Path(__file__).parents[1] / "examples" / "tpu_like.toml").read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    return text


def test_a_new_chip_family_and_link_type_are_declarable(tmp_path):
    """`unknown chip family 'tpu'` / `unknown link type 'ici'` used to be the end (issue 15):
    a file declares them (`like` a calibrated one, or its own parameters), and the system
    says it is uncalibrated."""
    from pathlib import Path

    from emu.catalog import calibration, uncalibrated

    s = load_system(Path(__file__).parents[1] / "examples" / "tpu_like.toml")
    hopper = calibration()["chip_family"]["hopper"]
    assert float(s.chip.matmul_efficiency) == pytest.approx(hopper["matmul_efficiency"])
    assert float(s.chip.hbm_efficiency) == pytest.approx(0.85)  # the file's own value wins
    assert float(s.tiers[0].efficiency) == pytest.approx(0.80)
    assert uncalibrated(s) == ["chip family 'tpu'", "link type 'ici' (tier ici)"]
    assert uncalibrated(load_system("gb200_nvl72")) == []
    # without `like` or its own parameters, the error says how to declare it
    f = tmp_path / "tpu_like.toml"
    f.write_text(_tpu_text(**{'like = "hopper"': "", "hbm_efficiency = 0.85": ""}))
    with pytest.raises(ValueError, match="unknown chip family 'tpu'.*declare it: like = "):
        load_system(f)
    f.write_text(
        _tpu_text(**{"efficiency = 0.80 ": "", 'link = "ici" ': 'link = "ici"\nlike = "nvlink9"'})
    )
    with pytest.raises(ValueError, match="like = 'nvlink9' is not a calibrated link type"):
        load_system(f)


def test_a_defaulted_field_may_be_left_out_of_a_file():
    """A field with a default_factory (not only a default value) is optional in a TOML table
    (e.g. a per-chip count that core adds later must not break older files)."""
    import dataclasses

    import jax.numpy as jnp

    from emu.catalog import _build
    from emu.struct import dataclass, field

    @dataclass
    class Toy:
        a: jnp.ndarray = field("[0, 10]")
        b: jnp.ndarray = field("[1, 8]", default_factory=lambda: jnp.float32(1.0))

    kw = _build(Toy, {"a": 2.0}, "toy")
    assert set(kw) == {"a"} and float(Toy(**kw).b) == 1.0
    with pytest.raises(ValueError, match="toy: missing key 'a'"):
        _build(Toy, {"b": 2.0}, "toy")
    assert dataclasses.is_dataclass(Toy)


def test_hf_configs_give_their_sliding_window_and_its_layers():
    from emu.catalog import model_from_hf

    base = dict(num_hidden_layers=36, hidden_size=2880, num_attention_heads=64,
                num_key_value_heads=8, head_dim=64, intermediate_size=2880,
                vocab_size=201088)  # fmt: skip

    def window(**cfg):
        m = model_from_hf({**base, **cfg}, "x")
        return float(m.attention_window), float(m.window_layers)

    alternating = ["sliding_attention", "full_attention"] * 18
    assert window(sliding_window=128, layer_types=alternating) == (128, 18)  # gpt-oss
    assert window(sliding_window=4096) == (4096, 36)  # Mistral 7B v0.1: every layer
    assert window(sliding_window=4096, model_type="gemma2") == (4096, 18)
    assert window(sliding_window=1024, sliding_window_pattern=6) == (1024, 30)  # Gemma 3
    assert window(sliding_window=None) == (0, 0)  # Mistral 7B v0.2
    assert window(sliding_window=32768, use_sliding_window=False) == (0, 0)  # Qwen2
    assert window(sliding_window=4096, layer_types=["full_attention"] * 36) == (0, 0)
    with pytest.raises(ValueError, match="num_hidden_layers|n_layers"):  # one line, not int()'s
        model_from_hf({**base, "num_hidden_layers": "x", "sliding_window": 128}, "x")


@pytest.mark.parametrize(
    "cfg, field",
    [({"sliding_window": "4096"}, "sliding_window"), ({"sliding_window": -128}, "sliding_window"),
     ({"sliding_window": float("nan")}, "sliding_window"),
     ({"sliding_window": float("inf")}, "sliding_window"),
     ({"sliding_window": False}, "sliding_window"), ({"sliding_window": True}, "sliding_window"),
     ({"sliding_window": 1024, "sliding_window_pattern": "6"}, "sliding_window_pattern"),
     ({"sliding_window": 1024, "sliding_window_pattern": 0}, "sliding_window_pattern"),
     ({"sliding_window": 1024, "sliding_window_pattern": 6.0}, "sliding_window_pattern")],
)  # fmt: skip
def test_a_malformed_hf_sliding_window_is_refused_not_read_as_none(cfg, field):
    """A config.json window that is not a positive number was silently read as no window
    (every layer full attention: a silent wrong answer); it is refused in one line that
    names the file and the field."""
    from emu.catalog import model_from_hf

    base = dict(num_hidden_layers=36, hidden_size=2880, num_attention_heads=64,
                num_key_value_heads=8, head_dim=64, intermediate_size=2880,
                vocab_size=201088)  # fmt: skip
    with pytest.raises(ValueError, match=f"model 'cfg.json': config.json's {field} is"):
        model_from_hf({**base, **cfg}, "x", "model 'cfg.json'")
    # null and 0 stay "no window", as the Hugging Face configs write it
    assert float(model_from_hf({**base, "sliding_window": 0}, "x").attention_window) == 0


def test_an_expert_field_on_a_dense_model_is_refused():
    # load_model(name, {"top_k": 4}) on a dense model changed nothing and said nothing
    for field in ("top_k", "d_ff_expert", "n_shared_experts", "route_max_nodes"):
        with pytest.raises(ValueError, match=rf"'llama3_8b': {field} applies to an MoE model"):
            load_model("llama3_8b", {field: 2})
    moe = load_model("llama3_8b", {"n_experts": 8, "top_k": 2, "d_ff_expert": 2048})
    assert float(moe.n_experts) == 8 and float(moe.top_k) == 2
    assert float(load_model("deepseek_v3", {"top_k": 4}).top_k) == 4


def test_hf_configs_read_as_transformers_reads_them():
    """A red-team pass over config.json files (session 36): Gemma and GPT-2 configs leave
    tie_word_embeddings out and transformers ties them (read untied: Gemma 2 27B came out
    28.4B); Llama 4's text_config has one shared expert in every MoE layer (read without
    it); StarCoder2's MLP is not gated; Qwen2's window covers the layers from
    max_window_layers on (read on every layer); Qwen's mlp_only_layers and a step of MoE
    layers (read as MoE everywhere)."""
    from emu.catalog import model_from_hf
    from emu.workload import params_total

    base = {"hidden_size": 512, "num_attention_heads": 8, "num_hidden_layers": 4,
            "intermediate_size": 1024, "vocab_size": 1000}  # fmt: skip
    assert model_from_hf({**base, "model_type": "gemma2"}, "x").tied_embeddings
    assert model_from_hf({**base, "model_type": "gpt2"}, "x").tied_embeddings
    assert not model_from_hf({**base, "model_type": "llama"}, "x").tied_embeddings
    assert not model_from_hf(
        {**base, "model_type": "gemma2", "tie_word_embeddings": False}, "x"
    ).tied_embeddings
    assert model_from_hf({**base, "model_type": "starcoder2"}, "x").ffn == "gelu"
    scout = {"model_type": "llama4", "text_config": {
        "model_type": "llama4_text", "hidden_size": 5120, "intermediate_size": 8192,
        "intermediate_size_mlp": 16384, "num_attention_heads": 40, "num_key_value_heads": 8,
        "head_dim": 128, "num_hidden_layers": 48, "num_local_experts": 16,
        "num_experts_per_tok": 1, "interleave_moe_layer_step": 1, "vocab_size": 202048,
        "tie_word_embeddings": False}}  # fmt: skip
    m = model_from_hf(scout, "scout")
    assert float(m.n_shared_experts) == 1 and float(m.d_ff) == 16384
    assert float(params_total(m)) == pytest.approx(float(params_total(load_model("llama4_scout"))))
    qwen2 = {**base, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 64,
             "max_window_layers": 3}  # fmt: skip
    assert float(model_from_hf(qwen2, "x").window_layers) == 1
    moe = {**base, "model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2,
           "moe_intermediate_size": 256}  # fmt: skip
    assert float(model_from_hf({**moe, "mlp_only_layers": [0, 1]}, "x").n_dense_layers) == 2
    with pytest.raises(ValueError, match="mlp_only_layers .* are not the first layers"):
        model_from_hf({**moe, "mlp_only_layers": [1, 3]}, "x")
    with pytest.raises(ValueError, match="decoder_sparse_step = 2 puts experts on one layer in 2"):
        model_from_hf({**moe, "decoder_sparse_step": 2}, "x")


@pytest.mark.parametrize(
    ("cfg", "said"),
    [
        ({"hidden_size": "512"}, "config.json's hidden_size is '512'; give a positive number"),
        ({"num_attention_heads": 0}, "num_attention_heads is 0; give a positive number"),
        ({"n_group": "8"}, "config.json's n_group is '8'; give a number >= 0"),
        ({"tie_word_embeddings": "false"}, "tie_word_embeddings is 'false'; give true or false"),
        ({"layer_types": ["full_attention"] * 3, "sliding_window": 64},
         "layer_types names 3 layers, num_hidden_layers is 4"),
    ],
)  # fmt: skip
def test_hf_config_fields_of_the_wrong_type_are_one_line(cfg, said):
    """A string or zero where a count belongs failed in arithmetic ("internal error
    (TypeError)" from the CLI); a layer_types list of the wrong length was counted as it
    stood."""
    from emu.catalog import model_from_hf

    base = {"hidden_size": 512, "num_attention_heads": 8, "num_hidden_layers": 4,
            "intermediate_size": 1024, "vocab_size": 1000}  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(said)):
        model_from_hf({**base, **cfg}, "x", "model 'cfg.json'")
