"""Tests of mrt.py: Algorithm 2 (MRT-RL) on the GRPO loop (rewards and advantages by hand, prefixes from
pi_ref, resume, the shared prefix on vLLM), the default toy-world run (toy_run), and that every entry
point (mrt.py, grpo.py, star.py, evaluate.py) ends cleanly under python and torchrun. Fixtures from
conftest: tiny_model, tokenizer, chatml_model, vllm_engine, restore_engine_weights, toy_engine.
"""

import json
import math
import os
import re

import pytest
import torch

import grpo
import argparse
import compare
import mrt_rl
import policy
import prover
import toy
from conftest import FakeEngine, run_cli, toy_tokenizer, _write_problems


# ==============================================================================================
# mrt.py: Algorithm 2 (MRT-RL) on the GRPO loop
# ==============================================================================================

REF_ROLLOUT = "A.\n\nB.\n\nC.\n\nWait, D.\n\nE.\n\nF.\n\n</think>\n\n\\boxed{1}"   # two episodes


def scripted_rl_respond(text, n, stop):
    """pi_ref's rollout is REF_ROLLOUT; on "p1" (gold 7) the continuations are right, wrong, right,
    right and 3 of the 4 terminations are right; on "p2" (gold 5) everything is wrong."""
    if text.endswith(prover.TIME_IS_UP):
        return (["\\boxed{7}"] * 3 + ["\\boxed{2}"])[:n] if "p1" in text else ["\\boxed{0}"] * n
    if text.endswith("<think>\n"):
        return [REF_ROLLOUT] * n
    assert text.endswith("Wait, D.\n\nE.\n\nF.\n\n") is False and text.endswith("C.\n\n")  # context = prompt + z_{0:1}
    return (["</think>\\boxed{7}", "</think>\\boxed{8}", "</think>\\boxed{7}", "</think>\\boxed{7}"] if "p1" in text
            else ["</think>\\boxed{4}"] * 4)[:n]


def parse_rl(argv):
    p = argparse.ArgumentParser()
    mrt_rl.add_args(p)
    return mrt_rl.check_args(p, p.parse_args(argv))


def _mrt_cfg(tiny_model, tmp_path, *extra):
    train = _write_problems(tmp_path / "train.jsonl", [{"id": "a", "problem": "p1", "answer": "7"},
                                                       {"id": "b", "problem": "p2", "answer": "5"}])
    return parse_rl(["--model", tiny_model, "--train", train, "--out", str(tmp_path / "run"), "--batch-size", "8",
                              "--num-generations", "4", "--max-prompt-length", "256", "--max-completion-length", "64",
                              "--engine", "hf", "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024", "--warmup-ratio", "0", "--beta", "0",
                              "--min-prefix-episodes", "1", "--prover-max-tokens", "8", *extra])


@pytest.mark.parametrize("form", ["progress", "baseline", "joint"])
def test_algorithm_2_rewards_and_advantages_by_hand(tiny_model, tokenizer, tmp_path, form):
    policy.setup_distributed()
    cfg = _mrt_cfg(tiny_model, tmp_path, "--advantage", form, "--alpha", "1.0", "--max-steps", "1")
    step_fn = mrt_rl.Algorithm2(cfg, tokenizer)
    engine = FakeEngine(tokenizer, scripted_rl_respond)
    mine = grpo.step_problems(grpo.training_problems(cfg, tokenizer)[0], cfg, 0)
    rollout = step_fn(engine, mine, cfg, 0)
    advantages = rollout.advantages.tolist()
    by_id = {q["id"]: i for i, q in enumerate(mine)}
    a, b = by_id["a"], by_id["b"]
    size = 8 if form == "joint" else 4
    rewards = [rollout.rewards[i * size:(i + 1) * size] for i in range(len(mine))]
    contexts = [rollout.prompts[i * size:(i + 1) * size] for i in range(len(mine))]
    adv_a, adv_b = advantages[a * size:(a + 1) * size], advantages[b * size:(b + 1) * size]
    # p1: continuation rewards r = [1, 0, 1, 1], terminations 3 of 4 right: J_r(mu | q, z_{0:1}) = 0.75
    if form == "progress":   # Eq. 3 as trained: GRPO's advantage for r (mean 0.75, unbiased std 0.5)
        # plus 1.0 * (r - 0.75)
        assert rewards[a] == [1, 0, 1, 1]
        assert adv_a == pytest.approx([0.25 / 0.5001 + 0.25, -0.75 / 0.5001 - 0.75, 0.25 / 0.5001 + 0.25,
                                       0.25 / 0.5001 + 0.25])
        assert mrt_rl.progress_advantages([[1, 0, 1, 1]], [[1, 1, 1, 0]], 1.0).tolist() == pytest.approx(adv_a)
    elif form == "baseline":  # the advantage is r - 0.75 itself
        assert rewards[a] == [1, 0, 1, 1] and adv_a == pytest.approx([0.25, -0.75, 0.25, 0.25])
    else:                     # one group of 8: [1, 0, 1, 1 | 1, 1, 1, 0]: mean 0.75, unbiased std sqrt(1.5 / 7)
        std = math.sqrt(1.5 / 7)
        assert rewards[a] == [1, 0, 1, 1, 1, 1, 1, 0]
        assert adv_a == pytest.approx([d / (std + 1e-4) for d in (0.25, -0.75, 0.25, 0.25, 0.25, 0.25, 0.25, -0.75)])
        assert contexts[a][4:] == [contexts[a][0] + tokenizer.encode(prover.TIME_IS_UP, add_special_tokens=False)] * 4
    assert adv_b == [0.0] * size   # p2: nothing right, no signal
    # the context of every continuation is the prompt followed by pi_ref's first episode, token for token
    prefix = "A.\n\nB.\n\nC.\n\n"
    head = prover.build_prompt(tokenizer, "p1")
    ref_ids = tokenizer.encode(REF_ROLLOUT, add_special_tokens=False)
    assert contexts[a][0] == head + prover.prefix_token_ids(tokenizer, ref_ids, prefix)
    m = rollout.metrics
    assert m["prefix_j"] == (2, 2) and m["prefix_k"] == (4, 2) and m["j_r_prefix"] == (0.75, 2)
    assert m["terminations_all_fail"] == (1, 2) and m["terminations_all_succeed"] == (0, 2)
    assert m["progress_bonus"] == (pytest.approx(0.25 * 3 - 0.75 + 0.0), 8)


