"""Tests of toy.py: the tiny model of the tests (its tokenizer, template, and greedy agreement of
transformers and vLLM), and the toy world: problems, traces and the scripted J_r, warm-start rows,
the shipped warm start and its gates, toy.measure. Fixtures from conftest: tiny_model, tokenizer,
vllm_engine, toy_engine.
"""

import json
import os
import random
import re

import pytest
import torch

import episodes
import grader
import prover
import star
import toy
from conftest import FakeEngine


# ==============================================================================================
# The tiny model: loads in transformers and in vLLM, and both agree
# ==============================================================================================

def test_tiny_tokenizer_matches_raw_tokenizer_json(tiny_model, tokenizer):
    from tokenizers import Tokenizer
    raw = Tokenizer.from_file(os.path.join(tiny_model, "tokenizer.json"))
    text = ("Let $x = 12345$.\n\nWait, <think>so 3.5 + 10^{2}</think> \\boxed{\\frac{1}{2}} é 中文 "
            "Time is up.\r\n\r\n  But wait")
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert ids == raw.encode(text, add_special_tokens=False).ids
    assert tokenizer.decode(ids) == text
    for tag in ("<think>", "</think>"):
        assert len(tokenizer.encode(tag, add_special_tokens=False)) == 1
        # think tags are not special: decoding with skip_special_tokens keeps them
        assert tokenizer.decode(tokenizer.encode(tag, add_special_tokens=False), skip_special_tokens=True) == tag


def test_tiny_chat_template_r1_style(tokenizer):
    ids = prover.build_prompt(tokenizer, "What is 1+1?")
    text = tokenizer.decode(ids)
    assert text == (prover.BOS + prover.USER + "What is 1+1? " + prover.PROMPT_SUFFIX + prover.ASSISTANT + "<think>\n")
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_tiny_model_loads_in_transformers_and_vllm_greedy_agree(tiny_model, tokenizer, vllm_engine):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert model.config.head_dim == 64 and model.config.model_type == "qwen2"
    prompts = [prover.build_prompt(tokenizer, p) for p in ("What is 1+1?", "Find $x$ if $2x = 6$.")]
    outs = vllm_engine.generate(prompts, n=1, temperature=0.0, max_tokens=12)
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            hf = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
        assert out[0].token_ids == hf[0, len(prompt):].tolist()[:len(out[0].token_ids)]


# ==============================================================================================
# The toy world (toy.py)
# ==============================================================================================

def test_toy_problems_are_correct_by_construction():
    world = toy.World()
    functions = toy.hidden_functions(world)
    train, held_out = toy.make_problems(world)
    assert len(train) + len(held_out) == len(world.functions) * world.symbols
    assert len(held_out) == len(world.functions) * world.eval_per_function
    assert not {q["id"] for q in train} & {q["id"] for q in held_out}
    for q in train + held_out:
        assert sorted(functions[q["function"]]) == list(range(world.symbols))       # a permutation
        assert functions[q["function"]][int(q["answer"])] == q["target"]             # f(answer) = y
        assert q["problem"] == f"Find x with {q['function']}(x)={q['target']}."
        assert grader.reward(f"</think>\n\nThe answer is \\boxed{{{q['answer']}}}.", q["answer"]) == 1.0
    assert toy.make_problems(world) == (train, held_out)                             # seeded


def test_toy_traces_segment_into_their_episodes_and_scripted_j_r_counts():
    world = toy.World()
    functions = toy.hidden_functions(world)
    train, _ = toy.make_problems(world)
    rng = random.Random(3)
    kinds = set()
    for _ in range(300):
        q = rng.choice(train)
        trace = toy.sample_trace(world, functions, q, rng)
        completion = "".join(trace["episodes"]) + toy.final_answer(trace["answer"])
        thought, _, closed = episodes.split_think(completion)
        assert closed and episodes.split_episodes(thought) == trace["episodes"]      # App. D's cut, min_steps 3
        assert grader.reward(completion, q["answer"]) == float(trace["answer"] == int(q["answer"]))
        x = int(q["answer"])
        for j, prefix in enumerate(episodes.thought_prefixes(trace["episodes"])):
            tried = set(trace["tried"][:j])          # what the generator knows it tried, counted
            expected = 1.0 if x in tried else 1.0 / (world.symbols - len(tried))
            assert toy.scripted_success_rate(world, q, prefix) == expected
        per_episode, _ = prover.progress([toy.scripted_success_rate(world, q, p)
                                          for p in episodes.thought_prefixes(trace["episodes"])])
        for j, (ep, c, r) in enumerate(zip(trace["episodes"], trace["tried"], per_episode)):
            # a re-try or the double-check of a found x adds nothing; a new digit does, unless the
            # untried digits were down to one (then x was known by elimination: J_r was 1 already)
            redundant = c in trace["tried"][:j] or len(set(trace["tried"][:j])) == world.symbols - 1
            kinds.add("unproductive" if redundant else "productive")
            assert (r == 0) if redundant else (r > 0)
    assert kinds == {"productive", "unproductive"}


