"""80% intervals: the residual quantile table, the basis and extrapolation rules, the
nested leave-one-source-out coverage and its calibrated tail (synthetic residuals with
answers derived by hand), and the JSON contract of `interval` on run/describe results."""

import json
import math

import numpy as np
import pytest

from emu import analysis
from emu.validation import (
    TAIL_GRID,
    calibrate_tail,
    calibrate_tails,
    coverage,
    quantile_table,
    tails_text,
)
from emu.validation._intervals import _inside, _Pools, tail_of


def _ladder(n=10, group="train/x"):
    """n sources with one residual each: r = 0, 0.1, ..., (n-1)/10."""
    return [{"id": str(i), "source": f"s{i}", "group": group, "r": i / 10} for i in range(n)]


def test_nested_coverage_of_a_ladder_is_known_by_hand():
    """Held out, the lowest and the highest rung fall outside the band of the other nine
    (below their minimum / above their maximum); every other rung is inside while the band
    still reaches its neighbours: with 9 values, np.quantile's q(t) = 1.6 t above 0 for
    t <= 1/8, so rung 0.1 stays inside for t <= 0.0625 -> coverage 8/10 up to the grid's
    0.06, then 6/10."""
    recs = _ladder()
    assert calibrate_tail(recs, 0.8) == pytest.approx(0.06)
    c = coverage(recs, 0.8)
    assert c["tail"] == {"train": pytest.approx(0.06), "all": pytest.approx(0.06)}
    assert c["nested"] == pytest.approx(0.8)
    assert c["rows"] == 10 and 0.0 <= c["out_of_sample"] <= 1.0
    # a level nothing reaches falls back to the smallest tail
    assert calibrate_tail(recs, 0.95) == TAIL_GRID[0]


def test_out_of_sample_coverage_is_lower_when_sources_are_offset():
    """Sources with systematic offsets (a residual per source, spread within it) are what
    the doubly-nested coverage must see: the in-sample share at the calibrated tail is
    higher than the out-of-sample one would be with a tail read off the level."""
    rng = np.random.default_rng(0)
    recs = []
    for s in range(12):
        off = rng.normal(0, 0.3)
        for i in range(6):
            recs.append({"id": f"{s}.{i}", "source": f"s{s}", "group": "train/x",
                         "r": off + rng.normal(0, 0.05)})  # fmt: skip
    naive = quantile_table(recs, 0.1)["train/x"]
    inside = np.mean([naive["q_lo"] <= x["r"] <= naive["q_hi"] for x in recs])
    assert inside == pytest.approx(0.8, abs=0.05)  # in sample the naive band is ~80%
    c = coverage(recs, 0.8)
    assert c["tail"]["train"] < 0.1  # the calibrated band is wider than the naive 10/90 one
    assert c["nested"] >= 0.8


def test_quantile_table_bases_and_usability():
    recs = _ladder(10, "train/x") + [
        {"id": f"c{i}", "source": "one", "group": "collective/ub", "r": 0.0} for i in range(9)
    ]
    t = quantile_table(recs, 0.1)
    assert set(t) == {"train/x", "collective/ub", "train", "collective", "all"}
    assert t["train/x"]["rows"] == 10 and t["train/x"]["sources"] == 10
    assert t["train/x"]["usable"]
    assert not t["collective/ub"]["usable"]  # 9 rows but one source
    assert t["all"]["rows"] == 19
    assert t["train/x"]["q_lo"] == pytest.approx(np.quantile(np.arange(10) / 10, 0.1))