def test_per_episode_credit_by_hand(tiny_model, tokenizer, tmp_path):
    """--progress-credit episode on the scripted engine: every continuation closes its thought at once
    after z_{0:1}, so it has no episode (mu is asked nothing) and all its tokens are the answer segment,
    credited r - J_r(mu | q, z_{0:1}): per token, exactly the trace form's advantage."""
    policy.setup_distributed()
    cfg = _mrt_cfg(tiny_model, tmp_path, "--progress-credit", "episode", "--alpha", "1.0", "--max-steps", "1")
    mine = grpo.step_problems(grpo.training_problems(cfg, tokenizer)[0], cfg, 0)
    rollout = mrt_rl.Algorithm2(cfg, tokenizer)(FakeEngine(tokenizer, scripted_rl_respond), mine, cfg, 0)
    terminations = {"a": [1, 1, 1, 0], "b": [0, 0, 0, 0]}   # J_r = 0.75 on p1, 0 on p2
    groups = [rollout.rewards[i * 4:(i + 1) * 4] for i in range(len(mine))]
    trace = mrt_rl.progress_advantages(groups, [terminations[q["id"]] for q in mine], 1.0).tolist()
    assert [len(a) for a in rollout.advantages] == [len(c) for c in rollout.completions]
    assert rollout.advantages == [pytest.approx([x] * len(c)) for x, c in zip(trace, rollout.completions)]
    assert rollout.metrics["mu_prefixes"] == (0, 1)
    with pytest.raises(SystemExit):   # the per-episode credit replaces the progress form's term only
        _mrt_cfg(tiny_model, tmp_path, "--progress-credit", "episode", "--advantage", "joint")


