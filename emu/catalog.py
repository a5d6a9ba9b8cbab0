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
import math
import os
import stat
import sys
import tomllib
from importlib import resources
from pathlib import Path

from emu._backend import jnp
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
    "resolve_name",
    "uncalibrated",
    "model_from_hf",
    "FAMILY_KEYS",
    "LINK_KEYS",
]

CALIBRATION_FILES = ("defaults.toml", "fitted.toml")


def config_dir() -> Path:
    """The catalog folder: the installed `emu.configs` package, or ./configs in a checkout."""
    try:
        return Path(str(resources.files("emu.configs")))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def parse_failure(e: Exception) -> str | None:
    """What a JSON or TOML parser's non-syntax failure means, for a one-line error: nesting
    deeper than Python's recursion limit, or an integer of more digits than Python converts
    (`sys.get_int_max_str_digits`); None for any other error."""
    if isinstance(e, RecursionError):
        return "its values are nested too deeply to read"
    if isinstance(e, ValueError) and "integer string conversion" in str(e):
        return f"it holds an integer of over {sys.get_int_max_str_digits():,} digits"
    return None


def _unreadable(e: Exception, what: str, path) -> ValueError:
    """The one-line ValueError for a file a parser could not read (`parse_failure`); `e`
    itself for any other error."""
    why = parse_failure(e)
    return e if why is None else ValueError(f"{what} file '{path}' cannot be read: {why}.")


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
        hf = " or a Hugging Face folder with a config.json" if what == "model" else ""
        raise ValueError(f"{what} path '{path}' is a directory, not a TOML file{hf}.") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{what} file '{path}' is not valid TOML: {e}.") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} file '{path}' is not UTF-8 text.") from None
    except OSError as e:
        raise ValueError(f"cannot read {what} file '{path}': {e.strerror}.") from None
    except (RecursionError, ValueError) as e:
        raise _unreadable(e, what, path) from None


def _names(kind: str) -> list[str]:
    d = config_dir() / kind
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


def list_systems() -> list[str]:
    return _names("systems")


def list_models() -> list[str]:
    return _names("models")


def _key(name: str) -> str:
    """The spelling-free key of a name: lower case, letters and digits only
    ('Llama-3-70B', 'llama3_70b' and 'llama3.70b' share 'llama370b')."""
    return "".join(c for c in name.lower() if c.isalnum())


def resolve_name(name: str, kind: str) -> str:
    """The catalog name that `name` spells (case, '-', '_', '.' and spaces ignored:
    'Llama-3-70B' -> 'llama3_70b'); ValueError with a guess and the known names."""
    known = _names(kind)
    if name in known:
        return name
    hits = [k for k in known if _key(k) == _key(name)]
    if len(hits) == 1:
        return hits[0]
    what = kind[:-1]
    if len(hits) > 1:
        raise ValueError(f"{what} '{name}' could be {' or '.join(hits)}; give the exact name.")
    # a name the typed one begins ('gpt3' -> gpt3_175b, 'gb200' -> gb200_nvl72), else the
    # closest spelling
    starts = [k for k in known if _key(name) and _key(k).startswith(_key(name))]
    close = difflib.get_close_matches(_key(name), [_key(k) for k in known], n=1, cutoff=0.7)
    guesses = starts[:3] or [k for k in known if close and _key(k) == close[0]][:1]
    hint = f" Did you mean {' or '.join(repr(g) for g in guesses)}?" if guesses else ""
    other = {"systems": "models", "models": "systems"}.get(kind)
    if other and any(_key(k) == _key(name) for k in _names(other)):
        hint = f" '{name}' is a {other[:-1]}, not a {what}."
    raise ValueError(
        f"unknown {what} '{name}'.{hint} Known: {', '.join(known)}; "
        "or pass the path of a TOML file."
    )


def path_is(path: Path, test: str) -> bool:
    """`path.is_file()` / `path.is_dir()` (`test`), False where the path cannot be looked up
    at all (a name longer than the file system allows), which pathlib raises on."""
    try:
        return getattr(path, test)()
    except OSError:
        return False


def _resolve(name_or_path: str | Path, kind: str) -> Path:
    s = str(name_or_path)
    if s.endswith((".toml", ".json")) or "/" in s or path_is(Path(s), "is_file"):
        return Path(s)
    return config_dir() / kind / f"{resolve_name(s, kind)}.toml"


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
        elif f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            continue  # a defaulted field (a value or a factory) may be left out
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


