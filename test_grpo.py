"""Tests of grpo.py: the outcome and length-penalty rewards, group advantages, the clipped loss and its
gradient, one step under FSDP2 on 1 and 2 ranks (check_fsdp_grpo.py under run_torchrun), learning,
weight sync into vLLM, exact resume, flag checks and the CLI under torchrun. Fixtures from conftest:
tiny_model, tokenizer, vllm_engine, restore_engine_weights.
"""

import argparse
import json
import math
import os
import types

import pytest
import torch

import grpo
import mrt_rl
import prover
import star
from conftest import PROBLEMS, first_token_reward, run_torchrun


# ==============================================================================================
# grpo.py: the outcome reward with and without a thought block (--thinking)
# ==============================================================================================

def test_outcome_reward_follows_thinking():
    problems = [{"problem": "1+1?", "answer": "2"}]
    group = [prover.Sample("1+1 = 2.\n\nSo \\boxed{2}.", [1], "stop"), prover.Sample("So \\boxed{2}", [1], "length"),
             prover.Sample("Hmm.</think>\\boxed{2}", [1], "stop")]
    assert grpo.outcome_reward(problems, [group], types.SimpleNamespace(thinking=False)) == [[1.0, 1.0, 1.0]]
    assert grpo.outcome_reward(problems, [group], types.SimpleNamespace(thinking=True)) == [[0.0, 0.0, 1.0]]
    # --zero-truncated: the completion cut at the length limit (the second) gets 0 whatever it says
    cut = types.SimpleNamespace(thinking=False, zero_truncated=True)
    assert grpo.outcome_reward(problems, [group], cut) == [[1.0, 0.0, 1.0]]


# ==============================================================================================
# grpo.py: the objective by hand, FSDP2 across ranks, weight sync, learning, resume
# ==============================================================================================

def test_length_penalty_reward_arora_zanette_by_hand():
    def sample(text, n):
        return prover.Sample(text, [1] * n, "stop")
    problems = [{"answer": "7"}, {"answer": "7"}]
    groups = [[sample("\\boxed{7}", 100), sample("\\boxed{7}", 200), sample("\\boxed{7}", 300), sample("\\boxed{3}", 50)],
              [sample("\\boxed{7}", 10), sample("\\boxed{8}", 10)]]
    cfg = types.SimpleNamespace(thinking=False, length_penalty_alpha=0.2)
    (a, b) = grpo.length_penalty_reward(problems, groups, cfg)
    # correct lengths 100, 200, 300: mean 200, population std 81.65, z = -1.2247, 0, 1.2247;
    # sigmoid(-1.2247) = 1 / (1 + 3.4033) = 0.22710, so 1 - 0.2 * 0.22710 = 0.95458, and so on
    assert a == pytest.approx([0.95458, 0.9, 0.84542, 0.0], abs=1e-5)
    assert b == pytest.approx([0.9, 0.0])  # one correct completion: std 0, sigmoid(0) = 1/2


def test_group_advantages_by_hand():
    a = grpo.group_advantages([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], 4)
    # group 1: mean 0.5, std (unbiased) sqrt(1/3); group 2: all equal -> 0
    s = (1 / 3) ** 0.5
    assert torch.allclose(a, torch.tensor([0.5 / (s + 1e-4), -0.5 / (s + 1e-4), -0.5 / (s + 1e-4), 0.5 / (s + 1e-4),
                                           0, 0, 0, 0]), atol=1e-6)
    assert not torch.isnan(a).any()
    assert torch.allclose(grpo.group_advantages([3.0, 1.0], 2, scale="none"), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="groups of 4"):
        grpo.group_advantages([1.0, 0.0, 1.0], 4)


def test_grpo_loss_by_hand_with_clipping():
    # two sequences, two completion tokens each (the second of sequence 2 is padding)
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 0.9], [0.5, 1.0]]))       # ratios
    adv = torch.tensor([1.0, -2.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    loss, stats = grpo.grpo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.3)
    # seq 1 (A=+1): min(1.5, clip 1.3) = 1.3; min(0.9, 0.9) = 0.9.  seq 2 (A=-2): min(-1.0, clip(0.5)=0.8 * -2 = -1.6) = -1.6
    expected = -(1.3 + 0.9 - 1.6) / 3
    assert loss.item() == pytest.approx(expected)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)   # 1.5 > 1.3 with A > 0; 0.5 < 0.8 with A < 0
    seq_loss, _ = grpo.grpo_loss(logp, old, adv, mask, 0.2, 0.3, loss_agg="seq-mean")
    assert seq_loss.item() == pytest.approx(-((1.3 + 0.9) / 2 - 1.6) / 2)
    # the KL term: k3 estimator exp(ref - logp) - (ref - logp) - 1
    ref = torch.zeros(2, 2)
    kl_loss, kl_stats = grpo.grpo_loss(logp, logp.detach(), adv, mask, beta=0.5, ref_logp=ref)
    d = -logp
    k3 = (torch.exp(d) - d - 1)[mask.bool()]
    assert kl_stats["kl"] == pytest.approx(k3.mean().item())
    assert kl_loss.item() == pytest.approx((-(1 + 1 - 2) + 0.5 * k3.sum().item()) / 3)
    # global normalisation: two halves with the global count add up to the whole
    a, _ = grpo.grpo_loss(logp[:1], old[:1], adv[:1], mask[:1], 0.2, 0.3, num_tokens=3)
    b, _ = grpo.grpo_loss(logp[1:], old[1:], adv[1:], mask[1:], 0.2, 0.3, num_tokens=3)
    assert (a + b).item() == pytest.approx(expected)
    assert math.isfinite(loss.item())


