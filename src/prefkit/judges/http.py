"""An LLM judge behind an OpenAI-compatible HTTP server (vLLM, SGLang, llama.cpp's server,
hosted APIs).

:class:`OpenAIJudge` is a :class:`~prefkit.judges.text.TextJudge` whose ``complete`` POSTs the
template's messages to ``{base_url}/chat/completions`` (``api="chat"``) or the joined prompt to
``{base_url}/completions`` (``api="completions"``). The rules:

- **Retries.** A request is tried up to ``1 + retries`` times when the attempt ends in a
  timeout, a connection error, HTTP 429, HTTP 5xx, a 200 whose body is not JSON (``malformed
  json``) or a body cut short (``truncated body``). Any other 4xx, an answer without choices
  (``no choices``) and one stopped by the server's filter (``content filter``) are final.
  Between attempts it waits ``min(max_backoff, backoff * 2**k) * U(0.5, 1)`` after the k-th
  failure (k = 0, 1, ...), or, on 429 / 503 with a ``Retry-After`` header (seconds or an HTTP
  date), at least that long; a ``Retry-After`` above ``max_retry_after`` fails at once with
  ``retry-after too long``. When the attempts are spent it raises
  :class:`~prefkit.judges.text.CallError` with the last attempt's reason, and the judgment is
  ``failed`` with it. Reasons are short and stable: ``timeout``, ``connect error``, ``http
  NNN``, ``malformed json``, ``truncated body``, ``no choices``, ``content filter``,
  ``retry-after too long``.
- **Timeout.** ``timeout`` bounds each attempt in total (connect + send + the whole body), not
  the time spent waiting for a slot or for the rate limit.
- **Concurrency.** At most ``concurrency`` attempts in flight per event loop (one
  ``httpx.AsyncClient`` per running loop, its connection pool the same size, keep-alive on). A
  slot is held for one attempt, not through the back-off sleep.
- **Rate limits.** ``rpm`` (requests per minute) and ``tpm`` (tokens per minute) pace the
  attempts' start times: attempt starts are spaced by ``cost / rate`` (a token bucket that holds
  one request: no burst, so no window of any length goes over the rate). An attempt costs one
  request and ``ceil(prompt characters / 4) + max_tokens`` tokens, estimated before it is
  sent; when the answer reports ``usage``, the token pace is corrected by the difference.
  The limits are shared by every event loop using the judge.
- **Soft verdicts.** ``logprobs=N`` asks for the top-N log-probabilities of each generated token
  (chat: ``logprobs: true, top_logprobs: N``; completions: ``logprobs: N``); they fill
  :attr:`Completion.top_logprobs` and give a soft ``p_first`` (see
  :func:`~prefkit.judges.text.soft_p_first`). A generated token missing from its own top-N is
  added with its log-probability.
- **Cache key.** :meth:`OpenAIJudge.config` holds what the answers depend on -- the model,
  ``api``, ``temperature``, ``max_tokens``, ``top_p``, ``seed``, ``logprobs``, and (from
  ``TextJudge``) the template's digest and parser -- and deliberately NOT ``base_url``, the API
  key, ``concurrency``, the rate limits, timeouts or retries: moving the same model to another
  server or port, or running it harder, keeps its cached judgments. Serve a *different* model
  under the same name and you must change ``model`` (or clear the cache).
- **Counters.** :attr:`OpenAIJudge.stats` (:class:`CallStats`) counts calls, HTTP attempts,
  each attempt's outcome, retries, final failures and tokens; they add up (see its docstring).

Close the client of the running loop with ``await judge.aclose()`` or ``async with judge:``.
Under :func:`~prefkit.judges.base.judge_all` (``asyncio.run``) it is closed when the loop shuts
down: each loop's client is tied to an async generator the loop finalizes in
``shutdown_asyncgens``, so a client is never reused on, or leaked with, a dead loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import os
import random
import threading
import time
import weakref
from collections import Counter
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import orjson

from .templates import JudgeTemplate
from .text import CallError, Completion, TextJudge

__all__ = ["CallStats", "OpenAIJudge", "Pacer", "parse_endpoint", "parse_retry_after"]

APIS: tuple[str, ...] = ("chat", "completions")
_ERROR_SNIPPET = 200


@dataclass
class CallStats:
    """What an :class:`OpenAIJudge` did. ``calls``: ``complete`` calls (one per judge attempt
    at a parse); ``requests``: HTTP attempts sent; ``outcomes``: each attempt's outcome
    (``ok`` or its failure reason); ``retries``: attempts beyond a call's first; ``failed``:
    calls that raised, by final reason; tokens from the answers' ``usage``; ``throttled_s``:
    time spent waiting for the rate limits. A call cancelled from outside counts in
    ``failed["cancelled"]`` (and the attempt it cut in ``outcomes["cancelled"]``). Invariants,
    once no call is in flight::

        requests == sum(outcomes.values()) == calls + retries
        calls == outcomes["ok"] + sum(failed.values())

    Updated from the event loops' threads without a lock: exact for one loop at a time (as
    :func:`~prefkit.judges.base.judge_all` runs), approximate for loops in several threads.
    """

    calls: int = 0
    requests: int = 0
    retries: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    throttled_s: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "requests": self.requests, "retries": self.retries,
                "outcomes": dict(self.outcomes), "failed": dict(self.failed),
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "total_tokens": self.total_tokens, "throttled_s": self.throttled_s}


class Pacer:
    """Spaces starts so that ``rate`` units per second are never exceeded: a start costing
    ``cost`` units pushes the next allowed start ``cost / rate`` seconds later (a token bucket
    holding one request; no burst after idle time). :meth:`reserve` books a start and returns
    its time (FIFO, no await inside, thread-safe); :meth:`correct` adds ``delta`` units to the
    last booking (negative: the estimate was too high)."""

    def __init__(self, per_minute: float):
        if not per_minute > 0:
            raise ValueError(f"a rate limit must be > 0 per minute, got {per_minute}")
        self.rate = per_minute / 60.0
        self._free_at = -math.inf
        self._lock = threading.Lock()

    def reserve(self, cost: float, now: float) -> float:
        with self._lock:
            start = max(now, self._free_at)
            self._free_at = start + cost / self.rate
            return start

    def correct(self, delta: float) -> None:
        with self._lock:
            self._free_at += delta / self.rate


def parse_endpoint(spec: str) -> tuple[str, str]:
    """``MODEL@http(s)://HOST:PORT/v1`` -> ``(model, base_url)`` (the judges' ``http:MODEL@URL``
    without ``http:``, and ``prefkit serve generate --endpoint``; the last ``@`` splits, so a
    model name may hold ``@``)."""
    model, at, url = str(spec).rpartition("@")
    if not at or not model or not url.startswith(("http://", "https://")):
        raise ValueError(f"endpoint {spec!r}: expected MODEL@http(s)://HOST:PORT/v1")
    return model, url


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP date
    (``now``: the current Unix time, default ``time.time()``); ``None`` when absent or
    unreadable; never negative."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


class _Attempt(Exception):
    """One attempt's failure: ``retry`` whether another attempt may help, ``wait`` a minimum
    delay the server asked for."""

    def __init__(self, reason: str, detail: str = "", retry: bool = True,
                 wait: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.retry = retry
        self.wait = wait


@dataclass
class _LoopState:
    client: Any
    gate: asyncio.Semaphore
    keeper: AsyncGenerator[None, None] | None = None


class OpenAIJudge(TextJudge):
    """An OpenAI-compatible HTTP judge (module docstring for every rule). ``api_key`` (or, when
    it is None, the environment variable ``api_key_env``) is sent as a Bearer token only when
    set."""

    name = "openai"

    def __init__(self, *, base_url: str, model: str,
                 template: str | JudgeTemplate | None = None, task: str = "compare",
                 api: str = "chat", temperature: float = 0.0, max_tokens: int = 512,
                 top_p: float | None = None, seed: int | None = None,
                 logprobs: int | None = None, api_key: str | None = None,
                 api_key_env: str | None = "OPENAI_API_KEY", concurrency: int = 8,
                 rpm: float | None = None, tpm: float | None = None, timeout: float = 60.0,
                 retries: int = 4, backoff: float = 0.5, max_backoff: float = 20.0,
                 max_retry_after: float = 60.0, parse_retries: int = 2):
        super().__init__(template, task=task, parse_retries=parse_retries)
        if api not in APIS:
            raise ValueError(f"api {api!r}: expected one of {', '.join(APIS)}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if logprobs is not None and logprobs < 1:
            raise ValueError(f"logprobs must be None or >= 1, got {logprobs}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.name = f"http:{model}"
        self.api = api
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.top_p = top_p
        self.seed = seed
        self.logprobs = logprobs
        if api_key is None and api_key_env:
            api_key = os.environ.get(api_key_env) or None
        self._api_key = api_key
        self.concurrency = concurrency
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self._rpm = Pacer(rpm) if rpm is not None else None
        self._tpm = Pacer(tpm) if tpm is not None else None
        self.stats = CallStats()
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary())
        self._random = random.Random()

    def __repr__(self) -> str:
        return (f"OpenAIJudge(base_url={self.base_url!r}, model={self.model!r}, "
                f"api={self.api!r}, template={self.template.name!r})")

    # -- configuration -------------------------------------------------------------------

    def backend_config(self) -> dict[str, Any]:
        """The answers' dependencies (module docstring: base_url, key, concurrency and limits
        are left out on purpose)."""
        return {"backend": "openai", "model": self.model, "api": self.api,
                "temperature": self.temperature, "max_tokens": self.max_tokens,
                "top_p": self.top_p, "seed": self.seed, "logprobs": self.logprobs}

    def payload(self, messages: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
        """The URL and JSON body for ``messages`` (the completions API gets them joined by a
        blank line, as :meth:`JudgeTemplate.prompt_text` does)."""
        body: dict[str, Any] = {"model": self.model, "temperature": self.temperature,
                                "max_tokens": self.max_tokens}
        if self.top_p is not None:
            body["top_p"] = self.top_p
        if self.seed is not None:
            body["seed"] = self.seed
        if self.api == "chat":
            body["messages"] = messages
            if self.logprobs is not None:
                body["logprobs"] = True
                body["top_logprobs"] = self.logprobs
            return f"{self.base_url}/chat/completions", body
        body["prompt"] = "\n\n".join(m["content"] for m in messages)
        if self.logprobs is not None:
            body["logprobs"] = self.logprobs
        return f"{self.base_url}/completions", body

    def estimate_tokens(self, messages: list[dict[str, str]]) -> int:
        """The tokens an attempt is charged before its answer: ``ceil(chars / 4) +
        max_tokens``."""
        chars = sum(len(m["content"]) for m in messages)
        return math.ceil(chars / 4) + self.max_tokens

    # -- the client of the running loop --------------------------------------------------

    async def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is not None:
            return state
        import httpx

        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        limits = httpx.Limits(max_connections=self.concurrency,
                              max_keepalive_connections=self.concurrency)
        client = httpx.AsyncClient(headers=headers, limits=limits,
                                   timeout=httpx.Timeout(self.timeout), trust_env=False)
        state = _LoopState(client=client, gate=asyncio.Semaphore(self.concurrency))
        self._loops[loop] = state
        state.keeper = self._keeper(state)
        await state.keeper.__anext__()  # the loop now tracks it: shutdown_asyncgens closes it
        return state

    async def _keeper(self, state: _LoopState) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:  # the loop is not referenced here: the registry must not keep it alive
            loop = asyncio.get_running_loop()
            if self._loops.get(loop) is state:
                del self._loops[loop]
            await state.client.aclose()

    async def aclose(self) -> None:
        """Close the running loop's client (a later call opens a new one)."""
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is not None and state.keeper is not None:
            await state.keeper.aclose()

    async def __aenter__(self) -> OpenAIJudge:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    # -- one call --------------------------------------------------------------------------

    async def complete(self, messages: list[dict[str, str]], attempt: int) -> Completion:
        """One answer for ``messages``, retrying as the module docstring says; raises
        :class:`CallError` with the last reason when no attempt succeeds."""
        state = await self._state()
        url, body = self.payload(messages)
        content = orjson.dumps(body)
        estimate = self.estimate_tokens(messages)
        self.stats.calls += 1
        failures = 0
        try:
            while True:
                try:
                    async with state.gate:
                        await self._pace(estimate)
                        self.stats.requests += 1
                        self.stats.retries += int(failures > 0)
                        try:
                            completion = await self._attempt(state.client, url, content,
                                                             estimate)
                        except asyncio.CancelledError:
                            self.stats.outcomes["cancelled"] += 1
                            raise
                except _Attempt as exc:
                    self.stats.outcomes[exc.reason] += 1
                    if exc.wait is not None and exc.wait > self.max_retry_after:
                        self.stats.failed["retry-after too long"] += 1
                        raise CallError("retry-after too long",
                                        f"{exc.reason} with Retry-After {exc.wait:g} s > "
                                        f"{self.max_retry_after:g} s") from None
                    if not exc.retry or failures >= self.retries:
                        self.stats.failed[exc.reason] += 1
                        detail = exc.detail
                        if failures:
                            detail = f"{detail} (after {failures + 1} attempts)".strip()
                        raise CallError(exc.reason, detail) from None
                    delay = min(self.max_backoff, self.backoff * 2 ** failures)
                    delay *= 0.5 + 0.5 * self._random.random()
                    if exc.wait is not None:
                        delay = max(delay, exc.wait)
                    failures += 1
                    await asyncio.sleep(delay)
                    continue
                self.stats.outcomes["ok"] += 1
                self.stats.prompt_tokens += completion.prompt_tokens
                self.stats.completion_tokens += completion.completion_tokens
                return completion
        except asyncio.CancelledError:
            self.stats.failed["cancelled"] += 1
            raise

    async def _pace(self, estimate: int) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = now
        if self._rpm is not None:
            start = max(start, self._rpm.reserve(1, now))
        if self._tpm is not None:
            start = max(start, self._tpm.reserve(estimate, now))
        if start > now:
            self.stats.throttled_s += start - now
            await asyncio.sleep(start - now)

    async def _attempt(self, client: Any, url: str, content: bytes, estimate: int
                       ) -> Completion:
        try:
            status, headers, raw = await asyncio.wait_for(
                self._exchange(client, url, content), self.timeout)
        except asyncio.TimeoutError:
            raise _Attempt("timeout", f"no complete answer in {self.timeout:g} s") from None
        if status != 200:
            wait = None
            if status in (429, 503):
                wait = parse_retry_after(headers.get("retry-after"))
            retry = status == 429 or 500 <= status <= 599
            raise _Attempt(f"http {status}", _snippet(raw), retry=retry, wait=wait)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise _Attempt("malformed json", f"{exc}; body {_snippet(raw)}") from None
        if not isinstance(data, dict):
            raise _Attempt("malformed json", f"expected an object, got {_snippet(raw)}")
        completion = self._completion(data)
        if self._tpm is not None and "usage_reported" in completion.extra:
            self._tpm.correct(completion.prompt_tokens + completion.completion_tokens
                              - estimate)
        return completion

    async def _exchange(self, client: Any, url: str, content: bytes
                        ) -> tuple[int, Any, bytes]:
        import httpx

        try:
            request = client.build_request("POST", url, content=content)
            response = await client.send(request, stream=True)
        except httpx.TimeoutException:
            raise _Attempt("timeout", f"no answer in {self.timeout:g} s") from None
        except httpx.TransportError as exc:
            raise _Attempt("connect error", f"{type(exc).__name__}: {exc}") from None
        try:
            raw = await response.aread()
        except httpx.TimeoutException:
            raise _Attempt("timeout", f"body not complete in {self.timeout:g} s") from None
        except httpx.TransportError as exc:
            raise _Attempt("truncated body", f"{type(exc).__name__}: {exc}") from None
        finally:
            await response.aclose()
        return response.status_code, response.headers, raw

    def _completion(self, data: dict[str, Any]) -> Completion:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            error = data.get("error")
            detail = f"error: {_snippet(orjson.dumps(error))}" if error else _snippet(
                orjson.dumps(data))
            raise _Attempt("no choices", detail, retry=False)
        choice = choices[0]
        finish = choice.get("finish_reason")
        if finish == "content_filter":
            raise _Attempt("content filter", "finish_reason content_filter", retry=False)
        if self.api == "chat":
            message = choice.get("message") or {}
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
        if text is not None and not isinstance(text, str):
            raise _Attempt("malformed json", f"text is a {type(text).__name__}")
        usage = data.get("usage")
        extra: dict[str, Any] = {}
        prompt_tokens = completion_tokens = 0
        if isinstance(usage, dict):
            prompt_tokens = _count(usage.get("prompt_tokens"))
            completion_tokens = _count(usage.get("completion_tokens"))
            extra["usage_reported"] = True
        top = _top_logprobs(choice.get("logprobs"), self.api) if self.logprobs else None
        return Completion(text=text or "", prompt_tokens=prompt_tokens,
                          completion_tokens=completion_tokens, top_logprobs=top,
                          finish_reason=finish, extra=extra)


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and value >= 0 else 0


