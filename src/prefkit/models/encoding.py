"""One prompt-encoding rule for offline training, online rollouts, reward scoring and judges.

**When the chat template is used.** A conversational prompt (a list of ``{role, content}``
messages) always goes through ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``
(a tokenizer without a template cannot encode one: ``ValueError``). A plain-string prompt goes
through it too, as ONE user message, when the tokenizer has a chat template and the mode is
``"auto"`` (the default); with ``chat_template="never"``, or a tokenizer without a template (the
lab's, the benchmarks'), plain text is encoded as text. So a chat model sees its template in
every path -- training data, rollouts, reward scores, judges -- and a base model never does.

**Token ids.** Template output carries its own special tokens, so it is tokenized with
``add_special_tokens=False``; plain text with the tokenizer's special tokens. Prompt ids start
with BOS when the tokenizer has one (prepended once when the template or tokenizer did not write
it): :func:`encode_prompt`, what generation feeds the model.

**Prompt + completion** (:func:`tokenize_example`, training data and reward scoring): the
prompt is rendered as above, each response appended (for a template: as the assistant message,
the template's rendering after the generation prompt), ``prompt + response`` tokenized as one
string the same way, and the completion is whatever follows the longest prefix the prompt's own
ids share with every ``prompt + response`` (BPE merges across the boundary cannot put prompt
text into a completion); EOS is appended to every completion. With a template, the prompt ids
are exactly :func:`encode_prompt`'s -- offline and online encode a conversation to the same
ids -- whenever the template's generation prompt ends on a token boundary (role markers do).
Plain text keeps the rule it always had (the tokenizer's special tokens, no BOS prepended), so
the lab and the benchmarks are unchanged; for plain text with a tokenizer that has a BOS token
but does not add it, generation prepends BOS and training data does not (as before).

Memory is bounded by the token budget, not the size of the text (``max_*_tokens``: only a window
of characters proportional to the budget is tokenized, :func:`prefkit.models.bounded.bound_text`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .bounded import bound_text, preview

__all__ = ["CHAT_TEMPLATE_HELP", "CHAT_TEMPLATE_MODES", "ChatTemplateMode", "PreferenceExample",
           "check_chat_template", "encode_prompt", "encode_prompt_truncated", "has_chat_template",
           "render_prompt", "tokenize_example", "uses_chat_template"]

ChatTemplateMode = Literal["auto", "never"]
CHAT_TEMPLATE_MODES: tuple[str, ...] = ("auto", "never")
"""``"auto"``: plain-string prompts use the tokenizer's chat template when it has one;
``"never"``: plain strings are encoded as text (conversations always use the template)."""
CHAT_TEMPLATE_HELP = ("Prompt encoding: 'auto' (conversations, and plain-text prompts when the "
                      "tokenizer has a chat template, as one user message, go through the chat "
                      "template) or 'never' (plain-text prompts stay text; conversations still "
                      "need a template).")
"""The help text of the ``chat_template`` field of the training configs."""


@dataclass(slots=True)
class PreferenceExample:
    """A tokenized prompt group. ``scores[k]`` ranks response ``k`` (higher is better; equal =
    tie); ``label`` is set for unpaired (binary) records."""

    index: int
    record_id: str | None
    prompt_ids: list[int]
    response_ids: list[list[int]]
    scores: list[float]
    label: bool | None = None

    @property
    def k(self) -> int:
        return len(self.response_ids)

    @property
    def n_tokens(self) -> int:
        """Tokens in the prefix-shared layout: the prompt once plus every response."""
        return len(self.prompt_ids) + sum(len(r) for r in self.response_ids)


def check_chat_template(mode: str) -> str:
    """``mode`` if it is one of :data:`CHAT_TEMPLATE_MODES`, else ``ValueError`` naming them."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise ValueError(f"chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}, "
                         f"got {mode!r}")
    return mode


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer has a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def uses_chat_template(tokenizer: Any, prompt: Any, chat_template: str = "auto",
                       responses: Sequence[Any] = ()) -> bool:
    """Whether ``prompt`` (with ``responses``) is encoded through the chat template (module
    docstring): always for conversations, for plain text when ``"auto"`` and the tokenizer has
    one. A conversation with a tokenizer that has no template: ``ValueError``."""
    check_chat_template(chat_template)
    conversational = not isinstance(prompt, str) or any(not isinstance(r, str)
                                                         for r in responses)
    if conversational:
        if not has_chat_template(tokenizer):
            raise ValueError("a conversational prompt (a list of messages) needs a tokenizer "
                             "with a chat template; this tokenizer has none")
        return True
    return chat_template == "auto" and has_chat_template(tokenizer)


def _messages(value: Any, role: str) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    messages = [dict(m) if isinstance(m, Mapping) else m for m in value]
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"message {i} needs 'role' and 'content', got {preview(message)}")
    return messages


def render_prompt(tokenizer: Any, prompt: Any, chat_template: str = "auto") -> tuple[str, bool]:
    """``(text, templated)``: the prompt's text, through the chat template with the generation
    prompt when :func:`uses_chat_template` says so, else the plain string itself."""
    if not uses_chat_template(tokenizer, prompt, chat_template):
        return prompt, False
    text = tokenizer.apply_chat_template(_messages(prompt, "user"), add_generation_prompt=True,
                                         tokenize=False)
    return text, True


