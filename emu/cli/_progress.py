"""Signs of life on a terminal (rich, already a dependency through flax): a spinner while a
first run compiles, bars for sweeps and calibrations, the stages of a search. Everything goes
to stderr and only when stderr is a terminal and --json was not given: piped, captured or
machine-read output stays clean."""

from __future__ import annotations

import atexit
import contextlib
import sys

#: quiet: --json; status: the one spinner shown (rich allows one live display at a time)
_state = {"quiet": False, "status": None}


def stop_all() -> None:
    """Stop every live display (the bar, the spinner) and give the terminal back its cursor:
    an interrupted process exits without running the atexit hooks that would."""
    status = _state["status"]
    if status is not None:
        with contextlib.suppress(Exception):
            status.stop()
        _state["status"] = None
    for bar in list(_BARS):
        with contextlib.suppress(Exception):
            bar.stop()


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
    """A transient spinner with `text` while the block runs (a compile, a batch search);
    nested blocks change the text of the one spinner."""
    if not enabled():
        yield
        return
    status = _state["status"]
    if status is not None:
        old = status.status
        status.update(text)
        try:
            yield
        finally:
            status.update(old)
        return
    status = _state["status"] = _console().status(text, spinner="dots")
    status.start()
    try:
        yield
    finally:
        status.stop()
        _state["status"] = None


class _Bar:
    """A rich progress bar started on first use and stopped when done (or at exit)."""

    def __init__(self, label: str):
        self.label, self.live, self.task = label, None, None

    def update(self, done: float, total: float, extra: str = "") -> None:
        if not enabled() or _state["status"] is not None:  # a spinner holds the terminal
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
            _BARS.append(self)
            self.task = self.live.add_task(self.label, total=total, extra="")
        self.live.update(self.task, completed=done, total=total, extra=extra)
        if done >= total:
            self.stop()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
        if self in _BARS:
            _BARS.remove(self)


#: the bars shown now (`stop_all`)
_BARS: list[_Bar] = []


def fit_progress(label: str):
    """progress(k, n, loss) of a calibration fit: a bar with the loss."""
    bar = _Bar(label)
    return lambda k, n, loss: bar.update(k, n, f"loss {loss:.5f}")


def sweep_progress():
    """progress(done, total, rows) of a sweep: a bar over chunks."""
    bar = _Bar("sweep (chunks)")
    return lambda done, total, rows: bar.update(done, total)


def search_progress():
    """progress(stage, evaluations) of a gradient search: the spinner names the stage."""
    block = {"cm": None}

    def show(stage: str, evaluations: int) -> None:
        if not enabled():
            return
        if block["cm"] is None:
            block["cm"] = working("")
            block["cm"].__enter__()
            atexit.register(lambda: block["cm"] and block["cm"].__exit__(None, None, None))
        _state["status"].update(f"search: {stage} ({evaluations:,} evaluations)")
        if stage == "done":
            block["cm"].__exit__(None, None, None)
            block["cm"] = None

    return show
