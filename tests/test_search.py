import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _tables import read_table
from hypothesis import given, settings
from hypothesis import strategies as st

import emu
from emu.search import (
    COLUMNS,
    KNOBS,
    Problem,
    enumerate_plans,
    pareto_front,
    sweep,
    write_table,
)

ARGS = [
    "sweep",
    "--system",
    "gb200_nvl72",
    "--model",
    "llama3_70b",
    "--chips",
    "144",
    "--chunk",
    "256",
]


def _emu(*args, env=None, **kw):
    e = {**os.environ, **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "emu", *args],
        env=e,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _run(*args, env=None):
    p = _emu(*args, env=env)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return out, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    _run(*ARGS, "--out", str(d / "ref.csv"))
    return (d / "ref.csv").read_bytes()


def test_enumerated_plans_are_valid():
    system, model = emu.load_system("gb200_nvl72"), emu.load_model("llama3_70b")
    k = enumerate_plans(system, model, Problem("gb200_nvl72", "llama3_70b", 144))
    col = {name: k[:, i] for i, name in enumerate(KNOBS)}
    assert np.all(col["tp"] * col["pp"] * col["dp"] * col["cp"] == 144)
    assert np.all(64 % col["tp"] == 0) and np.all(80 % col["pp"] == 0)
    assert np.all((col["sp"] == 0) | (col["tp"] > 1))
    assert len({tuple(r) for r in k}) == len(k)  # no duplicates


def test_sweep_best_is_the_feasible_maximum_and_front_is_undominated(tmp_path):
    system, model = emu.load_system("dgx_h100"), emu.load_model("llama3_8b")
    res = sweep(
        system, model, Problem("dgx_h100", "llama3_8b", 16, seq_len=4096), tmp_path, chunk=128
    )
    csv = write_table(res, tmp_path / "all.csv")
    header = csv.read_text().splitlines()[0].split(",")
    # unpriced (no cost and region): no usd_per_mtoken column, not a column of NaN
    unpriced = [c for c in COLUMNS if c != "usd_per_mtoken"]
    assert header == [*KNOBS, "global_batch", "chips", *unpriced]
    assert "nan" not in csv.read_text()
    t = read_table(csv)
    assert len(t["tp"]) == res.evaluations
    feas = t["feasible"] > 0.5
    tpj = t["tokens_per_joule"]
    # the chips each plan uses; recompute and sp by name; a training table has no latency
    assert np.all(t["chips"] == 16) and set(t["recompute"]) <= {"none", "selective", "full"}
    assert set(t["sp"]) <= {"true", "false"} and np.all(np.isnan(t["ttft_s"]))
    assert res.best["tokens_per_joule"] == pytest.approx(float(tpj[feas].max()), rel=1e-6)
    assert res.feasible == int(feas.sum())
    front = [(p["tokens_per_s"], p["power_w"]) for p in res.pareto]
    for t, w in front:
        assert not any(t2 > t and w2 < w for t2, w2 in front)
    idx = pareto_front(np.array([1.0, 2.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0, 3.0]))
    assert sorted(idx.tolist()) == [1, 3]


@settings(max_examples=150, deadline=None)
@given(
    pts=st.lists(
        st.tuples(st.integers(0, 12), st.integers(0, 12)),  # small ranges: many ties
        min_size=1,
        max_size=60,
    ),
    bins=st.integers(1, 5),
)
def test_pareto_prefilter_gives_the_exact_front(pts, bins):
    """The binned prefilter of `pareto_front` (large inputs) drops only dominated plans:
    the same indices as ordering every plan, ties and equal powers included."""
    from emu.search import _sweep

    t, p = (np.float32([x[i] for x in pts]) * np.float32(1e3) for i in (0, 1))

    def binned(tt, pp):  # FRONT_BINS = bins, so that 4 x bins < len(pts) takes the prefilter
        old = _sweep.FRONT_BINS
        _sweep.FRONT_BINS = bins
        try:
            return pareto_front(tt, pp).tolist()
        finally:
            _sweep.FRONT_BINS = old

    assert binned(t, p) == _sweep._front_exact(t, p).tolist()
    # powers spanning float32's whole range, or a sliver of it: the bins stay monotone
    for scale, offset in ((np.float32(3e38) / 12, 0), (np.float32(1e-45), 0), (1e-7, 1)):
        pw = (p / np.float32(1e3) * np.float32(scale) + offset).astype(np.float32)
        assert binned(t, pw) == _sweep._front_exact(t, pw).tolist()
    # integer inputs (cast, not wrapped: -t of unsigned integers would wrap) and float64
    # powers whose span overflows: the exact front
    ti, pi = (np.array([x[i] for x in pts], np.uint32) for i in (0, 1))
    assert pareto_front(ti, pi).tolist() == _sweep._front_exact(t, p).tolist()
    wide = np.where(p > p.min(), 1.7e308, -1.7e308)
    assert binned(t, wide) == _sweep._front_exact(t, wide).tolist()
    rng = np.random.default_rng(len(pts))  # and at a chunk's size with the real bins
    tb = np.float32(rng.integers(0, 500, 70_000)) * t.max(initial=1)
    pb = np.float32(rng.integers(0, 900, 70_000))
    assert pareto_front(tb, pb).tolist() == _sweep._front_exact(tb, pb).tolist()


