"""Regenerate the golden outputs that pin emu's behaviour during refactors.

    python tests/golden/generate.py            # writes tests/golden/*.json

Run it only when a change is *meant* to move numbers (new physics, a refit), and say so in
the commit; a refactor must leave `tests/test_golden.py` passing without regenerating.

Two snapshots:
- `evaluations.json`: ~500 (system, model, plan) evaluations drawn at random (fixed seed)
  from the valid plan spaces of several systems and models, in training, prefill and
  decode; each stores the plan as `make_plan` keyword arguments and every leaf of the
  `RunResult` by dotted path.
- `validate_<n>.json`: the predicted value and status of every row of the pinned
  141-row measurement set and of the packaged default set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import numpy as np

HERE = Path(__file__).resolve().parent

#: (system, model, phase, precision, chip counts, plans drawn)
GROUPS = [
    ("gb200_nvl72", "llama3_70b", "train", "bf16", (64, 72, 576), 50),
    ("cloudmatrix384", "llama3_70b", "train", "bf16", (128, 384), 50),
    ("dgx_h100", "gpt3_175b", "train", "bf16", (64, 1024), 40),
    ("dgx_a100", "llama3_8b", "train", "fp16", (8, 64), 30),
    ("gb200_nvl72", "deepseek_v3", "train", "fp8", (256, 1152), 40),
    ("cloudmatrix384", "qwen3_30b_a3b", "train", "bf16", (64, 384), 30),
    ("dgx_h100", "mixtral_8x7b", "train", "bf16", (16, 64), 30),
    ("gb200_nvl72", "deepseek_r1", "prefill", "fp8", (72, 144), 40),
    ("cloudmatrix384", "deepseek_r1", "decode", "int8", (128, 384), 50),
    ("gb200_nvl72", "deepseek_r1", "decode", "fp8", (72,), 40),
    ("dgx_h200", "llama3_70b", "decode", "fp8", (8, 16), 30),
    ("dgx_b200", "llama3_8b", "prefill", "bf16", (8,), 30),
    ("atlas800t_a2", "llama2_7b", "train", "bf16", (8, 64), 20),
]
SEED = 20261201


def _plans(system, model, phase, precision, chips, n, rng):
    from emu.parallelism import plan_dict
    from emu.search import KNOBS, Problem, enumerate_plans, plan_of

    extra = {}
    if phase == "decode":
        extra = dict(context=4096, mtp_accept=0.7 if model.mtp_layers > 0 else 0.0)
    if phase != "train" and float(model.n_experts) > 0:  # a dense model's Problem refuses it
        extra["a2a_overlap"] = True
    prob = Problem(
        system=system.name,
        model=model.name,
        chips=tuple(chips),
        seq_len=4096,
        precision=precision,
        phase=phase,
        **extra,
    )
    rows = enumerate_plans(system, model, prob)
    pick = rng.choice(len(rows), size=min(n, len(rows)), replace=False)
    out = []
    for i in sorted(pick):
        row = dict(zip(KNOBS, (float(x) for x in rows[i]), strict=True))
        out.append(plan_dict(plan_of(prob, row)))
    return out


def evaluations() -> list[dict]:
    import emu
    from emu.struct import float_leaves

    rng = np.random.default_rng(SEED)
    cases = []
    for sys_name, model_name, phase, prec, chips, n in GROUPS:
        system, model = emu.load_system(sys_name), emu.load_model(model_name)
        for kw in _plans(system, model, phase, prec, chips, n, rng):
            r = emu.evaluate(system, model, emu.make_plan(**kw))
            leaves = {k: float(v) for k, v in float_leaves(r).items()}
            cases.append(dict(system=sys_name, model=model_name, plan=kw, result=leaves))
    return cases


def validation(path) -> list[dict]:
    from emu.validation import validate_file

    rep = validate_file(path)
    return [{k: r.get(k) for k in ("id", "status", "predicted", "reason")} for r in rep["rows"]]


def main() -> int:
    jax.config.update("jax_platforms", "cpu")
    from emu.validation import default_measurements

    cases = evaluations()
    (HERE / "evaluations.json").write_text(json.dumps(cases, indent=0, sort_keys=True) + "\n")
    print(f"evaluations.json: {len(cases)} evaluations")
    for name, path in (
        ("validate_141.json", HERE.parent / "data" / "measurements_141.jsonl"),
        ("validate_default.json", default_measurements()),
    ):
        rows = validation(path)
        (HERE / name).write_text(json.dumps(rows, indent=0, sort_keys=True) + "\n")
        print(f"{name}: {len(rows)} rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
