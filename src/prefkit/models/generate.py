"""Sample K completions per prompt from any causal LM, reproducibly.

:func:`sample` left-pads the prompts, runs Hugging Face ``generate`` in batches and returns the
completions decoded WITHOUT the prompt, cut at the first EOS.

Reproducibility: sampling does not draw from torch's global RNG. Row ``r = i * k + j``
(sample ``j`` of prompt ``i``) at decoding step ``t`` gets Gumbel noise computed by a
counter-based hash of ``(seed, r, t, token id)``, added to the (temperature-scaled, top-k
masked) logits inside a logits processor; the greedy argmax of ``logits / T + Gumbel`` is an
exact sample of ``softmax(logits / T)`` (the Gumbel-max trick). The noise of a row therefore
does not depend on which other rows share its batch: the same seed gives the same
completions for ANY ``batch_size`` -- exactly, except when padding changes the logits in the
last float bits and that flips a near-tie (not seen in the tests). ``temperature=0`` is plain
greedy decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from .encoding import encode_prompt, encode_prompt_truncated  # re-exported: the one rule

__all__ = ["encode_prompt", "encode_prompt_truncated", "gumbel_noise", "sample"]

_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (values kept in ``[0, 2^32)`` inside int64, no overflow)."""
    x = ((x ^ (x >> 16)) * _MIX) & _MASK32
    x = ((x ^ (x >> 16)) * _MIX) & _MASK32
    return x ^ (x >> 16)


def gumbel_noise(seed: int, rows: torch.Tensor, step: int, vocab: int) -> torch.Tensor:
    """``[len(rows), vocab]`` float64 standard Gumbel noise, a pure function of
    ``(seed, row id, step, token id)``."""
    h = _mix(torch.full_like(rows, seed & _MASK32))
    h = _mix(h ^ (rows & _MASK32))
    h = _mix(h ^ (step & _MASK32))
    tokens = torch.arange(vocab, dtype=torch.long, device=rows.device)
    bits = _mix(_mix(h[:, None] ^ tokens[None, :]) ^ 0x9E3779B9)
    u = (bits.double() + 0.5) / 2.0**32
    return -torch.log(-torch.log(u))


class _GumbelSampler(LogitsProcessor):
    """Temperature, top-k, then per-row hashed Gumbel noise (greedy decoding then samples)."""

    def __init__(
        self, rows: torch.Tensor, prompt_width: int, seed: int, temperature: float,
        top_k: int | None, top_p: float | None = None,
    ) -> None:
        self.rows = rows
        self.prompt_width = prompt_width
        self.seed = seed
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.prompt_width
        scores = scores.double() / self.temperature
        if self.top_k is not None and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1.0:
            # nucleus: keep the smallest set of most likely tokens whose mass reaches top_p
            probs, order = torch.softmax(scores, dim=-1).sort(dim=-1, descending=True)
            before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
            drop = torch.zeros_like(scores, dtype=torch.bool)
            drop.scatter_(-1, order, before >= self.top_p)
            scores = scores.masked_fill(drop, float("-inf"))
        noise = gumbel_noise(self.seed, self.rows.to(scores.device), step, scores.shape[-1])
        return (scores + noise).float()


def _left_pad(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def _cut(ids: list[int], eos_id: int | None) -> list[int]:
    """Completion ids up to and including the first EOS. ``generate`` pads a row only after
    its EOS, so a row without EOS is all generated tokens (even a sampled pad id)."""
    if eos_id is not None and eos_id in ids:
        return ids[: ids.index(eos_id) + 1]
    return ids


@torch.no_grad()
def sample(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    *,
    k: int = 1,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    batch_size: int = 64,
    return_ids: bool = False,
    row_offset: int = 0,
    max_prompt_length: int | None = None,
    chat_template: str = "auto",
) -> list[list[str]] | tuple[list[list[str]], list[list[list[int]]]]:
    """``k`` completions for each prompt, as text without the prompt.

    Args:
        model: any ``AutoModelForCausalLM`` (left padding + ``attention_mask``; put it on the
            device you want, it is used in eval mode and its mode restored afterwards).
        tokenizer: its tokenizer; prompts are encoded with
            :func:`prefkit.models.encoding.encode_prompt` (``chat_template``: ``"auto"``, the
            chat template for plain text too when the tokenizer has one, or ``"never"``).
        prompts: plain-text prompts, or conversations (lists of ``{role, content}`` messages,
            rendered with the chat template).
        k: completions per prompt.
        max_new_tokens: length cap of a completion (EOS included).
        temperature: softmax temperature; 0 means greedy (then every sample is the same).
        top_k: sample only among the ``top_k`` most likely tokens (None: all).
        top_p: nucleus sampling: only the most likely tokens whose probabilities (after
            temperature and top_k) sum to ``top_p`` (None or 1: all).
        seed: the completions are a pure function of the seed (see the module docs), for any
            ``batch_size``.
        batch_size: rows (prompt copies) per ``generate`` call.
        row_offset: the global index of ``prompts[0] * k``: a process that samples its shard
            of a larger prompt list passes its shard's offset and gets exactly the samples a
            single process would draw for those prompts.
        return_ids: also return the completion token ids (up to and including EOS when one was
            generated) -- ready to score as ``PromptGroup`` responses.

    Returns:
        ``texts[i][j]``: completion ``j`` of prompt ``i`` (special tokens skipped), and with
        ``return_ids`` the matching ``ids[i][j]``.
    """
    if k < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("k, batch_size and max_new_tokens must be >= 1")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    encoded = [encode_prompt(tokenizer, p, max_prompt_length, chat_template=chat_template)
               for p in prompts]
    rows = [encoded[r // k] for r in range(len(encoded) * k)]
    device = next(model.parameters()).device
    config = GenerationConfig(
        do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id,
        num_beams=1,
    )
    was_training = model.training
    model.eval()
    out_ids: list[list[int]] = []
    try:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            input_ids, mask = _left_pad(chunk, pad_id)
            processors = LogitsProcessorList()
            if temperature > 0:
                row_ids = torch.arange(start, start + len(chunk), dtype=torch.long) + row_offset
                processors.append(
                    _GumbelSampler(row_ids, input_ids.shape[1], seed, temperature, top_k, top_p)
                )
            generated = model.generate(
                input_ids=input_ids.to(device), attention_mask=mask.to(device),
                generation_config=config, logits_processor=processors,
            )
            new = generated[:, input_ids.shape[1]:].tolist()
            out_ids.extend(_cut(ids, eos_id) for ids in new)
    finally:
        model.train(was_training)
    texts = tokenizer.batch_decode(out_ids, skip_special_tokens=True) if out_ids else []
    text_groups = [[t.strip() for t in texts[i * k:(i + 1) * k]] for i in range(len(prompts))]
    if not return_ids:
        return text_groups
    id_groups = [out_ids[i * k:(i + 1) * k] for i in range(len(prompts))]
    return text_groups, id_groups
