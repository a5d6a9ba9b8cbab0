"""`emu validate`: predict published measurements, report the error of every row and how
often the 80% intervals cover the measurement.

Rows follow ../shared/data/MEASUREMENTS.md. The parts, one question each:
- rows (`read_rows`, `check_row`, `row_weight`, `row_model`): what does a row say, may it
  be modelled (chip count, unit), how much does the fit trust it, which model is it?
- plans (`row_plan`, `script_plan`, `serving_row`): which plan or deployment does it
  describe, with the documented default for what it leaves out?
- collectives (`message_bytes`, `moe_comm_setup`, `predict_allreduce_busbw`,
  `predict_moe_comm`): what does a collective row measure, and emu's value of it?
- prediction (`prepare_rows`, `predict_items`, `predict_metric`): what does emu predict for
  the row's metric, as published? Rows with the same program structure are stacked and
  evaluated in one vmapped call.
- intervals (`quantile_table`, `calibrate_tails`, `calibrate_tail`, `coverage`): the 80%
  band of a prediction from cross-validated residuals, its tail calibrated per kind, and how
  often it covers out of sample.
- report (`validate_file`, `validate_rows`, `summarise`, `format_report`, `plot_report`):
  how far off is each row, and overall?
- explanation (`explain_row`, `RowExplanation`): how was one row modelled, part by part
  (`emu validate --row ID`)?

Error = |predicted - measured| / measured on the metric as published.
"""

from typing import TYPE_CHECKING

from emu._lazy import lazy_dir, lazy_getattr

#: public name -> the submodule that defines it; imported on first use (PEP 562), so that
#: `from emu.validation._x import y` (the CLI's flags) does not import every part, and JAX with them
_NAMES = {
    "DEFAULT_MESSAGE_BYTES": "emu.validation._collectives",
    "allreduce_algorithm": "emu.validation._collectives",
    "collective_link": "emu.validation._collectives",
    "message_bytes": "emu.validation._collectives",
    "message_size": "emu.validation._collectives",
    "moe_comm_setup": "emu.validation._collectives",
    "predict_allreduce_busbw": "emu.validation._collectives",
    "predict_moe_comm": "emu.validation._collectives",
    "TAIL_GRID": "emu.validation._intervals",
    "calibrate_tail": "emu.validation._intervals",
    "calibrate_tails": "emu.validation._intervals",
    "tails_text": "emu.validation._intervals",
    "coverage": "emu.validation._intervals",
    "residual_records": "emu.validation._intervals",
    "quantile_table": "emu.validation._intervals",
    "DEFAULT_MOE_IMBALANCE": "emu.validation._plans",
    "OFFLINE_MAX_BATCH": "emu.validation._plans",
    "trtllm_row": "emu.validation._plans",
    "kv_precision": "emu.validation._plans",
    "PREFILL_CHUNK_TOKENS": "emu.validation._plans",
    "RowPlan": "emu.validation._plans",
    "ServingRow": "emu.validation._plans",
    "lengths": "emu.validation._plans",
    "needs_serving_rule": "emu.validation._plans",
    "row_plan": "emu.validation._plans",
    "script_plan": "emu.validation._plans",
    "states_no_degrees": "emu.validation._plans",
    "states_nothing": "emu.validation._plans",
    "serving_row": "emu.validation._plans",
    "speculation": "emu.validation._plans",
    "MFU_PEAK_FLOPS": "emu.validation._predict",
    "Item": "emu.validation._predict",
    "item_group": "emu.validation._predict",
    "mfu_peak": "emu.validation._predict",
    "chips_per_unit": "emu.validation._predict",
    "predict_items": "emu.validation._predict",
    "predict_metric": "emu.validation._predict",
    "prepare_rows": "emu.validation._predict",
    "with_referenced_notes": "emu.validation._predict",
    "run_groups": "emu.validation._predict",
    "serving_rate": "emu.validation._predict",
    "deployment_rate": "emu.validation._predict",
    "KINDS": "emu.validation._rows",
    "RowExplanation": "emu.validation._explain",
    "explain_row": "emu.validation._explain",
    "coverage_of_file": "emu.validation._report",
    "error_stats": "emu.validation._report",
    "stats_line": "emu.validation._report",
    "format_report": "emu.validation._report",
    "plot_report": "emu.validation._report",
    "read_residuals": "emu.validation._report",
    "residuals_path": "emu.validation._report",
    "summarise": "emu.validation._report",
    "validate_file": "emu.validation._report",
    "validate_rows": "emu.validation._report",
    "CONFIDENCE_CONFIG": "emu.validation._rows",
    "CONFIDENCE_VALUE": "emu.validation._rows",
    "DEFAULT_TRAIN_SEQ": "emu.validation._rows",
    "DEFAULT_HEAD_WIDTH": "emu.validation._rows",
    "DENSE_CATALOG": "emu.validation._rows",
    "MODEL_FIELDS": "emu.validation._rows",
    "MAX_CHIPS": "emu.validation._rows",
    "METRIC_UNITS": "emu.validation._rows",
    "TIME_METRICS": "emu.validation._rows",
    "approximations": "emu.validation._rows",
    "check_row": "emu.validation._rows",
    "default_measurements": "emu.validation._rows",
    "dense_catalog_of": "emu.validation._rows",
    "read_rows": "emu.validation._rows",
    "row_model": "emu.validation._rows",
    "row_source": "emu.validation._rows",
    "row_text": "emu.validation._rows",
    "row_weight": "emu.validation._rows",
    "speed_sign": "emu.validation._rows",
    "train_seq_len": "emu.validation._rows",
}


