"""One prefix pass per distinct prompt (rlattn/shared_prompt.py) equals TRL's pass over whole rows:
log-probs, entropies and gradients, for full fine-tuning and LoRA, on left-padded prompts; and the
attention statistics captured on it equal those of whole rows."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from trl.trainer.utils import add_fused_lm_head

from rlattn.shared_prompt import pack_rows, prompt_groups, regroup_by_prompt, shared_prompt_logps
from rlattn.testing import tiny_model
from tests.rlattn.test_credit_paths import _clone, _grads, make_trainer, toy_dataset


def test_prompt_groups_by_hand():
    ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 5, 6], [7, 8, 9], [1, 5, 6]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]])
    first, row_to_group = prompt_groups(ids, mask)
    assert first.tolist() == [0, 1, 4]  # first row of each prompt, in order of appearance
    assert row_to_group.tolist() == [0, 1, 0, 1, 2]
    mask[2, 0] = 1  # same ids, different padding: a different prompt
    first, row_to_group = prompt_groups(ids, mask)
    assert first.tolist() == [0, 1, 2, 4] and row_to_group.tolist() == [0, 1, 2, 1, 3]


def _batch(vocab, seed=0):
    """Three prompts (left-padded to 7 columns) x repeats in shuffled order, completions right-padded to 6."""
    g = torch.Generator().manual_seed(seed)
    P, C = 7, 6
    prompts, pmasks = [], []
    for length in (7, 4, 5):
        ids = torch.randint(3, vocab, (P,), generator=g)
        m = torch.zeros(P, dtype=torch.long)
        m[P - length:] = 1
        prompts.append(ids * m)
        pmasks.append(m)
    order = [0, 1, 0, 2, 1, 0, 2, 1]
    comp = torch.randint(3, vocab, (len(order), C), generator=g)
    cmask = torch.ones_like(comp)
    for row, n in enumerate([6, 3, 5, 1, 6, 2, 4, 6]):
        cmask[row, n:] = 0
    ids = torch.cat([torch.stack([prompts[i] for i in order]), comp * cmask], 1)  # [8, 13]
    mask = torch.cat([torch.stack([pmasks[i] for i in order]), cmask], 1)
    return ids, mask, C


def _trl_pass(model, ids, mask, C):
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-C] = -100
    out = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    return out.log_probs[:, -C:], out.entropy[:, -C:]


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_shared_pass_equals_whole_rows(arch, lora):
    model, _ = tiny_model(arch, num_layers=2, seed=0)
    model.float()
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                 init_lora_weights=False))
    model.train()
    ids, mask, C = _batch(model.config.vocab_size)
    weights = torch.rand(ids.size(0), C, generator=torch.Generator().manual_seed(1))  # a loss touching every token

    ref_lp, ref_ent = _trl_pass(model, ids, mask, C)
    model.zero_grad(set_to_none=True)
    (ref_lp * weights * mask[:, -C:]).sum().backward()
    ref_grads = _grads(model)

    lp, ent = shared_prompt_logps(model, ids, mask, C, compute_entropy=True, autocast=torch.enable_grad)
    model.zero_grad(set_to_none=True)
    (lp * weights * mask[:, -C:]).sum().backward()
    grads = _grads(model)

    valid = mask[:, -C:].bool()
    torch.testing.assert_close(lp[valid], ref_lp[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[valid], ref_ent[valid], atol=1e-5, rtol=0)
    assert grads.keys() == ref_grads.keys() and grads
    if lora:
        assert all("lora_" in n for n in grads)  # the base stays frozen
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_packed_rows_equal_whole_rows(arch, lora, attn, monkeypatch):
    """The rows packed into one sequence (pack_rows) give TRL's whole-row log-probs, entropies and gradients."""
    import rlattn.shared_prompt as sp

    monkeypatch.setattr(sp, "PACK_MAX_ATTENTION", 1e9)  # the toy batch is small; the thresholds are tested below
    packed_calls = []
    real = sp._packed_rows_pass
    monkeypatch.setattr(sp, "_packed_rows_pass", lambda *a, **k: packed_calls.append(1) or real(*a, **k))
    model, _ = tiny_model(arch, num_layers=2, seed=0, attn_implementation=attn)
    model.float()
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    if lora:
        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                                 init_lora_weights=False))
    model.train()
    ids, mask, C = _batch(model.config.vocab_size)
    weights = torch.rand(ids.size(0), C, generator=torch.Generator().manual_seed(1))

    ref_lp, ref_ent = _trl_pass(model, ids, mask, C)
    model.zero_grad(set_to_none=True)
    (ref_lp * weights * mask[:, -C:]).sum().backward()
    ref_grads = _grads(model)
    lp, ent = shared_prompt_logps(model, ids, mask, C, compute_entropy=True, autocast=torch.enable_grad, pack=True)
    assert packed_calls == [1]
    model.zero_grad(set_to_none=True)
    (lp * weights * mask[:, -C:]).sum().backward()
    grads = _grads(model)

    valid = mask[:, -C:].bool()
    torch.testing.assert_close(lp[valid], ref_lp[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[valid], ref_ent[valid], atol=1e-5, rtol=0)
    assert (lp[~valid] == 0).all() and (ent[~valid] == 0).all()
    assert grads.keys() == ref_grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_pack_rows_by_hand():
    """Two rows of one prompt (P = 3, its first column padding) with completions of 2 and 1 of C = 2 tokens."""
    mask = torch.tensor([[0, 1, 1, 1, 1], [0, 1, 1, 1, 0]])
    p = pack_rows(mask, 3, torch.tensor([0]), torch.tensor([0, 0]))
    # segments: row 0 = columns 2, 3, 4 (last prompt token + 2); row 1 = columns 2, 3
    assert p.token[0].tolist() == [0, 0, 0, 1, 1] and p.token[1].tolist() == [2, 3, 4, 2, 3]
    assert p.positions.tolist() == [2, 3, 4, 2, 3]  # the unpadded pass's positions (column index)
    assert p.labels.tolist() == [False, True, True, False, True]
    assert p.scored.tolist() == [0, 1, 3]  # log-prob slot n - 1 of packed tokens 1, 2, 4
    # keys: prefix columns 0, 1 (column 0 is padding), then the 5 packed tokens
    expected = torch.tensor([
        [0, 1, 1, 0, 0, 0, 0],
        [0, 1, 1, 1, 0, 0, 0],
        [0, 1, 1, 1, 1, 0, 0],
        [0, 1, 0, 0, 0, 1, 0],
        [0, 1, 0, 0, 0, 1, 1],
    ], dtype=torch.bool)
    assert torch.equal(p.mask[0, 0], expected)
    assert p.q_index.tolist() == [[0, 1, 2], [3, 4, 5]]  # 5 = padding (N)
    assert p.k_index.tolist() == [[0, 1, 2, 3, 4], [0, 1, 5, 6, 7]]  # 7 = padding (U(P-1) + N)
    # two prompts: each row sees only its own prompt's prefix block
    p2 = pack_rows(mask, 3, torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert p2.mask[0, 0, 3, :4].tolist() == [False, False, False, True]  # row 1: prompt 1's block, column 0 padding
    assert p2.k_index[1, :2].tolist() == [2, 3]


def test_pack_rows_declines_where_it_does_not_pay():
    one = torch.ones(4, 3 + 8, dtype=torch.long)
    first, groups = torch.tensor([0]), torch.zeros(4, dtype=torch.long)
    assert pack_rows(one, 3, first, groups) is None  # no padding: nothing to save
    gappy = one.clone()
    gappy[0, 4] = 0  # a hole inside a completion: not TRL's right padding
    assert pack_rows(gappy, 3, first, groups) is None
    short = one.clone()
    short[:, 5:] = 0  # completions of 2 of 8 tokens: packing pays
    assert pack_rows(short, 3, first, groups) is not None
    long_rows = torch.ones(64, 3 + 200, dtype=torch.long)
    long_rows[:, 150:] = 0  # 64 rows of 147 tokens in one sequence: attention ~34x the padded rows'
    assert pack_rows(long_rows, 3, first, torch.zeros(64, dtype=torch.long)) is None


@pytest.fixture(params=["padded", "packed"])
def packing(request, monkeypatch):
    """``packed``: the shared passes pack the rows whatever the savings (the toy batches are too
    small for the thresholds), and the test fails unless they did; ``padded``: packing off."""
    import rlattn.shared_prompt as sp

    if request.param == "padded":
        yield {"pack_completions": False}
        return
    monkeypatch.setattr(sp, "PACK_MIN_SAVING", 0.0)
    monkeypatch.setattr(sp, "PACK_MAX_ATTENTION", 1e9)
    calls = []
    real = sp._packed_rows_pass
    monkeypatch.setattr(sp, "_packed_rows_pass", lambda *a, **k: calls.append(1) or real(*a, **k))
    yield {"pack_completions": True}
    assert calls, "no pass was packed"


def test_trainer_loss_and_gradients_equal_with_and_without_sharing(tmp_path, monkeypatch, packing):
    """The piggyback layout (num_iterations 2): the old-log-prob pass captures the statistics on the
    shared pass, and the loss pass shares prompts; statistics, loss and gradients equal the unshared
    trainer's, with the shared rows padded or packed."""
    import rlattn.trainer as core

    calls = []
    real = core.shared_prompt_logps
    monkeypatch.setattr(core, "shared_prompt_logps", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    results = []
    for share in (False, True):
        trainer = make_trainer(tmp_path / str(share), lora=True, num_iterations=2, share_prompt_prefix=share, **packing)
        trainer.model.train()
        assert trainer.credit_path() == "piggyback"
        n_before = len(calls)
        out = trainer._generate_and_score_completions([toy_dataset()[i] for i in (0, 0, 1, 1)])  # prompts repeat
        assert len(calls) == n_before + int(share)  # the captured old-log-prob pass shares the prompts too
        credit = trainer.last_credit
        assert credit["path"] == "piggyback"
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer._compute_loss(trainer.model, _clone(out))
        loss.backward()
        assert len(calls) == n_before + 2 * int(share)
        results.append((out, credit, loss.detach(), _grads(trainer.model)))
    _assert_same_run(*results)


def _assert_same_run(whole, shared):
    """``(output, last_credit, loss, grads)`` of a whole-row trainer and a sharing one: equal rollouts,
    statistics, γ, advantages, loss and gradients (up to round-off), and none of it vacuous."""
    (out0, c0, loss0, g0), (out1, c1, loss1, g1) = whole, shared
    torch.testing.assert_close(out1["completion_ids"], out0["completion_ids"], atol=0, rtol=0)  # same rollouts
    mask = c0["mask"]
    for key in ("waad", "fai"):
        torch.testing.assert_close(c1[key][mask], c0[key][mask], atol=1e-5, rtol=0, equal_nan=True, msg=key)
    torch.testing.assert_close(c1["gamma"], c0["gamma"], atol=1e-6, rtol=0)
    assert (c0["gamma"][mask] > 1).any()  # not vacuous: credit changed some tokens
    torch.testing.assert_close(out1["advantages"], out0["advantages"], atol=1e-6, rtol=0)
    assert out0["advantages"].abs().sum() > 0  # not vacuous: the loss has gradients to compare
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=0)
    assert g0.keys() == g1.keys() and g0
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kw", [dict(gradient_checkpointing=True, credit_strategy="uniform"), dict(gradient_checkpointing=True)],
                         ids=["grad_ckpt", "grad_ckpt_fused_capture"])
def test_whole_rows_where_sharing_cannot_apply(tmp_path, monkeypatch, kw):
    import rlattn.trainer as core

    monkeypatch.setattr(core, "shared_prompt_logps", lambda *a, **k: pytest.fail("shared pass ran"))
    trainer = make_trainer(tmp_path, share_prompt_prefix=True, **kw)
    trainer.model.train()
    out = trainer._generate_and_score_completions([toy_dataset()[i] for i in (0, 0, 1, 1)])
    trainer._compute_loss(trainer.model, out).backward()


def test_extra_pass_with_an_observer_runs_whole_rows(tmp_path, monkeypatch):
    """The extra (early-exit) pass, where observers ride, never shares: an observer is promised
    whole-row q/k."""
    import rlattn.trainer as core

    monkeypatch.setattr(core, "shared_prompt_logps", lambda *a, **k: pytest.fail("shared pass ran"))
    trainer = make_trainer(tmp_path, share_prompt_prefix=True, credit_fused=False)
    seen = []
    trainer.credit_observer = lambda output: (lambda rows, layer, q, k, scaling: seen.append((q.shape[2], k.shape[2])))
    trainer.model.train()
    trainer._generate_and_score_completions([toy_dataset()[i] for i in (0, 0, 1, 1)])
    assert seen and all(nq == nk for nq, nk in seen)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fused_capture_on_the_shared_pass_equals_whole_rows(tmp_path, monkeypatch, lora, packing):
    """The default layout: the loss forward that captures the statistics shares the prompts (rows
    padded or packed); statistics, γ, (B, T) advantages, loss and gradients equal the whole-row
    trainer's."""
    import rlattn.trainer as core

    calls = []
    real = core.shared_prompt_logps
    monkeypatch.setattr(core, "shared_prompt_logps", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    results = []
    for share in (False, True):
        trainer = make_trainer(tmp_path / str(share), lora=lora, share_prompt_prefix=share, **packing)
        trainer.model.train()
        assert trainer.credit_path() == "fused"
        out = trainer._generate_and_score_completions([toy_dataset()[i] for i in (0, 0, 1, 1)])
        n_before = len(calls)
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer._compute_loss(trainer.model, out)
        loss.backward()
        assert len(calls) == n_before + int(share)
        assert trainer.last_credit["path"] == "fused"
        results.append((out, trainer.last_credit, loss.detach(), _grads(trainer.model)))
    _assert_same_run(*results)


def test_trainer_shares_only_chunks_with_a_repeated_prompt(tmp_path, monkeypatch):
    """A chunk whose prompts are all distinct has nothing to share: TRL's one whole-row pass runs,
    not two passes; a chunk with repeats takes the shared pass. Both equal TRL's result."""
    import rlattn.trainer as core
    from trl import GRPOTrainer

    calls = []
    real = core.shared_prompt_logps
    monkeypatch.setattr(core, "shared_prompt_logps", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    trainer = make_trainer(tmp_path, share_prompt_prefix=True, credit_strategy="uniform")
    trainer.model.train()
    ids, mask, C = _batch(trainer.model.config.vocab_size)
    for rows, shared in (([0, 1, 3], 0), (list(range(8)), 2)):  # 8 rows in chunks of 4: both chunks repeat a prompt
        lp, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids[rows], mask[rows], C, batch_size=4)
        ref, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids[rows], mask[rows], C,
                                                                   batch_size=4)
        assert len(calls) == shared
        valid = mask[rows][:, -C:].bool()
        torch.testing.assert_close(lp[valid], ref[valid], atol=1e-5, rtol=0)
        calls.clear()


def _dealt(prompt_of_row, n_chunks):
    """Micro-batches as TRL deals them: rows in the given (shuffled) order, split evenly; every
    per-row field carries the row's id so the test can check that fields move together."""
    B = len(prompt_of_row)
    rows = torch.arange(B)
    prompts = torch.tensor([[0, 10 + p, 20 + p] for p in prompt_of_row])  # [B, 3]
    batch = {"prompt_ids": prompts, "prompt_mask": torch.ones_like(prompts), "completion_ids": rows[:, None] * 2,
             "advantages": rows.float(), "names": [f"row{r}" for r in rows.tolist()],
             "num_items_in_batch": torch.tensor(42), "old_per_token_logps": None}
    size = B // n_chunks
    return [{k: (v[i * size:(i + 1) * size] if isinstance(v, list) or (torch.is_tensor(v) and v.ndim) else v)
             for k, v in batch.items()} for i in range(n_chunks)]


@pytest.mark.parametrize("prompt_of_row,n_chunks,per_chunk", [
    ([0, 1, 2, 3, 1, 0, 3, 2], 4, 1),  # 4 groups of 2 into 4 micro-batches: one prompt each
    ([2, 0, 0, 1, 0, 2, 0, 1], 4, 1),  # groups of 4, 2, 2: still one prompt per micro-batch
    ([0, 1, 0, 1, 1, 0], 2, 1),  # groups of 3 into micro-batches of 3
    ([0, 1, 2, 0, 1, 2], 2, 2),  # three groups of 2 into micro-batches of 3: one is split
])
def test_regroup_by_prompt_by_hand(prompt_of_row, n_chunks, per_chunk):
    chunks = _dealt(prompt_of_row, n_chunks)
    out = regroup_by_prompt(chunks, generator=torch.Generator().manual_seed(0))
    assert len(out) == n_chunks
    seen = []
    for c in out:
        ids = c["completion_ids"][:, 0] // 2  # row ids
        assert c["advantages"].tolist() == ids.float().tolist()  # fields move together
        assert c["names"] == [f"row{r}" for r in ids.tolist()]
        assert c["prompt_ids"][:, 1].tolist() == [10 + prompt_of_row[r] for r in ids.tolist()]
        assert c["num_items_in_batch"].item() == 42 and c["old_per_token_logps"] is None  # scalars and None kept
        assert len(set(c["prompt_ids"][:, 1].tolist())) <= per_chunk
        seen += ids.tolist()
    assert sorted(seen) == list(range(len(prompt_of_row)))  # every row once
    order = [r for c in out for r in (c["completion_ids"][:, 0] // 2).tolist()]
    for p in set(prompt_of_row):  # inside a group the rows keep TRL's shuffled order
        assert [r for r in order if prompt_of_row[r] == p] == [r for r in range(len(prompt_of_row)) if prompt_of_row[r] == p]


def test_regroup_order_of_groups_is_random():
    orders = set()
    for seed in range(8):
        out = regroup_by_prompt(_dealt([0, 1, 2, 3] * 2, 4), generator=torch.Generator().manual_seed(seed))
        orders.add(tuple(c["prompt_ids"][0, 1].item() for c in out))
    assert len(orders) > 1


def test_trainer_deals_micro_batches_by_prompt(tmp_path):
    """Two prompts x 4 completions, micro-batches of 4: with shuffle_by_prompt each micro-batch is one
    prompt's whole group, and the two hold the same rows as TRL's row shuffle dealt."""
    batches = {}
    for flag in (False, True):
        trainer = make_trainer(tmp_path / str(flag), credit_strategy="uniform", steps_per_generation=2,
                               shuffle_by_prompt=flag, share_prompt_prefix=True)
        trainer.model.train()
        rows = [toy_dataset()[i] for i in (0, 0, 0, 0, 1, 1, 1, 1)]  # as the repeat sampler yields them
        got = []
        for step in range(2):
            trainer._step = step
            got.append(trainer._prepare_inputs(rows))
        batches[flag] = got

    def row_set(mbs):
        return sorted(tuple(r) for mb in mbs for r in torch.cat([mb["prompt_ids"], mb["completion_ids"]], 1).tolist())

    assert row_set(batches[True]) == row_set(batches[False])  # same rollouts and rows, dealt differently
    for mb in batches[True]:
        assert prompt_groups(mb["prompt_ids"], mb["prompt_mask"])[0].numel() == 1
        assert abs(mb["advantages"].sum().item()) < 1e-5  # a whole group: its advantages sum to zero
    assert any(mb["advantages"].abs().sum() > 0 for mb in batches[True])  # not vacuous
