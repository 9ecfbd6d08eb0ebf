"""scripts/analyze_rhythm.py end to end in a subprocess, on a tiny random model saved to disk.

A recipe YAML given positionally plus command-line overrides, the optional perturbation test on:
the report (md + json with the three couplings and the perturbation), the responses records and
both plots are written; an unknown recipe key fails naming it.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "analyze_rhythm.py"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from rlattn.testing import tiny_model

    d = tmp_path_factory.mktemp("tiny_rhythm")
    model, tok = tiny_model("qwen3", num_layers=3, seed=0, attn_implementation="sdpa")
    model.save_pretrained(d / "model")
    tok.save_pretrained(d / "model")
    return d


def run(args, cwd, timeout=300):
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, str(SCRIPT)] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(cwd))


def test_script_end_to_end_with_perturbation(tiny_dir, tmp_path):
    recipe = tmp_path / "rhythm.yaml"
    recipe.write_text(
        f"model: {tiny_dir / 'model'}\ndataset: gsm8k_test\nlimit: 3\nmax_new_tokens: 32\nbatch_size: 3\n"
        "bootstrap: 100\ndevice: cpu\ntorch_threads: 1\n"
    )
    out = tmp_path / "out"
    res = run([recipe, "--output_dir", out, "--perturb", "true", "--perturb_positions", "1", "--perturb_candidates", "1",
               "--perturb_horizon", "6", "--perturb_skip_last", "2"], tmp_path)
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-5000:])
    assert "fai_follows_waad: random" in res.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["responses"] == 3 and report["config"]["limit"] == 3 and report["config"]["temperature"] == 0.7
    assert set(report["couplings"]) == {"entropy_at_waad_peaks", "receiver_global_cooccurrence", "fai_follows_waad"}
    for c in report["couplings"].values():
        assert c["peaks"] > 0 and 0 <= c["random"] and c["paper"]["observed"] > 0 and len(c["per_response_lift"]) == 3
    pert = report["perturbation"]
    assert pert["trials"] >= 1 and 0 <= pert["top"] <= 1 and 0 <= pert["bottom"] <= 1
    md = (out / "report.md").read_text()
    assert "| coupling | paper random → observed (lift)" in md and "Perturbation (Table 1)" in md and "[ours]" in md
    records = [json.loads(l) for l in (out / "responses.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(len(r["waad"]) == len(r["completion_ids"]) == len(r["entropy"]) for r in records)
    for name in ("lifts.png", "example.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_key_fails_naming_it(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("limit: 3\nreceiver_quantil: 0.2\n")
    res = run([recipe, "--output_dir", tmp_path / "o"], tmp_path, timeout=120)
    assert res.returncode != 0 and "receiver_quantil" in res.stderr
