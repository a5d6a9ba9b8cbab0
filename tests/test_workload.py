import pytest

from emu.config import load_model
from emu.workload import model_flops_per_token, params_total


@pytest.mark.parametrize(
    "name,billions",
    [
        ("gpt3_175b", 174.6),  # SC21 Table 2 (tied embeddings, vocab 51200)
        ("gpt_530b", 529.6),  # SC21 Table 1
        ("llama3_8b", 8.03),  # Llama 3 Table 3
        ("llama3_70b", 70.6),
        ("llama3_405b", 405.9),
    ],
)
def test_parameter_counts(name, billions):
    assert float(params_total(load_model(name))) / 1e9 == pytest.approx(billions, rel=0.005)


def test_model_flops_match_nemo_convention():
    # NeMo 24.07 (measurements row nemo2407_pre_LLAMA2-7B_8): 780 TFLOP/s/GPU at
    # 16,934 tokens/s/GPU => 46.06 GFLOP per token at seq 4096.
    m = load_model("llama2_7b")
    assert float(model_flops_per_token(m, 4096.0)) == pytest.approx(780e12 / 16934, rel=0.005)
