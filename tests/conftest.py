import jax
import pytest

# STYLE.md: strict dtype promotion so a stray float64 or int never slips into a computation.
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(scope="session")
def catalog():
    from emu.catalog import load_model, load_system

    return {
        "cm": load_system("cloudmatrix384"),
        "nvl72": load_system("gb200_nvl72"),
        "h100": load_system("dgx_h100"),
        "a100": load_system("dgx_a100"),
        "llama70": load_model("llama3_70b"),
        "llama8": load_model("llama3_8b"),
        "gpt175": load_model("gpt3_175b"),
    }


@pytest.fixture(scope="session")
def validate_reports():
    """`emu validate` on the pinned 141-row set and on the packaged default set (computed
    once per session; several test modules read them)."""
    from pathlib import Path

    from emu.validation import default_measurements, validate_file

    pinned = Path(__file__).resolve().parent / "data" / "measurements_141.jsonl"
    return {"141": validate_file(pinned), "default": validate_file(default_measurements())}
