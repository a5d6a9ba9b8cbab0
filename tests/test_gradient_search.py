import numpy as np

import emu
from emu.search import KNOBS, Problem, enumerate_plans, gradient_search, plan_of


def test_gradient_search_returns_an_exactly_evaluated_valid_plan():
    system, model = emu.load_system("dgx_h100"), emu.load_model("llama3_8b")
    problem = Problem("dgx_h100", "llama3_8b", 16, seq_len=4096)
    res = gradient_search(system, model, problem, starts=4, steps=20)
    best = res["best"]
    valid = enumerate_plans(system, model, problem)
    row = np.asarray([best[k] for k in KNOBS], np.float32)
    assert (valid == row).all(axis=1).any()
    plan = plan_of(
        problem, {**best, "global_batch": best["dp"] * max(1, -(-(2**22) // (4096 * best["dp"])))}
    )
    exact = float(emu.evaluate(system, model, plan).tokens_per_joule)
    assert np.isclose(best["tokens_per_joule"], exact, rtol=1e-5)
    assert res["evaluations"] > 0 and res["space"] == len(valid)
