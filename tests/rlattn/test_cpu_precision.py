"""``cpu_precision``: on a CPU without native bf16/fp16 kernels the recipes' half precision runs ~100x
slower than float32 (measured: a 1024² matmul at 1.0 GFLOPS in bf16, 159 in fp32, on an AVX2-only
EPYC; bench/cpu_dtypes.py), so ``auto`` trains, evaluates and filters in float32 there; ``keep`` leaves the config alone.

The CPU's answer is patched both ways (``rlattn.utils.cpu_has_native``), so every rule is checked on
any machine; one test reads the real answer and only checks that it is a plain bool."""

import pytest

import rlattn.config
import rlattn.utils
from rlattn.config import AttnCreditConfig
from rlattn.utils import cpu_has_native, fast_cpu_dtype


@pytest.fixture
def cpu(monkeypatch):
    """``cpu(native=...)``: this CPU has (True) or lacks (False) native bf16/fp16 kernels; work runs on the CPU."""

    def set_cpu(native: bool):
        monkeypatch.setattr(rlattn.utils, "cpu_has_native", lambda dtype: native or dtype not in ("bfloat16", "float16"))
        monkeypatch.setattr(rlattn.config, "runs_on_cpu", lambda use_cpu=False: True)

    return set_cpu


def make_config(tmp_path, **kw):
    return AttnCreditConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)


def test_the_real_probe_answers_a_bool_and_full_precision_is_always_native():
    assert isinstance(cpu_has_native("bfloat16"), bool) and isinstance(cpu_has_native("float16"), bool)
    assert cpu_has_native("float32") and cpu_has_native("auto")


@pytest.mark.parametrize("native, policy, on_cpu, dtype, want", [
    (False, "auto", True, "bfloat16", "float32"),   # the case the key is for
    (False, "auto", True, "float16", "float32"),
    (False, "auto", True, "float32", "float32"),
    (False, "auto", True, "auto", "auto"),          # the checkpoint's own dtype is not second-guessed
    (False, "keep", True, "bfloat16", "bfloat16"),  # the user asked for it
    (False, "auto", False, "bfloat16", "bfloat16"),  # an accelerator does the work
    (True, "auto", True, "bfloat16", "bfloat16"),   # AVX-512 / AMX: bf16 is the fast choice
])
def test_fast_cpu_dtype_rule(cpu, native, policy, on_cpu, dtype, want):
    cpu(native)
    assert fast_cpu_dtype(dtype, policy, on_cpu) == want


def test_config_turns_bf16_autocast_off_without_native_kernels(cpu, tmp_path):
    cpu(False)
    for bf16 in (True, None):  # None: TRL's default, which becomes True
        args = make_config(tmp_path, bf16=bf16)
        assert (args.bf16, args.fp16, args.cpu_precision_fallback) == (False, False, "bfloat16")
        assert args.mixed_precision == "no"  # what the Accelerator will be built with
    args = make_config(tmp_path, bf16=True, cpu_precision="keep")
    assert args.bf16 and args.cpu_precision_fallback is None and args.mixed_precision == "bf16"
    args = make_config(tmp_path, bf16=False)  # float32 already: nothing to give up
    assert args.cpu_precision_fallback is None


def test_config_keeps_bf16_where_the_cpu_has_it(cpu, tmp_path):
    cpu(True)
    args = make_config(tmp_path, bf16=True)
    assert args.bf16 and args.cpu_precision_fallback is None


def test_config_rejects_an_unknown_choice_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"cpu_precision='fast' is not one of 'auto', 'keep'"):
        make_config(tmp_path, cpu_precision="fast")


def test_parsed_recipe_loads_the_model_in_float32_and_says_so(cpu, tmp_path, caplog):
    from rlattn.cli import parse_grpo_args

    cpu(False)
    out = ["--output_dir", str(tmp_path)]
    with caplog.at_level("WARNING", logger="rlattn"):
        _, args, model_args = parse_grpo_args(["recipes/anchor_credit.yaml", *out])
    assert (model_args.dtype, args.bf16, args.cpu_precision_fallback) == ("float32", False, "bfloat16")
    assert "no native bfloat16 kernels" in caplog.text and "cpu_precision: keep" in caplog.text
    _, args, model_args = parse_grpo_args(["recipes/anchor_credit.yaml", *out, "--cpu_precision", "keep"])
    assert (model_args.dtype, args.bf16, args.cpu_precision_fallback) == ("bfloat16", True, None)
    # bf16 autocast off but bf16 weights asked for: the weights alone are enough to fall back
    _, args, model_args = parse_grpo_args(["recipes/anchor_credit.yaml", *out, "--bf16", "false"])
    assert (model_args.dtype, args.cpu_precision_fallback) == ("float32", "bfloat16")
    cpu(True)
    _, args, model_args = parse_grpo_args(["recipes/anchor_credit.yaml", *out])
    assert (model_args.dtype, args.bf16, args.cpu_precision_fallback) == ("bfloat16", True, None)


def test_cpu_vllm_engine_follows_the_fallback(cpu, tmp_path, monkeypatch):
    from rlattn.rollouts import factory

    monkeypatch.setattr("rlattn.rollouts.vllm_cpu.vllm_available", lambda: (True, ""))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cpu(False)
    args = make_config(tmp_path, bf16=True, rollout_backend="vllm")
    assert factory.resolve_rollout(args, model_path="m").engine_options["dtype"] == "float32"
    args = make_config(tmp_path, bf16=True, rollout_backend="vllm", cpu_precision="keep")
    assert "dtype" not in factory.resolve_rollout(args, model_path="m").engine_options  # the engine's default


def test_evaluation_and_filter_configs_share_the_rule(cpu):
    from rlattn.analysis.difficulty import DifficultyConfig
    from rlattn.eval.config import EvalConfig
    from rlattn.eval.runner import _effective_dtype

    cpu(False)
    assert _effective_dtype(EvalConfig(models=["tiny:llama"], datasets=["gsm8k_test"], dtype="bfloat16"), "cpu") == "float32"
    assert _effective_dtype(EvalConfig(models=["tiny:llama"], datasets=["gsm8k_test"], dtype="bfloat16",
                                       cpu_precision="keep"), "cpu") == "bfloat16"
    assert _effective_dtype(EvalConfig(models=["tiny:llama"], datasets=["gsm8k_test"], dtype="bfloat16"), "cuda") == "bfloat16"
    with pytest.raises(ValueError, match="cpu_precision='fast'"):
        EvalConfig(models=["tiny:llama"], datasets=["gsm8k_test"], cpu_precision="fast")
    with pytest.raises(ValueError, match="cpu_precision='fast'"):
        DifficultyConfig(cpu_precision="fast")
