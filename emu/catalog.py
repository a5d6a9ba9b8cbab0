"""The catalog: TOML in configs/ -> validated float32 pytrees (host side).

`load_system`, `load_model` take a catalog name (`emu list`) or the path of a TOML file of
the same shape (configs/README.md). Chip efficiency fields and tier latency/efficiency come
from the calibration overlay (configs/calibration/) by chip `family` and tier `link`, unless
the file sets them. Every number passes `emu.overrides.check_value` (the one check for
TOML, overrides, grids and the API); `check_system`/`check_model` add the cross-field checks
(also after overrides: `override_system`, `override_model`). Every problem raises ValueError
with one line that says what, where and how to fix it.

>>> sys = load_system("gb200_nvl72")
>>> int(sys.n_chips), sys.tiers[0].link
(72, 'nvlink5')
>>> sys = override_system(sys, {"chip.hbm_bytes_per_s": 4e12})
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

from emu.hardware import Chip, Facility, Host, Overlap, peak_flops
from emu.overrides import OVERLAP_BOUNDS, apply_overrides, bound_of, check_value
from emu.topology import System, Tier
from emu.units import PRECISIONS
from emu.workload import ATTENTION_KINDS, FFN_KINDS, Model

__all__ = [
    "load_system",
    "load_model",
    "list_systems",
    "list_models",
    "override_system",
    "override_model",
    "check_system",
    "check_model",
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


def _build(cls, data: dict, where: str, *, defaults: dict | None = None, skip=(), bounds=None):
    """Construct dataclass `cls` from a TOML table, checking keys, types and bounds."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table (got {type(data).__name__}).")
    defaults = defaults or {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    allowed = set(fields) | set(skip)
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"{where}: unknown key '{key}'.{hint} Known keys: {', '.join(sorted(allowed))}."
            )
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
            kwargs[name] = check_value(value, f"{where}.{name}", bound_of(name, bounds))
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
    pf = {
        p: check_value(peaks.get(p, 0.0), f"{where}.peak_flops_per_s.{p}", ">=0")
        for p in PRECISIONS
    }
    if float(pf["bf16"]) <= 0 and float(pf["fp16"]) <= 0:
        raise ValueError(f"{where}.peak_flops_per_s: bf16 or fp16 must be > 0.")
    defaults = {**fams[family], **cal.get("power", {})}
    kw = _build(Chip, data, where, defaults=defaults, skip=("peak_flops_per_s",))
    return Chip(peak_flops_per_s=pf, **kw)


def _system(data: dict, where: str, cal: dict | None = None) -> System:
    cal = calibration() if cal is None else cal
    data = dict(data)
    allowed = {"name", "description", "n_chips", "chip", "tiers", "host", "facility", "overlap"}
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(
                f"{where}: unknown key '{key}'.{hint} Known: {', '.join(sorted(allowed))}."
            )
    for key in ("name", "n_chips", "chip", "tiers", "host", "facility"):
        if key not in data:
            raise ValueError(f"{where}: missing '{key}'; see configs/README.md for the format.")
    if not isinstance(data["name"], str) or not data["name"]:
        raise ValueError(f"{where}.name must be a non-empty string.")
    chip = _chip(data["chip"], cal, f"{where}.chip")
    tiers_data = data["tiers"]
    if not isinstance(tiers_data, list) or not tiers_data:
        raise ValueError(f"{where}.tiers must be a non-empty array of [[tiers]] tables.")
    links = cal.get("link", {})
    tiers = []
    seen = set()
    prev = 0.0
    for i, t in enumerate(tiers_data):
        w = f"{where}.tiers[{i}]"
        if not isinstance(t, dict):
            raise ValueError(f"{w} must be a table.")
        link = t.get("link")
        if not isinstance(link, str) or link not in links:
            raise ValueError(
                f"{w}.link: unknown link type {link!r}; known: {', '.join(sorted(links))}."
            )
        tier = Tier(**_build(Tier, t, w, defaults=links[link]))
        if tier.name in seen:
            raise ValueError(f"{w}.name '{tier.name}' is used twice; tier names must be unique.")
        seen.add(tier.name)
        if float(tier.domain_chips) < prev:
            raise ValueError(
                f"{w}.domain_chips={float(tier.domain_chips):g} is smaller than the tier inside "
                f"it ({prev:g}); list tiers innermost first with growing domains."
            )
        prev = float(tier.domain_chips)
        tiers.append(tier)
    n = check_value(data["n_chips"], f"{where}.n_chips", ">0")
    if float(n) > prev:
        raise ValueError(
            f"{where}.n_chips={float(n):g} exceeds the outermost tier's domain ({prev:g})."
        )
    host = Host(**_build(Host, data["host"], f"{where}.host"))
    fac = Facility(**_build(Facility, data["facility"], f"{where}.facility"))
    ov = Overlap(
        **_build(
            Overlap,
            data.get("overlap", {}),
            f"{where}.overlap",
            defaults=cal.get("overlap", {}),
            bounds=OVERLAP_BOUNDS,
        )
    )
    system = System(
        name=data["name"],
        n_chips=n,
        chip=chip,
        tiers=tuple(tiers),
        host=host,
        facility=fac,
        overlap=ov,
    )
    return check_system(system, where)


#: plausible SI magnitudes: a value outside them almost surely used another unit
_UNIT_RANGES = {
    "chip.hbm_bytes": (1e8, 1e14, "bytes (e.g. 80e9 for 80 GB)"),
    "chip.hbm_bytes_per_s": (1e9, 1e15, "bytes per second (e.g. 3.35e12 for 3.35 TB/s)"),
    "chip.tdp_w": (1.0, 1e5, "watts"),
    "tier.bytes_per_s": (1e6, 1e14, "bytes per second per chip (e.g. 50e9 for 400 Gb/s)"),
    "tier.latency_s": (0.0, 1e-2, "seconds (e.g. 1e-6 for 1 us)"),
    "tier.base_latency_s": (0.0, 1e-1, "seconds (e.g. 2e-5 for 20 us)"),
    "peak": (1e9, 1e18, "FLOP/s (e.g. 989e12 for 989 TFLOPS), or 0 if unsupported"),
}


