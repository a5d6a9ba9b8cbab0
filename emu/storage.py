"""Where emu writes on disk, and how, so that no output can be left half-written or corrupt.

One writer, `atomic_write(path)`: the content goes to a temporary file in the destination's
folder, which is flushed, fsynced and renamed over `path` only when the whole content is
written; a reader sees the old file or the new one, never a part. On every failure path
(an exception in the caller's code, a full disk, an interrupt) the temporary file is removed.
The file gets the mode a plain `open` would give (0o666 less the umask), not mkstemp's 0600.
An I/O failure is a `StorageError` (a ValueError): one line naming the path and the reason.

Records (`write_record`, `read_record`) are the checkpoints of long runs (sweep chunks,
calibration steps): named numpy arrays and a JSON header in one .npz, with a SHA-256 over the
header and every array. `read_record(path, expect=...)` refuses a partial or corrupt record and
one whose header differs from `expect` (a sweep chunk stored at another index, or for another
problem), so a resumed run never uses data that is not its own.

`check_output_path` validates an output path before any long work (the folder exists and a
file can be created in it; the path is not a folder, a device or a FIFO); `table_writer`
streams CSV or Parquet through `atomic_write`; `cache_dir` is the user's cache folder
($XDG_CACHE_HOME/emu, else ~/.cache/emu).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_write(d / "a.txt", "w") as fh:
...     _ = fh.write("hello")
>>> (d / "a.txt").read_text(), sorted(p.name for p in d.iterdir())
('hello', ['a.txt'])
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "StorageError",
    "RecordError",
    "atomic_write",
    "write_record",
    "read_record",
    "table_writer",
    "check_output_path",
    "cache_dir",
    "enable_compilation_cache",
]


class StorageError(ValueError):
    """A file could not be written or read back: one line with the path and the reason."""


class RecordError(StorageError):
    """A record exists but is partial, corrupt or belongs to another run."""


def _reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """A new, exclusively created file next to the destination (the kernel applies the
    umask to mode 0o666, as for any file a program opens for writing)."""
    while True:
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file object whose content replaces `path` when the block ends without error (see
    the module doc). `mode` is "wb" (bytes) or "w" (UTF-8 text)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write: mode must be 'wb' or 'w' (got {mode!r}).")
    path = Path(path)
    try:
        fd, tmp = _create_temp(_folder(path), path.name)
    except OSError as e:
        raise StorageError(f"cannot write '{path}': {_reason(e)}.") from None
    try:
        kw = {"encoding": "utf-8"} if mode == "w" else {}
        with os.fdopen(fd, mode, **kw) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError) and not isinstance(e, StorageError):
            raise StorageError(f"cannot write '{path}': {_reason(e)}.") from None
        raise


def _digest(header: str, arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256(header.encode())
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def write_record(path, arrays: dict[str, np.ndarray], header: dict) -> None:
    """Store `arrays` and the JSON-able `header` as one checksummed .npz, atomically."""
    text = json.dumps(header, sort_keys=True)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    if any(k.startswith("__") for k in arrays):
        raise ValueError("write_record: array names must not start with '__'.")
    with atomic_write(path) as fh:
        np.savez(
            fh, __header__=np.array(text), __sha256__=np.array(_digest(text, arrays)), **arrays
        )


def read_record(path, *, expect: dict | None = None) -> tuple[dict, dict[str, np.ndarray]] | None:
    """(header, arrays) of a record written by `write_record`; None when `path` does not
    exist. Raises RecordError when it is partial or corrupt, or when a key of `expect`
    has another value in its header."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            text, digest = str(z["__header__"]), str(z["__sha256__"])
            arrays = {k: z[k] for k in z.files if not k.startswith("__")}
        header = json.loads(text)
    except Exception:  # noqa: BLE001 - whatever cannot be read back is a corrupt record
        raise RecordError(f"'{path}' is corrupt or partial.") from None
    if _digest(text, arrays) != digest:
        raise RecordError(f"'{path}' is corrupt or partial (checksum mismatch).")
    for key, want in (expect or {}).items():
        if header.get(key) != want:
            raise RecordError(
                f"'{path}' belongs to another run ({key} = {header.get(key)!r}, expected {want!r})."
            )
    return header, arrays


