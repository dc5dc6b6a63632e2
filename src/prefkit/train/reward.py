"""Reward-model training: any causal-LM backbone + a head, any objective of kind "reward".

``train_reward(RewardConfig(model=..., data=..., objective="bt"))``:

1. records -> prompt groups (each prompt tokenized once): comparisons become ``[chosen,
   rejected]`` pairs (ties kept as ``[a, b]`` with a tie flag for ``bt_ties``, dropped and
   counted otherwise; ``strength`` becomes a margin, ``soft_label`` a soft label), rankings
   become K-response groups with scores (``pl_rm``), ratings become one-response groups with
   attribute targets (``regression``);
2. one forward per micro-batch over prompt-shared packed rows
   (:meth:`prefkit.rewards.RewardModel.forward_packed`: the prompt is computed once for its 2 or
   K responses, the reward read at each response's last token);
3. the objective from :mod:`prefkit.losses` (``bt``, ``bt_ties``, ``pl_rm``, ``regression``,
   ``gpm``, ``odin``, or weighted sums such as ``bt+0.01*reward_centering``) inside
   :func:`prefkit.train.loop.fit`.

The head follows the objective unless set: ``regression`` -> ``multi`` (one output per
attribute), ``gpm`` -> ``gpm``, ``odin`` -> ``odin``, otherwise ``scalar``. With
``head="ensemble"`` every member is trained on the objective separately (the loss is the mean of
the members' losses, so they stay distinct) and the reward is the members' mean (also ``min``
and ``std`` for conservative use).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import losses
from ..data.records import Comparison, Outcome, Ranking, Rating
from ..models.attention import use_attention
from ..models.encoding import CHAT_TEMPLATE_HELP, CHAT_TEMPLATE_MODES
from ..models.packing import PromptGroup, pack_groups, truncate_groups
from ..rewards.heads import HEADS as _HEAD_CLASSES
from .config import (
    AT_LEAST_1,
    FRACTION,
    POSITIVE,
    Bounds,
    ConfigError,
    LoopConfig,
    config_help,
    option,
)
from .loop import Callback, FitResult, StepOutput, build_dataloader, fit, make_accelerator
from .loss_spec import check_loss_spec
from .preference_data import DataReport, length_budgets, tokenize_example, truncation_dict

__all__ = ["RewardConfig", "RewardResult", "RewardTask", "train_reward"]

HEADS = tuple(_HEAD_CLASSES)


@dataclass
class RewardConfig(LoopConfig):
    """A reward-model run: the loop's settings plus model, data, objective and head."""

    output_dir: str = option(config_help(LoopConfig)["output_dir"], "runs/reward",
                             identity=False)
    model: str = option("Backbone: checkpoint directory or .json/.yaml tiny-model file "
                        "(`prefkit models init` makes one).", "", path=True)
    data: str = option("Training records: pairs, rankings or attribute ratings.", "",
                       path=True)
    eval_data: str | None = option("Evaluation records (same kinds).", path=True,
                                   identity=False)
    eval_fraction: float = option("Hold out this share of the records for eval.", 0.0,
                                  bounds=FRACTION)
    objective: str = option("Loss spec of kind 'reward': bt, bt_ties, pl_rm, regression, gpm, "
                            "odin, or a sum such as 'bt+0.01*reward_centering'.", "bt")
    head: str | None = option("scalar | multi | gpm | odin | ensemble (default: from the "
                              "objective).", choices=HEADS)
    attributes: list[str] | None = option("Rating attributes to regress (default: every "
                                          "attribute in the data, sorted).")
    attribute_weights: list[float] | None = option("Weights combining the attributes into one "
                                                   "reward (default: uniform).")
    ensemble_size: int = option("Members of an ensemble head.", 4, bounds=AT_LEAST_1)
    gpm_dim: int = option("GPM embedding size (even).", 8, bounds=Bounds(2))
    margin_from_strength: bool = option("Use a comparison's strength as the BT margin.", False)
    lora: bool = option("Train LoRA adapters plus the head instead of all weights.", False)
    lora_r: int = option("LoRA rank.", 8, bounds=AT_LEAST_1)
    lora_alpha: int = option("LoRA alpha.", 16, bounds=POSITIVE)
    dtype: str = option("Weight dtype: float32 or bfloat16.", "float32",
                        choices=("float32", "bfloat16"))
    max_length: int = option("Max tokens of prompt + one response.", 1024, bounds=AT_LEAST_1)
    max_prompt_length: int | None = option("Max prompt tokens (cut from the left).",
                                           bounds=AT_LEAST_1)
    chat_template: str = option(CHAT_TEMPLATE_HELP, "auto", choices=CHAT_TEMPLATE_MODES)
    pack_length: int | None = option("Row capacity when packing several groups per row.",
                                     bounds=AT_LEAST_1)
    shuffle: bool = option("Shuffle the training records each epoch.", True)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_loss_spec(self.objective, field=f"{type(self).__name__}.objective",
                        kinds=("reward",),
                        trained="reward models")
        if self.gpm_dim % 2:
            raise ConfigError(f"invalid RewardConfig.gpm_dim={self.gpm_dim}: expected an even "
                              "number >= 2")


