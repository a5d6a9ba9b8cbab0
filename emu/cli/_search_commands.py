"""`emu search` and `emu sweep`: flags -> a checked search Problem and grid, the library's
search, and its result as text or JSON (with the best configuration's full `run`)."""

from __future__ import annotations

from pathlib import Path

from emu import analysis, catalog, policy, storage
from emu.cli import _cost as cost_flags
from emu.cli import _render as render
from emu.cli._distributed import processes as _processes
from emu.cli._parser import PROBLEM_KNOBS, SEARCH_FIXED_KNOBS, SLO_DEFAULTS, CliError, as_int
from emu.cli._setup import (
    load_model,
    mtp_note,
    overrides,
    resolved,
    set_note,
    slo,
    slo_notes,
)
from emu.overrides import check_unit, parse_value
from emu.plan import KNOBS
from emu.plan import knobs as plan_knobs
from emu.search import EXHAUSTIVE_MAX, Problem, check_grid
from emu.struct import info_at

_OUT_SUFFIXES = (".csv", ".parquet")


def _check_flags(args) -> None:
    """Flags a search does not take (it varies or derives them, or its Problem has no
    place for them)."""
    if args.dp is not None:
        raise CliError(f"{args.command} derives dp from --chips; drop --dp.")
    if getattr(args, "method", None) == "exhaustive":
        grad = [f"--{f}" for f in ("starts", "steps", "seed") if getattr(args, f) is not None]
        if grad:
            raise CliError(
                f"{', '.join(grad)} {'sets' if len(grad) == 1 else 'set'} the gradient search; "
                "--method exhaustive evaluates every configuration: drop "
                f"{'it' if len(grad) == 1 else 'them'} or use --method gradient."
            )
    searchable = {k.name for k in plan_knobs(searchable=True)}
    for k in KNOBS:
        v = getattr(args, k.name)
        if k.name in SEARCH_FIXED_KNOBS and v is not None and v != k.default:
            raise CliError(f"{args.command} keeps {k.name} at its default; drop {k.flag}.")
    if args.phase == "train" and args.batch is not None:
        raise CliError("--batch is the serving batch per DP rank; in training use --microbatch.")
    for k in KNOBS:
        if k.name in PROBLEM_KNOBS and k.kind != "static" and k.name != "seq_len":
            if getattr(args, k.name) is not None and not k.applies_to(args.phase):
                raise CliError(
                    f"{k.flag} applies to {'/'.join(k.phases)} plans only; drop it "
                    f"(--phase {args.phase})."
                )
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
    parts = [c.strip() for c in str(args.chips).strip().removesuffix(",").split(",")]
    if any(not c for c in parts) and any(parts):  # "8,,16", ",8": a count left out
        raise CliError(
            f"--chips has an empty entry; give counts like 64,128,256 (got '{args.chips}')."
        )
    counts = tuple(as_int(c) for c in parts if c)
    if None in counts:
        raise CliError(f"--chips expects integers, e.g. 72 or 64,128,256 (got '{args.chips}').")
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
    if not free:
        raise CliError(
            f"--free is empty; name the knobs to vary (e.g. --free tp,pp; known: "
            f"{', '.join(names)}), or leave it out to vary every knob not given."
        )
    bad = [k for k in free if k not in names]
    if bad:
        raise CliError(f"--free: unknown knob '{bad[0]}'; known: {', '.join(names)}.")
    both = [k for k in free if k in fixed]
    if both:
        flags = {k.name: k.flag for k in plan_knob_list}
        flag = "--batch" if both[0] == "microbatch" and args.phase != "train" else flags[both[0]]
        raise CliError(f"--free {both[0]} varies the knob that {flag} fixes; drop one of them.")
    return free, fixed