def test_tails_are_calibrated_per_kind_and_cover_each_kind_out_of_sample():
    """Mondrian calibration, by hand: 40 one-row collective sources and 10 one-row serving
    sources, each a ladder. Held out, a ladder's two end rungs fall outside the others'
    band, so the 40-rung kind stays >= 80% covered up to a larger tail (0.09) than the
    10-rung one (0.06, as in the ladder test above). One pooled tail (0.065) covers the
    pooled rows 80% but serving only 60% (collectives 85%); per kind, each kind 80%."""
    recs = _ladder(40, "collective/x") + _ladder(10, "serve/y")
    for x in recs[:40]:
        x["source"], x["r"] = "c" + x["source"], float(x["id"]) / 40
    tails = calibrate_tails(recs, 0.8)
    assert tails == {"collective": pytest.approx(0.09), "serve": pytest.approx(0.06),
                     "all": pytest.approx(0.09)}  # fmt: skip
    # "all" is calibrated on its own pool: the largest tail at which every row's band from
    # the pool of all other sources' rows covers 80% of the rows
    pooled_all = _inside([{**x, "group": "all"} for x in recs], _Pools(recs), frozenset(),
                         TAIL_GRID).mean(axis=0)  # fmt: skip
    k = TAIL_GRID.index(pytest.approx(tails["all"]))
    assert pooled_all[k] >= 0.8 and (k + 1 == len(TAIL_GRID) or pooled_all[k + 1] < 0.8)
    pooled = calibrate_tail(recs, 0.8)
    assert pooled == pytest.approx(0.065)
    serve = [x for x in recs if x["group"].startswith("serve")]
    inside = _inside(serve, _Pools(recs), frozenset(), TAIL_GRID)
    assert inside.mean(axis=0)[TAIL_GRID.index(pooled)] == pytest.approx(0.6)
    t = quantile_table(recs, tails)
    assert t["serve/y"]["tail"] == t["serve"]["tail"] == pytest.approx(0.06)
    assert t["collective/x"]["tail"] == pytest.approx(0.09)
    assert t["all"]["tail"] == pytest.approx(tails["all"])
    c = coverage(recs, 0.8)
    assert c["tail"] == tails
    assert {k: v["coverage"] for k, v in c["by_kind"].items()} == {
        "collective": pytest.approx(0.8), "serve": pytest.approx(0.8)}  # fmt: skip
    assert tails_text(tails) == "collective 0.09, serve 0.06"


def test_tail_of_a_kind_the_mapping_lacks_and_of_all_is_the_widest():
    """The "all" basis and a kind without its own tail take tail["all"], else the smallest
    tail of the mapping (the widest band); a float is every basis' tail."""
    assert tail_of({"train": 0.06, "serve": 0.02}, "all") == 0.02
    assert tail_of({"train": 0.06, "serve": 0.02}, "collective/ub") == 0.02
    assert tail_of({"train": 0.06, "serve": 0.02, "all": 0.04}, "collective/ub") == 0.04
    assert tail_of({"train": 0.06, "serve": 0.02}, "train/hopper") == 0.06
    assert tail_of(0.1, "serve/hopper") == 0.1
    with pytest.raises(ValueError):
        tail_of({}, "train")


def test_a_kind_only_one_source_shows_is_scored_with_the_widest_tail():
    """Held out, a kind with a single source has no rows of its own to calibrate on: its
    rows are scored at the other kinds' widest tail from the pool of all rows, never an
    error; here the collective source's nine residuals sit inside the training ladder's
    range (0..0.9) except for its own spread beyond it."""
    recs = _ladder(10, "train/x") + [
        {"id": f"c{i}", "source": "one", "group": "collective/ub", "r": 0.1 * i} for i in range(12)
    ]
    c = coverage(recs, 0.8)
    assert set(c["by_kind"]) == {"train", "collective"}
    # rungs 0.0-0.8 of the held-out source inside the train ladder's band at tail 0.06
    # (its quantiles span about 0.054-0.846 of the 10 train rows): 0.1 ... 0.8 -> 8 of 12
    assert c["by_kind"]["collective"]["coverage"] == pytest.approx(8 / 12)
    assert c["extrapolated"] == 12
    # the rows outside their band are named: here rungs 0.0 (below) and 0.9-1.1 (above),
    # and the training ladder's two ends
    assert [i for i in c["missed"] if i.startswith("c")] == ["c0", "c9", "c10", "c11"]
    assert len(c["missed"]) == round(c["rows"] * (1 - c["out_of_sample"])) == 6


TABLE = {
    "provenance": {"level": 0.8},
    "basis": {
        "train/hopper": {"rows": 40, "sources": 5, "q_lo": -0.1, "q_hi": 0.2, "usable": True},
        "train/tiny": {"rows": 3, "sources": 1, "q_lo": 0.0, "q_hi": 0.01, "usable": False},
        "train": {"rows": 90, "sources": 9, "q_lo": -0.3, "q_hi": 0.25, "usable": True},
        "all": {"rows": 300, "sources": 30, "q_lo": -0.4, "q_hi": 0.5, "usable": True},
    },
}


