"""Tests of star.py: the SFT loss and step (FSDP2 on 1 and 2 ranks: check_fsdp_star.py under
run_torchrun), SFT learning, resume and data checks, Algorithm 1's prefix selection on a scripted
engine, and one STaR / MRT-STaR iteration (with the hf engine faked, and on vLLM). Fixtures from
conftest: tiny_model, tokenizer, warm_model, vllm_engine, restore_engine_weights.
"""

import json
import math
import os
import re
import types

import pytest
import torch

import grader
import policy
import prover
import star
from conftest import FakeEngine, run_torchrun, toy_tokenizer, _write_problems


# ==============================================================================================
# star.py: the SFT loop, Algorithm 1's selection, one iteration end to end
# ==============================================================================================

def test_sft_loss_by_hand_prompt_tokens_get_no_gradient():
    logp = torch.tensor([[-1.0, -2.0, -0.5, -4.0], [-3.0, -1.5, -2.5, -0.25]], requires_grad=True)
    mask = torch.tensor([[False, True, True, False],     # prompt, two completion tokens, padding
                         [False, False, True, True]])    # prompt, prompt, two completion tokens
    weights = torch.tensor([1.0, 2.0])
    loss = star.sft_loss(logp, mask, weights, num_tokens=4)
    # -((-2 - 0.5) * 1 + (-2.5 - 0.25) * 2) / 4 = (2.5 + 5.5) / 4
    assert loss.item() == pytest.approx(2.0)
    loss.backward()
    assert logp.grad.tolist() == [[0.0, -0.25, -0.25, 0.0], [0.0, 0.0, -0.5, -0.5]]
    # the global token count makes two micro-batches (or two ranks) add up to the full batch
    halves = [star.sft_loss(logp[r:r + 1], mask[r:r + 1], weights[r:r + 1], num_tokens=4) for r in (0, 1)]
    assert sum(h.item() for h in halves) == pytest.approx(2.0)


def test_sft_step_fsdp2_two_ranks_equal_one_process(tiny_model, tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(here, "check_fsdp_star.py")
    results = {}
    for world in (1, 2):
        run_torchrun(world, [str(script), here, str(tmp_path / f"w{world}.pt"), tiny_model], cwd=here)
        results[world] = torch.load(tmp_path / f"w{world}.pt")
    one, two = results[1], results[2]
    assert one["loss"] == pytest.approx(two["loss"], rel=1e-5) and one["loss"] > 0
    for name in one["grads"]:
        assert torch.allclose(one["grads"][name], two["grads"][name], rtol=1e-4, atol=1e-7), name
        assert torch.allclose(one["weights"][name], two["weights"][name], atol=1e-6), name


def test_select_prefix_by_hand():
    # cumulative progress [0.25, 0, 0.5, 0.5]: the peak 0.5 is reached after 3 and after 4 episodes;
    # the shorter prefix wins the tie; the first correct sample there is number 1
    assert star.select_prefix([0.25, 0.5, 0.25, 0.75, 0.75], [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 0, 0],
                                                               [0.0, 1.0, 1.0, 1.0], [1, 1, 1, 0]]) == (3, 1, 0.5)
    assert star.select_prefix([0.5, 0.25, 0.5], [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]) is None  # never above start
    assert star.select_prefix([0.0], [[0, 0]]) is None   # no episode at all


P1 = "A.\n\nB.\n\nC.\n\nWait, 7.\n\nD.\n\nE.\n\nWait, 3?\n\nF.\n\nG.\n\n</think>\n\n\\boxed{3}"   # 3 episodes, wrong
P2 = "X.\n\nY.\n\nZ.\n\n</think>\n\n\\boxed{5}"                                              # 1 episode, right


def scripted_star_respond(text, n, stop):
    """Rollouts P1 (gold 7) and P2 (gold 5). mu on P1 (m = 4): 1 right of 4 before "Wait, 7", all but
    sample 0 right after it, 2 right once "Wait, 3?" follows; on P2 always right."""
    if text.endswith("</think>\n\n"):   # pi_theta's own answer after a closed thought (Alg. 1 line 9)
        return ["The answer is \\boxed{1}.", "The answer is \\boxed{7}."][:n] + ["\\boxed{7}"] * (n - 2)
    if not text.endswith(prover.TIME_IS_UP):
        return [P1 if "p1" in text else P2] * n
    if "p2" in text:
        return [f"sample {s}: \\boxed{{5}}" for s in range(n)]
    thought = text.split("<think>\n", 1)[1]
    right = 2 if "Wait, 3?" in thought else n - 1 if "Wait, 7" in thought else 1
    return [f"sample {s}: \\boxed{{7}}" if (s >= n - right) else f"sample {s}: \\boxed{{1}}" for s in range(n)]


def _star_cfg(**kw):
    base = dict(thinking=True, rollouts=1, temperature=0.7, top_p=1.0, max_tokens=64, seed=0, prover_samples=4,
                prover_temperature=0.7, prover_max_tokens=16, variant="mrt", keep_time_is_up=False,
                weight_by_progress=False, progress_threshold=0.0, answer_source="mu",
                episode_end=None)
    return types.SimpleNamespace(**{**base, **kw})


