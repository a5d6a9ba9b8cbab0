"""MkDocs hook: the parts of the site that are generated from the code at build time.

- `<!-- emu:cli-reference -->` in a page becomes the help of every `emu` subcommand, read
  from `emu.cli.build_parser()` (so the CLI reference cannot drift from the parser);
- `<!-- emu:tutorial -->` becomes the cells of examples/tutorial.ipynb (markdown as text,
  code as fenced Python), and `<!-- emu:experiments -->` a table of experiments/*.py with
  the first line of each script's docstring;
- `<!-- emu:exports -->` becomes a table of `emu.__all__`, and on docs/model.md every
  backticked `emu.x.y` links to its API entry (an unknown name fails the strict build);
- docstrings are written as in the house style (STYLE.md: formula, units, source, an inline
  `Args: ...` / `Returns: ...` and `>>>` examples), not in Google or NumPy layout, so
  `DocstringMarkdown` fences the `>>>` examples as Python console code, sets the
  `Args:`/`Returns:` labels in bold on their own lines and keeps `tp*dp*cp` from turning
  into emphasis.

The renderers are plain functions (no MkDocs import at module level) so that
tests/test_docs.py checks them without the docs extra installed.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELP_WIDTH = 96
CLI_MARK = "<!-- emu:cli-reference -->"
TUTORIAL_MARK = "<!-- emu:tutorial -->"
EXPERIMENTS_MARK = "<!-- emu:experiments -->"
EXPORTS_MARK = "<!-- emu:exports -->"
MODEL_PAGE = "model.md"
TUTORIAL = ROOT / "examples" / "tutorial.ipynb"


# ---------------------------------------------------------------- CLI reference


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand of `parser`, in declaration order."""
    out = []
    for action in parser._actions:  # argparse keeps no public list of subparsers
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, helps.get(name, ""), sub))
    return out


def _help_text(parser: argparse.ArgumentParser) -> str:
    """`parser`'s --help at a fixed width (the terminal's width must not change the page)."""
    cls = parser.formatter_class
    parser.formatter_class = lambda prog: cls(prog, width=HELP_WIDTH)
    try:
        return parser.format_help().rstrip()
    finally:
        parser.formatter_class = cls


def cli_commands(parser: argparse.ArgumentParser | None = None, prefix: str = "emu"):
    """Every command path of the `emu` parser: [(\"emu run\", help, parser), ...], nested
    subcommands included (depth first)."""
    if parser is None:
        from emu.cli import build_parser

        parser = build_parser()
    out = []
    for name, help_, sub in _subcommands(parser):
        path = f"{prefix} {name}"
        out.append((path, help_, sub))
        out.extend(cli_commands(sub, path))
    return out


