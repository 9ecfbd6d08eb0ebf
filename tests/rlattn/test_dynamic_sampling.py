"""Dynamic sampling: zero-variance groups are found exactly, merged rows keep their padding, and in a
real trainer step every dropped group is replaced by a group of a fresh prompt that has variance."""

import pytest
import torch
from datasets import Dataset

from rlattn.config import AttnCreditConfig
from rlattn.dynamic_sampling import PromptStream, merge_rows, zero_variance_groups
from rlattn.testing import tiny_model
from rlattn.trainer import AttnCreditGRPOTrainer

from .test_trainer import base_kwargs


def test_zero_variance_groups_by_hand():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.1, 0.1 + 1e-3])  # groups of 2
    assert zero_variance_groups(rewards, 2).tolist() == [True, False, True, False]
    # eight rewards of 1.1 (accuracy + 0.1 format): no variance, though TRL's advantages are not exactly 0
    assert zero_variance_groups(torch.full((8,), 1.1), 8).tolist() == [True]
    assert zero_variance_groups(torch.tensor([1.0, float("nan"), 1.0, 0.0]), 4).tolist() == [False]
    assert zero_variance_groups(torch.tensor([1.0, float("nan"), 1.0, 1.0]), 4).tolist() == [True]  # NaN ignored
    with pytest.raises(ValueError, match="do not split into groups of 3"):
        zero_variance_groups(rewards, 3)


