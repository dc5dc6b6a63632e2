"""Sample K completions per prompt from any causal LM, reproducibly.

:func:`sample` encodes the prompts, hands the rows (prompt ``i`` repeated ``k`` times: row
``r = i * k + j``) to a generation backend (:mod:`prefkit.models.decode`) and returns the
completions decoded WITHOUT the prompt, cut at the first EOS.

Reproducibility: sampling does not draw from torch's global RNG. Row ``r`` at decoding step
``t`` gets Gumbel noise computed by a counter-based hash of ``(seed, r, t, token id)``, added to
the (temperature-scaled, top-k / top-p masked) logits; the argmax of ``logits / T + Gumbel`` is
an exact sample of ``softmax(logits / T)`` (the Gumbel-max trick; the rule is
:func:`prefkit.models.decode.sampling_scores`). The noise of a row therefore does not depend on
which other rows share its batch: the same seed gives the same completions for ANY
``batch_size`` and either backend -- exactly, except when padding changes the logits in the
last float bits and that flips a near-tie (not seen in the tests). ``temperature=0`` is plain
greedy decoding.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .decode import DecodeSettings, GenerationBackend, get_backend, gumbel_noise
from .encoding import encode_prompt, encode_prompt_truncated  # re-exported: the one rule

__all__ = ["encode_prompt", "encode_prompt_truncated", "gumbel_noise", "sample"]


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
    min_new_tokens: int = 0,
    backend: str | GenerationBackend = "prefkit",
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
        batch_size: rows (prompt copies) decoded together.
        row_offset: the global index of ``prompts[0] * k``: a process that samples its shard
            of a larger prompt list passes its shard's offset and gets exactly the samples a
            single process would draw for those prompts.
        return_ids: also return the completion token ids (up to and including EOS when one was
            generated) -- ready to score as ``PromptGroup`` responses.
        min_new_tokens: EOS cannot be sampled before this many tokens.
        backend: ``"prefkit"`` (default: the batched static-KV-cache decode loop),
            ``"transformers"`` (Hugging Face ``generate``) or a
            :class:`prefkit.models.decode.GenerationBackend`; the two named ones give the same
            tokens (:mod:`prefkit.models.decode`).

    Returns:
        ``texts[i][j]``: completion ``j`` of prompt ``i`` (special tokens skipped), and with
        ``return_ids`` the matching ``ids[i][j]``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an EOS token")
    settings = DecodeSettings(
        max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, temperature=temperature,
        top_k=top_k, top_p=top_p, eos_id=eos_id, pad_id=pad_id, batch_size=batch_size)
    generator = get_backend(backend)
    encoded = [encode_prompt(tokenizer, p, max_prompt_length, chat_template=chat_template)
               for p in prompts]
    rows = [encoded[r // k] for r in range(len(encoded) * k)]
    out_ids = generator.generate(model, rows, settings, seed=seed, row_offset=row_offset).ids
    texts = tokenizer.batch_decode(out_ids, skip_special_tokens=True) if out_ids else []
    text_groups = [[t.strip() for t in texts[i * k:(i + 1) * k]] for i in range(len(prompts))]
    if not return_ids:
        return text_groups
    id_groups = [out_ids[i * k:(i + 1) * k] for i in range(len(prompts))]
    return text_groups, id_groups