def test_grpo_gradient_equals_reinforce_closed_form():
    # A one-step "policy": softmax over V logits theta. On-policy (ratio 1) the GRPO gradient is
    # -(1/N) sum_i A_i grad log pi(a_i) = -(1/N) sum_i A_i (onehot(a_i) - softmax(theta)).
    torch.manual_seed(0)
    theta = torch.randn(6, requires_grad=True)
    actions = torch.tensor([0, 3, 3, 5, 1])
    adv = torch.tensor([1.0, -0.5, 2.0, 0.25, -1.0])
    logp = torch.log_softmax(theta, 0)[actions].unsqueeze(1)            # [N, 1]
    loss, _ = grpo.grpo_loss(logp, logp.detach(), adv, torch.ones(5, 1))
    loss.backward()
    probs = torch.softmax(theta.detach(), 0)
    closed = -sum(a * (torch.nn.functional.one_hot(x, 6).float() - probs) for a, x in zip(adv, actions)) / 5
    assert torch.allclose(theta.grad, closed, atol=1e-6)


@pytest.mark.parametrize("loss_agg, layout", [("token-mean", "pad"), ("seq-mean", "pad"), ("seq-mean", "pack")])
def test_fsdp2_two_ranks_equal_one_process(tiny_model, tmp_path, loss_agg, layout):
    """One GRPO step: FSDP2 over 2 ranks (sequences packed into rows, or padded) equals one plain
    process with padded rows."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(here, "check_fsdp_grpo.py")
    results = {}
    for world in (1, 2):
        out = tmp_path / f"world{world}.pt"
        run_torchrun(world, [str(script), here, str(out), tiny_model, loss_agg, layout if world == 2 else "pad"], cwd=here)
        results[world] = torch.load(out)
    one, two = results[1], results[2]
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5)
    assert one["grads"].keys() == two["grads"].keys()
    assert any(g.abs().max() > 0 for g in one["grads"].values())
    for name in one["grads"]:
        assert torch.allclose(one["grads"][name], two["grads"][name], rtol=1e-4, atol=1e-7), name
        assert torch.allclose(one["weights"][name], two["weights"][name], atol=1e-5), name


def _grpo_cfg(tiny_model, out, *extra):
    p = argparse.ArgumentParser()
    grpo.add_grpo_args(p)
    argv = ["--model", tiny_model, "--out", str(out), "--batch-size", "32", "--num-generations", "8",
            "--max-prompt-length", "256", "--max-completion-length", "4", "--engine", "hf", "--enforce-eager", "--dtype", "float32", "--temperature", "1.0",
            "--warmup-ratio", "0", "--max-model-len", "1024", "--beta", "0", *extra]  # beta > 0: the CLI tests
    return grpo.check_args(p, p.parse_args(argv))


def test_grpo_learns_a_learnable_reward(tiny_model, tmp_path):
    cfg = _grpo_cfg(tiny_model, tmp_path / "run", "--lr", "1e-2", "--max-steps", "20", "--save-every", "1000")
    grpo.train(cfg, step_fn=grpo.reward_step(first_token_reward))
    rewards = [json.loads(line)["reward_mean"] for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert len(rewards) == 20
    assert sum(rewards[:3]) / 3 < 0.3 and sum(rewards[-5:]) / 5 > 0.6, rewards
    assert os.path.isfile(tmp_path / "run" / "checkpoints" / "step_20" / "model.safetensors")


def _vllm_next_token_logprobs(engine, prompt, k=5):
    from vllm import SamplingParams
    out = engine.llm.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=1, temperature=0.0, logprobs=k),
                              use_tqdm=False)[0].outputs[0]
    return {tok: lp.logprob for tok, lp in out.logprobs[0].items()}


def test_grpo_weight_sync_engine_decodes_like_the_policy(tiny_model, tokenizer, vllm_engine, tmp_path, restore_engine_weights):
    from transformers import AutoModelForCausalLM
    cfg = _grpo_cfg(tiny_model, tmp_path / "run", "--lr", "1e-2", "--max-steps", "2", "--save-every", "1")
    prompts = [prover.build_prompt(tokenizer, p) for p in PROBLEMS]
    before = [_vllm_next_token_logprobs(vllm_engine, p) for p in prompts]
    grpo.train(cfg, engine=vllm_engine, step_fn=grpo.reward_step(first_token_reward))
    trained = AutoModelForCausalLM.from_pretrained(str(tmp_path / "run" / "checkpoints" / "step_2"), dtype=torch.float32)
    greedy = [s[0].token_ids for s in vllm_engine.generate(prompts, n=1, temperature=0.0, max_tokens=12)]
    for prompt, tokens, old in zip(prompts, greedy, before):
        with torch.no_grad():
            ref = trained.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
            logprobs = torch.log_softmax(trained(torch.tensor([prompt])).logits[0, -1].double(), -1)
        assert tokens == ref[:len(tokens)]
        # the engine's next-token distribution is the trained policy's, and no longer the old one
        new = _vllm_next_token_logprobs(vllm_engine, prompt)
        assert all(abs(lp - logprobs[tok].item()) < 1e-3 for tok, lp in new.items())
        assert any(abs(lp - old.get(tok, -1e9)) > 1e-2 for tok, lp in new.items())
    original = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    vllm_engine.update_weights(original.named_parameters())
    restored = [_vllm_next_token_logprobs(vllm_engine, p) for p in prompts]
    assert all(abs(restored[i][tok] - lp) < 1e-4 for i in range(len(prompts)) for tok, lp in before[i].items())


@pytest.mark.parametrize("save_dtype", ["float32", "bfloat16"])
def test_grpo_resume_continues_exactly(tiny_model, tmp_path, save_dtype):
    """A run killed in step 3 and resumed from its step-2 checkpoint ends where the straight run does;
    with bf16 checkpoints (what users load: config.json says bfloat16) it resumes from the fp32 master
    weights saved beside the optimizer, so that too is exact."""
    from safetensors.torch import load_file
    dtype_flags = ["--save-dtype", save_dtype]
    straight = _grpo_cfg(tiny_model, tmp_path / "a", "--lr", "1e-2", "--max-steps", "4", "--save-every", "2", *dtype_flags)
    grpo.train(straight, step_fn=grpo.reward_step(first_token_reward))

    calls = {"n": 0}

    def killed_after_two_steps(problems, groups, cfg):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the run dies in step 3, after the step-2 checkpoint
        return first_token_reward(problems, groups, cfg)
    interrupted = _grpo_cfg(tiny_model, tmp_path / "b", "--lr", "1e-2", "--max-steps", "4", "--save-every", "2", *dtype_flags)
    with pytest.raises(KeyboardInterrupt):
        grpo.train(interrupted, step_fn=grpo.reward_step(killed_after_two_steps))
    resumed = _grpo_cfg(tiny_model, tmp_path / "b", "--lr", "1e-2", "--max-steps", "4", "--save-every", "2", "--resume",
                        *dtype_flags)
    grpo.train(resumed, step_fn=grpo.reward_step(first_token_reward))

    a = load_file(str(tmp_path / "a" / "checkpoints" / "step_4" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step_4" / "model.safetensors"))
    start = load_file(os.path.join(tiny_model, "model.safetensors"))
    assert a.keys() == b.keys()
    assert {v.dtype for v in a.values()} == {getattr(torch, save_dtype)}
    assert json.load(open(tmp_path / "a" / "checkpoints" / "step_4" / "config.json"))["dtype"] == save_dtype
    assert any(not torch.equal(a[k].float(), start[k]) for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-7), k
    if save_dtype == "bfloat16":   # the master weights too, and the HF weights are them rounded
        master_a = torch.load(tmp_path / "a" / "checkpoints" / "step_4" / "trainer_state.pt", weights_only=False)["master_weights"]
        master_b = torch.load(tmp_path / "b" / "checkpoints" / "step_4" / "trainer_state.pt", weights_only=False)["master_weights"]
        for k in a:
            assert torch.allclose(master_a[k], master_b[k], atol=1e-7) and torch.equal(master_a[k].bfloat16(), a[k]), k
    rows_a = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    rows_b = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["reward_mean"] for r in rows_a] == [r["reward_mean"] for r in rows_b]


def parse_rl(argv):
    p = argparse.ArgumentParser()
    mrt_rl.add_args(p)
    return mrt_rl.check_args(p, p.parse_args(argv))


def test_grpo_rejects_bad_flags(tiny_model, tmp_path, capsys):
    for extra, message in [(["--batch-size", "30"], "multiple of --num-generations"),
                           (["--max-completion-length", "5000"], "does not fit"),
                           (["--resume"], "no checkpoint"), (["--ppo-epochs", "0"], "--ppo-epochs: expected an integer >= 1"),
                           (["--train-years", "2020"], "--train-years: expected FIRST-LAST"),
                           (["--train-years", "1989-2023"], "math_train_4k.jsonl:1: a year filter needs a year"),
                           (["--length-penalty-alpha", "1.5"], "--length-penalty-alpha: expected a number in [0, 1)")]:
        with pytest.raises(SystemExit):
            _grpo_cfg(tiny_model, tmp_path / "x", *extra)
        assert message in capsys.readouterr().err
    for parse, argv, message in [
            (parse_rl, ["--model", tiny_model, "--alpha", "-1"], "--alpha: expected a number >= 0"),
            (parse_rl, ["--model", tiny_model, "--advantage", "mean"], "invalid choice: 'mean'"),
            (star.parse_args, ["--model", tiny_model, "--out", "x", "--iterations", "0"], "--iterations: expected an integer >= 1"),
            (star.parse_args, ["--model", tiny_model, "--out", "x", "--train", "nowhere.jsonl"],
             "--train: problems 'nowhere.jsonl'"),
            (star.parse_args, ["sft", "--model", tiny_model, "--data", "nowhere.jsonl", "--out", "x"], "--data: no such file")]:
        with pytest.raises(SystemExit):
            parse(argv)
        assert message in capsys.readouterr().err, argv


def test_grpo_cli_under_torchrun_two_ranks(hf_cache, tmp_path):
    # The whole loop under torchrun: the model named by its Hugging Face id (resolved from a local
    # cache: rank 0 fetches, rank 1 waits, then reads the snapshot), prompts sharded over 2 ranks,
    # each with its own engine, weight sync on both, a checkpoint that transformers loads.
    from transformers import AutoModelForCausalLM
    from conftest import TINY_MODEL_ID
    here = os.path.dirname(os.path.abspath(__file__))
    out = tmp_path / "run"
    run_torchrun(2, ["grpo.py", "--model", TINY_MODEL_ID, "--out", str(out), "--engine", "hf", "--enforce-eager", "--dtype", "float32", "--batch-size", "16",
                    "--num-generations", "4", "--max-prompt-length", "256", "--max-completion-length", "8",
                    "--max-steps", "2", "--save-every", "1", "--lr", "1e-3", "--max-model-len", "1024"],
                 cwd=here, env=hf_cache)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["completion_tokens"] == 16 * 8 or r["truncation_rate"] < 1 for r in rows)
    assert {"reward_mean", "accuracy", "clip_fraction", "kl", "grad_norm", "lr", "generation_tokens_per_s",
            "training_tokens_per_s", "seconds_generate", "seconds_train", "seconds_sync"} <= set(rows[0])
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "step_1", "step_2"]
    AutoModelForCausalLM.from_pretrained(str(out / "checkpoints" / "step_2"))
    # resumed on 2 ranks: rank 0 reads the optimizer state and broadcasts it, rank 1 keeps its shard
    run_torchrun(2, ["grpo.py", "--model", TINY_MODEL_ID, "--out", str(out), "--engine", "hf", "--enforce-eager", "--dtype", "float32",
                     "--batch-size", "16", "--num-generations", "4", "--max-prompt-length", "256",
                     "--max-completion-length", "8", "--max-steps", "3", "--save-every", "1", "--lr", "1e-3",
                     "--max-model-len", "1024", "--resume"], cwd=here, env=hf_cache)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3] and math.isfinite(rows[2]["grad_norm"])


def test_an_unknown_model_id_is_one_clear_error_on_every_rank(hf_cache, tmp_path):
    """An id the cache lacks (offline): both ranks stop at argument checking with the same message
    naming --model, and none hangs waiting for the other."""
    import subprocess
    import sys
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "grpo.py", "--model", "mrt-test/not-cached", "--out", str(tmp_path / "x"), "--engine", "hf"],
                          cwd=here, capture_output=True, text=True, timeout=120, env={**os.environ, **hf_cache})
    assert proc.returncode != 0
    assert proc.stderr.count("--model: mrt-test/not-cached is not in the local Hugging Face cache") == 2, proc.stderr[-3000:]
    # the one traceback is torchrun's own report that its children failed; the ranks print none
    assert proc.stderr.count("Traceback") == 1 and "ChildFailedError" in proc.stderr