@pytest.mark.parametrize("oracle", [False, True])
def test_per_episode_credit_on_vllm_with_the_toy_model(toy_engine, tmp_path, oracle):
    """One --progress-credit episode step on vLLM with the toy warm start and mu for real: each token's
    credit (its advantage minus GRPO's outcome advantage) is constant within an episode and changes
    only at the episode ends continuation_episodes finds (the toy world's statements); a bonus is a
    difference of J_r's estimated from G = 4 samples (a multiple of 1/4); a truncated continuation gets
    none. With the oracle (the toy run's mrt-rl-episode-oracle) each episode's credit is exactly the
    scripted J_r's difference across it, and the answer's is r - J_r at the end of the thought."""
    policy.setup_distributed()
    policy.load_weights_into_engine(toy.WARM_START_DIR, toy_engine)
    world = toy.World()
    path = _write_problems(tmp_path / "train.jsonl", toy.make_problems(world)[0][:8])
    cfg = mrt_rl.config(model=toy.WARM_START_DIR, train=path, out=str(tmp_path / "run"), batch_size=32, num_generations=4,
                        max_prompt_length=64, max_completion_length=160, max_model_len=512, beta=0.0, engine="vllm",
                        dtype="float32", progress_credit="episode", prover_max_tokens=16, thinking="on", alpha=2.0,
                        episode_end=toy.EPISODE_END)
    tok = toy_engine.tokenizer
    mine = grpo.step_problems(grpo.training_problems(cfg, tok)[0], cfg, 0)
    rollout = mrt_rl.Algorithm2(cfg, tok, toy.oracle_success_rate(world) if oracle else None)(toy_engine, mine, cfg, 0)
    with open(tmp_path / "run" / "prefixes" / "iter_0.rank0.json") as f:
        prefixes = json.load(f)["0"]
    outcome = grpo.group_advantages(rollout.rewards, 4).tolist()
    assert (rollout.metrics["mu_tokens"][0] == 0) if oracle else (rollout.metrics["mu_prefixes"][0] > 0
                                                                 and rollout.metrics["mu_tokens"][0] > 0)
    j_r = toy.oracle_success_rate(world)
    segments = 0
    for i, (ids, adv, cut) in enumerate(zip(rollout.completions, rollout.advantages, rollout.truncated)):
        credit = [(a - outcome[i]) / cfg.alpha for a in adv]
        if cut:
            assert credit == pytest.approx([0.0] * len(ids), abs=1e-6)
            continue
        sample = prover.Sample(tok.decode(ids, skip_special_tokens=True), ids, "stop")
        start = prefixes[i // 4]["prefix"]
        thought_prefixes, ends, _ = mrt_rl.continuation_episodes(tok, sample, start, True, toy.EPISODE_END)
        bounds = [0] + [e for e in ends if 0 < e < len(ids)] + [len(ids)]
        for a, b in zip(bounds, bounds[1:]):
            assert max(credit[a:b]) - min(credit[a:b]) < 1e-6             # one value per episode
            if not oracle:
                assert credit[a] * 4 == pytest.approx(round(credit[a] * 4), abs=1e-5)
        if oracle:   # exact progress: J_r after each episode minus J_r before it, then r - J_r(z_{0:k})
            q = mine[i // 4]
            rates = [j_r(q, start)] + [j_r(q, p) for p in thought_prefixes]
            expected = [b - a for a, b in zip(rates, rates[1:])] + [rollout.rewards[i] - rates[-1]]
            assert [credit[a] for a in bounds[:-1]] == pytest.approx(expected[:len(bounds) - 1], abs=1e-6)
        segments += len(bounds) - 1
    assert segments > len(rollout.completions)   # the continuations do have episodes


def test_per_episode_credit_segments_a_continuation_token_for_token(tokenizer):
    """continuation_episodes cuts at the tokens that spell each episode; episode_bonuses are Def. 6.1's
    differences, the answer's r - J_r, 0 when truncated; they sum to the trace bonus r - J_r(z_{0:j})."""
    prefix = "A.\n\nB.\n\nC.\n\n"
    text = "Wait, D.\n\nE.\n\nF.\n\nBut wait, G.\n\nH.\n\nI.\n\n</think>\n\n\\boxed{7}"
    ids = tokenizer.encode(text, add_special_tokens=False)
    sample = prover.Sample(text, ids, "stop")
    thought_prefixes, ends, closed = mrt_rl.continuation_episodes(tokenizer, sample, prefix, thinking=True)
    first, second = "Wait, D.\n\nE.\n\nF.\n\n", "But wait, G.\n\nH.\n\nI.\n\n"
    assert closed and thought_prefixes == [prefix + first, prefix + first + second]
    assert tokenizer.decode(ids[:ends[0]]) == first and tokenizer.decode(ids[:ends[1]]) == first + second
    bonuses = mrt_rl.episode_bonuses(0.25, [0.5, 0.5], 1.0, truncated=False)
    assert bonuses == [0.25, 0.0, 0.5] and sum(bonuses) == 1.0 - 0.25
    assert mrt_rl.episode_bonuses(0.25, [0.5, 0.5], 0.0, truncated=True) == [0.0, 0.0, 0.0]
    credit = mrt_rl.episode_token_credit(bonuses, ends, len(ids))
    assert credit == [0.25] * ends[0] + [0.0] * (ends[1] - ends[0]) + [0.5] * (len(ids) - ends[1])
    adv = mrt_rl.episode_advantages([[1.0, 0.0]], [bonuses, [0.0]], [ends, []], [len(ids), 3], alpha=2.0, scale="none")
    assert adv == [[0.5 + 2 * c for c in credit], [-0.5] * 3]


# A tabular policy small enough to enumerate: the toy world's decisions with 3 digits and a budget of 3
# episodes. Each episode is one action: a new try (finds x with chance 1 / #untried), a re-try, or stop
# and guess among the untried digits (the answer segment); once x is found the answer follows. mu is
# exact: J_r = 1 once x is tried, else 1 / #untried.
TABULAR_ACTIONS = ("new", "retry", "stop")


def tabular_traces(symbols=3, budget=3):
    """Every trace: (steps [(action, a re-try was possible)], chance probability, reward, J_r after each
    episode, truncated)."""
    out = []

    def grow(steps, prob, tried, rates):
        if len(steps) == budget:
            out.append((steps, prob, 0.0, rates, True))
            return
        untried = symbols - tried
        stop = steps + [("stop", tried > 0)]
        out.append((stop, prob / untried, 1.0, rates, False))
        out.append((stop, prob * (1 - 1 / untried), 0.0, rates, False))
        new = steps + [("new", tried > 0)]
        out.append((new, prob / untried, 1.0, rates + [1.0], False))
        if untried > 1:
            grow(new, prob * (1 - 1 / untried), tried + 1, rates + [1 / (untried - 1)])
        if tried > 0:
            grow(steps + [("retry", True)], prob, tried, rates + [1 / untried])
    grow([], 1.0, 0, [])
    return out


def tabular_expected_updates(theta0, symbols=3, G=2, alpha=1.0):
    """The exact expected update E[(1/G) sum_i sum_t A_{i,t} grad log pi(a_{i,t})] of every advantage form,
    over every group of G traces (and, for joint, every draw of the G terminations), and grad E[r]."""
    import itertools
    traces = tabular_traces(symbols)
    theta = theta0.clone().requires_grad_(True)

    def log_pi(action, retry_possible):
        names = TABULAR_ACTIONS if retry_possible else ("new", "stop")
        logits = theta if retry_possible else theta[[0, 2]]
        return logits[names.index(action)] - torch.logsumexp(logits, 0)
    logp = [torch.stack([log_pi(a, ok) for a, ok in steps]) for steps, *_ in traces]
    probs = [c * float(lp.detach().sum().exp()) for (_, c, *_), lp in zip(traces, logp)]
    assert sum(probs) == pytest.approx(1.0, abs=1e-12)
    j0 = 1 / symbols
    terminations = [[1.0] + [0.0] * (symbols - 1)]   # mean 1 / symbols: J_r at the empty prefix, exactly
    surrogate = dict.fromkeys(("outcome", "progress", "baseline", "joint", "episode"), 0.0)
    for group in itertools.product(range(len(traces)), repeat=G):
        p = math.prod(probs[i] for i in group)
        r = [[traces[i][2] for i in group]]
        for name, adv in (("outcome", grpo.group_advantages(r[0], G, "none")),
                          ("progress", mrt_rl.progress_advantages(r, terminations, alpha, "none")),
                          ("baseline", mrt_rl.termination_baseline(r, terminations))):
            surrogate[name] = surrogate[name] + p * sum(a * logp[i].sum() for a, i in zip(adv.tolist(), group)) / G
        for t in itertools.product((0.0, 1.0), repeat=G):   # joint: the G terminations, Bernoulli(J_r) draws
            pt = math.prod(j0 if x else 1 - j0 for x in t)
            adv = mrt_rl.joint_advantages(r, [list(t)], "none").tolist()[:G]   # the continuations' part
            surrogate["joint"] = surrogate["joint"] + p * pt * sum(a * logp[i].sum() for a, i in zip(adv, group)) / G
        per_token = mrt_rl.episode_advantages(
            r, [mrt_rl.episode_bonuses(j0, traces[i][3], traces[i][2], traces[i][4]) for i in group],
            [list(range(1, len(traces[i][3]) + 1)) for i in group], [len(traces[i][0]) for i in group], alpha, "none")
        surrogate["episode"] = surrogate["episode"] + p * sum((torch.tensor(a, dtype=torch.float64) * logp[i]).sum()
                                                              for a, i in zip(per_token, group)) / G
    expected_reward = sum(c * lp.sum().exp() * rew for (_, c, rew, *_), lp in zip(traces, logp))
    grad_reward = torch.autograd.grad(expected_reward, theta, retain_graph=True)[0]
    return grad_reward, {k: torch.autograd.grad(v, theta, retain_graph=True)[0] for k, v in surrogate.items()}


def test_algorithm_2_forms_are_outcome_grpo_in_expectation_and_episode_credit_is_not():
    """With one J_r per prompt, each of Eq. 3's three forms has exactly the expected update of outcome
    GRPO, up to a positive scale (token sums, Dr. GRPO scaling): (1 - 1/G) for GRPO, (1 - 1/G + alpha) for
    progress, 1 for baseline, (1 - 1/(2G)) for joint. Per-episode credit changes the direction."""
    theta0 = torch.log(torch.tensor([0.45, 0.25, 0.30], dtype=torch.float64))   # new, re-try, stop
    grad_reward, got = tabular_expected_updates(theta0, G=2, alpha=1.0)
    # grad E[r] against an independent path: central differences of E[r] from the Bellman recursion
    def value(theta, tried=0, left=3, symbols=3):
        if left == 0:
            return 0.0
        weights = theta.exp() if tried else theta.exp() * torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
        p_new, p_retry, p_stop = (weights / weights.sum()).tolist()
        untried = symbols - tried
        found_later = value(theta, tried + 1, left - 1) if untried > 1 else 0.0
        return (p_stop / untried + p_new * (1 / untried + (1 - 1 / untried) * found_later)
                + (p_retry * value(theta, tried, left - 1) if tried else 0.0))
    eps = 1e-6
    numeric = [(value(theta0 + eps * e) - value(theta0 - eps * e)) / (2 * eps) for e in torch.eye(3, dtype=torch.float64)]
    assert grad_reward.tolist() == pytest.approx(numeric, abs=1e-8)
    for name, scale in (("outcome", 0.5), ("progress", 1.5), ("baseline", 1.0), ("joint", 0.75)):
        assert got[name].tolist() == pytest.approx((scale * grad_reward).tolist(), abs=1e-6), name   # float32 advantages
    episode = got["episode"]
    cosine = float(episode @ grad_reward / (episode.norm() * grad_reward.norm()))
    assert cosine < 0.999
    # the progress term alone (episode - outcome): new tries up, re-tries and stops down, in other
    # proportions than grad E[r]
    extra = (episode - got["outcome"]).tolist()
    assert extra[0] > 0 and extra[1] < 0 and extra[2] < 0
    assert extra[1] / extra[0] != pytest.approx(grad_reward[1].item() / grad_reward[0].item(), rel=0.1)


def test_algorithm_2_loss_ignores_the_prefix_tokens():
    prompt_and_prefix, continuation = [1, 2, 3, 4, 5], [6, 7]
    ids, attn, mask = policy.pad_sequences([prompt_and_prefix], [continuation], pad_id=0)
    logp = torch.zeros(mask.shape, requires_grad=True)
    loss, _ = grpo.grpo_loss(logp, logp.detach(), torch.tensor([1.0]), mask, num_tokens=2, num_seqs=1)
    loss.backward()
    # positions 0..3 predict prompt/prefix tokens: no gradient; 4 and 5 predict the continuation
    assert mask.tolist() == [[False, False, False, False, True, True]]
    assert logp.grad[0, :4].abs().sum() == 0 and (logp.grad[0, 4:] != 0).all()


def test_algorithm_2_prefixes_come_from_pi_ref_and_refresh(tiny_model, tmp_path):
    cfg = _mrt_cfg(tiny_model, tmp_path, "--max-steps", "4", "--steps-per-iteration", "2", "--save-every", "2",
                   "--lr", "1e-2", "--min-prefix-episodes", "0", "--max-completion-length", "24", "--advantage", "joint")
    tok = toy_tokenizer(tiny_model)
    algorithm_2 = mrt_rl.Algorithm2(cfg, tok)

    def step_fn(engine, mine, c, step):
        # a reward the random model can learn (its answers are never right), so that the weights move:
        # the joint form's group advantages of 1 when the first token id is below 205 (first_token_reward)
        rollout = algorithm_2(engine, mine, c, step)
        rollout.rewards = [1.0 if comp[0] < 205 else 0.0 for comp in rollout.completions]
        rollout.advantages = grpo.group_advantages(rollout.rewards, 2 * c.num_generations, c.scale_rewards)
        return rollout
    grpo.train(cfg, step_fn=step_fn)
    problems = grpo.training_problems(cfg, tok)[0]

    def resample(weights, iteration):
        engine = prover.HFEngine(weights, dtype="float32", max_model_len=cfg.max_model_len, enforce_eager=True)
        steps = range(2 * iteration, 2 * iteration + 2)
        return json.loads(json.dumps(mrt_rl.sample_partial_rollouts(engine, [(s, grpo.step_problems(problems, cfg, s)) for s in steps],
                                                         cfg, iteration)))

    saved = [json.load(open(tmp_path / "run" / "prefixes" / f"iter_{i}.rank0.json")) for i in (0, 1)]
    ckpt2 = str(tmp_path / "run" / "checkpoints" / "step_2")
    assert saved[0] == resample(tiny_model, 0)    # iteration 0: the starting model's samples
    assert saved[1] == resample(ckpt2, 1)         # iteration 1: pi_ref = the weights after step 2,
    assert saved[1] != resample(tiny_model, 1)    # not the starting model's any more


def test_algorithm_2_resume_mid_iteration_is_exact(tiny_model, tmp_path):
    from safetensors.torch import load_file
    tok = toy_tokenizer(tiny_model)

    def run(out, kill_at=None, resume=False):
        cfg = _mrt_cfg(tiny_model, tmp_path, "--max-steps", "4", "--steps-per-iteration", "2", "--save-every", "1",
                       "--lr", "1e-2", "--min-prefix-episodes", "0", "--max-completion-length", "24",
                       "--out", str(out), *(["--resume"] if resume else []))
        algorithm_2 = mrt_rl.Algorithm2(cfg, tok)

        def step_fn(engine, mine, c, step):
            rollout = algorithm_2(engine, mine, c, step)
            if kill_at is not None and len(open(os.path.join(str(out), "metrics.jsonl")).readlines()) == kill_at:
                raise KeyboardInterrupt   # killed in step kill_at + 1: inside iteration 1, after its sampling
            return rollout
        if kill_at is not None:
            os.makedirs(out, exist_ok=True)
            open(os.path.join(str(out), "metrics.jsonl"), "a").close()
        grpo.train(cfg, step_fn=step_fn)
    run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", kill_at=3)
    run(tmp_path / "b", resume=True)
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step_4" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step_4" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    rows = lambda d: [(r["step"], r["prefix_j"], r["loss"]) for r in map(json.loads, open(tmp_path / d / "metrics.jsonl"))]  # noqa: E731
    assert rows("a") == rows("b")
    # the checkpoints are HF folders
    from transformers import AutoModelForCausalLM
    AutoModelForCausalLM.from_pretrained(str(tmp_path / "b" / "checkpoints" / "step_4"))


def test_algorithm_2_on_vllm_shares_the_prefix(tiny_model, tokenizer, vllm_engine, tmp_path, restore_engine_weights):
    long_problem = " ".join(f"item {i} weighs {i % 7} grams;" for i in range(60)) + " what is the total?"
    train = _write_problems(tmp_path / "train.jsonl", [{"id": f"q{i}", "problem": f"{i}: {long_problem}", "answer": "1"}
                                                       for i in range(4)])
    cfg = parse_rl(["--model", tiny_model, "--train", train, "--out", str(tmp_path / "run"), "--batch-size", "8",
                             "--num-generations", "4", "--max-prompt-length", "900", "--max-completion-length", "24",
                             "--prover-max-tokens", "8", "--max-model-len", "1024", "--max-steps", "4",
                             "--steps-per-iteration", "2", "--beta", "0"])
    grpo.train(cfg, engine=vllm_engine, step_fn=mrt_rl.Algorithm2(cfg, tokenizer))
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:   # prompt tokens vLLM computed for a step, against one prefill of q + z_{0:j} plus the suffixes
        assert r["prompt_tokens_computed"] <= 1.3 * r["prompt_tokens_limit"], r
        if "seconds_prefixes" not in r:  # (an iteration's first step finds q in the cache, from pi_ref's sampling)
            assert r["prompt_tokens_limit"] <= r["prompt_tokens_computed"], r


# ==============================================================================================
# Every entry point ends cleanly: exit 0 and no traceback, under python and torchrun, vLLM and hf
# ==============================================================================================

CLI_RUNS = [
    # (script, ranks: None = plain python, engine, model: "r1" thinks, "chatml" has no thought block)
    ("mrt.py", None, "vllm", "r1"),         # Algorithm 2: 2 iterations x 2 steps
    ("mrt.py", 2, "vllm", "r1"),
    ("mrt.py --smoke", 1, "hf", "chatml"),
    ("grpo.py", None, "vllm", "chatml"),   # vLLM's exit handler used to run after the group was gone
    ("grpo.py", 2, "vllm", "r1"),          # two engines joined to the job as external launchers
    ("evaluate.py", None, "vllm", "chatml"),
    ("evaluate.py", 2, "vllm", "r1"),
    ("star.py", 2, "vllm", "r1"),          # Algorithm 1: rollouts and mu sharded, the data gathered
    ("star.py sft", None, "hf", "chatml"),
]


@pytest.mark.parametrize("script, ranks, engine, model", CLI_RUNS)
def test_cli_exits_cleanly(tiny_model, chatml_model, tmp_path, script, ranks, engine, model):
    here = os.path.dirname(os.path.abspath(__file__))
    path = tiny_model if model == "r1" else chatml_model
    common = ["--model", path, "--engine", engine, "--dtype", "float32", "--max-model-len", "1024", "--enforce-eager"]
    if script == "mrt.py --smoke":
        args = ["mrt.py", "--smoke", *common, "--num-problems", "2", "--max-tokens", "24", "--prover-max-tokens", "8"]
    elif script == "mrt.py":
        args = [script, *common, "--out", str(tmp_path / "run"), "--batch-size", "8", "--num-generations", "2",
                "--max-prompt-length", "256", "--max-completion-length", "16", "--prover-max-tokens", "8",
                "--max-steps", "4", "--steps-per-iteration", "2", "--save-every", "2"]
        if ranks == 2:   # Sec. 6.2's per-episode credit through the entry point, its metrics summed over ranks
            args += ["--progress-credit", "episode"]
    elif script == "star.py":
        args = [script, *common, "--out", str(tmp_path / "run"), "--num-problems", "4", "--max-tokens", "24",
                "--prover-samples", "2", "--prover-max-tokens", "8", "--batch-size", "2", "--max-steps", "1"]
    elif script == "star.py sft":
        data = tmp_path / "sft.jsonl"
        data.write_text("".join(json.dumps({"problem": f"{i}?", "completion": "\\boxed{1}"}) + "\n" for i in range(4)))
        args = ["star.py", "sft", "--model", path, "--data", str(data), "--out", str(tmp_path / "run"),
                "--batch-size", "2", "--max-steps", "2"]
    elif script == "grpo.py":
        args = [script, *common, "--out", str(tmp_path / "run"), "--batch-size", "8", "--num-generations", "4",
                "--max-prompt-length", "256", "--max-completion-length", "16", "--max-steps", "1"]
    else:
        args = [script, *common, "--out", str(tmp_path / "r.json"), "--benchmarks", "amc23", "--limit", "2",
                "--num-samples", "2", "--max-tokens", "16", "--analysis", "accuracy,episodes", "--traces", "1",
                "--prover-samples", "2", "--prover-max-tokens", "8", "--direct-n", "2", "--direct-max-tokens", "8",
                "--no-plots"]
    proc = run_cli(args, cwd=here, nproc=ranks)
    thinking = model == "r1"
    if script == "mrt.py --smoke":
        assert f"thinking: {'on' if thinking else 'off'} (--thinking auto)" in proc.stdout
    elif script == "mrt.py":
        from transformers import AutoModelForCausalLM
        rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
        assert [r["step"] for r in rows] == [1, 2, 3, 4] and all("j_r_prefix" in r for r in rows)
        assert all(("mu_prefixes" in r) == (ranks == 2) for r in rows)
        assert sorted(os.listdir(tmp_path / "run" / "prefixes")) == [f"iter_{i}.rank{r}.json" for i in (0, 1)
                                                                     for r in range(ranks or 1)]
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "checkpoints" / "step_4"))
    elif script == "star.py":
        assert os.path.isfile(tmp_path / "run" / "iter_1" / "data.jsonl") and os.path.isfile(tmp_path / "run" / "iter_1" / "trained")
    elif script == "star.py sft":
        assert [json.loads(line).get("sft_step") for line in open(tmp_path / "run" / "metrics.jsonl")] == [None, 1, 2]
    elif script == "grpo.py":
        assert [json.loads(line)["step"] for line in open(tmp_path / "run" / "metrics.jsonl")] == [1]
        assert os.path.isfile(tmp_path / "run" / "checkpoints" / "step_1" / "model.safetensors")
    else:
        results = json.load(open(tmp_path / "r.json"))
        assert results["config"]["thinking"] is thinking
        assert results["benchmarks"]["amc23"]["episodes"]["traces"] == 2


