"""Worker for tests/test_online_distributed.py, launched as

    torchrun --standalone --nproc_per_node 2 tests/_ddp_online_worker.py OUT_DIR MODEL_DIR

Every scenario runs :func:`prefkit.train.online.train_online` on 2 CPU processes (gloo) with
the same global batch as the 1-process run the test does in its own process; each rank writes
``OUT_DIR/result_{rank}.json`` (final parameters, per-iteration rollout stats, loss history).
"""

from __future__ import annotations

import faulthandler
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import torch

from prefkit.lab.tasks import SortTask
from prefkit.models.load import load_model
from prefkit.rewards.sources import FunctionReward
from prefkit.train.online import OnlineConfig, train_online

TASK = SortTask()
#: the small SFT model of the sort task the test builds (prefkit.lab.base_model)
SMALL = dict(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=128, sft_examples=1024,
             steps=100, batch_size=32, row_length=128)
#: algorithm -> extra settings; every scenario: 8 prompts x G=4 per iteration, 3 iterations,
#: one optimizer step per iteration
SCENARIOS: dict[str, dict[str, Any]] = {
    "grpo": {},
    "reinforce": {},
    "ppo": {},
    # reward normalization over the global batch, and the KL measured during the update
    "rloo_normalized": {"algo": "rloo", "reward_normalization": "batch", "kl_coef": 0.0},
    "grpo_kl_loss": {"algo": "grpo", "kl_coef": 0.1},
    # dynamic sampling: groups of prompts without a 3 score all 0 and are dropped; the refill
    # rounds' groups move between processes (overlong shaping off so that the drops happen)
    "dapo": {"reward": "ones_if_three", "kl_coef": 0.0, "overlong_buffer": 0},
    "dapo_overlong": {"algo": "dapo", "overlong_buffer": 4, "kl_coef": 0.05},
    # off-policy (2 epochs): the sequence ratio moves off 1 and the clip acts
    "gspo": {"ppo_epochs": 2, "clip_eps": 0.01, "clip_eps_high": 0.02, "learning_rate": 5e-4},
    # the returns normalized over the global batch, the per-token KL in the reward
    "reinforce_pp": {},
}


def prompts() -> list[str]:
    rng = random.Random(3)
    return [TASK.sample_prompt(rng) for _ in range(20)]  # not a multiple of 8: cycles


def count_ones(prompt: str, completion: str) -> float:
    """Deterministic: how often the answer says "1", minus 0.1 per word."""
    words = completion.split()
    return words.count("1") - 0.1 * len(words)


def ones_if_three(prompt: str, completion: str) -> float:
    """Varies within a group only when the prompt's list holds a 3 (else all 0)."""
    return count_ones(prompt, completion) if "3" in prompt.split(":")[-1] else 0.0


REWARDS = {"count_ones": count_ones, "ones_if_three": ones_if_three}


def config(out: Path, name: str, algo: str, **kw: Any) -> OnlineConfig:
    base = dict(output_dir=str(out / name), algo=SCENARIOS[algo].get("algo", algo), iterations=3,
                prompts_per_iteration=8,
                num_generations=4, ppo_epochs=1, num_minibatches=1, batch_size=16,
                max_new_tokens=10, learning_rate=1e-3, lr_scheduler="constant", seed=5,
                logging_steps=1, save_steps=0, save_final=False, progress=False)
    base.update({k: v for k, v in SCENARIOS[algo].items() if k not in ("algo", "reward")})
    base.update(kw)
    return OnlineConfig(**base)


def flat(model: torch.nn.Module) -> list[float]:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).tolist()


def run(out: Path, model_dir: str, name: str, algo: str) -> dict[str, Any]:
    model, tok = load_model(model_dir)
    reward = REWARDS[SCENARIOS[algo].get("reward", "count_ones")]
    res = train_online(config(out, name, algo), reward=FunctionReward(reward),
                       prompts=prompts(), model=model, tokenizer=tok)
    return {"params": flat(res.model), "iterations": res.iterations,
            "loss": [h["loss"] for h in res.fit.history if "loss" in h],
            "clipfrac": [h["clipfrac"] for h in res.fit.history if "clipfrac" in h]}


def main(out: Path, model_dir: str) -> None:
    faulthandler.enable()
    rank = int(os.environ["RANK"])
    res: dict[str, Any] = {"world_size": int(os.environ["WORLD_SIZE"])}
    for algo in SCENARIOS:
        res[algo] = run(out, model_dir, algo, algo)
    (out / f"result_{rank}.json").write_text(json.dumps(res))
    if torch.distributed.is_initialized():  # a clean exit (no abort while a peer tears down)
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
    # as tests/_ddp_worker.py: skip the static destructors (gloo teardown rarely aborts)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
