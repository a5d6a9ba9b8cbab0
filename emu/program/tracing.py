"""Lower and compile a JAX program for N devices on the CPU and return its optimised HLO.

In-process (`compile_hlo`) when this process has the devices; otherwise a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=N` calls a *builder*, a function that
builds the mesh and returns `(fn, args)` (`fn` jitted with its shardings, `args` arrays or
`jax.ShapeDtypeStruct`s). A builder is named `path/to/file.py:name` or `package.module:name`.

The module is compiled with `xla_allow_excess_precision=False` so that the CPU pipeline keeps
the bf16 rounding points the program asked for (`emu.program.table` reads logical types
from them). Every failure is a ValueError with one line that says what and how to fix it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from emu.program.table import MeshInfo

__all__ = ["Traced", "compile_hlo", "trace_builder", "load_builder", "mesh_of"]

COMPILER_OPTIONS = {"xla_allow_excess_precision": False}


@dataclasses.dataclass
class Traced:
    """The optimised HLO text of a program and the mesh it was compiled for."""

    hlo: str
    mesh: MeshInfo
    name: str = ""
    compile_s: float = 0.0


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def mesh_of(args: Any) -> MeshInfo | None:
    """The mesh of the first argument sharded with a NamedSharding (None if none is)."""
    import jax

    for leaf in jax.tree_util.tree_leaves(args):
        sharding = getattr(leaf, "sharding", None)
        mesh = getattr(sharding, "mesh", None)
        if mesh is not None and getattr(mesh, "axis_names", None):
            return MeshInfo(tuple(mesh.axis_names), tuple(int(s) for s in mesh.axis_sizes))
    return None


def _as_mesh(mesh: Any) -> MeshInfo:
    if isinstance(mesh, MeshInfo):
        return mesh
    if isinstance(mesh, dict):
        for axis, size in mesh.items():  # 1.5 was cut to 1, "x" raised from int()
            if (
                isinstance(size, bool)
                or not isinstance(size, int | float)
                or size < 1
                or size != int(size)
            ):
                raise ValueError(
                    f"mesh axis {axis!r} has size {size!r}; give each axis a whole number of "
                    "devices >= 1, e.g. {'data': 8, 'model': 4}."
                )
        return MeshInfo(tuple(mesh), tuple(int(v) for v in mesh.values()))
    names = getattr(mesh, "axis_names", None)
    if names is not None:
        sizes = getattr(mesh, "axis_sizes", None) or tuple(mesh.shape.values())
        return MeshInfo(tuple(names), tuple(int(s) for s in sizes))
    raise ValueError(
        f"mesh must be a jax.sharding.Mesh, a dict of axis sizes or a MeshInfo "
        f"(got {type(mesh).__name__})."
    )


def compile_hlo(fn: Any, args: Any, *, mesh: Any = None, name: str = "") -> Traced:
    """Lower and compile `fn(*args)` in this process; its optimised HLO and mesh."""
    import jax

    if not isinstance(args, tuple | list):
        raise ValueError(f"args must be a tuple of arguments (got {type(args).__name__}).")
    found = mesh_of(args)
    info = _as_mesh(mesh) if mesh is not None else found
    if info is None:
        info = MeshInfo(("devices",), (1,))
    if found is not None and found.size != info.size:
        raise ValueError(
            f"the mesh given has {info.size} devices but the arguments are sharded over "
            f"{found.size}; pass the mesh the arguments use."
        )
    if info.size > jax.device_count():
        raise ValueError(
            f"the mesh needs {info.size} devices but this process has {jax.device_count()}; "
            f"call emu.program.trace_program('file.py:builder', devices={info.size}) (a "
            f"subprocess) or set XLA_FLAGS=--xla_force_host_platform_device_count={info.size} "
            "before JAX starts."
        )
    if not hasattr(fn, "lower"):
        if not callable(fn):
            raise ValueError(f"fn must be a function (got {type(fn).__name__}).")
        fn = jax.jit(fn)
    t0 = time.perf_counter()
    try:
        lowered = fn.lower(*args)
    except Exception as e:  # noqa: BLE001 - any tracing error is the user's program
        raise ValueError(f"the function failed to trace: {_first_line(e)}") from None
    try:
        compiled = lowered.compile(compiler_options=COMPILER_OPTIONS)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"XLA failed to compile the function: {_first_line(e)}") from None
    hlo = compiled.as_text()
    partitions = _num_partitions(hlo)
    if partitions > 1 and partitions != info.size:
        raise ValueError(
            f"the program is partitioned {partitions} ways but the mesh has {info.size} "
            "devices; pass the mesh the program is sharded over."
        )
    name = name or getattr(fn, "__name__", "") or "program"
    return Traced(hlo, info, name, time.perf_counter() - t0)


def _num_partitions(hlo: str) -> int:
    head = hlo[: hlo.find("\n")] if "\n" in hlo else hlo
    key = "num_partitions="
    if key not in head:
        return 1
    digits = head[head.index(key) + len(key) :].split(",")[0].split()[0]
    return int(digits) if digits.isdigit() else 1


# ----------------------------------------------------------------------------- builders


def _split_spec(spec: str) -> tuple[str, str]:
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(
            f"builder must be 'path/to/file.py:name' or 'package.module:name' (got {spec!r})."
        )
    where, _, name = spec.rpartition(":")
    if not where or not name.isidentifier():
        raise ValueError(f"builder '{spec}': '{name}' is not a function name.")
    return where, name


def check_spec(spec: str) -> None:
    """Fail fast, in this process, on a builder file that does not exist."""
    where, _ = _split_spec(spec)
    if where.endswith(".py") or os.sep in where or "/" in where:
        if not Path(where).is_file():
            raise ValueError(f"builder file '{where}' does not exist (from '{spec}').")


def load_builder(spec: str):
    """The builder function named by `spec`."""
    check_spec(spec)
    where, name = _split_spec(spec)
    try:
        if where.endswith(".py") or "/" in where or os.sep in where:
            path = Path(where).resolve()
            sys.path.insert(0, str(path.parent))
            mod_name = f"_emu_builder_{abs(hash(str(path)))}"
            loader = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(loader)
            sys.modules[mod_name] = module
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except Exception as e:  # noqa: BLE001 - the user's module failed to import
        raise ValueError(f"cannot import '{where}': {_first_line(e)}") from None
    builder = getattr(module, name, None)
    if builder is None or not callable(builder):
        known = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        has = f"its functions: {', '.join(known[:12])}" if known else "it defines no functions"
        raise ValueError(f"'{where}' has no function '{name}'; {has}.")
    return builder


def _run_builder(spec: str, devices: int, kwargs: dict) -> Traced:
    import jax

    if jax.device_count() != devices:
        raise ValueError(
            f"this process has {jax.device_count()} devices, the builder needs {devices}."
        )
    builder = load_builder(spec)
    try:
        out = builder(**kwargs)
    except ValueError as e:
        raise ValueError(f"builder '{spec}': {_first_line(e)}") from None
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"builder '{spec}' failed: {_first_line(e)}") from None
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise ValueError(
            f"builder '{spec}' must return (fn, args), a jitted function and its arguments "
            f"(got {type(out).__name__})."
        )
    fn, args = out
    traced = compile_hlo(fn, tuple(args), name=spec.rpartition(":")[2])
    if traced.mesh.size != devices:
        raise ValueError(
            f"builder '{spec}' built a mesh of {traced.mesh.size} devices "
            f"({dict(zip(traced.mesh.axis_names, traced.mesh.shape, strict=True))}) but "
            f"--devices is {devices}; make the mesh use all {devices} devices "
            "(jax.device_count()) or change --devices."
        )
    return traced


def trace_builder(
    spec: str, *, devices: int, kwargs: dict | None = None, timeout_s: float = 600.0
) -> Traced:
    """Call the builder `spec` in a process with `devices` CPU devices and compile its
    `(fn, args)`. Runs in this process when it already has exactly `devices` devices."""
    if not isinstance(devices, int) or devices < 1:
        raise ValueError(f"devices must be a positive integer (got {devices!r}).")
    kwargs = dict(kwargs or {})
    try:
        json.dumps(kwargs)
    except TypeError:
        raise ValueError("builder kwargs must be JSON values (numbers, strings, lists).") from None
    check_spec(spec)
    if _jax_started() and _device_count() == devices:
        return _in_process(spec, devices, kwargs, timeout_s)
    with tempfile.TemporaryDirectory(prefix="emu_program_") as tmp:
        out = Path(tmp) / "traced.json"
        env = dict(os.environ)
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={devices}"])
        env["JAX_PLATFORMS"] = "cpu"
        code = "import sys; from emu.program.tracing import _child; sys.exit(_child(*sys.argv[1:]))"
        cmd = [sys.executable, "-c", code, spec, str(devices), json.dumps(kwargs)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [*cmd, str(out)], env=env, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise ValueError(
                f"tracing '{spec}' on {devices} devices took over {timeout_s:g} s; "
                "use a smaller configuration or raise the timeout."
            ) from None
        if not out.is_file():
            tail = (proc.stderr or proc.stdout or "").strip().splitlines()
            raise ValueError(
                f"tracing '{spec}' failed (exit {proc.returncode}): "
                f"{tail[-1] if tail else 'no output'}"
            )
        data = json.loads(out.read_text())
    if "error" in data:
        raise ValueError(data["error"])
    mesh = MeshInfo(tuple(data["axis_names"]), tuple(data["shape"]))
    traced = Traced(data["hlo"], mesh, data.get("name", ""), data.get("compile_s", 0.0))
    traced.compile_s = time.perf_counter() - t0
    return traced


def _in_process(spec: str, devices: int, kwargs: dict, timeout_s: float) -> Traced:
    """`_run_builder` in this process, under the same timeout as the child process (it had
    none: a builder that hangs kept `emu program --timeout 3` waiting). The builder runs in
    a daemon thread; past the timeout it is abandoned (a thread cannot be stopped) and the
    error says so. What the builder prints goes where this process's stdout goes (`emu
    program` sends it to stderr: its stdout is the report's)."""
    import threading

    box: dict = {}

    def work() -> None:
        try:
            box["traced"] = _run_builder(spec, devices, kwargs)
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            box["error"] = e

    thread = threading.Thread(target=work, name="emu-trace", daemon=True)
    thread.start()
    thread.join(min(float(timeout_s), threading.TIMEOUT_MAX))
    if thread.is_alive():
        raise ValueError(
            f"tracing '{spec}' on {devices} devices took over {timeout_s:g} s; "
            "use a smaller configuration or raise the timeout."
        )
    if "error" in box:
        raise box["error"]
    return box["traced"]


def _jax_started() -> bool:
    return "jax" in sys.modules


def _device_count() -> int:
    import jax

    return jax.device_count()


def _child(spec: str, devices: str, kwargs: str, out: str) -> int:
    try:
        traced = _run_builder(spec, int(devices), json.loads(kwargs))
        data = {
            "hlo": traced.hlo,
            "axis_names": list(traced.mesh.axis_names),
            "shape": list(traced.mesh.shape),
            "name": traced.name,
            "compile_s": traced.compile_s,
        }
    except ValueError as e:
        data = {"error": str(e).splitlines()[0] if str(e) else "tracing failed"}
    Path(out).write_text(json.dumps(data))
    return 0
