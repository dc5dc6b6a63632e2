"""A causal LM behind a request/response interface: encode prompts, generate under a lock, cut
at stop strings, report each generated token's log-probability and its top alternatives, each
token named as it appears in the text.

What ``prefkit serve-model`` (:mod:`prefkit.serve.model_api`, the OpenAI-compatible HTTP API)
and the local transformers judge (:class:`prefkit.judges.local.TransformersJudge`) share;
nothing here needs a web framework. Log-probs are the model's own distribution: ``log_softmax``
of the raw logits at temperature 1, before any ``top_p`` cut, from one forward pass over
prompt plus completion. A bad request raises :class:`APIError` (an HTTP status and an
OpenAI-style error body).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .generate import encode_prompt, sample

__all__ = [
    "APIError", "Choice", "Generation", "ModelServer", "plain_chat_prompt", "token_label",
    "token_pieces",
]

#: How many of the last decoded tokens give a token its context when it is decoded.
PIECE_WINDOW = 6


class APIError(Exception):
    """An error answered as OpenAI-style JSON with HTTP ``status``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type, param, code)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


# ---------------------------------------------------------------------------- text helpers

def plain_chat_prompt(messages: Sequence[dict[str, str]]) -> str:
    """The prompt of a conversation for a tokenizer without a chat template: one
    ``"{role}: {content}"`` line per message, then ``"assistant:"``."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def token_pieces(tokenizer: Any, ids: Sequence[int]
                 ) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """``(pieces, labels, windows)`` of completion token ``ids``: ``pieces[i]`` is what token
    ``i`` adds to the decoded text (special tokens skipped), so ``"".join(pieces)`` is the
    text; ``labels[i]`` is its name in log-probs (see :func:`token_label`); ``windows[i]``
    the ``(start, done)`` decode window it was named in (for :func:`token_label`)."""
    special = set(tokenizer.all_special_ids)
    pieces: list[str] = []
    labels: list[str] = []
    windows: list[tuple[int, int]] = []
    start = done = 0  # decode window start; ids[:done] are in the emitted text
    for i, tid in enumerate(ids):
        windows.append((start, done))
        label, piece, emitted = _name(tokenizer, ids, start, done, i, int(tid), special)
        labels.append(label)
        pieces.append(piece)
        if emitted:
            done = i + 1
            start = max(start, done - PIECE_WINDOW)
    return pieces, labels, windows


def token_label(tokenizer: Any, ids: Sequence[int], window: tuple[int, int], i: int,
                tid: int) -> str:
    """The string of token ``tid`` at position ``i`` of ``ids`` (a candidate in place of
    ``ids[i]``), in the decode ``window`` :func:`token_pieces` gave position ``i``: what it
    adds to the text there; a special token's literal text; for a token that ends inside a
    multi-byte character, its own decoding."""
    return _name(tokenizer, ids, *window, i, tid, set(tokenizer.all_special_ids))[0]


def _name(tokenizer: Any, ids: Sequence[int], start: int, done: int, i: int, tid: int,
          special: set[int]) -> tuple[str, str, bool]:
    """``(label, piece, emitted)`` of token ``tid`` at position ``i`` (module docs);
    ``emitted``: its text is out (False for a special or a held-back token)."""
    if tid in special:
        return tokenizer.convert_ids_to_tokens(tid), "", False
    prev = tokenizer.decode(list(ids[start:done]), skip_special_tokens=True)
    cur = tokenizer.decode([*ids[start:i], tid], skip_special_tokens=True)
    if cur.endswith("\ufffd") and i + 1 < len(ids):  # an incomplete character: wait
        return tokenizer.decode([tid]), "", False
    common = len(prev) if cur.startswith(prev) else _common_prefix(prev, cur)
    return cur[common:], cur[common:], True


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _first_stop(text: str, stops: Sequence[str]) -> tuple[int, int] | None:
    """``(start, end)`` of the earliest stop string in ``text`` (the longest at a tie)."""
    best: tuple[int, int] | None = None
    for s in stops:
        at = text.find(s)
        if at >= 0 and (best is None or (at, -(at + len(s))) < (best[0], -best[1])):
            best = (at, at + len(s))
    return best


# ---------------------------------------------------------------------------- generation

@dataclass
class Choice:
    """One generated completion: token ``ids`` (EOS included when generated), ``text``,
    ``finish_reason``; with log-probs, ``logprobs[i]`` of token ``i``, ``top[i]`` the top
    ``(token id, logprob)`` pairs, most likely first, and ``alternatives[i]`` the same with
    token strings; ``labels`` name the tokens, ``pieces`` are their text."""

    prompt_index: int
    ids: list[int]
    text: str
    pieces: list[str]
    labels: list[str]
    windows: list[tuple[int, int]]
    finish_reason: str
    logprobs: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None
    alternatives: list[list[tuple[str, float]]] | None = None


@dataclass
class Generation:
    """The choices of one request (prompt-major: the ``n`` choices of prompt 0 first) and the
    prompts' token ids."""

    choices: list[Choice]
    prompt_ids: list[list[int]]


