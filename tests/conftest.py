import os

import jax
import pytest

from emu import storage

# STYLE.md: strict dtype promotion so a stray float64 or int never slips into a computation.
jax.config.update("jax_numpy_dtype_promotion", "strict")

# JAX's persistent compilation cache, the one the CLI uses (`$XDG_CACHE_HOME/emu/jax`),
# switched on here, before the session's first compilation: JAX decides at its first compile
# whether a process uses the cache (jax._src.compilation_cache.is_cache_used is checked once),
# so the CLI's own `enable_compilation_cache()` inside an in-process CLI test came too late and
# every program of the session was compiled from scratch. With it, a program compiled by two
# jit objects (`analysis._evaluate` and `policy._evaluate`, a test's own `jax.jit(...)`), or by
# an earlier session or a CLI subprocess, is compiled once. The cache changes only where an
# executable comes from, not what it computes (its key is the HLO, the compile options and the
# jax/jaxlib versions).
storage.enable_compilation_cache()
#: the folder of that cache. A subprocess shares it only under the same path: the path is part
#: of every cache key (XLA's compile options name it).
JAX_CACHE = str(jax.config.jax_compilation_cache_dir)


@pytest.fixture(scope="session")
def shared_jax_cache():
    """`env(path)` -> the environment of a subprocess whose XDG_CACHE_HOME is the fresh folder
    `path` (its own sweep and calibration checkpoints) but whose compiled programs come from
    and go to the session's JAX cache (JAX_COMPILATION_CACHE_DIR, which
    `storage.enable_compilation_cache` keeps), so a test that starts several `emu` processes on
    fresh cache folders compiles each program once, not once per process."""

    def env(path) -> dict[str, str]:
        return {**os.environ, "XDG_CACHE_HOME": str(path), "JAX_COMPILATION_CACHE_DIR": JAX_CACHE}

    return env


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
