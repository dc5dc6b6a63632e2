"""Models: load HF causal LMs and tokenizers (local checkpoint or tiny config), LoRA, and
completion log-probs over prompt-shared packed batches.

* :mod:`~prefkit.models.tokenizer` -- train a byte-level BPE tokenizer locally.
* :mod:`~prefkit.models.load` -- ``load_model``, ``LoraSettings``, ``reference_context``,
  ``format_prompt``, ``tiny_llama_config``.
* :mod:`~prefkit.models.packing` -- ``PromptGroup``, ``pack_groups``, ``pad_groups``,
  ``truncate_groups``.
* :mod:`~prefkit.models.logprobs` -- ``sequence_logps`` (the hot path) and its reference.
"""

from prefkit.models.load import (
    LoraSettings,
    apply_lora,
    format_prompt,
    load_model,
    load_tokenizer,
    reference_context,
    tiny_llama_config,
)
from prefkit.models.logprobs import (
    SequenceLogps,
    sequence_logps,
    sequence_logps_padded,
    token_logps,
)
from prefkit.models.packing import (
    PackedBatch,
    PaddedBatch,
    PromptGroup,
    SkippedGroup,
    TruncationReport,
    pack_groups,
    pad_groups,
    truncate_group,
    truncate_groups,
)
from prefkit.models.tokenizer import train_tokenizer

__all__ = [
    "LoraSettings",
    "PackedBatch",
    "PaddedBatch",
    "PromptGroup",
    "SequenceLogps",
    "SkippedGroup",
    "TruncationReport",
    "apply_lora",
    "format_prompt",
    "load_model",
    "load_tokenizer",
    "pack_groups",
    "pad_groups",
    "reference_context",
    "sequence_logps",
    "sequence_logps_padded",
    "tiny_llama_config",
    "token_logps",
    "train_tokenizer",
    "truncate_group",
    "truncate_groups",
]
