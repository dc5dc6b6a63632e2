"""The shared world of bench/online_vs_trl.py: tokenizer, tiny Llama checkpoint, prompts and the
reward function, written once to a work folder so that prefkit and TRL start from the same
weights, tokens and prompts.

- Tokenizer: prefkit's word-level tokenizer over ``w0 .. w4091`` plus ``<pad> <s> </s> <unk>``
  (one word = one token), built WITH ``add_bos`` so that ``tokenizer(prompt)`` gives
  ``<s> w.. w..`` -- the ids TRL feeds to ``generate`` and the ids prefkit's ``encode_prompt``
  uses (it adds BOS only when it is missing), i.e. both sides see identical prompt tokens.
- Model: bench/_dpo_setup.py's ``build_model`` (LlamaConfig hidden 256, 4 layers, 4 heads,
  intermediate 1024, vocab 4096, 6.3M parameters, seeded random init, float32).
- Prompts: ``n`` prompts of 32..63 random words (+ BOS), seeded.
- Reward (:func:`low_share`): the fraction of the completion's words from the lower half of the
  vocabulary -- a deterministic Python function of the text, the same on both sides; the
  verifiable variant (:func:`verifiable_math`) checks the completion's last number against the
  prompt's ``answer`` (written in the prompts file) with prefkit's math checker.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _dpo_setup import SPECIALS, VOCAB, build_model  # noqa: E402

HALF = (VOCAB - len(SPECIALS)) // 2


def build_tokenizer(folder: Path):
    from prefkit.models.tokenizer import word_level_tokenizer

    tokenizer = word_level_tokenizer([f"w{w}" for w in range(VOCAB - len(SPECIALS))],
                                     add_bos=True)
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_prompts(path: Path, n: int, min_len: int = 32, max_len: int = 63,
                  seed: int = 0) -> list[int]:
    """``n`` prompts of ``min_len..max_len`` words as JSONL ``{"prompt": ...}``; returns the
    prompt lengths in tokens (BOS included)."""
    rng = random.Random(seed)
    lengths = []
    with open(path, "w") as out:
        for _ in range(n):
            k = rng.randint(min_len, max_len)
            prompt = " ".join(f"w{rng.randrange(2 * HALF)}" for _ in range(k))
            out.write(json.dumps({"prompt": prompt, "answer": answer_of(prompt)}) + "\n")
            lengths.append(k + 1)
    return lengths


def answer_of(prompt: str) -> str:
    """The verifiable variant's reference answer of a prompt: the number of its last word
    (``w17 w905`` -> ``905``), a pure function of the prompt (no random draw, so the prompts are
    those of the plain variant)."""
    return prompt.split()[-1][1:]


def verifiable_math(prompt: str, completion: str) -> float:
    """The verifiable variant's reward: prefkit's math checker (math-verify in a killable child
    process) of the completion's final answer against :func:`answer_of` -- the last number in
    the completion, e.g. the 17 of ``w17``; 1.0 when it is right, else 0.0."""
    from prefkit.rewards.verifiable import check_math

    return check_math(answer_of(prompt), completion).value


def build_world(folder: Path, *, n_prompts: int = 64, seed: int = 0) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(folder / "model")
    params = build_model(folder / "model", seed=seed)
    lengths = build_prompts(folder / "prompts.jsonl", n_prompts, seed=seed)
    return {"model": str(folder / "model"), "prompts": str(folder / "prompts.jsonl"),
            "params": params, "prompt_lengths": lengths}


def read_prompts(folder: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in open(folder / "prompts.jsonl")]


def low_share(prompt: str, completion: str) -> float:
    """Share of the completion's words ``w<i>`` with ``i < HALF`` (0 for an empty completion)."""
    words = completion.split()
    if not words:
        return 0.0
    return sum(1 for w in words if w.startswith("w") and w[1:].isdigit() and int(w[1:]) < HALF
               ) / len(words)
