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
        values = functions[q["function"]]
        assert all(10 <= a < b <= 99 for a, b in zip(values, values[1:]))           # increasing, two digits
        assert values[int(q["answer"])] == q["target"]                               # g(answer) = y
        assert q["problem"] == f"Find x with {q['function']}(x)={q['target']}."
        assert grader.reward(f"</think>\n\nThe answer is \\boxed{{{q['answer']}}}.", q["answer"]) == 1.0
    assert toy.make_problems(world) == (train, held_out)                             # seeded
    # every comparison a held-out problem can make (a value of its function against its target) is made by some
    # training problem: the held-out problems are new searches, not new facts
    trained = {(v, q["target"]) for q in train for v in functions[q["function"]]}
    held = {(v, q["target"]) for q in held_out for v in functions[q["function"]]}
    assert held <= trained and len(held) > 100


# "Find x with f(x)=16." of the seeded world: f = 15, 16, 22, 41, 48, 49, 60, 75, 77, 84, so x = 1
F_PROBLEM = {"id": "toy-f-16", "problem": "Find x with f(x)=16.", "answer": "1", "function": "f", "target": 16}
FOUND = ["x in 0..9, try 5.\n\nf(5)=49, target 16, too high: x in 0..4.\n\n",              # J_r 1/10 -> 1/5
         "Wait, x in 0..4, try 7.\n\nf(7)=75, target 16, too high: x in 0..4.\n\n",        # outside: 1/5, uninformative
         "Alternatively, x in 0..4, try 1.\n\nf(1)=16, target 16, found: x = 1.\n\n",      # found: 1
         "But let me double-check.\n\nf(1)=16, target 16, found: x = 1.\n\n"]              # a double-check: 1
GAVE_UP = ["x in 0..9, try 0.\n\nf(0)=15, target 16, too low: x in 1..9.\n\n",             # 1/10 -> 1/9
           "Wait, x in 1..9, try 5.\n\nf(5)=49, target 16, too high: x in 1..3.\n\n",      # a wrong interval (1..4): 1/4
           "Wait, x in 1..3, try 3.\n\nf(3)=42, target 16, too high: x in 1..2.\n\n"]      # a wrong value (41): 1/2


def test_toy_world_is_the_seeded_one_of_the_hand_examples():
    assert toy.hidden_functions(toy.World())["f"] == [15, 16, 22, 41, 48, 49, 60, 75, 77, 84]
    train, held_out = toy.make_problems(toy.World())
    assert F_PROBLEM in train + held_out


def test_toy_scripted_j_r_is_one_over_the_implied_interval_by_hand():
    world = toy.World()
    rates = [toy.scripted_success_rate(world, F_PROBLEM, p) for p in episodes.thought_prefixes(FOUND)]
    assert rates == [1 / 10, 1 / 5, 1 / 5, 1.0, 1.0]
    # the true checks count, not what the thought wrote: GAVE_UP's wrong interval and value change nothing
    rates = [toy.scripted_success_rate(world, F_PROBLEM, p) for p in episodes.thought_prefixes(GAVE_UP)]
    assert rates == [1 / 10, 1 / 9, 1 / 4, 1 / 2]
    oracle = toy.oracle_success_rate(world)
    assert oracle({"problem": F_PROBLEM["problem"], "answer": "1"}, "".join(FOUND[:2])) == 1 / 5
    with pytest.raises(ValueError, match="not a toy-world problem"):
        oracle({"problem": "What is 1+1?", "answer": "2"}, "")


def test_toy_traces_segment_at_their_statements_and_progress_is_the_information_added():
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
        assert closed and toy.split_toy_episodes(thought) == trace["episodes"]
        # the cut does not depend on the step break after a statement: dropping every one keeps the episodes
        dropped = re.sub(r"\.\n\n(?=Wait|Alternatively|But)", ".", thought)
        assert [e.replace("\n\n", "") for e in toy.split_toy_episodes(dropped)] == \
            [e.replace("\n\n", "") for e in trace["episodes"]]
        # nor on the period: a per-episode policy wrote "too high: x in 0..1, x in 0..1, try 0." (a comma for the
        # period, the break and the phrase dropped); its episodes are still one check and one statement each
        comma = re.sub(r"(: x in \d+\.\.\d+)\.\n\n(?:Wait|Alternatively|But wait), ", r"\1, ", thought)
        assert [(toy.CHECK.findall(e), toy.read_statements(e)) for e in toy.split_toy_episodes(comma)] == \
            [(toy.CHECK.findall(e), toy.read_statements(e)) for e in trace["episodes"]]
        assert grader.reward(completion, q["answer"]) == float(trace["answer"] == int(q["answer"]))
        rates = [toy.scripted_success_rate(world, q, p) for p in episodes.thought_prefixes(trace["episodes"])]
        # the warm start states the true interval: J_r is one over the stated interval's size
        assert rates[1:] == [1 / (hi - lo + 1) for lo, hi in trace["intervals"]]
        per_episode, _ = prover.progress(rates)
        for j, r in enumerate(per_episode):
            before = trace["intervals"][j - 1] if j else (0, world.symbols - 1)
            informative = trace["intervals"][j] != before
            kinds.add("informative" if informative else "uninformative")
            assert (r > 0) if informative else (r == 0)
    assert kinds == {"informative", "uninformative"}


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
        lo, hi = toy.implied_interval(world, q, r["context"][:-len(prover.TIME_IS_UP)])
        assert lo <= answer <= hi                                   # x once found, else a guess inside the interval
        assert all(functions[q["function"]][int(c)] == int(v) for _, c, v in toy.CHECK.findall(r["context"]))
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
    assert record["gates_met"] == {name: bool(test(record["gates"])) for name, test in toy.GATES.items()}
    assert all(record["gates_met"].values()), record["gates"]
    assert record["gates"]["update_accuracy"] >= 0.99
    assert toy.warm_start() == toy.WARM_START_DIR


