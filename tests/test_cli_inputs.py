"""Inputs that were accepted and then ignored, cut or lost (a red-team pass over search,
sweep, validate, program and the region files, session 34): each is now refused in one
line, said in a note, or kept."""

import json

import pytest
from _cli import run_cli
from _cli import run_json as _run_json

run_json = _run_json

SWEEP = ["sweep", "--system", "dgx_h100", "--model", "llama3_8b"]


def test_sweep_out_keeps_an_earlier_result_unless_told_to_overwrite(capsys, tmp_path):
    out = tmp_path / "s.csv"
    args = [*SWEEP, "--chips", "16", "--seq-len", "4096", "--free", "pp", "--out", str(out)]
    code, _, err = run_cli(capsys, *args)
    assert code == 0, err
    first = out.read_bytes()
    code, _, err = run_cli(capsys, *args[:-4], "--free", "pp,zero", "--out", str(out))
    assert code == 2 and f"--out '{out}' exists" in err and "--overwrite" in err
    assert out.read_bytes() == first  # refused before any work: the earlier table stands
    code, _, err = run_cli(capsys, *args, "--overwrite")
    assert code == 0, err


def test_grid_over_the_systems_size_is_refused_for_chips(capsys):
    """`--grid n_chips=8,16` labelled rows 16 that ran on 8 chips."""
    code, _, err = run_cli(capsys, *SWEEP, "--grid", "n_chips=8,16")
    assert code == 2 and "give the counts as --chips 8,16" in err


def test_a_serving_search_searches_the_batch_unless_given(capsys):
    """`--free tp` in decode left the batch at 1: its best was 12x below the SLO's."""
    args = [*SWEEP, "--phase", "decode", "--tpot-slo", "20ms", "--json"]
    free = run_json(capsys, *args, "--free", "tp")["best"]
    whole = run_json(capsys, *args)["best"]
    assert free["plan"]["microbatch"] > 1
    assert free["tokens_per_s"] == pytest.approx(whole["tokens_per_s"], rel=0.02)
    notes = run_json(capsys, *args, "--free", "tp")["notes"]
    assert any(n.startswith("microbatch (the batch per DP rank) is searched") for n in notes)
    fixed = run_json(capsys, *args, "--free", "tp", "--batch", "4")
    assert fixed["best"]["plan"]["microbatch"] == 4
    assert not any("searched too" in n for n in fixed["notes"])


def _row(**parallel) -> str:
    from emu.validation import default_measurements

    lines = default_measurements().read_text(encoding="utf-8").splitlines()
    row = json.loads(next(r for r in lines if '"id": "sc21_t1_1.7B"' in r))
    key, value = next(iter(parallel.items()))
    row["id"] = f"{key}_{value}"
    row["parallel"][key] = value
    return json.dumps(row)


def test_validate_says_which_degrees_it_could_not_use_and_strict_exits_1(capsys, tmp_path):
    """tp 0, -8 or "thirty" were dropped (the degree planned again) and tp 2.5 ran as 2,
    without a word. They still are (rows from other sources may state odd things: the row is
    modelled, no prediction moves), and `approximates` now says so; with --strict, a row
    that cannot be read sets exit status 1."""
    path = tmp_path / "rows.jsonl"
    odd = [_row(tp=0), _row(tp=2.5), _row(dp="thirty"), _row(tp="8")]
    path.write_text("\n".join(odd) + "\n")
    code, out, err = run_cli(capsys, "validate", str(path), "--json")
    assert code == 0, err
    rows = json.loads(out)["rows"]
    assert [r["status"] for r in rows] == ["ok"] * 4
    said = [[a for a in r["approximates"] if a.startswith("parallel.")] for r in rows]
    assert said[0] == ["parallel.tp 0 is not a whole number >= 1: taken as not stated"]
    assert said[1] == [  # as before, now said (and the dp the cut tp leaves, session 36)
        "parallel.tp 2.5 is not a whole number: 2 used",
        "parallel.dp 32 at tp 2, pp 1, cp 1 is not the row's 32 ranks: dp 16 used",
    ]
    assert "parallel.dp 'thirty'" in said[2][0]  # "8" is read as 8: its dp 32 no longer fits
    assert said[3] == ["parallel.dp 32 at tp 8, pp 1, cp 1 is not the row's 32 ranks: dp 4 used"]
    path.write_text("\n".join([_row(tp=8), _row(tp=8)]) + "\n")  # a duplicate id
    code, out, err = run_cli(capsys, "validate", str(path))
    assert code == 0 and "rows 2: modelled 1" in out and "errors 1" in out
    code, out, err = run_cli(capsys, "validate", str(path), "--strict")
    assert code == 1 and "rows 2: modelled 1" in out
    assert err.startswith("emu: 1 row could not be read (ERROR above")