# vLLM's known-harmless lines (machine.HARMLESS_VLLM_WARNINGS and INFO lines) that must not reach a run's console
NOISE = ("Attempted to load weight", "Failed to load weights", "Reloading and processing weights took",
         "Successfully reset prefix cache")


def test_mrt_rl_on_four_ranks_with_vllm_and_a_resume(tiny_model, tmp_path):
    """What only several ranks exercise: MRT-RL with per-episode credit under torchrun on 4 ranks, each
    with its own vLLM engine joined to the job (external launcher), 2 steps and a resume to step 3. Every
    problem is the same text, so the ranks' pi_ref samples differ only if their sampling seeds do; the
    resumed run trains step 3 only; the console carries none of vLLM's known-harmless lines."""
    here = os.path.dirname(os.path.abspath(__file__))
    data = tmp_path / "same.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "problem": "What is 1+1?", "answer": "2"}) + "\n" for i in range(16)))
    out = tmp_path / "run"
    args = ["mrt.py", "--model", tiny_model, "--engine", "vllm", "--dtype", "auto", "--enforce-eager",
            "--max-model-len", "512", "--train", str(data), "--out", str(out), "--batch-size", "16",
            "--num-generations", "2", "--max-prompt-length", "128", "--max-completion-length", "32",
            "--prover-max-tokens", "8", "--progress-credit", "episode",
            "--steps-per-iteration", "2", "--save-every", "1", "--keep-checkpoints", "1"]
    first = run_cli(args + ["--max-steps", "2"], cwd=here, nproc=4, timeout=600)
    samples = [[p["rollout_ids"] for p in json.load(open(out / "prefixes" / f"iter_0.rank{r}.json"))["0"]]
               for r in range(4)]
    assert all(len(s) == 2 for s in samples)
    assert len({json.dumps(s) for s in samples}) == 4, "two ranks drew the same pi_ref samples: their seeds collide"
    resumed = run_cli(args + ["--max-steps", "3", "--resume"], cwd=here, nproc=4, timeout=600)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3] and all("mu_prefixes" in r for r in rows)
    assert [d for d in sorted(os.listdir(out / "checkpoints")) if d.startswith("step_")] == ["step_3"]   # --keep-checkpoints 1
    for proc in (first, resumed):
        console = proc.stdout + proc.stderr
        assert not [line for line in console.splitlines() if any(n in line for n in NOISE)], console[-3000:]


