"""Reading a final answer out of a model's completion (pure string functions).

:func:`extract_answer` tries, in order:

1. the LAST ``\\boxed{...}`` (or ``\\fbox{...}``), braces matched so nested ``\\frac{a}{b}``
   stays whole -- the convention of MATH-style prompts;
2. the last "answer is X" / "answer: X" / "Answer = X" phrase (to the end of its line, a
   trailing period and ``$`` delimiters removed);
3. the whole completion when it is one formula (``$...$``, ``\\(...\\)``, ``\\[...\\]``);
4. the last number in the text (integers, decimals, fractions ``a/b``, with a sign;
   thousands separators ``1,000`` kept whole).

None when none of them finds anything: the checker scores that ``unparsed``, not ``wrong``.
"""

from __future__ import annotations

import re

__all__ = ["extract_answer", "extract_boxed", "extract_choice", "last_number"]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)
_FORMULA = re.compile(r"\$\$([^$]*)\$\$|\$([^$]*)\$|\\\((.*?)\\\)|\\\[(.*?)\\\]",
                      re.DOTALL)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+)?"
                     r"|[-+]?\.\d+")


def extract_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` with its braces matched, or None (also when
    the last one is never closed)."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth = 1
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start:i].strip()
    return None


def _strip_answer(text: str) -> str:
    s = text.strip().rstrip(".").strip()
    for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**")):
        if s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
            s = s[len(left):len(s) - len(right)].strip()
    return s.rstrip(".").strip()


def last_number(text: str) -> str | None:
    """The last number in ``text`` (sign, thousands separators, decimals, ``a/b``), or None."""
    found = _NUMBER.findall(text)
    return found[-1].replace(" ", "") if found else None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion (module docstring), or None."""
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed or None
    phrases = _ANSWER_IS.findall(text)
    if phrases:
        line = phrases[-1].splitlines()[0] if phrases[-1].strip() else ""
        inner = extract_boxed(line)
        answer = _strip_answer(inner if inner is not None else line)
        if answer:
            return answer
    formula = _FORMULA.fullmatch(text.strip())
    if formula is not None:
        return next(g for g in formula.groups() if g is not None).strip() or None
    return last_number(text)


_CHOICE_PATTERNS = (
    r"(?i:answer)\s*(?i:is|:)?\s*:?\s*\(?\**\s*([A-Z])\b",
    r"\\boxed\{\s*\(?([A-Z])\)?\s*\}",
    r"^\s*\(?([A-Z])\)?\s*[.):]?\s*$",
    r"\(([A-Z])\)",
    r"\b([A-Z])\)",
)


def extract_choice(text: str, letters: str = "ABCDE") -> str | None:
    """The chosen letter of a multiple-choice answer: "the answer is (B)", ``\\boxed{B}``, a
    lone "B." line, "(B)", "B)" -- first pattern (in that order) that finds a letter of
    ``letters``, the LAST match of it in the text; None when no pattern finds one (a bare
    capital inside prose is never taken: "I think" is not choice I)."""
    for pattern in _CHOICE_PATTERNS:
        found = [m for m in re.findall(pattern, text, flags=re.MULTILINE)
                 if m in letters]
        if found:
            return found[-1]
    return None
