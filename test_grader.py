"""Tests of grader.py, the 0/1 reward r(x, z): answer extraction, equivalence on labelled cases
(inline and data/grader_cases.jsonl), every gold answer of the evaluation sets, and the time bound
on adversarial inputs. No fixtures from conftest.
"""

import ast
import glob
import json
import os
import random
import re
import subprocess
import sys
import threading as _threading
import time

import pytest

import grader
import prover


# ==============================================================================================
# grader.py: the 0/1 reward r(x, z) -- extraction, equivalence, time bound
# ==============================================================================================

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
# Times of day against ratios; the sympy helper as a file (grader_worker.py)
# ==============================================================================================

_HERE = os.path.dirname(os.path.abspath(__file__))
_WORKER = os.path.join(_HERE, "grader_worker.py")


# ---- "a:b": a time of day or a ratio ---------------------------------------------------------

TIME_AND_RATIO_CASES = [
    # (pred, gold, expected)
    # --- times of day compare as times: equal up to a factor is not equal (the outside false positive)
    ("3:00", "11:00", False), ("11:00", "3:00", False), ("11:00", "11:00", True), ("9:30", "09:30", True),
    ("09:30", "9:30", True), ("3:10", "9:30", False), ("6:00", "12:00", False), ("1:30", "2:00", False),
    ("23:59:59", "23:59:59", True), ("1:30", "1:30:00", False),  # a minute and a half, or an hour and a half
    ("12:00:00", "6:00:00", False),
    # --- am/pm: the same time written on a 12- and a 24-hour clock; a bare 1..12 o'clock could be either half
    ("3:00 pm", "15:00", True), ("15:00", "3:00 pm", True), ("3:00 \\text{ p.m.}", "15:00", True),
    ("3:00 PM", "3:00 p.m.", True), ("3:00 pm", "3:00 am", False), ("12:30 am", "00:30", True),
    ("12:30 pm", "00:30", False), ("3:00", "3:00 pm", False), ("3:00 am", "3:00", False),
    ("8\\!:\\!34 \\text{ p.m.}", "20:34", True), ("8:34 p.m.", "8:34 a.m.", False),
    # --- ratios of non-zero numbers still compare up to a factor
    ("3:2", "6:4", True), ("6:4", "3:2", True), ("2:3", "3:2", False), ("1:2:3", "2:4:6", True),
    ("1:2:3", "2:4:7", False), ("1:2", "1:2:3", False), ("\\frac{1}{2}:1", "1:2", True), ("1.5:2", "3:4", True),
    ("10:26", "5:13", True), ("10:26", "5:12", False),  # both read as times: a gold in lowest terms is a ratio
    ("1:3", "10:30", True),  # "1:3" is no time (one-digit minutes), so this is a ratio
    # --- degenerate ratios (a zero term) compare as written only
    ("3:0", "6:0", False), ("3:0", "3:0", True), ("0:3", "0:6", False), ("0:3", "0:3", True),
    ("3:0", "3:00", False), ("3:00", "3", False), ("5:0:5", "1:0:1", False),
    # --- labels and lists reach the same rule
    ("x = 3:00", "11:00", False), ("S_1:S_2 = 10:26", "5:13", True), ("3:00, 11:00", "11:00, 3:00", True),
    ("3:00, 3:00", "11:00, 3:00", False),
]


@pytest.mark.parametrize("pred, gold, expected", TIME_AND_RATIO_CASES)
def test_is_equiv_times_of_day_and_ratios(pred, gold, expected):
    assert grader.is_equiv(pred, gold) is expected
    assert grader.is_equiv(pred, gold) is expected  # deterministic (and memoised)


@pytest.mark.parametrize("response, gold, expected", [
    ("The train arrives at $\\boxed{3:00}$.", "11:00", 0.0),  # the false positive found on outside cases
    ("The train arrives at $\\boxed{11:00}$.", "11:00", 1.0),
    ("The train arrives at $\\boxed{11:00 \\text{ a.m.}}$.", "11:00 \\text{ a.m.}", 1.0),
    ("So the clock shows $\\boxed{9:30}$.", "09:30", 1.0),
    ("The ratio simplifies: $\\boxed{6:4}$.", "3:2", 1.0),
    ("The ratio simplifies: $\\boxed{6:0}$.", "3:0", 0.0),
])
def test_reward_times_of_day(response, gold, expected):
    assert grader.reward(response, gold, thinking=False) == expected


