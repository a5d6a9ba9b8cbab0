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

import contextlib
import os
import signal
import sys
import warnings

from emu import _backend


def _command(module: str, name: str):
    """A command function imported when it runs: the parser, the physics and (for most
    commands) JAX are imported only after the backend is chosen (`_choose_backend`)."""

    def call(args):
        import importlib

        return getattr(importlib.import_module(module), name)(args)

    call.__name__ = name
    return call


COMMANDS = {
    "list": _command("emu.cli._commands", "cmd_list"),
    "describe": _command("emu.cli._commands", "cmd_describe"),
    "run": _command("emu.cli._commands", "cmd_run"),
    "compare": _command("emu.cli._commands", "cmd_compare"),
    "sensitivity": _command("emu.cli._commands", "cmd_sensitivity"),
    "serve": _command("emu.cli._commands", "cmd_serve"),
    "calibrate": _command("emu.cli._commands", "cmd_calibrate"),
    "search": _command("emu.cli._search_commands", "cmd_search"),
    "sweep": _command("emu.cli._search_commands", "cmd_sweep"),
    "validate": _command("emu.cli._commands", "cmd_validate"),
    "program": _command("emu.program.cli", "run_program_cli"),
}

#: commands that only evaluate configurations forward (no jit, vmap or grad): they run on
#: the NumPy backend, which spares the process importing JAX (~0.8 s of a ~0.3 s answer;
#: `experiments/bench_first_answer.py`), unless EMU_BACKEND=jax asks for JAX
NUMPY_COMMANDS = frozenset({"list", "describe", "run", "compare", "serve"})


def _choose_backend(argv: list[str], *, own_process: bool) -> None:
    """NumPy for NUMPY_COMMANDS when the command line is the process's own (`emu ...`,
    `python -m emu ...`) and EMU_BACKEND is unset. A caller that passes `argv` (a test, a
    notebook) shares its process with other emu code, so the backend stays as chosen. A
    command that needs JAX under EMU_BACKEND=numpy is refused here, before any work."""
    if not os.environ.get("EMU_BACKEND") and own_process and forward_only(argv):
        _backend.select("numpy")
    if _backend.name() == "numpy" and not forward_only(argv):  # name() checks EMU_BACKEND
        command = next((a for a in argv if not a.startswith("-")), "")
        command += " --plan best" if command in NUMPY_COMMANDS else ""
        raise ValueError(
            f"emu {command} needs JAX (jit, vmap or grad: a search, a fit or gradients), "
            "and EMU_BACKEND=numpy asks for NumPy; unset EMU_BACKEND or set it to jax."
        )


def forward_only(argv: list[str]) -> bool:
    """True when the command line only evaluates configurations forward (NUMPY_COMMANDS,
    help, --version), i.e. needs no jit, vmap or grad: not `--plan best` (a gradient
    search), in either spelling (`--plan best`, `--plan=best`; the parser refuses
    abbreviations such as `--pla`, so they count as JAX work here, which is harmless)."""
    command = next((a for a in argv if not a.startswith("-")), None)
    if not {"-h", "--help", "--version"}.isdisjoint(argv):
        return True  # parsing only: no physics
    if command is not None and command not in NUMPY_COMMANDS:
        return False
    for i, arg in enumerate(argv):
        name, eq, value = arg.partition("=")
        if len(name) >= 4 and "--plan".startswith(name):
            given = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            if given == "best":
                return False
    return True


def build_parser():
    """The `emu` argparse parser (emu.cli._parser.build_parser)."""
    from emu.cli._parser import build_parser as build

    return build()


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1, refused in emu's words otherwise (emu's flags and the
    experiment scripts' counts use it)."""
    from emu.cli._parser import positive_int as parse

    return parse(text)


__all__ = ["main", "build_parser", "positive_int", "COMMANDS"]


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
    error, or rows of `emu validate --strict FILE` that could not be read, 130
    interrupted; `emu validate --row ID` on a row it could not read 2, on one it skips
    (a metric emu does not model) 1)."""
    own_process = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    release = _catch_sigterm() if own_process else None
    try:
        status = _main(argv, own_process)
    except KeyboardInterrupt as e:  # a command may say what was kept and how to resume
        terminated = isinstance(e, _Terminated)
        if "emu.cli._progress" in sys.modules:  # the bar or spinner gives back the terminal
            sys.modules["emu.cli._progress"].stop_all()
        what = "terminated" if terminated else "interrupted"
        print(f"emu: {what}{': ' + _first_line(e) if str(e) else ''}", file=sys.stderr)
        status = 143 if terminated else 130
        if own_process:  # XLA's compiler threads may still run: skip the teardown they crash
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os._exit(status)
    finally:
        if release is not None:  # not beyond main(): the interpreter's teardown is not ours
            release()
    return status


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is (`_terminated`)."""


def _terminated(signum, frame):
    raise _Terminated()


#: seconds a SIGTERM waits for the program to unwind (temporary files removed, what was
#: kept said) before the process ends anyway: the main thread may be inside XLA or a wait,
#: where no Python handler runs
TERM_GRACE_S = 5.0


def _catch_sigterm():
    """SIGTERM as an interrupt (`_Terminated`), with a watchdog thread woken by the signal
    itself (`signal.set_wakeup_fd`) that ends the process after TERM_GRACE_S if it has not
    unwound by then. Returns `release()`, which puts back the handler and the wakeup fd
    and ends the thread."""
    import threading
    import time

    old = signal.signal(signal.SIGTERM, _terminated)
    try:
        r, w = os.pipe()
        os.set_blocking(w, False)
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (OSError, ValueError):  # not the main thread, or no pipe: the handler alone
        return lambda: signal.signal(signal.SIGTERM, old)

    def release() -> None:
        signal.signal(signal.SIGTERM, old)
        with contextlib.suppress(OSError, ValueError):
            signal.set_wakeup_fd(old_fd)
        with contextlib.suppress(OSError):
            os.close(w)  # the thread's read returns b"": it ends

    def watch():
        while True:
            try:
                data = os.read(r, 64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                time.sleep(TERM_GRACE_S)
                with contextlib.suppress(Exception):
                    print("emu: terminated", file=sys.stderr, flush=True)
                os._exit(143)

    threading.Thread(target=watch, name="emu-sigterm", daemon=True).start()
    return release


def _main(argv: list[str], own_process: bool) -> int:
    try:
        _choose_backend(argv, own_process=own_process)
        _backend.aot_from_env()
    except ValueError as e:  # a bad EMU_BACKEND or EMU_AOT, or NumPy for a JAX command
        print(f"emu: error: {_first_line(e)}", file=sys.stderr)
        return 2
    from emu.cli._parser import CliError, build_parser
    from emu.cli._progress import configure as configure_progress

    if own_process:  # an input outside float32 is said once, per row or per value, not as
        # NumPy's overflow warnings from inside JAX (the result is checked for finiteness)
        warnings.filterwarnings("ignore", message="overflow encountered", category=RuntimeWarning)

    try:
        args = build_parser().parse_args(argv)
        configure_progress(args)
        status = COMMANDS[args.command](args)  # None: 0 (validate --strict: 1 when rows failed)
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
    return status or 0