#: the shared parameters a chip family / link type carries in the calibration overlay; a
#: file that names a family or link type the overlay does not know declares them itself
#: (or `like = "<known one>"` to start from it)
FAMILY_KEYS = (
    "matmul_efficiency", "lowp_matmul_efficiency", "matmul_half_dim", "hbm_efficiency",
    "kernel_overhead_s",
)  # fmt: skip
LINK_KEYS = ("efficiency", "latency_s", "base_latency_s")


def _declared(data: dict, known: dict, name, what: str, keys: tuple, where: str) -> dict:
    """The shared parameters of chip family / link type `name`: the calibration overlay's
    (`known`), or, for a name it does not know, `like = "<known>"`'s, with whatever the
    table sets itself on top; every key of `keys` must then be given. Pops `like`."""
    like = data.pop("like", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: {what} must be a non-empty string (got {name!r}).")
    if like is not None and (not isinstance(like, str) or like not in known):
        raise ValueError(
            f"{where}: like = {like!r} is not a calibrated {what}; "
            f"known: {', '.join(sorted(known))}."
        )
    if name in known and like is not None:  # hopper's label on ampere's numbers
        raise ValueError(
            f"{where}: {what} {name!r} is calibrated, so like = {like!r} would replace its "
            f"parameters under its name; drop `like`, or give the {what} a new name to start "
            f"it from {like!r}."
        )
    if name in known:
        return dict(known[name])
    params = dict(known[like]) if like is not None else {}
    missing = [k for k in keys if k not in params and k not in data]
    if missing:
        raise ValueError(
            f"{where}: unknown {what} {name!r} (calibrated: {', '.join(sorted(known))}); "
            f'declare it: like = "{sorted(known)[0]}" to start from a calibrated one, or set '
            f"{', '.join(missing)} in the same table."
        )
    return params


def uncalibrated(system: System, cal: dict | None = None) -> list[str]:
    """What in `system` has no calibrated shared parameters: its chip family and link
    types that the calibration overlay does not know (declared in the file itself or
    `like` a known one). Empty for every catalog system."""
    cal = calibration() if cal is None else cal
    out = []
    if system.chip.family not in cal.get("chip_family", {}):
        out.append(f"chip family '{system.chip.family}'")
    links = cal.get("link", {})
    out += [f"link type '{t.link}' (tier {t.name})" for t in system.tiers if t.link not in links]
    return out


def _chip(data: dict, cal: dict, where: str) -> Chip:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table [chip] (got {type(data).__name__}).")
    data = dict(data)
    family = data.get("family")
    fams = cal.get("chip_family", {})
    params = _declared(data, fams, family, "chip family", FAMILY_KEYS, f"{where}.family")
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
    defaults = {**params, **cal.get("power", {})}
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
        t = dict(t)
        params = _declared(t, links, t.get("link"), "link type", LINK_KEYS, f"{w}.link")
        tiers.append(Tier(**_build(Tier, t, w, defaults=params)))
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


def _check_stem(data, path, kind: str) -> None:
    """A file's `name` is its stem (configs/README.md): results, cost files and the
    catalog are keyed by the name, so a copy of dgx_h100.toml that still says
    name = "gb200_nvl72" was reported, and priced, as the GB200 rack."""
    name = data.get("name") if isinstance(data, dict) else None
    stem = Path(path).stem
    if isinstance(name, str) and name and name not in (stem, Path(path).resolve().stem):
        raise ValueError(
            f"{kind} file '{path}' says name = \"{name}\", but a {kind}'s name must equal its "
            f'file stem: set name = "{stem}".'
        )


def load_system(
    name_or_path: str | Path, overrides: dict | None = None, *, calibration: dict | None = None
) -> System:
    """A validated System from the catalog or a TOML file, with optional dotted overrides
    (`calibration`: use this overlay instead of the committed one)."""
    path = _resolve(name_or_path, "systems")
    where = f"system '{Path(path).stem}'"
    data = load_toml(path, "system")
    _check_stem(data, path, "system")
    sys = _system(data, where, calibration)
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
    "attention_window": 0,
    "window_layers": 0,
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
    model = check(Model(**kw), where)
    if float(model.n_experts) <= 0:  # `top_k = 2` without experts: a dense model, silently
        for key in MOE_ONLY_MODEL_FIELDS:
            if float(kw.get(key, 0.0)) > 0:
                raise ValueError(
                    f"{where}: {key} = {float(kw[key]):g} applies to an MoE model's experts, "
                    f"but the model has no routed experts (n_experts = 0), so it would be "
                    f"dense; set n_experts, or drop {key}."
                )
    return model


#: Hugging Face `model_type`s whose FFN is a plain two-matrix MLP (the rest are gated:
#: SwiGLU/GeGLU, three matrices)
_HF_UNGATED = {
    "gpt2", "gpt_neox", "gptj", "opt", "bloom", "falcon", "gpt_bigcode", "phi", "starcoder2",
}  # fmt: skip
#: `model_type`s whose config class ties the output head to the input embedding unless the
#: file says otherwise (transformers' `PretrainedConfig` default, kept by these classes;
#: Llama, Mistral, Qwen, Mixtral and DeepSeek classes default to untied): the published
#: Gemma and GPT-2 configs leave the key out
_HF_TIED_BY_DEFAULT = {"gemma", "gemma2", "gemma3", "gemma3_text", "gpt2", "opt", "bloom",
                       "gpt_bigcode", "falcon", "starcoder2", "cohere", "cohere2"}  # fmt: skip
#: config.json fields emu reads as counts or sizes: a value must be a number >= 0 (> 0 for
#: the first six), else the file is refused naming the field
_HF_POSITIVE = ("num_hidden_layers", "n_layer", "hidden_size", "n_embd", "num_attention_heads",
                "n_head")  # fmt: skip
_HF_COUNTS = _HF_POSITIVE + (
    "num_key_value_heads", "head_dim", "intermediate_size", "n_inner", "ffn_dim",
    "moe_intermediate_size", "n_routed_experts", "num_local_experts", "num_experts",
    "num_experts_per_tok", "num_experts_per_token", "n_shared_experts",
    "shared_expert_intermediate_size", "first_k_dense_replace", "num_nextn_predict_layers",
    "topk_group", "n_group", "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim",
    "qk_nope_head_dim", "v_head_dim", "vocab_size", "decoder_sparse_step",
    "interleave_moe_layer_step", "max_window_layers", "intermediate_size_mlp",
)  # fmt: skip


def _check_hf_numbers(cfg: dict, where: str) -> None:
    """One line naming the first count or size of `cfg` (`_HF_COUNTS`) that is not a finite
    number >= 0 (> 0 for the layers, width and heads), and a `tie_word_embeddings` that is
    not a boolean: they were read into arithmetic and failed there ("internal error")."""
    for key in _HF_COUNTS:
        v = cfg.get(key)
        if v is None:
            continue
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or v < 0 or (key in _HF_POSITIVE and v == 0):
            least = "a positive number" if key in _HF_POSITIVE else "a number >= 0"
            raise ValueError(f"{where}: config.json's {key} is {v!r}; give {least}.")
    tie = cfg.get("tie_word_embeddings")
    if tie is not None and not isinstance(tie, bool):
        raise ValueError(
            f"{where}: config.json's tie_word_embeddings is {tie!r}; give true or false."
        )


def _hf_moe_layers(cfg: dict, g, experts, where: str) -> int:
    """The leading dense layers of a MoE config.json (`first_k_dense_replace`, or Qwen's
    `mlp_only_layers` when they are the first k); MoE on every other layer (Qwen's
    `decoder_sparse_step`, Llama 4's `interleave_moe_layer_step` > 1) or dense layers
    elsewhere are refused: emu's MoE models have experts on every layer after the first
    `n_dense_layers`."""
    if not experts:
        return 0
    for key in ("decoder_sparse_step", "interleave_moe_layer_step"):
        step = cfg.get(key)
        if step is not None and step > 1:
            raise ValueError(
                f"{where}: config.json's {key} = {step} puts experts on one layer in "
                f"{step}; emu models experts on every layer after the first n_dense_layers "
                "(not modelled: give a model TOML with n_dense_layers as the nearest)."
            )
    only = cfg.get("mlp_only_layers")
    if only:
        ints = isinstance(only, list) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in only
        )
        if not ints or sorted(only) != list(range(len(only))):
            raise ValueError(
                f"{where}: config.json's mlp_only_layers {only!r} are not the first layers; "
                "emu models dense layers only before the MoE ones (n_dense_layers)."
            )
        return len(only)
    return g("first_k_dense_replace", default=0)


