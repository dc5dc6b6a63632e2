"""Training a generative reward model (:mod:`prefkit.rewards.generative`) on the shared loop
(:func:`prefkit.train.loop.fit`): every pair ``(x, y_w, y_l)`` as two examples, ``(x, y_w, y_l)
-> " A"`` and ``(x, y_l, y_w) -> " B"``, the loss the verdict token's cross-entropy
(:func:`prefkit.rewards.generative.verdict_loss`)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..rewards.generative import (
    GenerativeRewardModel,
    collate_verdict_batch,
    verdict_logits,
    verdict_loss,
)
from .config import AT_LEAST_1, LoopConfig, config_help, option
from .loop import Callback, FitResult, StepOutput, build_dataloader, fit

__all__ = ["GenRMConfig", "GenRMResult", "train_genrm"]


@dataclass
class GenRMConfig(LoopConfig):
    """A GenRM run: the loop's settings plus model, data and the token budget."""

    output_dir: str = option(config_help(LoopConfig)["output_dir"], "runs/genrm",
                             identity=False)
    model: str = option("Backbone: checkpoint directory or .json/.yaml tiny-model file.", "",
                        path=True)
    data: str = option("Training records (comparisons; ties are dropped).", "", path=True)
    max_length: int = option("Max tokens of the GenRM input (prompt + both responses).", 1024,
                             bounds=AT_LEAST_1)
    shuffle: bool = option("Shuffle the training examples each epoch.", True)


@dataclass
class GenRMResult:
    fit: FitResult
    genrm: GenerativeRewardModel = field(repr=False)
    data: dict[str, Any] = field(default_factory=dict)


def _pairs_from_records(path: str) -> tuple[list[tuple[Any, str, str]], int]:
    from ..data.io import read_records
    from ..data.records import Comparison, text_content

    pairs, skipped = [], 0
    for record in read_records(path):
        if isinstance(record, Comparison) and not record.outcome.is_tie:
            # a conversational response: its messages' text
            pairs.append((record.prompt, text_content(record.chosen),
                          text_content(record.rejected)))
        else:
            skipped += 1
    return pairs, skipped


def train_genrm(config: GenRMConfig, *, pairs: Sequence[tuple[Any, str, str]] | None = None,
                model: torch.nn.Module | None = None, tokenizer: Any = None,
                callbacks: Sequence[Callback] = ()) -> GenRMResult:
    """Train a GenRM with :func:`prefkit.train.loop.fit` on ``pairs`` (``(prompt, chosen,
    rejected)``) or the comparisons of ``config.data``; every pair in both orders."""
    from ..models.load import load_model

    skipped = 0
    if pairs is None:
        if not config.data:
            raise ValueError("no training data: set data (a records file) or pass pairs")
        pairs, skipped = _pairs_from_records(config.data)
    if not pairs:
        raise ValueError("no comparison pairs to train on")
    if model is None:
        if not config.model:
            raise ValueError("no model: set model (a checkpoint directory or a model file)")
        model, tokenizer = load_model(config.model, seed=config.seed)
    if tokenizer is None:
        raise ValueError("a model passed directly needs its tokenizer too")
    genrm = GenerativeRewardModel(model, tokenizer, max_length=config.max_length)
    examples = []
    for prompt, chosen, rejected in pairs:
        examples.append((genrm.encode(prompt, chosen, rejected), genrm.a_id))
        examples.append((genrm.encode(prompt, rejected, chosen), genrm.b_id))
    if config.shuffle:  # the loader shuffles too; this keeps both orders of a pair apart
        random.Random(config.seed).shuffle(examples)
    pad_id = genrm.pad_id

    def step(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> StepOutput:
        logits = verdict_logits(model, batch["input_ids"], batch["attention_mask"])
        loss, metrics = verdict_loss(logits, batch["targets"], a_id=genrm.a_id,
                                     b_id=genrm.b_id)
        return StepOutput(loss_sum=loss.sum(), n_examples=int(loss.shape[0]),
                          metrics_sum={k: v.sum() for k, v in metrics.items()},
                          n_tokens=batch["attention_mask"].sum())

    loader = build_dataloader(examples, config,
                              collate_fn=lambda b: collate_verdict_batch(b, pad_id),
                              shuffle=config.shuffle)
    model.train()
    result = fit(model, step, loader, config, callbacks=callbacks)
    genrm.model = getattr(model, "module", model).eval()
    return GenRMResult(fit=result, genrm=genrm,
                       data={"pairs": len(pairs), "examples": len(examples),
                             "skipped_records": skipped})