def test_toy_warm_start_rows_train_only_the_answer_after_the_suffix(tokenizer):
    world = toy.World(forced_fraction=0.5)
    train, _ = toy.make_problems(world)
    rows = toy.warm_start_rows(world, train, 200, seed=1)
    forced = [r for r in rows if "context" in r]
    assert 50 < len(forced) < 150 and len(rows) == 200
    functions = toy.hidden_functions(world)
    for r in forced:
        q = next(p for p in train if p["problem"] == r["problem"])
        assert r["context"].endswith(prover.TIME_IS_UP)
        answer = int(re.search(r"boxed\{(\d)\}", r["completion"]).group(1))
        prefix = r["context"][:-len(prover.TIME_IS_UP)]
        tried = toy.tried_digits(world, q, prefix)
        if int(q["answer"]) in tried:
            assert answer == int(q["answer"])                       # found: mu answers x
        else:
            assert answer not in tried                              # else a guess among the untried
        assert all(functions[q["function"]][int(c)] == int(v) for _, c, v in toy.CHECK.findall(prefix))
    path = os.path.join(os.path.dirname(tokenizer.name_or_path), "toy_rows.jsonl")
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in forced[:5])
    examples, _ = star.load_sft_data(path, tokenizer, thinking=True, max_seq_length=4096)
    for (prompt_ids, completion_ids, _), r in zip(examples, forced):
        assert tokenizer.decode(completion_ids, skip_special_tokens=True) == r["completion"]   # only the answer is trained
        assert prompt_ids == prover.build_prompt(tokenizer, r["problem"], r["context"])


def test_toy_shipped_warm_start_is_todays_world_and_met_its_gates():
    with open(os.path.join(toy.WARM_START_DIR, "toy_world.json")) as f:
        record = json.load(f)
    import dataclasses
    assert record["world"] == dataclasses.asdict(toy.World())     # else mrt.py would rebuild it
    assert record["command"].startswith(toy.BUILD_COMMAND)
    assert record["gates_met"] and all(record["gates_met"].values()), record["gates"]
    assert toy.warm_start() == toy.WARM_START_DIR


def test_toy_warm_start_checks_and_answers_the_forced_suffix(toy_engine):
    world = toy.World()
    _, held_out = toy.make_problems(world)
    gates = toy.measure(toy_engine, world, held_out, n=8, max_tokens=toy.TRAINING_BUDGET, m=2, seed=1)
    assert gates["mu_extractable"] >= 0.9          # mu's answers are extractable on >= 90 % of prefixes
    assert gates["check_accuracy"] >= 0.9 and gates["format_valid"] >= 0.85   # (a few traces hit the budget)
    assert gates["mu_found"] >= 0.8                 # mu answers x once a prefix has found it


def test_toy_measure_on_scripted_engine_exact_values(tokenizer):
    world = toy.World()
    functions = toy.hidden_functions(world)
    _, held_out = toy.make_problems(world)
    q = held_out[0]
    values, x, y = functions[q["function"]], int(q["answer"]), q["target"]
    a, b = [d for d in range(world.symbols) if d != x][:2]
    g = q["function"]
    found = [f"Try {a}.\n\n{g}({a})={values[a]}, target {y}.\n\nNo.\n\n",
             f"Wait, try {x}.\n\n{g}({x})={y}, target {y}.\n\nYes.\n\n"]
    wrong_value = (values[a] + 1) % world.symbols
    gave_up = [f"Try {a}.\n\n{g}({a})={wrong_value}, target {y}.\n\nNo.\n\n",       # a wrong check
               f"But wait, try {a}.\n\n{g}({a})={values[a]}, target {y}.\n\nNo.\n\n"]  # a re-try: no progress
    responses = ["".join(found) + toy.final_answer(x), "".join(gave_up) + toy.final_answer(b)]

    def respond(text, n, stop):
        if text.endswith(prover.TIME_IS_UP):      # mu: x once a prefix says Yes, else b
            return [f"Answer:** \\boxed{{{x if 'Yes' in text.split('<think>')[1] else b}}}."] * n
        return responses[:n]
    got = toy.measure(FakeEngine(tokenizer, respond), world, [q], n=2, m=3)
    assert got["pass@1"] == 0.5 and got["format_valid"] == 1.0 and got["gave_up"] == 0.5
    assert got["check_accuracy"] == 3 / 4 and got["checks"] == 4
    assert got["mu_found"] == 1.0            # the one prefix with a right Yes at x
    assert got["mu_vs_ideal"] == 0.0         # 5 open prefixes (x untried), mu always answers b
    assert got["prefixes"] == 6 and got["prefixes_after_a_wrong_check"] == 0 and got["mean_episodes"] == 2
    sizes = [len(tokenizer.encode(e, add_special_tokens=False)) for e in found + gave_up]
    assert got["unproductive_token_share"] == pytest.approx(sizes[3] / sum(sizes))
    # 4 episodes: one re-try before x is found, no double-check; the first tries are both a, and a is the
    # answer of a training problem of g unless it is the other held-out target's answer
    assert got["retry_share"] == 0.25 and got["double_check_share"] == 0.0
    trained = {int(t["answer"]) for t in toy.make_problems(world)[0] if t["function"] == g}
    assert got["first_try_training_answer"] == float(a in trained)
    # the found trace: J_r 1/10 before any try, 1/9 after a, 1 after x
    assert got["scripted_curves"][0] == [[0, sizes[0], sizes[0] + sizes[1]], [1 / 10, 1 / 9, 1.0]]
    assert got["scripted_curves"][1] == [[0, sizes[2], sizes[2] + sizes[3]], [1 / 10, 1 / 9, 1 / 9]]
    assert set(toy.measure(FakeEngine(tokenizer, respond), world, [q], n=2, mu=False)) == {
        "pass@1", "check_accuracy", "format_valid", "unproductive_token_share", "gave_up", "mean_episodes", "samples",
        "checks", "retry_share", "double_check_share", "first_try_training_answer", "scripted_curves",
        "verdicts_without_break"}
    assert got["verdicts_without_break"] == 0.0
    drifted = [responses[0].replace("No.\n\nWait", "No4Wait")]   # the format collapse of some RL runs
    assert toy.measure(FakeEngine(tokenizer, lambda text, n, stop: drifted * n), world, [q], n=1,
                       mu=False)["verdicts_without_break"] == 0.5
