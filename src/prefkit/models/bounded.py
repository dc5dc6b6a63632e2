"""Bounded tokenization of user text: memory set by the token budget, not by the input's size.

A fast tokenizer keeps per-token state (ids, offsets, token strings) for the whole string it is
given, so tokenizing a 10 MB prompt in order to keep its last 512 tokens costs gigabytes. Every
token covers at least one character, and in practice a few (about 4 for English BPE), so the
functions here hand the tokenizer only a *window* of the text:

* :func:`text_window` -- the last (``keep="tail"``, prompts: they are cut from the left) or
  first (``keep="head"``, responses: cut from the right) characters of a string, starting at
  ``CHARS_PER_TOKEN * (budget + MARGIN_TOKENS)`` characters and doubling until the window
  tokenizes to more than ``budget + MARGIN_TOKENS`` tokens, or is the whole text. The window's
  edge may split a word; the ``MARGIN_TOKENS`` tokens next to it are removed by the token-level
  truncation that follows, so the ``budget`` tokens kept equal those of the whole text's
  tokenization (tested for word-level and byte-level BPE tokenizers, whose pre-tokenizers split
  at whitespace and punctuation; a single pre-token longer than the margin could in principle
  merge differently at the window's edge).
* :func:`bound_text` -- the same for a prompt or response that is text or a list of
  ``{role, content}`` messages (contents bounded from the kept side; messages beyond the budget
  keep their role with empty content, so a chat template still sees alternating roles).
* :func:`model_max_length` -- the ``max_position_embeddings`` of a model's config, capped: the
  default token budget of the commands that score or sample user text.

The caller tokenizes the bounded value and then truncates by tokens (prompts keep their last
tokens, responses their first); the returned flag says whether characters were cut.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

__all__ = ["CHARS_PER_TOKEN", "MARGIN_TOKENS", "bound_text", "model_max_length", "preview",
           "text_window"]

CHARS_PER_TOKEN = 4
"""Initial characters per token of a window (doubled while the window holds too few tokens)."""
MARGIN_TOKENS = 16
"""Extra tokens a cut window must hold beyond the budget: they absorb the split word at its
edge and tokenizer merges across it."""

KEEP = ("tail", "head")


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _window(tokenizer: Any, text: str, max_tokens: int, keep: str) -> tuple[str, bool, int]:
    """(window, cut, tokens in the window)."""
    if keep not in KEEP:
        raise ValueError(f"keep must be 'tail' or 'head', got {keep!r}")
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    need = max_tokens + MARGIN_TOKENS
    chars = CHARS_PER_TOKEN * (need + 1)
    while True:
        if len(text) <= chars:
            return text, False, _count(tokenizer, text)
        window = text[-chars:] if keep == "tail" else text[:chars]
        n = _count(tokenizer, window)
        if n > need:
            return window, True, n
        chars *= 2


def text_window(tokenizer: Any, text: str, max_tokens: int, *, keep: str) -> tuple[str, bool]:
    """The part of ``text`` to tokenize for a budget of ``max_tokens`` tokens: its tail
    (``keep="tail"``) or head (``keep="head"``), or all of it when short; returns
    ``(window, cut)``. See the module docstring."""
    window, cut, _ = _window(tokenizer, text, max_tokens, keep)
    return window, cut


def bound_text(tokenizer: Any, value: Any, max_tokens: int | None, *, keep: str
               ) -> tuple[Any, bool]:
    """A prompt or response (text, or ``{role, content}`` messages) reduced to what a budget of
    ``max_tokens`` tokens can see from the ``keep`` side; ``(value, cut)``. ``None``: no
    budget, the value as is. Messages: contents are windowed from the kept end until the budget
    is spent; the messages beyond it keep their role with empty content (and only the nearest
    ``max_tokens`` of those are kept, dropped in pairs so roles still alternate)."""
    if max_tokens is None:
        return value, False
    if isinstance(value, str):
        return text_window(tokenizer, value, max_tokens, keep=keep)
    messages = [dict(m) if isinstance(m, Mapping) else m for m in value]
    order = range(len(messages) - 1, -1, -1) if keep == "tail" else range(len(messages))
    remaining, cut, spent_at = max_tokens, False, None
    for i in order:
        content = messages[i].get("content") if isinstance(messages[i], dict) else None
        if not isinstance(content, str):
            continue  # not a message: left for the reader's validation to report
        if remaining < 0:
            cut = cut or bool(content)
            messages[i]["content"] = ""
            spent_at = i if spent_at is None else spent_at
            continue
        window, was_cut, n = _window(tokenizer, content, remaining, keep)
        messages[i]["content"] = window
        cut = cut or was_cut
        remaining -= n
        if was_cut:
            remaining = -1
    return _drop_emptied(messages, spent_at, max_tokens, keep), cut


def _drop_emptied(messages: list, spent_at: int | None, max_tokens: int, keep: str) -> list:
    """Drop emptied messages beyond the nearest ``max_tokens`` of them (an even number, so
    user/assistant roles keep alternating; a leading system message stays)."""
    if spent_at is None:
        return messages
    if keep == "tail":
        first = 1 if messages and isinstance(messages[0], dict) \
            and messages[0].get("role") == "system" else 0
        n_empty = spent_at + 1 - first
        drop = max(0, n_empty - max_tokens)
        drop -= drop % 2
        return messages[:first] + messages[first + drop:]
    n_empty = len(messages) - spent_at
    drop = max(0, n_empty - max_tokens)
    drop -= drop % 2
    return messages[:len(messages) - drop]


def preview(value: Any, limit: int = 200) -> str:
    """``repr(value)`` cut to about ``limit`` characters, with the full length: user text in an
    error message (a prompt can be megabytes long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def model_max_length(model: nn.Module | None, *, cap: int) -> int:
    """``min(max_position_embeddings, cap)`` of the first sub-module with a config that has one
    (``n_positions`` for GPT-2-style configs); ``cap`` when there is none."""
    if model is None:
        return cap
    modules: Sequence[Any] = list(model.modules()) if isinstance(model, nn.Module) else [model]
    for module in modules:
        config = getattr(module, "config", None)
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return min(value, cap)
    return cap