def test_interval_of_a_rate_and_a_time_from_the_basis_quantiles():
    iv = analysis.interval(100.0, "train/hopper", table=TABLE)
    assert iv["low"] == pytest.approx(100 * math.exp(-0.2))
    assert iv["high"] == pytest.approx(100 * math.exp(0.1))
    assert iv["basis"].startswith("train/hopper (40 rows, 5 sources)")
    assert iv["level"] == 0.8 and iv["extrapolation"] is False
    t = analysis.interval(2.0, "train/hopper", time=True, table=TABLE)
    assert (t["low"], t["high"]) == pytest.approx((2 * math.exp(-0.1), 2 * math.exp(0.2)))


def test_a_thin_basis_falls_back_to_its_kind_without_extrapolating():
    iv = analysis.interval(1.0, "train/tiny", table=TABLE)
    assert iv["basis"].startswith("train (") and iv["extrapolation"] is False
    assert (iv["low"], iv["high"]) == pytest.approx((math.exp(-0.25), math.exp(0.3)))


def test_a_family_of_too_few_sources_widens_its_kinds_band_to_its_own():
    """Enough rows but too few sources for a band of its own (MIN_SOURCES): the kind's band
    is used, widened to the family's quantiles where they reach further (CloudMatrix 384's
    serving rows come from two sources that disagree); never narrowed."""
    assert analysis.MIN_ROWS <= 20 and analysis.MIN_SOURCES > 2
    few = {"rows": 20, "sources": 2, "q_lo": -0.5, "q_hi": 0.1, "usable": False}
    table = {**TABLE, "basis": {**TABLE["basis"], "train/few": few}}
    iv = analysis.interval(1.0, "train/few", table=table)
    assert iv["basis"].startswith("train (90 rows, 9 sources); widened to train/few (20 rows")
    assert (iv["low"], iv["high"]) == pytest.approx((math.exp(-0.25), math.exp(0.5)))
    assert iv["extrapolation"] is False
    # a time's band widens the same way; so does an uncalibrated system's (extrapolated:
    # the kind's and all rows' bands, then the family's), never narrower than calibrated
    t = analysis.interval(2.0, "train/few", time=True, table=table)
    assert (t["low"], t["high"]) == pytest.approx((2 * math.exp(-0.5), 2 * math.exp(0.25)))
    un = analysis.interval(1.0, "train/few", table=table, uncalibrated=("chip family 'x'",))
    assert un["extrapolation"] is True and "widened to train/few" in un["basis"]
    assert un["low"] <= iv["low"] and un["high"] >= iv["high"]
    assert (un["low"], un["high"]) == pytest.approx((math.exp(-0.5), math.exp(0.5)))
    bare = {"rows": 20, "usable": False}  # a hand-made entry without quantiles: ignored
    table_bare = {**TABLE, "basis": {**TABLE["basis"], "train/few": bare}}
    assert analysis.interval(1.0, "train/few", table=table_bare)["basis"].startswith("train (")
    inside = {**few, "q_lo": -0.2, "q_hi": 0.2}  # within the kind's band: nothing to say
    table = {**TABLE, "basis": {**TABLE["basis"], "train/few": inside}}
    iv = analysis.interval(1.0, "train/few", table=table)
    assert iv["basis"] == "train (90 rows, 9 sources)"
    assert (iv["low"], iv["high"]) == pytest.approx((math.exp(-0.25), math.exp(0.3)))


def test_a_new_family_or_kind_extrapolates_with_the_wider_band():
    iv = analysis.interval(1.0, "train/newchip", table=TABLE)
    assert iv["extrapolation"] is True and "extrapolation" in iv["basis"]
    # the wider of train (-0.3, 0.25) and all (-0.4, 0.5)
    assert (iv["low"], iv["high"]) == pytest.approx((math.exp(-0.5), math.exp(0.4)))
    iv = analysis.interval(1.0, "serve/hopper", table=TABLE)  # a kind without rows
    assert iv["extrapolation"] is True and iv["basis"].startswith("all (")


