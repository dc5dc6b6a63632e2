"""The math comparison itself, run inside a checker child process (:mod:`.child`): math-verify
parses and compares, and stricter rules on top refuse its known false positives.

Parsing (:func:`strict_parse`) -- one reading of the WHOLE answer or none:

* the answer is parsed as LaTeX with math-verify's ``first_match`` mode. Its default
  ``any_match`` mode falls back to any number found inside a formula it failed to parse, so
  two different unsupported formulas compare equal through a shared number
  (``1 - \\frac{1}{\\mathrm{e}}`` and ``1 + \\frac{1}{\\mathrm{e}}`` both read as ``1``:
  Math-Verify PR #82; ``4\\sqrt(2)`` read as ``4``: #41; ``1, 2, \\ldots, n`` read as ``2``:
  #14). A failed LaTeX parse is ``unparsed`` here;
* else as a plain expression (``sqrt(3)/3``), accepted only when the matched text is the
  whole answer;
* an equation is kept whole (``3x + 4y + 14 = 0`` is not its right-hand side ``0``: #60);
* an undefined value is refused (``12:00`` read as ``zoo``: #14);
* quantifiers (``\\forall``, ``\\exists``), ellipses and ``\\mathrm{e}`` are not
  mathematics math-verify reads (it drops them mid-formula): such an answer is ``unparsed``
  (#64: ``\\forall x>0, f(x) = 0`` compared as ``0``; PR #82).

Comparing (:func:`compare`) -- math-verify's ``verify`` must say equal, and then:

* two numbers must agree (:func:`numbers_agree`: exactly as far as 60 digits tell for exact
  values, to a relative 1e-9 with a float, or to half a unit of the last decimal written when
  the answer is a decimal with 2 or more decimals: ``0.333333`` for 1/3). math-verify rounds
  both to 6 decimals, so every pair of values below 5e-7 compared equal (``1/2^{99}`` and
  ``1/2^{98}``, ``1/2004!`` and ``1/2006!``: #14);
* a percentage may be written as its number or its fraction (``5\\%``, ``5``, ``0.05``), as
  math-verify allows.

One rule goes the other way: two closed-form NUMBERS that math-verify calls different but whose
values agree to 45 digits are equal, a symbol ``i`` read as the imaginary unit (``e^{i\\pi}``
and ``-1``, ``\\sqrt{-1}`` and ``i``): math-verify leaves both different.

Statuses: ``ok``, ``wrong``, ``unparsed`` (the prediction could not be read), ``error`` (the
REFERENCE could not be read: a data problem, not the policy's).
"""

from __future__ import annotations

import re
from typing import Any

import sympy
from latex2sympy2_extended import NormalizationConfig
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from .extract import extract_boxed
from .result import CheckResult

__all__ = ["compare", "numbers_agree", "strict_parse"]

_LATEX = [LatexExtractionConfig(
    boxed_match_priority=0,
    normalization_config=NormalizationConfig(basic_latex=True, units=True,
                                             malformed_operators=True, nits=True,
                                             boxed="all", equations=False))]
_EXPR = [ExprExtractionConfig()]
#: constructs math-verify silently drops or misreads: an answer holding one is unparsed
_UNSUPPORTED = re.compile(r"\\(?:forall|exists|ldots|cdots|dots|vdots)|\.\.\.|\\mathrm\{e\}")
_RELATIVE = 1e-9
_EXACT = sympy.Rational(1, 10**45)


def _unwrap(text: str) -> str:
    s = text.strip()
    boxed = extract_boxed(s)
    if boxed is not None:
        s = boxed
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left):len(s) - len(right)].strip()
    return s.rstrip(".").strip()


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def _bad_value(expr: Any) -> bool:
    if not isinstance(expr, sympy.Basic):
        return False
    return bool(expr.has(sympy.zoo, sympy.nan))


