"""`emu validate`: predict published measurements and report the error of every row.

Rows follow ../shared/data/MEASUREMENTS.md. Three parts, one question each:
- rows (`read_rows`, `row_model`, `row_plan`): what does a row say, and which model and plan
  does it describe (with the documented defaults for what it leaves out)?
- prediction (`prepare_rows`, `predict_items`, `predict_metric`): what does emu predict for
  the row's metric, as published? Rows with the same program structure are stacked and
  evaluated in one vmapped call.
- report (`validate_file`, `validate_rows`, `summarise`, `format_report`, `plot_report`):
  how far off is each row, and overall?

Error = |predicted - measured| / measured on the metric as published.
"""

from emu.validation._predict import (
    Item,
    message_bytes,
    predict_allreduce_busbw,
    predict_items,
    predict_metric,
    predict_moe_comm,
    prepare_rows,
    run_groups,
)
from emu.validation._report import (
    KINDS,
    format_report,
    plot_report,
    summarise,
    validate_file,
    validate_rows,
)
from emu.validation._rows import RowPlan, default_measurements, read_rows, row_model, row_plan

__all__ = [
    "validate_file",
    "validate_rows",
    "format_report",
    "plot_report",
    "summarise",
    "default_measurements",
    "read_rows",
    "row_model",
    "row_plan",
    "RowPlan",
    "Item",
    "prepare_rows",
    "predict_items",
    "predict_metric",
    "predict_allreduce_busbw",
    "predict_moe_comm",
    "message_bytes",
    "run_groups",
    "KINDS",
]
