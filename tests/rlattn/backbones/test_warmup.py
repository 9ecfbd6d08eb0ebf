"""Format warm-up: it learns the answer format from shuffled answers and never uses the true label."""

import torch

from rlattn.data.synthetic import generate_key_lookup
from rlattn.backbones.warmup import _rows_to_batch, format_warmup

from .conftest import build


def test_warmup_lowers_the_loss_and_targets_only_known_answers(monkeypatch):
    policy, proc, tok = build(mode="fast")
    ds = generate_key_lookup(64, seed=0)
    seen = []
    real = _rows_to_batch

    def spy(proc_, rows, answers):
        seen.append((rows, answers))
        return real(proc_, rows, answers)

    monkeypatch.setattr("rlattn.backbones.warmup._rows_to_batch", spy)
    losses = format_warmup(policy, proc, ds, steps=25, lr=3e-3, batch_size=8, seed=0)
    assert len(losses) == 25 and sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    solutions = set(ds["solution"])
    agree = total = 0
    for rows, answers in seen:
        assert set(answers) <= solutions
        agree += sum(a == r["solution"] for a, r in zip(answers, rows))
        total += len(rows)
    assert agree / total < 0.35  # shuffled: about 1/10 agree by chance, never the true label by design


def test_rows_to_batch_layout():
    policy, proc, tok = build()
    ds = generate_key_lookup(2, seed=0)
    ids, am, labels, pv = _rows_to_batch(proc, [ds[0], ds[1]], ["7", "42"])
    assert pv is None
    # labels: "7"+eos and "42"+eos, right after the prompts' <eot>; padding masked out
    eot = policy.token_ids["eot"]
    P = int((ids[0] == eot).nonzero()[0]) + 1
    assert labels[0, P:].tolist() == tok("7", add_special_tokens=False)["input_ids"] + [tok.eos_token_id, -100]
    assert labels[1, P:].tolist() == tok("42", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert (labels[:, :P] == -100).all() and am[0, -1] == 0 and am[1, -1] == 1