# ==============================================================================================
# The default run: the toy world (mrt.py with no --model)
# ==============================================================================================

def test_toy_quick_run_end_to_end_and_resume(tmp_path, toy_engine):
    argv = ["--quick", "--out", str(tmp_path), "--steps", "2", "--batch-size", "16", "--star-rollouts", "1",
            "--eval-samples", "2", "--eval-traces", "1", "--engine", "vllm", "--dtype", "float32", "--no-plots",
            "--methods", ",".join(compare.TOY_METHODS), "--max-completion-length", "160", "--eval-max-tokens", "192"]
    args = compare.parse_toy_args(argv)
    assert (args.seeds, args.iterations, args.steps) == (1, 1, 2)           # --quick, then explicit flags
    assert args.episode_end == toy.EPISODE_END and args.budgets == [48, 96, 144, 192]
    compare.toy_run(args, engine=toy_engine)
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert set(results["methods"]) == {"base", "grpo", "mrt-rl", "mrt-rl-episode", "mrt-rl-episode-oracle",
                                       "length-penalty", "star", "mrt-star"}
    assert set(results["differences_from_grpo"]) == set(results["methods"]) - {"base", "grpo"}
    for name, d in results["differences_from_grpo"].items():   # one seed: the difference itself, no interval
        per_seed = results["per_seed"]
        assert d["pass@1"] == {"mean": pytest.approx(per_seed[name]["0"]["pass@1"] - per_seed["grpo"]["0"]["pass@1"]),
                               "ci": 0.0}
    for m in results["methods"].values():
        assert m["seeds"] == [0]
        assert 0.0 <= m["pass@1"]["mean"] <= 1.0 and m["pass@1"]["se"] == 0.0
        assert m["mean_tokens"]["mean"] > 0 and m["mean_episodes"]["mean"] > 0
        assert set(m["normalized_regret"]) == {"48", "96", "144", "192"}
        assert all(0.0 <= v["mean"] <= 1.0 for v in m["normalized_regret"].values())
    for name in results["methods"]:   # double-checks per trace: toy.measure's episodes per trace times their share
        with open(tmp_path / name / "seed_0" / "toy_measures.json") as f:
            traces = json.load(f)
        assert results["per_seed"][name]["0"]["double_checks_per_trace"] == \
            pytest.approx(traces["mean_episodes"] * traces["double_check_share"])
    assert "| mrt-rl |" in results["table"]
    for method in compare.RL_TOY_METHODS:    # trained the asked number of steps, from the warm start
        with open(tmp_path / method / "seed_0" / "metrics.jsonl") as f:
            assert [json.loads(line)["step"] for line in f] == [1, 2]
        # the learning curve: the warm start at step 0, then --curve-steps (--steps 2: 1 and 2); only the last
        # checkpoint is left
        curve = results["methods"][method]["curve"]
        assert [p["step"]["mean"] for p in curve] == [0, 1, 2]
        assert curve[0]["pass@1"] == results["methods"]["base"]["curve"][0]["pass@1"]
        assert sorted(os.listdir(tmp_path / method / "seed_0" / "checkpoints")) == ["latest", "step_2"]
    assert "| mrt-rl-episode | 2 |" in results["curve_table"]
    # a second run finds every eval.json: it trains and evaluates nothing and writes the same numbers
    before = {m: (tmp_path / m / "seed_0" / "eval.json").stat().st_mtime_ns for m in results["methods"]}
    again = compare.toy_run(args, engine=toy_engine)
    assert {m: (tmp_path / m / "seed_0" / "eval.json").stat().st_mtime_ns for m in results["methods"]} == before
    assert again["methods"] == results["methods"]


