"""Tests of policy.py, the trainer plumbing both loops share: the cosine schedule and weight decay
groups, token-budgeted micro-batches, packed rows and their log-probs. Fixture from conftest:
tiny_model.
"""

import pytest
import torch

import policy


# ==============================================================================================
# policy.py: the schedule, token-budgeted micro-batches, packed rows
# ==============================================================================================

def test_schedule_and_weight_decay_follow_the_hf_trainer(tiny_model):
    # 20 updates, warmup 0.1: ceil(2) warmup updates from lr 0, then cosine to 0
    assert [policy.cosine_schedule(s, 20, 0.1) for s in (0, 1, 2, 11, 20)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    assert policy.cosine_schedule(0, 10, 0.0) == 1.0  # no warmup: the first update at full lr
    assert policy.cosine_schedule(0, 7, 0.1) == 0.0 and policy.cosine_schedule(1, 7, 0.1) == 1.0  # ceil(0.7) = 1
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    opt, _ = policy.make_optimizer(model, 1e-6, 0.01, 10, 0.1)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decay) == (not ("norm" in name or name.endswith("bias"))), name


def test_micro_batches_respect_the_token_budget():
    lengths = [5, 30, 7, 12, 3, 40, 8]
    batches = policy.micro_batches(lengths, 32)
    assert all(len(row) == 1 for b in batches for row in b)      # unpacked: one sequence per row
    assert sorted(row[0] for b in batches for row in b) == list(range(7))
    for b in batches:
        assert len(b) == 1 or max(lengths[row[0]] for row in b) * len(b) <= 32
    assert [lengths[row[0]] for row in batches[0]] == [3, 5, 7, 8]   # sorted by length: little padding
    # padded: [3,5,7,8] -> 4 x 8, [12] -> 12, [30] -> 30, [40] -> 40: 114 tokens computed for 105
    assert policy.padded_fraction(lengths, batches) == pytest.approx(1 - 105 / 114)


def test_packed_rows_first_fit_decreasing_by_hand():
    lengths = [5, 30, 7, 12, 3, 40, 8]
    # width 40: 40 | 30+8 | 12+7+5+3 (first fit, longest first)
    assert policy.pack_rows(lengths, 40) == [[5], [1, 6], [3, 2, 0, 4]]
    batches = policy.micro_batches(lengths, 80, pack=True)        # rows of <= 40 tokens, 2 rows per micro-batch
    assert batches == [[[5], [1, 6]], [[3, 2, 0, 4]]]
    # a micro-batch is as wide as its longest row: 2 x 40 (40 | 30+8), then 1 x 27 (12+7+5+3)
    assert policy.padded_fraction(lengths, batches) == pytest.approx(1 - 105 / 107)


def test_packed_log_probs_equal_padded(tiny_model):
    """Several sequences in one row (position ids restarting, attention kept within each) give the
    same log-probs as one padded row per sequence, and so the same loss gradient."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 2000, (n,), generator=g).tolist() for n in (3, 6, 2, 5, 4)]
    completions = [torch.randint(5, 2000, (n,), generator=g).tolist() for n in (12, 1, 7, 3, 2)]
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    (packed_rows,) = policy.micro_batches(lengths, 1000, pack=True)
    assert any(len(row) > 1 for row in packed_rows)
    order = [i for row in packed_rows for i in row]
    padded_rows = [[i] for i in order]
    grads = []
    for rows in (packed_rows, padded_rows):
        model.zero_grad()
        logp, comp = policy.sequence_logprobs(model, rows, prompts, completions, pad_id=0)
        (logp * comp).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        if rows is packed_rows:
            packed_logp, packed_comp = logp.detach(), comp
    assert torch.equal(packed_comp, comp)
    valid = torch.tensor([[t + 1 < lengths[i] for t in range(comp.shape[1])] for i in order])
    assert torch.allclose(packed_logp[valid], logp.detach()[valid], atol=1e-5)
    assert (packed_logp[~valid] == 0).all()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name