def test_no_table_gives_no_band_and_says_why():
    iv = analysis.interval(1.0, "train/hopper", table={})
    assert iv["low"] is None and iv["high"] is None and "no interval table" in iv["basis"]


def test_shipped_table_is_calibrated_and_covers_every_catalog_family():
    table = analysis.interval_table()
    assert table is not None, "configs/calibration/intervals.toml is missing (emu calibrate --cv)"
    prov = table["provenance"]
    assert prov["level"] == 0.8 and 0 < prov["tail"] <= 0.1
    assert set(prov["tails"]) == {"train", "serve", "collective"}
    # each kind's band is calibrated to cover 75-85% of the rows of a source never seen:
    # the holdout rows (sources the fit never saw, `emu calibrate --cv --holdout`) where the
    # table has them, and then the fitted rows' held-out sources are covered at least as
    # often (they sit nearer emu); else the leave-one-source-out rows themselves
    if prov.get("holdout_rows"):
        assert 0.75 <= prov["coverage_by_origin"]["holdout"] <= 0.85
        assert prov["coverage_by_origin"]["fitted"] >= 0.75
        by_kind = prov["coverage_holdout_by_kind"]
    else:
        assert 0.75 <= prov["coverage_out_of_sample"] <= 0.85
        by_kind = prov["coverage_by_kind"]
    assert set(by_kind) == {"train", "serve", "collective"}
    for kind, share in by_kind.items():
        assert 0.75 <= share <= 0.85, (kind, share)
    for name, b in table["basis"].items():
        kind = name.split("/")[0]
        assert b["tail"] == prov["tails"].get(kind, prov["tail"]), name
    for b in table["basis"].values():
        assert b["q_lo"] <= b["q_hi"]


@pytest.fixture(scope="module")
def small_run():
    from emu.catalog import load_model, load_system
    from emu.parallelism import make_plan

    system, model = load_system("dgx_h100"), load_model("llama3_8b")
    plan = make_plan(tp=8, dp=1, microbatch=1, global_batch=8, seq_len=2048)
    return analysis.run(system, model, plan)


def test_run_results_carry_intervals_for_throughput_and_step_time(small_run):
    r = small_run
    for key in ("tokens_per_s", "step_time_s"):
        iv = r["interval"][key]
        assert set(iv) == {"low", "high", "level", "basis", "extrapolation"}
        assert iv["low"] < r[key] < iv["high"]
        assert iv["level"] == 0.8 and isinstance(iv["extrapolation"], bool)
        assert iv["basis"].startswith(("train/hopper", "train"))
    # the rate's band and the time's band are the same relative band, inverted
    tp, st = r["interval"]["tokens_per_s"], r["interval"]["step_time_s"]
    assert tp["low"] / r["tokens_per_s"] == pytest.approx(r["step_time_s"] / st["high"], 1e-6)
    json.dumps(r, allow_nan=False)


def test_describe_gives_the_band_factors_of_a_family():
    from emu.catalog import load_system

    d = analysis.describe(load_system("cloudmatrix384"))
    for kind in ("train", "serve"):
        iv = d["interval"][kind]
        assert iv["low"] < 1.0 < iv["high"]
    json.dumps(d, allow_nan=False)


def test_validate_rows_carry_the_band_of_their_prediction():
    from emu.validation import default_measurements, validate_rows

    rows = [json.loads(line) for line in open(default_measurements())]
    sel = [r for r in rows if r["id"] in ("limulidae_910b_allreduce_8npu", "sc21_t1_1.7B")]
    res = {r["id"]: r for r in validate_rows(sel, table=TABLE)}
    hccs = res["limulidae_910b_allreduce_8npu"]
    assert hccs["group"] == "collective/hccs" and hccs["interval"]["extrapolation"] is True
    a100 = res["sc21_t1_1.7B"]
    assert a100["group"] == "train/ampere" and a100["interval"]["basis"].startswith("train (")
    for r in res.values():
        lo, hi = r["interval"]["low"], r["interval"]["high"]
        assert lo < r["predicted"] < hi and r["inside"] == (lo <= r["measured"] <= hi)