def _ids(tokenizer: Any, text: str, templated: bool, ensure_bos: bool) -> list[int]:
    """Token ids of rendered text (module docstring): template output without added special
    tokens, plain text with them; BOS prepended once when ``ensure_bos`` and it is missing."""
    ids = list(tokenizer(text, add_special_tokens=not templated)["input_ids"])
    bos = tokenizer.bos_token_id
    if ensure_bos and bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def encode_prompt_truncated(tokenizer: Any, prompt: Any, max_length: int | None = None, *,
                            chat_template: str = "auto") -> tuple[list[int], bool]:
    """:func:`encode_prompt` with a token budget; returns ``(ids, cut)``.

    A prompt longer than ``max_length`` tokens keeps its last ones (left truncation, as the
    training commands do) with BOS, when the tokenizer has one, kept first. The tokenizer only
    sees a window of the prompt's characters proportional to the budget
    (:func:`prefkit.models.bounded.bound_text`), so a 10 MB prompt costs what its last
    ``max_length`` tokens cost."""
    if max_length is not None and max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    templated = uses_chat_template(tokenizer, prompt, chat_template)
    prompt, cut = bound_text(tokenizer, prompt, max_length, keep="tail")
    text, _ = render_prompt(tokenizer, prompt, "auto" if templated else "never")
    ids = _ids(tokenizer, text, templated, ensure_bos=True)
    bos = tokenizer.bos_token_id
    if max_length is not None and len(ids) > max_length:
        head = [bos] if bos is not None and max_length > 1 else []
        ids = head + ids[len(ids) - (max_length - len(head)):]
        cut = True
    if not ids:
        raise ValueError(f"prompt {preview(prompt)} encodes to no tokens and the tokenizer has "
                         "no BOS")
    return ids, cut


def encode_prompt(tokenizer: Any, prompt: Any, max_length: int | None = None, *,
                  chat_template: str = "auto") -> list[int]:
    """Token ids of a prompt as the policy sees it when generating (module docstring: chat
    template for conversations, and for plain text when the tokenizer has one and
    ``chat_template="auto"``; BOS first when the tokenizer has one). ``max_length``: keep BOS
    and the LAST ``max_length - 1`` tokens (:func:`encode_prompt_truncated`)."""
    return encode_prompt_truncated(tokenizer, prompt, max_length, chat_template=chat_template)[0]


def _render(tokenizer: Any, prompt: Any, response: Any, templated: bool) -> tuple[str, str]:
    """``(prompt text, response text)``; for a template the response is the assistant turn."""
    if not templated:
        return prompt, response
    messages = _messages(prompt, "user")
    reply = _messages(response, "assistant")
    prompt_text = tokenizer.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages + reply, tokenize=False)
    if not full.startswith(prompt_text):
        # the template renders the prompt differently once a reply follows: take the reply's
        # rendering on its own
        full = prompt_text + tokenizer.apply_chat_template(reply, tokenize=False)
    return prompt_text, full[len(prompt_text):]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def tokenize_example(tokenizer: Any, prompt: Any, responses: list, *, index: int = 0,
                     record_id: str | None = None, scores: list[float] | None = None,
                     label: bool | None = None, max_prompt_tokens: int | None = None,
                     max_response_tokens: int | None = None, chat_template: str = "auto"
                     ) -> PreferenceExample:
    """Tokenize one prompt group (module docstring). Completions may come out empty (e.g. an
    empty response): callers skip those. ``max_prompt_tokens`` / ``max_response_tokens``: only
    what a truncation to that many tokens keeps is tokenized (prompt: its end; responses: their
    start), plus a margin; the ids then hold at least the tokens the truncation keeps, equal to
    those of the whole text."""
    templated = uses_chat_template(tokenizer, prompt, chat_template, responses)
    prompt = bound_text(tokenizer, prompt, max_prompt_tokens, keep="tail")[0]
    responses = [bound_text(tokenizer, r, max_response_tokens, keep="head")[0]
                 for r in responses]
    rendered = [_render(tokenizer, prompt, r, templated) for r in responses]
    prompt_text = rendered[0][0] if rendered else _render(tokenizer, prompt, "", templated)[0]
    # templates: the generation rule (BOS once); plain text: as it always was
    prompt_ids = _ids(tokenizer, prompt_text, templated, ensure_bos=templated)
    full_ids = [_ids(tokenizer, prompt_text + text, templated, ensure_bos=templated)
                for _, text in rendered]
    shared = min((_common_prefix(prompt_ids, f) for f in full_ids), default=len(prompt_ids))
    eos = tokenizer.eos_token_id
    response_ids = []
    for f in full_ids:
        completion = list(f[shared:])
        if completion and eos is not None and completion[-1] != eos:
            completion.append(eos)
        response_ids.append(completion)
    return PreferenceExample(index=index, record_id=record_id, prompt_ids=list(prompt_ids[:shared]),
                             response_ids=response_ids,
                             scores=list(scores) if scores is not None else [0.0] * len(responses),
                             label=label)
