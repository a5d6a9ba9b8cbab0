"""Lazy public names of a package (PEP 562): a name is imported from its submodule on first
use, so that importing one part of a package (the CLI's flags) does not import every part
(and JAX with them).

    __getattr__ = lazy_getattr(__name__, _NAMES, globals())
    __dir__ = lazy_dir(globals())

`names` maps each public name to the module that defines it; the package's `__all__` is read
when `dir()` is called, so it may be defined below the call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_getattr", "lazy_dir"]


def lazy_getattr(package: str, names: dict[str, str], namespace: dict[str, Any]):
    """The module-level `__getattr__` of `package`: a name of `names` resolves to the
    attribute of its module and is cached in `namespace` (later lookups skip the function);
    any other name raises AttributeError as a module would."""

    def __getattr__(name: str) -> Any:  # noqa: N807
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module '{package}' has no attribute '{name}'")

    return __getattr__


def lazy_dir(namespace: dict[str, Any]) -> Callable[[], list[str]]:
    """The module-level `__dir__`: what is loaded, and `__all__` (read when called)."""

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __dir__