def _grid(args, system) -> dict:
    grid = {}
    for item in args.grid:
        path, sep, values = item.partition("=")
        if not sep or not values:
            raise CliError(f"--grid expects NAME=V1,V2,... (got '{item}').")
        if path.strip() in grid:
            raise CliError(f"--grid {path.strip()} is given twice; list all its values once.")
        name = path.strip()
        try:  # values may carry units (4TB/s), checked against the field's unit
            parsed = [parse_value(v) for v in values.split(",")]
            for v in parsed:
                check_unit(v, info_at(system, name), f"--grid {name}")
        except ValueError as e:
            text = str(e) if "--grid" in str(e) else f"--grid {name}: {e}"
            raise CliError(text) from None
        grid[name] = [float(v) for v in parsed]
    given = {item.partition("=")[0].strip() for item in getattr(args, "set", None) or ()}
    twice = sorted(given & set(grid))
    if twice:  # the grid replaced the --set value in silence
        raise CliError(f"--set {twice[0]} and --grid {twice[0]} both give it; drop one of them.")
    # `domain` sets the outermost scale-up tier's chips (`topology.reshape`)
    up = f"tiers.{system.tiers[-2].name}.domain_chips" if len(system.tiers) > 1 else None
    if "domain" in grid and up in {*given, *grid}:
        raise CliError(f"--grid domain and {up} both set the scale-up domain; drop one of them.")
    if "n_chips" in grid:  # the system's size; the chips a plan uses are --chips
        raise CliError(
            f"--grid n_chips would not change the chips searched ({args.command} uses --chips); "
            f"give the counts as --chips {','.join(f'{v:g}' for v in grid['n_chips'])}."
        )
    try:
        check_grid(system, grid)
    except ValueError as e:
        msg = str(e)  # the library names `grid NAME` (its own checks) or the field
        raise CliError(f"--{msg}" if msg.startswith("grid ") else f"--grid: {msg}") from None
    return grid


def _problem(args, system, model, chips, free, fixed, slo_s, price=None) -> Problem:
    """The search Problem of the workload flags (precision: each system's own default;
    `price`: the --region cost, for the usd_per_mtoken objective and column)."""
    given = {n: getattr(args, n) for n in PROBLEM_KNOBS if getattr(args, n, None) is not None}
    given.setdefault("precision", policy.default_precision(system, args.phase))
    given.setdefault("mtp_accept", policy.default_mtp_accept(model, args.phase))
    return Problem(
        system=system.name,
        model=model.name,
        chips=chips,
        objective=getattr(args, "objective", "tokens_per_joule"),
        free=free,
        fixed=tuple(sorted(fixed.items())),
        power_cap=getattr(args, "power_cap", None),
        tpot_slo=slo_s if args.phase == "decode" else SLO_DEFAULTS["tpot_slo"],
        ttft_slo=slo_s if args.phase == "prefill" else None,
        cost=price,
        **given,
    )


def search_setup(args):
    """(system, model, problem, grid, out, notes) of `emu search` / `emu sweep`, all checked
    before any work (the output path too)."""
    sys_o, model_o, plan_o = overrides(args)
    if plan_o:
        raise CliError(
            f"{args.command} varies the plan itself; --set takes system and model fields."
        )
    _check_flags(args)
    slo_s = slo(args, args.phase)
    out = None
    if args.out is not None and not args.out.strip():  # "" wrote nothing, silently
        raise CliError("--out is empty; give a file name (.csv or .parquet).")
    if args.overwrite and not args.out:  # it was accepted and ignored
        raise CliError("--overwrite replaces the file at --out; give --out, or drop --overwrite.")
    if args.out:
        out = storage.check_output_path(args.out, suffixes=_OUT_SUFFIXES, what="--out")
        if out.exists() and not args.overwrite:  # an earlier run's results: not lost silently
            raise CliError(
                f"--out '{out}' exists (an earlier result?); give another file name, or add "
                "--overwrite to replace it."
            )
    notes: list[str] = slo_notes(args)
    system = catalog.load_system(resolved(args.system, "systems", notes), sys_o)
    system = cost_flags.with_region(args, system)
    price = cost_flags.pricing(args, system)
    if price is None and args.objective == "usd_per_mtoken":
        raise CliError(
            "--objective usd_per_mtoken needs --region (cost per token needs a region's "
            "electricity price and PUE); `emu list` shows the regions."
        )
    model = load_model(args, notes, model_o)
    if float(model.n_experts) == 0:  # else "no valid plan ... check the fixed degrees"
        given = [f"--{k} {getattr(args, k):g}" for k in ("ep", "etp")
                 if (getattr(args, k, None) or 1) > 1]  # fmt: skip
        if given:
            raise CliError(
                f"{' and '.join(given)} needs an MoE model ({model.name} is dense); drop it."
            )
    free, fixed = _free_and_fixed(args)
    if args.free is not None:  # a knob the phase or the model ignores varies nothing
        knobs = {k.name: k for k in plan_knobs(searchable=True)}
        idle = [k for k in free if k != "microbatch" and not knobs[k].applies_to(args.phase)]
        if idle:
            raise CliError(
                f"--free {idle[0]} varies a knob {args.phase} plans do not have (it applies "
                f"to {'/'.join(knobs[idle[0]].phases)} plans); drop it from --free."
            )
        moe = [k for k in free if k in ("ep", "etp")]
        if moe and float(model.n_experts) == 0:
            raise CliError(f"--free {moe[0]} needs an MoE model ({model.name} is dense); drop it.")
    if args.phase != "train" and args.free is not None and "microbatch" not in free + tuple(fixed):
        # the batch per DP rank is the lever of serving: left at the base plan's 1 it made
        # `--free tp` report a best 12x below what the SLO allows, without a word
        free += ("microbatch",)
        notes.append(
            "microbatch (the batch per DP rank) is searched too: it is what the SLO bounds; "
            "--batch N fixes it"
        )
    problem = _problem(args, system, model, _chips(args, system), free, fixed, slo_s, price)
    if args.precision is None:
        notes.append(f"precision: {problem.precision} (--precision to change)")
    if args.mtp_accept is None and problem.mtp_accept > 0:
        notes.append(mtp_note(model, problem.mtp_accept))
    return system, model, problem, _grid(args, system), out, notes + set_note(args)


