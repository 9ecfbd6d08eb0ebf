"""The streaming attention statistics on CUDA equal the naive full-map reference.

The reference is tests/credit/test_attention_stats.py's: the eager model's N×N maps and the
definitions applied literally with Python loops, run on a CPU copy of the same weights (fp32,
float64 sums). The engine runs on the GPU: fp32 models to 1e-4 as on CPU (TF32 off, PyTorch's
default), bf16 models close to the fp32 reference, sdpa kernels, PEFT, and a long sequence with
small chunks against the vectorised full-map way of bench/attention_stats.py.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import os
from pathlib import Path

import pytest
import torch

# RLATTN_GPU_TEST_DEVICE=cpu runs these on the CPU, to check the tests themselves where no GPU is
DEVICE = torch.device(os.environ.get("RLATTN_GPU_TEST_DEVICE", "cuda"))
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                                                  reason="needs a CUDA device")]

_REF = Path(__file__).resolve().parents[1] / "credit" / "test_attention_stats.py"


def _reference_module():
    spec = importlib.util.spec_from_file_location("attention_stats_reference", _REF)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


REF = _reference_module()


def on_cpu(stats):
    return dataclasses.replace(stats, **{f.name: getattr(stats, f.name).cpu() for f in dataclasses.fields(stats)
                                         if isinstance(getattr(stats, f.name), torch.Tensor)})


def device_stats(model, ids, attn, resp, cfg):
    from rlattn.credit.attention_stats import compute_attention_stats

    dev = DEVICE
    s = compute_attention_stats(model.to(dev), ids.to(dev), attn.to(dev), resp.to(dev), cfg)
    assert s.waad.device.type == dev.type and s.waad.dtype == torch.float32 and s.fai.dtype == torch.float32
    return on_cpu(s)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "chunked"])
def test_fp32_matches_naive_reference(arch, chunked):
    from rlattn.credit.attention_stats import AttentionStatsConfig
    from rlattn.testing import tiny_model

    model, _ = tiny_model(arch, num_layers=4, num_heads=4, num_kv_heads=2, hidden_size=32, seed=1)
    cfg = (AttentionStatsConfig(window=3, fai_horizon=(1, 5), chunk_size=3, local_quantile=0.5, global_quantile=0.25)
           if chunked else AttentionStatsConfig(window=4, fai_horizon=(2, 7)))
    ids, attn, resp = REF.trl_batch([5, 9, 3], [14, 6, 1], seed=2)
    ref = REF.naive_stats(model, ids, attn, resp, cfg)  # CPU, before the model moves
    REF.assert_matches(device_stats(model, ids, attn, resp, cfg), ref)


def test_sdpa_and_peft_on_cuda_match_reference():
    peft = pytest.importorskip("peft")
    from rlattn.credit.attention_stats import AttentionStatsConfig
    from rlattn.testing import tiny_model

    eager, _ = tiny_model("qwen3", num_layers=2, seed=4, attn_implementation="eager")
    sdpa, _ = tiny_model("qwen3", num_layers=2, seed=4, attn_implementation="sdpa")
    cfg = AttentionStatsConfig(window=4, fai_horizon=(2, 6))
    ids, attn, resp = REF.trl_batch([6, 2], [9, 12], seed=7)
    REF.assert_matches(device_stats(sdpa, ids, attn, resp, cfg), REF.naive_stats(eager, ids, attn, resp, cfg))
    lora_cfg = peft.LoraConfig(r=4, target_modules=["q_proj", "k_proj"], init_lora_weights=False)
    eager_lora = peft.get_peft_model(eager, lora_cfg)
    sdpa_lora = peft.get_peft_model(tiny_model("qwen3", num_layers=2, seed=4, attn_implementation="sdpa")[0], copy.deepcopy(lora_cfg))
    sdpa_lora.load_state_dict(eager_lora.state_dict())
    ref = REF.naive_stats(eager_lora.get_base_model(), ids, attn, resp, cfg)
    REF.assert_matches(device_stats(sdpa_lora, ids, attn, resp, cfg), ref)


def test_bf16_model_on_cuda_is_close_to_fp32_reference():
    from rlattn.credit.attention_stats import AttentionStatsConfig
    from rlattn.testing import tiny_model

    m32, _ = tiny_model("qwen3", num_layers=2, seed=5)
    m16, _ = tiny_model("qwen3", num_layers=2, seed=5, dtype=torch.bfloat16, attn_implementation="sdpa")
    ids, attn, resp = REF.trl_batch([4, 6], [10, 8], seed=1)
    cfg = AttentionStatsConfig(window=4, fai_horizon=(2, 6))
    waad, fai, *_ = REF.naive_stats(m32, ids, attn, resp, cfg)
    s16 = device_stats(m16, ids, attn, resp, cfg)
    # bf16 q/k carry ~3 significant digits: close, not equal (the CPU test's tolerances)
    torch.testing.assert_close(s16.waad.double(), waad, atol=0.1, rtol=0)
    torch.testing.assert_close(s16.fai.double(), fai, atol=0.02, rtol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_long_sequence_small_chunks_match_full_maps_on_cuda(dtype, gpu_report):
    """N = 2048 on a Qwen3-shaped model with 8 query / 2 KV heads: the streaming engine with 64-row
    chunks against the vectorised full-map statistics, both on the GPU. In bf16 the eager maps are
    bf16 while rlattn's softmax is fp32, so the two agree to bf16 precision; where near-equal head
    spans put different heads in a group, only the spans are compared."""
    from attention_stats import paper_way_stats
    from gpu_models import build_model, qwen3_config, set_attn_implementation

    from rlattn.credit.attention_stats import AttentionStatsConfig, _select, compute_attention_stats

    config = qwen3_config("qwen3-4b", hidden_size=128, num_attention_heads=8, num_key_value_heads=2, head_dim=16,
                          intermediate_size=256, vocab_size=512, num_hidden_layers=6, attn_implementation="eager")
    model = build_model(config, device=DEVICE, dtype=dtype, init_std=0.2)
    n, prompt = 2048, 64
    ids = torch.randint(0, 512, (1, n), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    attn = torch.ones_like(ids)
    resp = torch.zeros_like(ids, dtype=torch.bool)
    resp[:, prompt:] = True
    cfg = AttentionStatsConfig(layers=[2, 3, 4], chunk_size=64)
    with torch.no_grad():
        waad, fai, span = paper_way_stats(model, ids, attn, resp, cfg)
        set_attn_implementation(model, "sdpa")
        s = compute_attention_stats(model, ids, attn, resp, cfg)
    fp32 = dtype == torch.float32
    torch.testing.assert_close(s.head_span[0], span, rtol=1e-4 if fp32 else 3e-2, atol=1e-3 if fp32 else 1.0)
    same_heads = bool(torch.equal(s.local_heads[0], _select(span[None], cfg.local_quantile, False)[0])
                      and torch.equal(s.global_heads[0], _select(span[None], cfg.global_quantile, True)[0]))
    dw = float((s.waad[0] - waad).abs().max())
    df = float((s.fai[0] - fai).nan_to_num().abs().max())
    gpu_report(max_abs_diff_waad=dw, max_abs_diff_fai=df, same_head_groups=same_heads)
    if fp32 or same_heads:
        assert same_heads, "fp32: the head groups must be the same"
        assert dw <= (1e-4 if fp32 else 0.1) and df <= (1e-4 if fp32 else 0.02), (dw, df)
