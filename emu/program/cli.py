"""`emu program`: estimate a JAX program on one or more systems.

    emu program emu/examples/llama.py:train --devices 64 --arg size=8b --arg seq_len=4096 \\
        --system gb200_nvl72 --system cloudmatrix384 --tokens-per-step 32768 [--json]

`add_program_parser(subparsers)` adds the subcommand to emu's parser and `run_program_cli(args)`
runs it; `main_program(argv)` is the whole command on its own (exit status 2 and one line on
stderr for bad input, as every emu command).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import sys

__all__ = ["add_program_parser", "run_program_cli", "main_program", "build_program_parser"]

DEFAULT_SYSTEMS = ["gb200_nvl72"]
#: bounds of the numeric flags (a larger --tokens-per-step overflowed float32 into an
#: infinite tokens/s; an infinite --timeout crashed; --devices 20000 waited out the timeout)
MAX_TOKENS_PER_STEP = 1e15
MAX_TIMEOUT_S = 86400.0
MAX_DEVICES = 16384


def _add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's arguments: a builder or --hlo, the systems, and the options."""
    p.add_argument(
        "builder",
        nargs="?",
        help="path/to/file.py:builder or package.module:builder, returning (jitted fn, args)",
    )
    p.add_argument("--devices", type=int, help="devices the program is compiled for (N)")
    _repeatable(p, "--system", None, "catalog name or TOML path (repeatable; default gb200_nvl72)")
    p.add_argument(
        "--tokens-per-step", type=float, help="tokens one step processes (for tokens/s, /J)"
    )
    _repeatable(
        p,
        "--arg",
        "KEY=VALUE",
        "keyword argument for the builder (a Python literal or a string; repeatable)",
    )
    p.add_argument("--hlo", metavar="FILE", help="cost this HLO text instead of a builder")
    p.add_argument("--mesh", metavar="AXIS=N,...", help="with --hlo: the mesh, e.g. data=8,model=8")
    _repeatable(
        p,
        "--axis-role",
        "AXIS=ROLE",
        "overlap class of a mesh axis: tp, dp, cp, pp, ep or other (repeatable)",
    )
    p.add_argument("--fusion", default="ideal", choices=["ideal", "as_compiled"])
    p.add_argument("--algorithm", default="hierarchical", choices=["hierarchical", "ring"])
    p.add_argument("--top", type=int, default=10, help="most expensive ops listed")
    p.add_argument(
        "--timeout", type=float, default=None, help="builder tracing timeout, seconds (default 600)"
    )
    _repeatable(p, "--set", "PATH=VALUE", "override a system field by dotted path (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _repeatable(p: argparse.ArgumentParser, flag: str, metavar: str | None, help: str) -> None:
    """A flag that may be given several times (values collected in a list)."""
    p.add_argument(flag, action="append", default=[], metavar=metavar, help=help)


def add_program_parser(subparsers) -> argparse.ArgumentParser:
    """Add `program` to an argparse subparsers object; returns the new parser."""
    p = subparsers.add_parser(
        "program", help="estimate your own JAX program (its compiled HLO) on systems"
    )
    _add_arguments(p)
    return p


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors raised as ValueError (exit status 2 in `main_program`),
    no abbreviated flags and a single-value flag refused when given twice, as `emu`'s own
    parser (`emu._argparse`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):  # one line, exit 2, no usage dump
        raise ValueError(f"{message} (see `{self.prog} --help`)")

    def parse_known_args(self, args=None, namespace=None):
        from emu._argparse import repeated_flag

        twice = repeated_flag(self, sys.argv[1:] if args is None else list(args))
        if twice:
            raise ValueError(twice)
        return super().parse_known_args(args, namespace)


def build_program_parser() -> argparse.ArgumentParser:
    """The standalone `emu program` parser."""
    p = _Parser(prog="emu program", description="Estimate a JAX program on emu systems.")
    _add_arguments(p)
    return p


def _pairs(items: list[str], what: str) -> dict[str, str]:
    """['k=v', ...] -> {'k': 'v'}; a one-line error names the flag `what`."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{what} expects KEY=VALUE (got '{item}').")
        if key.strip() in out:
            raise ValueError(f"{what} names {key.strip()} twice; give each once.")
        out[key.strip()] = value.strip()
    return out


def _literal(text: str):
    """A Python literal ('8', '"8b"', 'True'), else the text itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def run_program_cli(args: argparse.Namespace) -> int:
    """Run `emu program` for parsed `args`; prints the report, returns 0 (raises ValueError
    with one line on bad input)."""
    import emu  # the command's host side: the catalog's systems and their calibration
    from emu import load_system
    from emu.program import text_report
    from emu.program._optable import check_roles

    if args.top < 1:
        raise ValueError(f"--top must be >= 1: the most expensive ops listed (got {args.top}).")
    names = [str(x).lower().replace("-", "_") for x in args.system or []]
    twice = next((x for i, x in enumerate(args.system or []) if names[i] in names[:i]), None)
    if twice is not None:
        raise ValueError(f"--system {twice} is given twice; name each system once.")
    tps = args.tokens_per_step
    if tps is not None and not 0 < tps <= MAX_TOKENS_PER_STEP:
        raise ValueError(
            f"--tokens-per-step must be a number of tokens in (0, {MAX_TOKENS_PER_STEP:.0e}] "
            f"(got {tps:g}); leave it out for no tokens/s."
        )
    if args.timeout is not None and not 0 < args.timeout <= MAX_TIMEOUT_S:
        raise ValueError(
            f"--timeout must be a number of seconds in (0, {MAX_TIMEOUT_S:g}] "
            f"(got {args.timeout:g})."
        )
    if args.devices is not None and not 1 <= args.devices <= MAX_DEVICES:
        raise ValueError(
            f"--devices must be in [1, {MAX_DEVICES}] (got {args.devices}): the builder is "
            "traced on that many virtual CPU devices in one process."
        )
    overrides = _system_overrides(args.set)
    systems = [load_system(s, overrides) for s in (args.system or DEFAULT_SYSTEMS)]
    roles = _pairs(args.axis_role, "--axis-role")
    check_roles(roles)  # before the seconds a builder takes to trace
    if args.hlo:
        prog = _hlo_program(args, roles)
    else:  # a builder traced in this process prints to stdout: keep it for the report
        with contextlib.redirect_stdout(sys.stderr):
            prog = _builder_program(args, roles)
    results = prog.estimate(
        systems, tokens_per_step=args.tokens_per_step, algorithm=args.algorithm, top=args.top
    )
    for system, r in zip(systems, results, strict=True):
        missing = emu.catalog.uncalibrated(system)  # as `emu run`, `compare`, `describe`
        if missing:
            r.notes.append(
                f"uncalibrated: {', '.join(missing)} (parameters declared in the file, not "
                "fitted to measurements); expect larger errors"
            )
    if args.json:
        from emu.struct import json_safe  # non-finite numbers as null, as every command

        out = json_safe({"results": [r.to_json() for r in results]})
        print(json.dumps(out, indent=2, allow_nan=False))
    else:
        print(text_report(results, top=args.top))
    return 0


def _system_overrides(items: list[str]) -> dict[str, float]:
    """`--set PATH=VALUE` pairs as finite floats; model./plan. paths are refused (the
    program is the model and the plan)."""
    import math

    overrides = {}
    for path, text in _pairs(items, "--set").items():
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--set {path}: value '{text}' is not a number.") from None
        if not math.isfinite(value):
            raise ValueError(f"--set {path}: value must be finite (got {text}).")
        if path.startswith(("model.", "plan.")):
            raise ValueError(
                f"--set {path}: `emu program` reads the model and plan from the program; "
                "only system fields can be set."
            )
        overrides[path] = value
    return overrides


def _hlo_program(args: argparse.Namespace, roles: dict[str, str]):
    """The Program of `--hlo FILE --mesh AXIS=N,...`."""
    from emu.program import from_hlo

    if args.builder:
        raise ValueError("give either a builder or --hlo FILE, not both.")
    unused = [
        f
        for f, v in (("--devices", args.devices), ("--arg", args.arg), ("--timeout", args.timeout))
        if v is not None and v != []
    ]
    if unused:
        raise ValueError(
            f"{' and '.join(unused)} {'is' if len(unused) == 1 else 'are'} for a builder; "
            "an --hlo module was compiled already (its mesh is --mesh): drop "
            f"{'it' if len(unused) == 1 else 'them'}."
        )
    if not args.mesh:
        raise ValueError("--hlo needs --mesh AXIS=N,... (e.g. --mesh data=8,model=8).")
    mesh = {}
    for k, v in _pairs(args.mesh.split(","), "--mesh").items():
        if not v.isdigit() or int(v) < 1:
            raise ValueError(f"--mesh {k}={v}: the size must be a positive integer.")
        mesh[k] = int(v)
    try:
        text = open(args.hlo).read()
    except OSError as e:
        raise ValueError(f"cannot read --hlo {args.hlo}: {e.strerror}.") from None
    return from_hlo(text, mesh, fusion=args.fusion, axis_roles=roles)


def _builder_program(args: argparse.Namespace, roles: dict[str, str]):
    """The Program of a builder traced for `--devices N` devices."""
    from emu.program import trace_program

    if not args.builder:
        raise ValueError("give a builder (path/to/file.py:builder) or --hlo FILE.")
    if args.mesh:
        raise ValueError(
            "--mesh is for --hlo; a builder's program carries its own mesh (--devices N "
            "devices): drop --mesh."
        )
    if args.devices is None:
        raise ValueError("--devices N is required: the number of devices to compile for.")
    kwargs = {k: _literal(v) for k, v in _pairs(args.arg, "--arg").items()}
    return trace_program(
        args.builder,
        devices=args.devices,
        kwargs=kwargs,
        fusion=args.fusion,
        axis_roles=roles,
        **({} if args.timeout is None else {"timeout_s": args.timeout}),  # else the library's
    )


def main_program(argv: list[str] | None = None) -> int:
    """`emu program ...` as a standalone command: exit status 0, or 2 with one line on
    stderr for bad input."""
    try:
        return run_program_cli(build_program_parser().parse_args(argv))
    except ValueError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"emu: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main_program())
