"""emu.storage: the one atomic, checksummed writer and the output-path checks."""

import errno
import os
import stat

import numpy as np
import pytest

from emu import storage
from emu.storage import (
    RecordError,
    StorageError,
    atomic_write,
    check_output_path,
    read_record,
    table_writer,
    write_record,
)


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_atomic_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    p = tmp_path / "out.bin"
    p.write_bytes(b"old")
    with atomic_write(p) as fh:
        fh.write(b"new content")
        assert p.read_bytes() == b"old"  # readers see the old file until the end
    assert p.read_bytes() == b"new content"
    assert _listing(tmp_path) == ["out.bin"]


def test_atomic_write_takes_the_umask_mode_not_0600(tmp_path, umask_027):
    p = tmp_path / "out.txt"
    with atomic_write(p, "w") as fh:
        fh.write("x")
    assert stat.S_IMODE(p.stat().st_mode) == 0o640


def test_failure_in_the_body_keeps_the_old_file_and_removes_the_temp(tmp_path):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_write(p, "w") as fh:
        fh.write("partial")
        raise RuntimeError("boom")
    assert p.read_text() == "old" and _listing(tmp_path) == ["out.txt"]


def test_disk_full_is_one_line_and_leaves_no_temp(tmp_path):
    p = tmp_path / "big.csv"
    with pytest.raises(StorageError, match=r"cannot write '.*big.csv': No space left"):
        with atomic_write(p, "w") as fh:
            fh.write("some rows")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert _listing(tmp_path) == []


def test_failed_rename_removes_the_temp(tmp_path, monkeypatch):
    def fail(src, dst):
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(storage.os, "replace", fail)
    with pytest.raises(StorageError, match="cross-device"), atomic_write(tmp_path / "x") as fh:
        fh.write(b"1")
    assert _listing(tmp_path) == []


def test_record_round_trip_and_header(tmp_path):
    p = tmp_path / "r.npz"
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_record(p, {"data": data}, {"index": 2, "signature": "abc"})
    header, arrays = read_record(p, expect={"index": 2, "signature": "abc"})
    assert header == {"index": 2, "signature": "abc"}
    np.testing.assert_array_equal(arrays["data"], data)
    assert read_record(tmp_path / "missing.npz") is None


def test_truncated_or_flipped_record_is_refused(tmp_path):
    p = tmp_path / "r.npz"
    write_record(p, {"data": np.ones((64, 8), np.float32)}, {"index": 0})
    raw = p.read_bytes()
    p.write_bytes(raw[:200])
    with pytest.raises(RecordError, match="corrupt or partial"):
        read_record(p)
    flipped = bytearray(raw)
    i = raw.index(np.ones(1, np.float32).tobytes())  # a byte of the data
    flipped[i] ^= 0xFF
    p.write_bytes(bytes(flipped))
    with pytest.raises(RecordError, match="corrupt or partial"):
        read_record(p)


def test_record_of_another_index_or_run_is_refused(tmp_path):
    p = tmp_path / "chunk-000002.npz"
    write_record(p, {"data": np.zeros(3)}, {"index": 0, "signature": "s1"})
    with pytest.raises(RecordError, match="another run .*index = 0, expected 2"):
        read_record(p, expect={"index": 2, "signature": "s1"})
    with pytest.raises(RecordError, match="signature"):
        read_record(p, expect={"index": 0, "signature": "s2"})


def test_table_writer_csv_and_parquet(tmp_path, umask_027):
    block = np.array([[1.0, 2.5], [3.0, 4.0]])
    with table_writer(tmp_path / "t.csv", ["a", "b"]) as write:
        write(block)
        write(block)
    assert (tmp_path / "t.csv").read_text().splitlines() == ["a,b", *["1,2.5", "3,4"] * 2]
    assert stat.S_IMODE((tmp_path / "t.csv").stat().st_mode) == 0o640
    pq = pytest.importorskip("pyarrow.parquet")
    with table_writer(tmp_path / "t.parquet", ["a", "b"]) as write:
        write(block)
    assert pq.read_table(tmp_path / "t.parquet").to_pydict() == {"a": [1.0, 3.0], "b": [2.5, 4.0]}
    assert _listing(tmp_path) == ["t.csv", "t.parquet"]


