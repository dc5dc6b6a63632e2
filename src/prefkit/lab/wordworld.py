"""A word world: the smallest setting in which preference learning has something to learn.

Prompts are random "topic" words; responses are short strings of words from two pools, "good"
(``g*``) and "bad" (``b*``). The gold reward of a response is its share of good words, so the
preferred response of a pair, the order of a ranking and the desirable label of a binary record
are all known exactly. A word-level tokenizer (one word = one token) and a tiny Llama built from
a config are written next to the data, so a full training run takes seconds on a CPU.

:func:`build_word_world` writes ``model/`` (checkpoint + tokenizer), ``pairs.jsonl``,
``rankings.jsonl`` (K responses), ``binary.jsonl`` and held-out ``eval_pairs.jsonl``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ..models.tokenizer import WORD_SPECIALS as SPECIALS

__all__ = ["POOLS", "build_word_world", "gold_reward", "word_pools"]


POOLS = {"good": "g", "bad": "b", "topic": "t", "rock": "r", "paper": "p", "scissors": "s"}
"""Word pools and their prefixes: good/bad words set the gold reward; topic words make prompts;
rock/paper/scissors words make the cyclic-preference responses of :mod:`.rm_data`."""


def _vocab(n_words: int) -> dict[str, list[str]]:
    return {pool: [f"{prefix}{i}" for i in range(n_words)] for pool, prefix in POOLS.items()}


def word_pools(n_words: int = 16) -> dict[str, list[str]]:
    """The words of each pool (as in a world built with ``n_words``)."""
    return _vocab(n_words)


def gold_reward(response: str) -> float:
    """Share of good words in a response (the world's known truth)."""
    words = response.split()
    return sum(w.startswith("g") for w in words) / max(1, len(words))


def _tokenizer(folder: Path, words: dict[str, list[str]]):
    from ..models.tokenizer import word_level_tokenizer

    tokenizer = word_level_tokenizer([w for pool in POOLS for w in words[pool]])
    tokenizer.save_pretrained(folder)
    return tokenizer


def _model(folder: Path, vocab_size: int, hidden: int, layers: int, seed: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2,
                         intermediate_size=2 * hidden, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2,
                         tie_word_embeddings=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def _response(rng: random.Random, words: dict[str, list[str]], good_share: float,
              length: int) -> str:
    return " " + " ".join(rng.choice(words["good"] if rng.random() < good_share
                                     else words["bad"]) for _ in range(length))


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def build_word_world(folder: str | Path, *, n_train: int = 64, n_eval: int = 32, k: int = 4,
                     n_words: int = 16, prompt_len: int = 3, response_len: int = 5,
                     hidden: int = 32, layers: int = 2, seed: int = 0) -> dict[str, Any]:
    """Write the world (module docstring) under ``folder``; return the paths and sizes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    words = _vocab(n_words)
    _tokenizer(folder / "model", words)
    params = _model(folder / "model", len(SPECIALS) + len(POOLS) * n_words, hidden, layers,
                    seed)

    def pairs(n: int) -> list[dict]:
        rows = []
        for _ in range(n):
            prompt = " ".join(rng.choice(words["topic"]) for _ in range(prompt_len))
            a, b = (_response(rng, words, s, response_len) for s in (0.8, 0.2))
            rows.append({"prompt": prompt, "chosen": a, "rejected": b})
        return rows

    rankings, binary = [], []
    for _ in range(n_train):
        prompt = " ".join(rng.choice(words["topic"]) for _ in range(prompt_len))
        responses = [_response(rng, words, 1.0 - j / max(1, k - 1), response_len)
                     for j in range(k)]
        order = sorted(range(k), key=lambda j: -gold_reward(responses[j]))
        rankings.append({"prompt": prompt, "responses": responses, "ranking": order})
        one = _response(rng, words, rng.random(), response_len)
        binary.append({"prompt": prompt, "completion": one, "label": gold_reward(one) >= 0.5})
    return {
        "model": str(folder / "model"), "params": params,
        "pairs": _write(folder / "pairs.jsonl", pairs(n_train)),
        "eval_pairs": _write(folder / "eval_pairs.jsonl", pairs(n_eval)),
        "rankings": _write(folder / "rankings.jsonl", rankings),
        "binary": _write(folder / "binary.jsonl", binary),
    }
