"""Running the CLI in-process for the tests: `emu.cli.main` with its output captured."""

import json

from emu.cli import main


def run_cli(capsys, *args):
    """(exit code, stdout, stderr) of `emu *args`."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *args, quiet: bool = False):
    """The JSON of `emu *args --json`, after checking it exited 0 (and, with `quiet`, that
    nothing reached stderr: no progress, no notes)."""
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == 0, err
    if quiet:
        assert err == ""  # --json: no progress, no notes on stderr
    return json.loads(out)
