"""The 0/1 reward r(x, z) of Sec. 3: answer extraction and equivalence to the gold answer.

    extract_answer(text, thinking)   the final answer of a response (last \\boxed{}, then answer sentences)
    normalize_answer(s)              a canonical string form (LaTeX noise, units, wrappers removed)
    is_equiv(pred, gold)             numeric, structural and sympy equivalence, bounded in time
    reward(response, gold, thinking) r(x, z) in {0.0, 1.0}

No torch: sympy runs in a helper process (grader_worker.py) with a hard time bound per pair.
"""

import json
import math
import os
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
# intervals, sets or matrices, as relations with the same solutions, or symbolically (sympy:
# simplify(a - b) == 0, or a.equals(b)). A rule that would reward a wrong answer is worse than one
# that misses a right one: data/grader_cases.jsonl holds labelled pairs with near misses of each kind.
# Sympy runs in a helper process (grader_worker.py) with a hard wall-clock bound per pair: signal.alarm
# does not work in worker threads or under every launcher, and a killed process cannot leak memory.

EQUIV_TIMEOUT = 1.5  # seconds of sympy per (pred, gold) pair
REL_TOL = 1e-6  # relative tolerance between decimals (see _numbers_equal)
MAX_ANSWER_CHARS = 2000  # longer answers are compared as strings only


def _match_brace(s, i, stop=None):
    """Index just past the group that opens with s[i] == "{", or -1 if it does not close before `stop`."""
    depth = 0
    for j in range(i, len(s) if stop is None else stop):
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


def _boxes_from_end(text):
    """(start, end, content) of the well-formed \\boxed{...} / \\fbox{...} / "\\boxed x", last first."""
    unclosed = None  # an earlier group can only close before a later one that never does (linear on junk)
    for m in reversed(list(re.finditer(r"\\(?:boxed|fbox)", text))):
        i = m.end()
        if i < len(text) and text[i] == "{":
            end = _match_brace(text, i, unclosed)
            if end > 0:
                yield m.start(), end, text[i + 1:end - 1]
            else:
                unclosed = i
        elif i < len(text) and text[i] == " ":
            token = re.match(r" +([^\s$]+)", text[i:])
            if token:
                yield m.start(), i + token.end(), token.group(1)


# What may stand between two boxes of one final answer: "$\boxed{1}$ and $\boxed{4}$", "x = \boxed{2} or x = \boxed{-3}".
_BOX_JOINER = re.compile(r"(?:[\s$,;]|\\[,;: ]|\\q?quad|\\[\[\]()]|\b(?:and|or)\b|\\text\{\s*(?:and|or)?\s*\}"
                         r"|[a-zA-Z](?:_\{?\w+\}?)?\s*=)*", re.IGNORECASE)


def _final_boxes(text):
    """Contents of the run of boxes that ends a response, when only joiners stand between them."""
    run = []
    for box in _boxes_from_end(text):
        if run and (box[1] > run[0][0] or not _BOX_JOINER.fullmatch(text[box[1]:run[0][0]])):
            break
        run.insert(0, box)
    return [content.strip() for _, _, content in run]


# Explicit answer statements, most explicit first: "final answer is/:", a "**Final Answer**" or
# "### Final Answer" heading with the answer below it, "the answer is", "the correct choice is",
# "Answer: ...", an "Answer" heading, "Answer $X$", and GSM8K's "#### 42". A sentence answer ends at
# the end of its line or at a full stop followed by a space; bold and math delimiters are tidied afterwards.
_END = r"(?=\.\s|\.?[ \t*]*$)"
_FALLBACKS = [re.compile(r"final answer[ \t*]*(?:is\b|[:：])[: \t*]*(\S.*?)" + _END, re.IGNORECASE | re.MULTILINE),
              re.compile(r"^[ \t#*]*final answer[ \t*:]*\n\s*(\\\[.*?\\\]|\$\$.*?\$\$|[^\n]+)",
                         re.IGNORECASE | re.MULTILINE | re.DOTALL),
              re.compile(r"(?:the|our|my|correct) answer is[: \t*]*(\S.*?)" + _END, re.IGNORECASE | re.MULTILINE),
              re.compile(r"(\$[^$\n]{1,300}\$|\\\([^\n]{0,300}?\\\))[ \t]*is (?:the|our|my) (?:final )?answer", re.IGNORECASE),
              re.compile(r"correct (?:choice|option) is[: \t*]*(\S.*?)" + _END, re.IGNORECASE | re.MULTILINE),
              re.compile(r"(?:^[ \t#*]*|\bthe )answer[ \t*]*[:：][ \t*]*(\S.*?)" + _END, re.IGNORECASE | re.MULTILINE),
              re.compile(r"^[ \t#*]*answer[ \t*:]*\n\s*(\\\[.*?\\\]|\$\$.*?\$\$|[^\n]+)",
                         re.IGNORECASE | re.MULTILINE | re.DOTALL),
              re.compile(r"^[ \t#*]*answer[ \t*]+(\\\[.*?\\\]|\$\$.*?\$\$|[$\\\d(+-][^\n]*?)" + _END,
                         re.IGNORECASE | re.MULTILINE | re.DOTALL),
              re.compile(r"^[ \t]*####[ \t]*(\S.*?)[ \t]*$", re.MULTILINE)]


def _clean_sentence_answer(s):
    """Tidy an answer taken from a sentence: "$5$." -> "5", "\\[ x \\]" -> "x", "**7**" -> "7", "[-1]" -> "-1"."""
    s = s.strip()
    for _ in range(4):
        before = s
        s = s.strip().strip("*").rstrip(".").strip()
        if s.startswith("$$") and s.endswith("$$") and len(s) > 3:
            s = s[2:-2]
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


