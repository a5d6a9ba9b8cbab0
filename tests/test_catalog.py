import re

import pytest

from emu.catalog import config_dir, list_models, list_systems, load_model, load_system


def test_catalog_has_every_system_of_the_issue():
    want = {
        "cloudmatrix384",
        "gb200_nvl72",
        "gb300_nvl72",
        "dgx_b200",
        "dgx_b300",
        "dgx_h100",
        "dgx_h200",
        "hgx_h800",
        "dgx_a100",
        "atlas800t_a2",
    }
    assert want <= set(list_systems())


@pytest.mark.parametrize("name", list_systems())
def test_system_loads_and_every_number_cites_a_source(name):
    load_system(name)
    for i, line in enumerate((config_dir() / "systems" / f"{name}.toml").read_text().splitlines()):
        if re.match(r"\s*[a-z0-9_]+\s*=\s*[-+0-9.]", line):
            assert "#" in line, f"{name}.toml line {i + 1} has no source comment: {line}"


@pytest.mark.parametrize("name", list_models())
def test_models_load(name):
    assert float(load_model(name).n_layers) >= 1