def quick_search(args, system, model, chips: int, knobs: dict, slo_s) -> tuple:
    """`--plan best` of run/compare: a short gradient search over the knobs not given
    (exactly re-evaluated); (plan, a sentence saying what it was)."""
    import tempfile

    from emu.search import Space, gradient_search, plan_of, sweep

    searchable = {k.name for k in plan_knobs(searchable=True)} - {"dp"}
    for k in KNOBS:  # a knob the search's Problem has no place for would be dropped silently
        v = knobs.get(k.name)
        if k.name in SEARCH_FIXED_KNOBS | {"dp"} and v is not None and v != k.default:
            raise CliError(
                f"--plan best searches with {k.name} at its default; drop {k.flag} or give the "
                "plan's degrees instead of --plan best."
            )
    fixed = {}
    for name, v in knobs.items():
        if name in searchable:
            x = float(next(k for k in KNOBS if k.name == name).encode(v))
            fixed[name] = int(x) if x.is_integer() else x
    phase = knobs.get("phase", "train")
    free = tuple(k for k in (x.name for x in plan_knobs(searchable=True)) if k in searchable
                 and k not in fixed)  # fmt: skip
    if phase != "train":
        free = tuple(k for k in free if k in ("tp", "ep", "microbatch"))
    given = {n: knobs[n] for n in PROBLEM_KNOBS if n in knobs}
    problem = Problem(
        system=system.name, model=model.name, chips=chips, free=free,
        fixed=tuple(sorted(fixed.items())),
        tpot_slo=slo_s if phase == "decode" else SLO_DEFAULTS["tpot_slo"],
        ttft_slo=slo_s if phase == "prefill" else None, **given,
    )  # fmt: skip
    size = Space(system, model, problem, {}).size
    exhaustive = size <= EXHAUSTIVE_MAX  # as `emu search` chooses: every plan is quicker
    with render.working(f"--plan best: searching plans of {system.name} / {model.name}"):
        if exhaustive:
            with tempfile.TemporaryDirectory(prefix="emu-plan-best-") as parts:
                res = sweep(system, model, problem, parts, top=1, columns=["tokens_per_joule"])
        else:
            res = gradient_search(system, model, problem, starts=4, steps=20, polish=2, top=1)
    if res.best is None:
        raise CliError(
            f"--plan best found no feasible plan on {system.name} (none fits in memory and "
            "meets the SLO); add chips, relax the SLO or fix fewer knobs."
        )
    plan = plan_of(problem, res.best)
    if exhaustive:
        text = (
            f"plan on {system.name}: the best for tokens/J of every one of {size:,} plans "
            f"(an exhaustive search, {res.wall_s:.1f} s)"
        )
    else:
        text = (
            f"plan on {system.name}: the best of a quick gradient search for tokens/J "
            f"({res.evaluations:,} evaluations of a space of {res.space_size:,}, "
            f"{res.wall_s:.0f} s); `emu search` searches longer, `emu sweep` exhaustively"
        )
    return plan, text


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


def _emit_result(args, system, model, problem, res, out, text: str, notes, method=None) -> None:
    best = _best_run(system, model, problem, res)
    obj = {"best": best, **res.to_json(), "out": str(out) if out else None, "notes": notes}
    text += render.best_interval_text(best)
    if method is not None:
        obj["method"] = method
    render.emit(args, obj, text + "".join(f"\nnote: {n}" for n in notes))


def _method(args, size: int) -> tuple[str, str]:
    """(method, why) of `emu search`: --method, or by the space's size under auto."""
    if args.method != "auto":
        return args.method, f"--method {args.method}"
    flags = [f for f in ("starts", "steps", "seed") if getattr(args, f) is not None]
    if flags:
        return "gradient", f"--{flags[0]} given"
    if size <= EXHAUSTIVE_MAX:
        return "exhaustive", (
            f"auto: {size:,} configurations <= {EXHAUSTIVE_MAX:.0e}, where evaluating every one "
            "is faster than the gradient search; --method gradient to force it"
        )
    return "gradient", f"auto: {size:,} configurations > {EXHAUSTIVE_MAX:.0e}"


