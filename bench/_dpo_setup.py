"""The shared world of bench/dpo_vs_trl.py: a word-level tokenizer, a tiny Llama checkpoint and
synthetic preference data, written once to a work folder so that prefkit and TRL start from the
same weights, tokens and records.

- Tokenizer: ``tokenizers`` WordLevel over ``w0 .. w{V-5}`` plus ``<pad> <s> </s> <unk>``,
  whitespace pre-tokenizer: one word = one token, so sequence lengths are exact.
- Model: ``LlamaConfig(hidden 256, 4 layers, 4 heads, intermediate 1024, vocab 4096)``, random
  init with a fixed seed, float32, dropout off.
- Data: ``n`` prompts of ``prompt_len`` random words; each response ``response_len - 1`` words
  (+ EOS = ``response_len`` tokens). Chosen words come from the lower half of the vocabulary,
  rejected from the upper half (a learnable signal). For K-wise runs, K responses per prompt
  ranked by the share of lower-half words.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

VOCAB = 4096
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def build_tokenizer(folder: Path):
    from prefkit.models.tokenizer import word_level_tokenizer

    tokenizer = word_level_tokenizer([f"w{w}" for w in range(VOCAB - len(SPECIALS))])
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_model(folder: Path, layers: int = 4, seed: int = 0) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=256, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=4, intermediate_size=1024,
                         max_position_embeddings=1024, tie_word_embeddings=False,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def _words(rng: random.Random, n: int, low: bool | None) -> str:
    half = (VOCAB - len(SPECIALS)) // 2
    if low is None:
        return " ".join(f"w{rng.randrange(2 * half)}" for _ in range(n))
    base = 0 if low else half
    return " ".join(f"w{base + rng.randrange(half)}" for _ in range(n))


def build_data(path: Path, n: int, prompt_len: int, response_len: int, k: int = 2,
               seed: int = 0) -> None:
    """JSONL pairs (``prompt``/``chosen``/``rejected``, TRL's explicit-prompt columns) for
    ``k = 2``, rankings (``prompt``/``responses``/``ranking``) for ``k > 2``. Responses start
    with a space so that ``prompt + response`` tokenizes as the prompt's words followed by the
    response's."""
    rng = random.Random(seed)
    with open(path, "w") as out:
        for _ in range(n):
            prompt = _words(rng, prompt_len, None)
            if k == 2:
                row = {"prompt": prompt, "chosen": " " + _words(rng, response_len - 1, True),
                       "rejected": " " + _words(rng, response_len - 1, False)}
            else:
                half = (VOCAB - len(SPECIALS)) // 2
                responses = []
                for j in range(k):
                    low_share = 1.0 - j / (k - 1)
                    words = [f"w{rng.randrange(half) + (0 if rng.random() < low_share else half)}"
                             for _ in range(response_len - 1)]
                    responses.append(" " + " ".join(words))
                row = {"prompt": prompt, "responses": responses, "ranking": list(range(k))}
            out.write(json.dumps(row) + "\n")


def build_world(folder: Path, *, n: int = 256, prompt_len: int = 64, response_len: int = 64,
                k: int = 2, seed: int = 0) -> dict:
    """``folder/model`` (checkpoint + tokenizer), ``folder/pairs.jsonl`` and, for ``k > 2``,
    ``folder/rankings.jsonl`` (the pairs are then each ranking's best vs worst response, so both
    runs see the same prompts)."""
    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(folder / "model")
    params = build_model(folder / "model", seed=seed)
    if k == 2:
        build_data(folder / "pairs.jsonl", n, prompt_len, response_len, k=2, seed=seed)
    else:
        build_data(folder / "rankings.jsonl", n, prompt_len, response_len, k=k, seed=seed)
        rows = [json.loads(line) for line in open(folder / "rankings.jsonl")]
        with open(folder / "pairs.jsonl", "w") as out:
            for row in rows:
                out.write(json.dumps({"prompt": row["prompt"], "chosen": row["responses"][0],
                                      "rejected": row["responses"][-1]}) + "\n")
    return {"model": str(folder / "model"), "pairs": str(folder / "pairs.jsonl"),
            "params": params}


def build_rm_checkpoint(folder: Path, model_folder: Path, seed: int = 0) -> None:
    """A ``LlamaForSequenceClassification`` (one label) with the backbone of ``model_folder``
    and a seeded score head, saved with the tokenizer: the shared start of the RM benchmark."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification

    causal = LlamaForCausalLM.from_pretrained(model_folder)
    config = causal.config
    config.num_labels = 1
    torch.manual_seed(seed + 1)
    rm = LlamaForSequenceClassification(config)
    rm.model.load_state_dict(causal.model.state_dict())
    rm.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_folder).save_pretrained(folder)


def load_prefkit_rm(folder: Path):
    """prefkit's scalar reward model on the backbone of the sequence-classification checkpoint
    ``folder``, its score head copied in (bias 0: Llama's score layer has none)."""
    import torch
    from safetensors.torch import load_file

    from prefkit.rewards import RewardModel

    model, tokenizer = RewardModel.from_spec(str(folder), head="scalar")
    weights = load_file(str(Path(folder) / "model.safetensors"))
    with torch.no_grad():
        model.head.score.weight.copy_(weights["score.weight"])
        model.head.score.bias.zero_()
    return model, tokenizer