def test_clock_reads_times_of_day_only():
    assert grader._clock("9:30") == grader._clock("09:30") == (9 * 3600 + 30 * 60, False, False)
    assert grader._clock("3:00 p.m.") == (15 * 3600, False, True)
    assert grader._clock("12:05 am") == (5 * 60, False, True)
    assert grader._clock("23:59:59") == (86399, True, False)
    for text in ("3:2", "24:00", "9:60", "13:00 pm", "0:30 am", "9:30:60", "9:30 x", "930", "a:b"):
        assert grader._clock(text) is None, text


def test_ratio_needs_non_zero_terms():
    assert grader._ratio("10:26") == [10, 26]
    for text in ("3:0", "0:5", "3:00", "1:0:1", "5", "a:b"):
        assert grader._ratio(text) is None, text


# ---- the sympy helper is grader_worker.py ----------------------------------------------------

def _project_modules():
    return {os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(_HERE, "*.py"))}


def test_worker_is_a_file_that_imports_no_project_module():
    assert os.path.isfile(_WORKER) and grader._WORKER_PATH == _WORKER
    assert not hasattr(grader, "_WORKER_CODE")  # no program left in a string
    tree = ast.parse(open(_WORKER, encoding="utf-8").read())
    assert ast.get_docstring(tree) and "grader.py" in ast.get_docstring(tree)
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert "sympy" in imported
    assert not imported & (_project_modules() - {"grader_worker"}), imported


def test_start_worker_runs_the_file():
    proc = grader._start_worker()
    try:
        assert proc.args == [sys.executable, _WORKER, repr(grader.REL_TOL)]
        assert grader._readline(proc, 60.0).strip() == "ready"
    finally:
        proc.kill()
        proc.wait()


def test_worker_speaks_the_protocol():
    """One JSON pair per line in, "1" / "0" per line out; failures are "0"; argv[1] is the tolerance."""
    proc = subprocess.Popen([sys.executable, _WORKER, repr(grader.REL_TOL)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1, cwd="/")
    try:
        assert grader._readline(proc, 60.0).strip() == "ready"
        for pair, expected in ((["x**2 - 1", "(x - 1)*(x + 1)"], "1"), (["x**2", "x**3"], "0"),
                               (["1.0000001", "1"], "1"), (["1.00001", "1"], "0"),  # REL_TOL = 1e-6 arrived
                               (["(((", "1"], "0"), (["1", ["rel", ["x", "1"], ["<"]]], "0"),
                               ([["rel", ["x", "1"], ["<"]], ["set", [["-oo", "1", True, True]]]], "1")):
            proc.stdin.write(json.dumps(pair) + "\n")
            proc.stdin.flush()
            assert (grader._readline(proc, 60.0) or "").strip() == expected, pair
    finally:
        proc.kill()
        proc.wait()


def test_symbolic_pair_goes_through_the_worker_file():
    calls = grader.SYMPY_STATS["calls"]
    assert grader.is_equiv("(q-3)(q+3)", "q^2-9") is True
    assert grader.is_equiv("(q-3)(q+4)", "q^2-9") is False
    assert grader.SYMPY_STATS["calls"] == calls + 2
    assert grader._worker.args[1] == _WORKER and grader._worker.poll() is None


def test_a_late_pair_kills_the_helper_and_a_fresh_worker_file_takes_over():
    grader._sympy_equal("1", "1", 60.0)  # a started helper, so that its start-up is off the clock
    old, timeouts = grader._worker, grader.SYMPY_STATS["timeouts"]
    t0 = time.monotonic()
    # ~14 s of sympy on a 2-core machine: always late for a 0.5 s bound
    assert grader.is_equiv("(a+b+c+d)^{20}-(a-b+c-d)^{20}", "(a+b+c+d)^{20}", timeout=0.5) is False
    assert time.monotonic() - t0 < 0.5 + 2.0
    assert grader.SYMPY_STATS["timeouts"] == timeouts + 1
    assert old.poll() is not None  # killed
    assert grader._worker is not old and grader._worker.args[1] == _WORKER
    assert grader.is_equiv("(r+2)^2", "r^2+4r+4") is True  # the replacement answers