def _killed_midway(out: Path) -> list[Path]:
    """Start the sweep of ARGS into `out`, throttled, and SIGKILL it after 3 chunks: the
    chunk records on disk."""
    parts = Path(str(out) + ".parts")
    p = _emu(*ARGS, "--out", str(out), "--throttle-s", "0.2")
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(list(parts.glob("*/chunk-*.npz"))) >= 3:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    chunks = sorted(parts.glob("*/chunk-*.npz"))
    assert 3 <= len(chunks) < 17 and not out.exists()  # really killed mid-way
    return chunks


def test_sigkill_mid_sweep_then_resume_gives_exactly_the_uninterrupted_result(tmp_path, reference):
    out = tmp_path / "run.csv"
    _killed_midway(out)
    _, err = _run(*ARGS, "--out", str(out), "--json")
    assert out.read_bytes() == reference
    # after success: the chunks are gone, the table has the umask's mode (not mkstemp's 0600)
    assert not Path(str(out) + ".parts").exists()
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask


def test_corrupt_or_misplaced_chunks_are_detected_reported_and_recomputed(tmp_path, reference):
    out = tmp_path / "c.csv"
    chunks = _killed_midway(out)
    chunks[1].write_bytes(chunks[1].read_bytes()[:100])  # truncated, as after a crash
    shutil.copyfile(chunks[0], chunks[2])  # a valid chunk at the wrong index
    _, err = _run(*ARGS, "--out", str(out))
    assert "corrupt or partial" in err
    assert "belongs to another run (index = 0, expected 2)" in err
    assert out.read_bytes() == reference


def test_a_chunk_of_another_problem_is_not_used(tmp_path):
    """The checksum covers the header: a chunk of another problem, copied in place of this
    problem's chunk 0 (same index, same size), is refused."""
    system, model = emu.load_system("dgx_h100"), emu.load_model("llama3_8b")
    a = Problem("dgx_h100", "llama3_8b", 16, seq_len=4096, free=("pp",))
    b = Problem("dgx_h100", "llama3_8b", 16, seq_len=4096, free=("pp",), objective="mfu")
    ra = sweep(system, model, a, tmp_path, chunk=64)
    rb = sweep(system, model, b, tmp_path, chunk=64)
    shutil.copyfile(rb.parts / "chunk-000000.npz", ra.parts / "chunk-000000.npz")
    warnings = []
    again = sweep(system, model, a, tmp_path, chunk=64, warn=warnings.append)
    assert again.resumed == 0 and "signature" in warnings[0]
    assert again.best == ra.best


