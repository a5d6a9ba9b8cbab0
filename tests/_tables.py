"""Reading the tables `emu sweep/search --out` and `emu.search.write_table` write: CSV with
a header, numbers, empty fields where a value does not apply, and the names of choice knobs
("full", "false")."""

import csv

import numpy as np


def read_table(path) -> dict[str, np.ndarray]:
    """Column name -> values: floats (an empty field is NaN) where every field is a number
    or empty, else the strings."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    out = {}
    for j, name in enumerate(header):
        col = [r[j] for r in body]
        try:
            out[name] = np.array([float(x) if x else np.nan for x in col])
        except ValueError:
            out[name] = np.array(col)
    return out
