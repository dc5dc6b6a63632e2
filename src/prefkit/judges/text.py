"""Judges that write text: render a template, ask a language model, parse strictly, retry.

:class:`TextJudge` is the part every text backend shares (the OpenAI-compatible HTTP judge, the
local transformers judge): a backend only implements ``complete(messages, attempt)``, returning a
:class:`Completion` or raising :class:`CallError` with the reason. The rules:

- an answer that does not parse is asked again, up to ``parse_retries`` more times (the same
  request: a sampling server may answer differently; a greedy one will not, and the judgment
  ends ``unparsed``); the last text and the parse error are kept;
- a :class:`CallError` (timeout, HTTP status, broken body -- after the backend's own retries)
  ends the judgment as ``failed`` with that reason, also when an earlier attempt's text did not
  parse (that text is kept in ``raw``; a failed judgment is not cached, so a re-run asks again);
- tokens and latency are summed over the attempts.

**Soft verdicts.** When the backend returns the log-probabilities of the top alternatives at
each generated token, the verdict letter's token gives ``p_first`` directly: with ``P_A``,
``P_B``, ``P_C`` the probabilities of the letters ``A``, ``B`` (and ``C``, tie) at that position
(leading spaces ignored; the letters' other spellings summed), ``p_first = (P_A + P_C / 2) /
(P_A + P_B + P_C)`` -- the judge's own uncertainty instead of a hard 1 / 0.5 / 0 (as AlpacaEval
2's weighted win rate does). The verdict itself is still the parsed text.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from .base import JudgeRequest, Judgment
from .parse import Parsed, ParseError
from .templates import DEFAULT_TEMPLATE, JudgeTemplate, load_template

__all__ = ["CallError", "Completion", "TextJudge", "soft_p_first"]


class CallError(Exception):
    """A backend could not get an answer; ``reason`` is short and stable (``timeout``,
    ``http 500``, ``malformed json``, ``truncated body``, ...), ``detail`` the rest."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class Completion:
    """A backend's answer: the text, token counts, and optionally per generated token
    ``(token text, {alternative token: log-probability})``."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    top_logprobs: list[tuple[str, dict[str, float]]] | None = None
    finish_reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_LETTERS = {"A": "first", "B": "second", "C": "tie"}


def soft_p_first(completion: Completion, span: tuple[int, int] | None) -> float | None:
    """P(first better) from the verdict letter's token alternatives (module docstring), or
    None when they are not available."""
    if not completion.top_logprobs or span is None:
        return None
    offset = 0
    for token, alternatives in completion.top_logprobs:
        end = offset + len(token)
        if offset <= span[0] < end or (offset == span[0] and not token):
            mass = {"A": 0.0, "B": 0.0, "C": 0.0}
            for alt, logprob in alternatives.items():
                letter = alt.strip().upper()
                if letter in mass and math.isfinite(logprob):
                    mass[letter] += math.exp(logprob)
            total = sum(mass.values())
            if total <= 0:
                return None
            return (mass["A"] + 0.5 * mass["C"]) / total
        offset = end
    return None


class TextJudge:
    """A template + a text backend (module docstring). Subclasses implement :meth:`complete`
    and :meth:`backend_config`."""

    name = "text"

    def __init__(self, template: str | JudgeTemplate | None = None, *, task: str = "compare",
                 parse_retries: int = 2):
        if template is None:
            template = DEFAULT_TEMPLATE[task]
        self.template = template if isinstance(template, JudgeTemplate) else load_template(
            template)
        if parse_retries < 0:
            raise ValueError(f"parse_retries must be >= 0, got {parse_retries}")
        self.parse_retries = parse_retries

    async def complete(self, messages: list[dict[str, str]], attempt: int) -> Completion:
        raise NotImplementedError

    def backend_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        # parse_retries decides whether an answer ends unparsed, and unparsed answers are cached
        return {**self.backend_config(), "template": self.template.digest,
                "parser": self.template.parser, "parse_retries": self.parse_retries}

    async def judge(self, request: JudgeRequest) -> Judgment:
        messages = self.template.messages(request)
        start = time.perf_counter()
        tokens = [0, 0]
        last_text, last_error = None, None
        attempts = 0
        for attempt in range(1 + self.parse_retries):
            attempts += 1
            try:
                completion = await self.complete(messages, attempt)
            except CallError as exc:
                return Judgment.failed(request.task, str(exc), raw=last_text,
                                       prompt_tokens=tokens[0], completion_tokens=tokens[1],
                                       latency_s=time.perf_counter() - start,
                                       attempts=attempts)
            tokens[0] += completion.prompt_tokens
            tokens[1] += completion.completion_tokens
            last_text = completion.text
            try:
                parsed = self.template.parse(completion.text, request)
            except ParseError as exc:
                last_error = str(exc)
                continue
            return self._judgment(request, parsed, completion, tokens, start, attempts)
        return Judgment.unparsed(request.task, f"unparsed: {last_error}", raw=last_text,
                                 prompt_tokens=tokens[0], completion_tokens=tokens[1],
                                 latency_s=time.perf_counter() - start, attempts=attempts)

    def _judgment(self, request: JudgeRequest, parsed: Parsed, completion: Completion,
                  tokens: list[int], start: float, attempts: int) -> Judgment:
        common = {"rationale": parsed.rationale, "raw": completion.text,
                  "prompt_tokens": tokens[0], "completion_tokens": tokens[1],
                  "latency_s": time.perf_counter() - start, "attempts": attempts}
        if request.task == "compare":
            return Judgment(task="compare", verdict=parsed.verdict,
                            p_first=soft_p_first(completion, parsed.span), **common)
        if request.task == "grade":
            scale = {"scale": list(self.template.scale)} if self.template.scale else {}
            return Judgment(task="grade", score=parsed.score, extra=scale, **common)
        return Judgment(task="rank", ranking=parsed.ranking, **common)