def strict_parse(text: str) -> list | None:
    """math-verify's ``[sympy object, matched text]`` for the whole of ``text`` (module
    docstring), or None when it cannot be read as one expression."""
    s = _unwrap(text)
    if not s or _UNSUPPORTED.search(s):
        return None
    parsed = parse(f"${s}$", extraction_config=_LATEX, extraction_mode="first_match",
                   parsing_timeout=None)
    if not (parsed and not isinstance(parsed[0], str)):
        parsed = parse(s, extraction_config=_EXPR, extraction_mode="first_match",
                       parsing_timeout=None)
        if not (parsed and not isinstance(parsed[0], str)
                and _squash(str(parsed[-1])) == _squash(s)):
            return None
    if _bad_value(parsed[0]):
        return None
    return parsed


def _decimals(text: str) -> int:
    m = re.fullmatch(r"\s*[-+]?\d*\.(\d+)\s*", _unwrap(text))
    return len(m.group(1)) if m else 0


def numbers_agree(a: Any, b: Any, *, decimals: int = 0) -> bool:
    """Two sympy numbers equal: evaluated with 60 digits, within half a unit of the last of
    ``decimals`` (>= 2) written decimals, else to a relative 1e-9 when either holds a float,
    else (both exact) to a relative 1e-45 -- equal as far as 60 digits can tell (``2^{-100}``
    and ``1/(2^{100}+1)`` differ at the 31st digit). Infinities must be equal. A value that
    does not evaluate to a plain number is left to math-verify's verdict (True)."""
    a, b = sympy.sympify(a).doit(), sympy.sympify(b).doit()  # doit: UnevaluatedExpr (5%)
    if a.has(sympy.oo, -sympy.oo, sympy.zoo) or b.has(sympy.oo, -sympy.oo, sympy.zoo):
        return a == b
    x, y = sympy.N(a, 60), sympy.N(b, 60)
    diff, ax, ay = (sympy.N(abs(v), 60) for v in (x - y, x, y))
    if not (diff.is_Number and ax.is_Number and ay.is_Number):
        return True
    if diff == 0:
        return True
    if decimals >= 2 and diff <= sympy.Rational(1, 2) * sympy.Rational(10) ** -decimals:
        return True
    exact = not (a.atoms(sympy.Float) or b.atoms(sympy.Float))
    return bool(diff <= (_EXACT if exact else _RELATIVE) * max(ax, ay))


def _imaginary(expr: Any) -> Any:
    """``expr`` with a free symbol named ``i`` read as the imaginary unit (math-verify keeps it
    a symbol, an index's name)."""
    if not isinstance(expr, sympy.Expr):
        return expr
    return expr.subs({s: sympy.I for s in expr.free_symbols if s.name == "i"})


def _is_number(expr: Any) -> bool:
    return isinstance(expr, sympy.Expr) and bool(expr.is_number)


def compare(reference: str, answer: str) -> CheckResult:
    """``ok`` / ``wrong`` / ``unparsed`` / ``error`` for ``answer`` against ``reference``
    (module docstring)."""
    gold = strict_parse(reference)
    if gold is None:
        return CheckResult.error(f"reference {reference!r} could not be parsed")
    pred = strict_parse(answer)
    if pred is None:
        return CheckResult.unparsed(f"answer {answer!r} could not be parsed")
    numbers = _is_number(gold[0]) and _is_number(pred[0])
    if not verify(gold, pred, timeout_seconds=None):
        g, p = _imaginary(gold[0]), _imaginary(pred[0])
        if _is_number(g) and _is_number(p) and numbers_agree(g, p):
            return CheckResult.ok(f"{pred[0]} == {gold[0]} (same value to 45 digits)")
        return CheckResult.wrong(f"{pred[0]} != {gold[0]}")
    if numbers:
        decimals = max(_decimals(answer), _decimals(reference))
        percent = "%" in reference or "%" in answer  # math-verify takes 5 for 5% (and x100)
        if not (numbers_agree(gold[0], pred[0], decimals=decimals) or percent and (
                numbers_agree(100 * gold[0], pred[0], decimals=decimals)
                or numbers_agree(gold[0], 100 * pred[0], decimals=decimals))):
            return CheckResult.wrong(f"{pred[0]} != {gold[0]} (beyond the tolerance; "
                                     "math-verify rounds to 6 decimals)")
    return CheckResult.ok(f"{pred[0]} == {gold[0]}")