@dataclass
class RewardResult:
    fit: FitResult
    data: dict[str, Any]
    objective: str
    head: str
    model: Any = field(repr=False, default=None)
    tokenizer: Any = field(repr=False, default=None)
    truncation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.fit.steps, "metrics": self.fit.metrics, "objective": self.objective,
                "head": self.head, "data": self.data, "truncation": self.truncation,
                "checkpoints": self.fit.checkpoints, "seconds": round(self.fit.seconds, 3)}


# --------------------------------------------------------------------------- data


@dataclass
class RMExample:
    """A tokenized prompt group with its supervision."""

    index: int
    group: PromptGroup
    scores: list[float]
    tie: bool = False
    margin: float = 0.0
    soft_label: float | None = None
    targets: list[float] | None = None


HEAD_FOR = {"regression": "multi", "gpm": "gpm", "odin": "odin"}


def _attribute_names(records: list) -> list[str]:
    """Every attribute scored in the rating records, sorted."""
    return sorted({k for r in records if isinstance(r, Rating) for k in r.scores})


def records_to_rm_examples(records: Sequence, tokenizer, *, kind_needed: str, keep_ties: bool,
                           attributes: list[str], margin_from_strength: bool,
                           report: DataReport, max_length: int | None = None,
                           max_prompt_length: int | None = None,
                           chat_template: str = "auto") -> list[RMExample]:
    """Tokenize the records an objective can learn from; count the others in ``report``.
    ``max_length`` / ``max_prompt_length``: the truncation that will follow; only the text it
    can keep is tokenized (:func:`~prefkit.train.preference_data.length_budgets`).
    ``chat_template``: the prompt-encoding mode (:mod:`prefkit.models.encoding`)."""
    prompt_budget, response_budget = length_budgets(max_length, max_prompt_length)
    out: list[RMExample] = []
    for index, record in enumerate(records):
        report.read += 1
        if isinstance(record, Comparison) and kind_needed == "pairs":
            tie = record.outcome in (Outcome.TIE, Outcome.BOTH_BAD)
            if tie and not keep_ties:
                report.skip(f"comparison_{record.outcome.name.lower()}", index)
                continue
            responses = ([record.response_a, record.response_b] if tie
                         else [record.chosen, record.rejected])
            margin = float(record.strength or 0.0) if margin_from_strength else 0.0
            soft = record.soft_label
            if soft is not None and record.outcome is Outcome.B:
                soft = 1.0 - soft  # soft_label is P(A better); chosen is B here
            example = RMExample(index, None, [1.0, 0.0], tie=tie, margin=margin,
                                soft_label=soft)
        elif isinstance(record, Ranking) and kind_needed == "rankings":
            ranked = record.ranked
            if len(ranked) < 2:
                report.skip("ranking_fewer_than_2_ranked", index)
                continue
            score = record.tier_scores
            responses = [record.responses[i] for i in ranked]
            example = RMExample(index, None, [score[i] for i in ranked])
        elif isinstance(record, Rating) and kind_needed == "ratings":
            responses = [record.response]
            targets = [float(record.scores[a]) if a in record.scores else float("nan")
                       for a in attributes]
            example = RMExample(index, None, [0.0], targets=targets)
        else:
            report.skip(f"unsupported_{getattr(record, 'kind', type(record).__name__)}"
                        f"_for_{kind_needed}", index)
            continue
        tokens = tokenize_example(tokenizer, record.prompt, responses, index=index,
                                  max_prompt_tokens=prompt_budget,
                                  max_response_tokens=response_budget,
                                  chat_template=chat_template)
        if any(not r or r == [tokenizer.eos_token_id] for r in tokens.response_ids):
            report.skip("empty_completion", index)
            continue
        example.group = PromptGroup(tokens.prompt_ids, tokens.response_ids)
        out.append(example)
        report.used += 1
    return out


# --------------------------------------------------------------------------- the task


