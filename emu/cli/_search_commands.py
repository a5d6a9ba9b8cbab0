"""`emu search` and `emu sweep`: flags -> a checked search Problem and grid, the library's
search, and its result as text or JSON (with the best configuration's full `run`)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from emu import analysis, catalog, storage
from emu.cli import _cost as cost_flags
from emu.cli import _render as render
from emu.cli._commands import overrides
from emu.cli._parser import CliError
from emu.plan import KNOBS
from emu.plan import knobs as plan_knobs
from emu.search import Problem, check_grid

_OUT_SUFFIXES = (".csv", ".parquet")


#: plan knobs a search Problem takes as given (it varies the searchable ones)
PROBLEM_KNOBS = (
    "seq_len", "global_batch", "precision", "phase", "context", "a2a_overlap",
    "moe_imbalance", "mtp_accept", "cache_hit",
)  # fmt: skip


def _check_flags(args) -> None:
    """Flags a search does not take (it varies or derives them, or its Problem has no
    place for them)."""
    if args.dp is not None:
        raise CliError(f"{args.command} derives dp from --chips; drop --dp.")
    searchable = {k.name for k in plan_knobs(searchable=True)}
    for k in KNOBS:
        v = getattr(args, k.name)
        extra = k.name not in searchable and k.name not in PROBLEM_KNOBS
        if extra and v is not None and v != k.default:
            raise CliError(f"{args.command} keeps {k.name} at its default; drop {k.flag}.")
    if args.phase == "train" and args.batch is not None:
        raise CliError("--batch is the serving batch per DP rank; in training use --microbatch.")
    if args.phase != "train":
        keys = [k for k in KNOBS if k.name in searchable and not k.applies_to(args.phase)]
        keys += [k for k in KNOBS if k.name in ("microbatch", "global_batch")]
        bad = [k.flag for k in keys if getattr(args, k.name) is not None]
        if bad:
            raise CliError(
                f"serving plans vary --tp, --ep and --batch only; drop {', '.join(bad)}."
            )


def _chips(args, system) -> int | tuple:
    if args.chips is None:
        return int(float(system.n_chips))
    try:
        counts = tuple(int(c) for c in str(args.chips).split(",") if c.strip())
    except ValueError:
        raise CliError(
            f"--chips expects integers, e.g. 72 or 64,128,256 (got '{args.chips}')."
        ) from None
    if not counts:
        raise CliError("--chips is empty; give a chip count.")
    return counts[0] if len(counts) == 1 else counts


def _free_and_fixed(args) -> tuple[tuple, dict]:
    """Knobs given on the command line are fixed (as stored numbers); --free names the
    varying ones (default: every searchable knob not given)."""
    plan_knob_list = [k for k in plan_knobs(searchable=True) if k.name != "dp"]
    fixed = {}
    for k in plan_knob_list:
        v = getattr(args, k.name)
        if v is not None:
            x = float(k.encode(v))
            fixed[k.name] = int(x) if x.is_integer() else x
    if args.phase != "train" and args.batch is not None:
        fixed["microbatch"] = args.batch
    names = [k.name for k in plan_knob_list]
    if args.free is None:
        return tuple(k for k in names if k not in fixed), fixed
    free = tuple(k.strip() for k in args.free.split(",") if k.strip())
    bad = [k for k in free if k not in names]
    if bad:
        raise CliError(f"--free: unknown knob '{bad[0]}'; known: {', '.join(names)}.")
    return free, fixed


def _grid(args, system) -> dict:
    grid = {}
    for item in args.grid:
        path, sep, values = item.partition("=")
        if not sep or not values:
            raise CliError(f"--grid expects NAME=V1,V2,... (got '{item}').")
        if path.strip() in grid:
            raise CliError(f"--grid {path.strip()} is given twice; list all its values once.")
        try:
            grid[path.strip()] = [float(v) for v in values.split(",")]
        except ValueError:
            raise CliError(
                f"--grid {path.strip()}: values must be numbers (got '{values}')."
            ) from None
    try:
        check_grid(system, grid)
    except ValueError as e:
        raise CliError(f"--{e}") from None  # the library names `grid NAME`
    return grid


def search_setup(args):
    """(system, model, problem, grid, out) of `emu search` / `emu sweep`, all checked before
    any work (the output path too)."""
    sys_o, model_o, plan_o = overrides(args)
    if plan_o:
        raise CliError(
            f"{args.command} varies the plan itself; --set takes system and model fields."
        )
    _check_flags(args)
    out = None
    if args.out:
        out = storage.check_output_path(args.out, suffixes=_OUT_SUFFIXES, what="--out")
    system = cost_flags.with_region(args, catalog.load_system(args.system, sys_o))
    price = cost_flags.pricing(args, system)
    if price is None and args.objective == "usd_per_mtoken":
        raise CliError(
            "--objective usd_per_mtoken needs --region (cost per token needs a region's "
            "electricity price and PUE); `emu list` shows the regions."
        )
    model = catalog.load_model(args.model, model_o)
    free, fixed = _free_and_fixed(args)
    given = {n: getattr(args, n) for n in PROBLEM_KNOBS if getattr(args, n) is not None}
    problem = Problem(
        system=system.name,
        model=model.name,
        chips=_chips(args, system),
        objective=args.objective,
        free=free,
        fixed=tuple(sorted(fixed.items())),
        power_cap=args.power_cap,
        tpot_slo=args.tpot_slo,
        ttft_slo=args.ttft_slo if args.phase == "prefill" else None,
        cost=price,
        **given,
    )
    return system, model, problem, _grid(args, system), out


def _best_run(system, model, problem, res) -> dict | None:
    """The `run` object (with its plan) of the best configuration, plus its grid values."""
    from emu.search import plan_of, system_of

    row = res.best
    if row is None:
        return None
    names = res.space.names
    r = analysis.run(system_of(system, row, names), model, plan_of(problem, row))
    if problem.cost is not None:
        r |= analysis.cost_block(system_of(system, row, names), r, *problem.cost)
    r["grid"] = {n: row[n] for n in names}
    r["objective"] = {"name": res.objective, "value": row["objective"]}
    return r


def _emit_result(args, system, model, problem, res, out, text: str) -> None:
    best = _best_run(system, model, problem, res)
    obj = {"best": best, **res.to_json(), "out": str(out) if out else None}
    render.emit(args, obj, text + render.best_interval_text(best))


def cmd_search(args) -> None:
    from emu.search import gradient_search, write_table

    storage.enable_compilation_cache()
    system, model, problem, grid, out = search_setup(args)
    res = gradient_search(
        system,
        model,
        problem,
        grid=grid,
        starts=args.starts,
        steps=args.steps,
        top=args.top,
        seed=args.seed,
        progress=render.search_progress,
    )
    if out:
        write_table(res, out)
    what = (
        f"gradient search: {res.evaluations} evaluations ({res.gradient_evaluations} "
        f"gradient + {res.exact_evaluations} exact) of a space of {res.space_size}, "
        f"{res.wall_s:.1f} s"
    )
    _emit_result(args, system, model, problem, res, out, render.search_text(res, what))


def _processes(args) -> tuple[int, int]:
    """(process id, process count), with jax.distributed initialised when there are
    several (the coordinator wait is bounded by --coordinator-timeout)."""
    coord = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    try:
        nproc = args.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "1"))
        pid = args.process_id
        pid = pid if pid is not None else int(os.environ.get("JAX_PROCESS_ID", "0"))
    except ValueError:
        raise CliError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers.") from None
    if nproc < 1 or not 0 <= pid < nproc:
        raise CliError(f"--process-id must be in [0, {nproc}) (got {pid}).")
    if nproc > 1:
        if not coord:
            raise CliError("several processes need --coordinator HOST:PORT.")
        if pid != 0:  # jax aborts the process (C++) when the coordinator never answers
            _wait_for_coordinator(coord, args.coordinator_timeout)
        import jax

        try:
            jax.distributed.initialize(
                coordinator_address=coord,
                num_processes=nproc,
                process_id=pid,
                initialization_timeout=args.coordinator_timeout,
            )
        except Exception as e:  # noqa: BLE001 - jax raises several types; one line for all
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CliError(
                f"cannot reach the coordinator {coord} within {args.coordinator_timeout} s "
                f"({first}); start every process, or raise --coordinator-timeout."
            ) from None
    return pid, nproc


def _wait_for_coordinator(coord: str, timeout_s: float) -> None:
    """Return once a TCP connection to HOST:PORT succeeds; CliError after `timeout_s`."""
    host, sep, port = coord.rpartition(":")
    if not sep or not port.isdigit():
        raise CliError(f"--coordinator expects HOST:PORT (got '{coord}').")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise CliError(
                    f"cannot reach the coordinator {coord} within {timeout_s:g} s; start "
                    "process 0 first, or raise --coordinator-timeout."
                ) from None
            time.sleep(0.2)


def cmd_sweep(args) -> None:
    from emu.search import sweep, write_table

    pid, nproc = _processes(args)
    storage.enable_compilation_cache()
    system, model, problem, grid, out = search_setup(args)
    base = out.with_name(out.name + ".parts") if out else storage.cache_dir("sweeps")
    res = sweep(
        system,
        model,
        problem,
        base,
        grid=grid,
        top=args.top,
        chunk=args.chunk,
        process_id=pid,
        num_processes=nproc,
        progress=render.sweep_progress,
        warn=render.warn,
        throttle_s=args.throttle_s,
    )
    if pid != 0:
        return
    if out:
        write_table(res, out)
    res.remove_parts()  # only a killed sweep needs its chunks
    if out:
        _remove_if_empty(base)
    what = (
        f"{res.evaluations} configurations ({res.grid_points} grid points, "
        f"{res.feasible} feasible), {res.chunks} chunk(s), {res.resumed} resumed, "
        f"{res.wall_s:.2f} s"
    )
    text = (
        render.search_text(res, what) + f"\nPareto front (tokens/s vs W): {len(res.pareto)} plans"
    )
    _emit_result(args, system, model, problem, res, out, text)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # another sweep's chunks are still there
