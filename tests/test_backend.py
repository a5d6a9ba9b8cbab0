"""The NumPy backend (emu._backend, emu._npjax): the same numbers as JAX, without JAX.

A process that runs `emu run`, `compare`, `serve`, `describe` or `list` evaluates on NumPy
and never imports JAX; everything else (and every in-process caller, such as these tests)
uses JAX. The snapshot of tests/golden is the reference for both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emu
from emu import _npjax
from emu.struct import float_leaves
from tests._cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "evaluations.json"
RTOL = 2e-5  # as tests/test_golden.py: float32 rounding of reordered sums


def _python(code: str, env: dict | None = None, args: tuple = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def _emu(argv, backend: str | None, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m emu *argv` in a fresh process with EMU_BACKEND=backend (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "EMU_BACKEND"}
    if backend is not None:
        env["EMU_BACKEND"] = backend
    return subprocess.run(
        [sys.executable, "-m", "emu", *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
    )


def test_numpy_backend_reproduces_the_golden_snapshot_without_importing_jax():
    code = """
        import json, sys
        import emu._backend as backend
        assert backend.select("numpy") == "numpy"
        import emu
        from emu.objective import evaluate
        from emu.struct import float_leaves
        out = []
        for c in json.load(open(sys.argv[1])):
            s, m = emu.load_system(c["system"]), emu.load_model(c["model"])
            r = evaluate(s, m, emu.make_plan(**c["plan"]))
            out.append({k: float(v) for k, v in float_leaves(r).items()})
        print(json.dumps({"jax_imported": "jax" in sys.modules, "results": out}))
    """
    p = _python(code, args=(str(GOLDEN),))
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["jax_imported"] is False
    cases = json.loads(GOLDEN.read_text())
    assert len(got["results"]) == len(cases) >= 450
    bad = []
    for i, (c, r) in enumerate(zip(cases, got["results"], strict=True)):
        for path, want in c["result"].items():
            have = r.get(path)
            if want is None or have is None:
                if want != have:
                    bad.append((i, path, have, want))
                continue
            atol = 1e-6 * c["result"]["step_time_s"] if path.startswith("breakdown.") else 0
            if abs(have - want) > RTOL * abs(want) + atol:
                bad.append((i, path, have, want))
    assert not bad, f"{len(bad)} leaves differ from the snapshot, e.g. {bad[:5]}"


def _numbers(x, path=""):
    """Every number of a JSON object by path, without the timings and the backend."""
    if isinstance(x, dict):
        for k, v in x.items():
            if k not in ("compile_s", "eval_s", "backend"):
                yield from _numbers(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _numbers(v, f"{path}.{i}")
    else:
        yield path, x


@pytest.mark.parametrize(
    "argv",
    [
        ["compare"],
        ["run", "--model", "deepseek_r1", "--phase", "decode", "--system", "cloudmatrix384"],
        [
            "run",
            "--model",
            "deepseek_r1",
            "--phase",
            "decode",
            "--system",
            "cloudmatrix384",
            "--tp",
            "2",
            "--dp",
            "240",
            "--expert-ranks",
            "288",
            "--attention-groups",
            "3",
            "--kv-precision",
            "fp8",
        ],
    ],
    ids=["compare", "decode-cm384", "disaggregated-fp8-kv"],
)
def test_the_cli_process_runs_on_numpy_with_the_numbers_of_jax(argv, capsys):
    p = _emu([*argv, "--json"], None, timeout=300)
    assert p.returncode == 0, p.stderr
    numpy_run = json.loads(p.stdout)
    code, out, err = run_cli(capsys, *argv, "--json")  # in this process: JAX
    assert code == 0, err
    jax_run = json.loads(out)
    results = lambda d: d.get("results", [d])  # noqa: E731
    assert {r["backend"] for r in results(numpy_run)} == {"numpy"}
    assert {r["backend"] for r in results(jax_run)} == {"jax"}
    a, b = dict(_numbers(numpy_run)), dict(_numbers(jax_run))
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and isinstance(b[k], float):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-12), k
        else:
            assert a[k] == b[k], k


def test_a_bad_backend_is_one_line_before_any_work():
    p = _emu(["run"], "torch")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        "emu: error: EMU_BACKEND='torch' is not a backend; use one of jax, numpy "
        "(or unset it for jax)."
    ]


@pytest.mark.parametrize(
    "argv,what", [(["search"], "emu search"), (["run", "--plan", "best"], "emu run --plan best")]
)
def test_numpy_for_a_command_that_needs_jax_is_one_line_before_any_work(argv, what):
    p = _emu(argv, "numpy")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [
        f"emu: error: {what} needs JAX (jit, vmap or grad: a search, a fit or gradients), "
        "and EMU_BACKEND=numpy asks for NumPy; unset EMU_BACKEND or set it to jax."
    ]


def test_the_backend_is_chosen_once():
    from emu import _backend

    assert _backend.name() == "jax"  # this process imported the physics on JAX
    assert _backend.select("numpy") == "jax"
    with pytest.raises(ValueError, match="unknown backend 'torch'"):
        _backend.select("torch")


def test_numpy_keeps_jax_float32_defaults():
    assert _npjax.numpy.asarray(1.0).dtype == np.float32
    assert _npjax.numpy.where(np.bool_(True), 1.0, 0.0).dtype == np.float32
    assert _npjax.numpy.arange(3).dtype == np.int32
    assert _npjax.numpy.asarray(2**40).dtype == np.int64  # no silent int32 wrap-around
    assert _npjax.numpy.asarray(1.0, np.float64).dtype == np.float64  # asked for: kept
    x = np.linspace(-60, 60, 41, dtype=np.float32)
    for name in ("softplus", "sigmoid", "relu"):
        np.testing.assert_allclose(
            getattr(_npjax.nn, name)(x), getattr(jax.nn, name)(jnp.asarray(x)), rtol=1e-6
        )
    with np.errstate(over="ignore"):
        assert np.isfinite(_npjax.nn.sigmoid(np.float32(-1e4)))


def test_tree_functions_walk_pytrees_as_jax_does():
    s, m = emu.load_system("cloudmatrix384"), emu.load_model("deepseek_r1")
    p = emu.make_plan(tp=1, dp=16, ep=16, phase="decode", microbatch=8, seq_len=4096)
    tree = {"system": s, "pair": (m, [p, None])}
    leaves, treedef = _npjax.tree_flatten(tree)
    want = jax.tree_util.tree_leaves(tree)
    assert len(leaves) == len(want) == treedef.num_leaves
    assert all(a is b for a, b in zip(leaves, want, strict=True))
    back = _npjax.tree_unflatten(treedef, leaves)
    assert float_leaves(back["system"]).keys() == float_leaves(s).keys()
    assert back["pair"][0].name == m.name and back["pair"][1][1] is None
    doubled = _npjax.tree_map(lambda x: x * 2, s)
    assert float(doubled.chip.tdp_w) == 2 * float(s.chip.tdp_w)


def test_numpy_has_no_gradient_and_says_so():
    with pytest.raises(RuntimeError, match="needs the JAX backend.*unset EMU_BACKEND"):
        _npjax.grad(lambda x: x)(1.0)


@pytest.mark.parametrize("package", ["emu.search", "emu.validation", "emu.program"])
def test_lazy_packages_resolve_every_public_name(package):
    import importlib

    pkg = importlib.import_module(package)
    for name in pkg.__all__:
        assert getattr(pkg, name) is getattr(importlib.import_module(pkg._NAMES[name]), name)
    assert set(pkg.__all__) <= set(dir(pkg))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        pkg.nope  # noqa: B018


@pytest.mark.parametrize(
    "argv,numpy",
    [
        (["run", "--system", "dgx_a100"], True),
        (["compare", "--region", "south_africa"], True),
        (["serve"], True),
        ([], True),
        (["search", "--help"], True),
        (["--version"], True),
        (["search"], False),
        (["sensitivity"], False),
        (["run", "--plan", "best"], False),  # a gradient search: JAX
        (["compare", "--plan=best"], False),
        (["run", "--pla", "best"], False),  # argparse's abbreviation
        (["run", "--plan", "rule"], True),
        (["run", "--plan"], True),  # argparse reports the missing value
    ],
)
def test_the_cli_uses_numpy_only_where_nothing_needs_jax(argv, numpy):
    from emu.cli import forward_only

    assert forward_only(argv) is numpy
