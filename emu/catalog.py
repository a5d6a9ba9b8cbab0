"""The catalog: TOML in configs/ -> validated float32 pytrees (host side).

`load_system`, `load_model` take a catalog name (`emu list`) or the path of a TOML file of
the same shape (configs/README.md). Chip efficiency fields and tier latency/efficiency come
from the calibration overlay (configs/calibration/) by chip `family` and tier `link`, unless
the file sets them. Every number is checked against the bounds declared beside its field and
every loaded tree by `emu.struct.check` (the one validation path of TOML, overrides, grids
and the API, with the cross-field rules of the classes); overrides go through
`emu.overrides.apply_overrides`. Every problem raises ValueError with one line that says
what, where and how to fix it.

>>> sys = load_system("gb200_nvl72")
>>> int(sys.n_chips), sys.tiers[0].link
(72, 'nvlink5')
>>> sys = apply_overrides(sys, {"chip.hbm_bytes_per_s": 4e12})
>>> round(float(sys.chip.hbm_bytes_per_s) / 1e12, 3)
4.0
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import stat
import tomllib
from importlib import resources
from pathlib import Path

import jax.numpy as jnp

from emu.hardware import Chip, Facility, Host, Overlap
from emu.overrides import apply_overrides
from emu.struct import check, check_value, field_info
from emu.topology import System, Tier
from emu.units import PRECISIONS
from emu.workload import Model

__all__ = [
    "load_system",
    "load_model",
    "list_systems",
    "list_models",
    "model_from_dict",
    "calibration",
    "config_dir",
    "load_toml",
]

CALIBRATION_FILES = ("defaults.toml", "fitted.toml")


def config_dir() -> Path:
    """The catalog folder: the installed `emu.configs` package, or ./configs in a checkout."""
    try:
        return Path(str(resources.files("emu.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def load_toml(path: Path, what: str) -> dict:
    """The parsed TOML file at `path` (`what` names it in errors). Only a regular file is
    opened: a FIFO or a device would block or never end."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) and not Path(path).is_dir():
            raise ValueError(f"{what} path '{path}' is not a regular file.")
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ValueError(f"{what} file '{path}' not found.") from None
    except IsADirectoryError:
        raise ValueError(f"{what} path '{path}' is a directory, not a TOML file.") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{what} file '{path}' is not valid TOML: {e}.") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} file '{path}' is not UTF-8 text.") from None
    except OSError as e:
        raise ValueError(f"cannot read {what} file '{path}': {e.strerror}.") from None


def _names(kind: str) -> list[str]:
    d = config_dir() / kind
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def list_systems() -> list[str]:
    return _names("systems")


def list_models() -> list[str]:
    return _names("models")


def _resolve(name_or_path: str | Path, kind: str) -> Path:
    s = str(name_or_path)
    if s.endswith(".toml") or "/" in s or Path(s).is_file():
        return Path(s)
    known = _names(kind)
    if s not in known:
        close = difflib.get_close_matches(s, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ValueError(
            f"unknown {kind[:-1]} '{s}'.{hint} Known: {', '.join(known)}; "
            "or pass the path of a TOML file."
        )
    return config_dir() / kind / f"{s}.toml"


def calibration(*, fitted: bool = True) -> dict:
    """The merged calibration overlay: defaults, then the fitted values where present
    (`fitted=False`: the defaults alone, the priors `emu calibrate` starts from)."""
    out: dict = {}
    for name in CALIBRATION_FILES if fitted else CALIBRATION_FILES[:1]:
        p = config_dir() / "calibration" / name
        if p.is_file():
            _merge(out, load_toml(p, "calibration"))
    return out


def _merge(a: dict, b: dict) -> None:
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _merge(a[k], v)
        else:
            a[k] = v


def _check_keys(data: dict, allowed: set, where: str) -> None:
    """ValueError for the first key of a TOML table that is not `allowed` (with a guess)."""
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"{where}: unknown key '{key}'.{hint} Known keys: {', '.join(sorted(allowed))}."
            )


