"""Tests of episodes.py, text only: the <think> split, steps and episodes (App. D, Fig. 21), thought
prefixes, the budget-forcing phrases and the backtracking-search format (parse_backtrack /
render_backtrack, App. A, Fig. 30). No fixtures from conftest; the helper _para comes from it.
"""

import random
import re

import pytest

import episodes
from conftest import _para
from episodes import (BACKTRACK_MARKER, EPISODE_PHRASES, FORCING_PHRASES, format_attempt, forcing_phrase,
                      group_episodes, parse_backtrack, render_backtrack, split_episodes, split_steps, split_think,
                      thought_prefixes)


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
                        ("The answer. Wait, no.", True),   # a sentence-initial phrase opens a step (split_steps)
                        ("The answer, I Wait, no.", False), ("The answer.Waiting", False)]:
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


# ==============================================================================================
# episodes.py: a phrase that starts a sentence opens a step; the `ends` rule
# ==============================================================================================

def test_sentence_initial_phrase_opens_a_step():
    # With or without a break before it; spaces go with the phrase, newlines with the sentence before.
    assert split_steps("No.Wait, try 4.") == ["No.", "Wait, try 4."]
    assert split_steps("No. Wait, try 4.") == ["No.", " Wait, try 4."]
    assert split_steps("No.\nWait, try 4.") == ["No.\n", "Wait, try 4."]
    assert split_steps("No!  But wait, x.") == ["No!", "  But wait, x."]
    assert split_steps("Hm? Alternatively, y.") == ["Hm?", " Alternatively, y."]
    assert split_steps("So. Wait. Wait") == ["So.", " Wait.", " Wait"]
    assert split_steps("Is there another way to think about this? Wait") == [
        "Is there another way to think about this?", " Wait"]
    assert split_steps("a.\n\n  Wait") == ["a.\n\n", "  Wait"]   # at a break: the same one cut
    # not at a sentence start, or not the whole phrase: no cut
    for text in ["I Wait, no.", "No4Wait, try 4.", "No, Wait.", "No. Waiting.", "No. wait, no.", "No. But waiting."]:
        assert split_steps(text) == [text], text
    assert split_steps("No. Wait, try 4.", phrases=()) == ["No. Wait, try 4."]   # App. D's rule alone


def test_dropped_break_before_a_phrase_moves_no_episode_boundary():
    full = _para("Try 4.", "g(4) is low.", "So x > 4.", "Wait, try 7.", "g(7) is high.", "So x < 7.",
                 "Alternatively, try 5.", "g(5) fits.", "So x = 5.")
    eps = ["Try 4.\n\ng(4) is low.\n\nSo x > 4.\n\n", "Wait, try 7.\n\ng(7) is high.\n\nSo x < 7.\n\n",
           "Alternatively, try 5.\n\ng(5) fits.\n\nSo x = 5."]
    assert split_episodes(full) == eps
    dropped = full.replace("4.\n\nWait", "4.Wait")
    assert split_steps(dropped)[2:4] == ["So x > 4.", "Wait, try 7.\n\n"]
    assert split_episodes(dropped) == ["Try 4.\n\ng(4) is low.\n\nSo x > 4.", eps[1], eps[2]]
    spaced = full.replace("4.\n\nWait", "4. Wait")
    assert split_episodes(spaced) == ["Try 4.\n\ng(4) is low.\n\nSo x > 4.", " " + eps[1], eps[2]]
    both = dropped.replace("7.\n\nAlternatively", "7.Alternatively")
    assert split_episodes(both) == ["Try 4.\n\ng(4) is low.\n\nSo x > 4.", "Wait, try 7.\n\ng(7) is high.\n\nSo x < 7.",
                                    eps[2]]
    # The rule's limit: a phrase glued to a word or digit starts no sentence, and the two episodes merge.
    glued = full.replace("4.\n\nWait", "4Wait")
    assert split_episodes(glued) == ["Try 4.\n\ng(4) is low.\n\nSo x > 4Wait, try 7.\n\ng(7) is high.\n\nSo x < 7.\n\n",
                                     eps[2]]


