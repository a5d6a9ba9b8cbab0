"""The commands that evaluate configurations or measurements: list, describe, run, compare,
sensitivity, serve, validate, calibrate. Each turns flags into library calls (emu.catalog,
emu.policy, emu.analysis, emu.validation, emu.calibration) and hands the result to
emu.cli._render."""

from __future__ import annotations

from emu import analysis, catalog, policy, storage
from emu.cli import _cost as cost_flags
from emu.cli import _render as render
from emu.cli._parser import FLAG_DEFAULTS, CliError
from emu.overrides import apply_overrides, parse_override, split_overrides
from emu.plan import KNOBS, plan_dict
from emu.struct import float_leaves


def overrides(args) -> tuple[dict, dict, dict]:
    """(system, model, plan) overrides of the --set flags."""
    parsed = {}
    for item in args.set:
        try:
            path, value = parse_override(item)
        except ValueError as e:
            raise CliError(f"--set {e}") from None
        parsed[path] = value
    if hasattr(args, "region"):  # cost.* and region.* go to the cost flags (emu.cli._cost)
        parsed = {p: v for p, v in parsed.items() if not cost_flags.is_cost_path(p)}
    return split_overrides(parsed)


def plan_knobs(args) -> dict:
    """The plan knobs given on the command line, by name (the rest is left to the plan rule
    and the declared defaults); a flag the plan's phase would ignore is refused."""
    given = {k.name: getattr(args, k.name) for k in KNOBS if getattr(args, k.name) is not None}
    phase = given.get("phase", "train")
    if phase == "train" and args.batch is not None:
        raise CliError("--batch is the serving batch per DP rank; in training use --microbatch.")
    for k in KNOBS:
        if k.name not in given or k.kind == "static" or k.name in FLAG_DEFAULTS:
            continue
        if phase != "train" and k.name in ("microbatch", "global_batch"):
            raise CliError(f"a {phase} plan's batch is --batch (per DP rank); drop {k.flag}.")
        if not k.applies_to(phase):
            raise CliError(
                f"{k.flag} applies to {'/'.join(k.phases)} plans only; drop it (--phase {phase})."
            )
    if phase != "train" and args.batch is not None:
        given["microbatch"] = args.batch
    return given


def setup(args, system_name: str):
    """(system, model, plan) of the workload flags of run/compare/sensitivity."""
    sys_o, model_o, plan_o = overrides(args)
    knobs = plan_knobs(args)
    system = cost_flags.with_region(args, catalog.load_system(system_name, sys_o))
    model = catalog.load_model(args.model, model_o)
    chips = args.chips if args.chips is not None else int(float(system.n_chips))
    plan = policy.auto_plan(system, model, chips, **knobs)
    if plan_o:
        plan = apply_overrides(plan, plan_o, "Plan")
        policy.check_plan(system, model, plan, args.chips)
    if plan.phase != "train" and args.batch is None:
        slo = args.tpot_slo if plan.phase == "decode" else args.ttft_slo
        plan = policy.with_largest_batch(system, model, plan, slo)
    return system, model, plan


def cmd_list(args) -> None:
    if args.fields:
        name = args.fields
        sys_o, model_o, _ = overrides(args)
        if name in catalog.list_models() and name not in catalog.list_systems():
            leaves = {
                f"model.{k}": v for k, v in float_leaves(catalog.load_model(name, model_o)).items()
            }
        else:
            leaves = float_leaves(catalog.load_system(name, sys_o))
            leaves |= cost_flags.field_rows(args, name)
        values = {k: float(v) for k, v in leaves.items()}
        unit = lambda k: cost_flags.unit_of(k) if cost_flags.is_cost_path(k) else render.unit_of(k)  # noqa: E731
        rows = [[k, f"{v:.6g}", unit(k)] for k, v in values.items()]
        render.emit(args, values, render.table(rows, ["path", "value", "unit"]))
        return
    systems, models = catalog.list_systems(), catalog.list_models()
    text = "systems: " + ", ".join(systems) + "\nmodels:  " + ", ".join(models)
    regions = cost_flags.regions()
    if args.regions:
        render.emit(args, {"regions": cost_flags.regions_json(regions)},
                    cost_flags.regions_text(regions))  # fmt: skip
        return
    text += "\nregions: " + ", ".join(regions) + " (--region; `emu list --regions` for sources)"
    render.emit(args, {"systems": systems, "models": models, "regions": regions}, text)


def cmd_describe(args) -> None:
    sys_o, model_o, plan_o = overrides(args)
    if model_o or plan_o:
        raise CliError("describe takes only system fields in --set (no model./plan. paths).")
    d = analysis.describe(catalog.load_system(args.system, sys_o))
    render.emit(args, d, render.describe_text(d))


def cmd_run(args) -> None:
    storage.enable_compilation_cache()
    system, model, plan = setup(args, args.system)
    price = cost_flags.pricing(args, system)  # checked before the run
    r = analysis.run(system, model, plan)
    if price:
        r |= analysis.cost_block(system, r, *price)
    render.emit(args, r, render.run_text([r]) + cost_flags.text([r]))


