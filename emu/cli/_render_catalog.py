"""Rendering of the catalog: the `emu list` rows and text (systems, models, regions) and
the `emu plan-fields` table of every plan knob."""

from __future__ import annotations

from emu.cli._render import si, table


def system_row(name: str, d: dict) -> dict:
    """One `emu list` line of a system, from `emu.analysis.describe`."""
    peaks = d["peak_flops_per_s"]
    return {
        "name": name,
        "chip": d["chip"],
        "chips": d["n_chips"],
        # the whole system unit's dense peak (describe sums the chips)
        "peak_bf16_flops_per_s": peaks.get("bf16", peaks.get("fp16", 0.0)),
        "precisions": list(peaks),
        "hbm_bytes_per_chip": d["hbm_bytes"] / d["n_chips"],
        "hbm_bytes": d["hbm_bytes"],
        "scale_up_chips": max(
            (t["domain_chips"] for t in d["tiers"][:-1]), default=d["tiers"][0]["domain_chips"]
        ),
        "power_w": d["power_w"],
    }


def model_row(name: str, model) -> dict:
    """One `emu list` line of a model."""
    from emu.workload import params_active, params_total

    f = lambda x: int(round(float(x)))
    return {
        "name": name,
        "params": float(params_total(model)),
        "active_params": float(params_active(model)),
        "layers": f(model.n_layers),
        "d_model": f(model.d_model),
        "heads": f"{f(model.n_heads)}/{f(model.n_kv_heads)}",
        "attention": model.attention,
        "experts": f(model.n_experts),
        "top_k": f(model.top_k),
    }


def _params(n: float) -> str:
    return f"{n / 1e12:.3g}T" if n >= 1e12 else f"{n / 1e9:.3g}B"


def list_text(out: dict) -> str:
    sys_rows = [
        [
            name, s["chip"], f"{s['chips']}", si(s["peak_bf16_flops_per_s"], "FLOP/s"),
            si(s["hbm_bytes_per_chip"], "B"), f"{s['scale_up_chips']:g}",
            ",".join(s["precisions"]), si(s["power_w"], "W"),
        ]
        for name, s in out["systems"].items()
    ]  # fmt: skip
    model_rows = [
        [
            name, _params(m["params"]), _params(m["active_params"]),
            f"{m['layers']}", f"{m['d_model']}", m["heads"], m["attention"],
            f"{m['experts']} (top {m['top_k']})" if m["experts"] else "-",
        ]
        for name, m in out["models"].items()
    ]  # fmt: skip
    return (
        table(
            sys_rows,
            [
                "system",
                "chip",
                "chips",
                "peak bf16",
                "HBM/chip",
                "scale-up",
                "precisions",
                "power (IT)",
            ],
        )  # fmt: skip
        + "\n\n"
        + table(
            model_rows,
            [
                "model",
                "params",
                "active",
                "layers",
                "d_model",
                "heads (q/kv)",
                "attention",
                "experts",
            ],
        )  # fmt: skip
        + "\n\n(`emu list --fields NAME` for a system's or model's fields, `--fields plan` "
        "for the plan knobs)"
    )


def plan_fields() -> dict:
    """Every plan knob (emu.plan.KNOBS): flag, kind, default, bounds or choices, phases."""
    from emu.plan import KNOBS

    out = {}
    for k in KNOBS:
        if k.kind == "static":
            rule = ", ".join(k.choices)
        elif k.kind == "choice":
            rule = ", ".join(k.names)
        else:
            rule = k.describe()
        out[k.name] = {
            "flag": k.flag,
            "set": f"plan.{k.name}",
            "kind": k.kind,
            "default": k.default if k.default is not None else "derived",
            "values": rule,
            "unit": k.unit,
            "phases": list(k.phases),
            "help": k.help,
        }
    return out


def _short(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 3].rstrip() + "..."


def plan_fields_text(out: dict) -> str:
    rows = [
        [name, d["flag"], f"{d['default']}", d["values"], "/".join(d["phases"]), _short(d["help"])]
        for name, d in out.items()
    ]
    return (
        table(rows, ["knob", "flag", "default", "values", "phases", "help"])
        + "\n(set any knob with its flag or --set plan.NAME=VALUE; --json has the full help)"
    )
