"""Arena outputs from model servers: every prompt sent to every OpenAI-compatible endpoint.

:func:`generate_outputs` POSTs each prompt to each endpoint's ``{base_url}/chat/completions``
(a text prompt as one user message, a conversation as its messages) and returns candidate rows
``{"prompt", "responses", "models"}`` -- the items file of an arena campaign (``prefkit serve
campaign create NAME --task arena --items outputs.jsonl``) -- plus the failures.

The HTTP rules are the HTTP judge's (:class:`prefkit.judges.http.OpenAIJudge`, whose public
``complete`` does each call): per attempt ``timeout`` seconds; up to ``1 + retries`` attempts on
timeouts, connection errors, HTTP 429 and 5xx, malformed or truncated bodies, with exponential
back-off from ``backoff`` seconds and at least the ``Retry-After`` a 429 / 503 asks for (one
above ``max_retry_after`` fails at once); at most ``concurrency`` requests in flight per
endpoint. A request's ``model`` field is the endpoint's name.

A row holds the models that answered, in the endpoints' order; a prompt with fewer than two
answers is left out (its failed models listed in ``failures``, plus one entry with ``model``
None and reason ``"fewer than 2 answers"``). Failures are :class:`GenerationFailure`
``(prompt index, model, reason, detail)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..judges.http import parse_endpoint

__all__ = ["GenerationFailure", "generate_outputs", "parse_endpoint"]


@dataclass(frozen=True)
class GenerationFailure:
    """One prompt an endpoint did not answer (``model`` set, ``reason`` the HTTP judge's short
    reason: ``http 500``, ``timeout``, ...), or a prompt left out for having fewer than two
    answers (``model`` None, ``reason`` ``"fewer than 2 answers"``)."""

    prompt_index: int
    model: str | None
    reason: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _messages(prompt: Any, index: int) -> list[dict[str, Any]]:
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError(f"prompt {index}: empty")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(
            isinstance(m, dict) and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str) for m in prompt):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise ValueError(f"prompt {index}: expected a text or a conversation (a list of "
                     f"{{role, content}} messages), got {type(prompt).__name__}")


def generate_outputs(prompts: Sequence[Any], endpoints: Sequence[tuple[str, str]], *,
                     max_tokens: int = 256, temperature: float = 0.0, seed: int | None = 0,
                     concurrency: int = 8, timeout: float = 60.0, retries: int = 3,
                     backoff: float = 0.5, max_backoff: float = 20.0,
                     max_retry_after: float = 60.0, api_key: str | None = None
                     ) -> tuple[list[dict[str, Any]], list[GenerationFailure]]:
    """Every prompt's answer from every endpoint (module docstring). ``endpoints``: ``(model
    name, base_url)`` pairs, e.g. ``("m1", "http://127.0.0.1:8001/v1")``; at least two, with
    distinct names. Returns ``(rows, failures)``: rows in prompt order, each ``{"prompt",
    "responses", "models"}`` with the answering models in ``endpoints``' order."""
    from ..judges.http import OpenAIJudge

    if len(endpoints) < 2:
        raise ValueError(f"an arena needs at least 2 endpoints, got {len(endpoints)}")
    names = [name for name, _ in endpoints]
    if len(set(names)) != len(names):
        raise ValueError(f"endpoint model names must differ: {names}")
    messages = [_messages(p, i) for i, p in enumerate(prompts)]
    if not messages:
        raise ValueError("no prompts")
    judges = [OpenAIJudge(base_url=url, model=name, temperature=temperature,
                          max_tokens=max_tokens, seed=seed, api_key=api_key,
                          concurrency=concurrency, timeout=timeout, retries=retries,
                          backoff=backoff, max_backoff=max_backoff,
                          max_retry_after=max_retry_after)
              for name, url in endpoints]

    async def one(judge: OpenAIJudge, msgs: list[dict[str, Any]]) -> tuple[str | None, Any]:
        from ..judges.text import CallError

        try:
            completion = await judge.complete(msgs, 0)
        except CallError as exc:
            return None, exc
        return completion.text, None

    async def run() -> list[list[tuple[str | None, Any]]]:
        try:
            tasks = [[asyncio.ensure_future(one(j, m)) for j in judges] for m in messages]
            return [[await t for t in row] for row in tasks]
        finally:
            for judge in judges:
                await judge.aclose()

    answers = asyncio.run(run())
    rows: list[dict[str, Any]] = []
    failures: list[GenerationFailure] = []
    for index, (prompt, row) in enumerate(zip(prompts, answers, strict=True)):
        responses, models = [], []
        for name, (text, error) in zip(names, row, strict=True):
            if error is not None:
                failures.append(GenerationFailure(index, name, error.reason, error.detail))
            else:
                responses.append(text)
                models.append(name)
        if len(responses) < 2:
            failures.append(GenerationFailure(index, None, "fewer than 2 answers",
                                              f"{len(responses)} of {len(names)} models "
                                              "answered"))
            continue
        rows.append({"prompt": prompt, "responses": responses, "models": models})
    return rows, failures
