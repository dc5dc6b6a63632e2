"""A starter model: a small Llama with random weights and a BPE tokenizer trained here.

``prefkit models init ./my-model`` gives a first-time user a checkpoint folder every command
accepts (``--model ./my-model``), with nothing downloaded: the tokenizer is a byte-level BPE
(:func:`prefkit.models.tokenizer.train_tokenizer`: any text encodes, role tokens and a chat
template for conversational records) trained on the text of the given feedback files, or of the
bundled examples; the model is a Llama (:func:`prefkit.models.load.tiny_llama_config`) sized by
one of :data:`SIZES`, initialized from ``seed``. Its outputs are noise until trained: it exists
to try every command end to end in seconds on a CPU, not to produce good text.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["SIZES", "build_starter_model", "record_texts"]

#: Model sizes and largest vocabularies of the starter models (BPE learns fewer tokens from
#: little text: the bundled examples give ~460).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 256,
             "vocab_size": 1024},  # 0.2M-0.3M parameters (with the vocabulary)
    "small": {"hidden_size": 256, "num_layers": 4, "num_heads": 8, "intermediate_size": 1024,
              "vocab_size": 4096},  # 4.4M-6.3M parameters
}


def _strings(value: Any) -> Iterator[str]:
    """Every non-empty string inside a JSON-like value (prompt, responses, message contents,
    ...)."""
    if isinstance(value, str):
        if value.strip():
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def record_texts(sources: Iterable[str | Path]) -> list[str]:
    """The text of every row of ``sources`` (any format prefkit reads); a malformed row raises
    its :class:`~prefkit.data.errors.RecordError` (file, line, field)."""
    from ..data.io import iter_rows

    texts: list[str] = []
    for source in sources:
        if not Path(str(source).split("::")[0]).exists():
            raise FileNotFoundError(f"no such file: {source}")
        for row in iter_rows(str(source)):
            if row.error is not None:
                raise row.error
            texts.extend(_strings(row.data))
    return texts


def _bundled_texts() -> list[str]:
    from ..data.examples import EXAMPLES, example_path

    return record_texts(example_path(name) for name in EXAMPLES)


def build_starter_model(folder: str | Path, *, data: Iterable[str | Path] = (),
                        size: str = "tiny", seed: int = 0,
                        max_position_embeddings: int = 2048) -> dict[str, Any]:
    """Write a starter model + tokenizer to ``folder`` (module docstring) and describe it.

    ``data``: feedback files whose text trains the tokenizer (default: the bundled examples).
    Returns ``{path, size, parameters, vocab_size, layers, hidden_size, tokenizer_texts,
    tokenizer_data}``.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from .load import tiny_llama_config
    from .tokenizer import train_tokenizer

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    shape = dict(SIZES[size])
    sources = [str(d) for d in data]
    texts = record_texts(sources) if sources else _bundled_texts()
    if not texts:
        raise ValueError(f"{', '.join(sources)}: no text to train a tokenizer on")
    tokenizer = train_tokenizer(texts, vocab_size=shape.pop("vocab_size"))
    config = tiny_llama_config(
        len(tokenizer), max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {"path": str(folder), "size": size,
            "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer), "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size, "tokenizer_texts": len(texts),
            "tokenizer_data": sources or ["bundled examples"]}
