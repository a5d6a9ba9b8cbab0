"""STYLE.md "The house": data flows one way. A module imports only from modules to its left:
core modules in their fixed order and never a host module; host modules in the
order catalog <- costs_catalog <- storage, advice, fast <- policy <- analysis <- validation
<- calibration <- search <- cli.
Private submodules of a host package count as the package. Experiments import only public
names."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EMU = ROOT / "emu"

CORE = [
    "_argparse",
    "_lazy",
    "_npjax",
    "_backend",
    "struct",
    "units",
    "numerics",
    "hardware",
    "topology",
    "collectives",
    "compute",
    "workload",
    "plan",
    "parallelism",
    "comm",
    "step",
    "power",
    "objective",
    "serving",
    "cost",
    "examples",
    "program",
]
#: host layers, left to right; modules of one layer may import each other in the listed order
HOST = [
    ("overrides", "catalog", "costs_catalog"),
    ("storage", "advice", "fast"),
    ("policy",),
    ("analysis",),
    ("validation",),
    ("calibration",),
    ("search",),
    ("cli",),
]
HOST_ORDER = [m for layer in HOST for m in layer]
#: known exceptions, each with its reason: to be removed, never extended
EXCEPTIONS: dict[tuple[str, str], str] = {}
#: `emu/__init__.py` re-exports from both sides; `__main__` runs the CLI
ENTRY = {"__init__", "__main__"}
#: package data (emu.data: the measurement set), not code
DATA = {"data", "configs"}


def _unit(path: Path) -> str:
    """The layering unit of a source file: its top-level module or package under emu/."""
    rel = path.relative_to(EMU)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    """Top-level emu modules/packages a file imports (absolute or relative)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x (inside a package)
                out.add(_unit(path))
                continue
            mod = node.module or ""
            if mod == "emu":
                out |= {a.name for a in node.names}
            elif mod.startswith("emu."):
                out.add(mod.split(".")[1])
        elif isinstance(node, ast.Import):
            out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("emu.")}
    return out


def _rank(unit: str) -> tuple[int, int]:
    if unit in CORE:
        return (0, CORE.index(unit))
    return (1, HOST_ORDER.index(unit))


SOURCES = sorted(p for p in EMU.rglob("*.py") if _unit(p) not in ENTRY | DATA)


def test_every_module_has_a_place_in_the_layers():
    units = {_unit(p) for p in SOURCES}
    unknown = units - set(CORE) - set(HOST_ORDER)
    assert not unknown, f"add {sorted(unknown)} to CORE or HOST in tests/test_layering.py"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(EMU)))
def test_imports_run_left_to_right(path):
    me = _unit(path)
    for other in _imports(path) - {me} - ENTRY:
        if other not in CORE and other not in HOST_ORDER or (me, other) in EXCEPTIONS:
            continue  # package data (emu.configs, emu.data), or a stated exception
        assert _rank(other) < _rank(me) or (
            # hardware and topology are siblings of the foundations (STYLE.md diagram)
            other in ("hardware", "topology") and me in CORE and _rank(other) < _rank(me)
        ), f"{me} imports {other}: imports must run left to right"


def test_core_never_imports_host():
    for path in SOURCES:
        if _unit(path) in CORE:
            host = {
                h for h in _imports(path) & set(HOST_ORDER) if (_unit(path), h) not in EXCEPTIONS
            }
            assert not host, f"{path.name} (core) imports host module(s) {sorted(host)}"


def test_host_submodules_are_private_and_packages_declare_all():
    for pkg in {_unit(p) for p in SOURCES if p.parent != EMU} & set(HOST_ORDER):
        for path in (EMU / pkg).glob("*.py"):
            assert path.name == "__init__.py" or path.name.startswith("_"), (
                f"{pkg}/{path.name}: a submodule of a host package is private (_name); "
                "re-export its public names from the package"
            )
        tree = ast.parse((EMU / pkg / "__init__.py").read_text())
        names = [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets]
        assert "__all__" in names, f"emu.{pkg} has no __all__"


def _is_module(package: str, name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(f"{package}.{name}") is not None
    except ModuleNotFoundError:
        return False


def test_experiments_import_only_public_names():
    import importlib

    for path in sorted((ROOT / "experiments").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("emu")):
                continue
            where = f"experiments/{path.name}: from {node.module} import"
            assert not any(p.startswith("_") for p in node.module.split(".")), where
            public = getattr(importlib.import_module(node.module), "__all__", None)
            for a in node.names:
                assert not a.name.startswith("_"), f"{where} {a.name}"
                if public is not None and not _is_module(node.module, a.name):
                    assert a.name in public, f"{where} {a.name}: not in its __all__"