if TYPE_CHECKING:  # the same names for type checkers and the docs (griffe)
    from emu.validation._collectives import (
        DEFAULT_MESSAGE_BYTES,
        allreduce_algorithm,
        collective_link,
        message_bytes,
        message_size,
        moe_comm_setup,
        predict_allreduce_busbw,
        predict_moe_comm,
    )
    from emu.validation._explain import RowExplanation, explain_row
    from emu.validation._intervals import (
        TAIL_GRID,
        calibrate_tail,
        calibrate_tails,
        coverage,
        quantile_table,
        residual_records,
        tails_text,
    )
    from emu.validation._plans import (
        DEFAULT_MOE_IMBALANCE,
        OFFLINE_MAX_BATCH,
        PREFILL_CHUNK_TOKENS,
        RowPlan,
        ServingRow,
        kv_precision,
        lengths,
        needs_serving_rule,
        row_plan,
        script_plan,
        serving_row,
        speculation,
        states_no_degrees,
        states_nothing,
        trtllm_row,
    )
    from emu.validation._predict import (
        MFU_PEAK_FLOPS,
        Item,
        chips_per_unit,
        deployment_rate,
        item_group,
        mfu_peak,
        predict_items,
        predict_metric,
        prepare_rows,
        run_groups,
        serving_rate,
        with_referenced_notes,
    )
    from emu.validation._report import (
        coverage_of_file,
        error_stats,
        format_report,
        plot_report,
        read_residuals,
        residuals_path,
        stats_line,
        summarise,
        validate_file,
        validate_rows,
    )
    from emu.validation._rows import (
        CONFIDENCE_CONFIG,
        CONFIDENCE_VALUE,
        DEFAULT_HEAD_WIDTH,
        DEFAULT_TRAIN_SEQ,
        DENSE_CATALOG,
        KINDS,
        MAX_CHIPS,
        METRIC_UNITS,
        MODEL_FIELDS,
        TIME_METRICS,
        approximations,
        check_row,
        default_measurements,
        dense_catalog_of,
        read_rows,
        row_model,
        row_source,
        row_text,
        row_weight,
        speed_sign,
        train_seq_len,
    )


__getattr__ = lazy_getattr(__name__, _NAMES, globals())
__dir__ = lazy_dir(globals())


__all__ = [
    "validate_file",
    "explain_row",
    "RowExplanation",
    "validate_rows",
    "format_report",
    "plot_report",
    "summarise",
    "error_stats",
    "stats_line",
    "coverage_of_file",
    "read_residuals",
    "residuals_path",
    "default_measurements",
    "read_rows",
    "check_row",
    "row_weight",
    "row_text",
    "row_model",
    "dense_catalog_of",
    "train_seq_len",
    "DEFAULT_TRAIN_SEQ",
    "DEFAULT_HEAD_WIDTH",
    "DENSE_CATALOG",
    "MODEL_FIELDS",
    "row_source",
    "row_plan",
    "script_plan",
    "states_no_degrees",
    "states_nothing",
    "serving_row",
    "needs_serving_rule",
    "speculation",
    "kv_precision",
    "trtllm_row",
    "lengths",
    "approximations",
    "speed_sign",
    "RowPlan",
    "ServingRow",
    "Item",
    "item_group",
    "prepare_rows",
    "with_referenced_notes",
    "predict_items",
    "predict_metric",
    "serving_rate",
    "deployment_rate",
    "mfu_peak",
    "chips_per_unit",
    "predict_allreduce_busbw",
    "message_size",
    "predict_moe_comm",
    "message_bytes",
    "allreduce_algorithm",
    "moe_comm_setup",
    "collective_link",
    "run_groups",
    "quantile_table",
    "calibrate_tail",
    "calibrate_tails",
    "tails_text",
    "coverage",
    "residual_records",
    "KINDS",
    "TAIL_GRID",
    "TIME_METRICS",
    "METRIC_UNITS",
    "MAX_CHIPS",
    "MFU_PEAK_FLOPS",
    "CONFIDENCE_VALUE",
    "CONFIDENCE_CONFIG",
    "DEFAULT_MESSAGE_BYTES",
    "DEFAULT_MOE_IMBALANCE",
    "OFFLINE_MAX_BATCH",
    "PREFILL_CHUNK_TOKENS",
]