def test_program_hlo_refuses_the_builders_timeout(capsys, tmp_path):
    hlo = tmp_path / "m.hlo"
    hlo.write_text("HloModule m\n")
    code, _, err = run_cli(capsys, "program", "--hlo", str(hlo), "--mesh", "data=2",
                           "--timeout", "5")  # fmt: skip
    assert code == 2 and "--timeout is for a builder" in err


def test_a_region_file_is_named_as_its_file(capsys, tmp_path):
    from emu.catalog import config_dir

    text = (config_dir() / "regions" / "south_africa.toml").read_text()
    (tmp_path / "mine.toml").write_text(text)  # still says name = "south_africa"
    code, _, err = run_cli(capsys, "run", "--region", str(tmp_path / "mine.toml"))
    assert code == 2 and 'a region\'s name must equal its file stem: set name = "mine"' in err


def test_a_changed_tdp_says_what_it_means(capsys):
    """A lower chip.tdp_w cut the power at the same step time, and a grid over it always
    picked the lowest: it is a more efficient chip, not a power cap, and the note says so."""
    d = run_json(capsys, "run", "--system", "dgx_h100", "--model", "llama3_8b",
                 "--set", "chip.tdp_w=500")  # fmt: skip
    assert any(
        n.startswith("chip.tdp_w sets the power drawn at the same clocks") for n in d["notes"]
    )
    d = run_json(capsys, *SWEEP, "--chips", "8", "--free", "pp", "--grid", "chip.tdp_w=500,700")
    assert any("emu models no power capping" in n for n in d["notes"])
    d = run_json(capsys, "run", "--system", "dgx_h100", "--model", "llama3_8b")
    assert not any("tdp_w" in n for n in d["notes"])


def test_small_messages_say_what_was_meant(capsys, tmp_path):
    code, _, err = run_cli(capsys, *SWEEP, "--power-cap", "60kw")
    assert code == 2 and "(units are case-sensitive); did you mean 'kW'?" in err
    code, _, err = run_cli(capsys, "run", "--set", "chip.hbm_bytes_per_s=3tb/s")
    assert code == 2 and "did you mean 'TB/s' or 'Tb/s'?" in err
    path = tmp_path / "rows.jsonl"
    path.write_text(_row(tp=8).replace('"kind": "train"', '"kind": "trian"') + "\n")
    code, _, err = run_cli(capsys, "validate", str(path))
    assert code == 2 and "line 1: unknown kind 'trian'; known: train, prefill" in err
    (tmp_path / "empty.py").write_text("X = 1\n")
    code, _, err = run_cli(capsys, "program", f"{tmp_path / 'empty.py'}:build", "--devices", "2")
    assert code == 2 and "has no function 'build'; it defines no functions." in err


def test_a_name_of_the_other_kind_and_a_repeated_set_are_said(capsys):
    """`describe llama3_70b` said only "unknown system"; a path given twice in --set kept the
    last value and the note listed both as applied."""
    code, _, err = run_cli(capsys, "describe", "llama3_70b")
    assert code == 2 and "'llama3_70b' is a model, not a system" in err
    code, _, err = run_cli(capsys, "run", "--model", "gb200_nvl72")
    assert code == 2 and "'gb200_nvl72' is a system, not a model" in err
    code, _, err = run_cli(capsys, "run", "--set", "chip.tdp_w=1000", "--set", "chip.tdp_w=1200")
    assert code == 2 and "--set chip.tdp_w is given twice; give it once." in err
    # `list --fields ""` printed the whole catalog; --regions beside --fields was dropped
    code, _, err = run_cli(capsys, "list", "--fields", "")
    assert code == 2 and "--fields is empty" in err
    code, _, err = run_cli(capsys, "list", "--fields", "plan", "--regions")
    assert code == 2 and "--fields and --regions list different things; give one." in err


def test_a_plot_is_written_in_its_suffix_format_or_refused(capsys, tmp_path):
    """--plot wrote PNG bytes under any name (plot.pdf, notes.txt); --plot "" was skipped."""
    note = tmp_path / "notes.txt"
    note.write_text("mine\n")
    for value, needle in ((str(note), "use a .png or .pdf or .svg file name"),
                          ("", "--plot is empty")):  # fmt: skip
        code, _, err = run_cli(capsys, "validate", "--plot", value)
        assert code == 2 and needle in err, err
    assert note.read_text() == "mine\n"


def test_a_kind_spelled_training_is_found_by_kind_train(capsys, tmp_path):
    """A row of kind "Training" was modelled as train, yet `--kind train` dropped it (the
    filter read the kind before it was normalised): the reader now spells it train."""
    row = json.loads(_row(tp=8))
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({**row, "kind": " Training"}) + "\n")
    report = run_json(capsys, "validate", str(path), "--kind", "train")
    assert [(r["id"], r["kind"], r["status"]) for r in report["rows"]] == [("tp_8", "train", "ok")]


