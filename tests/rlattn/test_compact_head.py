"""TRL's fused LM head scoring only the labelled positions on the CPU (rlattn/compact_head.py):
the same log-probs, entropies and gradients as the full projection, with fewer rows projected."""

import inspect

import pytest
import torch
import trl.trainer.utils as trl_utils
from peft import LoraConfig, get_peft_model
from trl.trainer.utils import add_fused_lm_head

from rlattn.compact_head import compact_cpu_lm_head
from rlattn.shared_prompt import shared_prompt_logps
from rlattn.testing import tiny_model
from tests.rlattn.test_credit_paths import _clone, _grads, make_trainer, toy_dataset
from tests.rlattn.test_shared_prompt import _batch, _trl_pass


@pytest.fixture
def projected_rows(monkeypatch):
    """Rows the fused head projects, per call (a spy on TRL's kernel)."""
    rows = []
    real = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(hidden, *args):
            rows.append(hidden.shape[0])
            return real.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)
    return rows


def test_trl_still_decides_compaction_with_the_patched_predicate():
    """If a TRL release stops reading ``_use_triton`` there, the context silently does nothing: fail here."""
    src = inspect.getsource(add_fused_lm_head)
    assert "compact = _use_triton(" in src
    original = trl_utils._use_triton
    with compact_cpu_lm_head():
        assert trl_utils._use_triton(torch.device("cpu"))
        with compact_cpu_lm_head():  # nested: no double wrap, and the outer restores
            assert trl_utils._use_triton(torch.device("cpu"))
        assert trl_utils._use_triton is not original
    assert trl_utils._use_triton is original and not original(torch.device("cpu"))
    with compact_cpu_lm_head(enabled=False):
        assert trl_utils._use_triton is original


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("shared", [False, True], ids=["whole_rows", "shared_prompt"])
def test_compact_head_equals_full_projection(lora, shared, projected_rows):
    model, _ = tiny_model("llama", num_layers=2, seed=0)
    model.float()
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model.train()
    ids, mask, C = _batch(model.config.vocab_size)  # [8, 13]: prompts of 7 columns, completions of 1..6 tokens
    weights = torch.rand(ids.size(0), C, generator=torch.Generator().manual_seed(1))
    valid = mask[:, -C:].bool()  # [8, 6]

    def run():
        if shared:
            lp, ent = shared_prompt_logps(model, ids, mask, C, compute_entropy=True, autocast=torch.enable_grad)
        else:
            lp, ent = _trl_pass(model, ids, mask, C)
        model.zero_grad(set_to_none=True)
        (lp * weights * mask[:, -C:]).sum().backward()
        return lp.detach(), ent.detach(), _grads(model)

    full = run()
    full_rows = projected_rows[-1]
    with compact_cpu_lm_head():
        compact = run()
    assert projected_rows[-1] == int(valid.sum()) < full_rows  # only the completion tokens were projected
    # whole rows: every position of [8, 12]; shared: the [8, 1 + 6] suffix; compact: the 33 completion tokens
    assert full_rows == (8 * 12 if not shared else 8 * C)
    torch.testing.assert_close(compact[0][valid], full[0][valid], atol=1e-6, rtol=0)
    torch.testing.assert_close(compact[1][valid], full[1][valid], atol=1e-6, rtol=0)
    assert (compact[0][~valid] == 0).all() and (compact[1][~valid] == 0).all()  # TRL's zeros at masked positions
    assert full[2].keys() == compact[2].keys() and full[2]
    for name in full[2]:
        torch.testing.assert_close(compact[2][name], full[2][name], atol=1e-6, rtol=1e-5, msg=name)


def test_trainer_compacts_its_passes_and_matches_the_full_head(tmp_path, projected_rows):
    """The fused layout: rollouts, γ, loss and gradients equal with ``compact_lm_head`` on and off."""
    results = []
    for compact in (False, True):
        trainer = make_trainer(tmp_path / str(compact), lora=True, compact_lm_head=compact)
        trainer.model.train()
        out = trainer._generate_and_score_completions([toy_dataset()[i] for i in (0, 0, 1, 1)])
        trainer.model.zero_grad(set_to_none=True)
        n_before = len(projected_rows)
        loss = trainer._compute_loss(trainer.model, _clone(out))
        loss.backward()
        assert len(projected_rows) > n_before
        n_tokens = int(out["completion_mask"].sum())
        if compact:
            assert sum(projected_rows[n_before:]) == n_tokens
        else:
            assert sum(projected_rows[n_before:]) > n_tokens
        results.append((out, trainer.last_credit, loss.detach(), _grads(trainer.model)))
    (out0, _, loss0, g0), (out1, _, loss1, g1) = results
    torch.testing.assert_close(out1["completion_ids"], out0["completion_ids"], atol=0, rtol=0)
    torch.testing.assert_close(out1["advantages"], out0["advantages"], atol=1e-6, rtol=0)
    assert out0["advantages"].abs().sum() > 0
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=0)
    assert g0.keys() == g1.keys() and g0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-6, rtol=1e-4, msg=name)
