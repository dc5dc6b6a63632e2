"""An OpenAI-compatible HTTP API for any local causal LM (``prefkit serve-model``).

:func:`create_model_app` puts a loaded model and its tokenizer behind

* ``GET /v1/models`` (and ``GET /v1/models/{id}``): the one served model;
* ``POST /v1/chat/completions``: ``messages`` rendered with the tokenizer's chat template
  (with the generation prompt) when it has one; otherwise joined as plain text, one
  ``"{role}: {content}"`` line per message followed by a final ``"assistant:"`` line
  (:func:`plain_chat_prompt`);
* ``POST /v1/completions``: ``prompt`` a string or a list of strings (one set of ``n`` choices
  per prompt, in order);
* ``GET /health``: ``{"status": "ok"}``.

Bodies follow OpenAI's shapes (``id``, ``object``, ``created``, ``model``, ``choices``,
``usage``), so OpenAI clients, prefkit's judge client and the web app talk to a local model as
to vLLM or a hosted API. Errors are OpenAI-style JSON ``{"error": {"message", "type",
"param", "code"}}``: 400 for an invalid request (malformed JSON and failed validation
included), 404 for an unknown model name or route, 500 for an internal error.

Request fields honoured: ``model`` (must equal the served name when given; missing means the
served model), ``max_tokens`` (chat also ``max_completion_tokens``), ``temperature`` (0 =
greedy), ``top_p``, ``n``, ``stop`` (a string or up to 16 strings), ``seed`` (the same seed
gives the same choices; none means a random one), ``logprobs`` (chat: a bool plus
``top_logprobs`` 0-20; completions: an int 0-5). Refused with a 400 naming the field:
``stream: true``, ``echo: true``, ``suffix``, ``best_of`` other than ``n``, a non-empty
``logit_bias``, non-zero ``presence_penalty`` / ``frequency_penalty``, ``tools`` /
``functions``. Other fields (``user``, ``response_format``, ...) are accepted and ignored.

Generation is :func:`prefkit.models.generate.sample` (same prompt encoding, same seeded
Gumbel-max sampling, so a greedy answer here equals ``sample(..., temperature=0)``). It stops
at the tokenizer's EOS or after ``max_tokens``; ``stop`` strings are applied to the decoded
text afterwards: the text is cut before the earliest match, and the reported tokens end with
the one that completed it (``finish_reason`` ``"stop"``; ``"length"`` when ``max_tokens``
ran out first). A completion's tokens include its EOS when one was generated (counted in
``usage.completion_tokens``, shown in log-probs by its literal text, adding nothing to the
text); ``usage.prompt_tokens`` counts each prompt once (not ``n`` times), as OpenAI does.

Log-probs: the MODEL's distribution -- ``log_softmax`` of the raw logits at temperature 1,
before any ``top_p`` cut -- at each generated token, computed by one forward pass over the
prompt and the completion (the generation's sampling temperature does not change them), as
OpenAI reports them. Chat: ``choices[i].logprobs.content`` lists ``{token, logprob, bytes,
top_logprobs: [{token, logprob, bytes}, ...]}`` with the true top ``top_logprobs`` tokens,
most likely first. Completions (OpenAI's legacy format): ``tokens``, ``token_logprobs``,
``top_logprobs`` (per token a dict of the top ``logprobs`` tokens, most likely first, plus
the sampled token when it is not among them, so up to ``logprobs + 1`` entries) and
``text_offset`` (each token's character offset in the prompt followed by the text, as OpenAI
counts it). A token's string is what it adds to the decoded text in its context (so word
pieces keep their leading space); a token that ends inside a multi-byte character adds
nothing and its string is its own decoding, the next token carrying the character.

Serving: one request at a time per app (a lock), in a worker thread, so the event loop keeps
answering (``/v1/models`` replies while a completion is generating). Within a request the
``n`` choices of every prompt are generated together, ``max_batch`` rows per ``generate``
call; requests are not batched with each other. ``app.state.stats`` counts the answered
requests per route (``chat.completions``, ``completions``) and the generated tokens.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections import Counter
from typing import Annotated, Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..models.serving import (
    APIError,
    Generation,
    ModelServer,
    plain_chat_prompt,
    token_label,
    token_pieces,
)

__all__ = [
    "APIError", "ModelServer", "create_model_app", "plain_chat_prompt", "token_label",
    "token_pieces",
]

# ---------------------------------------------------------------------------- request bodies

class _Request(BaseModel):
    """Fields shared by both generation routes (unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    seed: int | None = None
    stream: bool | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class _TextPart(BaseModel):
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[_TextPart] | None = None


class ChatRequest(_Request):
    """``POST /v1/chat/completions``."""

    messages: Annotated[list[_Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None


class CompletionRequest(_Request):
    """``POST /v1/completions``."""

    prompt: str | Annotated[list[str], Field(min_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None


# ---------------------------------------------------------------------------- the app

def _refuse_unsupported(req: _Request) -> None:
    if req.stream:
        raise APIError(400, "stream: true is not supported by this server; send stream: false "
                            "(or leave it out) for the whole answer in one response",
                       param="stream", code="unsupported_parameter")
    checks = [("presence_penalty", req.presence_penalty not in (None, 0)),
              ("frequency_penalty", req.frequency_penalty not in (None, 0)),
              ("logit_bias", bool(req.logit_bias))]
    if isinstance(req, CompletionRequest):
        checks += [("echo", bool(req.echo)), ("suffix", req.suffix is not None),
                   ("best_of", req.best_of not in (None, req.n or 1))]
    if isinstance(req, ChatRequest):
        checks += [("tools", bool(req.tools)), ("functions", bool(req.functions))]
    for name, bad in checks:
        if bad:
            raise APIError(400, f"{name} is not supported by this server", param=name,
                           code="unsupported_parameter")


def _stops(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(s == "" for s in stops):
        raise APIError(400, "stop: stop strings must not be empty", param="stop")
    return stops


def _message_text(i: int, message: _Message) -> str:
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise APIError(400, f"messages[{i}].content: only text parts are supported, got a "
                                f"{part.type!r} part", param=f"messages[{i}].content")
        texts.append(part.text)
    return "".join(texts)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        if err.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', '')})")
        else:
            parts.append(f"{loc or 'body'}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts)


def create_model_app(model: torch.nn.Module, tokenizer: Any, model_name: str, *,
                     max_batch: int = 8, default_max_tokens: int = 256,
                     completion_max_tokens: int = 16,
                     context_length: int | None = None) -> FastAPI:
    """The OpenAI-compatible app serving ``model`` as ``model_name`` (see the module docs).

    Args:
        model: a causal LM on the device it should run on (used in eval mode).
        tokenizer: its tokenizer.
        model_name: the ``model`` id clients send and ``/v1/models`` lists.
        max_batch: rows (prompt copies) per ``generate`` call within a request.
        default_max_tokens: a chat answer's token cap when the request sets none (less when
            the context window leaves less room).
        completion_max_tokens: the same for ``/v1/completions`` (16, OpenAI's default).
        context_length: the model's context window in tokens (default: the config's
            ``max_position_embeddings``; None there means unchecked).
    """
    server = ModelServer(model, tokenizer, max_batch=max_batch,
                         default_max_tokens=default_max_tokens, context_length=context_length)
    created = int(time.time())
    app = FastAPI(title=f"prefkit serve-model: {model_name}",
                  description="OpenAI-compatible completions for a local causal LM.")
    app.state.server = server
    app.state.model_name = model_name
    app.state.stats = Counter()

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(APIError(400, _validation_message(exc)).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(exc.status_code, str(exc.detail), type=kind).body(),
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        body = APIError(500, f"internal error: {exc!r}", type="server_error").body()
        return JSONResponse(body, status_code=500)

    def model_card() -> dict[str, Any]:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "prefkit"}

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves "
                                f"{model_name!r}", param="model", code="model_not_found")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> dict[str, Any]:
        check_model(name)
        return model_card()

    def run(req: _Request, prompts: list[Any], top_logprobs: int | None,
            max_tokens: int | None, default_tokens: int) -> Generation:
        temperature = 1.0 if req.temperature is None else req.temperature
        top_p = None if req.top_p in (None, 1.0) else req.top_p
        seed = secrets.randbelow(2**31) if req.seed is None else req.seed
        try:
            gen = server.generate(prompts, n=req.n or 1, max_tokens=max_tokens,
                                  default_tokens=default_tokens, temperature=temperature,
                                  top_p=top_p, seed=seed, stops=_stops(req.stop),
                                  top_logprobs=top_logprobs)
        except ValueError as exc:
            raise APIError(400, str(exc)) from None
        app.state.stats["generated_tokens"] += sum(len(c.ids) for c in gen.choices)
        return gen

    def usage(gen: Generation) -> dict[str, int]:
        prompt = sum(len(ids) for ids in gen.prompt_ids)
        completion = sum(len(c.ids) for c in gen.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest) -> dict[str, Any]:
        check_model(req.model)
        _refuse_unsupported(req)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        messages = [{"role": m.role, "content": _message_text(i, m)}
                    for i, m in enumerate(req.messages)]
        prompt: Any = (messages if getattr(tokenizer, "chat_template", None)
                       else plain_chat_prompt(messages))
        top = (req.top_logprobs or 0) if req.logprobs else None
        max_tokens = req.max_completion_tokens or req.max_tokens
        gen = await run_in_threadpool(run, req, [prompt], top, max_tokens, default_max_tokens)
        choices = []
        for index, c in enumerate(gen.choices):
            logprobs = None
            if top is not None:
                alternatives = c.alternatives or []
                logprobs = {"content": [
                    {"token": label, "logprob": lp, "bytes": list(label.encode()),
                     "top_logprobs": [{"token": s, "logprob": v, "bytes": list(s.encode())}
                                      for s, v in alternatives[i]]}
                    for i, (label, lp) in enumerate(zip(c.labels, c.logprobs or [],
                                                        strict=True))]}
            choices.append({"index": index,
                            "message": {"role": "assistant", "content": c.text},
                            "logprobs": logprobs, "finish_reason": c.finish_reason})
        app.state.stats["chat.completions"] += 1
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                "created": int(time.time()), "model": model_name, "choices": choices,
                "usage": usage(gen)}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest) -> dict[str, Any]:
        check_model(req.model)
        _refuse_unsupported(req)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        gen = await run_in_threadpool(run, req, prompts, req.logprobs, req.max_tokens,
                                      completion_max_tokens)
        choices = []
        for index, c in enumerate(gen.choices):
            logprobs = None
            if req.logprobs is not None:
                alternatives = c.alternatives or []
                offsets, at = [], len(prompts[c.prompt_index])
                for piece in c.pieces:
                    offsets.append(at)
                    at += len(piece)
                tops = []
                for i, label in enumerate(c.labels):
                    entry: dict[str, float] = {}
                    for s, v in alternatives[i]:  # a repeated string keeps its likeliest
                        entry.setdefault(s, v)
                    entry.setdefault(label, (c.logprobs or [])[i])
                    tops.append(entry)
                logprobs = {"tokens": c.labels, "token_logprobs": c.logprobs,
                            "top_logprobs": tops, "text_offset": offsets}
            choices.append({"index": index, "text": c.text, "logprobs": logprobs,
                            "finish_reason": c.finish_reason})
        app.state.stats["completions"] += 1
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": model_name, "choices": choices,
                "usage": usage(gen)}

    return app