class RewardTask:
    """Objective + batch layout + step function of one reward-model run (no I/O)."""

    def __init__(self, objective: str, *, pad_id: int = 0, pack_length: int | None = None):
        self.loss_fn = losses.build_loss(objective)
        self.spec = self.loss_fn.loss_spec
        if self.spec.kind != "reward":
            raise ValueError(f"objective {objective!r} is a {self.spec.kind} loss; reward "
                             f"models train with: "
                             f"{', '.join(sorted(losses.available('reward')))}")
        inputs = set(self.spec.inputs) | set(self.spec.optional_inputs)
        if "predictions" in inputs:
            self.data_kind = "ratings"
        elif "rewards" in inputs:
            self.data_kind = "rankings"
        else:
            self.data_kind = "pairs"
        self.keep_ties = "ties" in inputs
        self.pad_id = pad_id
        self.mask_dtype: torch.dtype | None = torch.float32  # None: flex (no dense mask)
        self.pack_length = pack_length

    def collate(self, examples: list[RMExample]) -> dict[str, Any]:
        groups = [e.group for e in examples]
        capacity = max(self.pack_length or 0, max(g.packed_length for g in groups))
        packed = pack_groups(groups, max_length=capacity, pad_id=self.pad_id,
                             mask_dtype=self.mask_dtype)
        k_max = max(g.k for g in groups)
        scores = torch.full((len(examples), k_max), float("-inf"))
        for i, e in enumerate(examples):
            scores[i, : e.group.k] = torch.tensor(e.scores)
        batch = {"packed": packed, "scores": scores,
                 "ties": torch.tensor([e.tie for e in examples]),
                 "margins": torch.tensor([e.margin for e in examples])}
        if any(e.soft_label is not None for e in examples):
            batch["soft_labels"] = torch.tensor([1.0 if e.soft_label is None else e.soft_label
                                                 for e in examples])
        if examples[0].targets is not None:
            targets = torch.tensor([e.targets for e in examples], dtype=torch.float32)
            batch["targets"] = targets.nan_to_num(0.0)
            batch["target_mask"] = ~torch.isnan(targets)
        return batch

    def loss_inputs(self, out: Any, batch: dict[str, Any],
                    rewards: torch.Tensor | None = None) -> dict[str, Any]:
        """Canonical loss inputs from a model output (``rewards`` overrides ``out.rewards``,
        e.g. one ensemble member)."""
        rewards = out.rewards if rewards is None else rewards
        lengths = batch["packed"].completion_lengths.to(rewards.dtype)
        if self.data_kind == "ratings":
            return {"predictions": out.attributes[:, 0, :], "targets": batch["targets"],
                    "target_mask": batch["target_mask"]}
        if self.data_kind == "rankings":
            return {"rewards": rewards, "scores": batch["scores"], "mask": out.mask}
        inputs = {"chosen_rewards": rewards[:, 0], "rejected_rewards": rewards[:, 1],
                  "margins": batch["margins"], "ties": batch["ties"],
                  "soft_labels": batch.get("soft_labels"),
                  "chosen_lengths": lengths[:, 0], "rejected_lengths": lengths[:, 1]}
        if out.embeddings is not None:
            inputs |= {"chosen_embeddings": out.embeddings[:, 0],
                       "rejected_embeddings": out.embeddings[:, 1]}
        if out.length_rewards is not None:
            inputs |= {"chosen_length_rewards": out.length_rewards[:, 0],
                       "rejected_length_rewards": out.length_rewards[:, 1]}
        for key in ("scale", "quality_weight", "length_weight"):
            if key in batch:
                inputs[key] = batch[key]
        return inputs

    @staticmethod
    def head_inputs(model: torch.nn.Module) -> dict[str, Any]:
        """Inputs some objectives take from the head itself: the GPM logit scale, the ODIN
        head weight vectors (for the orthogonality term)."""
        head = getattr(getattr(model, "module", model), "head", None)
        if head is None:
            return {}
        if getattr(head, "kind", None) == "gpm":
            return {"scale": head.scale}
        if getattr(head, "kind", None) == "odin":
            return {"quality_weight": head.quality.weight.float().flatten(),
                    "length_weight": head.length.weight.float().flatten()}
        return {}

    def step(self, model: torch.nn.Module, batch: dict[str, Any]) -> StepOutput:
        batch = {**batch, **self.head_inputs(model)}
        out = model(batch["packed"])
        members = getattr(out, "members", None)
        if members is not None and self.data_kind != "ratings":
            member_losses = [losses.call_loss(self.loss_fn, self.loss_inputs(
                out, batch, members[..., m]))[0] for m in range(members.shape[-1])]
            _, metrics = losses.call_loss(self.loss_fn, self.loss_inputs(out, batch))
            loss = torch.stack(member_losses).mean(0)
        else:
            loss, metrics = losses.call_loss(self.loss_fn, self.loss_inputs(out, batch))
        return StepOutput(loss_sum=loss.sum(), n_examples=int(loss.shape[0]),
                          metrics_sum={k: v.detach().float().nan_to_num(0.0).sum()
                                       for k, v in metrics.items()},
                          n_tokens=batch["packed"].n_tokens)


