"""The per-sample store resumes only samples of the same weights: a model dir trained again (same
path, new weight files) gets its samples drawn again instead of the old model's being reused."""

import os

from rlattn.eval.runner import SampleStore, weights_id


def _record(model, pid="p0"):
    return {"model": model, "dataset": "arith_test", "problem_id": pid, "sample_index": 0, "completion": "x",
            "fingerprint": "f"}


def test_a_retrained_model_dir_does_not_reuse_old_samples(tmp_path):
    model = tmp_path / "adapter"
    model.mkdir()
    (model / "adapter_model.safetensors").write_bytes(b"old weights")
    (model / "README.md").write_text("not a weight file")
    spec = str(model)
    store = SampleStore(tmp_path / "samples.jsonl", "f")
    store.append([_record(spec)])
    assert SampleStore(tmp_path / "samples.jsonl", "f").get(spec, "arith_test", "p0", 0) is not None  # resumed
    (model / "README.md").write_text("edited")  # not a weight file: the same weights
    assert SampleStore(tmp_path / "samples.jsonl", "f").get(spec, "arith_test", "p0", 0) is not None
    (model / "adapter_model.safetensors").write_bytes(b"new weights, trained again")
    os.utime(model / "adapter_model.safetensors", ns=(1, 1))
    assert SampleStore(tmp_path / "samples.jsonl", "f").get(spec, "arith_test", "p0", 0) is None  # drawn again


def test_specs_that_are_not_directories_have_no_weights_id(tmp_path):
    assert weights_id("embedded:smollm2-135m-instruct") is None
    assert weights_id(str(tmp_path / "missing")) is None
    store = SampleStore(tmp_path / "s.jsonl", "f")
    store.append([_record("embedded:smollm2-135m-instruct")])
    assert SampleStore(tmp_path / "s.jsonl", "f").get("embedded:smollm2-135m-instruct", "arith_test", "p0", 0)["weights"] is None