def _hf_get(cfg: dict, *names, default=None):
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    return default


def model_from_hf(config: dict, name: str, where: str | None = None) -> Model:
    """A validated Model from a Hugging Face `config.json` (as transformers writes it):
    dense GQA/MHA models (Llama, Mistral, Qwen, GPT-2 names), MoE fields (DeepSeek
    `n_routed_experts`/`first_k_dense_replace`, Mixtral `num_local_experts`, Qwen
    `num_experts`/`shared_expert_intermediate_size`) and MLA fields (`kv_lora_rank`,
    `q_lora_rank`, `qk_rope_head_dim`, `qk_nope_head_dim`, `v_head_dim`), sliding-window
    attention (`sliding_window` and its layers, `_hf_window`); a multimodal
    config's `text_config` is used. The FFN is gated (three matrices) unless the
    `model_type` is a GPT-2/NeoX-style MLP."""
    where = where or f"model '{name}'"
    if not isinstance(config, dict):
        raise ValueError(f"{where}: config.json must hold a JSON object.")
    if config.get("text_config") is not None and not isinstance(config["text_config"], dict):
        raise ValueError(
            f"{where}: text_config must be a JSON object (got "
            f"{type(config['text_config']).__name__}); fix it or drop it."
        )
    cfg = config.get("text_config") if "num_hidden_layers" not in config else None
    cfg = cfg if isinstance(cfg, dict) else config
    _check_hf_numbers(cfg, where)
    g = lambda *n, default=None: _hf_get(cfg, *n, default=default)
    layers, d, heads = (
        g("num_hidden_layers", "n_layer"),
        g("hidden_size", "n_embd"),
        g("num_attention_heads", "n_head"),
    )
    if layers is None or d is None or heads is None:
        raise ValueError(
            f"{where}: not a transformer config.json (needs num_hidden_layers, hidden_size "
            "and num_attention_heads)."
        )
    mla = g("kv_lora_rank") is not None
    experts = g("n_routed_experts", "num_local_experts", "num_experts", default=0)
    d_ff = g("intermediate_size", "n_inner", "ffn_dim", default=4 * d)
    # a dense config may carry moe_intermediate_size (a family's shared config class)
    d_ff_expert = g("moe_intermediate_size", default=d_ff) if experts else 0
    shared = g("n_shared_experts")
    if shared is None and g("shared_expert_intermediate_size") and d_ff_expert:
        shared = g("shared_expert_intermediate_size") / d_ff_expert
    kind = cfg.get("model_type")
    if kind == "llama4_text" and experts:  # Llama4TextMoe: one shared expert, always
        shared = 1 if shared is None else shared
        d_ff = g("intermediate_size_mlp", default=d_ff)  # dense layers' width
    data = {
        "name": name,
        "ffn": "gelu" if kind in _HF_UNGATED else "swiglu",
        "attention": "mla" if mla else "gqa",
        "tied_embeddings": g("tie_word_embeddings", default=kind in _HF_TIED_BY_DEFAULT),
        "n_layers": layers,
        "d_model": d,
        "n_heads": heads,
        "n_kv_heads": heads if mla else g("num_key_value_heads", default=heads),
        "d_head": g("qk_nope_head_dim") if mla else g("head_dim", default=d / heads),
        "d_ff": d_ff,
        "vocab": g("vocab_size"),
        "n_experts": experts,
        "top_k": g("num_experts_per_tok", "num_experts_per_token", default=0) if experts else 0,
        "d_ff_expert": d_ff_expert,
        "n_shared_experts": (shared or 0) if experts else 0,
        "n_dense_layers": _hf_moe_layers(cfg, g, experts, where),
        "mtp_layers": g("num_nextn_predict_layers", default=0),
        # DeepSeek group-limited routing: experts in n_group groups (one per node in
        # deployment), a token reaches topk_group of them
        "route_max_nodes": g("topk_group", default=0) if experts and (g("n_group") or 1) > 1 else 0,
    }
    if mla:
        data.update(
            q_lora_rank=g("q_lora_rank", default=0),
            kv_lora_rank=g("kv_lora_rank"),
            rope_head_dim=g("qk_rope_head_dim", default=0),
            v_head_dim=g("v_head_dim", default=g("qk_nope_head_dim")),
        )
    if data["vocab"] is None:
        raise ValueError(f"{where}: config.json has no vocab_size.")
    data.update(_hf_window(cfg, layers, where))
    return model_from_dict(data, where)