def test_sentence_cut_counts_for_min_steps():
    thought = _para("a1", "a2. Wait, b.", "c")
    assert split_steps(thought) == ["a1\n\n", "a2.", " Wait, b.\n\n", "c"]
    assert split_episodes(thought) == [thought]   # at " Wait" the episode has 2 steps, fewer than 3
    assert split_episodes(thought, min_steps=2) == ["a1\n\na2.", " Wait, b.\n\nc"]
    # two phrases in one paragraph: the first opens an episode, the second stays (its episode has 1 step)
    assert split_episodes("a1\n\na2\n\na3. Wait, b. Wait, c.") == ["a1\n\na2\n\na3.", " Wait, b. Wait, c."]


def test_dropping_a_break_before_a_phrase_keeps_the_episodes_seeded():
    # Thoughts of sentences joined by breaks; one break before a phrase is dropped, or written as a space
    # or one newline: the episodes are the same, only the break's characters differ.
    rng = random.Random(7)
    sentences = ["Try 4.", "g(4) is low.", "So x > 4.", "Hmm, 3 + 4 = 7!", "Is it 5?", "Wait, try 7.",
                 "But wait, x = 3.", "Alternatively, try 5.", "But hold on, check it.", "Waiting helps.", "I Wait.",
                 "Is there another way to think about this?", "Done. Wait, no.", "But let me double-check."]
    checked = 0
    for _ in range(300):
        parts = [rng.choice(sentences) for _ in range(rng.randint(2, 14))]
        thought = "\n\n".join(parts) + rng.choice(["", "\n\n"])
        where = [i for i in range(1, len(parts)) if episodes.starts_with_phrase(parts[i])]
        if not where:
            continue
        at = len("\n\n".join(parts[:rng.choice(where)]))   # the dropped break is thought[at:at + 2]
        cuts = [len(p) for p in thought_prefixes(split_episodes(thought))[1:-1]]
        for glue, keep in (("", 0), (" ", 0), ("\n", 1)):   # keep: the glue characters the sentence before keeps
            broken = thought[:at] + glue + thought[at + 2:]
            moved = [c if c <= at else at + keep if c == at + 2 else c - 2 + len(glue) for c in cuts]
            bounds = [0] + moved + [len(broken)]
            assert split_episodes(broken) == [broken[a:b] for a, b in zip(bounds, bounds[1:])], (thought, glue)
        checked += 1
    assert checked > 200


def test_lossless_with_sentence_ends_random_seeded():
    rng = random.Random(4321)
    atoms = ["Wait", "But wait", "Alternatively", "But hold on", ". ", ".", "!", "?", "?\n", ", ", " ", "x = 3",
             "\n", "\n\n", "\t", "Waiting", "wait", "I Wait", "4", "é"]
    for _ in range(500):
        thought = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 40)))
        min_steps = rng.randint(1, 4)
        eps = split_episodes(thought, min_steps=min_steps)
        steps = split_steps(thought)
        assert "".join(eps) == thought and "".join(steps) == thought and all(eps) and all(steps)
        # the episodes hold whole steps, which they cut into again the same way
        assert [s for e in eps for s in split_steps(e)] == steps
        assert all(len(split_steps(e)) >= min_steps for e in eps[:-1])
        assert all(episodes.starts_with_phrase(e) for e in eps[1:])


TOY_ENDS = r": x (?:in \d+\.\.\d+|= \d+)[^\w\s]?"   # toy.py's statements: the interval left, or x found


