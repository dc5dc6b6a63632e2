"""Rollouts for online training: sample N completions per prompt, keep their token ids.

* :class:`SamplingSettings` -- max new tokens, temperature, top-k, top-p, stop strings.
* :class:`GenerationBackend` -- the interface a sampler implements. :class:`TransformersBackend`
  (a transformers model sampled through :func:`prefkit.models.generate.sample`: prefkit's
  batched static-KV-cache decode loop by default, Hugging Face ``generate`` with
  ``SamplingSettings(backend="transformers")``, the same tokens either way; the samples are a
  pure function of the seed and the global row index, so several processes that each sample
  their shard of the prompts draw exactly what one process would).
  vLLM plugs in the same way, as ``SamplingSettings(backend=VLLMBackend(...))``
  (:mod:`prefkit.models.vllm_backend`: in-process engine, weights synced before each rollout);
  everything downstream (log-probs, rewards, the update) is the same.
* :class:`Rollout` -- one batch of prompts with their ``G`` completions (text and ids), which
  prompts were cut to ``max_prompt_length`` and which completions hit the length limit, were
  cut by a stop string or came out empty.

Prompts are text or conversations (lists of ``{role, content}`` messages), encoded by the one
rule training data also follows (:mod:`prefkit.models.encoding`): conversations, and plain text
when the tokenizer has a chat template (``SamplingSettings.chat_template="auto"``, the default),
go through the chat template with the generation prompt -- so an online run on a chat model
samples from its template, and its prompt ids are those offline training gives the same
conversation. A prompt longer than ``SamplingSettings.max_prompt_length`` tokens keeps its
last tokens (BOS first), and only a window of its characters proportional to that budget is
ever tokenized (:func:`prefkit.models.encoding.encode_prompt_truncated`). Another backend
(vLLM) must encode prompts the same way (:func:`prefkit.models.encoding.encode_prompt`) and
generate from those token ids.

Completions are scored by the policy in training with the prompt computed ONCE for its
``G`` completions (:meth:`Rollout.groups` gives prefix-shared :class:`PromptGroup` rows).
Log-probs are those of the model's own distribution (temperature 1): sample at temperature 1
for an unbiased policy gradient (a lower temperature makes the samples off-policy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..models.encoding import check_chat_template, encode_prompt_truncated
from ..models.generate import sample
from ..models.packing import PromptGroup

__all__ = ["GenerationBackend", "Rollout", "SamplingSettings", "TransformersBackend",
           "collect_rollout", "token_grid"]


@dataclass
class SamplingSettings:
    """How completions are sampled (``max_prompt_length``: prompt tokens kept, the last ones;
    None: no limit; ``chat_template``: ``"auto"`` -- plain-text prompts use the tokenizer's chat
    template when it has one -- or ``"never"``; :mod:`prefkit.models.encoding`;
    ``min_new_tokens``: EOS masked before that many tokens; ``backend``: the token generator,
    ``"prefkit"`` (static KV cache decode loop), ``"transformers"`` (``generate``) or a
    :class:`prefkit.models.decode.GenerationBackend`)."""

    max_new_tokens: int = 32
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    batch_size: int = 64
    max_prompt_length: int | None = None
    chat_template: str = "auto"
    min_new_tokens: int = 0
    backend: Any = "prefkit"

    def __post_init__(self) -> None:
        check_chat_template(self.chat_template)


class GenerationBackend(Protocol):
    """``generate(model, tokenizer, prompts, n=, seed=, row_offset=)`` -> ``(texts, ids)``:
    ``n`` completions per prompt as text and as token ids (EOS kept when generated)."""

    def generate(self, model: Any, tokenizer: Any, prompts: Sequence[str], *, n: int, seed: int,
                 row_offset: int = 0, greedy: bool = False
                 ) -> tuple[list[list[str]], list[list[list[int]]]]: ...


@dataclass
class TransformersBackend:
    """A transformers model with prefkit's seeded sampler (``settings.backend``: the static-cache
    decode loop or ``generate``)."""

    settings: SamplingSettings = field(default_factory=SamplingSettings)

    def generate(self, model, tokenizer, prompts, *, n, seed, row_offset=0, greedy=False):
        s = self.settings
        texts, ids = sample(model, tokenizer, list(prompts), k=n,
                            max_new_tokens=s.max_new_tokens,
                            temperature=0.0 if greedy else s.temperature, top_k=s.top_k,
                            top_p=s.top_p, seed=seed, batch_size=s.batch_size, return_ids=True,
                            row_offset=row_offset, max_prompt_length=s.max_prompt_length,
                            chat_template=s.chat_template, min_new_tokens=s.min_new_tokens,
                            backend=s.backend)
        return texts, ids


def _cut_at_stop(ids: list[int], tokenizer, stop: Sequence[str]) -> tuple[list[int], str, bool]:
    """The shortest token prefix whose text contains a stop string (the text is cut before
    it); ``(ids, text, stopped)``."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    hits = [text.find(s) for s in stop if s and s in text]
    if not hits:
        return ids, text.strip(), False
    for j in range(1, len(ids) + 1):
        part = tokenizer.decode(ids[:j], skip_special_tokens=True)
        if any(s and s in part for s in stop):
            return ids[:j], text[:min(hits)].strip(), True
    return ids, text.strip(), False


