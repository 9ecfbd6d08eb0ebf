"""Every recipe parses through the dataclasses, so stale or misspelt keys fail here."""

from pathlib import Path

import pytest
import yaml

from rlattn.backbones import BackboneArguments
from rlattn.cli import normalise_argv
from rlattn.cli import parse_grpo_args as _parse


def parse_grpo_args(argv):
    """Parse as the script that runs the recipe does: scripts/ppo.py for PPO recipes (ppo_*.yaml or a
    ppo/ folder), else scripts/grpo.py with the backbone plug-in's dataclass."""
    path = Path(argv[0])
    if path.name.startswith("ppo") or "ppo" in path.parts:
        from rlattn.ppo import AttnCreditPPOConfig

        return _parse(argv, config_class=AttnCreditPPOConfig)
    return _parse(argv, extra=(BackboneArguments,))[:3]

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml")
                 if "accelerate_configs" not in p.parts and "eval" not in p.parts and "compare" not in p.parts)


def test_recipes_found():
    names = {p.name for p in RECIPES}
    assert {"anchor_credit.yaml", "grpo_baseline.yaml", "local_chunk.yaml", "global_anchor.yaml", "random_credit.yaml", "high_entropy.yaml"} <= names
    assert any("Qwen3-4B-Base" in str(p) for p in RECIPES) and any("Qwen3-8B-Base" in str(p) for p in RECIPES)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT / "recipes")))
def test_recipe_parses(path):
    # GPU recipes ask for bf16 on a GPU; parsing them here checks the keys, not the hardware
    extra = ["--use_cpu", "true"] if "Base" in path.parent.parent.name else []
    script_args, training_args, model_args = parse_grpo_args([str(path)] + extra)
    raw = yaml.safe_load(path.read_text())
    assert training_args.credit_strategy == raw["credit_strategy"]
    assert model_args.model_name_or_path == raw["model_name_or_path"]
    assert script_args.dataset_name == raw["dataset_name"]


def test_accelerate_configs_are_yaml_mappings():
    for p in (ROOT / "recipes" / "accelerate_configs").glob("*.yaml"):
        cfg = yaml.safe_load(p.read_text())
        assert isinstance(cfg, dict) and "distributed_type" in cfg and "num_processes" in cfg, p


def test_command_line_overrides_recipe():
    _, training_args, _ = parse_grpo_args([str(ROOT / "recipes/anchor_credit.yaml"), "--credit_strategy", "local_chunk", "--max_steps", "3"])
    assert training_args.credit_strategy == "local_chunk" and training_args.max_steps == 3


def test_unknown_key_fails_naming_it(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "recipes/anchor_credit.yaml").read_text() + "\ncredit_gama: 2.0\n")
    with pytest.raises(ValueError, match="credit_gama"):
        parse_grpo_args([str(bad)])


def test_bad_value_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "recipes/anchor_credit.yaml").read_text().replace("credit_sign: both", "credit_sign: sideways"))
    with pytest.raises(ValueError, match="credit_sign"):
        parse_grpo_args([str(bad)])


def test_positional_and_flag_forms():
    assert normalise_argv([str(ROOT / "recipes/anchor_credit.yaml"), "--seed", "1"])[:2] == ["--config", str(ROOT / "recipes/anchor_credit.yaml")]
    with pytest.raises(FileNotFoundError, match="recipe not found"):
        normalise_argv(["nope.yaml"])


@pytest.mark.parametrize("key,value", [("rollout_backend", "sglang"), ("rollout_vllm_lora_handover", "merge")])
def test_bad_rollout_option_names_the_key(key, value):
    with pytest.raises(ValueError, match=f"{key}='{value}'"):
        parse_grpo_args([str(ROOT / "recipes/anchor_credit.yaml"), f"--{key}", value])


def test_vllm_engine_keys_reach_the_engine_config(monkeypatch):
    import rlattn.rollouts.vllm_cpu as vllm_cpu
    from rlattn.rollouts.factory import resolve_rollout

    with pytest.raises(ValueError, match="rollout_vllm_kvcache_gb=0 must be a whole number of GiB >= 1"):
        parse_grpo_args([str(ROOT / "recipes/anchor_credit.yaml"), "--rollout_vllm_kvcache_gb", "0"])
    monkeypatch.setattr(vllm_cpu, "vllm_available", lambda: (True, "stand-in"))  # no engine starts here
    for extra, want in (([], (1, True)), (["--rollout_vllm_kvcache_gb", "3", "--rollout_vllm_pause_idle", "false"], (3, False))):
        _, args, _ = parse_grpo_args([str(ROOT / "recipes/anchor_credit.yaml"), "--rollout_backend", "vllm", *extra])
        opts = resolve_rollout(args).engine_options
        assert (opts["kvcache_space_gb"], opts["pause_when_idle"]) == want


@pytest.mark.parametrize("key,value,match", [("backbone", "coconut", "backbone='coconut'"),
                                             ("latent_mode", "slow", "latent_mode='slow'"),
                                             ("latent_image_size", "30", "latent_image_size=30")])
def test_bad_backbone_option_names_the_key(key, value, match):
    with pytest.raises(ValueError, match=match):
        parse_grpo_args([str(ROOT / "recipes/cocova_lite_quadrant.yaml"), f"--{key}", value])


def test_fixed_head_selection_has_yaml_keys():
    _, training_args, _ = parse_grpo_args([str(ROOT / "recipes/anchor_credit.yaml"), "--attn_head_selection", "fixed",
                                           "--attn_fixed_local_heads", "10:3", "12:0", "--attn_fixed_global_heads", "15:1"])
    cfg = training_args.attention_stats_config()
    assert cfg.fixed_local_heads == [(10, 3), (12, 0)] and cfg.fixed_global_heads == [(15, 1)]
    with pytest.raises(ValueError, match="attn_fixed_local_heads=.*'10-3' is not 'layer:head'"):
        parse_grpo_args([str(ROOT / "recipes/anchor_credit.yaml"), "--attn_head_selection", "fixed",
                         "--attn_fixed_local_heads", "10-3", "--attn_fixed_global_heads", "15:1"])
    with pytest.raises(ValueError, match="attn_head_selection='fixed'.*needs fixed_local_heads"):
        parse_grpo_args([str(ROOT / "recipes/anchor_credit.yaml"), "--attn_head_selection", "fixed"])