def _check_units(sys: System, where: str) -> None:
    def check(key, path, value):
        lo, hi, unit = _UNIT_RANGES[key]
        if not lo <= value <= hi:
            raise ValueError(f"{where}: {path} = {value:g} is implausible; it must be in {unit}.")

    c = sys.chip
    for f in ("hbm_bytes", "hbm_bytes_per_s", "tdp_w"):
        check(f"chip.{f}", f"chip.{f}", float(getattr(c, f)))
    for p, v in c.peak_flops_per_s.items():
        if float(v) > 0:
            check("peak", f"chip.peak_flops_per_s.{p}", float(v))
    for t in sys.tiers:
        for f in ("bytes_per_s", "latency_s", "base_latency_s"):
            check(f"tier.{f}", f"tiers.{t.name}.{f}", float(getattr(t, f)))


def check_system(sys: System, where: str = "system") -> System:
    """Cross-field checks (also after --set overrides)."""
    _check_units(sys, where)
    c = sys.chip
    if float(peak_flops(c, "bf16")) <= 0 and float(peak_flops(c, "fp16")) <= 0:
        raise ValueError(f"{where}: chip.peak_flops_per_s: bf16 or fp16 must be > 0.")
    if float(c.idle_w) > float(c.tdp_w):
        raise ValueError(
            f"{where}: chip.idle_w={float(c.idle_w):g} exceeds chip.tdp_w={float(c.tdp_w):g}."
        )
    prev = 0.0
    for t in sys.tiers:
        d = float(t.domain_chips)
        if d != round(d) or d < prev:
            raise ValueError(
                f"{where}: tiers.{t.name}.domain_chips={d:g} must be an integer no smaller "
                f"than the tier inside it ({prev:g})."
            )
        prev = d
    n = float(sys.n_chips)
    if n != round(n) or n > prev:
        raise ValueError(
            f"{where}: n_chips={n:g} must be an integer <= the outermost tier's domain ({prev:g})."
        )
    return sys


def load_system(
    name_or_path: str | Path, overrides: dict | None = None, *, calibration: dict | None = None
) -> System:
    """A validated System from the catalog or a TOML file, with optional dotted overrides
    (`calibration`: use this overlay instead of the committed one)."""
    path = _resolve(name_or_path, "systems")
    where = f"system '{Path(path).stem}'"
    sys = _system(load_toml(path, "system"), where, calibration)
    return override_system(sys, overrides, where) if overrides else sys


def override_system(system: System, overrides: dict, where: str = "system") -> System:
    """`system` with dotted-path overrides (emu.overrides.apply_overrides), cross-checked."""
    return check_system(apply_overrides(system, overrides), where)


def override_model(model: Model, overrides: dict, where: str = "model") -> Model:
    """`model` with dotted-path overrides, cross-checked."""
    return check_model(apply_overrides(model, overrides), where)


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
    if "ffn" in data and (not isinstance(data["ffn"], str) or data["ffn"] not in FFN_KINDS):
        raise ValueError(
            f"{where}.ffn: unknown FFN {data['ffn']!r}; known: {', '.join(FFN_KINDS)}."
        )
    defaults = {k: v for k, v in _MODEL_OPTIONAL.items() if v is not None}
    kw = _build(Model, data, where, defaults=defaults)
    return check_model(Model(**kw), where)


def check_model(m: Model, where: str = "model") -> Model:
    """Cross-field checks (also after --set overrides)."""
    if m.attention not in ATTENTION_KINDS:
        raise ValueError(
            f"{where}.attention: unknown {m.attention!r}; known: {', '.join(ATTENTION_KINDS)}."
        )
    if m.attention == "mla" and (float(m.kv_lora_rank) <= 0 or float(m.v_head_dim) <= 0):
        raise ValueError(f'{where}: attention = "mla" needs kv_lora_rank > 0 and v_head_dim > 0.')
    if float(m.n_experts) > 0:
        if not 1 <= float(m.top_k) <= float(m.n_experts):
            raise ValueError(
                f"{where}: top_k={float(m.top_k):g} must be between 1 and "
                f"n_experts={float(m.n_experts):g}."
            )
        if float(m.d_ff_expert) <= 0:
            raise ValueError(f"{where}: an MoE model needs d_ff_expert > 0.")
        if float(m.n_dense_layers) >= float(m.n_layers):
            raise ValueError(
                f"{where}: n_dense_layers={float(m.n_dense_layers):g} must be < "
                f"n_layers={float(m.n_layers):g}."
            )
    heads, kv = float(m.n_heads), float(m.n_kv_heads)
    if kv > heads or heads % kv:
        raise ValueError(f"{where}: n_kv_heads={kv:g} must divide n_heads={heads:g}.")
    for key in ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_ff", "vocab"):
        v = float(getattr(m, key))
        if v != round(v):
            raise ValueError(f"{where}.{key} must be an integer (got {v:g}).")
    return m


def load_model(name_or_path: str | Path, overrides: dict | None = None) -> Model:
    """A validated Model from the catalog or a TOML file, with optional dotted overrides."""
    path = _resolve(name_or_path, "models")
    where = f"model '{Path(path).stem}'"
    m = model_from_dict(load_toml(path, "model"), where)
    return override_model(m, overrides, where) if overrides else m
