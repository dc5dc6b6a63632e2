"""A fault-injecting OpenAI-compatible server for the HTTP judge's tests and benches.

``with StubServer(answer=..., faults=...) as stub:`` serves ``POST /v1/chat/completions`` and
``POST /v1/completions`` on 127.0.0.1 (a free port; ``stub.base_url``) from a raw asyncio HTTP/1.1
server in a background thread (raw, so that it can send a body shorter than its
Content-Length). Each request:

1. is recorded on arrival (:class:`Received`: arrival index, path, ``key`` -- the prompt text,
   chat messages' contents joined by a blank line as ``JudgeTemplate.prompt_text`` does --, the
   key's attempt number, ``time.monotonic()``, the planned fault, the Authorization header);
2. waits ``latency`` seconds (``asyncio.sleep``: concurrent requests overlap);
3. gets the fault ``faults(key, attempt, index)`` names (None: a clean answer):

   ==================  ======================================================================
   ``timeout``         no answer until the client disconnects (or ``hang_s``)
   ``disconnect``      the connection closed without an answer
   ``429`` / ``503``   that status with ``Retry-After: retry_after``
   ``500`` / ``400``   that status with a JSON error body
   ``malformed``       200 with a body that is not JSON
   ``truncated``       200, Content-Length of the full answer, half of it sent, then closed
   ``garbage``         a valid answer whose text is ``garbage_text`` (no verdict)
   ``content_filter``  a valid answer with ``finish_reason: content_filter``
   ``no_choices``      a valid answer with ``choices: []``
   ==================  ======================================================================

A clean answer's text is ``answer(request_json)``; ``usage`` reports ``prompt_tokens`` = the
prompt's whitespace-separated words and ``completion_tokens`` = the answer's tokens
(:func:`tokenize`). When the request asks for log-probs, each token's alternatives are itself at
log 1, except a verdict letter after ``[[`` when ``letter_probs`` is given: then the
alternatives are ``log(letter_probs[letter])`` (the top N of them) and the token's own
log-probability is its entry.

Plans: :func:`by_index` (by arrival index) and :func:`seeded` (drawn from a generator seeded by
``(seed, key[, attempt])``, so the same requests get the same faults whatever order they
arrive in, and a test can ask :func:`seeded`'s plan what it injected).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

FAULTS: tuple[str, ...] = ("timeout", "disconnect", "429", "503", "500", "400", "malformed",
                           "truncated", "garbage", "content_filter", "no_choices")
FaultPlan = Callable[[str, int, int], "str | None"]
"""``(key, attempt of that key, arrival index) -> fault name or None``."""

PATHS = ("/v1/chat/completions", "/v1/completions")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 429: "Too Many Requests",
            500: "Internal Server Error", 503: "Service Unavailable"}
_TOKEN = re.compile(r"\s+|\w+|[^\w\s]")
_WANT = re.compile(r"want=([ABC])")


def tokenize(text: str) -> list[str]:
    """The stub's tokens: runs of spaces, runs of word characters, single other characters
    (they join back into ``text``)."""
    return _TOKEN.findall(text)


def prompt_of(body: dict[str, Any]) -> str:
    """The prompt text of a request body (chat: the messages' contents joined by a blank
    line)."""
    if "messages" in body:
        return "\n\n".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("prompt", ""))


def want_answer(body: dict[str, Any]) -> str:
    """An answer whose verdict is the letter after ``want=`` in the prompt (``A`` when there
    is none): a test that writes ``want=B`` into a prompt knows the verdict."""
    found = _WANT.search(prompt_of(body))
    return f"Both answers are fine; one is better.\n[[{found.group(1) if found else 'A'}]]"


def by_index(faults: Mapping[int, str]) -> FaultPlan:
    """The fault for each arrival index (0-based, over the server's life)."""
    plan = dict(faults)
    return lambda key, attempt, index: plan.get(index)


def seeded(rates: Mapping[str, float], seed: int = 0, *, attempts: int | None = None,
           sticky: bool = False) -> FaultPlan:
    """Faults drawn with probabilities ``rates`` (their sum <= 1) from a generator seeded by
    ``(seed, key, attempt)``, or by ``(seed, key)`` when ``sticky`` (a key gets the same fault
    on every attempt); with ``attempts``, only the key's first ``attempts`` attempts can
    fault (so enough retries always end in a clean answer)."""
    names = list(rates)
    if sum(rates.values()) > 1 + 1e-9:
        raise ValueError("fault rates add up to more than 1")

    def plan(key: str, attempt: int, index: int = 0) -> str | None:
        if attempts is not None and attempt >= attempts:
            return None
        draw = random.Random(f"{seed}|{key}" if sticky else f"{seed}|{key}|{attempt}").random()
        edge = 0.0
        for name in names:
            edge += rates[name]
            if draw < edge:
                return name
        return None

    return plan


@dataclass
class Received:
    """One request as the stub saw it (module docstring)."""

    index: int
    path: str
    key: str
    attempt: int
    t: float
    fault: str | None
    authorization: str | None
    body: dict[str, Any]

    @property
    def outcome(self) -> str:
        return self.fault or "ok"


class StubServer:
    """The stub (module docstring). ``faults``: a plan, a ``{arrival index: fault}`` mapping or
    None; ``retry_after``: the header's value on 429 / 503 (seconds or an HTTP date)."""

    def __init__(self, answer: Callable[[dict[str, Any]], str] = want_answer, *,
                 latency: float = 0.0, faults: FaultPlan | Mapping[int, str] | None = None,
                 retry_after: float | str = 1, hang_s: float = 30.0,
                 letter_probs: Mapping[str, float] | None = None,
                 garbage_text: str = "I cannot tell which one is better.",
                 model: str = "stub-model"):
        self.answer = answer
        self.latency = latency
        if faults is None:
            self.plan: FaultPlan = lambda key, attempt, index: None
        elif isinstance(faults, Mapping):
            self.plan = by_index(faults)
        else:
            self.plan = faults
        for name in () if not isinstance(faults, Mapping) else faults.values():
            if name not in FAULTS:
                raise ValueError(f"fault {name!r}: expected one of {', '.join(FAULTS)}")
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.letter_probs = dict(letter_probs) if letter_probs else None
        self.garbage_text = garbage_text
        self.model = model
        self.records: list[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.port = 0
        self._attempts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> StubServer:
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._connection, "127.0.0.1", 0))
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # noqa: BLE001 -- handed to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="judges-stub", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the stub server did not start in 10 s")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        if self._server is not None:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()
        self._loop = None

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- what it saw ---------------------------------------------------------------------

    @property
    def requests(self) -> int:
        return len(self.records)

    def by_path(self) -> dict[str, int]:
        return dict(Counter(r.path for r in self.records))

    def by_outcome(self) -> dict[str, int]:
        return dict(Counter(r.outcome for r in self.records))

    def attempts(self, key: str) -> list[Received]:
        """The requests for ``key``, in arrival order."""
        return [r for r in list(self.records) if r.key == key]

    # -- serving -------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                        ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0") or 0)
                try:
                    raw = await reader.readexactly(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                path = parts[1] if len(parts) > 1 else "/"
                if not await self._request(path, headers, raw, reader, writer):
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _request(self, path: str, headers: dict[str, str], raw: bytes,
                       reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False: close the connection."""
        if path not in PATHS:
            await _send(writer, 404, _error("no such path", path))
            return True
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            await _send(writer, 400, _error("request body is not JSON", ""))
            return True
        key = prompt_of(body)
        attempt = self._attempts[key]
        self._attempts[key] += 1
        index = len(self.records)
        fault = self.plan(key, attempt, index)
        self.records.append(Received(index=index, path=path, key=key, attempt=attempt,
                                     t=time.monotonic(), fault=fault,
                                     authorization=headers.get("authorization"), body=body))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency > 0:
                await asyncio.sleep(self.latency)
            return await self._answer(path, body, fault, reader, writer)
        finally:
            self.in_flight -= 1

    async def _answer(self, path: str, body: dict[str, Any], fault: str | None,
                      reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if fault == "timeout":
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                await asyncio.wait_for(reader.read(1), self.hang_s)  # b"": the client left
            return False
        if fault == "disconnect":
            return False
        if fault in ("429", "503"):
            await _send(writer, int(fault), _error("slow down", fault),
                        {"Retry-After": str(self.retry_after)})
            return True
        if fault in ("500", "400"):
            await _send(writer, int(fault), _error("stub fault", fault))
            return True
        if fault == "malformed":
            await _send(writer, 200, b'{"id": "x", "choices": [{"message": {"content": "[[A')
            return True
        chat = path == PATHS[0]
        text = self.garbage_text if fault == "garbage" else self.answer(body)
        if fault == "content_filter":
            text = ""
        payload = self._payload(body, text, chat)
        if fault == "content_filter":
            payload["choices"][0]["finish_reason"] = "content_filter"
        if fault == "no_choices":
            payload["choices"] = []
        data = orjson.dumps(payload)
        if fault == "truncated":
            writer.write(_head(200, len(data), {"Connection": "close"}) + data[:len(data) // 2])
            await writer.drain()
            return False
        await _send(writer, 200, data)
        return True

    def _payload(self, body: dict[str, Any], text: str, chat: bool) -> dict[str, Any]:
        tokens = tokenize(text)
        usage = {"prompt_tokens": len(prompt_of(body).split()),
                 "completion_tokens": len(tokens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if chat:
            n = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
        else:
            n = int(body.get("logprobs") or 0)
        per_token = self._logprobs(tokens, n) if n else None
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
            choice["logprobs"] = None if per_token is None else {"content": [
                {"token": tok, "logprob": lp, "bytes": list(tok.encode()),
                 "top_logprobs": [{"token": a, "logprob": v} for a, v in alts]}
                for tok, lp, alts in per_token]}
        else:
            choice["text"] = text
            choice["logprobs"] = None if per_token is None else {
                "tokens": [tok for tok, _, _ in per_token],
                "token_logprobs": [lp for _, lp, _ in per_token],
                "top_logprobs": [dict(alts) for _, _, alts in per_token],
                "text_offset": [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]}
        return {"id": "stub-1", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": body.get("model", self.model),
                "choices": [choice], "usage": usage}

    def _logprobs(self, tokens: list[str], n: int
                  ) -> list[tuple[str, float, list[tuple[str, float]]]]:
        out = []
        for i, tok in enumerate(tokens):
            verdict = (self.letter_probs is not None and tok in self.letter_probs
                       and i >= 2 and tokens[i - 2:i] == ["[", "["])
            if verdict:
                assert self.letter_probs is not None
                ranked = sorted(self.letter_probs.items(), key=lambda kv: -kv[1])[:n]
                alts = [(a, math.log(p)) for a, p in ranked]
                out.append((tok, math.log(self.letter_probs[tok]), alts))
            else:
                out.append((tok, 0.0, [(tok, 0.0)]))
        return out


def _error(message: str, code: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": "stub", "code": code}})


def _head(status: int, length: int, extra: Mapping[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}",
             "Content-Type: application/json", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send(writer: asyncio.StreamWriter, status: int, data: bytes,
                extra: Mapping[str, str] | None = None) -> None:
    writer.write(_head(status, len(data), extra) + data)
    await writer.drain()
