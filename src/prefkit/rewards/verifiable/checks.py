"""Checks that need no time limit: exact match, multiple choice, regex / format, JSON schema.

Each returns a :class:`~.result.CheckResult`:

* :func:`check_exact` -- the extracted answer (:func:`~.extract.extract_answer`) or else the
  whole completion (the only candidate with ``extract=False``) equals one of the references
  after :func:`normalize` (case folded, surrounding ``$``, ``\\text{}`` and punctuation
  removed, whitespace collapsed, thousands separators and trailing decimal zeros dropped
  from numbers); ``unparsed`` when neither matches and nothing could be extracted;
* :func:`check_choice` -- the letter (:func:`~.extract.extract_choice`) equals the
  reference's letter;
* :func:`check_regex` -- ``re.fullmatch`` (``search=True``: ``re.search``) of a pattern;
  nothing to compare against, so a non-match is ``wrong``, never ``unparsed``;
* :func:`check_json_schema` -- the completion (or its first fenced ``json`` block, or its
  outermost ``{...}`` / ``[...]``) parsed as JSON and validated with ``jsonschema``:
  ``unparsed`` when no JSON can be read, ``wrong`` (detail: the first violation) when it
  breaks the schema, ``error`` when the schema itself is invalid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .extract import extract_answer, extract_choice
from .result import CheckResult

__all__ = ["check_choice", "check_exact", "check_json_schema", "check_regex", "normalize"]

_TEXT = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")
_NUMBER = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d+\.\d+|[-+]?\d+")


def _number(token: str) -> str:
    plain = token.replace(",", "")
    if "." in plain:
        plain = plain.rstrip("0").rstrip(".")
    return "0" if plain in ("-0", "+0", "") else plain.lstrip("+")


def normalize(text: str) -> str:
    """The comparison form of an answer (module docstring)."""
    s = _TEXT.sub(r"\1", text.strip())
    s = s.strip().strip("$").strip()
    s = re.sub(r"\s+", " ", s).casefold()
    s = _NUMBER.sub(lambda m: _number(m.group(0)), s)
    return s.strip(" .,;:!?\"'`*")


def check_exact(references: str | Sequence[str], prediction: str, *, extract: bool = True
                ) -> CheckResult:
    """``ok`` when the extracted answer or the completion normalizes to one of
    ``references`` (module docstring)."""
    wanted = {normalize(r) for r in ([references] if isinstance(references, str)
                                     else references)}
    answer = extract_answer(prediction) if extract else None
    for candidate in (answer, prediction):
        if candidate is not None and normalize(candidate) in wanted:
            return CheckResult.ok(normalize(candidate))
    if extract and (answer is None or not normalize(answer)):
        return CheckResult.unparsed("no answer found")
    got = normalize(answer if extract else prediction)
    return CheckResult.wrong(f"{got!r} not in {sorted(wanted)!r}")


def check_choice(reference: str, prediction: str, *, letters: str = "ABCDE") -> CheckResult:
    """``ok`` when the chosen letter is the reference's (``"B"``, ``"(B)"``, ``"B. text"``)."""
    want = extract_choice(reference.strip(), letters) or reference.strip()[:1].upper()
    if want not in letters:
        return CheckResult.error(f"reference {reference!r} names no choice in {letters}")
    got = extract_choice(prediction, letters)
    if got is None:
        return CheckResult.unparsed(f"no choice among {letters} found")
    return CheckResult.ok(got) if got == want else CheckResult.wrong(f"{got} != {want}")


def check_regex(pattern: str, prediction: str, *, search: bool = False,
                flags: int = re.DOTALL) -> CheckResult:
    """``ok`` when the completion matches ``pattern`` (whole, or anywhere with
    ``search=True``); an invalid pattern is ``error``."""
    try:
        compiled = re.compile(pattern, flags)
    except re.error as exc:
        return CheckResult.error(f"bad pattern {pattern!r}: {exc}")
    match = (compiled.search if search else compiled.fullmatch)(prediction.strip())
    return CheckResult.ok(pattern) if match else CheckResult.wrong(f"no match for {pattern!r}")


_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)```", re.DOTALL)


def _read_json(text: str) -> tuple[bool, Any]:
    candidates = [text.strip(), *_FENCE.findall(text)]
    for open_, close in (("{", "}"), ("[", "]")):
        i, j = text.find(open_), text.rfind(close)
        if 0 <= i < j:
            candidates.append(text[i:j + 1])
    for candidate in candidates:
        try:
            return True, json.loads(candidate)
        except ValueError:
            continue
    return False, None


def check_json_schema(schema: dict | str, prediction: str) -> CheckResult:
    """``ok`` when the completion's JSON validates against ``schema`` (a dict or JSON text)."""
    import jsonschema

    try:
        if isinstance(schema, str):
            schema = json.loads(schema)
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
    except (ValueError, jsonschema.SchemaError) as exc:
        return CheckResult.error(f"invalid schema: {str(exc).splitlines()[0]}")
    found, value = _read_json(prediction)
    if not found:
        return CheckResult.unparsed("no JSON found")
    error = jsonschema.exceptions.best_match(validator_cls(schema).iter_errors(value))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return CheckResult.wrong(f"{where}: {error.message}")
    return CheckResult.ok("valid")