def test_toy_run_shares_its_runs_between_two_workers(tmp_path):
    """--jobs 2: two worker processes split the runs; each run is computed once, by one of them, and the
    parent assembles every seed's result (it starts no engine of its own)."""
    here = os.path.dirname(os.path.abspath(__file__))
    argv = ["compare.py", "--out", str(tmp_path), "--methods", "grpo", "--seeds", "2", "--steps", "1",
            "--batch-size", "4", "--eval-samples", "2", "--eval-traces", "1", "--max-completion-length", "96",
            "--eval-max-tokens", "96", "--engine", "vllm", "--enforce-eager", "--no-plots", "--jobs", "2"]
    proc = run_cli(argv, cwd=here, timeout=600)
    computed = re.findall(r"== (\S+), seed (\d+) \(pid (\d+)\)", proc.stdout)
    assert sorted((m, s) for m, s, _ in computed) == [("base", "0"), ("base", "1"), ("grpo", "0"), ("grpo", "1")]
    assert len({pid for _, _, pid in computed}) == 2, proc.stdout        # both workers took runs
    assert "4 runs on 2 workers of" in proc.stdout
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert sorted(results["per_seed"]["grpo"]) == ["0", "1"] and sorted(results["per_seed"]["base"]) == ["0", "1"]
    assert not os.listdir(tmp_path / "claims")   # the invocation's claims are removed


