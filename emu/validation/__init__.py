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
- intervals (`quantile_table`, `calibrate_tail`, `coverage`): the 80% band of a prediction
  from cross-validated residuals, and how often it covers out of sample.
- report (`validate_file`, `validate_rows`, `summarise`, `format_report`, `plot_report`):
  how far off is each row, and overall?

Error = |predicted - measured| / measured on the metric as published.
"""

from emu.validation._collectives import (
    DEFAULT_MESSAGE_BYTES,
    allreduce_algorithm,
    collective_link,
    message_bytes,
    moe_comm_setup,
    predict_allreduce_busbw,
    predict_moe_comm,
)
from emu.validation._intervals import TAIL_GRID, calibrate_tail, coverage, quantile_table
from emu.validation._plans import (
    DEFAULT_MOE_IMBALANCE,
    OFFLINE_MAX_BATCH,
    PREFILL_CHUNK_TOKENS,
    RowPlan,
    ServingRow,
    lengths,
    needs_serving_rule,
    row_plan,
    script_plan,
    serving_row,
    speculation,
)
from emu.validation._predict import (
    MFU_PEAK_FLOPS,
    Item,
    item_group,
    mfu_peak,
    predict_items,
    predict_metric,
    prepare_rows,
    run_groups,
    serving_rate,
)
from emu.validation._report import (
    KINDS,
    coverage_of_file,
    error_stats,
    format_report,
    plot_report,
    read_residuals,
    residuals_path,
    summarise,
    validate_file,
    validate_rows,
)
from emu.validation._rows import (
    CONFIDENCE_CONFIG,
    CONFIDENCE_VALUE,
    MAX_CHIPS,
    METRIC_UNITS,
    TIME_METRICS,
    approximations,
    check_row,
    default_measurements,
    read_rows,
    row_model,
    row_text,
    row_weight,
    speed_sign,
)

__all__ = [
    "validate_file",
    "validate_rows",
    "format_report",
    "plot_report",
    "summarise",
    "error_stats",
    "coverage_of_file",
    "read_residuals",
    "residuals_path",
    "default_measurements",
    "read_rows",
    "check_row",
    "row_weight",
    "row_text",
    "row_model",
    "row_plan",
    "script_plan",
    "serving_row",
    "needs_serving_rule",
    "speculation",
    "lengths",
    "approximations",
    "speed_sign",
    "RowPlan",
    "ServingRow",
    "Item",
    "item_group",
    "prepare_rows",
    "predict_items",
    "predict_metric",
    "serving_rate",
    "mfu_peak",
    "predict_allreduce_busbw",
    "predict_moe_comm",
    "message_bytes",
    "allreduce_algorithm",
    "moe_comm_setup",
    "collective_link",
    "run_groups",
    "quantile_table",
    "calibrate_tail",
    "coverage",
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