def _from_prose(s):
    """The value in an answer written as a sentence: "The probability is $\\frac{5}{18}$" -> "\\frac{5}{18}"
    (its last math, when the sentence ends with it), "The volume of $ABC$ is 120" -> "120" (what follows
    its last "is"). Anything else, an answer with no two words in a row and a negated sentence are left as they are."""
    words = re.sub(r"\$[^$]*\$|\\\([^\n]{0,300}?\\\)|\\[a-zA-Z]+", " ", s)
    if not re.search(r"[A-Za-z]{2,}\s+[A-Za-z]{2,}", words) or re.search(r"\b(?:not|no|cannot|never)\b|n't", words):
        return s  # not a sentence, or a negated one ("it is not $5$")
    m = re.search(r"(?:\$([^$]+)\$|\\\(([^\n]{0,300}?)\\\))[\s.]*$", s)
    if m:
        return m.group(1) or m.group(2)
    m = re.fullmatch(r".*\b(?:is|are|equals)\s+([-+(\[\\\d][^\s]*)\s*", s)
    return m.group(1) if m else s


def _sentence_answer(text, patterns=_FALLBACKS, nested=False):
    """The answer stated in words: the last match of the most explicit pattern that matches."""
    for pattern in patterns:
        last = None
        for last in pattern.finditer(text):
            pass
        if last is None:
            continue
        answer = last.group(1).strip()
        if not nested and re.search(r"answer", answer, re.IGNORECASE) and not answer.startswith(("\\[", "$$")):
            answer = _sentence_answer(answer, nested=True) or answer  # "Final Answer: the final answer is 42"
        answer = _clean_sentence_answer(_from_prose(_clean_sentence_answer(answer)))
        if answer:
            return answer
    last = re.search(r"^[ \t]*\*\*([^*\n]+)\*\*[ \t.]*\Z", text.rstrip(), re.MULTILINE)  # a bold last line
    return _clean_sentence_answer(last.group(1)) if last else None


def extract_answer(text, thinking=True):
    """The final answer in a response z, or None when it has none.

    With thinking=True (R1-style responses that start inside "<think>") only the text outside the
    thought is graded (episodes.split_think), so a trace truncated before "</think>" has no answer
    unless text outside its thought holds one. Use thinking=False for responses with no thought
    (a forced-termination answer of the meta-prover, a direct model, the backtracking format).
    Order: the last \\boxed{...} (braces matched, not regex), unless a "final answer is/:" statement
    with math in it follows that box; then "final answer is/:" sentences, a "Final Answer" heading,
    "... answer is ...", "correct choice is", "Answer: ...", an "Answer" heading and "Answer $X$"
    (last occurrence of each), a bold last line; a sentence keeps its value ("The area is 24" -> "24").
    Never raises.
    """
    try:
        if not isinstance(text, str):
            return None
        _, outside, _ = episodes.split_think(text, in_thought=thinking)
        box = next(_boxes_from_end(outside), None)
        if box is None:
            return _sentence_answer(outside)
        # a "final answer is ..." statement after the last box restates the answer last, so it wins
        # ("... = \\boxed{255}. ... Final Answer: The final answer is $10,455$."); one with no math does not
        later = _sentence_answer(outside[box[1]:], _FALLBACKS[:2])
        return later if later and re.search(r"[\d\\$]", later) else box[2].strip()
    except Exception:  # a grader must never take a training run down
        return None


# ---- normalisation ---------------------------------------------------------------------------

_TEXT_WRAPPERS = ("\\text", "\\textbf", "\\textit", "\\textrm", "\\mathrm", "\\mathbf", "\\mbox",
                  "\\textnormal", "\\operatorname", "\\mathit", "\\boldsymbol")
_UNITS = ("degrees", "degree", "cm", "centimeters", "centimeter", "mm", "meters", "meter", "km", "kilometers",
          "inches", "inch", "feet", "foot", "ft", "yards", "yard", "miles", "mile", "mph", "seconds", "second",
          "minutes", "minute", "hours", "hour", "days", "day", "weeks", "years", "dollars", "dollar", "cents",
          "units", "unit", "square", "sq", "cubic", "pounds", "lbs", "kg", "grams", "liters", "ml", "people",
          "students", "ways", "points", "times", "percentage", "percent", "pct", "m")
_UNIT_TAIL = re.compile(r"(?:\s+(?:" + "|".join(_UNITS) + r")(?:\^\{?[23]\}?)?\.?)+\s*$")
_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?")
_DECIMAL = re.compile(r"\d\.|\.\d|\d[eE][-+]?\d")
# Relations are written one way: \le, \ge, \ne (then "<", ">", "=").
_RELATION_SPELLINGS = [(r"\\(?:leqslant|leq|le)(?![a-zA-Z])|<=|≤", r" \\le "),
                       (r"\\(?:geqslant|geq|ge)(?![a-zA-Z])|>=|≥", r" \\ge "),
                       (r"\\(?:neq|ne)(?![a-zA-Z])|!=|≠", r" \\ne "), (r"\\lt(?![a-zA-Z])", "<"),
                       (r"\\gt(?![a-zA-Z])", ">"), (r"==", "=")]


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


