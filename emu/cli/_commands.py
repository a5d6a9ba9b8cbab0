"""The commands that evaluate configurations or measurements: list, describe, run, compare,
sensitivity, serve, validate, calibrate. Each turns flags into library calls (emu.catalog,
emu.policy, emu.analysis, emu.validation, emu.calibration) and hands the result to
emu.cli._render."""

from __future__ import annotations

from emu import analysis, catalog, policy, storage
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
    system = catalog.load_system(system_name, sys_o)
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
        values = {k: float(v) for k, v in leaves.items()}
        rows = [[k, f"{v:.6g}", render.unit_of(k)] for k, v in values.items()]
        render.emit(args, values, render.table(rows, ["path", "value", "unit"]))
        return
    systems, models = catalog.list_systems(), catalog.list_models()
    text = "systems: " + ", ".join(systems) + "\nmodels:  " + ", ".join(models)
    render.emit(args, {"systems": systems, "models": models}, text)


def cmd_describe(args) -> None:
    sys_o, model_o, plan_o = overrides(args)
    if model_o or plan_o:
        raise CliError("describe takes only system fields in --set (no model./plan. paths).")
    d = analysis.describe(catalog.load_system(args.system, sys_o))
    render.emit(args, d, render.describe_text(d))


def cmd_run(args) -> None:
    storage.enable_compilation_cache()
    system, model, plan = setup(args, args.system)
    r = analysis.run(system, model, plan)
    render.emit(args, r, render.run_text([r]))


def cmd_compare(args) -> None:
    storage.enable_compilation_cache()
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    if not names:
        raise CliError("--systems is empty; give comma-separated system names.")
    results = [analysis.run(*setup(args, name)) for name in names]
    render.emit(args, {"results": results}, render.run_text(results))


def cmd_sensitivity(args) -> None:
    storage.enable_compilation_cache()
    d = analysis.sensitivity(*setup(args, args.system))
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
    system = catalog.load_system(args.system, sys_o)
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
    render.emit(args, out, render.serve_text(out, (args.prefill_chips, args.decode_chips)))