def cmd_compare(args) -> None:
    storage.enable_compilation_cache()
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not names:
        raise CliError("--systems is empty; give comma-separated system names.")
    results = [_priced_run(args, name) for name in names]
    render.emit(args, {"results": results}, render.run_text(results) + cost_flags.text(results))


def _priced_run(args, name: str) -> dict:
    """`analysis.run` of one system, with its cost block under --region."""
    system, model, plan = setup(args, name)
    price = cost_flags.pricing(args, system)
    r = analysis.run(system, model, plan)
    return r | analysis.cost_block(system, r, *price) if price else r


def cmd_sensitivity(args) -> None:
    storage.enable_compilation_cache()
    system, model, plan = setup(args, args.system)
    price = cost_flags.pricing(args, system)
    if price:  # with cost: one reverse pass through emulator and cost model
        d = analysis.cost_sensitivity(system, model, plan, *price)
        render.emit(args, d, cost_flags.sensitivity_text(d, args.top))
        return
    d = analysis.sensitivity(system, model, plan)
    render.emit(args, d, render.sensitivity_text(d, args.top))


def cmd_validate(args) -> None:
    from emu import validation

    storage.enable_compilation_cache()
    sys_o, model_o, plan_o = overrides(args)
    if model_o or plan_o:
        raise CliError("validate takes only system fields in --set (rows define model and plan).")
    if args.plot:  # before the work, not after it
        storage.check_output_path(args.plot, make_parents=True, what="--plot")
    report = validation.validate_file(args.file, kind=args.kind, overrides=sys_o)
    if args.plot:
        validation.plot_report(report, args.plot)
    text = validation.format_report(
        report, show_skipped=args.show_skipped, skipped_hint="use --show-skipped for reasons"
    )
    render.emit(args, report, text)


def cmd_calibrate(args) -> None:
    from emu import calibration

    storage.enable_compilation_cache()
    if args.set:
        raise CliError("calibrate takes no --set: it fits the shared parameters itself.")
    if not args.dry_run:  # before a fit of minutes, not after it
        out = args.out or calibration.overlay_path()
        storage.check_output_path(out, make_parents=True, what="--out")
    report = calibration.fit(
        args.file,
        steps=args.steps,
        progress=render.fit_progress("fit"),
        checkpoint_dir=storage.cache_dir("calibrate"),
        warn=render.warn,
        throttle_s=args.throttle_s,
    )
    cvs = (
        [calibration.cross_validate(report, by=by) for by in ("source", "system")]
        if args.cv
        else []
    )
    command = (
        "emu calibrate"
        + (f" {args.file}" if args.file else "")
        + (f" --steps {args.steps}" + (" --cv" if args.cv else ""))
    )
    path = None
    if not args.dry_run:
        path = calibration.write_overlay(report, args.out, command=command, cv=cvs)
    out = report.to_json()
    out["cross_validation"] = [vars(c) for c in cvs]
    out["overlay"] = str(path) if path else None
    render.emit(args, out, render.calibrate_text(out, path))


def _serving_plan(args, system, model, phase, chips, batch, slo, precision):
    plan = policy.auto_plan(
        system,
        model,
        chips,
        seq_len=args.prompt_len,
        microbatch=batch or 1,
        phase=phase,
        context=args.prompt_len + args.output_len // 2,
        mtp_accept=args.mtp_accept if phase == "decode" else 0.0,
        precision=precision,
        moe_imbalance=args.moe_imbalance,
        a2a_overlap=args.a2a_overlap,
    )
    return plan if batch is not None else policy.with_largest_batch(system, model, plan, slo)


def cmd_serve(args) -> None:
    from emu.serving import disaggregated

    storage.enable_compilation_cache()
    sys_o, model_o, plan_o = overrides(args)
    if plan_o:
        raise CliError("serve takes system and model fields in --set, not plan fields.")
    system = cost_flags.with_region(args, catalog.load_system(args.system, sys_o))
    price = cost_flags.pricing(args, system)
    model = catalog.load_model(args.model, model_o)
    precision = args.precision or policy.serving_precision(system)
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
    d["feasible"] = bool(d["feasible"] > 0.5)
    d["prefill"]["plan"] = plan_dict(prefill)
    d["decode"]["plan"] = plan_dict(decode)
    out = {"system": system.name, "model": model.name, **d}
    out["interval"] = analysis.intervals(
        {"tokens_per_s": d["tokens_per_s"], "tpot_s": d["tpot_s"]},
        analysis.interval_group(system, "decode"),
    )
    text = render.serve_text(out, (args.prefill_chips, args.decode_chips))
    if price:  # the deployment per output token; each instance per token it makes
        out |= analysis.cost_block(system, r, *price)
        out["prefill"] |= analysis.cost_block(system, r.prefill, *price)
        out["decode"] |= analysis.cost_block(system, r.decode, *price)
        names = ["deployment (output)", "prefill (prompt)", "decode (output)"]
        text += cost_flags.text([out, out["prefill"], out["decode"]], names)
    render.emit(args, out, text)
