"""The CPU side of the GPU check (bench/gpu_check.sh): what can go wrong before a GPU is ever lent.

- the scripts parse (``bash -n``), and gpu_check.sh, without wheels, stops after the install part
  and still writes its log and summary;
- bench/gpu_wheels.txt names every package that rlattn, trl, datasets and math-verify need and the
  GPU image (bench/gpu_image.txt) lacks, at the versions tested here; with the wheels collected
  (bench/gpu_wheels.sh) an offline install for Python 3.12 resolves against the image;
- the gpu tests skip, with a reason, where CUDA is absent, and still write their report;
- the model builders make Qwen3-4B / 0.6B shapes (on the meta device: no memory), and both
  benchmarks run end to end on CPU at tiny size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import torch
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

# the GPU machine: CPython 3.12 on Linux x86_64
TARGET = dict(default_environment(), python_version="3.12", python_full_version="3.12.3", sys_platform="linux",
              platform_system="Linux", platform_machine="x86_64", implementation_name="cpython",
              platform_python_implementation="CPython", os_name="posix")
ROOTS = ("rlattn", "trl", "datasets", "math-verify")


def pins(path: Path) -> dict[str, str | None]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version or None
    return out


def requirements(name: str, extras=()) -> list[Requirement]:
    reqs = []
    for text in metadata.distribution(name).requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate(dict(TARGET, extra=e)) for e in ("", *extras)):
            reqs.append(req)
    return reqs


def test_scripts_parse():
    for script in ("gpu_check.sh", "gpu_wheels.sh"):
        subprocess.run(["bash", "-n", str(BENCH / script)], check=True)


def test_wheel_list_covers_what_the_image_lacks():
    image = pins(BENCH / "gpu_image.txt")
    carried = pins(BENCH / "gpu_wheels.txt")
    fallback = pins(BENCH / "gpu_fallback_wheels.txt")
    assert not set(carried) & set(image), ("carried although on the image", set(carried) & set(image))
    need, todo = set(), [(canonicalize_name(r), ()) for r in ROOTS]
    while todo:  # the requirement closure, stopping at what the image has
        name, extras = todo.pop()
        if name in need:
            continue
        need.add(name)
        for req in requirements(name, extras):
            dep = canonicalize_name(req.name)
            if dep not in image:
                todo.append((dep, tuple(req.extras)))
    missing = need - set(carried) - {"rlattn"}
    assert not missing, f"add to bench/gpu_wheels.txt (not on the GPU image): {sorted(missing)}"
    for name, version in {**carried, **fallback}.items():  # the versions tested here
        assert version == metadata.version(name), (name, version, metadata.version(name))
    for dep_of in need:  # the carried versions satisfy every requirement on them
        for req in requirements(dep_of):
            name = canonicalize_name(req.name)
            version = carried.get(name) or fallback.get(name) or image.get(name)
            if version is not None:
                assert req.specifier.contains(version, prereleases=True), (dep_of, str(req), version)


def _stub_wheel(folder: Path, name: str, version: str) -> None:
    """A wheel with metadata only: stands for a package installed on the image."""
    dist = f"{name.replace('-', '_')}-{version}"
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as z:
        z.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        z.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: stub\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}.dist-info/RECORD", "")


@pytest.mark.skipif(not (BENCH / "gpu_wheels").is_dir(), reason="bench/gpu_wheels/ not collected (bash bench/gpu_wheels.sh)")
def test_offline_install_resolves_for_python_312(tmp_path):
    """pip resolves rlattn + bench/gpu_wheels.txt offline for CPython 3.12 from the carried wheels and
    stubs of the image's packages (their seen versions, else the versions installed here)."""
    image = tmp_path / "image"
    image.mkdir()
    for name, version in pins(BENCH / "gpu_image.txt").items():
        try:
            version = version or metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "1.0"
        _stub_wheel(image, name, version)
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check", "--ignore-installed",
           "--report", str(report), "--no-index", "--find-links", str(BENCH / "gpu_wheels"), "--find-links", str(image),
           "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
           "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64", "--target", str(tmp_path / "t"),
           "-r", str(BENCH / "gpu_wheels.txt"), "rlattn"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    chosen = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert chosen["torch"] == "2.11.0" and chosen["transformers"] == "5.17.0", "the image's torch/transformers must be kept"
    assert {"rlattn", "trl", "datasets", "math-verify"} <= set(chosen)