def cli_reference_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The CLI reference page body: a table of commands, then each command's full help."""
    if parser is None:
        from emu.cli import build_parser

        parser = build_parser()
    commands = cli_commands(parser)
    lines = [
        "Generated at build time from `emu.cli.build_parser()`: what follows is exactly what",
        "`emu COMMAND --help` prints.",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for path, help_, _ in commands:
        anchor = path.replace(" ", "-")
        lines.append(f"| [`{path}`](#{anchor}) | {help_.replace('|', '/')} |")
    lines += ["", "## `emu`", "", "```text", _help_text(parser), "```"]
    for path, _, sub in commands:
        anchor = path.replace(" ", "-")
        lines += ["", f"## `{path}` {{#{anchor}}}", "", "```text", _help_text(sub), "```"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- examples


NOTEBOOK_NOTE = (
    "!!! note\n"
    "    This page is `examples/tutorial.ipynb`, rendered at build time (code, no outputs).\n"
    "    CI executes the notebook on every change. Run it yourself with\n"
    "    `pip install -e '.[docs]' jupyterlab && jupyter lab examples/tutorial.ipynb`."
)


def notebook_markdown(path: Path = TUTORIAL) -> str:
    """The notebook's cells as Markdown: text cells as they are (the first one holds the
    page title), code cells fenced as Python, with a note on where the page comes from."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    parts = []
    for cell in nb["cells"]:
        src = "".join(cell["source"]).rstrip()
        if not src:
            continue
        if cell["cell_type"] == "markdown":
            parts.append(src)
            if len(parts) == 1:
                parts.append(NOTEBOOK_NOTE)
        elif cell["cell_type"] == "code":
            parts.append(f"```python\n{src}\n```")
    return "\n\n".join(parts) + "\n"


def experiments_markdown(folder: Path = ROOT / "experiments") -> str:
    """A table of the experiment scripts, each with the first line of its docstring."""
    rows = ["| script | what it does |", "|---|---|"]
    for script in sorted(Path(folder).glob("*.py")):
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
        first = " ".join(doc.strip().split("\n\n")[0].split()) if doc else ""
        rows.append(f"| `python experiments/{script.name}` | {first.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------- API


def api_modules(folder: Path = ROOT / "docs" / "api") -> list[str]:
    """The modules with an API page: `::: emu.x` lines of docs/api/*.md."""
    found = []
    for page in sorted(Path(folder).glob("*.md")):
        found += re.findall(r"^::: (emu[\w.]*)\s*$", page.read_text(encoding="utf-8"), re.M)
    return found


def exports_markdown() -> str:
    """`emu.__all__` as a table: each name, what it is (first docstring line) and a link to
    the module page that documents it (checked by the strict build: an unknown target fails)."""
    import importlib
    import inspect
    import types

    import emu

    modules = [m for m in api_modules() if m != "emu"]
    rows = ["| name | what it is | documented in |", "|---|---|---|"]
    own = []  # defined in emu/__init__.py itself: documented on this page, below the table
    for name in emu.__all__:
        obj = getattr(emu, name)
        if isinstance(obj, types.ModuleType):
            doc = (inspect.getdoc(obj) or "").split("\n")[0]
            page = obj.__name__.removeprefix("emu.")  # docs/api/<module>.md, next to this page
            rows.append(f"| [`emu.{name}`]({page}.md) | {doc} | module |")
            continue
        # the defining module first, then any documented module that exports the object
        defined = getattr(obj, "__module__", None)
        homes = [
            m
            for m in sorted(modules, key=lambda m: m != defined)
            if name in getattr(importlib.import_module(m), "__all__", ())
            and getattr(importlib.import_module(m), name) is obj
        ]
        if homes:
            home = homes[0]
        elif defined == "emu":
            home = "emu"
            own.append(name)
        else:
            raise ValueError(
                f"emu.{name} is exported by emu but no API page documents it: export it from "
                f"a documented module's __all__ or add a page for {defined} (docs/api/)."
            )
        doc = " ".join((inspect.getdoc(obj) or "").split()) if callable(obj) else ""
        doc = re.split(r"(?<=\.)\s", doc, maxsplit=1)[0].replace("|", "/")
        rows.append(f"| [`emu.{name}`][{home}.{name}] | {doc} | `{home}` |")
    blocks = [f"::: emu.{name}\n    options:\n      show_root_heading: true" for name in own]
    return "\n\n".join(["\n".join(rows), *blocks]) + "\n"


def model_table(path: Path = ROOT / "docs" / MODEL_PAGE) -> list[tuple[str, str, list[str]]]:
    """(quantity, unit, [dotted names]) of each row of the "what the model computes" table."""
    text = Path(path).read_text(encoding="utf-8")
    body = text.split("<!-- model-table:start -->")[1].split("<!-- model-table:end -->")[0]
    rows = []
    for line in body.strip().splitlines()[2:]:
        quantity, unit, where = (c.strip() for c in line.strip().strip("|").split("|"))
        rows.append((quantity, unit, re.findall(r"`(emu\.[\w.]+)`", where)))
    return rows


def link_names(markdown: str) -> str:
    """Backticked `emu.x.y` names as links to their API entries (autorefs)."""
    return re.sub(r"`(emu\.[\w.]+)`", r"[`\1`][\1]", markdown)


# ---------------------------------------------------------------- docstrings

_LABEL = re.compile(r"^(Args|Arguments|Returns|Raises|Yields|Note|Notes|Example|Examples):(\s.*)?$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def house_docstring(lines: list[str]) -> list[str]:
    """Fence `>>>` examples (with their expected output, up to the next blank line) as
    `pycon`, and put `Args:`/`Returns:` labels in bold at the start of a paragraph. Text
    already inside a fence or an indented code block is left alone."""
    out: list[str] = []
    fenced = False
    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and indent < 4 and line.lstrip().startswith(">>>"):
            pad = line[:indent]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][indent:] if lines[i].startswith(pad) else lines[i])
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [f"{pad}```pycon", *(pad + b for b in block), f"{pad}```", ""]
            continue
        elif not fenced and indent == 0 and (m := _LABEL.match(line)):
            if out and out[-1].strip():
                out.append("")
            rest = (m.group(2) or "").strip()
            out.append(f"**{m.group(1)}:** {_escape_products(rest)}".rstrip())
            i += 1
            if not rest and i < len(lines) and lines[i].startswith("    "):
                out.append("")  # a Markdown list needs a blank line above it
            # a Google-style block under a bare label: one bullet per `name: text` line
            while not rest and i < len(lines) and lines[i].startswith("    "):
                item = lines[i].strip()
                if re.match(r"^[\w*., ]+:\s", item) or not out[-1].startswith("- "):
                    out.append(f"- {item}")
                else:
                    out[-1] += " " + item
                i += 1
            continue
        out.append(line if fenced or indent >= 4 else _escape_products(line))
        i += 1
    return out


def _escape_products(line: str) -> str:
    """`tp*dp*cp` is a product, not emphasis: escape a `*` between word characters, outside
    code spans."""
    parts = line.split("`")
    for k in range(0, len(parts), 2):  # even pieces are outside backticks
        parts[k] = re.sub(r"(?<=[\w)\]])\*(?=[\w(])", r"\\*", parts[k])
    return "`".join(parts)


def _extension():
    from markdown.extensions import Extension
    from markdown.preprocessors import Preprocessor

    class _Pre(Preprocessor):
        def run(self, lines):
            return house_docstring(lines)

    class DocstringMarkdown(Extension):
        def extendMarkdown(self, md):  # noqa: N802 (Markdown's API)
            # before fenced code (priority 25) so that the fences made here are seen
            md.preprocessors.register(_Pre(md), "emu_house_docstring", 30)

    return DocstringMarkdown()


# ---------------------------------------------------------------- MkDocs events


def on_config(config):
    # mkdocstrings builds its inner Markdown from this same list, so docstrings get it too
    config.markdown_extensions.append(_extension())
    return config


def on_page_markdown(markdown, page, config, files):
    if CLI_MARK in markdown:
        markdown = markdown.replace(CLI_MARK, cli_reference_markdown())
    if TUTORIAL_MARK in markdown:
        markdown = markdown.replace(TUTORIAL_MARK, notebook_markdown())
    if EXPERIMENTS_MARK in markdown:
        markdown = markdown.replace(EXPERIMENTS_MARK, experiments_markdown())
    if EXPORTS_MARK in markdown:
        markdown = markdown.replace(EXPORTS_MARK, exports_markdown())
    if page.file.src_uri == MODEL_PAGE:
        markdown = link_names(markdown)
    return markdown
