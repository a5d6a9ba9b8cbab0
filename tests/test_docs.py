"""The docs say what the code does, and cannot drift from it (issues 14 and 15).

- every name of the "what the model computes" table (docs/model.md, copied into the README)
  resolves to a documented function or class;
- every public module has an API page in the site's navigation;
- the generated CLI reference covers every subcommand and every option of the parser;
- ARCHITECTURE.md's diagram names every module, and the tests it cites exist;
- the tutorial notebook is committed without outputs and uses only names that exist (CI
  executes it: `.ci/run`);
- a new system is one TOML file: a toy one loads by path and by name, runs through
  `emu.evaluate` and the CLI, with no entry anywhere else.

The MkDocs build itself (`mkdocs build --strict`) runs in `.ci/run` with the docs extra.
"""

import ast
import importlib
import importlib.util
import inspect
import json
import math
import pkgutil
import re
import shutil
from pathlib import Path

import jax
import pytest

import emu
import emu.catalog
from emu.cli import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _hook():
    """docs/hooks/emu_docs.py (the MkDocs hook; importable without MkDocs)."""
    spec = importlib.util.spec_from_file_location("emu_docs", ROOT / "docs/hooks/emu_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


HOOK = _hook()


def _resolve(dotted: str):
    """The object `emu.a.b.c` names: the longest importable module prefix, then getattr."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
            break
        except ModuleNotFoundError:
            continue
    for name in parts[i:]:
        obj = getattr(obj, name)
    return obj


# --- "what the model computes" --------------------------------------------------------


def test_every_name_in_the_model_table_resolves_and_is_documented():
    rows = HOOK.model_table()
    assert len(rows) >= 25
    for quantity, unit, names in rows:
        assert names, f"row '{quantity}' names no function"
        assert unit, f"row '{quantity}' has no unit"
        for name in names:
            obj = _resolve(name)  # AttributeError / ModuleNotFoundError names the culprit
            assert callable(obj), f"{name} is not a function or class"
            assert (inspect.getdoc(obj) or "").strip(), f"{name} has no docstring"


def test_the_model_table_covers_the_front_door():
    named = {n for _, _, names in HOOK.model_table() for n in names}
    for name in ("emu.objective.evaluate", "emu.step.train_step", "emu.power.step_power"):
        assert name in named


def test_readme_carries_the_same_model_table():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    if "<!-- model-table:start -->" not in readme:
        pytest.skip("README has no model table yet (snippet: /work/notes/docs-readme.md)")
    part = lambda t: t.split("<!-- model-table:start -->")[1].split("<!-- model-table:end -->")[0]  # noqa: E731
    docs = (ROOT / "docs/model.md").read_text(encoding="utf-8")
    assert part(readme).strip() == part(docs).strip(), "README and docs/model.md tables differ"


# --- API reference and navigation -----------------------------------------------------

#: top-level modules without an API page, each with its reason
NO_API_PAGE = {
    "__main__": "runs the CLI",
    "cli": "documented by the generated CLI reference (docs/cli.md)",
    "data": "package data (the measurement set), not code",
}


def test_every_public_module_has_an_api_page_in_the_nav():
    modules = {m.name for m in pkgutil.iter_modules(emu.__path__) if not m.name.startswith("_")}
    documented = set(HOOK.api_modules())
    missing = {f"emu.{m}" for m in modules - set(NO_API_PAGE)} - documented
    assert not missing, f"add docs/api/<module>.md with '::: <module>' for {sorted(missing)}"
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in sorted((ROOT / "docs/api").glob("*.md")):
        assert f"api/{page.name}" in nav, f"docs/api/{page.name} is not in mkdocs.yml's nav"
    for name in documented:
        importlib.import_module(name)


def test_exports_table_lists_every_name_of_emu_all():
    table = HOOK.exports_markdown()
    for name in emu.__all__:
        assert f"[`emu.{name}`]" in table


# --- CLI reference --------------------------------------------------------------------


def test_cli_reference_covers_every_subcommand_and_option():
    parser = build_parser()
    commands = HOOK.cli_commands(parser)
    assert {path.split()[1] for path, _, _ in commands} == set(COMMANDS)
    page = HOOK.cli_reference_markdown(parser)
    for path, _, sub in commands:
        assert f"## `{path}`" in page
        assert f"usage: {path}" in page
        for action in sub._actions:
            if action.help == "==SUPPRESS==":
                continue
            for flag in action.option_strings:
                assert flag in page, f"{path} {flag} missing from the CLI reference"


def test_cli_reference_does_not_depend_on_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    narrow = HOOK.cli_reference_markdown()
    monkeypatch.setenv("COLUMNS", "200")
    assert HOOK.cli_reference_markdown() == narrow


# --- docstring rendering --------------------------------------------------------------


def test_house_docstrings_become_markdown():
    doc = [
        "Seconds of a thing:",
        "",
        "    t = a / b",
        "",
        "Args: a bytes; b bytes/s.",
        "Returns: seconds.",
        ">>> f(1)",
        "[1.0, 2.0]",
        "",
        "```",
        ">>> inside a fence stays",
        "```",
    ]
    out = HOOK.house_docstring(doc)
    assert out[:4] == doc[:4]  # text and the indented formula untouched
    assert "**Args:** a bytes; b bytes/s." in out and "**Returns:** seconds." in out
    i = out.index("```pycon")
    assert out[i + 1 : i + 4] == [">>> f(1)", "[1.0, 2.0]", "```"]
    assert out.count("```pycon") == 1 and ">>> inside a fence stays" in out
    assert HOOK.house_docstring(["n = tp*dp*cp, `a*b` and *emphasis*"]) == [
        "n = tp\\*dp\\*cp, `a*b` and *emphasis*"
    ]
    google = HOOK.house_docstring(["Args:", "    x: the input", "      more on x", "    y: other"])
    assert google == ["**Args:**", "", "- x: the input more on x", "- y: other"]


# --- ARCHITECTURE.md ------------------------------------------------------------------


def test_architecture_names_every_module_and_cites_tests_that_exist():
    text = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")
    diagram = text.split("```")[1]
    modules = {m.name for m in pkgutil.iter_modules(emu.__path__)} - {"__main__", "data"}
    for m in sorted(modules):
        assert re.search(rf"\b{m}\b", diagram), f"ARCHITECTURE.md's diagram lacks {m}"
    cited = re.findall(r"`(tests/test_\w+\.py)::(test_\w+)`", text)
    assert len(cited) >= 4
    for path, name in cited:
        source = (ROOT / path).read_text(encoding="utf-8")
        assert re.search(rf"^def {name}\(", source, re.M), f"{path}::{name} does not exist"


# --- the tutorial notebook ------------------------------------------------------------


def _notebook():
    return json.loads((ROOT / "examples/tutorial.ipynb").read_text(encoding="utf-8"))


def test_tutorial_is_committed_without_outputs():
    for cell in _notebook()["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None


def test_tutorial_uses_names_that_exist():
    """Every `emu.x.y`, `search.x` and `policy.x` the notebook calls exists (a quick check in
    the unit tests; CI executes the whole notebook)."""
    code = "\n".join("".join(c["source"]) for c in _notebook()["cells"] if c["cell_type"] == "code")
    aliases = {"emu": "emu", "search": "emu.search", "policy": "emu.policy"}
    seen = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Attribute):
            chain, inner = [node.attr], node.value
            while isinstance(inner, ast.Attribute):
                chain.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in aliases:
                dotted = ".".join([aliases[inner.id], *reversed(chain)])
                # attributes of results (r.tokens_per_s) start from a variable, not a module
                seen.add(dotted)
                obj = _resolve(dotted)
                assert obj is not None
    for needed in ("emu.evaluate", "emu.search.gradient_search", "emu.search.sweep"):
        assert needed in seen
    assert "jax.value_and_grad" in code or "jax.grad" in code
    assert "matplotlib" in code


# --- a new system is one TOML file ----------------------------------------------------

TOY_SYSTEM = """\
# A toy system for tests/test_docs.py: two 8-chip nodes of H100-like chips. Every number is
# made up for the test (assumption), in the shape of configs/systems/dgx_h100.toml.
name = "toy_pod"
description = "toy: 16 H100-like chips, 8 per NVLink node, 400G InfiniBand"
n_chips = 16                          # assumption: two nodes of 8

[chip]
name = "Toy H100"
family = "hopper"                     # calibrated family: efficiencies from configs/calibration
hbm_bytes = 80e9                      # assumption
hbm_bytes_per_s = 3.35e12             # assumption
tdp_w = 700.0                         # assumption
idle_w = 100.0                        # assumption

[chip.peak_flops_per_s]
bf16 = 0.989e15                       # assumption
fp16 = 0.989e15                       # assumption
fp8 = 1.979e15                        # assumption
int8 = 1.979e15                       # assumption
fp4 = 0.0                             # assumption: unsupported

[[tiers]]
name = "nvlink"
link = "nvlink4"                      # calibrated link type
domain_chips = 8                      # assumption
bytes_per_s = 450e9                   # assumption, unidirectional per chip
oversubscription = 1.0                # assumption
allreduce_speedup = 1.0               # assumption
switch_w_per_chip = 40.0              # assumption
optics_per_chip = 0.0                 # assumption
optic_w = 0.0                         # assumption
nic_w_per_chip = 0.0                  # assumption

[[tiers]]
name = "scale_out"
link = "ib"                           # calibrated link type
domain_chips = 100000                 # convention: the whole cluster
bytes_per_s = 50e9                    # assumption
oversubscription = 1.0                # assumption
allreduce_speedup = 1.0               # assumption
switch_w_per_chip = 30.0              # assumption
optics_per_chip = 2.0                 # assumption
optic_w = 15.0                        # assumption
nic_w_per_chip = 25.0                 # assumption

[host]
cpus_per_chip = 0.25                  # assumption
cpu_w = 350.0                         # assumption
other_w_per_chip = 150.0              # assumption

[facility]
psu_efficiency = 0.95                 # assumption
pue = 1.3                             # assumption
"""


def test_a_toy_system_is_one_toml_file(tmp_path, monkeypatch, capsys):
    path = tmp_path / "toy_pod.toml"
    path.write_text(TOY_SYSTEM)
    for line in TOY_SYSTEM.splitlines():  # the catalog's rule: every number has a source
        if re.match(r"^\w+ = [\d.]", line):
            assert "#" in line, line

    # by path, through the one entry point, with gradients to the new numbers
    system, model = emu.load_system(path), emu.load_model("llama3_8b")
    plan = emu.make_plan(tp=8, dp=2, global_batch=16, seq_len=4096)
    r = emu.evaluate(system, model, plan)
    assert bool(r.feasible) and 0.1 < float(r.mfu) < 0.9
    assert float(r.n_chips) == 16 and math.isfinite(float(r.tokens_per_joule))
    g = jax.grad(lambda s: emu.evaluate(s, model, plan).tokens_per_joule)(system)
    assert float(g.chip.tdp_w) < 0 < float(g.chip.hbm_bytes_per_s)
    assert float(system.chip.matmul_efficiency) > 0  # from the calibration, by family

    # by name: dropped into (a copy of) configs/systems/, it is listed and loads; nothing
    # else in the catalog or the code changes
    catalog = tmp_path / "configs"
    shutil.copytree(emu.catalog.config_dir(), catalog, ignore=shutil.ignore_patterns("*.py"))
    shutil.copy(path, catalog / "systems")
    monkeypatch.setattr(emu.catalog, "config_dir", lambda: catalog)
    assert "toy_pod" in emu.list_systems()
    by_name = emu.evaluate(emu.load_system("toy_pod"), model, plan)
    assert float(by_name.tokens_per_s) == pytest.approx(float(r.tokens_per_s))
    code = main(["run", "--system", "toy_pod", "--model", "llama3_8b", "--tp", "8", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["system"] == "toy_pod"