def _hf_window(cfg: dict, layers, where: str = "model") -> dict:
    """attention_window and window_layers of a config.json: `sliding_window` unless
    `use_sliding_window` is false (Qwen2/3), on the layers `layer_types` names
    "sliding_attention" (one type per layer), else those from `max_window_layers` on
    (Qwen2/3 with `use_sliding_window`), else all but every `sliding_window_pattern`-th
    (Gemma 3), else every other layer (Gemma 2), else every layer (Mistral 7B v0.1). A
    window or pattern that is not a positive number (a string, NaN, negative) is refused
    (ValueError naming `where`), not read as no window."""

    def number(x) -> bool:
        return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

    window = cfg.get("sliding_window")
    off = window is None or (number(window) and window == 0)
    if off or not cfg.get("use_sliding_window", True):
        return {}
    if not number(window) or window < 0:
        raise ValueError(
            f"{where}: config.json's sliding_window is {window!r}: give the window in keys "
            "(a positive number), or null for none."
        )
    if not number(layers):  # model_from_dict refuses it with its own message
        return {}
    types = cfg.get("layer_types")
    pattern = cfg.get("sliding_window_pattern")
    if pattern is not None and not (
        isinstance(pattern, int) and not isinstance(pattern, bool) and pattern > 0
    ):
        raise ValueError(
            f"{where}: config.json's sliding_window_pattern is {pattern!r}: give the period of the "
            "global layers (a positive integer, Gemma 3: 6), or leave it out."
        )
    if isinstance(types, list) and types:
        if len(types) != int(layers):
            raise ValueError(
                f"{where}: config.json's layer_types names {len(types)} layers, "
                f"num_hidden_layers is {int(layers)}: give one type per layer."
            )
        local = sum(1 for t in types if t == "sliding_attention")
    elif cfg.get("use_sliding_window") and number(cfg.get("max_window_layers")):
        # Qwen2/3: layers from max_window_layers on use the window, the first ones do not
        local = max(0, int(layers) - int(cfg["max_window_layers"]))
    elif pattern is not None:
        local = int(layers) - int(layers) // pattern
    elif cfg.get("model_type") == "gemma2":
        local = int(layers) // 2
    else:
        local = int(layers)
    return {"attention_window": window, "window_layers": local} if local else {}