def test_gpu_tests_skip_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the gpu tests would run")
    env = dict(os.environ, RLATTN_GPU_REPORT=str(tmp_path))
    env.pop("RLATTN_GPU_TEST_DEVICE", None)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs", "tests/gpu"],
                         capture_output=True, text=True, timeout=300, cwd=str(ROOT), env=env)
    assert res.returncode == 0, res.stdout[-3000:]
    tests = json.loads((tmp_path / "tests.json").read_text())["tests"]
    assert tests and all(t["outcome"] == "skipped" and "needs a CUDA device" in t["message"] for t in tests.values()), tests
    assert (tmp_path / "tests.md").read_text().count("skipped") == len(tests)


def test_gpu_check_without_wheels_stops_after_install(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), GPU_WHEELS=str(tmp_path / "absent"), PYTHON=sys.executable)
    res = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["parts"] == [{"part": "install", "exit": "2", "seconds": summary["parts"][0]["seconds"]}], summary
    log = (tmp_path / "gpu_check.log").read_text()
    assert "run 'bash bench/gpu_wheels.sh'" in log and "== gpu_check done" in log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.log", "summary.json"]


def test_model_builders_make_qwen3_shapes_on_meta():
    from gpu_models import count_parameters, policy_model, stats_layers, truncated_stats_model

    from rlattn.testing import byte_tokenizer

    model, layers = truncated_stats_model("qwen3-4b", device="meta")
    c = model.config
    assert layers == [12, 15, 18, 21, 24] and c.num_hidden_layers == 25 == len(model.model.layers)
    assert (c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (2560, 32, 8, 128)
    attn = model.model.layers[24].self_attn
    assert attn.q_proj.weight.shape == (32 * 128, 2560) and attn.k_proj.weight.shape == (8 * 128, 2560)
    assert attn.o_proj.weight.shape == (2560, 32 * 128) and model.model.layers[0].mlp.up_proj.weight.shape == (9728, 2560)
    assert stats_layers("qwen3-0.6b") == [9, 11, 14, 16, 18]
    tok = byte_tokenizer()
    policy = policy_model(tok, device="meta")
    assert policy.config.vocab_size == len(tok) and policy.config.num_hidden_layers == 28
    assert 0.43e9 < count_parameters(policy) < 0.45e9, count_parameters(policy)


@pytest.mark.slow
def test_benchmarks_run_on_cpu_at_tiny_size(tmp_path):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    subprocess.run([sys.executable, str(BENCH / "gpu_attention_stats.py"), "--device", "cpu", "--smoke", "--lengths", "96",
                    "--repeats", "1", "--out", str(tmp_path)], check=True, capture_output=True, timeout=300, env=env)
    res = json.loads((tmp_path / "attention_stats.json").read_text())
    row = res["rows"][0]
    assert row["N"] == 96 and row["paper"]["max_abs_diff_waad"] < 1e-4 and row["paper"]["max_abs_diff_fai"] < 1e-4, row
    assert "| 96 |" in (tmp_path / "attention_stats.md").read_text()
    subprocess.run([sys.executable, str(BENCH / "gpu_credit_overhead.py"), "--device", "cpu", "--smoke", "--lengths", "32",
                    "--gen-probe", "8", "--trainer-length", "16", "--out", str(tmp_path)], check=True, capture_output=True, timeout=600, env=env)
    res = json.loads((tmp_path / "credit_overhead.json").read_text())
    assert [r["T"] for r in res["parts"]] == [32] and 0 < res["parts"][0]["share_of_step"] < 1
    assert "error" not in res["trainer"] and res["trainer"]["credit/stats_time_s"] > 0, res["trainer"]
    assert "| 32 |" in (tmp_path / "credit_overhead.md").read_text()
