"""More tests of grader.py: times of day against ratios, and the sympy helper as a file (grader_worker.py).

Run: python -m pytest -q test_grader_more.py   (no torch, no model; the helper needs sympy)
"""

import ast
import glob
import json
import os
import subprocess
import sys
import time

import pytest

import grader

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