@contextlib.contextmanager
def table_writer(
    path, header: list[str], *, labels: dict | None = None, integers=()
) -> Iterator[Callable[[np.ndarray], None]]:
    """`write(block)` for float rows [n, len(header)], streamed to CSV or Parquet (by the
    suffix of `path`) through `atomic_write`. `labels`: column -> {stored code: name}, written
    as the names (a choice knob's "full", not 2); `integers`: columns written as whole numbers
    (Parquet int64); a value that is not finite is an empty CSV field (Parquet null)."""
    path = Path(path)
    labels, integers = labels or {}, set(integers)
    kinds = ["label" if h in labels else "int" if h in integers else "float" for h in header]
    if path.suffix.lower() == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(
                "Parquet output needs pyarrow: pip install 'cluster-emu[parquet]', "
                "or give a .csv file name."
            ) from None
        types = {"label": pa.string(), "int": pa.int64(), "float": pa.float64()}
        schema = pa.schema([(h, types[k]) for h, k in zip(header, kinds, strict=True)])
        with atomic_write(path) as fh:
            writer = pq.ParquetWriter(fh, schema)

            def write(block: np.ndarray) -> None:
                cols = []
                for j, (h, k) in enumerate(zip(header, kinds, strict=True)):
                    col = np.asarray(block[:, j], np.float64)
                    if k == "label":
                        cols.append(pa.array(_labelled(col, labels[h]).tolist(), pa.string()))
                    elif k == "int":
                        cols.append(pa.array(np.rint(col).astype(np.int64)))
                    else:
                        cols.append(pa.array(col, mask=~np.isfinite(col)))
                writer.write_table(pa.Table.from_arrays(cols, schema=schema))

            yield write
            writer.close()
        return

    def text(col: np.ndarray, h: str, k: str) -> np.ndarray:
        col = np.asarray(col, np.float64)
        if k == "label":
            return _labelled(col, labels[h])
        if k == "int":
            return np.rint(col).astype(np.int64).astype(str)
        out = np.char.mod("%.7g", col)
        out[~np.isfinite(col)] = ""
        return out

    with atomic_write(path, "w") as fh, _signals_between_blocks() as pending:
        fh.write(",".join(header) + "\n")

        def write(block: np.ndarray) -> None:
            for at in range(0, len(block), 1 << 16):  # bounded memory for a large table
                part = block[at : at + (1 << 16)]
                pairs = enumerate(zip(header, kinds, strict=True))
                cols = [text(part[:, j], h, k) for j, (h, k) in pairs]
                fh.write("\n".join(",".join(row) for row in zip(*cols, strict=True)) + "\n")
                pending()

        yield write


@contextlib.contextmanager
def _signals_between_blocks():
    """SIGINT and SIGTERM held while a block is formatted and raised between blocks (by
    the handler they had): NumPy's element-wise string formatting loses an exception raised
    inside it, so a Ctrl-C during a large CSV write went unheard (red team, session 42).
    Yields `pending()`, which re-delivers a held signal. Outside the main thread: nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    held: list[int] = []
    sigs = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.getsignal(s) for s in sigs}

    def hold(signum, frame):
        held.append(signum)

    def restore() -> None:
        for s in sigs:
            signal.signal(s, old[s])

    def pending() -> None:  # the first held signal, once, to the handler it had
        if held:
            signum = held[0]
            held.clear()
            restore()
            signal.raise_signal(signum)

    for s in sigs:
        signal.signal(s, hold)
    try:
        yield pending
    finally:
        restore()
        if held:  # one that came after the last block, or while unwinding
            signal.raise_signal(held[0])


def _labelled(col: np.ndarray, names: dict) -> np.ndarray:
    """The names of stored codes (a code without one: the number, as %g)."""
    out = np.char.mod("%g", col).astype(object)
    for code, name in names.items():
        out[col == float(code)] = name
    return out.astype(str)


def check_output_path(
    path, *, suffixes: tuple[str, ...] | None = None, make_parents: bool = False, what="output"
) -> Path:
    """`path` as a Path, after checking that a file can be written there (before any long
    work): not a folder, not a device or FIFO, a suffix in `suffixes` if given, and a file
    can be created in its folder (`make_parents`: the folder is created if missing)."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:  # e.g. a path under a regular file
        raise ValueError(f"cannot write {what} '{p}': {_reason(e)}.") from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{what} '{p}' is a folder; give a file name.")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{what} '{p}' exists and is not a regular file; give another name.")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise ValueError(f"{what} '{p}': use a {' or '.join(suffixes)} file name.")
    folder = _folder(p)
    if make_parents:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create the folder of {what} '{p}': {_reason(e)}.") from None
    elif not folder.exists():
        raise ValueError(f"output folder '{folder}' does not exist.")
    if not folder.is_dir():
        raise ValueError(f"cannot write {what} '{p}': '{folder}' is not a folder.")
    try:  # the only reliable test (read-only mounts, /proc, /sys, ACLs, root): try it
        fd, tmp = _create_temp(folder, p.name)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"cannot write {what} '{p}': {_reason(e)}.") from None
    return p


def cache_dir(*parts: str) -> Path:
    """$XDG_CACHE_HOME/emu/<parts> (default ~/.cache/emu/<parts>); not created."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "emu", *parts)


def enable_compilation_cache() -> None:
    """JAX's persistent compilation cache in `cache_dir("jax")` (quick repeated runs), or in
    the folder JAX was already given (JAX_COMPILATION_CACHE_DIR, `jax.config`), which is kept:
    XLA's compile options, and so every cache key, contain the folder's path, so processes
    share compiled programs only when they name the same folder. Silently off when the folder
    cannot be created."""
    import jax

    path = Path(jax.config.jax_compilation_cache_dir or cache_dir("jax"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