def test_ends_pattern_cuts_after_each_statement():
    first = "Try 4.\n\ng(4)=30, target 37, too low: x in 5..9.\n\n"
    second = "Wait, try 7.\n\ng(7)=56, target 37, too high: x in 5..6.\n\n"
    assert split_episodes(first + second, ends=TOY_ENDS) == [first, second]
    assert split_episodes(first[:-2] + second, ends=TOY_ENDS) == [first[:-2], second]   # the break dropped
    # a comma for the period, the break and the phrase dropped: the cut is where it was
    assert split_episodes(first[:-3] + ", try 7." + second[12:], ends=TOY_ENDS) == [first[:-3] + ",", " try 7." + second[12:]]
    assert split_episodes(first + second, ends=re.compile(TOY_ENDS)) == [first, second]
    # spaces after a statement go with the next episode (where a BPE writes " Wait"), newlines with it
    assert split_episodes(first[:-2] + " " + second, ends=TOY_ENDS) == [first[:-2], " " + second]
    assert split_episodes(first[:-1] + "  " + second, ends=TOY_ENDS) == [first[:-1], "  " + second]
    # the text after the last statement is one more episode; whitespace alone joins the last one
    third = "But let me double-check.\n\ng(5)"
    assert split_episodes(first + second + third, ends=TOY_ENDS) == [first, second, third]
    assert split_episodes(first + second[:-2] + " \t", ends=TOY_ENDS) == [first, second[:-2] + " \t"]
    # neither the phrase rule nor min_steps: a phrase inside an episode does not cut, one step is enough
    found = "Alternatively, try 5.\n\nWait, g(5)=37, target 37, found: x = 5.\n\n"
    assert split_episodes(first + found, ends=TOY_ENDS, min_steps=3) == [first, found]
    assert split_episodes("g(9)=9: x = 9.", ends=TOY_ENDS) == ["g(9)=9: x = 9."]
    assert split_episodes("Try 4.\n\nWait, try 5.", ends=TOY_ENDS) == ["Try 4.\n\nWait, try 5."]
    assert split_episodes("", ends=TOY_ENDS) == []
    assert split_episodes(first + second + third, ends=TOY_ENDS, max_episodes=2) == [first, second + third]


def test_ends_lossless_random_seeded():
    rng = random.Random(99)
    atoms = [": x in 5..9.", ": x = 5.", ": x in 1..2.  ", "\n\n", "\n", " ", "\t", "Wait", "Try 4.", "x", ":"]
    for _ in range(500):
        thought = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 30)))
        eps = split_episodes(thought, ends=TOY_ENDS)
        assert "".join(eps) == thought and all(eps)
        matches = list(re.finditer(TOY_ENDS, thought))
        tail = thought[matches[-1].end():] if matches else thought
        assert len(eps) == len(matches) + (1 if tail.strip() or (thought and not matches) else 0)
        # an episode ends with its statement and the whitespace through the newline after it; the last one
        # also keeps a tail of blank text
        for e in eps[:-1]:
            assert re.fullmatch(r"(?s).*" + TOY_ENDS + r"(?:\s*\n)?", e), e
        if matches and not tail.strip():
            assert re.fullmatch(r"(?s).*" + TOY_ENDS + r"\s*", eps[-1]), eps[-1]


@pytest.mark.parametrize("bad", ["", r"x*", r"(?:: x = \d+\.)?", re.compile(r"^"), r"\b"])
def test_ends_pattern_that_can_match_empty_raises(bad):
    pattern = bad if isinstance(bad, str) else bad.pattern
    with pytest.raises(ValueError, match=re.escape(f"split_episodes: ends={pattern!r} can match the empty string")):
        split_episodes("g(5)=37: x = 5.", ends=bad)


def test_forcing_phrases_cycle_in_order():
    assert [forcing_phrase(i) for i in range(6)] == ["Wait", "Alternatively", "But hold on", "But wait",
                                                      "Wait", "Alternatively"]
    assert FORCING_PHRASES == ("Wait", "Alternatively", "But hold on", "But wait")


# ==============================================================================================
# episodes.py: the backtracking-search format (App. A, Fig. 30)
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