@pytest.mark.parametrize(
    "out,needle",
    [
        ("/proc/emu-sweep.csv", "cannot write --out '/proc/emu-sweep.csv'"),
        ("{tmp}/file/x.csv", "Not a directory"),
        ("{tmp}", "is a folder"),
        ("{tmp}/missing/x.csv", "does not exist"),
    ],
)
def test_bad_output_paths_fail_before_the_sweep(tmp_path, capsys, out, needle):
    from emu.cli import main

    (tmp_path / "file").write_text("")
    t = time.perf_counter()
    code = main([*ARGS, "--out", out.format(tmp=tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1
    assert time.perf_counter() - t < 20  # refused before any compilation or evaluation
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing left behind


def test_sweep_without_out_caches_chunks_under_xdg_cache_home(tmp_path, monkeypatch, capsys):
    from emu.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    args = ["sweep", "--system", "dgx_h100", "--model", "llama3_8b", "--chips", "16"]
    assert main([*args, "--seq-len", "4096", "--free", "pp", "--json"]) == 0, capsys.readouterr()
    assert (tmp_path / "xdg" / "emu" / "sweeps").is_dir()
    assert not (tmp_path / "home" / ".cache" / "emu" / "sweeps").exists()


def test_two_processes_on_loopback_equal_one_process(tmp_path, reference):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "two.csv"
    common = [
        *ARGS,
        "--out",
        str(out),
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        "2",
    ]
    p1 = _emu(*common, "--process-id", "1")
    p0 = _emu(*common, "--process-id", "0")
    for p in (p0, p1):
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    assert out.read_bytes() == reference


_MERGE_SWEEP = """
import json, sys, tempfile
import jax
from emu.catalog import load_model, load_system
from emu.search import Problem, sweep
p = Problem("gb200_nvl72", "llama3_70b", 144, seq_len=8192)
with tempfile.TemporaryDirectory() as d:
    r = sweep(load_system("gb200_nvl72"), load_model("llama3_70b"), p, d, chunk=256, columns=())
print(json.dumps([len(jax.local_devices()), r.top, r.pareto, r.feasible]))
"""


#: how far a value of a sweep sharded over two CPU devices may sit from one device's: the
#: batch programs compile with XLA's fast math (`emu.fast.BATCH_COMPILE`), and the program
#: XLA partitions for two devices may round the last bit differently (1 ulp, ~6e-8, seen);
#: the tables print 7 significant digits, so a last-bit change can move the last digit
_SHARD_RTOL = 2e-6
_PLAN_KEYS = (*KNOBS, "global_batch", "feasible")


def _tie_runs(rows: list[dict]) -> list[tuple[int, int]]:
    """[start, end) runs of consecutive rows whose objectives agree within _SHARD_RTOL (one
    row each where there is no objective): a near-tie may round either way on two devices,
    so its plans may come in either order."""
    runs, i = [], 0
    while i < len(rows):
        j = i + 1
        if "objective" in rows[i]:
            o = float(rows[i]["objective"])
            while j < len(rows) and abs(float(rows[j]["objective"]) - o) <= _SHARD_RTOL * abs(o):
                j += 1
        runs.append((i, j))
        i = j
    return runs


def _same_rows(a: list[dict], b: list[dict]) -> None:
    """The same plans in the same order, up to the order within a near-tie of the objective
    (`_tie_runs`: session 23's refit made two plans of the 144-GB200 sweep tie to the last
    printed digit, 1.421122, and two devices listed them the other way round); each value
    within _SHARD_RTOL."""
    assert len(a) == len(b)

    def plan(r):
        return [r[k] for k in _PLAN_KEYS if k in r]

    for i, j in _tie_runs(a):
        a[i:j] = sorted(a[i:j], key=lambda r: str(plan(r)))
        b[i:j] = sorted(b[i:j], key=lambda r: str(plan(r)))
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        assert plan(x) == plan(y)
        for k in x.keys() - set(_PLAN_KEYS):
            if x[k] is None or y[k] is None:
                assert x[k] is y[k], k
            else:
                np.testing.assert_allclose(float(y[k]), float(x[k]), rtol=_SHARD_RTOL, err_msg=k)


def _csv_rows(data: bytes) -> list[dict]:
    head, *rows = data.decode().splitlines()
    names = head.split(",")
    # an empty field (a latency the phase has not) is None, as in the JSON rows
    return [{k: v or None for k, v in zip(names, r.split(","), strict=True)} for r in rows]


def test_per_column_programs_sharded_over_two_devices_equal_one_device():
    """The merge's per-column programs (built from one trace, tokens/J and the objective
    derived on the host) give the same rows on two CPU devices as on one (the same plans in
    the same order and feasible count; values within a few ulp, `_SHARD_RTOL`)."""
    got = []
    for n in (1, 2):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        out = subprocess.run([sys.executable, "-c", _MERGE_SWEEP], env=env, capture_output=True,
                             text=True, timeout=300, check=True)  # fmt: skip
        got.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert [g[0] for g in got] == [1, 2]
    (_, top1, pareto1, feasible1), (_, top2, pareto2, feasible2) = got
    assert feasible1 == feasible2 and feasible1 > 0
    _same_rows(top1, top2)
    _same_rows(pareto1, pareto2)


def test_sharded_over_two_cpu_devices_equals_one_device(tmp_path, reference):
    """The CLI's table on two devices: the same plans in the same order as one device's,
    values within a few ulp (`_SHARD_RTOL`)."""
    out = tmp_path / "dev.csv"
    _run(*ARGS, "--out", str(out), env={"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    got, want = _csv_rows(out.read_bytes()), _csv_rows(reference)
    assert got and len(got) == len(want)
    _same_rows(want, got)
