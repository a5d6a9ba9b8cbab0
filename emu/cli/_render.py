"""Rendering: SI-prefixed numbers, aligned tables, the text of every command's result, the
progress lines on stderr, and printing (text or --json)."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from emu.cli._progress import fit_progress, search_progress, sweep_progress, working
from emu.struct import json_safe

__all__ = ["fit_progress", "search_progress", "sweep_progress", "working"]  # and the rest

_PREFIXES = (
    (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""),
    (1e-3, "m"), (1e-6, "u"), (1e-9, "n"),
)  # fmt: skip


def si(x: float, unit: str) -> str:
    """`x` with an SI prefix and three significant digits: si(1.5e12, "B/s") = '1.5 TB/s'."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g} {unit}"
    for factor, prefix in _PREFIXES:
        if abs(x) >= factor:
            return f"{x / factor:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}"


def table(rows: list[list[str]], header: list[str]) -> str:
    """Columns aligned: the first left, the others right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(r, widths, strict=True))
    )
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *[fmt(r) for r in rows]])


def emit(args, obj: Any, text: str) -> None:
    """`obj` as JSON with --json (non-finite numbers as null), else `text`, on stdout."""
    if args.json:
        print(json.dumps(json_safe(obj), indent=2, allow_nan=False))
    else:
        print(text)


def unit_of(path: str) -> str:
    """The unit of a field path, from its name (emu's naming convention)."""
    leaf = path.rsplit(".", 1)[-1]
    if ".peak_flops_per_s." in path:
        return "FLOP/s"
    for suffix, unit in (
        ("_bytes_per_s", "B/s"),
        ("bytes_per_s", "B/s"),
        ("_bytes", "B"),
        ("_w", "W"),
        ("_s", "s"),
        ("_per_chip", "per chip"),
    ):
        if leaf.endswith(suffix):
            return unit
    return "-"


def _int(x) -> str:
    """A whole number in full (1000000, not 1e+06), else as given."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def plan_text(p: dict) -> str:
    """A plan on one line: the knobs of its phase (EP and ETP where they act)."""
    moe = f" ep={p['ep']}" + (f" etp={p['etp']}" if p.get("etp", 1) != 1 else "")
    if p.get("expert_ranks"):  # attention/expert disaggregation
        moe += f" expert_ranks={p['expert_ranks']} attention_groups={p['attention_groups']}"
    if p["phase"] != "train":
        length = (
            f"context={_int(p['context'])}" if p["phase"] == "decode" else f"prompt={p['seq_len']}"
        )
        extra = f" mtp_accept={p['mtp_accept']:g}" if p.get("mtp_accept") else ""
        if p.get("draft_tokens"):  # speculative decoding with its own drafts
            extra += f" draft_tokens={p['draft_tokens']:g} accept_len={p['accept_len']:g}"
        extra += f" cache_hit={p['cache_hit']:g}" if p.get("cache_hit") else ""
        return (
            f"{p['phase']}: tp={p['tp']} dp={p['dp']}{moe} batch/rank={p['microbatch']} "
            f"{length}{extra} {p['precision']} kv={p.get('kv_precision', 'bf16')}"
        )
    share = p.get("recompute_fraction", 1)
    rc = f"{p['recompute']}" + (f" recompute_fraction={share:g}" if share != 1 else "")
    rc += " recompute_activation" if p.get("recompute_activation") else ""
    return (
        f"tp={p['tp']} pp={p['pp']} dp={p['dp']} cp={p['cp']}{moe} vpp={p['vpp']} "
        f"mb={p['microbatch']} gbs={p['global_batch']} seq={p['seq_len']} "
        # sequence parallelism splits along the TP group: none without one
        f"zero={p['zero']} recompute={rc} sp={bool(p['sp']) and p['tp'] > 1} {p['precision']}"
    )


def _feasible_text(r: dict) -> str:
    if r["feasible"]:
        return "yes"
    first = (r.get("infeasible_reasons") or ["out of memory"])[0]
    return "NO (" + first.split(":")[0].split(";")[0] + ")"


def _phase_rows(results: list[dict]) -> list[list[str]]:
    """precision, the serving lengths and batch, and the latencies (where they apply)."""
    rows = [["precision", *[r["plan"]["precision"] for r in results]]]
    if any(r["phase"] == "prefill" for r in results):
        rows.append(["prompt", *[f"{r['plan']['seq_len']}" for r in results]])
    if any(r["phase"] == "decode" for r in results):
        rows.append(["context", *[_int(r["plan"]["context"]) for r in results]])
    if any(r["phase"] != "train" for r in results):
        rows.append(["batch per DP rank", *[f"{r['plan']['microbatch']}" for r in results]])
    else:
        rows.append(["seq", *[f"{r['plan']['seq_len']}" for r in results]])
    rows += _latency_rows(results)
    if any(r.get("slo_s") is not None for r in results):
        rows.append(["SLO", *[si(r["slo_s"], "s") if r.get("slo_s") else "-" for r in results]])
    return rows


_BREAKDOWN_ROWS = [
    ("matmul_s", "projections + dense FFN"),
    ("expert_s", "MoE experts + router"),
    ("attention_s", "attention core"),
    ("memory_s", "memory-bound ops"),
    ("head_s", "output head (+ loss)"),
    ("compute_s", "= compute"),
    ("tp_comm_s", "TP comm (raw)"),
    ("cp_comm_s", "CP comm (raw)"),
    ("pp_comm_s", "PP comm (raw)"),
    ("dp_comm_s", "DP comm (raw)"),
    ("dispatch_s", "MoE dispatch (raw)"),
    ("combine_s", "MoE combine (raw)"),
    ("exposed_comm_s", "exposed comm"),
    ("bubble_s", "pipeline bubble"),
    ("optimizer_s", "optimizer"),
    ("total_s", "= step time"),
]


#: `bubble_s` of a decode step: attention ranks waiting on the shared expert ranks
#: (attention/expert disaggregation, `emu.step`)
_EXPERT_WAIT = "wait on expert ranks"


def _latency_rows(results: list[dict]) -> list[list[str]]:
    rows = []
    for key, label in (("ttft_s", "TTFT"), ("tpot_s", "TPOT")):
        if any(r.get(key) for r in results):
            rows.append([label, *[si(r[key], "s") if r[key] else "-" for r in results]])
    return rows


def band(iv: dict | None, unit: str) -> str:
    """An interval as "[low - high]" with SI prefixes ("~[...]" when it extrapolates beyond
    the validated rows), "-" when there is none."""
    if not iv or iv.get("low") is None:
        return "-"
    mark = "~" if iv.get("extrapolation") else ""
    return f"{mark}[{si(iv['low'], unit)} - {si(iv['high'], unit)}]"


def _per_chip_band(r: dict, iv: dict | None) -> str:
    """The tokens/s band per chip ("[568 - 2351]")."""
    if not iv or iv.get("low") is None:
        return "-"
    n = max(r["n_chips"], 1e-9)
    return plain_band({**iv, "low": iv["low"] / n, "high": iv["high"] / n}, ".0f")


def plain_band(iv: dict | None, fmt: str = ".3g") -> str:
    """`band` without SI prefixes (tokens/J, USD: "[0.31 - 1.2]")."""
    if not iv or iv.get("low") is None:
        return "-"
    mark = "~" if iv.get("extrapolation") else ""
    return f"{mark}[{iv['low']:{fmt}} - {iv['high']:{fmt}}]"


def interval_lines(results: list[dict], names: list[str] | None = None) -> list[str]:
    """One line per result naming the basis of its intervals (and the extrapolation);
    `names`: the results' labels (default: their systems)."""
    out = []
    for r, name in zip(results, names or [r["system"] for r in results], strict=True):
        iv = (r.get("interval") or {}).get("tokens_per_s")
        if iv:
            out.append(f"{iv['level']:.0%} interval ({name}): basis {iv['basis']}")
    return out


def _dies(r: dict) -> int:
    """Dies (ranks) per chip of a result: n_ranks / n_chips (2 on a CloudMatrix 384)."""
    return round(r.get("n_ranks", r["n_chips"]) / max(r["n_chips"], 1e-9))


def _chips_text(r: dict) -> str:
    d = _dies(r)
    return f"{r['n_chips']:.0f}" + (f" ({r['n_ranks']:.0f} dies)" if d > 1 else "")


def column_names(results: list[dict]) -> list[str]:
    """The systems' names, numbered where two share one (two TOML files that both say
    name = "custom"), so that no two columns, plan lines or warnings look alike."""
    names = [str(r["system"]) for r in results]
    return [f"{n} #{names[: i + 1].count(n)}" if names.count(n) > 1 else n
            for i, n in enumerate(names)]  # fmt: skip


def run_text(results: list[dict], names: list[str] | None = None) -> str:
    """`emu run`/`emu compare`: infeasibility first, then one column per result, the step
    breakdown, the plans, warnings and notes. `names`: the columns' labels (default: the
    systems, `column_names`)."""
    names = names or column_names(results)
    out = [
        f"INFEASIBLE on {name}: {reason}"
        for r, name in zip(results, names, strict=True)
        if not r["feasible"]
        for reason in (r.get("infeasible_reasons") or ["out of memory"])
    ]
    out += [""] if out else []
    head = ["", *names]
    ivs = [r.get("interval") or {} for r in results]
    rows = [
        ["feasible", *[_feasible_text(r) for r in results]],
        ["model", *[r["model"] for r in results]],
        ["chips", *[_chips_text(r) for r in results]],
        ["phase", *[r["phase"] for r in results]],
        *_phase_rows(results),
        ["step time", *[si(r["step_time_s"], "s") for r in results]],
        ["  80% interval", *[band(iv.get("step_time_s"), "s") for iv in ivs]],
        ["tokens/s", *[si(r["tokens_per_s"], "tok/s") for r in results]],
        ["  80% interval", *[band(iv.get("tokens_per_s"), "tok/s") for iv in ivs]],
        ["tokens/s per chip", *[f"{r['tokens_per_s'] / r['n_chips']:.0f}" for r in results]],
        [
            "  80% interval",
            *[
                _per_chip_band(r, iv.get("tokens_per_s"))
                for r, iv in zip(results, ivs, strict=True)
            ],
        ],  # fmt: skip
        ["power (IT)", *[si(r["power_w"], "W") for r in results]],
        ["power (facility)", *[si(r["facility_power_w"], "W") for r in results]],
        ["tokens/J (IT)", *[f"{r['tokens_per_joule']:.3g}" for r in results]],
        ["  80% interval", *[plain_band(iv.get("tokens_per_joule")) for iv in ivs]],
        ["MFU", *[f"{100 * r['mfu']:.1f}%" for r in results]],
        [
            "memory/rank" if any(_dies(r) > 1 for r in results) else "memory/chip",
            *[
                f"{si(r['memory']['total_bytes'], 'B')} of {si(r['memory']['capacity_bytes'], 'B')}"
                + (" per die" if _dies(r) > 1 else "")
                for r in results
            ],
        ],
    ]
    out += [table(rows, head), ""]
    rows = [
        [label, *[si(r["breakdown"][k], "s") if k in r["breakdown"] else "-" for r in results]]
        for k, label in _BREAKDOWN_ROWS
        if any(r["breakdown"].get(k) for r in results) or k in ("compute_s", "total_s")
    ]
    if all(r["phase"] == "decode" for r in results):  # disaggregation: attention waits
        rows = [[_EXPERT_WAIT if row[0] == "pipeline bubble" else row[0], *row[1:]] for row in rows]
    if all(r["phase"] != "train" for r in results):  # serving computes no loss
        rows = [["output head" if row[0] == "output head (+ loss)" else row[0], *row[1:]]
                for row in rows]  # fmt: skip
    out += [table(rows, ["step breakdown", *names]), ""]
    for r, name in zip(results, names, strict=True):
        out.append(f"plan ({name}): {plan_text(r['plan'])}")
    for r, name in zip(results, names, strict=True):
        out += [f"warning ({name}): {w}" for w in r.get("warnings", [])]
    out += interval_lines(results, names)
    notes = list(dict.fromkeys(n for r in results for n in r.get("notes", [])))
    out += [f"note: {n}" for n in notes]
    evaluate = f"evaluate {sum(r['eval_s'] for r in results) * 1e3:.1f} ms"
    if all(r.get("backend") == "numpy" for r in results):
        out.append(f"{evaluate} (NumPy, nothing compiled)")
    else:
        out.append(f"compile {sum(r['compile_s'] for r in results):.2f} s, {evaluate}")
    return "\n".join(out)


#: how a deployment's output rate composes its instances' rates (`validation.deployment_rate`)
_DEPLOYMENT_RULE = {
    "decode": "decode alone: rate = D",
    "mixed": "PD mixed on the same ranks: rate = 1 / (1/D + (in/out)/P)",
    "separated": "PD separated: rate = 1 / (1/R + ramp (in/out)/P), R = min(P/in, D/out) out",
}


def _signed_error(res: dict) -> str:
    diff = res["predicted"] / res["measured"] - 1.0
    side = "above" if diff > 0 else "below" if diff < 0 else "equal to"
    band = res.get("interval") or {}
    if band.get("low") is None:
        where = f"no 80% interval: {band.get('basis', 'none')}"
    else:
        inside = "inside" if res.get("inside") else "outside"
        where = f"{inside} the 80% interval [{band['low']:.4g} - {band['high']:.4g}]"
    return f"{100 * diff:+.1f}% (predicted {side} measured; {where})"


def _collective_lines(c: dict) -> list[str]:
    if c["op"] == "all-reduce":
        # an assumed size is among the result's `approximates`, printed above
        size = si(c["bytes"], "B") + (" (assumed)" if c.get("bytes_assumed") else "")
        return [f"all-reduce of {size} over {c['ranks']:g} ranks, {c['algorithm']} algorithm"]
    copies = "one copy per routed expert" if c["dedup"] < 0.5 else "one copy per destination"
    lines = [
        f"MoE {c['op']}: {c['tokens']:g} tokens per rank x {c['token_bytes']:.0f} B per copy, "
        f"top-{c['top_k']:g} over {c['group']:g} ranks ({copies}"
        + (f", at most {c['max_domains']:g} domains per token" if c["max_domains"] else "")
        + f"); published as {c['convention']}"
        + (f" over {si(c['moved'], 'B')} moved" if c.get("moved") else "")
    ]
    return lines  # what was assumed is among the result's `approximates`, printed above


def _deployment_lines(d: dict) -> list[str]:
    pre = d["prefill_tokens_per_s"]
    if pre is None:  # decode alone: only the context matters
        lengths = f"  decode context {d['context']:g} tokens (the prompt, {d['prompt_len']:g}"
        lengths += f", + half the output, {d['output_len']:g})" if d["output_len"] else ")"
    else:
        lengths = (
            f"  in = {d['prompt_len']:g} prompt and out = {d['output_len']:g} output tokens per "
            f"request (decode context in + out/2 = {d['context']:g})"
            + (f"; first-wave ramp {d['ramp']:.3g}" if d["ramp"] else "")
        )
    unit = f" x {d['chips_per_unit']:g} chips per unit" if d["chips_per_unit"] != 1 else ""
    out = [
        f"deployment: {_DEPLOYMENT_RULE[d['mode']]}",
        lengths,
        f"  D = {d['decode_tokens_per_s']:,.0f} output tok/s (decode instance)"
        + (f", P = {pre:,.0f} prompt tok/s (prefill instance)" if pre is not None else ""),
        f"  rate {d['rate_tokens_per_s']:,.0f} tok/s / {d['cards']} cards{unit} = "
        f"{d['per_unit']:.4g} (the published figure)",
    ]
    if d["batch_cap"] is not None:
        out.append(
            f"  decode batch: the largest that fits, at most {d['batch_cap']}"
            + (f" (KV held for {d['kv_reserve']:g} tokens)" if d["kv_reserve"] else "")
        )
    return out


def explain_text(exp) -> str:
    """`emu validate --row ID`: the row's result, what it measures or how its deployment
    composes its instances, and the instances' steps (`run_text`, one column each)."""
    res = exp.result
    if res["status"] != "ok":  # a refused line has no kind or system to show
        return f"row {res['id']}: not modelled ({res['status']}): {res['reason']}"
    unit = f" {res['unit']}" if res.get("unit") else ""
    out = [
        f"row {res['id']} ({res['kind']}, {res['system']})",
        f"source: {res.get('source', '-')}",
        f"{res['metric']}: predicted {res['predicted']:.4g}{unit}, measured "
        f"{res['measured']:.4g}{unit}: " + _signed_error(res),
    ]
    if res.get("feasible") is False:
        out.append("memory: the plan exceeds the usable HBM in emu (it ran on its hardware)")
    out += [f"note: {n}" for n in exp.notes]
    out += [f"approximates: {a}" for a in res.get("approximates", [])]
    if exp.collective is not None:
        return "\n".join(out + _collective_lines(exp.collective))
    if exp.deployment is not None:
        out += _deployment_lines(exp.deployment)
    return "\n".join([*out, "", run_text(exp.runs, exp.roles)])


def describe_text(d: dict) -> str:
    rows = [["chips", f"{d['n_chips']} x {d['chip']}"]]
    rows += [[f"peak {k} (dense)", si(v, "FLOP/s")] for k, v in d["peak_flops_per_s"].items()]
    rows += [
        ["HBM capacity", si(d["hbm_bytes"], "B")],
        ["HBM bandwidth", si(d["hbm_bytes_per_s"], "B/s")],
    ]
    for t in d["tiers"]:
        rows.append(
            [
                f"tier {t['name']} ({t['link']})",
                f"{si(t['bytes_per_s_per_chip'], 'B/s')}/chip/dir, domain {t['domain_chips']:.0f}",
            ]
        )
    rows += [["power (IT, full load)", si(d["power_w"], "W")]]
    rows += [[f"  {k}", si(v, "W")] for k, v in d["power"].items() if k not in ("it_w",)]
    rows += [["facility power (PUE)", f"{si(d['facility_power_w'], 'W')} (PUE {d['pue']:g})"]]
    for kind, iv in (d.get("interval") or {}).items():
        if iv.get("low") is not None:
            mark = "~" if iv["extrapolation"] else ""
            rows.append(
                [
                    f"{kind} throughput, {iv['level']:.0%} interval",
                    f"{mark}x{iv['low']:.2f} - x{iv['high']:.2f} ({iv['basis']})",
                ]
            )
    notes = "".join(f"\nnote: {n}" for n in d.get("notes", []))
    return f"{d['system']}\n" + table(rows, ["quantity", "value"]) + notes


def elasticity(v: float) -> str:
    """An elasticity to 4 decimals, 0 where it rounds to zero (not "-0.0000")."""
    return "0" if abs(v) < 5e-5 else f"{v:+.4f}"


def sensitivity_text(d: dict, top: int) -> str:
    rows = [
        [k, f"{v['value']:.4g}", elasticity(v["tokens_per_joule"]), elasticity(v["tokens_per_s"])]
        for k, v in list(d["elasticities"].items())[:top]
    ]
    plan = f"plan: {plan_text(d['plan'])}\n" if d.get("plan") else ""
    return (
        f"{d['system']} / {d['model']}: tokens/J {d['tokens_per_joule']:.4g}, "
        f"tokens/s {d['tokens_per_s']:.4g}\n{plan}elasticity d ln(y) / d ln(x) (value in "
        "the field's SI unit: `emu list --fields`), largest |tokens/J| first\n"
        + table(rows, ["field", "value", "tokens/J", "tokens/s"])
        + "".join(f"\nnote: {n}" for n in d.get("notes", []))
    )


def calibrate_text(out: dict, path) -> str:
    rows = [
        [k, f"{v:.4g}", f"{out['uncertainty'][k]:.2g}", f"{out['priors'][k]:.4g}"]
        for k, v in out["values"].items()
    ]
    text = [
        f"fitted {out['parameters']} shared parameters to {out['rows']} rows "
        f"({out['steps']} steps, {out['wall_s']:.0f} s)",
        f"median |error| {out['median_abs_pct_error_before']:.1f}% -> "
        f"{out['median_abs_pct_error']:.1f}%, p90 {out['p90_abs_pct_error']:.1f}%",
        *[_cv_line(c) for c in out["cross_validation"]],
        *_holdout_line(out["cross_validation"]),
        *_cv_tables(out["cross_validation"]),
        "",
        table(rows, ["parameter", "fitted", "+- 1 sigma", "prior"]),
        "",
        f"written: {', '.join(out.get('written') or [str(path)])}"
        if path
        else "dry run: nothing written",
    ]
    return "\n".join(text)


def _cv_line(c: dict) -> str:
    """The summary line of one cross-validation; a single group holds nothing out."""
    head = f"leave-one-{c['by']}-out ({c['groups']} group{'s' * (c['groups'] != 1)}): "
    if c["groups"] < 2 or not math.isfinite(c["median_abs_pct_error"]):
        return head + f"nothing held out (one {c['by']} in the file)"
    return head + f"median {c['median_abs_pct_error']:.1f}%, p90 {c['p90_abs_pct_error']:.1f}%"


def _holdout_line(cvs: list[dict]) -> list[str]:
    """The |error| of the rows of sources the fit never saw (`--holdout`), if any."""
    from emu.validation import holdout_line

    held = next((c["summary"]["holdout"] for c in cvs if "holdout" in c.get("summary", {})), None)
    return [] if held is None else [holdout_line(held)]


def _cv_tables(cvs: list[dict]) -> list[str]:
    """In-sample and leave-one-source-out |error| by system, kind and source."""
    cv = next((c for c in cvs if c["by"] == "source" and c.get("summary")), None)
    if cv is None:
        return []
    ins, held = cv["summary"]["in_sample"], cv["summary"]["held_out"]
    out = []
    for key, title in (("by_system", "system"), ("by_kind", "kind"), ("by_source", "source")):
        rows = []
        for name, h in held[key].items():
            i = ins[key].get(name) or {}
            if not h["n"]:
                continue
            rows.append(
                [
                    name[:50],
                    str(h["n"]),
                    f"{i.get('median_abs_pct_error', float('nan')):.1f}%",
                    f"{i.get('p90_abs_pct_error', float('nan')):.1f}%",
                    f"{h['median_abs_pct_error']:.1f}%",
                    f"{h['p90_abs_pct_error']:.1f}%",
                ]
            )
        head = [title, "n", "median", "p90", "LOSO median", "LOSO p90"]
        out += ["", table(rows, head)]
    return out


def serve_text(d: dict, chips: tuple[int, int]) -> str:
    rows = [
        ["chips (prefill + decode)", f"{chips[0]} + {chips[1]}"],
        [
            "batch per DP rank (prefill, decode)",
            f"{d['prefill']['plan']['microbatch']}, {d['decode']['plan']['microbatch']}",
        ],
        ["requests/s", f"{d['requests_per_s']:.4g}"],
        ["output tokens/s", si(d["tokens_per_s"], "tok/s")],
        ["  80% interval", band((d.get("interval") or {}).get("tokens_per_s"), "tok/s")],
        ["output tokens/s per chip", f"{d['tokens_per_s_per_chip']:.4g}"],
        ["TTFT (prefill batch)", si(d["ttft_s"], "s")],
        ["TPOT", si(d["tpot_s"], "s")],
        ["  80% interval", band((d.get("interval") or {}).get("tpot_s"), "s")],
        [
            "utilisation (prefill, decode)",
            f"{d['prefill_utilisation']:.0%}, {d['decode_utilisation']:.0%}",
        ],
        ["power (IT)", si(d["power_w"], "W")],
        ["output tokens/J", f"{d['tokens_per_joule']:.4g}"],
    ]
    why = "; ".join(r.rstrip(".") for r in d.get("infeasible_reasons", [])) or "out of memory"
    lead = "" if d["feasible"] else f"INFEASIBLE: {why}.\n"
    rows.insert(0, ["feasible", "yes" if d["feasible"] else "NO"])
    plans = "".join(f"\nplan ({k}): {plan_text(d[k]['plan'])}" for k in ("prefill", "decode"))
    notes = "".join(f"\nwarning: {w}" for w in d.get("warnings", []))
    notes += "".join(f"\nnote: {n}" for n in d.get("notes", []))
    head = f"{d['system']} / {d['model']}\n"
    ivs = "".join(f"\n{line}" for line in interval_lines([d]))
    return lead + head + table(rows, ["quantity", "value"]) + plans + ivs + notes


def _search_row(r: dict, names, serving: bool, lat: str | None, dies: int = 1) -> list[str]:
    chips = r["tp"] * r["pp"] * r["dp"] * r["cp"] // dies  # packages (plans count ranks)
    row = [*[f"{r[n]:g}" for n in names], f"{chips}"]
    if serving:
        row += [f"{r['tp']}/{r['dp']}/{r['ep']}", f"{r['microbatch']}"]
        row += [si(r[lat], "s")] if lat else []
    else:
        row += [
            f"{r['tp']}/{r['pp']}/{r['dp']}/{r['cp']}/{r['ep']}", f"{r['microbatch']}",
            f"{r['vpp']}", f"{r['zero']}", ("none", "selective", "full")[r["recompute"]],
            f"{r['sp']}",
        ]  # fmt: skip
    return row + [
        _num(r["objective"]), si(r["tokens_per_s"], "tok/s"), f"{r['tokens_per_joule']:.4g}",
        si(r["power_w"], "W"), f"{100 * r['mfu']:.1f}%",
    ]  # fmt: skip


def best_interval_text(best: dict | None) -> str:
    """The intervals of a search's best configuration, as one line ("" without one)."""
    ivs = (best or {}).get("interval") or {}
    if "tokens_per_s" not in ivs:
        return ""
    return (
        f"\nbest: tokens/s {si(best['tokens_per_s'], 'tok/s')} "
        f"{band(ivs['tokens_per_s'], 'tok/s')}, step time {si(best['step_time_s'], 's')} "
        f"{band(ivs.get('step_time_s'), 's')} ({ivs['tokens_per_s']['level']:.0%} interval, "
        f"basis {ivs['tokens_per_s']['basis']})"
    )


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def search_text(res, what: str, dies: int = 1) -> str:
    """The top configurations of a SweepResult or SearchResult (feasible ones only, best
    first), under the line `what`: chips, the plan, the latency against its SLO (serving)."""
    names, pr = res.space.names, res.problem
    serving = pr.phase != "train"
    lat = {"decode": "tpot_s", "prefill": "ttft_s"}.get(pr.phase)
    slo = pr.tpot_slo if pr.phase == "decode" else pr.ttft_slo
    if lat and slo is None:
        lat = None
    priced = getattr(pr, "cost", None) is not None  # --region: USD per M tokens
    rows = [
        [str(i + 1), *_search_row(r, names, serving, lat, dies)]
        + ([_num(r["usd_per_mtoken"])] if priced else [])
        for i, r in enumerate(res.top)
    ]
    head = ["#", *names, "chips"]
    if serving:
        head += ["tp/dp/ep", "batch"]
        head += [f"{lat[:4].upper()} (SLO {si(slo, 's')})"] if lat else []
    else:
        head += ["tp/pp/dp/cp/ep", "mb", "vpp", "zero", "recompute", "sp"]
    head += [res.objective, "tokens/s", "tokens/J", "power", "MFU"]
    head += ["USD/Mtok"] if priced else []
    cap = f", power cap {si(pr.power_cap, 'W')}" if pr.power_cap else ""
    text = f"{what}{cap}\n" + (table(rows, head) if rows else "no feasible configuration")
    if not rows:
        text += (
            " (none fits in memory, meets the SLO and stays under the power cap); relax "
            "--tpot-slo/--ttft-slo/--power-cap, add chips or fix fewer knobs."
        )
    return text


def warn(message: str) -> None:
    print(f"emu: warning: {message}", file=sys.stderr)


def note_lines(args, notes: list[str]) -> None:
    """Notes on stderr (when the output itself has no place for them), unless --json."""
    if not args.json:
        for n in notes:
            print(f"emu: note: {n}", file=sys.stderr)


def need_matplotlib(flag: str) -> None:
    """ValueError saying exactly how to get matplotlib, before any work."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError(f"{flag} needs matplotlib: pip install 'cluster-emu[plot]'") from None


def ratios_text(ratios: list[dict], base: str) -> str:
    """`emu compare`'s ratios to the first system, with their 80% bands ('' for none)."""
    if not ratios:
        return ""

    def x(v):
        return "-" if v is None else f"{v:.2f}x"

    def cell(d, infeasible):
        if infeasible:
            return "- (infeasible)"
        if d["low"] is None:
            return x(d["value"])
        mark = "~" if d.get("extrapolation") else ""
        return f"{x(d['value'])} {mark}[{x(d['low'])} - {x(d['high'])}]"

    rows = [
        [f"{r['system']} / {base}", *(cell(r[k], r.get("infeasible"))
                                      for k in ("tokens_per_s", "tokens_per_joule"))]
        for r in ratios
    ]  # fmt: skip
    head = ["ratio", "tokens/s [band]", "tokens/J [band]"]
    return (
        "\n\n" + table(rows, head) + "\nbands: the two systems' 80% intervals at opposite "
        "ends (a conservative band of the ratio); ~: an extrapolation"
    )
