"""Signs of life on a terminal (rich, already a dependency through flax): a spinner while a
first run compiles, bars for sweeps and calibrations, the stages of a search. Everything goes
to stderr and only when stderr is a terminal and --json was not given: piped, captured or
machine-read output stays clean."""

from __future__ import annotations

import atexit
import contextlib
import sys

_state = {"quiet": False}


def configure(args) -> None:
    """Quiet for --json (called once per command by `emu.cli.main`)."""
    _state["quiet"] = bool(getattr(args, "json", False))


def enabled() -> bool:
    """Whether progress is shown: stderr is a terminal and the output is not --json."""
    try:
        return sys.stderr.isatty() and not _state["quiet"]
    except (AttributeError, ValueError):
        return False


def _console():
    from rich.console import Console

    return Console(file=sys.stderr)


@contextlib.contextmanager
def working(text: str):
    """A transient spinner with `text` while the block runs (a compile, a batch search)."""
    if not enabled():
        yield
        return
    with _console().status(text, spinner="dots"):
        yield


class _Bar:
    """A rich progress bar started on first use and stopped when done (or at exit)."""

    def __init__(self, label: str):
        self.label, self.live, self.task = label, None, None

    def update(self, done: float, total: float, extra: str = "") -> None:
        if not enabled():
            return
        if self.live is None:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.live = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=_console(),
                transient=True,
            )
            self.live.start()
            atexit.register(self.stop)
            self.task = self.live.add_task(self.label, total=total, extra="")
        self.live.update(self.task, completed=done, total=total, extra=extra)
        if done >= total:
            self.stop()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


def fit_progress(label: str):
    """progress(k, n, loss) of a calibration fit: a bar with the loss."""
    bar = _Bar(label)
    return lambda k, n, loss: bar.update(k, n, f"loss {loss:.5f}")


def sweep_progress():
    """progress(done, total, rows) of a sweep: a bar over chunks."""
    bar = _Bar("sweep (chunks)")
    return lambda done, total, rows: bar.update(done, total)


def search_progress():
    """progress(stage, evaluations) of a gradient search: a spinner naming the stage."""
    status = {"cm": None}

    def show(stage: str, evaluations: int) -> None:
        if not enabled():
            return
        if status["cm"] is None:
            status["cm"] = _console().status("", spinner="dots")
            status["cm"].start()
            atexit.register(status["cm"].stop)
        status["cm"].update(f"search: {stage} ({evaluations:,} evaluations)")
        if stage == "done":
            status["cm"].stop()
            status["cm"] = None

    return show