@pytest.mark.parametrize(
    "args, said",
    [  # the last of a repeated flag won silently (session 41 red team)
        (["compare", "--model", "llama3_8b", "--systems", "dgx_h100", "--system", "dgx_b200"],
         "--systems and --system (one option) are both given"),
        (["run", "--model", "llama3_8b", "--tp", "2", "--tp=4"], "--tp is given twice"),
        (["run", "--model", "llama3_8b", "--model", "llama3_70b"], "--model is given twice"),
    ],
)  # fmt: skip
def test_a_flag_that_takes_one_value_is_refused_when_given_twice(capsys, args, said):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and said in err and "give it once" in err and not out


def test_a_flag_is_not_read_as_an_abbreviation_of_another(capsys):
    """`--sys` was `--system`; `compare --system` (an abbreviation of `--systems`) is now
    its own spelling of it."""
    code, _, err = run_cli(capsys, "run", "--model", "llama3_8b", "--sys", "dgx_h100")
    assert code == 2 and "unrecognized arguments: --sys" in err
    got = run_json(capsys, "compare", "--model", "llama3_8b", "--system", "dgx_h100,dgx_b200")
    assert [r["system"] for r in got["results"]] == ["dgx_h100", "dgx_b200"]


def test_unknown_plan_and_model_paths_keep_their_prefix(capsys):
    code, _, err = run_cli(capsys, "run", "--model", "llama3_8b", "--set", "plan.tpp=1")
    assert code == 2 and "unknown field path 'plan.tpp'" in err and "plan.tp," in err
    code, _, err = run_cli(capsys, "run", "--model", "llama3_8b", "--set", "model.nosuch=1")
    assert code == 2 and "unknown field path 'model.nosuch'" in err


def test_a_name_the_typed_one_begins_is_suggested(capsys):
    code, _, err = run_cli(capsys, "describe", "gb200")
    assert code == 2 and "Did you mean 'gb200_nvl72'?" in err
    code, _, err = run_cli(capsys, "run", "--model", "gpt3")
    assert code == 2 and "'gpt3_175b'" in err.split("Known:")[0]


def test_a_calibrated_family_cannot_borrow_another_ones_parameters(capsys, tmp_path):
    """`family = "hopper"` with `like = "ampere"` ran on Ampere's numbers labelled Hopper."""
    from emu.catalog import config_dir

    text = (config_dir() / "systems" / "dgx_h100.toml").read_text(encoding="utf-8")
    assert '\nfamily = "hopper"' in text
    bad = tmp_path / "dgx_h100.toml"
    bad.write_text(text.replace('\nfamily = "hopper"', '\nfamily = "hopper"\nlike = "ampere"'))
    code, _, err = run_cli(capsys, "run", "--model", "llama3_8b", "--system", str(bad))
    assert code == 2 and "chip family 'hopper' is calibrated" in err and "drop `like`" in err
    assert '\nlink = "nvlink4"' in text  # a tier's link type: the same rule
    bad.write_text(text.replace('\nlink = "nvlink4"', '\nlink = "nvlink4"\nlike = "ib"', 1))
    code, _, err = run_cli(capsys, "run", "--model", "llama3_8b", "--system", str(bad))
    assert code == 2 and "link type 'nvlink4' is calibrated" in err


def test_a_model_file_with_expert_fields_but_no_experts_is_refused(capsys, tmp_path):
    m = tmp_path / "m.toml"
    m.write_text(
        'name = "m"\nn_layers = 2\nd_model = 256\nn_heads = 4\nd_ff = 1024\nvocab = 1000\n'
        "top_k = 2\n"
    )
    code, _, err = run_cli(capsys, "run", "--model", str(m), "--system", "dgx_h100")
    assert code == 2 and "top_k = 2 applies to an MoE model's experts" in err
    hf = tmp_path / "hf"
    hf.mkdir()
    cfg = {"num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
           "intermediate_size": 1024, "vocab_size": 1000, "text_config": "oops"}  # fmt: skip
    (hf / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(capsys, "run", "--model", str(hf), "--system", "dgx_h100")
    assert code == 2 and "text_config must be a JSON object" in err
    # a dense config of an MoE family's class keeps its expert fields unread, not refused
    del cfg["text_config"]
    cfg.update(moe_intermediate_size=1408, n_shared_experts=2, n_group=8, topk_group=4)
    (hf / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(capsys, "run", "--model", str(hf), "--system", "dgx_h100")
    assert code == 0, err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(capsys, "run", "--model", str(empty), "--system", "dgx_h100")
    assert code == 2 and "not a TOML file or a Hugging Face folder with a config.json" in err


def test_serve_takes_prompts_and_outputs_up_to_their_bounds(capsys):
    """--context's bound must hold serve's mean context, prompt + output / 2 (1.3e7 here)."""
    code, _, err = run_cli(
        capsys, "serve", "--model", "llama3_8b", "--system", "dgx_h100",
        "--prompt-len", "9000000", "--output-len", "4000000",
    )  # fmt: skip
    assert code == 2 and "does not fit in HBM" in err and "context" not in err
