import jax
import pytest

# STYLE.md: strict dtype promotion so a stray float64 or int never slips into a computation.
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture(scope="session")
def catalog():
    from emu.config import load_model, load_system

    return {
        "cm": load_system("cloudmatrix384"),
        "nvl72": load_system("gb200_nvl72"),
        "h100": load_system("dgx_h100"),
        "a100": load_system("dgx_a100"),
        "llama70": load_model("llama3_70b"),
        "llama8": load_model("llama3_8b"),
        "gpt175": load_model("gpt3_175b"),
    }