class ModelServer:
    """The model side of the API: encodes prompts, generates under a lock, cuts at stop
    strings and computes log-probs (see the module docs). Thread-safe."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, *, max_batch: int = 8,
                 default_max_tokens: int = 256, context_length: int | None = None,
                 max_rows: int = 1024) -> None:
        if min(max_batch, default_max_tokens, max_rows) < 1:
            raise ValueError("max_batch, default_max_tokens and max_rows must be >= 1")
        self.max_rows = max_rows
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.default_max_tokens = default_max_tokens
        config = getattr(model, "config", None)
        self.context_length = context_length or getattr(config, "max_position_embeddings", None)
        self.lock = threading.Lock()

    def encode(self, prompt: Any) -> list[int]:
        """A prompt's token ids, exactly as :func:`sample` encodes it: messages through the chat
        template; a string is raw text (a completions request), never templated."""
        try:
            return encode_prompt(self.tokenizer, prompt, chat_template="never")
        except ValueError as exc:
            raise APIError(400, str(exc)) from None

    def budget(self, prompt_ids: Sequence[list[int]], max_tokens: int | None,
               default: int | None = None) -> int:
        """``max_tokens`` checked against the context window; when None, ``default``
        (``default_max_tokens`` when None) or less, as much as the window leaves room for."""
        longest = max(len(ids) for ids in prompt_ids)
        room = None if self.context_length is None else self.context_length - longest
        if room is not None and room < 1:
            raise APIError(400, f"the prompt has {longest} tokens; this model's context "
                                f"window is {self.context_length} tokens",
                           code="context_length_exceeded")
        if max_tokens is None:
            default = self.default_max_tokens if default is None else default
            return default if room is None else min(room, default)
        if room is not None and max_tokens > room:
            raise APIError(400, f"max_tokens {max_tokens} + the prompt's {longest} tokens "
                                f"exceed this model's context window of "
                                f"{self.context_length} tokens", param="max_tokens",
                           code="context_length_exceeded")
        return max_tokens

    def generate(self, prompts: Sequence[Any], *, n: int, max_tokens: int | None,
                 default_tokens: int | None, temperature: float, top_p: float | None,
                 seed: int, stops: Sequence[str], top_logprobs: int | None) -> Generation:
        """``n`` choices per prompt; ``max_tokens`` None: ``default_tokens`` or what the
        context leaves (:meth:`budget`); ``top_logprobs`` None: no log-probs, else the number
        of alternatives per token (0: the sampled token's log-prob only). Everything that
        touches the model or the tokenizer runs under the lock (a fast tokenizer must not be
        used by two threads at once)."""
        if len(prompts) * n > self.max_rows:
            raise APIError(400, f"{len(prompts)} prompts x n={n} asks for "
                                f"{len(prompts) * n} completions; at most {self.max_rows} "
                                "per request", param="n")
        with self.lock:
            prompt_ids = [self.encode(p) for p in prompts]
            max_tokens = self.budget(prompt_ids, max_tokens, default_tokens)
            _, ids = sample(
                self.model, self.tokenizer, list(prompts), k=n, max_new_tokens=max_tokens,
                temperature=temperature, top_p=top_p, seed=seed, batch_size=self.max_batch,
                return_ids=True, chat_template="never",
            )
            choices = [self._choice(i, row, stops) for i, group in enumerate(ids)
                       for row in group]
            if top_logprobs is not None:
                for choice in choices:
                    self._logprobs(choice, prompt_ids[choice.prompt_index], top_logprobs)
                    choice.alternatives = self._alternatives(choice)
        return Generation(choices, prompt_ids)

    def _choice(self, prompt_index: int, ids: list[int], stops: Sequence[str]) -> Choice:
        pieces, labels, windows = token_pieces(self.tokenizer, ids)
        text = "".join(pieces)
        eos = self.tokenizer.eos_token_id
        finish = "stop" if ids and ids[-1] == eos else "length"
        hit = _first_stop(text, stops) if stops else None
        if hit is not None:
            keep, length = 0, 0
            while length < hit[1]:  # up to the token that completed the stop string
                length += len(pieces[keep])
                keep += 1
            ids, pieces, labels, windows = (ids[:keep], pieces[:keep], labels[:keep],
                                            windows[:keep])
            text, finish = text[:hit[0]], "stop"
        return Choice(prompt_index, ids, text, pieces, labels, windows, finish)

    @torch.no_grad()
    def _logprobs(self, choice: Choice, prompt_ids: list[int], top: int) -> None:
        if not choice.ids:
            choice.logprobs, choice.top = [], []
            return
        device = next(self.model.parameters()).device
        inputs = torch.tensor([prompt_ids + choice.ids[:-1]], device=device)
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model(input_ids=inputs, logits_to_keep=len(choice.ids))
        finally:
            self.model.train(was_training)
        logp = torch.log_softmax(out.logits[0, -len(choice.ids):].float(), dim=-1)
        chosen = logp.gather(-1, torch.tensor(choice.ids, device=device)[:, None])[:, 0]
        choice.logprobs = chosen.tolist()
        if top > 0:
            values, indices = logp.topk(min(top, logp.shape[-1]), dim=-1)
            choice.top = [list(zip(i, v, strict=True))
                          for i, v in zip(indices.tolist(), values.tolist(), strict=True)]
        else:
            choice.top = [[] for _ in choice.ids]

    def _alternatives(self, choice: Choice) -> list[list[tuple[str, float]]]:
        """Per token, its top alternatives as ``(string, logprob)``, each named as the
        token itself is (:func:`token_label`), so the sampled token's string matches."""
        return [[(token_label(self.tokenizer, choice.ids, choice.windows[i], i, tid), lp)
                 for tid, lp in alternatives]
                for i, alternatives in enumerate(choice.top or [])]