def cmd_search(args) -> None:
    import tempfile

    from emu.search import Space, gradient_search, sweep, write_table

    storage.enable_compilation_cache()
    system, model, problem, grid, out, notes = search_setup(args)
    method, why = _method(args, Space(system, model, problem, grid).size)
    if method == "exhaustive":
        shown = ["tokens_per_joule", "mfu", "tpot_s", "ttft_s", "usd_per_mtoken"]
        with tempfile.TemporaryDirectory(prefix="emu-search-") as parts:
            # the columns the table shows (every column with --out)
            res = sweep(system, model, problem, parts, grid=grid, top=args.top,
                        progress=render.sweep_progress(), warn=render.warn,
                        columns=None if out else shown)  # fmt: skip
            if out:
                write_table(res, out)
        what = (
            f"exhaustive search: every one of {res.evaluations} configurations "
            f"({res.feasible} feasible), {res.wall_s:.1f} s ({why})"
        )
        notes = [*notes, f"method: exhaustive ({why})"]
        text = render.search_text(res, what, _dies(system))
        _emit_result(args, system, model, problem, res, out, text, notes, method="exhaustive")
        return
    res = gradient_search(
        system,
        model,
        problem,
        grid=grid,
        starts=args.starts,
        steps=40 if args.steps is None else args.steps,
        top=args.top,
        seed=0 if args.seed is None else args.seed,
        progress=render.search_progress(),
    )
    if out:
        write_table(res, out)
    what = (
        f"gradient search: {res.evaluations} evaluations ({res.gradient_evaluations} "
        f"gradient + {res.exact_evaluations} exact) of a space of {res.space_size}, "
        f"{res.wall_s:.1f} s ({why})"
    )
    text = render.search_text(res, what, _dies(system))
    _emit_result(args, system, model, problem, res, out, text, notes, method="gradient")


def cmd_sweep(args) -> None:
    from emu.search import Space, sweep, write_table
    from emu.search._sweep import FILL_MIN, MERGE_COLUMNS

    pid, nproc = _processes(args)
    storage.enable_compilation_cache()
    system, model, problem, grid, out, notes = search_setup(args)
    base = out.with_name(out.name + ".parts") if out else storage.cache_dir("sweeps")
    # without --out only the rows shown need every column: a large space is scanned with the
    # merge's columns alone and its top and Pareto rows evaluated in full (`FILL_MIN`)
    size = Space(system, model, problem, grid).size
    lean = out is None and nproc == 1 and size >= FILL_MIN
    try:
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
            progress=render.sweep_progress(),
            warn=render.warn,
            throttle_s=args.throttle_s,
            columns=MERGE_COLUMNS if lean else None,
            fill=lean,
        )
    except KeyboardInterrupt as e:  # say what is kept (its finished chunks) and how to go on
        raise type(e)(  # SIGTERM stays a termination
            f"the finished chunks are kept under {base}; the same command resumes from them"
        ) from None
    if pid != 0:
        return
    if out:
        try:
            write_table(res, out)
        except KeyboardInterrupt as e:
            raise type(e)(  # SIGTERM stays a termination
                f"'{out}' was not written (an earlier file there is unchanged); the sweep's "
                f"chunks are kept under {base}, so the same command writes it without "
                "recomputing"
            ) from None
    res.remove_parts()  # only a killed sweep needs its chunks
    if out:
        _remove_if_empty(base)
    how = (
        f"scanned with the {len(res.columns)} columns the ranking and the Pareto front need, "
        "the rows shown evaluated in full"
    )
    if lean and args.json:  # the text says it in its first line
        notes = [*notes, f"{how} (a space of {FILL_MIN:.0e} configurations or more)"]
    what = (
        f"{res.evaluations} configurations ({res.grid_points} grid points, "
        f"{res.feasible} feasible), {res.chunks} chunk(s), {res.resumed} resumed, "
        f"{res.wall_s:.2f} s" + (f"; {how}" if lean else "")
    )
    text = (
        render.search_text(res, what, _dies(system))
        + f"\nPareto front (tokens/s vs W): {len(res.pareto)} plans"
    )
    _emit_result(args, system, model, problem, res, out, text, notes)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # another sweep's chunks are still there


def _dies(system) -> int:
    """Ranks per chip (2 on a CloudMatrix 384): the search table counts packages."""
    return int(round(float(system.chip.dies_per_chip)))