def _unwrap_whole(s):
    """A gold stored as "\\boxed{X}", "\\(X\\)", "\\[X\\]" or "{1, 2, 3}" is X; a gold stored as text
    with boxes in it ("\\(\\boxed{1}\\) and \\(\\boxed{-2}\\).", a whole solution) is the run of
    boxes that ends it, read as a list."""
    if re.search(r"\\(?:boxed|fbox)", s):
        boxes = _final_boxes(s)
        if boxes:
            s = boxes[0] if len(boxes) == 1 else ", ".join(boxes)
    elif re.search(r"final answer", s, re.IGNORECASE):
        s = _sentence_answer(s, _FALLBACKS[:2]) or s  # a whole solution: "... The final answer is $28\\%$."
    for _ in range(4):
        s = s.strip().rstrip(".").strip()
        m = re.match(r"\\(?:boxed|fbox)\s*\{", s)
        if m and _match_brace(s, m.end() - 1) == len(s):
            s = s[m.end():-1]
        elif s[:2] in ("\\(", "\\[") and s[-2:] == {"\\(": "\\)", "\\[": "\\]"}[s[:2]]:
            s = s[2:-2]
        elif s[:1] == "{" and _match_brace(s, 0) == len(s) and "," in s and "\\choose" not in s:
            s = s[1:-1]  # bare braces around a list typeset it as the list: "{1,2,3}" is "1, 2, 3"
        else:
            break
    return s


# physical units by what they measure, to tell "3 m" from "3 cm" (counting words such as "ways",
# "square units" or "percent" name no unit of their own)
_UNIT_NAMES = {"cm": "cm", "centimeters": "cm", "centimeter": "cm", "mm": "mm", "m": "m", "meters": "m",
               "meter": "m", "km": "km", "kilometers": "km", "inches": "in", "inch": "in", "feet": "ft",
               "foot": "ft", "ft": "ft", "yards": "yd", "yard": "yd", "miles": "mi", "mile": "mi", "mph": "mph",
               "seconds": "s", "second": "s", "minutes": "min", "minute": "min", "hours": "h", "hour": "h",
               "days": "d", "day": "d", "weeks": "wk", "years": "yr", "dollars": "$", "dollar": "$", "cents": "c",
               "pounds": "lb", "lbs": "lb", "kg": "kg", "grams": "g", "liters": "l", "ml": "ml"}


def normalize_answer(s):
    """Canonical string form of an answer: LaTeX noise, wrappers, units and formatting removed.

    Handles a whole-answer \\boxed{}, \\dfrac/\\tfrac/\\cfrac, \\frac12, \\left/\\right, spacing
    commands, \\text{}/\\mathrm{}/\\mbox{}, units (also glued: 8\\text{cm}), degrees, \\%, dollar signs,
    thousands separators ("{,}", ",\\!"), trailing periods, relation spellings (\\geq, >=, \\neq, \\lt),
    list joiners ("and", "or", ";", \\quad) -> ",", multiple-choice "(B)" -> "B"; runs of whitespace
    become one space. Labels ("x = 3") are kept: _equiv decides when to drop them.
    """
    return _normalize(s)[0]