def _snippet(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return text if len(text) <= _ERROR_SNIPPET else text[:_ERROR_SNIPPET] + "..."


def _top_logprobs(block: Any, api: str) -> list[tuple[str, dict[str, float]]] | None:
    """Per generated token ``(token, {alternative: log-probability})`` from a choice's
    ``logprobs`` (chat: ``content[i].token / .logprob / .top_logprobs[j]``; completions:
    ``tokens``, ``token_logprobs``, ``top_logprobs`` dicts); None when absent or malformed."""
    if not isinstance(block, dict):
        return None
    out: list[tuple[str, dict[str, float]]] = []
    try:
        if api == "chat":
            content = block.get("content")
            if not isinstance(content, list):
                return None
            for item in content:
                alts = {str(a["token"]): float(a["logprob"])
                        for a in item.get("top_logprobs") or []}
                token = str(item["token"])
                if token not in alts and item.get("logprob") is not None:
                    alts[token] = float(item["logprob"])
                out.append((token, alts))
        else:
            tokens = block.get("tokens")
            if not isinstance(tokens, list):
                return None
            chosen = block.get("token_logprobs") or [None] * len(tokens)
            tops = block.get("top_logprobs") or [None] * len(tokens)
            for token, logprob, top in zip(tokens, chosen, tops, strict=False):
                alts = {str(k): float(v) for k, v in (top or {}).items()}
                if token not in alts and logprob is not None:
                    alts[str(token)] = float(logprob)
                out.append((str(token), alts))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return out
