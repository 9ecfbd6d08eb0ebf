"""``uniform`` is TRL, metric for metric, where TRL's loss reads the advantage per sequence (#20).

Before cbd40e2 ``uniform`` expanded TRL's (B,) advantages to (B, T). The loss stayed the same, but
TRL's sequence-level metrics then averaged per token instead of per sequence: with ragged
completions ``vespo/phi_seq_mean`` (``loss_type: vespo``) and GSPO's ``clip_ratio/*``
(``importance_sampling_level: sequence``) differed from TRL's. Now ``uniform`` hands TRL its own
(B,) advantages, so every logged value equals plain ``GRPOTrainer``'s on the same seed and model.
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from rlattn.config import AttnCreditConfig
from rlattn.testing import digit_reward, tiny_model
from rlattn.trainer import AttnCreditGRPOTrainer

# wall-clock quantities, the only logged values that may differ between two runs
TIMING = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second"}


def toy_dataset(n=8):
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "solution": str(2 * i)} for i in range(n)]
    )


def base_kwargs(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, max_completion_length=24,
                max_steps=2, learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to="none", bf16=False,
                gradient_checkpointing=False, seed=0, beta=0.0, temperature=1.0, use_cpu=True, dataloader_num_workers=0,
                # a push towards <|im_end|> (id 257) while sampling, so that completions end at different lengths
                generation_kwargs={"sequence_bias": [[[257], 3.0]]})
    base.update(kw)
    return base


def _model():
    return tiny_model("llama", num_layers=2, seed=0)


def run_pair(tmp_path, **kw):
    from trl import GRPOConfig, GRPOTrainer

    model, tok = _model()
    ours = AttnCreditGRPOTrainer(model=model, reward_funcs=[digit_reward], train_dataset=toy_dataset(), processing_class=tok,
                                 args=AttnCreditConfig(**base_kwargs(tmp_path / "ours", credit_strategy="uniform", **kw)))
    ours.train()
    model, tok = _model()
    ref = GRPOTrainer(model=model, reward_funcs=[digit_reward], train_dataset=toy_dataset(), processing_class=tok,
                      args=GRPOConfig(**base_kwargs(tmp_path / "trl", **kw)))
    ref.train()
    return ours, ref


def _logs(trainer):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in trainer.state.log_history]


@pytest.mark.parametrize(
    "kw, metric, varies",
    [
        # num_iterations 2: the second pass over a batch has importance ratios ≠ 1, so φ (φ(1) = 1) and the
        # clips differ from sequence to sequence, and a per-token average of them differs from TRL's
        pytest.param(dict(loss_type="vespo", num_iterations=2, learning_rate=1e-3), "vespo/phi_seq_mean",
                     lambda v: abs(v - 1) > 1e-3, id="vespo"),
        pytest.param(dict(importance_sampling_level="sequence", num_iterations=2, epsilon=3e-4, epsilon_high=4e-4),
                     "clip_ratio/high_mean", lambda v: 0 < v < 1, id="gspo"),
    ],
)
def test_uniform_logs_exactly_what_trl_logs(tmp_path, kw, metric, varies):
    ours, ref = run_pair(tmp_path, **kw)
    ref_logs, our_logs = _logs(ref), _logs(ours)
    assert sum("loss" in h for h in ref_logs) == 2
    steps = [h for h in ref_logs if "completions/min_length" in h]  # the steps that generated
    # the case that tells the two layouts apart: ragged completions and a sequence-level metric that varies
    assert any(h["completions/min_length"] < h["completions/max_length"] for h in steps)
    assert any(varies(h[metric]) for h in ref_logs if metric in h)
    assert our_logs == ref_logs  # every metric, every step (not only the loss)
    assert not any(k.startswith("credit/") for h in our_logs for k in h)
    for (n1, p1), (n2, p2) in zip(ours.model.named_parameters(), ref.model.named_parameters()):
        assert torch.equal(p1, p2), f"parameter {n1} differs after training"