@lru_cache(maxsize=65536)
def _normalize(s):
    """(normalize_answer(s), the physical units dropped from its end)."""
    units = set()
    s = _unwrap_whole(str(s).replace("\\$", "").replace("$", ""))
    s = re.sub(r",\\!\s*|\{,\}\s*", ",", s).replace("\\!", "")
    s = re.sub(r"\\q?quad(?!\s*(?:\\(?:text|mbox|mathrm)\s*\{\s*)?[a-zA-Z]{2})", ",", s)  # a \quad between items
    s = re.sub(r"(?<!\\)\\(?:,|;|:|q?quad|displaystyle| )|~", " ", s)  # not the "\\" of a matrix row
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\[dtc]frac", r"\\frac", s)
    s = re.sub(r"\\[dt]binom", r"\\binom", s)
    s = re.sub(r"\{([^{}]+)\\choose([^{}]+)\}", r"\\binom{\1}{\2}", s)
    s = re.sub(r"\\mathbb\s*\{?R\}?|ℝ", r"(-\\infty,\\infty)", s).replace("∞", "\\infty")
    s = re.sub(r"^\\\{\s*[a-zA-Z]\s*(?:\\mid|\||:)(.*)\\\}$", r"\1", s.strip())  # \{x \mid x < 5\} -> x < 5
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°", "", s)
    if "%" in s:
        units |= {"%"}
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\\text\{\s*\}", "", s)
    s = re.sub(r"([\d}])\s*(\\(?:text|mbox|mathrm|textrm)\s*\{)", r"\1 \2", s)  # 8\text{cm} -> 8 cm
    for command in _TEXT_WRAPPERS:
        s = _unwrap_command(s, command)
    s = _brace_args(s)
    for spelling, canonical in _RELATION_SPELLINGS:
        s = re.sub(spelling, canonical, s)
    s = re.sub(r"(^|[(\[,])\s*\+\s*\\infty", r"\1\\infty", s)  # (2, +\infty)
    groups = _split_top_level(s, ";")
    if len(groups) > 1 and any(len(_split_top_level(g)) > 1 for g in groups):
        s = ", ".join(f"({g})" for g in groups)  # "p=5, q=2; p=7, q=2": solutions of several values each
    if re.search(r"[<>]|\\[lg]e(?![a-zA-Z])", s):  # inequalities keep their "and" / "or" (x > 3 and x < 1 is empty)
        s = re.sub(r"\s+and\s+", r" \\land ", re.sub(r"\s+or\s+", r" \\lor ", s))
    # "1 and -2", "1, 2, and 3", "3; 5; 7", "(1,2)or(2,1)"
    s = re.sub(r"(?:\s*,)?\s+(?:and|or)(?:\s*,)?\s+|;|(?<=[)\]])\s*(?:and|or)\s*(?=[(\[])", ", ", s)
    s = re.sub(r",(?:\s*,)+", ",", s).strip().strip(",").strip()
    # trailing units after a number ("10 inches", "5 cm^2", "30 degrees", "8cm"); text answers keep their words
    s = re.sub(r"(\d)(?=(?:" + "|".join(u for u in _UNITS if len(u) > 1) + r")(?:\^\{?[23]\}?)?\s*$)", r"\1 ", s)
    stripped = _UNIT_TAIL.sub("", s)
    if (stripped != s and re.search(r"[\d})]\s*$", stripped) and not re.search(r"[<>=]", stripped)
            and not re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", stripped))):
        for word in re.findall(r"[a-z]+", s[len(stripped):]):
            units.add("%" if word in ("percent", "percentage", "pct") else _UNIT_NAMES.get(word))
        units.discard(None)
        s = stripped  # only after a plain number: "2 m" is two metres; "n + 2 m", "1 \\le m" are not touched
    s = s.strip().rstrip(".").strip()
    # multiple choice: "(B)", "B)", "(B" -> "B"
    m = re.fullmatch(r"\(?\s*([A-E])\s*\)?", s)
    if m:
        return m.group(1), frozenset(units)
    s = re.sub(r"([_^])\{(\w)\}", r"\1\2", s)  # x_{0} -> x_0, n^{2} -> n^2 (one character only)
    s = re.sub(r"\s+", " ", s)
    # thousands separators: "58,500" -> "58500"; "(1,000)" keeps its comma (a tuple)
    if re.fullmatch(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    if s in ("infinity", "inf", "\\inf"):
        s = "\\infty"
    return s, frozenset(units)


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


def _expand_pm(s):
    """"1 \\pm \\sqrt{5}" -> ["1 + \\sqrt{5}", "1 - \\sqrt{5}"], "\\pm 17" -> ["17", "-17"]; else [s]."""
    if len(re.findall(r"\\(?:pm|mp)(?![a-zA-Z])", s)) != 1:
        return [s]
    left, right = (p.strip() for p in re.split(r"\\(?:pm|mp)(?![a-zA-Z])", s))
    return [f"{left} + {right}", f"{left} - {right}"] if left else [right, "-" + right]


def _structure(s):
    """("matrix", rows) | ("ordered", "(", ")", items) | ("unordered", items) | ("union", intervals) | None.

    Tuples and intervals are ordered and their brackets must match ("[0,3)" != "[0,3]"); sets
    \\{...\\}, bare comma lists ("-2, 1") and bracket groups side by side ("(1,4) (4,1)") are
    order-free, and an item with one \\pm is two items.
    """
    s = s.strip()
    m = re.fullmatch(r"[(\[]\s*(\\begin\{(\w+)\}(?:(?!\\begin\{|\\end\{).)*\\end\{\2\})\s*[)\]]", s, re.DOTALL)  # (\begin{array}..)
    if m:
        s = m.group(1)
    m = re.fullmatch(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?((?:(?!\\begin\{|\\end\{).)*)\\end\{\1\}", s, re.DOTALL)
    if m:
        rows = [r for r in (r.strip() for r in m.group(2).split("\\\\")) if r]
        return ("matrix", [[c.strip() for c in r.split("&")] for r in rows])
    unions = _split_top_level(s, "\\cup")
    if len(unions) > 1:
        return ("union", unions)
    if s.startswith("\\{") and s.endswith("\\}"):
        return ("unordered", [x for item in _split_top_level(s[2:-2]) for x in _expand_pm(item)])
    if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _closes_at_end(s.replace("\\{", "{").replace("\\}", "}")):
        items = _split_top_level(s[1:-1])
        if len(items) > 1:
            return ("ordered", s[0], s[-1], items)
        return None
    items = _split_top_level(s)
    if len(items) == 1:
        groups = _split_top_level(s, " ")  # "(1,4) (4,1)": bracket groups side by side
        if len(groups) > 1 and all(g and g[0] in "([" and _closes_at_end(g) for g in groups):
            items = groups
    items = [x for item in items for x in _expand_pm(item)]
    return ("unordered", items) if len(items) > 1 else None


# ---- labels, relations, multiple choice --------------------------------------------------------

_VAR = r"[a-zA-Z](?:_\{?\w+\}?)?"  # "x", "x_0", "a_{12}"
_NAME = (r"(?:m?\\angle\s*)?(?:\\(?:overline|widehat|vec)\{\w+\}|\\?[A-Za-z]+)(?:_\{[^{}=]*\}|_\w)?'*(?:\^\{?-1\}?)?"
         r"(?:\([^()=]*\))?")  # "PQ", "\theta", "\overline{AB}", "m\angle A", "f(2)", "P(red)", "S_{\triangle ABC}"
# names that label a value: "PQ", "(a, b)", "|AB|", "\frac{NO}{BO}", "S_1:S_2"; _LABEL also takes sums ("m + n")
_NAMES = re.compile(rf"{_NAME}|\(\s*{_NAME}(?:\s*,\s*{_NAME})+\s*\)|\|\s*{_NAME}\s*\||\\frac\{{{_NAME}\}}\{{{_NAME}\}}"
                    rf"|{_NAME}(?:\s*:\s*{_NAME})+")
_LABEL = re.compile(rf"{_NAMES.pattern}|{_NAME}(?:\s*(?:[-+:*/]|\\cdot)\s*{_NAME})+")
_HAS_LABEL = re.compile(r"=|\\(?:in|approx)(?![a-zA-Z])")


def _label_split(s, loose=0):
    """(label, value) of a labelled answer, or None: "x = 3" -> ("x", "3"), "2x + 1 = y" -> ("y", "2x + 1"),
    "t \\in [0, 1]" -> ("t", "[0, 1]"), "y \\approx 9" -> ("y", "9"). A label is one variable unless
    loose: 1 also takes names ("PQ = 6", "(a, b) = (5, 3)", "S_1:S_2 = 5:13", "f(2) = 11", "|AB| = 1"),
    2 also sums of names ("m + n = 19"); never "2x = 10"."""
    m = re.fullmatch(rf"({_NAME})?\s*\\approx\s*(\S.*)", s) or re.fullmatch(rf"({_NAME})\s*\\in\s*(\S.*)", s)
    if m and m.group(1) not in ("\\pi", "e", "\\infty"):  # "\\pi \\approx 3" is not a label
        return (m.group(1) or "").replace(" ", ""), m.group(2).strip()
    sides = _split_top_level(s, "=")
    if len(sides) != 2 or not all(sides):
        return None
    left, right = sides
    if re.fullmatch(_VAR, left) or (loose and (_NAMES, _LABEL)[loose - 1].fullmatch(left)):
        return left.replace(" ", ""), right
    if re.fullmatch(_VAR, right):
        return right, left
    return None


def _strip_label(s, loose):
    """The value of a labelled answer ("x = 3" -> "3"), or None; loose takes any name or sum (_label_split)."""
    split = _label_split(s, 2 if loose else 0)
    return split[1] if split else None


def _foreign_label(label, other):
    """True when `other` is an inequality that does not mention the variable `label` names."""
    return bool(re.search(r"[<>]|\\(?:le|ge|ne)(?![a-zA-Z])", other)) and label not in re.findall(r"[a-zA-Z]\w*", other)


def _solved(s):
    """True for a variable given a constant value ("x = 5", "t = \\frac{1}{2}")."""
    split = _label_split(s, 0) if "=" in s else None
    return bool(split) and not re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", split[1]))


def _chain_value(s):
    """The value a calculation ends with: "x = 5 + 5 + 1 = 11" -> "11", "\\frac{6}{2} = 3" -> "3"; else None
    (the value has no variables: "x = y = z" and "2x = 10" are not calculations)."""
    sides = _split_top_level(s, "=")
    if not all(sides) or len(sides) < 2 or len(_split_top_level(s)) > 1:
        return None  # "x = 5, y = 5" is a list of labelled values
    constant = [not re.search(r"[a-zA-Z]", re.sub(r"\\[a-zA-Z]+", "", side)) for side in sides]
    return sides[-1] if constant[-1] and (len(sides) > 2 or constant[0]) else None


def _ordered_by_labels(xs, ys):
    """A list of different labelled unknowns against a list with no labels ("m = 12, n = 7" against "12, 7")
    is read in order; several values of one unknown ("x = 2 or x = -3", "x_1 = 2, x_2 = 3") are not."""
    def unknowns(items):
        labels = [_label_split(x, 1) for x in items]
        bases = [re.sub(r"_.*", "", label[0]) for label in labels if label and label[0]]
        return len(bases) == len(items) and len(set(bases)) == len(bases)
    def bare(items):
        return not any(_HAS_LABEL.search(x) for x in items)
    return (unknowns(xs) and bare(ys)) or (unknowns(ys) and bare(xs))


def _ratio(s):
    """The terms of a ratio of non-zero numbers, "5:13" -> [5, 13], or None ("3:0", "0:5", "3:00" are
    none: with a zero term "equal up to a factor" would make 3:00 equal 11:00)."""
    terms = _split_top_level(s, ":")
    numbers = [_to_number(t) for t in terms] if len(terms) > 1 else [None]
    return None if None in numbers or 0 in numbers else numbers


_CLOCK = re.compile(r"(\d{1,2})\s*:\s*(\d{2})(?:\s*:\s*(\d{2}))?(?:\s*([ap])\.?\s*m\.?)?", re.IGNORECASE)


def _clock(s):
    """A time of day, "9:30", "09:30", "8:34 p.m.", "23:59:59", as (seconds after midnight, has seconds,
    has am/pm), or None. Minutes (and seconds) take two digits: "3:2" is a ratio, never a time."""
    m = _CLOCK.fullmatch(s)
    if not m:
        return None
    hours, minutes, seconds, half = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), m.group(4)
    if minutes > 59 or seconds > 59 or hours > (12 if half else 23) or (half and hours == 0):
        return None
    if half:
        hours = hours % 12 + (12 if half.lower() == "p" else 0)  # 12:05 am is 00:05, 12:05 pm is 12:05
    return hours * 3600 + minutes * 60 + seconds, m.group(3) is not None, bool(half)


def _same_time(a, b):
    """Times of day (_clock) are equal when they are the same time, written alike: "1:30" against
    "1:30:00" is not (a minute and a half, or an hour and a half), and a time with am/pm equals a bare
    one only when the bare one is unambiguous on a 24-hour clock ("3:00 pm" is "15:00", not "3:00")."""
    if a[1] != b[1]:
        return False
    if a[2] != b[2] and 1 <= (b if a[2] else a)[0] // 3600 <= 12:
        return False  # a bare "3:00" may be either 3:00 am or 3:00 pm
    return a[0] == b[0]


_REL_OPS = {"\\le": "<=", "\\ge": ">=", "\\ne": "!=", "<": "<", ">": ">", "=": "="}


def _relation(s):
    """(terms, ops) for a relation or chain at the top level ("-1 \\le t < 4"), or None."""
    terms, ops, depth, start, i = [], [], 0, 0, 0
    while i < len(s):
        c = s[i]
        depth += (c in "([{") - (c in ")]}")
        op = re.match(r"\\(?:le|ge|ne)(?![a-zA-Z])|[<>=]", s[i:]) if depth == 0 else None
        if op:
            terms.append(s[start:i].strip())
            ops.append(_REL_OPS[op.group()])
            i = start = i + op.end()
        else:
            i += 1
    terms.append(s[start:].strip())
    return (terms, ops) if ops and all(terms) else None


def _choice(s):
    """(letter, rest) of a multiple-choice answer: "C" -> ("C", ""), "(C) 40" -> ("C", "40"); else None."""
    m = re.fullmatch(r"(?:[Oo]ption |[Cc]hoice )?(?:([A-E])|\(([A-E])\)(?:\s+(.*))?|([A-E])[.:)]\s+(.*))", s)
    if not m:
        return None
    return (m.group(1) or m.group(2) or m.group(4), (m.group(3) or m.group(5) or "").strip())


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


def _matrix_source(m):
    """A matrix environment as sympy source, Matrix(((a, b,), (c, d,),)), so that matrix sums,
    scalar multiples and products are evaluated by the helper; its entries are converted afterwards."""
    rows = [r for r in (r.strip() for r in m.group(2).split("\\\\")) if r]
    return " Matrix((" + "".join("(" + "".join(f"{c.strip()}," for c in r.split("&")) + ")," for r in rows) + "))"


def _latex_to_sympy(s):
    """Python/sympy source for a normalized LaTeX answer, or None when it cannot be read safely."""
    try:
        s = re.sub(r"\\begin\{([pbvBV]?matrix|array)\}(?:\{[^{}]*\})?(.*?)\\end\{\1\}", _matrix_source, s, flags=re.DOTALL)
        s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\div", "/")
        s = _replace_braced(s, "\\frac", 2, lambda a, b: f"(({a})/({b}))")
        s = _replace_braced(s, "\\binom", 2, lambda n, k: f" binomial(({n}),({k}))")
        s = re.sub(r"\\sqrt\s*\[([^\[\]]+)\]\s*\{", r"\\root{\1}{", s)
        s = _replace_braced(s, "\\root", 2, lambda n, a: f"(({a})**(1/({n})))")
        s = _replace_braced(s, "\\sqrt", 1, lambda a: f" sqrt({a})")
        s = re.sub(r"_\{(\w+)\}", r"_\1", s)  # x_{0} -> x_0
        s = s.replace("\\infty", " oo ").replace("\\pi", " pi ")
        # a function with a bare argument applies to that argument: \sin x \cos x, \sin 2x, \sin^2 x
        functions, argument = "|".join(_FUNCTIONS[:-1]), r"(\d*(?:[a-zA-Z]|\\[a-zA-Z]+)(?![a-zA-Z])(?:_\w)?|\d+(?:\.\d+)?)"
        s = re.sub(rf"\\({functions})\s*\^\s*\{{?(\d)\}}?\s*(?:{argument}|\(([^()]*)\))", r" \1(\3\4)**\2", s)
        s = re.sub(rf"\\({functions})(?![a-zA-Z])\s*{argument}", r" \1(\2)", s)
        s = re.sub(r"\\(" + "|".join(_GREEK + _FUNCTIONS) + r")(?![a-zA-Z])", r" \1", s)
        if "\\" in s:
            return None  # an unknown command: compare as text only
        s = re.sub(r"\\[lr]?vert(?![a-zA-Z])", "|", s)
        for _ in range(s.count("|") // 2):
            s = re.sub(r"\|([^|]+)\|", r" Abs(\1)", s, count=1)  # |x| (innermost first through the pairs)
        s = s.replace("^", "**").replace("{", "(").replace("}", ")")
        s = re.sub(r"(?<![A-Za-z_])e(?![A-Za-z_])", " EulerE ", s)  # Euler's number (a capital E is a letter)
        s = re.sub(r"(?<![A-Za-z_])i(?![A-Za-z_])", " ImagI ", s)  # the imaginary unit (a capital I is a letter)
        s = re.sub(r"\s+", " ", s).strip()
    except ValueError:
        return None
    if not s or not re.fullmatch(r"[A-Za-z0-9_+\-*/(). ,!]*", s) or "__" in s or re.search(r"\d_", s) or re.search(r"[A-Za-z_]\s*\.|\.\s*[A-Za-z_]", s):
        return None
    for name in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", s):
        if not (name in _GREEK or name in _FUNCTIONS or name in ("pi", "oo", "E", "I")
                or re.fullmatch(r"[A-Za-z]+(?:_[A-Za-z0-9]+)?", name)):
            return None
    return s


# ---- the sympy helper process (hard time bound) ----------------------------------------------

# The helper is grader_worker.py (its docstring has the protocol); REL_TOL travels as its argument.
_WORKER_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "grader_worker.py")

_worker = None
_worker_lock = threading.Lock()
SYMPY_STATS = {"calls": 0, "timeouts": 0}  # read by bench.py


def _start_worker():
    import subprocess
    import sys
    return subprocess.Popen([sys.executable, _WORKER_PATH, repr(REL_TOL)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)


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

def _interval_source(structure):
    """[[lo, hi, lo_open, hi_open], ...] for an interval or a union of intervals, or None."""
    parts = [_structure(u) for u in structure[1]] if structure[0] == "union" else [structure]
    out = []
    for p in parts:
        if p is None or p[0] != "ordered" or len(p[3]) != 2:
            return None
        lo, hi = (_latex_to_sympy(x) for x in p[3])
        if lo is None or hi is None:
            return None
        out.append([lo, hi, p[1] == "(", p[2] == ")"])
    return out


def _relation_form(s, structure):
    """What the sympy helper compares for relations: ["rel", terms, ops] for a relation or chain,
    ["set", intervals] for an interval or union, ["or", rels] / ["and", rels] for inequalities joined
    by those words, ["any", rels] for a comma list of inequalities ("x < 2, x > 3"), or None."""
    if structure is None:
        for joiner, kind in (("\\lor", "or"), ("\\land", "and")):  # "x < 1 or x > 4", "x > 2 and x < 5"
            parts = _split_top_level(s, joiner)
            if len(parts) > 1:
                forms = [_relation_form(x, None) for x in parts]
                return [kind, forms] if all(f and f[0] == "rel" and "=" not in f[2] for f in forms) else None
        r = _relation(s)
        sources = [_latex_to_sympy(t) for t in r[0]] if r else [None]
        return None if None in sources else ["rel", sources, r[1]]
    if structure[0] in ("ordered", "union"):
        intervals = _interval_source(structure)
        return None if intervals is None else ["set", intervals]
    if structure[0] == "unordered":
        forms = [_relation_form(x, _structure(x)) for x in structure[1]]
        if all(f and f[0] == "rel" and "=" not in f[2] for f in forms):
            return ["any", forms]
    return None


def _items_equiv(xs, ys, ordered, deadline):
    """Element-wise in order, or order-free (each item of xs matched to a distinct item of ys)."""
    if len(xs) != len(ys):
        return False
    if ordered:
        return all(_equiv(x, y, deadline) for x, y in zip(xs, ys))
    ys = list(ys)
    for x in xs:
        hit = next((k for k, y in enumerate(ys) if _equiv(x, y, deadline)), None)
        if hit is None:
            return False
        ys.pop(hit)
    return True


def _equiv(a, b, deadline):
    """Equivalence of a normalized predicted answer a to a normalized gold answer b; see is_equiv."""
    if a.replace(" ", "") == b.replace(" ", ""):
        return True
    if not a or not b or len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
        return False
    ca, cb = _choice(a), _choice(b)
    if ca and cb:  # a letter against "(C) 40": the letters decide; two values must also agree
        return ca[0] == cb[0] and (not ca[1] or not cb[1] or _equiv(ca[1], cb[1], deadline))
    if (ca and ca[1]) or (cb and cb[1]):  # "(C) 40" against "40"
        return _equiv(ca[1] if ca else a, cb[1] if cb else b, deadline)
    na, nb = _to_number(a), _to_number(b)
    if na is not None and nb is not None:
        return _numbers_equal(na, nb, a, b)
    # "a:b" is a time of day or a ratio. The problem would tell, but only the answers are here: two
    # times compare as times (3:00 is not 11:00, 9:30 is not 3:10), unless both are ratios and the gold
    # is one in lowest terms, as ratio answers are given ("10:26" is the ratio "5:13", though both read as times)
    ra, rb = _ratio(a), _ratio(b)
    ta, tb = _clock(a), _clock(b)
    if ta and tb and not (ra and rb and math.gcd(*(int(x) for x in rb)) == 1):
        return _same_time(ta, tb)
    if ra and rb:  # "3:2" is "6:4"; ratios with a zero term ("3:0") are compared as written
        return len(ra) == len(rb) and all(x * rb[0] == y * ra[0] for x, y in zip(ra, rb))
    # labels ("x = 3", "t \in [0, 1]", "PQ = 6"): dropped when one side has one, or both the same one;
    # names and sums label a predicted value when the gold has no label, names a gold value ("|AB| = 1")
    names = _label_split(a, 1), _label_split(b, 1)
    if not all(n and n[0] for n in names) or names[0][0] == names[1][0]:  # "m = 7" is not "n = 7"
        la = _label_split(a, 0 if _HAS_LABEL.search(b) else 2)
        lb = _label_split(b, 0 if _HAS_LABEL.search(a) else 1)
        if la and not lb and _foreign_label(la[0], b) or lb and not la and _foreign_label(lb[0], a):
            la = lb = None  # "x \in (-\infty, 5)" does not answer "t < 5"
        if (la or lb) and _equiv(normalize_answer(la[1] if la else a), normalize_answer(lb[1] if lb else b), deadline):
            return True
    # a calculation ends with its value ("x = 5 + 6 = 11"); an approximation keeps its exact value
    # ("\sqrt{80} \approx 8.94" is \sqrt{80}: 8.94 is not what it claims)
    for x, y, swap in ((a, b, False), (b, a, True)):
        approx = _split_top_level(x, "\\approx")
        for v in (_chain_value(x), approx[0] if len(approx) == 2 and all(approx) else None):
            if v and v != x and (_equiv(y, normalize_answer(v), deadline) if swap else
                                 _equiv(normalize_answer(v), y, deadline)):
                return True
    sa, sb = _structure(a), _structure(b)
    # relations (sympy: the same up to a constant factor, or the same real solutions), and
    # one-variable inequalities against an interval or a union of intervals
    fa, fb = _relation_form(a, sa), _relation_form(b, sb)
    kinds = {fa and fa[0], fb and fb[0]}
    if kinds & {"rel", "and", "or"} or kinds == {"any", "set"}:
        if _solved(a) != _solved(b):
            return False  # "x = 5" asks for the value: "2x = 10" is the equation, not the answer
        remaining = deadline - time.monotonic()
        return bool(fa and fb and remaining > 0 and _sympy_equal(fa, fb, remaining))
    if sa is not None or sb is not None:
        if sa is None or sb is None:
            if not (sa or sb)[0] == "matrix" or "\\begin" not in (b if sb is None else a):
                return False  # a matrix against a matrix expression goes on to sympy
        elif sa[0] == "unordered" and sb[:3] == ("ordered", "(", ")"):
            # "a = 6, b = 31, c = -1" against "(6, 31, -1)": labelled items in order
            return all(_strip_label(x, True) for x in sa[1]) and _items_equiv(sa[1], sb[3], True, deadline)
        elif sa[0] != sb[0]:
            return False
        elif sa[0] == "matrix":
            return (len(sa[1]) == len(sb[1]) and all(len(ra) == len(rb) for ra, rb in zip(sa[1], sb[1]))
                    and all(_equiv(x, y, deadline) for ra, rb in zip(sa[1], sb[1]) for x, y in zip(ra, rb)))
        elif sa[0] == "ordered":
            return sa[1:3] == sb[1:3] and _items_equiv(sa[3], sb[3], True, deadline)
        else:
            return _items_equiv(sa[1], sb[1], _ordered_by_labels(sa[1], sb[1]), deadline)
    if a.replace(" ", "").lower() == b.replace(" ", "").lower() and len(a.replace(" ", "")) > 1:
        return True  # text answers ("Evelyn", "\text{even}") compare case-free; one letter does not ("a", "A")
    if re.fullmatch(r"[A-Za-z]{2,}", a) and re.fullmatch(r"[A-Za-z]{2,}", b):
        return False  # two words: "tea" is not "eat", though sympy reads both as t*e*a
    ca, cb = _latex_to_sympy(a), _latex_to_sympy(b)
    remaining = deadline - time.monotonic()
    if ca is None or cb is None or remaining <= 0:
        return False
    return _sympy_equal(ca, cb, remaining)


@lru_cache(maxsize=262144)
def _is_equiv_cached(pred, gold, timeout):
    (a, units_a), (b, units_b) = _normalize(pred), _normalize(gold)
    if units_a and units_b and units_a != units_b:
        return False  # "3 m" is not "3 cm"; a unit on one side only is dropped ("8 cm" against "8")
    if _equiv(a, b, time.monotonic() + timeout):
        return True
    na, nb = _to_number(a), _to_number(b)
    if ("%" in units_a) != ("%" in units_b) and na is not None and nb is not None:
        # a percentage is its number ("35\\%" is 35, above) or its fraction: "12.5\\%" is 0.125
        return _numbers_equal(na / 100, nb, a, b) if "%" in units_a else _numbers_equal(na, nb / 100, a, b)
    return False


def is_equiv(pred, gold, timeout=EQUIV_TIMEOUT):
    """Whether a predicted answer equals the gold answer (the test inside r(x, z), Sec. 3).

    String equality after normalize_answer; numeric equality with relative tolerance REL_TOL (a
    percentage is its number or its fraction: "12.5\\%" is 12.5 and 0.125; "3 m" is not "3 cm");
    ratios of non-zero numbers up to a factor ("10:26" is "5:13"), times of day as times ("3:00" is not
    "11:00"; "3:00 pm" is "15:00", not "3:00"; see _same_time); multiple-choice letters, and a letter's value;
    labels dropped when one side has one or both the same ("x = 3", "(a, b) = (5, 3)", "PQ = 6";
    "m = 7" is not "n = 7"); the value a calculation ends with ("x = 2 + 3 = 5"), the exact side of
    an approximation; element-wise for tuples, intervals (ends must match), sets and lists
    (order-free, \\pm is two items; in order for different labelled unknowns against bare values)
    and matrices; sympy equality for expressions and matrix expressions; equations equal up to a
    non-zero factor, inequalities up to a positive one, and one-variable inequalities, chains and
    "and"/"or" combinations against intervals and unions by their solution sets. Sympy is bounded by
    `timeout` seconds of wall clock per pair (a helper process that is killed when late, so it works
    in threads and under torchrun). Never raises; results are memoised so that the same pair always
    gets the same verdict.
    """
    if not isinstance(pred, str) or not isinstance(gold, str):
        return False
    try:
        return _is_equiv_cached(pred, gold, timeout)
    except Exception:
        return False


def reward(response, gold, thinking=True):
    """r(x, z) in {0.0, 1.0} (Sec. 3): 1.0 when the response's final answer is equivalent to gold.

    A gold list of n items may also be answered by n boxes that end the response ("$\\boxed{(1,4)}$
    and $\\boxed{(4,1)}$"); an earlier box with reasoning after it is never joined to the last one.
    """
    timeouts = SYMPY_STATS["timeouts"]
    if is_equiv(extract_answer(response, thinking=thinking), gold):
        return 1.0
    if SYMPY_STATS["timeouts"] != timeouts:
        return 0.0  # the time bound of this pair is spent: no second reading
    try:
        gold_items = _structure(normalize_answer(gold)) if isinstance(gold, str) else None
        if not gold_items or gold_items[0] != "unordered":
            return 0.0
        boxes = _final_boxes(episodes.split_think(response, in_thought=thinking)[1])
        if len(boxes) == len(gold_items[1]) and is_equiv(", ".join(boxes), gold):
            return 1.0
    except Exception:
        pass
    return 0.0
