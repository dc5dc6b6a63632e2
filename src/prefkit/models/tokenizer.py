"""Train a small byte-level BPE tokenizer locally (no hub), with special tokens and a chat template.

The result is a ``transformers.PreTrainedTokenizerFast``: save it with
``tokenizer.save_pretrained(path)`` and load it back with
``AutoTokenizer.from_pretrained(path, local_files_only=True)`` (or
:func:`prefkit.models.load.load_tokenizer`).

Conventions: encoding with ``tokenizer(text)`` prepends BOS (a post-processor does it), so
prompts are encoded with special tokens and responses with ``add_special_tokens=False``
followed by ``tokenizer.eos_token_id``. The chat template renders
``<|user|>\\n{content}<|end|>\\n`` per message and, with ``add_generation_prompt=True``, ends
with ``<|assistant|>\\n``; it does not write BOS itself (encoding adds it once).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "CHAT_TEMPLATE", "ROLE_TOKENS", "WORD_SPECIALS", "train_tokenizer", "word_level_tokenizer",
]

#: Extra special tokens: role markers and the end-of-turn marker used by :data:`CHAT_TEMPLATE`.
ROLE_TOKENS: tuple[str, ...] = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

#: A minimal Jinja chat template for ``{role, content}`` messages.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    special_tokens: Sequence[str] = ROLE_TOKENS,
    *,
    bos_token: str = "<|bos|>",
    eos_token: str = "<|eos|>",
    pad_token: str = "<|pad|>",
    min_frequency: int = 2,
    chat_template: str | None = CHAT_TEMPLATE,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts``.

    Args:
        texts: training strings (any iterable; consumed once).
        vocab_size: target size including the 256 byte symbols and the special tokens; the
            result may be smaller if the texts support fewer merges.
        special_tokens: extra special tokens after pad/bos/eos (role markers by default).
        bos_token, eos_token, pad_token: ids 1, 2 and 0 respectively.
        min_frequency: minimum pair count for a merge.
        chat_template: Jinja template set on the tokenizer (None: no template).
    """
    specials = [pad_token, bos_token, eos_token, *special_tokens]
    if len(set(specials)) != len(specials):
        raise ValueError(f"special tokens must be distinct, got {specials}")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(specials):
        raise ValueError(
            f"vocab_size {vocab_size} < {len(alphabet)} byte symbols + {len(specials)} specials"
        )
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=alphabet,
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    bos_id = core.token_to_id(bos_token)
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos_token} $A",
        pair=f"{bos_token} $A {bos_token} $B",
        special_tokens=[(bos_token, bos_id)],
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos_token,
        eos_token=eos_token,
        pad_token=pad_token,
        additional_special_tokens=list(special_tokens),
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


WORD_SPECIALS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")


def word_level_tokenizer(words: Sequence[str], *, add_bos: bool = False
                         ) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``words`` (one word = one token, so lengths are
    exact): ids 0-3 are ``<pad> <s> </s> <unk>``, then ``words`` in order. With ``add_bos``,
    encoding with special tokens prepends ``<s>`` (as Llama-style tokenizers do); otherwise
    nothing is added. Used by the simulated worlds, the lab, the tests and the benchmarks."""
    vocab = {token: i for i, token in enumerate([*WORD_SPECIALS, *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")
