"""What the online-training tests share: the sort task, the settings of a small quickly trained
SFT model of it (``SMALL``: ~1 s; sensible but imperfect answers), prompts, the gold reward and
a small run config."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from prefkit.lab.base_model import build_base_model
from prefkit.lab.tasks import SortTask
from prefkit.train.online import OnlineConfig

TASK = SortTask()
SMALL = dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, sft_examples=1024,
             steps=100, batch_size=32, row_length=128)


def prompts(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [TASK.sample_prompt(rng) for _ in range(n)]


def gold(prompt: str, completion: str) -> float:
    return TASK.gold_reward(prompt, completion)


def online_config(tmp_path, **kw) -> OnlineConfig:
    """2 iterations of 8 prompts x 4 samples of at most 12 tokens, lr 1e-4 constant, nothing
    saved; ``kw`` overrides any field."""
    base = dict(output_dir=str(tmp_path / "run"), iterations=2, prompts_per_iteration=8,
                num_generations=4, max_new_tokens=12, learning_rate=1e-4,
                lr_scheduler="constant", batch_size=16, save_steps=0, save_final=False,
                progress=False, logging_steps=1000)
    base.update(kw)
    return OnlineConfig(**base)


def sort_sft_world(folder) -> tuple[Any, Any, list[str], Callable[[Any], float], float]:
    """The lab's default SFT model of the sort task (~6-8 s to train), 256 training prompts and
    its held-out evaluation (mean gold of 2 sampled answers to each of 128 fresh prompts):
    ``(model, tokenizer, train_prompts, evaluate, evaluate(model))``, for the learning tests."""
    from prefkit.models.generate import sample

    model, tok, _ = build_base_model(TASK, folder, seed=0)
    rng = random.Random(12345)
    train_prompts = [TASK.sample_prompt(rng) for _ in range(256)]
    eval_prompts = [TASK.sample_prompt(rng) for _ in range(128)]

    def evaluate(policy) -> float:
        outs = sample(policy, tok, eval_prompts, k=2, seed=5, max_new_tokens=32)
        return sum(gold(p, c) for p, cs in zip(eval_prompts, outs, strict=True)
                   for c in cs) / (2 * len(eval_prompts))

    return model, tok, train_prompts, evaluate, evaluate(model)


def tiny_sort_decoder(n_prompts: int, samples: int) -> tuple[Any, list[list[int]], Any]:
    """For decode tests: the sort task's word-level tokenizer, ``n_prompts`` prompts' ids each
    repeated ``samples`` times, and a seeded random 2-layer sdpa Llama (hidden 32) in eval
    mode."""
    import torch
    from transformers import AutoModelForCausalLM

    from prefkit.models.generate import encode_prompt
    from prefkit.models.load import tiny_llama_config
    from prefkit.models.tokenizer import word_level_tokenizer

    tok = word_level_tokenizer(TASK.vocabulary())
    rng = random.Random(0)
    rows = [encode_prompt(tok, TASK.sample_prompt(rng)) for _ in range(n_prompts)
            for _ in range(samples)]
    cfg = tiny_llama_config(len(tok), hidden_size=32, num_layers=2, num_heads=2,
                            intermediate_size=64, bos_token_id=tok.bos_token_id,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    return tok, rows, model