def test_toy_statistics_by_hand():
    """Mean ± standard error over seeds, and the paired difference from GRPO with its 95 % t-interval."""
    method = {0: {"x": 1.0, "curve": [{"y": 0.0}, {"y": 1.0}]}, 1: {"x": 2.0, "curve": [{"y": 1.0}, {"y": 1.0}]},
              2: {"x": 4.0, "curve": [{"y": 2.0}, {"y": 4.0}]}}
    grpo_runs = {0: {"x": 0.5, "curve": [{"y": 0.0}, {"y": 1.0}]}, 1: {"x": 1.0, "curve": [{"y": 0.0}, {"y": 1.0}]},
                 2: {"x": 2.0, "curve": [{"y": 0.0}, {"y": 1.0}]}}
    summary = compare.toy_summary(method)
    # x: mean 7/3, sample std sqrt(((1 - 7/3)^2 + (2 - 7/3)^2 + (4 - 7/3)^2) / 2) = sqrt(7/3), s.e. sqrt(7/9)
    assert summary["x"] == {"mean": pytest.approx(7 / 3), "se": pytest.approx(math.sqrt(7 / 9))}
    assert summary["curve"][1]["y"]["mean"] == 2.0 and summary["seeds"] == [0, 1, 2]
    d = compare.paired_difference(method, grpo_runs)
    # differences 0.5, 1, 2: mean 7/6, sample std sqrt(7/12), half-width t(0.975, 2) = 4.303 times sqrt(7/12) / sqrt(3)
    assert d["x"] == {"mean": pytest.approx(7 / 6), "ci": pytest.approx(4.303 * math.sqrt(7 / 12) / math.sqrt(3))}
    assert d["curve"][0]["y"] == {"mean": 1.0, "ci": pytest.approx(4.303 * 1.0 / math.sqrt(3))}
    assert compare.paired_difference({0: {"x": 1.0}}, {0: {"x": 0.25}})["x"] == {"mean": 0.75, "ci": 0.0}