def _build(cls, data: dict, where: str, *, defaults: dict | None = None, skip=()):
    """Keyword arguments of dataclass `cls` from a TOML table: known keys only, every
    required key present, static fields of the right type, numbers checked against the
    bounds declared beside their field (`struct.check_value`)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table (got {type(data).__name__}).")
    defaults = defaults or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    infos = field_info(cls)
    _check_keys(data, set(fields) | set(skip), where)
    kwargs = {}
    for name, f in fields.items():
        if name in skip:
            continue
        static = not f.metadata.get("pytree_node", True)
        if name in data:
            value = data[name]
        elif name in defaults:
            value = defaults[name]
        elif f.default is not dataclasses.MISSING:
            continue
        else:
            raise ValueError(f"{where}: missing key '{name}'; add `{name} = ...` to the file.")
        if static:
            want = bool if isinstance(f.default, bool) else str
            if not isinstance(value, want) or (want is str and not value):
                kind = "true or false" if want is bool else "a non-empty string"
                raise ValueError(f"{where}.{name} must be {kind} (got {value!r}).")
            kwargs[name] = value
        else:
            kwargs[name] = jnp.float32(check_value(value, infos.get(name), f"{where}.{name}"))
    return kwargs


def _chip(data: dict, cal: dict, where: str) -> Chip:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table [chip] (got {type(data).__name__}).")
    data = dict(data)
    family = data.get("family")
    fams = cal.get("chip_family", {})
    if not isinstance(family, str) or family not in fams:
        raise ValueError(
            f"{where}.family: unknown chip family {family!r}; known: {', '.join(sorted(fams))}."
        )
    peaks = data.pop("peak_flops_per_s", None)
    if not isinstance(peaks, dict):
        raise ValueError(
            f"{where}: missing table [chip.peak_flops_per_s] ({', '.join(PRECISIONS)})."
        )
    for key in peaks:
        if key not in PRECISIONS:
            raise ValueError(
                f"{where}.peak_flops_per_s: unknown precision '{key}'; "
                f"known: {', '.join(PRECISIONS)}."
            )
    info = field_info(Chip)["peak_flops_per_s"]
    pf = {
        p: jnp.float32(check_value(peaks.get(p, 0.0), info, f"{where}.peak_flops_per_s.{p}"))
        for p in PRECISIONS
    }
    defaults = {**fams[family], **cal.get("power", {})}
    kw = _build(Chip, data, where, defaults=defaults, skip=("peak_flops_per_s",))
    return Chip(peak_flops_per_s=pf, **kw)


def _tiers(tiers_data, links: dict, where: str) -> tuple[Tier, ...]:
    if not isinstance(tiers_data, list) or not tiers_data:
        raise ValueError(f"{where}.tiers must be a non-empty array of [[tiers]] tables.")
    tiers = []
    for i, t in enumerate(tiers_data):
        w = f"{where}.tiers[{i}]"
        if not isinstance(t, dict):
            raise ValueError(f"{w} must be a table.")
        link = t.get("link")
        if not isinstance(link, str) or link not in links:
            raise ValueError(
                f"{w}.link: unknown link type {link!r}; known: {', '.join(sorted(links))}."
            )
        tiers.append(Tier(**_build(Tier, t, w, defaults=links[link])))
    return tuple(tiers)


_SYSTEM_KEYS = {"name", "description", "n_chips", "chip", "tiers", "host", "facility", "overlap"}


def _system(data: dict, where: str, cal: dict | None = None) -> System:
    cal = calibration() if cal is None else cal
    data = dict(data)
    _check_keys(data, _SYSTEM_KEYS, where)
    for key in ("name", "n_chips", "chip", "tiers", "host", "facility"):
        if key not in data:
            raise ValueError(f"{where}: missing '{key}'; see configs/README.md for the format.")
    if not isinstance(data["name"], str) or not data["name"]:
        raise ValueError(f"{where}.name must be a non-empty string.")
    overlap = data.get("overlap", {})
    system = System(
        name=data["name"],
        n_chips=jnp.float32(
            check_value(data["n_chips"], field_info(System)["n_chips"], f"{where}.n_chips")
        ),
        chip=_chip(data["chip"], cal, f"{where}.chip"),
        tiers=_tiers(data["tiers"], cal.get("link", {}), where),
        host=Host(**_build(Host, data["host"], f"{where}.host")),
        facility=Facility(**_build(Facility, data["facility"], f"{where}.facility")),
        overlap=Overlap(
            **_build(Overlap, overlap, f"{where}.overlap", defaults=cal.get("overlap", {}))
        ),
    )
    return check(system, where)


def load_system(
    name_or_path: str | Path, overrides: dict | None = None, *, calibration: dict | None = None
) -> System:
    """A validated System from the catalog or a TOML file, with optional dotted overrides
    (`calibration`: use this overlay instead of the committed one)."""
    path = _resolve(name_or_path, "systems")
    where = f"system '{Path(path).stem}'"
    sys = _system(load_toml(path, "system"), where, calibration)
    return apply_overrides(sys, overrides, where) if overrides else sys


_MODEL_OPTIONAL = {
    "d_head": None,
    "n_experts": 0,
    "top_k": 0,
    "d_ff_expert": 0,
    "n_shared_experts": 0,
    "n_dense_layers": 0,
    "q_lora_rank": 0,
    "kv_lora_rank": 0,
    "rope_head_dim": 0,
    "v_head_dim": 0,
    "mtp_layers": 0,
    "route_max_nodes": 0,
}


def model_from_dict(data: dict, where: str) -> Model:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table (got {type(data).__name__}).")
    data = dict(data)
    for key in ("n_layers", "d_model", "n_heads"):
        if key not in data:
            raise ValueError(f"{where}: missing key '{key}'; add `{key} = ...` to the file.")
    if "n_kv_heads" not in data:
        data["n_kv_heads"] = data["n_heads"]
    if (
        data.get("d_head") is None
        and isinstance(data["d_model"], int | float)
        and isinstance(data["n_heads"], int | float)
        and data["n_heads"]
    ):
        data["d_head"] = data["d_model"] / data["n_heads"]
    defaults = {k: v for k, v in _MODEL_OPTIONAL.items() if v is not None}
    kw = _build(Model, data, where, defaults=defaults)
    return check(Model(**kw), where)


def load_model(name_or_path: str | Path, overrides: dict | None = None) -> Model:
    """A validated Model from the catalog or a TOML file, with optional dotted overrides."""
    path = _resolve(name_or_path, "models")
    where = f"model '{Path(path).stem}'"
    m = model_from_dict(load_toml(path, "model"), where)
    return apply_overrides(m, overrides, where) if overrides else m
