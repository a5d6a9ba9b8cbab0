"""The command-line reading both of emu's parsers share (private; standard library only, so
a core package such as `emu.program` may use it as well as `emu.cli`): no abbreviated flags,
and a flag that takes one value refused when given twice."""

from __future__ import annotations

import argparse


def repeated_flag(parser: argparse.ArgumentParser, args: list[str]) -> str | None:
    """The message for a flag of `parser` that stores one value given more than once in
    `args` (in any of its spellings, `--tp 4` or `--tp=4`; the last would silently win), or
    None. Repeatable flags (`--set`, action "append") pass; nothing after `--` is read."""
    single = {
        opt: action
        for action in parser._actions
        if type(action) is argparse._StoreAction
        for opt in action.option_strings
    }
    seen: dict[int, str] = {}
    for arg in args:
        if arg == "--":
            break
        flag = arg.split("=", 1)[0]
        action = single.get(flag) if arg.startswith("-") else None
        if action is None:
            continue
        if id(action) in seen:
            first = seen[id(action)]
            what = (
                f"{flag} is given twice"
                if flag == first
                else f"{first} and {flag} (one option) are both given"
            )
            return (
                f"{what}: it takes one value and the last would replace the first; give it "
                f"once (see `{parser.prog} --help`)"
            )
        seen[id(action)] = flag
    return None