def test_coverage_of_a_file_matches_shipped_residuals_by_id_and_value():
    from emu.validation import coverage_of_file

    results = [{"id": str(i), "status": "ok", "measured": 1.0 + i} for i in range(10)] + [
        {"id": "x", "status": "error", "measured": None}
    ]
    residuals = [{**x, "measured": 1.0 + int(x["id"]), "r_cv": x["r"]} for x in _ladder()] + [
        {"id": "3", "source": "s3", "group": "train/x", "measured": 99.0, "r_cv": 5.0}
    ]
    c = coverage_of_file(results, residuals)
    assert c["rows"] == 10 and c["nested"] == pytest.approx(0.8)  # the ladder, by hand
    assert coverage_of_file(results, []) is None


def test_uncalibrated_parts_make_the_band_an_extrapolation():
    from emu.analysis import interval

    table = {
        "provenance": {"level": 0.8},
        "basis": {
            "train/x": {"rows": 20, "sources": 3, "q_lo": -0.1, "q_hi": 0.1, "usable": True},
            "train": {"rows": 50, "sources": 6, "q_lo": -0.3, "q_hi": 0.2, "usable": True},
            "all": {"rows": 90, "sources": 9, "q_lo": -0.4, "q_hi": 0.3, "usable": True},
        },
    }
    known = interval(100.0, "train/x", table=table)
    new = interval(100.0, "train/x", table=table, uncalibrated=("link type 'foo' (tier t)",))
    assert not known["extrapolation"] and new["extrapolation"]
    assert new["low"] < known["low"] and new["high"] > known["high"]
    assert "uncalibrated link type 'foo'" in new["basis"]


def test_a_kind_with_enough_holdout_rows_is_calibrated_to_cover_them():
    """Rows of sources the fit never saw (`holdout`) sit further out than the fitted set's
    held-out sources; with enough of them (>= MIN_ROWS from >= MIN_SOURCES sources) a
    kind's tail is calibrated to cover them, so the band is wider and they are covered at
    the level; with too few, the tail is calibrated on all the kind's rows as before."""
    rng = np.random.default_rng(1)
    fitted = [
        {"id": f"f{s}.{i}", "source": f"f{s}", "group": "serve/x", "r": rng.normal(0, 0.1)}
        for s in range(10)
        for i in range(6)
    ]
    held = [
        {"id": f"h{s}.{i}", "source": f"h{s}", "group": "serve/x", "r": rng.normal(0, 0.5),
         "holdout": True}
        for s in range(6)
        for i in range(3)
    ]  # fmt: skip
    unflagged = [{**x, "holdout": False} for x in held]
    wide, narrow = calibrate_tails(fitted + held), calibrate_tails(fitted + unflagged)
    assert wide["serve"] < narrow["serve"]
    c = coverage(fitted + held, 0.8)
    assert c["by_origin"]["holdout"]["n"] == 18 and c["by_origin"]["fitted"]["n"] == 60
    assert set(c["holdout_by_kind"]) == {"serve"} and c["holdout_by_kind"]["serve"]["n"] == 18
    inside = _inside(held, _Pools(fitted + held), frozenset(), [wide["serve"]])
    assert inside.mean() >= 0.8
    few = held[:3]  # one source: too few to calibrate on, all rows count
    assert calibrate_tails(fitted + few) == calibrate_tails(
        fitted + [{**x, "holdout": False} for x in few]
    )


def test_holdout_rows_count_as_targets_from_8_rows_of_4_sources():
    """A kind's tail covers its holdout rows only where they are >= MIN_ROWS (8) from >=
    MIN_SOURCES (4) sources; 7 rows, or 8 from 3 sources, leave all its rows the targets."""
    from emu.validation._intervals import _targets

    fitted = [{"id": f"f{i}", "source": f"f{i}", "group": "train/x", "r": 0.0} for i in range(9)]

    def held(n, sources):
        return [
            {"id": f"h{i}", "source": f"h{i % sources}", "group": "train/x", "r": 1.0,
             "holdout": True}
            for i in range(n)
        ]  # fmt: skip

    assert _targets(fitted + held(8, 4)) == held(8, 4)
    assert _targets(fitted + held(7, 4)) == fitted + held(7, 4)
    assert _targets(fitted + held(8, 3)) == fitted + held(8, 3)
