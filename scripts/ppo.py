"""PPO with a learned critic and attention credit on the GAE advantages.

    accelerate launch scripts/ppo.py recipes/ppo_anchor_credit.yaml [--key value ...]
    python scripts/ppo.py recipes/ppo_anchor_credit.yaml --max_steps 2
"""

import logging
import sys

from transformers import set_seed

from rlattn.cli import build_policy, build_rewards, load_train_dataset, parse_grpo_args
from rlattn.models import resolve_model
from rlattn.ppo import AttnCreditPPOConfig, AttnCreditPPOTrainer
from rlattn.rollouts import resolve_rollout
from rlattn.runs import CheckpointMarker, check_model, lock_output_dir, run_training, set_torch_threads


def main():
    # ---- parse: recipe YAML + command-line overrides; unknown keys fail naming the key ----
    script_args, training_args, model_args = parse_grpo_args(config_class=AttnCreditPPOConfig)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    lock_output_dir(training_args, overwrite=script_args.overwrite_output_dir)  # one run per output_dir
    set_torch_threads(training_args)  # CPU: the cores of this process, not accelerate's OMP_NUM_THREADS=1
    check_model(model_args, training_args)  # a missing path, attn_layers out of range: before any weight loads
    set_seed(training_args.seed)

    # ---- data, policy (LoRA when use_peft), rewards, rollouts: as for GRPO ----
    train_dataset = load_train_dataset(script_args)
    model, processing_class, peft_config = build_policy(model_args, training_args)
    reward_funcs = build_rewards(script_args, training_args)
    rollout_func = resolve_rollout(training_args, model_path=resolve_model(model_args.model_name_or_path))

    # ---- trainer: the critic is a second LoRA adapter on the same base (or critic_model_name_or_path) ----
    trainer = AttnCreditPPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processing_class,
        peft_config=peft_config,
        rollout_func=rollout_func,
        callbacks=[CheckpointMarker()],  # marks each checkpoint complete once written
    )

    # ---- train and save (policy adapter or model, critic, tokenizer, metrics); resumes from the newest complete
    #      checkpoint; on any failure or Ctrl-C, a resumable interrupted-<step>-<time>/ before re-raising ----
    run_training(trainer, training_args, script_args)


if __name__ == "__main__":
    sys.exit(main())