def test_table_writer_names_codes_keeps_integers_and_leaves_missing_values_empty(tmp_path):
    """Sweep tables wrote recompute as 2, sp as 1, a training row's TTFT as 0 and every
    Parquet column as a float."""
    block = np.array([[2.0, 1.0, 8.0, np.nan], [0.0, 0.0, 16.0, 0.25]])
    kw = dict(labels={"rc": {0.0: "none", 2.0: "full"}, "sp": {0.0: "false", 1.0: "true"}},
              integers={"n"})  # fmt: skip
    with table_writer(tmp_path / "t.csv", ["rc", "sp", "n", "x"], **kw) as write:
        write(block)
    assert (tmp_path / "t.csv").read_text().splitlines() == [
        "rc,sp,n,x", "full,true,8,", "none,false,16,0.25"
    ]  # fmt: skip
    pq = pytest.importorskip("pyarrow.parquet")
    with table_writer(tmp_path / "t.parquet", ["rc", "sp", "n", "x"], **kw) as write:
        write(block)
    t = pq.read_table(tmp_path / "t.parquet")
    assert str(t.schema.field("n").type) == "int64" and str(t.schema.field("rc").type) == "string"
    assert t.to_pydict() == {
        "rc": ["full", "none"], "sp": ["true", "false"], "n": [8, 16], "x": [None, 0.25]
    }  # fmt: skip


def test_table_writer_failure_mid_stream_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), table_writer(tmp_path / "t.csv", ["a"]) as write:
        write(np.ones((10, 1)))
        raise RuntimeError("a chunk vanished")
    assert _listing(tmp_path) == []


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda d: d, "is a folder"),
        (lambda d: d / "missing" / "out.csv", "does not exist"),
        (lambda d: (d / "file").write_text("x") and d / "file" / "out.csv", "Not a directory"),
        (lambda d: "/proc/emu-out.csv", "cannot write"),
        (lambda d: "/sys/emu-out.csv", "cannot write"),
        (lambda d: "/dev/null", "not a regular file"),
        (lambda d: os.mkfifo(d / "fifo") or d / "fifo", "not a regular file"),
    ],
)
def test_bad_output_paths_are_refused_before_any_work(tmp_path, make, needle):
    with pytest.raises(ValueError, match=needle):
        check_output_path(make(tmp_path))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_output_path_suffix_and_parent_creation(tmp_path):
    with pytest.raises(ValueError, match=".csv or .parquet"):
        check_output_path(tmp_path / "x.txt", suffixes=(".csv", ".parquet"))
    p = check_output_path(tmp_path / "a" / "b" / "fitted.toml", make_parents=True)
    assert p.parent.is_dir() and _listing(p.parent) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="Not a directory"):
        check_output_path(tmp_path / "f" / "sub" / "fitted.toml", make_parents=True)


def test_cache_dir_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert storage.cache_dir("sweeps") == tmp_path / "emu" / "sweeps"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert storage.cache_dir() == tmp_path / "home" / ".cache" / "emu"


def test_compilation_cache_keeps_a_folder_jax_was_given(tmp_path, monkeypatch):
    """JAX_COMPILATION_CACHE_DIR (or jax.config) wins over cache_dir("jax"): the folder's path
    is part of every cache key, so a process must be able to name the folder it shares."""
    import jax

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = jax.config.jax_compilation_cache_dir
    try:
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "given"))
        storage.enable_compilation_cache()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "given")
        assert (tmp_path / "given").is_dir() and not (tmp_path / "xdg").exists()
        jax.config.update("jax_compilation_cache_dir", None)
        storage.enable_compilation_cache()  # nothing given: the user's cache folder
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xdg" / "emu" / "jax")
    finally:
        jax.config.update("jax_compilation_cache_dir", before)


def test_a_ctrl_c_during_a_csv_write_is_heard_between_blocks(tmp_path):
    """NumPy's element-wise formatting lost a KeyboardInterrupt raised inside it, so a large
    sweep's CSV write ignored Ctrl-C (red team, session 42): the signal is now held while a
    block is formatted and raised after it; the file is not written, no temporary is left."""
    import os
    import signal

    from emu.storage import table_writer

    path = tmp_path / "t.csv"
    block = np.arange(12.0).reshape(4, 3)
    with pytest.raises(KeyboardInterrupt):
        with table_writer(path, ["a", "b", "c"]) as write:
            write(block)
            os.kill(os.getpid(), signal.SIGINT)  # held: nothing is raised here
            write(block)  # raised after this block
            raise AssertionError("the held interrupt was not raised")
    assert not path.exists() and list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_held_signal_reaches_its_handler_once(tmp_path):
    """The first version re-delivered a held signal twice per block (the review)."""
    import os
    import signal

    from emu.storage import table_writer

    calls = []
    old = signal.signal(signal.SIGTERM, lambda s, f: calls.append(s))
    try:
        with table_writer(tmp_path / "t.csv", ["a"]) as write:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(3):
                write(np.ones((2, 1)))
        assert calls == [signal.SIGTERM] and (tmp_path / "t.csv").exists()
    finally:
        signal.signal(signal.SIGTERM, old)