def test_merge_rows_pads_each_side_and_recounts_items():
    base = {"prompt_ids": torch.tensor([[0, 5], [6, 7]]), "prompt_mask": torch.tensor([[0, 1], [1, 1]]),
            "completion_ids": torch.tensor([[1, 0], [2, 3]]), "completion_mask": torch.tensor([[1, 0], [1, 1]]),
            "advantages": torch.tensor([0.0, 0.0]), "num_items_in_batch": torch.tensor(3)}
    extra = {"prompt_ids": torch.tensor([[8, 9, 4]]), "prompt_mask": torch.tensor([[1, 1, 1]]),
             "completion_ids": torch.tensor([[7, 7, 7]]), "completion_mask": torch.tensor([[1, 1, 1]]),
             "advantages": torch.tensor([0.25]), "num_items_in_batch": torch.tensor(3)}
    out = merge_rows(base, extra, torch.tensor([0]), torch.tensor([0]), pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[8, 9, 4], [0, 6, 7]]  # prompts padded on the left
    assert out["prompt_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert out["completion_ids"].tolist() == [[7, 7, 7], [2, 3, 0]]  # completions on the right
    assert out["completion_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["advantages"].tolist() == [0.25, 0.0]
    assert int(out["num_items_in_batch"]) == 5
    # a swap that leaves a column padding in every row drops it
    out = merge_rows(extra, base, torch.tensor([0]), torch.tensor([1]), pad_token_id=0)
    assert out["prompt_ids"].tolist() == [[6, 7]] and out["completion_ids"].tolist() == [[2, 3]]
    with pytest.raises(ValueError, match=r"cannot merge batch keys \['pixel_values'\]"):
        merge_rows({**base, "pixel_values": torch.zeros(2, 1)}, extra, torch.tensor([0]), torch.tensor([0]), 0)


def test_prompt_stream_depends_only_on_seed_step_and_round():
    ds = Dataset.from_list([{"x": i} for i in range(10)])
    a, b = PromptStream(ds, seed=3), PromptStream(ds, seed=3)
    assert a.take(4, step=5, round_=0) == b.take(4, step=5, round_=0)  # a resumed run draws the same
    assert len({r["x"] for r in a.take(4, step=5, round_=0)}) == 4  # distinct rows
    assert a.take(4, step=5, round_=0) != a.take(4, step=6, round_=0)
    assert len(a.take(50, step=0, round_=0)) == 10  # at most the whole set


def _constant_for_low_prompts(completions, solution, **kwargs):
    """Prompts 0-11 ('What is 0..11 + ...'): reward 1 whatever the completion (no variance); 12-15: the
    parity of the completion's character codes (variance almost surely across 4 sampled completions)."""
    out = []
    for c, s in zip(completions, solution):
        text = c[0]["content"] if isinstance(c, list) else c
        out.append(1.0 if int(s) < 24 else float(sum(map(ord, text)) % 2))
    return out


class _Recording(AttnCreditGRPOTrainer):
    def _resample_zero_variance(self, output, inputs, piggy=None):
        drawn = [row["solution"] for row in inputs]
        before = zero_variance_groups(self._summed_rewards(), self.num_generations)
        output, inputs, replaced = super()._resample_zero_variance(output, inputs, piggy)
        if "_piggy_waad" in output:  # merged captured statistics equal a fresh pass over the merged batch
            waad, fai, _ = self._credit_forward(output)
            mask = self._credit_mask(output)
            assert torch.allclose(output["_piggy_waad"][mask], waad[mask], atol=1e-5, equal_nan=True)
            assert torch.allclose(output["_piggy_fai"][mask], fai[mask], atol=1e-5, equal_nan=True)  # NaN: FAI undefined
            self.checked_merged = getattr(self, "checked_merged", 0) + int(replaced > 0)
        self.batches = getattr(self, "batches", []) + [(output, drawn, before, [row["solution"] for row in inputs])]
        return output, inputs, replaced


PATHS = {"extra": dict(credit_fused=False), "fused": dict(),
         "piggyback": dict(steps_per_generation=2, gradient_accumulation_steps=1)}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_trainer_replaces_zero_variance_groups_with_fresh_prompts(tmp_path, path):
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}], "solution": str(2 * i)}
                            for i in range(16)])
    model, tok = tiny_model("llama", num_layers=3, seed=0)
    args = AttnCreditConfig(**base_kwargs(tmp_path, per_device_train_batch_size=8, num_generations=4, max_steps=3,
                                          dynamic_sampling=True, dynamic_sampling_max_rounds=3, **PATHS[path]))
    trainer = _Recording(model=model, reward_funcs=[_constant_for_low_prompts], args=args, train_dataset=ds,
                         processing_class=tok)
    trainer.train()
    assert trainer.credit_path() == path
    logs = [h for h in trainer.state.log_history if "dynamic_sampling/zero_std_before" in h]
    assert len(logs) == len(trainer.batches) >= 2  # one entry per generation batch
    before = [h["dynamic_sampling/zero_std_before"] for h in logs]
    after = [h["dynamic_sampling/zero_std_after"] for h in logs]
    assert all(a <= b for a, b in zip(after, before))
    assert sum(h["dynamic_sampling/dropped_groups"] for h in logs) > 0
    # TRL's own metric still describes the original draw
    assert [h["frac_reward_zero_std"] for h in logs] == pytest.approx(before)
    replaced = 0
    for out, drawn, before_zero, solutions in trainer.batches:
        B = out["advantages"].size(0)
        assert len(solutions) == len(drawn) == B
        for g in range(B // 4):
            group = solutions[4 * g:4 * g + 4]
            assert len(set(group)) == 1  # a group is one prompt, replaced whole
            if group != drawn[4 * g:4 * g + 4]:  # swapped: only a group without variance goes ...
                replaced += 1
                assert before_zero[g]
                assert int(group[0]) >= 24  # ... and only a group with variance comes in
        # every row's prompt tokens decode to the prompt of the solution it is graded against
        for row in range(B):
            ids = out["prompt_ids"][row][out["prompt_mask"][row].bool()]
            i = int(solutions[row]) // 2
            assert f"{i} + {i}" in tok.decode(ids)
        assert int(out["num_items_in_batch"]) == int(out["completion_mask"].sum())
    assert replaced == sum(h["dynamic_sampling/dropped_groups"] for h in logs) > 0
    if path != "extra":  # the statistics ride on a pass TRL runs anyway, replacement batches included
        assert all(h["credit/extra_forward"] == 0 for h in logs)
    if path == "piggyback":
        assert getattr(trainer, "checked_merged", 0) > 0


def test_dynamic_sampling_config_errors(tmp_path):
    with pytest.raises(ValueError, match="dynamic_sampling_max_rounds=0 must be an int >= 1"):
        AttnCreditConfig(**base_kwargs(tmp_path, dynamic_sampling=True, dynamic_sampling_max_rounds=0))