@dataclass
class Rollout:
    """``P`` prompts with ``G`` completions each (module docstring).

    ``truncated[i, j]``: completion hit ``max_new_tokens`` without EOS or a stop string.
    ``empty[i, j]``: it had no token at all (it is scored and trained as the single token EOS).
    ``prompt_truncated[i]``: prompt ``i`` was cut to ``max_prompt_length`` tokens
    (``prompt_ids`` holds what the policy saw; ``prompts`` the prompt as given).
    """

    prompts: list[Any]
    prompt_ids: list[list[int]]
    completions: list[list[str]]
    completion_ids: list[list[list[int]]]
    truncated: torch.Tensor
    empty: torch.Tensor
    stopped: torch.Tensor
    prompt_truncated: torch.Tensor | None = None

    def lengths(self) -> torch.Tensor:
        """``[P, G]`` completion lengths in tokens."""
        return torch.tensor([[len(c) for c in cs] for cs in self.completion_ids],
                            dtype=torch.float32)

    def groups(self) -> list[PromptGroup]:
        """One prefix-shared group per prompt (its ``G`` completions)."""
        return [PromptGroup(p, cs) for p, cs in zip(self.prompt_ids, self.completion_ids,
                                                     strict=True)]


def collect_rollout(backend: GenerationBackend, model: Any, tokenizer: Any,
                    prompts: Sequence[str], *, n: int, seed: int, row_offset: int = 0,
                    settings: SamplingSettings | None = None, greedy: bool = False) -> Rollout:
    """Sample ``n`` completions per prompt and record what happened to each."""
    settings = settings or getattr(backend, "settings", SamplingSettings())
    texts, ids = backend.generate(model, tokenizer, prompts, n=n, seed=seed,
                                  row_offset=row_offset, greedy=greedy)
    eos = tokenizer.eos_token_id
    out_ids, out_texts, trunc, empty, stopped = [], [], [], [], []
    for tg, ig in zip(texts, ids, strict=True):
        row_ids, row_texts, row_trunc, row_empty, row_stop = [], [], [], [], []
        for text, c in zip(tg, ig, strict=True):
            c = list(c)
            was_stopped = False
            if settings.stop:
                c, text, was_stopped = _cut_at_stop(c, tokenizer, settings.stop)
            ended = bool(c) and eos is not None and c[-1] == eos
            row_trunc.append(not ended and not was_stopped
                             and len(c) >= settings.max_new_tokens)
            row_empty.append(not c or (ended and len(c) == 1))
            if not c:
                if eos is None:
                    raise ValueError("an empty completion needs an EOS token to be trained on")
                c = [eos]
            row_ids.append(c)
            row_texts.append(text)
            row_stop.append(was_stopped)
        out_ids.append(row_ids)
        out_texts.append(row_texts)
        trunc.append(row_trunc)
        empty.append(row_empty)
        stopped.append(row_stop)
    encoded = [encode_prompt_truncated(tokenizer, p, settings.max_prompt_length,
                                       chat_template=settings.chat_template) for p in prompts]
    return Rollout(prompts=list(prompts), prompt_ids=[ids for ids, _ in encoded],
                   completions=out_texts, completion_ids=out_ids,
                   truncated=torch.tensor(trunc, dtype=torch.bool),
                   empty=torch.tensor(empty, dtype=torch.bool),
                   stopped=torch.tensor(stopped, dtype=torch.bool),
                   prompt_truncated=torch.tensor([cut for _, cut in encoded], dtype=torch.bool))


def token_grid(segment: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Where each completion token of a packed batch goes in a ``[rows, T]`` grid:
    ``(row, col, T)`` with ``row = segment`` and ``col`` the token's index within its
    completion (tokens of a completion keep their order in the flat layout)."""
    n = segment.numel()
    if n == 0:
        return segment, segment, 0
    order = torch.sort(segment, stable=True).indices
    counts = torch.bincount(segment, minlength=n_rows)
    starts = torch.cumsum(counts, 0) - counts
    col = torch.empty_like(segment)
    col[order] = torch.arange(n, device=segment.device) - starts[segment[order]]
    return segment, col, int(counts.max())
