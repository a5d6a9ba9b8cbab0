"""The commands that evaluate configurations or measurements: list, describe, run, compare,
sensitivity, serve, validate, calibrate. Each turns flags into library calls (emu.catalog,
emu.policy, emu.analysis, emu.validation, emu.calibration) and hands the result to
emu.cli._render."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from emu import _backend, analysis, catalog, policy, storage
from emu.cli import _cost as cost_flags
from emu.cli import _render as render
from emu.cli import _render_catalog as render_catalog
from emu.cli._parser import CliError
from emu.cli._setup import (
    SloMissed,
    load_model,
    mtp_note,
    overrides,
    resolved,
    serving_fixes,
    set_note,
    setup,
    slo_notes,
)
from emu.plan import plan_dict
from emu.struct import float_leaves


def evaluated(args, s) -> dict:
    """`analysis.run` of a Setup, checked physically possible, with what the user must see
    first: feasible (and why not), warnings, notes (resolved names, precision, overrides,
    uncalibrated parts, a searched plan)."""
    r = analysis.run(s.system, s.model, s.plan)
    policy.check_result(r)
    reasons, warnings = policy.diagnose(r, slo_s=s.slo_s, moe=float(s.model.n_experts) > 0)
    feasible = r["feasible"] and not reasons
    head = {"feasible": feasible, "infeasible_reasons": reasons, "warnings": warnings}
    if s.slo_s is not None:
        head["slo_s"] = s.slo_s
    r.pop("feasible")
    return {**head, **r, "notes": s.notes + set_note(args)}


def _cost_flags_given(args) -> list[str]:
    """The cost flags (and --set) a `list` command line gives."""
    return [f for f, on in (("--region", args.region), ("--cost", args.cost),
                            ("--hourly-price", args.hourly_price is not None),
                            ("--reference-hourly", args.reference_hourly),
                            ("--set", args.set)) if on]  # fmt: skip


def cmd_list(args) -> None:
    if args.fields is not None and not args.fields.strip():
        raise CliError("--fields is empty; give a system or model name, or plan.")
    if args.fields and args.regions:  # --regions was dropped without a word
        raise CliError("--fields and --regions list different things; give one.")
    if args.fields:
        _list_fields(args)
        return
    given = _cost_flags_given(args)
    if given:
        raise CliError(
            f"emu list prints the catalog as shipped; {given[0]} applies with --fields NAME "
            "(the fields it sets) or to run, compare, serve, search, sweep and sensitivity: "
            "drop it here."
        )
    regions = cost_flags.regions()
    if args.regions:
        render.emit(args, {"regions": cost_flags.regions_json(regions)},
                    cost_flags.regions_text(regions))  # fmt: skip
        return
    systems, models = [], []
    for name in catalog.list_systems():
        d = analysis.describe(catalog.load_system(name))
        systems.append(render_catalog.system_row(name, d))
    for name in catalog.list_models():
        models.append(render_catalog.model_row(name, catalog.load_model(name)))
    out = {  # keyed by name: `name in out["systems"]` and the old list of names still work
        "systems": {r.pop("name"): r for r in systems},
        "models": {r.pop("name"): r for r in models},
        "regions": regions,
    }
    text = render_catalog.list_text(out)
    text += "\nregions: " + ", ".join(regions) + " (--region; `emu list --regions` for sources)"
    render.emit(args, out, text)


def _list_fields(args) -> None:
    name = args.fields
    flags = _cost_flags_given(args)
    if name == "plan" and flags:  # the knobs' declarations, no values
        raise CliError(
            f"emu list --fields plan lists the plan knobs as declared; {flags[0]} changes no "
            "knob here: drop it."
        )
    sys_o, model_o, plan_o = overrides(args)
    if name == "plan":
        out = render_catalog.plan_fields()
        render.emit(args, out, render_catalog.plan_fields_text(out))
        return
    notes: list[str] = []
    kind = _kind_of(name)
    name = resolved(name, kind, notes)
    if kind == "models":
        given = [f for f in flags if f != "--set"]
        if given or sys_o or plan_o or any(cost_flags.is_cost_path(i) for i in args.set):
            what = given[0] if given else "--set of a system, plan or cost field"
            raise CliError(
                f"emu list --fields {args.fields} lists a model's fields; {what} changes "
                "none of them (cost: --fields SYSTEM): drop it, or --set model.<field>=V."
            )
        leaves = {
            f"model.{k}": v for k, v in float_leaves(catalog.load_model(name, model_o)).items()
        }
    else:
        if model_o or plan_o:
            raise CliError(
                f"emu list --fields {args.fields} lists a system's fields; --set model.* and "
                "plan.* apply to a model's (--fields MODEL) or to a run: drop them here."
            )
        leaves = float_leaves(catalog.load_system(name, sys_o))
        leaves |= cost_flags.field_rows(args, name)
    values = {k: float(v) for k, v in leaves.items()}
    unit = lambda k: cost_flags.unit_of(k) if cost_flags.is_cost_path(k) else render.unit_of(k)  # noqa: E731
    rows = [[k, f"{v:.6g}", unit(k)] for k, v in values.items()]
    render.note_lines(args, notes)
    render.emit(args, values, render.table(rows, ["path", "value", "unit"]))


def _kind_of(name: str) -> str:
    """'models' or 'systems': what a --fields NAME (a catalog name or a file) names."""
    s = str(name)
    if s.endswith(".json"):
        return "models"
    if s.endswith(".toml") or "/" in s:
        from pathlib import Path

        return "systems" if "chip" in catalog.load_toml(Path(s), "--fields") else "models"
    try:
        catalog.resolve_name(s, "models")
        return "models"
    except ValueError:
        pass
    try:
        catalog.resolve_name(s, "systems")
    except ValueError:
        raise CliError(
            f"--fields: '{s}' is neither a system, a model nor 'plan'; see `emu list`."
        ) from None
    return "systems"


def cmd_describe(args) -> None:
    costly = [x for x in args.set if cost_flags.is_cost_path(x.strip())]
    if costly:
        raise CliError(
            f"describe shows the system as built; --set {costly[0].split('=')[0]} prices a "
            "run: give it to run, compare, serve, search, sweep or sensitivity with --region."
        )
    sys_o, model_o, plan_o = overrides(args)
    if model_o or plan_o:
        raise CliError("describe takes only system fields in --set (no model./plan. paths).")
    notes: list[str] = []
    system = catalog.load_system(resolved(args.system, "systems", notes), sys_o)
    d = analysis.describe(system)
    _check_finite(d)
    missing = catalog.uncalibrated(system)
    d["calibrated"] = not missing
    if missing:
        notes.append(f"uncalibrated: {', '.join(missing)}")
    d["notes"] = notes + set_note(args)
    render.emit(args, d, render.describe_text(d))


def _check_finite(d: dict, prefix: str = "") -> None:
    """A number that overflows float32 (e.g. huge overrides multiplied) is refused."""
    import math

    for k, v in d.items():
        if isinstance(v, dict):
            _check_finite(v, f"{prefix}{k}.")
        elif isinstance(v, float) and not math.isfinite(v):
            raise ValueError(
                f"{prefix}{k} is not finite: the overridden values are too large for float32."
            )


def _compiling(system: str, model: str, *, compiles: str = "") -> str:
    """The spinner's text: run/compare evaluate a new shape eagerly (emu.fast.aot); the
    other commands (`compiles` says what they add) compile it."""
    if compiles:
        return (
            f"compiling and evaluating {system} / {model}{compiles} (a new shape compiles "
            "once, 10-60 s on 2 cores; cached afterwards)"
        )
    if _backend.is_numpy():
        return f"evaluating {system} / {model}"
    return (
        f"evaluating {system} / {model} (a new shape runs op by op, ~1-3 s, and is compiled "
        "in the background for the next run)"
    )


def _fast_start() -> None:
    """The compiled evaluations of `analysis.run`, the plan rule and the serving batch rule
    loaded from disk (`emu.fast.aot`): a repeated `emu run` neither traces, lowers nor
    compiles them again; before they are on disk, one configuration is evaluated eagerly
    (faster than compiling it). JAX's persistent cache stays off here: it would only hold
    tiny programs, and an executable it loads cannot be serialized again on CPU."""
    if _backend.is_numpy():  # one configuration on NumPy: nothing to compile or load
        return
    from emu import fast

    if not fast.aot_enabled():
        storage.enable_compilation_cache()
        return
    fast.cache_executables(analysis, "_evaluate")
    # the plan rule's memory probes run op by op otherwise (~20 small programs, ~0.5 s)
    fast.cache_executables(policy, plain=("memory",))
    # the serving batch rule calls these many times (and loops): compiled on a miss
    fast.cache_executables(policy, "_evaluate", "_max_batch", eager=False)


def cmd_run(args) -> None:
    _fast_start()
    with render.working(_compiling(args.system, args.model)):
        s = setup(args, args.system)
        price = cost_flags.pricing(args, s.system)  # checked before the run
        r = evaluated(args, s)
    if price:
        _price(args, s, r, price)
    render.emit(args, r, render.run_text([r]) + cost_flags.text([r]))


def _price(args, s, r: dict, price) -> None:
    """`r` with its cost block under --region, and the 80% band of its USD per M tokens:
    cost per token goes as 1 / throughput, power being modelled."""
    r |= analysis.cost_block(s.system, r, *price)
    r["notes"] += cost_flags.notes(args, s.system, price[0])
    iv = (r.get("interval") or {}).get("tokens_per_s") or {}
    usd, tps = r.get("usd_per_mtoken"), r["tokens_per_s"]
    if usd and iv.get("low") and iv.get("high"):
        r["interval"]["usd_per_mtoken"] = {
            **iv, "low": usd * tps / iv["high"], "high": usd * tps / iv["low"]
        }  # fmt: skip


def cmd_compare(args) -> None:
    _fast_start()
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not names:
        raise CliError("--systems is empty; give comma-separated system names.")
    low = [n.lower().replace("-", "_") for n in names]
    twice = next((n for i, n in enumerate(names) if low[i] in low[:i]), None)
    if twice is not None:
        raise CliError(f"--systems lists {twice!r} twice; name each system once.")
    results = []
    for name in names:
        with render.working(_compiling(name, args.model)):
            try:
                results.append(_priced_run(args, name))
            except SloMissed as e:  # one system misses the SLO: the others' results stand
                if len(names) < 2:
                    raise
                one = _priced_run(argparse.Namespace(**{**vars(args), "batch": 1}), name)
                one["notes"] = [*one["notes"], f"no batch meets the SLO ({e}); shown at batch 1"]
                results.append(one)
            except ValueError as e:  # say which of the compared systems it is
                if len(names) < 2 or str(e).startswith(f"{name}:"):
                    raise
                raise ValueError(f"{name}: {e}") from None
    names = render.column_names(results)
    ratios = _ratios(results, names)
    render.emit(
        args,
        {"results": results, "ratios": ratios},
        render.run_text(results)
        + cost_flags.text(results, names)
        + render.ratios_text(ratios, names[0]),
    )


def _ratios(results: list[dict], names: list[str]) -> list[dict]:
    """Each other system against the first (`compare`): the ratio of tokens/s and tokens/J
    with its 80% band, the two systems' intervals at opposite ends (each prediction's
    interval, not a band of the ratio itself: conservative), as the study reports them."""
    out = []
    a = results[0]
    for b, name in zip(results[1:], names[1:], strict=True):
        row = {"system": name, "to": names[0]}
        if not (a["feasible"] and b["feasible"]):  # no tokens to compare: said, not dropped
            none = {"value": None, "low": None, "high": None, "extrapolation": False}
            out.append({**row, "infeasible": True, "tokens_per_s": none,
                        "tokens_per_joule": none})  # fmt: skip
            continue
        for key in ("tokens_per_s", "tokens_per_joule"):
            ia, ib = (r.get("interval", {}).get(key) or {} for r in (a, b))
            value = b[key] / a[key] if a[key] else None
            ends = (ia.get("low"), ia.get("high"), ib.get("low"), ib.get("high"))
            ok = None not in ends and all(math.isfinite(e) and e > 0 for e in ends)
            row[key] = {
                "value": value,
                "low": ends[2] / ends[1] if ok else None,
                "high": ends[3] / ends[0] if ok else None,
                "extrapolation": bool(ia.get("extrapolation") or ib.get("extrapolation")),
            }
        out.append({**row, "infeasible": False})
    return out


def _priced_run(args, name: str) -> dict:
    """`evaluated` on one system, with its cost block under --region (`_price`)."""
    s = setup(args, name)
    price = cost_flags.pricing(args, s.system)
    r = evaluated(args, s)
    if price:
        _price(args, s, r, price)
    return r


def cmd_sensitivity(args) -> None:
    storage.enable_compilation_cache()
    with render.working(_compiling(args.system, args.model, compiles=" with gradients")):
        s = setup(args, args.system)
        price = cost_flags.pricing(args, s.system)
        if price:  # with cost: one reverse pass through emulator and cost model
            d = analysis.cost_sensitivity(s.system, s.model, s.plan, *price)
        else:
            d = analysis.sensitivity(s.system, s.model, s.plan)
        # is the plan possible at all? (reuses sensitivity's compiled evaluation; with
        # --region, cost_sensitivity compiled none, so this compiles one)
        r = evaluated(args, s)
    d = {k: r[k] for k in ("feasible", "infeasible_reasons", "warnings")} | d
    d["plan"] = r["plan"]  # the plan the gradient was taken at
    d["notes"] = (
        s.notes + set_note(args) + (cost_flags.notes(args, s.system, price[0]) if price else [])
    )
    why_not = d["infeasible_reasons"] or ([] if d["feasible"] else ["out of memory"])
    lead = "".join(
        f"INFEASIBLE on {s.system.name}: {why.rstrip('.')}; the elasticities below are of a "
        "plan that cannot run\n"
        for why in why_not
    )
    if price:
        render.emit(args, d, lead + cost_flags.sensitivity_text(d, args.top))
        return
    render.emit(args, d, lead + render.sensitivity_text(d, args.top))


def cmd_validate(args) -> int | None:
    from emu import validation

    storage.enable_compilation_cache()
    sys_o, model_o, plan_o = overrides(args)
    if model_o or plan_o:
        raise CliError("validate takes only system fields in --set (rows define model and plan).")
    if args.row is not None:
        given = [f for f, on in (("--kind", args.kind), ("--plot", args.plot),
                                 ("--show-skipped", args.show_skipped)) if on]  # fmt: skip
        if given:
            raise CliError(f"--row explains one row: drop {' and '.join(given)}.")
        exp = validation.explain_row(args.row, args.file, overrides=sys_o)
        status = exp.result["status"]
        if status != "ok":  # not success: 2 for a row it could not read, 1 for one it skips
            if args.json:
                render.emit(args, exp.to_json(), "")
            else:
                print(f"emu: {render.explain_text(exp)}", file=sys.stderr)
            return 2 if status == "error" else 1
        render.emit(args, exp.to_json(), render.explain_text(exp))
        return
    if args.plot is not None:  # before the work, not after it
        if not args.plot.strip():
            raise CliError("--plot is empty; give a file name (.png, .pdf or .svg).")
        storage.check_output_path(
            args.plot, suffixes=(".png", ".pdf", ".svg"), make_parents=True, what="--plot"
        )
        render.need_matplotlib("--plot")
    report = validation.validate_file(args.file, kind=args.kind, overrides=sys_o)
    if not any(r.get("status") == "ok" for r in report["rows"]):
        why = "; ".join(r["reason"] for r in report["rows"] if r.get("reason"))
        why = why if len(why) <= 300 else why[:297] + "..."
        raise CliError(
            f"no row of {args.file or 'the shipped set'} could be modelled "
            f"({len(report['rows'])} rows: {why or 'no reason given'}); the row format is in "
            "MEASUREMENTS.md beside the shipped set (emu/data/)."
        )
    if args.plot:
        validation.plot_report(report, args.plot)
    text = validation.format_report(
        report, show_skipped=args.show_skipped, skipped_hint="use --show-skipped for reasons"
    )
    render.emit(args, report, text)
    errors = report["summary"]["errors"]
    if errors and args.strict:  # the report stands, and a script can tell rows were left out
        print(
            f"emu: {errors} row{'s' if errors > 1 else ''} could not be read (ERROR above, "
            "`reason` in the JSON); fix them as MEASUREMENTS.md describes, or drop them "
            "(--strict: exit status 1)",
            file=sys.stderr,
        )
        return 1
    return None


def cmd_calibrate(args) -> None:
    from emu import calibration

    storage.enable_compilation_cache()
    if args.set:
        raise CliError("calibrate takes no --set: it fits the shared parameters itself.")
    if args.cv:  # before a fit of minutes, not after it
        _check_cv_groups(args.file)
    if args.holdout is not None and not args.cv:
        raise CliError(
            "--holdout calibrates the intervals with --cv's residuals; add --cv, or drop --holdout."
        )
    if args.holdout is not None and not args.holdout.strip():
        raise CliError("--holdout is empty; give a JSON Lines file of rows the fit does not see.")
    holdout = (
        calibration.read_holdout(args.holdout, args.file, warn=render.warn) if args.holdout else []
    )
    if args.out is not None and not args.out.strip():  # "" was the shipped overlay
        raise CliError(
            "--out is empty; give a .toml file name, or leave --out out to replace the "
            "shipped overlay (configs/calibration/fitted.toml)."
        )
    if args.out and args.dry_run:
        raise CliError("--dry-run writes nothing; drop --out or --dry-run.")
    if args.overwrite and not args.out:
        raise CliError(
            "--overwrite replaces files at --out; give --out (the default overlay is always "
            "replaced, and --dry-run writes nothing)."
        )
    if not args.dry_run:  # before a fit of minutes, not after it
        out = args.out or calibration.overlay_path()
        storage.check_output_path(out, suffixes=(".toml",), make_parents=True, what="--out")
        beside = calibration.overlay_files(out, True)[1:]
        if args.cv and Path(out).name in {p.name for p in beside}:
            raise CliError(
                f"--out '{out}': --cv writes residuals.jsonl and intervals.toml beside the "
                "overlay, so the overlay needs another name (e.g. fitted.toml)."
            )
        inputs = [Path(f) for f in (args.file, args.holdout) if f]
        hit = [p for p in beside if args.cv and any(_same_file(p, f) for f in inputs)]
        if hit:
            raise CliError(
                f"--cv would write its residuals over '{hit[0]}', a file this fit reads; "
                "give --out in another folder."
            )
        taken = [p for p in calibration.overlay_files(out, args.cv) if p.exists()]
        if args.out and taken and not args.overwrite:
            raise CliError(
                f"--out: '{taken[0]}' exists; give another path, or --overwrite to replace it"
                + (" (--cv writes residuals.jsonl and intervals.toml beside the overlay)."
                   if args.cv else ".")
            )  # fmt: skip

    started = []

    def keeps_overlay(problem):  # the shipped overlay is replaced whole: not by a part
        started.append(True)  # the rows are read; the steps (and checkpoints) follow
        shipped = calibration.overlay_path()
        if args.dry_run or (args.out and not _same_file(Path(args.out), shipped)):
            return
        missing = calibration.overlay_missing(problem.keys)
        if missing:
            raise CliError(
                f"this fit sets no value for {len(missing)} fields the shipped overlay fits "
                f"(e.g. {', '.join(missing[:3])}): its rows do not reach them, and writing it "
                "to configs/calibration/fitted.toml would return them to their priors for every "
                "run. Give --out PATH to write it elsewhere, --dry-run to see it, or add your "
                "rows to the shipped ones (emu/data/measurements.jsonl) and fit them all."
            )
        if not args.cv:
            render.warn(
                "the intervals beside the overlay (intervals.toml, residuals.jsonl) stay those "
                "of the last `emu calibrate --cv`; add --cv to recalibrate them with this fit"
            )

    try:
        report = calibration.fit(
            args.file,
            steps=args.steps,
            progress=render.fit_progress("fit"),
            checkpoint_dir=storage.cache_dir("calibrate"),
            warn=render.warn,
            throttle_s=args.throttle_s,
            weights=args.weights,
            min_sources=2 if args.cv else 0,
            check=keeps_overlay,
        )
    except KeyboardInterrupt as e:
        if not started:  # still reading the rows: nothing to keep
            raise type(e)("before the fit's first step; nothing was written") from None
        raise type(e)(  # SIGTERM stays a termination
            "the fit is checkpointed every "
            f"{calibration.CHECKPOINT_EVERY} steps in {storage.cache_dir('calibrate')}; "
            "the same command resumes it"
        ) from None
    cvs = (
        [calibration.cross_validate(report, by=by) for by in ("source", "system")]
        if args.cv
        else []
    )
    if holdout:  # the source pass's residuals, which the intervals come from
        import jax

        jax.clear_caches()  # the fit's and the folds' compiled blocks are not needed again
        extra = calibration.holdout_residuals(report, holdout)
        if not extra:
            render.warn(f"no row of '{args.holdout}' could be scored with the fitted parameters")
        cvs[0] = calibration.with_holdout(cvs[0], extra)
    command = (
        "emu calibrate"
        + (f" {args.file}" if args.file else "")
        + (f" --steps {args.steps}" + (" --cv" if args.cv else ""))
        + (f" --weights {args.weights}" if args.weights != "confidence" else "")
        + (f" --holdout {args.holdout}" if args.holdout else "")
    )
    path, written = None, []
    if not args.dry_run:
        path = calibration.write_overlay(report, args.out, command=command, cv=cvs)
        written = [str(p) for p in calibration.overlay_files(path, args.cv) if p.exists()]
    out = report.to_json()
    out["cross_validation"] = [vars(c) for c in cvs]
    out["overlay"] = str(path) if path else None
    out["written"] = written
    render.emit(args, out, render.calibrate_text(out, path))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _check_cv_groups(file) -> None:
    """`--cv` holds out one source, then one system, at a time: a file with one source has
    nothing to build the intervals from (it fitted for minutes, then said 'no residuals to
    calibrate intervals on')."""
    from emu import validation

    rows, _ = validation.read_rows(file or validation.default_measurements())
    # the intervals come from the leave-one-source-out pass; leave-one-system-out over one
    # system simply holds nothing out. (Rows that turn out not to be modelled still count
    # here: the check reads the file; `cross_validate` checks the fitted rows' sources.)
    sources = {validation.row_source(r) for r in rows}
    if len(sources) < 2:
        raise CliError(
            f"--cv holds out one of the rows' sources at a time and needs at least two; "
            f"the file has {len(sources)}. Leave out --cv to fit without cross-validation."
        )


def _serving_plan(args, system, model, phase, chips, batch, slo, precision):
    plan = policy.auto_plan(
        system,
        model,
        chips,
        seq_len=args.prompt_len,
        microbatch=batch or 1,
        phase=phase,
        context=args.prompt_len + args.output_len // 2,
        # None: the serving rule's MTP for a model with MTP modules (policy.DEFAULT_MTP_ACCEPT)
        mtp_accept=args.mtp_accept if phase == "decode" else 0.0,
        precision=precision,
        kv_precision=args.kv_precision,
        moe_imbalance=args.moe_imbalance,
        a2a_overlap=args.a2a_overlap,
        **(
            dict(
                expert_ranks=args.decode_expert_ranks,
                attention_groups=args.decode_attention_groups,
            )
            if phase == "decode"
            else {}
        ),
    )
    if batch is not None:
        return plan
    try:
        return policy.with_largest_batch(system, model, plan, slo, widen_tp=True)
    except policy.ServingFitError as e:  # its moves in serve's own flags (no --tp/--ep here)
        n = getattr(args, f"{phase}_chips")
        slo_flag = "--tpot-slo" if phase == "decode" else "--ttft-slo"
        fixes = serving_fixes(
            e, plan, chips=f"--{phase}-chips (now {n})", slo=f"{slo_flag} (now {slo:g} s)",
            shorter="--prompt-len/--output-len" if phase == "decode" else "--prompt-len",
            expert_ranks="--decode-expert-ranks",
        )  # fmt: skip
        raise CliError(f"the {phase} instance: {e.detail}; {fixes}.") from None


def cmd_serve(args) -> None:
    storage.enable_compilation_cache()
    sys_o, model_o, plan_o = overrides(args)
    if plan_o:
        raise CliError("serve takes system and model fields in --set, not plan fields.")
    notes: list[str] = slo_notes(args)
    system = catalog.load_system(resolved(args.system, "systems", notes), sys_o)
    system = cost_flags.with_region(args, system)
    price = cost_flags.pricing(args, system)
    notes += cost_flags.notes(args, system, price[0]) if price else []
    model = load_model(args, notes, model_o)
    precision = args.precision or policy.serving_precision(system)
    if args.precision is None:
        notes.append(f"precision: {precision} (the chip's serving format; --precision to change)")
    with render.working(_compiling(system.name, model.name, compiles=" (prefill and decode)")):
        out = _serve(args, system, model, precision)
    if args.mtp_accept is None and out["decode"]["plan"]["mtp_accept"] > 0:
        notes.append(mtp_note(model, out["decode"]["plan"]["mtp_accept"]))
    out["notes"] = notes + set_note(args)
    out["interval"] = analysis.intervals(
        {"tokens_per_s": out["tokens_per_s"], "tpot_s": out["tpot_s"]},
        analysis.interval_group(system, "decode"),
        uncalibrated=tuple(catalog.uncalibrated(system)),
    )
    text = render.serve_text(out, (args.prefill_chips, args.decode_chips))
    if price:  # the deployment per output token; each instance per token it makes
        # the result dicts: their `feasible` counts a latency over its SLO (at a given batch)
        out |= analysis.cost_block(system, out, *price)
        out["prefill"] |= analysis.cost_block(system, out["prefill"], *price)
        out["decode"] |= analysis.cost_block(system, out["decode"], *price)
        names = ["deployment (output)", "prefill (prompt)", "decode (output)"]
        text += cost_flags.text([out, out["prefill"], out["decode"]], names)
    render.emit(args, out, text)


def _serve(args, system, model, precision) -> dict:
    from emu.serving import disaggregated

    prefill = _serving_plan(
        args, system, model, "prefill", args.prefill_chips, args.prefill_batch, args.ttft_slo,
        precision,
    )  # fmt: skip
    decode = _serving_plan(
        args, system, model, "decode", args.decode_chips, args.decode_batch, args.tpot_slo,
        precision,
    )  # fmt: skip
    r = disaggregated(
        system,
        model,
        prefill,
        decode,
        prompt_len=float(args.prompt_len),
        output_len=float(args.output_len),
    )
    d = analysis.tree_to_dict(r)
    _check_finite(d)
    d["feasible"] = bool(d["feasible"] > 0.5)
    d["prefill"]["plan"] = plan_dict(prefill)
    d["decode"]["plan"] = plan_dict(decode)
    feasible = d.pop("feasible")
    reasons = _serve_diagnosis(args, d)
    head = {"feasible": feasible and not reasons, "infeasible_reasons": reasons, "warnings": []}
    return {**head, "system": system.name, "model": model.name, **d}


def _serve_diagnosis(args, d: dict) -> list[str]:
    """Why a `serve` deployment cannot run, in serve's own flags: an instance out of memory,
    by how much; an instance whose latency misses its SLO at a batch given with
    --prefill-batch/--decode-batch (as `run` does; the batch rule meets the SLO itself)."""
    reasons = []
    for phase, lat, what in (("prefill", "ttft_s", "TTFT"), ("decode", "tpot_s", "TPOT")):
        slo_s = getattr(args, f"{lat[:4]}_slo")  # serve's --ttft-slo and --tpot-slo
        inst, n = d[phase], getattr(args, f"{phase}_chips")
        d[phase]["feasible"] = bool(inst["feasible"] > 0.5)
        mem = inst["memory"]
        per = "per die" if inst["n_ranks"] != inst["n_chips"] else "per chip"
        batch = inst["plan"]["microbatch"]
        if not d[phase]["feasible"]:
            reasons.append(
                f"the {phase} instance is out of memory: {render.si(mem['total_bytes'], 'B')} "
                f"of {render.si(mem['capacity_bytes'], 'B')} {per} at batch {batch} per DP "
                f"rank; lower --{phase}-batch (or leave it out for the largest that fits) or add "
                f"--{phase}-chips (now {n})."
            )
        elif inst[lat] > slo_s:
            d[phase]["feasible"] = False
            reasons.append(
                f"the {phase} instance's {what} {inst[lat]:.3g} s misses the {slo_s:g} s SLO at "
                f"batch {batch} per DP rank; lower --{phase}-batch (or leave it out for the "
                f"largest batch meeting it) or relax --{what.lower()}-slo."
            )
    return reasons
