"""The 0/1 reward r(x, z) of Sec. 3: answer extraction and equivalence to the gold answer.

    extract_answer(text, thinking)   the final answer of a response (last \\boxed{}, then answer sentences)
    normalize_answer(s)              a canonical string form (LaTeX noise, units, wrappers removed)
    is_equiv(pred, gold)             numeric, structural and sympy equivalence, bounded in time
    reward(response, gold, thinking) r(x, z) in {0.0, 1.0}

No torch: sympy runs in a helper process with a hard time bound per pair.
"""

import json
import math
import re
import threading
import time
from fractions import Fraction
from functools import lru_cache

import episodes

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