def test_algorithm_1_selection_on_a_scripted_engine(tokenizer):
    policy.setup_distributed()
    problems = [{"id": "a", "problem": "p1", "answer": "7"}, {"id": "b", "problem": "p2", "answer": "5"}]
    engine = FakeEngine(tokenizer, scripted_star_respond)
    rows, stats = star.build_examples(engine, problems, _star_cfg(), iteration=1)
    # P1: J_r = [1/4, 1/4, 3/4, 2/4] -> cumulative progress [0, 0.5, 0.25] -> i = 2, sample 1 (sample 0 is wrong)
    # P2: J_r = [1, 1] -> no progress -> not kept
    (row,) = rows
    prefix = "A.\n\nB.\n\nC.\n\nWait, 7.\n\nD.\n\nE.\n\n"
    assert (row["id"], row["k"], row["i"], row["cumulative_progress"]) == ("a", 3, 2, 0.5)
    assert row["success_rates"] == [0.25, 0.25, 0.75, 0.5] and row["progress"] == [0.0, 0.5, -0.25]
    assert row["completion"] == prefix + "</think>\n\n" + star.ANSWER_HEAD + "sample 1: \\boxed{7}"
    assert stats["kept"] == 1 and stats["accuracy_sum"] == 1.0 and stats["j_r_empty_sum"] == 1.25
    kept = star.build_examples(engine, problems, _star_cfg(keep_time_is_up=True, weight_by_progress=True), 1)[0]
    assert kept[0]["completion"] == prefix + prover.TIME_IS_UP + "sample 1: \\boxed{7}" and kept[0]["weight"] == 0.5
    # Alg. 1 line 9 as written: the thought closed at z_{0:2}, the policy's own first correct answer there
    rows, stats = star.build_examples(engine, problems, _star_cfg(answer_source="policy"), iteration=1)
    assert [r["completion"] for r in rows] == [prefix + "</think>\n\nThe answer is \\boxed{7}."]
    assert engine.prompts[-1].endswith("<think>\n" + prefix + "</think>\n\n") and stats["no_correct_answer"] == 0
    # the default threshold sqrt(2 / m) = 0.71 at m = 4 is above P1's progress 0.5: nothing is kept
    assert star.default_progress_threshold(4) == pytest.approx(math.sqrt(0.5))
    assert star.default_progress_threshold(20) == pytest.approx(0.316, abs=1e-3)
    rows, stats = star.build_examples(engine, problems, _star_cfg(progress_threshold=None), iteration=1)
    assert rows == [] and stats["below_threshold"] == 2
    # STaR: the whole correct rollout, P2
    rows, stats = star.build_examples(engine, problems, _star_cfg(variant="star"), iteration=1)
    assert [(r["id"], r["completion"]) for r in rows] == [("b", P2)] and stats["kept"] == 1


def test_algorithm_1_iteration_writes_data_trains_and_resumes(tiny_model, tokenizer, tmp_path):
    train = _write_problems(tmp_path / "train.jsonl", [{"id": "a", "problem": "p1", "answer": "7"},
                                                       {"id": "b", "problem": "p2", "answer": "5"}])
    argv = ["--model", tiny_model, "--train", train, "--out", str(tmp_path / "run"), "--iterations", "1",
            "--prover-samples", "4", "--max-tokens", "64", "--prover-max-tokens", "16", "--batch-size", "2",
            "--max-steps", "1", "--engine", "hf", "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024", "--progress-threshold", "0"]
    engine = FakeEngine(tokenizer, scripted_star_respond)
    history = star.run(star.parse_args(argv), engine=engine)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "iter_1" / "data.jsonl")]
    assert [(r["id"], r["i"]) for r in rows] == [("a", 2)]
    assert history[0]["kept"] == 1 and history[0]["mean_i_over_k"] == pytest.approx(2 / 3)
    assert os.path.isfile(tmp_path / "run" / "iter_1" / "checkpoints" / "step_1" / "model.safetensors")
    assert engine.synced > 0                                  # the new weights went into the engine
    metrics = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [m["phase"] for m in metrics] == ["iteration", "sft", "iteration_sft"]
    # a second launch finds the iteration done: nothing is sampled or trained again
    again = FakeEngine(tokenizer, scripted_star_respond)
    assert star.run(star.parse_args(argv), engine=again) == [] and again.calls == []


def test_sft_learns_a_fixed_dataset(warm_model):
    losses = [json.loads(line)["loss"] for line in open(os.path.join(warm_model, "metrics.jsonl"))]
    assert len(losses) == 60 and losses[-1] < 0.05 * losses[0]