def test_toy_warm_start_checks_and_answers_the_forced_suffix(toy_engine):
    world = toy.World()
    _, held_out = toy.make_problems(world)
    gates = toy.measure(toy_engine, world, held_out, n=8, max_tokens=toy.TRAINING_BUDGET, m=2, seed=1)
    assert gates["mu_extractable"] >= 0.9          # mu's answers are extractable on >= 90 % of prefixes
    assert gates["check_accuracy"] >= 0.9 and gates["interval_accuracy"] >= 0.9
    assert gates["format_valid"] >= 0.9 and gates["truncated"] <= 0.05
    assert gates["mu_found"] >= 0.8                 # mu answers x once a prefix has found it


def test_toy_measure_on_scripted_engine_exact_values(tokenizer):
    world = toy.World()
    q = F_PROBLEM
    responses = ["".join(FOUND) + toy.final_answer(1), "".join(GAVE_UP) + toy.final_answer(2)]

    def respond(text, n, stop):
        if text.endswith(prover.TIME_IS_UP):      # mu: x once a prefix says found, else 3
            return [f"Answer:** \\boxed{{{1 if 'found' in text.split('<think>')[1] else 3}}}."] * n
        return responses[:n]
    got = toy.measure(FakeEngine(tokenizer, respond), world, [q], n=2, m=3)
    assert got["pass@1"] == 0.5 and got["format_valid"] == 1.0 and got["gave_up"] == 0.5 and got["truncated"] == 0.0
    assert got["checks"] == 7 and got["check_accuracy"] == 6 / 7 and got["interval_accuracy"] == 6 / 7
    assert got["update_accuracy"] == 6 / 7   # GAVE_UP's second statement: 1..3 where 1..9 and "too high" at 5 give 1..4
    assert got["mu_found"] == 1.0            # the two prefixes after "found: x = 1"
    assert got["mu_vs_ideal"] == 0.0         # 7 open prefixes (x untried), mu always answers 3
    assert got["prefixes"] == 9 and got["prefixes_after_a_wrong_check"] == 0 and got["mean_episodes"] == 3.5
    sizes = [len(tokenizer.encode(e, add_special_tokens=False)) for e in FOUND + GAVE_UP]
    assert got["unproductive_token_share"] == pytest.approx((sizes[1] + sizes[3]) / sum(sizes))
    # 7 episodes: one outside try before x is found, one double-check after
    assert got["uninformative_share"] == 1 / 7 and got["double_check_share"] == 1 / 7
    cumulative = [sum(sizes[:i]) for i in range(5)]
    assert got["scripted_curves"][0] == [cumulative, [1 / 10, 1 / 5, 1 / 5, 1.0, 1.0]]
    assert got["scripted_curves"][1] == [[0, sizes[4], sizes[4] + sizes[5], sum(sizes[4:])], [1 / 10, 1 / 9, 1 / 4, 1 / 2]]
    assert set(toy.measure(FakeEngine(tokenizer, respond), world, [q], n=2, mu=False)) == {
        "pass@1", "check_accuracy", "interval_accuracy", "update_accuracy", "format_valid", "truncated", "unproductive_token_share",
        "gave_up", "mean_episodes", "samples", "checks", "uninformative_share", "double_check_share",
        "scripted_curves", "statements_without_break"}
    assert got["statements_without_break"] == 0.0
    drifted = [responses[0].replace("0..4.\n\nAlternatively", "0..4.Alternatively")]   # a dropped break
    got = toy.measure(FakeEngine(tokenizer, lambda text, n, stop: drifted * n), world, [q], n=1, mu=False)
    assert got["statements_without_break"] == 0.25 and got["mean_episodes"] == 4   # the cut holds without it
    assert got["uninformative_share"] == 0.25 and got["double_check_share"] == 0.25
    drifted = [responses[0].replace("0..4.\n\nAlternatively, ", "0..4, ")]   # a comma for the period, no break or phrase
    got = toy.measure(FakeEngine(tokenizer, lambda text, n, stop: drifted * n), world, [q], n=1, mu=False)
    assert got["statements_without_break"] == 0.25 and got["mean_episodes"] == 4
    assert got["uninformative_share"] == 0.25 and got["check_accuracy"] == 1.0
