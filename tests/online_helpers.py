"""What the online-training tests share: the sort task, the settings of a small quickly trained
SFT model of it (``SMALL``: ~1 s; sensible but imperfect answers), prompts, the gold reward and
a small run config."""

from __future__ import annotations

import random

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
