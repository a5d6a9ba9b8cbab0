"""Lexing of HLO text (private): balanced brackets, top-level splits, attributes, metadata.

Used by `emu.program.hlo` (instructions and types) and `emu.program._replica_groups`.
"""

from __future__ import annotations

import re

__all__ = ["NAME", "names", "matching", "split_top", "parse_attrs", "metadata"]

#: an HLO identifier (instruction or computation name without its '%')
NAME = r"[\w.\-]+"


def names(text: str) -> list[str]:
    """'{%a, %b.1}' -> ['a', 'b.1']."""
    return re.findall(r"%?(" + NAME + r")", text.strip("{}"))


def matching(text: str, start: int) -> int:
    """Index just past the bracket that closes the one at `start` (quotes respected)."""
    pairs = {"(": ")", "[": "]", "{": "}"}
    stack, i, quote = [], start, None
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in pairs:
            stack.append(pairs[c])
        elif stack and c == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
        i += 1
    raise ValueError(f"HLO: unbalanced brackets in '{text[start : start + 80]}...'")


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets and quotes; drops /*index=5*/ comments."""
    text = re.sub(r"/\*.*?\*/", "", text)
    out, depth, quote, cur = [], 0, None, []
    for c in text:
        if quote:
            cur.append(c)
            if c == quote:
                quote = None
            continue
        if c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
    if cur:
        out.append("".join(cur))
    return out


def parse_attrs(text: str) -> dict[str, str]:
    """'a={1}, b="x"' -> {'a': '{1}', 'b': '"x"'} (values as written)."""
    attrs = {}
    for part in split_top(text):
        key, sep, value = part.strip().partition("=")
        if sep:
            attrs[key.strip()] = value.strip()
    return attrs


def metadata(text: str) -> dict[str, str]:
    """'{op_name="a/b" source_line=3}' -> {'op_name': 'a/b', 'source_line': '3'}."""
    out = {}
    for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s}]+)', text.strip("{}")):
        v = m.group(2)
        out[m.group(1)] = v[1:-1] if v.startswith('"') else v
    return out
