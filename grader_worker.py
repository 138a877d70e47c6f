"""The sympy helper process of grader.py: symbolic equality of two answers, one pair per line.

grader.py starts this script as a child process ([sys.executable, grader_worker.py, REL_TOL]) and kills it
when a pair runs past its time bound (grader.EQUIV_TIMEOUT): signal.alarm does not work in worker
threads or under every launcher, and a killed process cannot leak memory. It imports sympy and the
standard library only, never a module of this project, so that it starts the same wherever it runs.

Protocol (text, one line each way, stdin -> stdout):
    start-up   it writes "ready" once sympy is imported
    request    a JSON array [a, b]: two sympy sources (strings, from grader._latex_to_sympy), or two
               relation forms (["rel", terms, ops], ["set", intervals], ["and" | "or" | "any", forms],
               from grader._relation_form)
    reply      "1" when a equals b, "0" when not, or when anything fails (a parse error, a number too
               large, MemoryError under the 2 GiB address-space limit); no reply at all when it is late
argv[1] is the relative tolerance for numeric closeness (grader.REL_TOL).
"""

import itertools
import json
import math
import resource
import sys

import sympy
from sympy.parsing.sympy_parser import (parse_expr, standard_transformations, convert_xor,
                                        implicit_multiplication_application)

REL_TOL = None  # relative tolerance of close(), grader.REL_TOL: set from argv[1] by main()
T = standard_transformations + (implicit_multiplication_application, convert_xor)
NAMES = {"ln": sympy.log, "arcsin": sympy.asin, "arccos": sympy.acos, "arctan": sympy.atan,
         "EulerE": sympy.E, "E": sympy.Symbol("E"), "ImagI": sympy.I, "I": sympy.Symbol("I"),
         "pi": sympy.pi, "oo": sympy.oo, "lambda": sympy.Symbol("lambda")}
# letters and Greek names that sympy would read as functions (O is big-O: "October" must not become O(...))
NAMES.update({name: sympy.Symbol(name) for name in "O S N Q beta gamma zeta Gamma Lambda".split()})


def magnitude(e):
    """An upper estimate of log10|e| for the numeric parts of a tree, before anything is evaluated."""
    if isinstance(e, sympy.MatrixBase):
        return max((magnitude(v) for v in e), default=0.0)
    if e.is_Number and e.is_infinite:
        return 0.0  # oo, -oo: interval ends
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


def expressions_equal(x, y):
    if isinstance(x, sympy.MatrixBase) or isinstance(y, sympy.MatrixBase):
        return (isinstance(x, sympy.MatrixBase) and isinstance(y, sympy.MatrixBase) and x.shape == y.shape
                and all(sympy.simplify(v) == 0 for v in x - y))
    if x == y:
        return True
    if not x.free_symbols and not y.free_symbols and close(x, y):
        return True
    if sympy.simplify(x - y) == 0:
        return True
    return bool(x.equals(y))


RELATIONS = {"<": sympy.StrictLessThan, "<=": sympy.LessThan, "=": sympy.Eq, "!=": sympy.Ne}


def pieces(form):
    """["rel", terms, ops] -> [(lhs, op, rhs)] with ">" and ">=" turned around."""
    terms = [parse(t) for t in form[1]]
    out = []
    for lhs, op, rhs in zip(terms, form[2], terms[1:]):
        if op in (">", ">="):
            lhs, op, rhs = rhs, op.replace(">", "<"), lhs
        out.append((lhs, op, rhs))
    return out


def solution_set(form):
    """(variable, real solutions) of a one-variable inequality or chain, (None, set) for intervals, or None."""
    if form[0] in ("and", "or"):  # inequalities joined by "and" or "or" in words
        parts = [solution_set(f) for f in form[1]]
        if None in parts or len({p[0] for p in parts}) != 1:
            return None
        join = sympy.Intersection if form[0] == "and" else sympy.Union
        return parts[0][0], join(*[p[1] for p in parts])
    if form[0] == "any":  # inequalities joined by "and" or "or" (a list has lost which): read "or" when
        # "and" would leave nothing ("x < 2, x > 3"), "and" when "or" would leave everything ("x > 1, x < 3")
        parts = [solution_set(f) for f in form[1]]
        if None in parts or len({p[0] for p in parts}) != 1:
            return None
        sets = [p[1] for p in parts]
        if all(sympy.Intersection(p, q) == sympy.S.EmptySet for p, q in itertools.combinations(sets, 2)):
            return parts[0][0], sympy.Union(*sets)
        both = sympy.Intersection(*sets)
        if sympy.Union(*sets) == sympy.S.Reals and both != sympy.S.EmptySet:
            return parts[0][0], both
        return None
    if form[0] == "set":
        return None, sympy.Union(*[sympy.Interval(parse(lo), parse(hi), lo_open, hi_open) for lo, hi, lo_open, hi_open in form[1]])
    ps = pieces(form)
    symbols = set().union(*[lhs.free_symbols | rhs.free_symbols for lhs, _, rhs in ps])
    if len(symbols) != 1 or any(op == "=" for _, op, _ in ps):
        return None
    x, solutions = symbols.pop(), sympy.S.Reals
    for lhs, op, rhs in ps:
        solutions = sympy.Intersection(solutions, sympy.solveset(RELATIONS[op](lhs, rhs), x, sympy.S.Reals))
    return x, solutions


def relations_equal(a, b):
    if a[0] == "rel" and b[0] == "rel" and len(a[2]) == len(b[2]) == 1:
        (l1, op1, r1), (l2, op2, r2) = pieces(a)[0], pieces(b)[0]
        d1, d2 = sympy.simplify(r1 - l1), sympy.simplify(r2 - l2)
        # the same relation up to a constant factor: positive keeps an inequality, any non-zero an equation
        if op1 == op2 and d1 != 0 and d2 != 0 and (d1.free_symbols or d2.free_symbols):
            if sympy.simplify(d1 - d2) == 0 or (op1 in ("=", "!=") and sympy.simplify(d1 + d2) == 0):
                return True
            k = sympy.simplify(d1 / d2)
            if not k.free_symbols and k.is_finite and k.is_nonzero and (op1 in ("=", "!=") or k.is_positive):
                return True
    s, t = solution_set(a), solution_set(b)
    if s is None or t is None or (s[0] is not None and t[0] is not None and s[0] != t[0]):
        return False  # "x >= 0" is not "y >= 0"; an interval has no variable
    s, t = s[1], t[1]
    return s == t or (sympy.Complement(s, t) == sympy.S.EmptySet and sympy.Complement(t, s) == sympy.S.EmptySet)


def equal(a, b):
    """a == b for two sympy sources (strings), or two relation forms (["rel", ...], ["set", ...], ...)."""
    if isinstance(a, str) and isinstance(b, str):
        return expressions_equal(parse(a), parse(b))
    if isinstance(a, str) or isinstance(b, str):
        return False
    return relations_equal(a, b)


def main():
    """Answer one request line with one reply line until stdin closes (the protocol above)."""
    global REL_TOL
    REL_TOL = float(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a runaway expression cannot eat the machine
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


if __name__ == "__main__":
    main()