def test_toy_args_errors(monkeypatch):
    with pytest.raises(SystemExit):
        compare.parse_toy_args(["--methods", "grpo,ppo"])
    with pytest.raises(SystemExit):
        compare.parse_toy_args(["--budgets", "32,x"])
    with pytest.raises(SystemExit):
        compare.parse_toy_args(["--eval-max-tokens", "1000"])      # does not fit --max-model-len 512
    with pytest.raises(SystemExit):
        compare.parse_toy_args(["--steps", "20", "--curve-steps", "10,30"])   # a curve step after the last step
    assert compare.parse_toy_args(["--steps", "20"]).curve_steps == [4, 10, 20]
    assert compare.parse_toy_args(["--jobs", "3"]).jobs == 3
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert compare.parse_toy_args([]).jobs == 1                                 # torchrun: the ranks share each run
    with pytest.raises(SystemExit):
        compare.parse_toy_args(["--jobs", "2"])
    monkeypatch.delenv("WORLD_SIZE")
    with pytest.raises(SystemExit):
        compare.parse_toy_args(["--episode-end", "(unclosed"])      # not a regular expression
    with pytest.raises(SystemExit):
        compare.parse_toy_args(["--episode-end", "x*"])             # matches the empty text
    args = compare.parse_toy_args([])
    assert (args.max_completion_length, args.eval_max_tokens, args.budgets) == (320, 320, [80, 160, 240, 320])
    assert args.methods == list(compare.DEFAULT_TOY_METHODS) and args.episode_end == toy.EPISODE_END
    args = compare.parse_toy_args(["--binding-budget"])
    assert (args.max_completion_length, args.eval_max_tokens, args.budgets) == (160, 160, [40, 80, 120, 160])


def test_per_episode_credit_is_the_same_when_a_break_before_a_phrase_is_dropped(tokenizer):
    """episodes.split_steps also cuts before a Fig. 21 phrase that starts a sentence, so a continuation that
    drops the "\\n\\n" before its second episode's "Wait" (or writes a space there) keeps its 3 episodes: the
    same bonuses (mu's J_r is scripted from the text, not its whitespace) and, on every character the two
    texts share, the same credit (a character's credit is its token's). Glued to a digit ("4Wait") the phrase
    starts no sentence and the episodes merge, the rule's limit: the first episode's tokens are then paid the
    second one's progress too, which is what would teach a policy to drop breaks."""
    import re   # (imported here: the file's imports are not this test's to change)

    parts = ["Try 4.\n\ng(4) is too low.\n\nSo x is above 4.\n\n",
             "Wait, try 7.\n\ng(7) is too high.\n\nSo x is below 7.\n\n",
             "Alternatively, try 5.\n\ng(5) is right.\n\nSo x is 5.\n\n"]
    full = "".join(parts) + "</think>\n\n\\boxed{5}"
    at = len(parts[0]) - 2   # full[at:at + 2] is the break before "Wait"

    def rate(thought_prefix):
        # toy.scripted_success_rate's rule with x = 5: found once 5 is tried, else 1 / (untried digits)
        tried = set(re.findall(r"[Tt]ry (\d)", thought_prefix))
        return 1.0 if "5" in tried else 1.0 / (10 - len(tried))

    def credit_per_character(text):
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
        prefixes, ends, closed = mrt_rl.continuation_episodes(tokenizer, prover.Sample(text, ids, "stop"), "",
                                                              thinking=True)
        bonuses = mrt_rl.episode_bonuses(rate(""), [rate(p) for p in prefixes], 1.0, truncated=not closed)
        credit = mrt_rl.episode_token_credit(bonuses, ends, len(ids))
        chars, start = [], 0
        for i, c in enumerate(credit):   # a character's credit is that of the token that wrote it
            end = len(tokenizer.decode(ids[:i + 1]))
            chars += [c] * (end - start)
            start = end
        assert len(chars) == len(text)
        return len(prefixes), bonuses, chars

    k, bonuses, credit = credit_per_character(full)
    assert k == 3 and bonuses == pytest.approx([1 / 9 - 1 / 10, 1 / 8 - 1 / 9, 1 - 1 / 8, 0.0])
    shared = [i for i in range(len(full)) if not at <= i < at + 2]
    for glue in ("", " "):
        broken = full[:at] + glue + full[at + 2:]
        assert broken[at - 2:at + len(glue) + 4] == "4." + glue + "Wait"
        k_broken, bonuses_broken, credit_broken = credit_per_character(broken)
        assert k_broken == 3 and bonuses_broken == bonuses
        moved = [i if i < at else i - 2 + len(glue) for i in shared]
        assert [credit[i] for i in shared] == [credit_broken[j] for j in moved], repr(glue)
    # the limit: "4Wait" is no sentence start, and the first two episodes merge
    glued = full[:at - 1] + full[at + 2:]
    k_glued, bonuses_glued, credit_glued = credit_per_character(glued)
    assert k_glued == 2 and bonuses_glued == pytest.approx([1 / 8 - 1 / 10, 1 - 1 / 8, 0.0])
    assert credit[0] == pytest.approx(bonuses[0]) and credit_glued[0] == pytest.approx(bonuses[0] + bonuses[1])