# --------------------------------------------------------------------------- the run


def _load(path: str, records: list, tokenizer, task: RewardTask, config: RewardConfig,
          attributes: list[str], report: DataReport
          ) -> tuple[list[RMExample], dict[str, Any]]:
    """Tokenize and truncate the records of ``path`` the objective can learn from; returns
    them and what the truncation did (:func:`~prefkit.train.preference_data.truncation_dict`)."""
    examples = records_to_rm_examples(
        records, tokenizer, kind_needed=task.data_kind, keep_ties=task.keep_ties,
        attributes=attributes, margin_from_strength=config.margin_from_strength, report=report,
        max_length=config.max_length, max_prompt_length=config.max_prompt_length,
        chat_template=config.chat_template)
    if not examples:
        raise ValueError(f"{path}: no records objective {task.spec.name!r} can learn from "
                         f"(it needs {task.data_kind}; {report.to_dict()})")
    kept, trunc = truncate_groups([e.group for e in examples], max_length=config.max_length,
                                  max_prompt_length=config.max_prompt_length,
                                  max_packed_length=config.pack_length,
                                  ids=[e.index for e in examples])
    if trunc.n_skipped:
        warnings.warn(f"{path}: {trunc.summary()}", stacklevel=2)
    out = []
    for i, group in zip(trunc.kept_indices, kept, strict=True):
        examples[i].group = group
        out.append(examples[i])
    return out, truncation_dict(trunc)


def train_reward(config: RewardConfig, *, model: torch.nn.Module | None = None,
                 tokenizer: Any = None, callbacks: Sequence[Callback] = ()) -> RewardResult:
    """Train a reward model (module docstring); ``model``/``tokenizer`` may be passed in."""
    from ..data.io import read_records
    from ..models.load import LoraSettings
    from ..rewards import RewardModel

    if not config.data:
        raise ValueError("no training data: set data (a records file)")
    task = RewardTask(config.objective, pack_length=config.pack_length)
    head = config.head or HEAD_FOR.get(task.spec.name.split("+")[0].split("(")[0], "scalar")
    records = list(read_records(config.data))
    attributes: list[str] = []
    if task.data_kind == "ratings":
        attributes = list(config.attributes or _attribute_names(records))
        if not attributes:
            raise ValueError(f"{config.data}: objective {task.spec.name!r} needs rating records "
                             "with attribute scores; none found")
    if model is None:
        if not config.model:
            raise ValueError("no model: set model (a checkpoint directory or a model file)")
        lora = LoraSettings(r=config.lora_r, alpha=config.lora_alpha) if config.lora else None
        model, tokenizer = RewardModel.from_spec(
            config.model, head=head, attributes=attributes or None,
            weights=config.attribute_weights, gpm_dim=config.gpm_dim,
            ensemble_size=config.ensemble_size, dtype=config.dtype, lora=lora,
            seed=config.seed)
    if tokenizer is None:
        raise ValueError("a model passed directly needs its tokenizer too")
    task.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    accelerator = make_accelerator(config)
    if use_attention(model.backbone, config.attention, accelerator.device) == "flex":
        task.mask_dtype = None  # the block mask is built from the segment ids on the device
    report = DataReport()
    examples, truncation = _load(config.data, records, tokenizer, task, config, attributes,
                                 report)
    eval_examples: list[RMExample] = []
    if config.eval_data:
        eval_examples, _ = _load(config.eval_data, list(read_records(config.eval_data)),
                                 tokenizer, task, config, attributes, DataReport())
    elif config.eval_fraction > 0:
        order = list(range(len(examples)))
        random.Random(config.seed).shuffle(order)
        held = set(order[: max(1, int(round(config.eval_fraction * len(examples))))])
        eval_examples = [e for i, e in enumerate(examples) if i in held]
        examples = [e for i, e in enumerate(examples) if i not in held]
    train_loader = build_dataloader(examples, config, collate_fn=task.collate,
                                    shuffle=config.shuffle)
    eval_loader = (build_dataloader(eval_examples, config, collate_fn=task.collate,
                                    shuffle=False) if eval_examples else None)
    model.train()
    result = fit(model, task.step, train_loader, config, eval_data=eval_loader,
                 accelerator=accelerator, callbacks=callbacks)
    data = report.to_dict() | {"train": len(examples), "eval": len(eval_examples),
                               "attributes": attributes}
    return RewardResult(fit=result, data=data, objective=task.spec.name, head=head, model=model,
                        tokenizer=tokenizer, truncation=truncation)
