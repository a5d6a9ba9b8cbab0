"""The `emu` command line: list, describe, run, compare, sensitivity, serve, search, sweep,
validate, calibrate, program.

Every command takes `--json` (machine-readable, SI units, on stdout) and `--set PATH=VALUE`
(repeatable) to override a field by dotted path: system fields as listed by
`emu list --fields SYSTEM` (e.g. chip.hbm_bytes_per_s), model fields as `model.<field>`,
plan fields as `plan.<field>`. Bad input prints one line on stderr and exits with status 2;
an I/O failure (a full disk, an unwritable stdout) one line and status 1; a closed pipe
(`emu ... | head`) ends quietly with status 0.

Parts: `_parser` (the flags), `_commands` and `_search_commands` (flags -> library calls),
`_render` (text and JSON).
"""

from __future__ import annotations

import os
import sys

from emu.cli._commands import (
    cmd_calibrate,
    cmd_compare,
    cmd_describe,
    cmd_list,
    cmd_run,
    cmd_sensitivity,
    cmd_serve,
    cmd_validate,
)
from emu.cli._parser import CliError, build_parser
from emu.cli._progress import configure as configure_progress
from emu.cli._search_commands import cmd_search, cmd_sweep


def run_program_cli(args):
    """`emu program` (emu.program.cli), imported only when that command runs (~0.1 s)."""
    from emu.program.cli import run_program_cli as run

    return run(args)


__all__ = ["main"]

COMMANDS = {
    "list": cmd_list,
    "describe": cmd_describe,
    "run": cmd_run,
    "compare": cmd_compare,
    "sensitivity": cmd_sensitivity,
    "serve": cmd_serve,
    "calibrate": cmd_calibrate,
    "search": cmd_search,
    "sweep": cmd_sweep,
    "validate": cmd_validate,
    "program": run_program_cli,
}


def _first_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0] if text else type(e).__name__


def _detach_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush of what could not
    be written (a closed pipe, a full disk) raises nothing more."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass  # stdout is not a file descriptor (a test's capture): nothing to detach


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 2 bad input, 1 I/O or internal
    error, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        configure_progress(args)
        COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe or a full disk shows here, not at exit
    except BrokenPipeError:  # the reader went away (`emu ... | head`): not an error
        _detach_stdout()
        return 0
    except (ValueError, CliError) as e:
        print(f"emu: error: {_first_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. stdout on a full disk
        _detach_stdout()
        print(
            f"emu: error: cannot write the output: {e.strerror or _first_line(e)}.", file=sys.stderr
        )
        return 1
    except Exception as e:  # noqa: BLE001
        # never a traceback: a bug or an environment problem still gets one line
        print(
            f"emu: internal error ({type(e).__name__}): {_first_line(e)}; please report it",
            file=sys.stderr,
        )
        return 1
    except SystemExit as e:  # --help, --version
        return e.code if isinstance(e.code, int) else 0
    except KeyboardInterrupt:
        print("emu: interrupted", file=sys.stderr)
        return 130
    return 0