#: how a JSON value other than an object reads in an error message
_JSON_KINDS = {list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}  # fmt: skip


def _load_hf(path: Path) -> Model:
    import json

    if path_is(path, "is_dir"):
        path = path / "config.json"
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ValueError(f"model path '{path}' is not a regular file.")
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"model file '{path}' not found.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"model file '{path}' is not valid JSON: {e}.") from None
    except OSError as e:
        raise ValueError(f"cannot read model file '{path}': {e.strerror}.") from None
    except (RecursionError, ValueError) as e:
        raise _unreadable(e, "model", path) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"model file '{path}' must hold a JSON object (a Hugging Face config.json), "
            f"not {_JSON_KINDS.get(type(config), type(config).__name__)}."
        )
    stem = path.parent.name if path.name == "config.json" else path.stem
    name = str(config.get("_name_or_path") or stem).rstrip("/").rsplit("/", 1)[-1] or "model"
    return model_from_hf(config, name, f"model '{path}'")


#: model fields that only an MoE model's experts read (a dense model ignores them)
MOE_ONLY_MODEL_FIELDS = ("top_k", "d_ff_expert", "n_shared_experts", "route_max_nodes")


class DenseModelError(ValueError):
    """An override of an expert-only field (`field`) on a dense model (`model`), which would
    change nothing."""

    def __init__(self, where: str, field: str, model: str):
        super().__init__(
            f"{where}: {field} applies to an MoE model's experts and this model is dense "
            f"(n_experts = 0), so it would change nothing; drop it, or make the model MoE "
            f"with n_experts=N."
        )
        self.field, self.model = field, model


def load_model(
    name_or_path: str | Path, overrides: dict | None = None, *, prefix: str = ""
) -> Model:
    """A validated Model from the catalog (any spelling of a name: `resolve_name`), a TOML
    file, or a Hugging Face `config.json` (or a folder holding one), with optional dotted
    overrides (an unknown path is spelled with `prefix` in the error, `model.` for
    `--set`)."""
    p = Path(str(name_or_path))
    if str(name_or_path).endswith(".json") or (
        path_is(p, "is_dir") and path_is(p / "config.json", "is_file")
    ):
        m, where = _load_hf(p), f"model '{p}'"
    else:
        path = _resolve(name_or_path, "models")
        where = f"model '{Path(path).stem}'"
        data = load_toml(path, "model")
        _check_stem(data, path, "model")
        m = model_from_dict(data, where)
    if not overrides:
        return m
    m = apply_overrides(m, overrides, where, prefix=prefix)
    moe_only = [f for f in overrides if f in MOE_ONLY_MODEL_FIELDS]  # a dict: checked above
    if moe_only and float(m.n_experts) == 0:
        raise DenseModelError(where, moe_only[0], m.name)
    return m