def test_sft_resume_after_a_kill_is_exact(tiny_model, tmp_path, monkeypatch):
    from safetensors.torch import load_file
    data = _write_problems(tmp_path / "sft.jsonl", [{"problem": f"{i}?", "completion": f"{i % 3}</think>\\boxed{{1}}",
                                                     "weight": 1 + i % 2} for i in range(12)])

    def train(out, kill_at=None):
        cfg = star.parse_args(["sft", "--model", tiny_model, "--data", data, "--out", str(out), "--lr", "1e-2",
                               "--batch-size", "4", "--max-steps", "6", "--save-every", "2"])
        examples, _ = star.load_sft_data(data, toy_tokenizer(tiny_model), cfg.thinking, cfg.max_seq_length)
        step, calls = star.sft_step, {"n": 0}

        def dies(*a, **k):
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise KeyboardInterrupt   # killed in step 5, after the step-4 checkpoint
            return step(*a, **k)
        monkeypatch.setattr(star, "sft_step", dies)
        try:
            star.sft(cfg, examples, tiny_model, toy_tokenizer(tiny_model), cfg.out)
        finally:
            monkeypatch.setattr(star, "sft_step", step)
    train(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "b", kill_at=5)
    train(tmp_path / "b")
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step_6" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step_6" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-7) for k in a)
    rows = lambda d: [(r["sft_step"], r["loss"]) for r in map(json.loads, open(tmp_path / d / "metrics.jsonl"))]  # noqa: E731
    assert rows("b") == rows("a") and [s for s, _ in rows("b")] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("content, message", [
    ('{"problem": "x"}', "sft.jsonl:1: missing or empty string field \"completion\""),
    ('{"completion": "y"}', "sft.jsonl:1: needs a \"problem\" string or a \"prompt\" list"),
    ('{"prompt": [{"role": "user"}], "completion": "y"}', "sft.jsonl:1: \"prompt\" must be a non-empty list"),
    ('{"problem": "x", "completion": "y", "weight": -1}', "sft.jsonl:1: \"weight\" must be a finite number >= 0"),
    ('\n{"problem": "x", "completion": "y"}\nnot json', "sft.jsonl:3: not valid JSON"),
])
def test_sft_data_errors_name_file_and_line(tokenizer, tmp_path, content, message):
    path = tmp_path / "sft.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        star.load_sft_data(str(path), tokenizer, True, 1024)


def test_sft_data_long_rows_skipped_or_truncated_and_chat_prompts(tokenizer, tmp_path):
    path = _write_problems(tmp_path / "sft.jsonl", [
        {"problem": "2+2?", "completion": "four " * 200},
        {"prompt": [{"role": "user", "content": "Hi"}], "completion": "Hello", "weight": 0.5}])
    examples, skipped = star.load_sft_data(path, tokenizer, True, 64)
    assert skipped == 1 and len(examples) == 1
    prompt, completion, weight = examples[0]
    assert prompt == prover.build_prompt(tokenizer, [{"role": "user", "content": "Hi"}])
    assert completion == tokenizer.encode("Hello", add_special_tokens=False) + [tokenizer.eos_token_id] and weight == 0.5
    cut, skipped = star.load_sft_data(path, tokenizer, True, 64, truncate=True)
    assert skipped == 0 and all(len(p) + len(c) <= 64 for p, c, _ in cut) and len(cut) == 2


def test_star_iteration_on_vllm_syncs_the_engine(warm_model, tokenizer, vllm_engine, tmp_path, restore_engine_weights):
    from transformers import AutoModelForCausalLM
    warm = os.path.join(warm_model, "checkpoints", "step_60")
    vllm_engine.update_weights(AutoModelForCausalLM.from_pretrained(warm).named_parameters())
    train = _write_problems(tmp_path / "train.jsonl", [{"id": f"q{i}", "problem": f"What is {i}+7-{i}?",
                                                       "answer": "7"} for i in range(4)])
    cfg = star.parse_args(["--model", warm, "--train", train, "--out", str(tmp_path / "run"), "--variant", "star",
                           "--rollouts", "2", "--max-tokens", "16", "--batch-size", "4", "--max-steps", "1",
                           "--lr", "1e-3", "--max-model-len", "1024"])
    history = star.run(cfg, engine=vllm_engine)
    rows = [json.loads(line) for line in open(tmp_path / "run" / "iter_1" / "data.jsonl")]
    assert history[0]["kept"] == len(rows) > 0 and all(grader.reward(r["completion"], "7") == 1.0 for r in rows)
    trained = AutoModelForCausalLM.from_pretrained(os.path.join(tmp_path, "run", "iter_1", "checkpoints", "step_1"))
    prompts = [prover.build_prompt(tokenizer, "What is 5+7-5?"), prover.build_prompt(tokenizer, "Hello?")]
    greedy = [s[0].token_ids for s in vllm_engine.generate(prompts, n=1, temperature=0.0, max_tokens=12)]
    for prompt, tokens in zip(prompts, greedy):
        with torch.no_grad():
            ref = trained.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        assert tokens == ref[:len(tokens)]


# ==============================================================================================
# star.py: the SFT data's "context" field (the toy warm start's forced rows)
# ==============================================================================================

def test_sft_context_field_must_be_a_string(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "p", "completion": "c"}) + "\n"
                    + json.dumps({"problem": "p", "completion": "c", "context": 3}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: \"context\" must be a string"):
        star.load_sft_data(str(path), tokenizer, True, 4096)
