"""``--model`` and ``--prompts`` of online training: the lab's specs resolved into a policy and
prompts (``lab:TASK``, ``lab:TASK[:N]``) and reasoning-gym prompts (``rg:TASK[:N[:SEED]]``);
anything else is a file, read by the train layer (:func:`prefkit.train.online.resolve_model`,
:func:`prefkit.train.online.resolve_prompts`). They were resolved inside
``prefkit.train.online``, which made ``train`` import ``lab``."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..train.online import OnlineConfig

__all__ = ["DEFAULT_LAB_PROMPTS", "lab_model", "resolve_model", "resolve_prompts"]

DEFAULT_LAB_PROMPTS = 256
"""Prompts sampled for ``lab:TASK`` without ``:N``."""


def lab_model(task: str, *, seed: int = 0) -> tuple[Any, Any]:
    """The lab's cached SFT model of ``task`` and its tokenizer (built on first use, in the
    ``lab-base`` folder beside the reference cache; :func:`prefkit.lab.base_model.
    build_base_model`)."""
    from ..cache_dir import cache_root
    from ..lab.base_model import build_base_model
    from ..lab.tasks import get_task

    model, tokenizer, _ = build_base_model(get_task(task), cache_root() / "lab-base", seed=seed)
    return model, tokenizer


def resolve_model(config: OnlineConfig) -> tuple[Any, Any]:
    """The policy and tokenizer of ``config.model``: ``lab:TASK`` for :func:`lab_model` (with
    LoRA adapters when ``config.lora``), else :func:`prefkit.train.online.resolve_model` (a
    checkpoint folder or tiny-model file)."""
    if not config.model.startswith("lab:"):
        from ..train.online import resolve_model as load_policy

        return load_policy(config)
    from ..models.load import LoraSettings, apply_lora

    model, tokenizer = lab_model(config.model[4:], seed=config.seed)
    if config.lora:
        model = apply_lora(model, LoraSettings(r=config.lora_r, alpha=config.lora_alpha))
    return model, tokenizer


def resolve_prompts(spec: str, *, seed: int = 0) -> list[Any]:
    """``lab:TASK[:N]``: N prompts sampled from a lab task with ``random.Random(seed)``
    (default :data:`DEFAULT_LAB_PROMPTS`); ``rg:TASK[:N[:SEED]]``: the prompts of N entries of
    a reasoning-gym task drawn with SEED (:func:`prefkit.rewards.verifiable.gym.
    reasoning_gym_source`; ``--reward verifiable:rg:TASK`` checks them); anything else: a file
    or dataset (:func:`prefkit.train.online.read_prompts`)."""
    if spec.startswith("rg:"):
        from ..rewards.verifiable.gym import reasoning_gym_source
        from .rewards import parse_gym_spec

        task, n, rg_seed = parse_gym_spec(spec[3:], spec)
        return list(reasoning_gym_source(task, n, rg_seed).prompts)
    if not spec.startswith("lab:"):
        from ..train.online import read_prompts

        return read_prompts(spec)
    from ..lab.tasks import get_task

    name, _, n = spec[4:].partition(":")
    if n and not (n.isdigit() and int(n) > 0):
        raise ValueError(f"prompts {spec!r}: N in lab:TASK:N must be a positive integer, "
                         f"got {n!r}")
    task = get_task(name)
    rng = random.Random(seed)
    return [task.sample_prompt(rng) for _ in range(int(n) if n else DEFAULT_LAB_PROMPTS)]
