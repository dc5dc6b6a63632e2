"""Direct preference training: any causal LM, any loss of :mod:`prefkit.losses`, one command.

``train_preference(PreferenceConfig(model=..., data=..., loss="dpo"))`` does:

1. read the feedback records (:func:`prefkit.data.io.read_records`: comparisons, rankings, binary
   labels) and tokenize them into prompt groups (:mod:`.preference_data`); truncate them
   (:func:`prefkit.models.packing.truncate_groups`: prompt from the left, never an empty
   completion -- skipped records are counted and named in a warning);
2. reference log-probs, if the loss needs them, computed ONCE before training and cached on
   disk under a content hash of (reference weights, token ids, settings)
   (:mod:`.reference`); with LoRA the reference is the same model with adapters disabled;
3. train with :func:`prefkit.train.loop.fit`; every micro-batch is one forward over
   prompt-shared packed rows (:func:`prefkit.models.packing.pack_groups`: each prompt computed
   once for its 2 or K responses) and chunked completion log-probs
   (:func:`prefkit.models.logprobs.sequence_logps`), then the loss.

The same code runs under ``accelerate launch`` / ``torchrun`` (data parallel): the main process
computes and caches the reference log-probs, the others read the cache. With
``sharding="fsdp2"`` and several processes the model is never placed whole on an accelerator:
the reference pass runs on a sharded reference, each process computing its share and all of
them ending with the same tensor (:mod:`.reference`), and :func:`~prefkit.train.loop.fit`
trains a sharded copy; the caller's model stays on the CPU and receives the trained weights.
"""

from __future__ import annotations

import dataclasses
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import losses
from ..models.attention import use_attention
from ..models.encoding import CHAT_TEMPLATE_HELP, CHAT_TEMPLATE_MODES
from ..models.logprobs import sequence_logps
from ..models.packing import PromptGroup, pack_groups, truncate_groups
from .config import (
    AT_LEAST_1,
    DTYPES,
    FRACTION,
    POSITIVE,
    LoopConfig,
    config_help,
    option,
)
from .loop import Callback, FitResult, StepOutput, build_dataloader, fit, make_accelerator
from .loss_spec import POLICY_KINDS, check_loss_spec
from .preference_data import (
    DataReport,
    PreferenceExample,
    records_to_examples,
    truncation_dict,
)
from .reference import reference_logps

__all__ = ["PreferenceConfig", "PreferenceResult", "PreferenceTask", "train_preference"]

LOOP_HELP = config_help(LoopConfig)


@dataclass
class PreferenceConfig(LoopConfig):
    """Everything a preference run needs: the loop's settings plus model, data and loss."""

    output_dir: str = option(LOOP_HELP["output_dir"], "runs/preference", identity=False)
    model: str = option("Checkpoint directory, or a .json/.yaml tiny-model file "
                        "(`prefkit models init` makes one).", "", path=True)
    data: str = option("Training records: JSONL / JSON / Parquet / HF dataset folder "
                       "(pairs, rankings or binary labels, any prefkit-readable format).", "",
                       path=True)
    eval_data: str | None = option("Evaluation records (same formats).", path=True,
                                   identity=False)
    eval_fraction: float = option("Hold out this share of the training records for eval when "
                                  "no eval_data is given.", 0.0, bounds=FRACTION)
    loss: str = option("Loss spec: a registered name or a weighted sum, e.g. 'dpo', "
                       "'dpo+0.2*sft', 'ipo(beta=0.5)'. `prefkit train losses` lists them.",
                       "dpo")
    beta: float | None = option("beta for every loss term that takes one (None: each loss's "
                                "default).", bounds=POSITIVE)
    reference: str = option("'auto' (the starting policy; with LoRA the adapters disabled), "
                            "or a checkpoint directory of a separate reference model.", "auto",
                            path=True)
    reference_cache: str | None = option("Folder for cached reference log-probs ('none' to "
                                         "disable; default ~/.cache/prefkit/reference).",
                                         identity=False)
    lora: bool = option("Train new LoRA adapters (peft) instead of all weights; the reference "
                        "is the model as loaded (adapters disabled). A saved LoRA policy loads "
                        "with its adapters merged, so it is its own reference.", False)
    lora_r: int = option("LoRA rank.", 8, bounds=AT_LEAST_1)
    lora_alpha: int = option("LoRA alpha (scale alpha / r).", 16, bounds=POSITIVE)
    dtype: str = option("Weight dtype: float32 or bfloat16.", "float32",
                        choices=DTYPES)
    max_length: int = option("Max tokens of prompt + one response (longer responses are cut "
                             "from the right).", 1024, bounds=AT_LEAST_1)
    max_prompt_length: int | None = option("Max prompt tokens (cut from the left).",
                                           bounds=AT_LEAST_1)
    chat_template: str = option(CHAT_TEMPLATE_HELP, "auto", choices=CHAT_TEMPLATE_MODES)
    pack_length: int | None = option("Row capacity when packing several prompt groups per "
                                     "row; default: one group per row, rows as long as the "
                                     "longest group of the micro-batch.", bounds=AT_LEAST_1)
    chunk_size: int = option("Completion positions per LM-head chunk.", 1024,
                             bounds=AT_LEAST_1, identity=False)
    shuffle: bool = option("Shuffle the training records each epoch.", True)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_loss_spec(self.loss, field=f"{type(self).__name__}.loss", kinds=POLICY_KINDS)


@dataclass
class PreferenceResult:
    """What :func:`train_preference` returns."""

    fit: FitResult
    data: dict[str, Any]
    truncation: dict[str, Any]
    loss: str
    kind: str
    reference: dict[str, Any] | None
    model: Any = dataclasses.field(repr=False, default=None)
    tokenizer: Any = dataclasses.field(repr=False, default=None)
    reference_sums: torch.Tensor | None = dataclasses.field(repr=False, default=None)

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.fit.steps, "metrics": self.fit.metrics, "loss": self.loss,
                "kind": self.kind, "data": self.data, "truncation": self.truncation,
                "reference": self.reference, "checkpoints": self.fit.checkpoints,
                "seconds": round(self.fit.seconds, 3)}


# --------------------------------------------------------------------------- the task


@dataclass
class _Item:
    example: PreferenceExample
    group: PromptGroup
    ref: torch.Tensor | None  # [Kmax_example] summed reference log-probs
    shadow: PromptGroup | None = None  # KTO: this prompt with another record's response
    shadow_ref: torch.Tensor | None = None


class PreferenceTask:
    """The loss, the batch layout and the step function of one preference run (no I/O).

    ``loss_fn`` is the (possibly combined) loss; ``kind`` its kind: pairwise losses need K = 2
    groups (chosen first), listwise any K, unpaired (KTO) K = 1 groups plus a "shadow" group per
    example (its prompt with another example's response) for the KL estimate, sft the best
    response of each group.
    """

    def __init__(self, loss: str, *, beta: float | None = None, pad_id: int = 0,
                 pack_length: int | None = None, chunk_size: int = 1024):
        terms = losses.parse_loss_spec(loss)
        if beta is not None:
            terms = [(name, w, {**({"beta": beta} if "beta" in losses.spec(name).hyperparameters
                                   else {}), **hp}) for name, w, hp in terms]
        self.loss_fn = losses.combine(terms)
        self.spec = self.loss_fn.loss_spec
        self.kind = self.spec.kind
        if self.kind == "reward":
            raise ValueError(f"{self.spec.name!r} is a reward-model objective: train reward "
                             "models with `prefkit rm train` (prefkit.train.reward)")
        self.needs_reference = self.spec.needs_reference
        self.pad_id = pad_id
        self.pack_length = pack_length
        self.chunk_size = chunk_size
        self.mask_dtype: torch.dtype | None = torch.float32  # None: flex (no dense mask)

    # ---- data checks
    def check_example(self, example: PreferenceExample) -> str | None:
        """Why an example cannot feed this loss (None when it can)."""
        k = example.k
        if self.kind == "pairwise" and k != 2:
            return (f"a pairwise loss needs pairs, record {example.index} has {k} responses "
                    "(use a listwise loss such as lipo / listwise_dpo, or convert the rankings "
                    "to pairs with `prefkit data convert --to trl-preference`)")
        if self.kind == "unpaired" and example.label is None:
            return (f"loss {self.spec.name!r} needs binary (desirable yes/no) records; record "
                    f"{example.index} is not one (convert pairs with `prefkit data convert "
                    "--to trl-unpaired`)")
        if self.kind != "unpaired" and example.label is not None:
            return (f"record {example.index} is a binary (unpaired) label; loss "
                    f"{self.spec.name!r} needs comparisons or rankings (use kto)")
        return None

    # ---- batches
    def collate(self, items: list[_Item]) -> dict[str, Any]:
        groups = [it.group for it in items]
        if self.kind == "unpaired":
            groups += [it.shadow for it in items]
        capacity = max(self.pack_length or 0, max(g.packed_length for g in groups))
        packed = pack_groups(groups, max_length=capacity, pad_id=self.pad_id,
                             mask_dtype=self.mask_dtype)
        k_max = max(it.group.k for it in items)
        scores = torch.full((len(items), k_max), float("-inf"))
        for i, it in enumerate(items):
            scores[i, : it.group.k] = torch.tensor(it.example.scores, dtype=torch.float32)
        batch: dict[str, Any] = {"packed": packed, "scores": scores, "n": len(items)}
        if items[0].ref is not None:
            ref = torch.zeros(len(items), k_max)
            for i, it in enumerate(items):
                ref[i, : it.group.k] = it.ref[: it.group.k]
            batch["ref"] = ref
            if self.kind == "unpaired":
                batch["shadow_ref"] = torch.stack([it.shadow_ref[0] for it in items])
        if self.kind == "unpaired":
            batch["labels"] = torch.tensor([bool(it.example.label) for it in items])
        return batch

    def loss_inputs(self, model: torch.nn.Module, batch: dict[str, Any]) -> dict[str, Any]:
        """The canonical loss inputs (see :mod:`prefkit.losses`) for one micro-batch."""
        lp = sequence_logps(model, batch["packed"], chunk_size=self.chunk_size)
        n = batch["n"]
        sums, counts = lp.sum[:n], lp.count[:n].to(lp.sum.dtype)
        ref = batch.get("ref")
        if self.kind == "pairwise":
            out = {"chosen_logps": sums[:, 0], "rejected_logps": sums[:, 1],
                   "chosen_lengths": counts[:, 0], "rejected_lengths": counts[:, 1]}
            if ref is not None:
                out |= {"ref_chosen_logps": ref[:, 0], "ref_rejected_logps": ref[:, 1]}
            return out
        if self.kind == "listwise":
            mask = lp.mask[:n]
            out = {"logps": sums, "lengths": counts, "scores": batch["scores"], "mask": mask}
            if ref is not None:
                out["ref_logps"] = ref
            return out
        if self.kind == "unpaired":
            # KTO's KL estimate is a (detached) batch statistic: gathered over processes, so W
            # processes with batch b estimate it on the same W*b mismatched pairs as one
            # process with batch W*b
            out = {"logps": sums[:, 0], "lengths": counts[:, 0], "labels": batch["labels"],
                   "kl_logps": _gather_detached(lp.sum[n:, 0])}
            if ref is not None:
                out |= {"ref_logps": ref[:, 0],
                        "ref_kl_logps": _gather_detached(batch["shadow_ref"])}
            return out
        return {"logps": sums[:, 0], "lengths": counts[:, 0]}  # sft: the best response

    def step(self, model: torch.nn.Module, batch: dict[str, Any]) -> StepOutput:
        inputs = self.loss_inputs(model, batch)
        loss, metrics = losses.call_loss(self.loss_fn, inputs)
        return StepOutput(
            loss_sum=loss.sum(), n_examples=int(loss.shape[0]),
            metrics_sum={k: v.detach().float().nan_to_num(0.0).sum() for k, v in
                         metrics.items()},
            n_tokens=batch["packed"].n_tokens)


def _gather_detached(x: torch.Tensor) -> torch.Tensor:
    """``x`` (1D, detached) concatenated over all data-parallel processes in rank order (sizes
    may differ); ``x`` itself when running alone."""
    import torch.distributed as dist

    x = x.detach()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    size = torch.tensor([x.numel()], device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    width = int(max(int(s) for s in sizes))
    padded = torch.zeros(width, dtype=x.dtype, device=x.device)
    padded[:x.numel()] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:int(s)] for part, s in zip(parts, sizes, strict=True)])


# --------------------------------------------------------------------------- the run


def _load_examples(path: str, tokenizer, task: PreferenceTask, config: PreferenceConfig,
                   report: DataReport) -> tuple[list[PreferenceExample], list[PromptGroup],
                                                dict[str, Any]]:
    from ..data.io import read_records

    examples = records_to_examples(read_records(path), tokenizer, report,
                                   max_length=config.max_length,
                                   max_prompt_length=config.max_prompt_length,
                                   chat_template=config.chat_template)
    for example in examples:
        problem = task.check_example(example)
        if problem:
            raise ValueError(f"{path}: {problem}")
    groups = [PromptGroup(e.prompt_ids, e.response_ids) for e in examples]
    kept, trunc = truncate_groups(groups, max_length=config.max_length,
                                  max_prompt_length=config.max_prompt_length,
                                  max_packed_length=config.pack_length,
                                  ids=[e.record_id or e.index for e in examples])
    if trunc.n_skipped:
        warnings.warn(f"{path}: {trunc.summary()}", stacklevel=2)
    examples = [examples[i] for i in trunc.kept_indices]
    return examples, kept, truncation_dict(trunc)


def _shadows(groups: list[PromptGroup], seed: int) -> list[PromptGroup]:
    """KTO's mismatched pairs: example i's prompt with the response of a fixed other example
    (a seeded derangement), so the KL estimate is reproducible and cacheable."""
    n = len(groups)
    if n < 2:
        raise ValueError("kto needs at least 2 records (its KL estimate pairs a prompt with "
                         "another record's response)")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    partner = {order[i]: order[(i + 1) % n] for i in range(n)}
    return [PromptGroup(g.prompt_ids, [groups[partner[i]].response_ids[0]])
            for i, g in enumerate(groups)]


def _items(examples, groups, ref: torch.Tensor | None, shadows, shadow_ref: torch.Tensor | None
           ) -> list[_Item]:
    return [_Item(e, g, None if ref is None else ref[i],
                  None if shadows is None else shadows[i],
                  None if shadow_ref is None else shadow_ref[i])
            for i, (e, g) in enumerate(zip(examples, groups, strict=True))]


def train_preference(config: PreferenceConfig, *, model: torch.nn.Module | None = None,
                     tokenizer: Any = None, callbacks: Sequence[Callback] = ()
                     ) -> PreferenceResult:
    """Run one preference training job (module docstring). ``model``/``tokenizer`` may be given
    directly instead of ``config.model``; ``callbacks`` go to :func:`~prefkit.train.loop.fit`."""
    from ..models.load import LoraSettings, load_model

    if not config.data:
        raise ValueError("no training data: set data (a records file)")
    task = PreferenceTask(config.loss, beta=config.beta, pack_length=config.pack_length,
                          chunk_size=config.chunk_size)
    if model is None:
        if not config.model:
            raise ValueError("no model: set model (a checkpoint directory or a model file)")
        lora = LoraSettings(r=config.lora_r, alpha=config.lora_alpha) if config.lora else None
        model, tokenizer = load_model(config.model, dtype=config.dtype, lora=lora,
                                      seed=config.seed)
    if tokenizer is None:
        raise ValueError("a model passed directly needs its tokenizer too")
    task.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    accelerator = make_accelerator(config)

    report = DataReport()
    examples, groups, trunc = _load_examples(config.data, tokenizer, task, config, report)
    eval_examples: list[PreferenceExample] = []
    eval_groups: list[PromptGroup] = []
    if config.eval_data:
        eval_examples, eval_groups, _ = _load_examples(config.eval_data, tokenizer, task, config,
                                                       DataReport())
    elif config.eval_fraction > 0:
        n_eval = max(1, int(round(config.eval_fraction * len(examples))))
        order = list(range(len(examples)))
        random.Random(config.seed).shuffle(order)
        held = set(order[:n_eval])
        eval_examples = [e for i, e in enumerate(examples) if i in held]
        eval_groups = [g for i, g in enumerate(groups) if i in held]
        examples = [e for i, e in enumerate(examples) if i not in held]
        groups = [g for i, g in enumerate(groups) if i not in held]
    if not examples:
        raise ValueError(f"{config.data}: no usable training records ({report.to_dict()})")

    shadows = _shadows(groups, config.seed) if task.kind == "unpaired" else None
    eval_shadows = (_shadows(eval_groups, config.seed + 1)
                    if task.kind == "unpaired" and eval_groups else None)
    if not (config.sharding == "fsdp2" and accelerator.num_processes > 1):
        model.to(accelerator.device)  # FSDP2 moves only each process's shards there
    if use_attention(model, config.attention, accelerator.device) == "flex":
        task.mask_dtype = None  # the block mask is built from the segment ids on the device
    ref_info = None
    ref = shadow_ref = eval_ref = eval_shadow_ref = None
    if task.needs_reference:
        # one pass (one weights hash, one cache file) over every group that needs reference
        # log-probs: training groups, KTO's shadow pairs, and their eval counterparts
        sets = [groups, shadows or [], eval_groups, eval_shadows or []]
        computed = reference_logps(
            model, [g for part in sets for g in part], reference=config.reference,
            cache_dir=config.reference_cache, pad_id=task.pad_id, chunk_size=config.chunk_size,
            accelerator=accelerator, dtype=config.dtype, sharding=config.sharding)
        ref_info = {**computed.info(), "groups": len(groups)}
        ref, shadow_ref, eval_ref, eval_shadow_ref = (
            part if len(part) else None
            for part in torch.split(computed.sums, [len(p) for p in sets]))

    train_items = _items(examples, groups, ref, shadows, shadow_ref)
    train_loader = build_dataloader(train_items, config, collate_fn=task.collate,
                                    shuffle=config.shuffle)
    eval_loader = None
    if eval_groups:
        eval_items = _items(eval_examples, eval_groups, eval_ref, eval_shadows, eval_shadow_ref)
        eval_loader = build_dataloader(eval_items, config, collate_fn=task.collate,
                                       shuffle=False)
    model.train()
    result = fit(model, task.step, train_loader, config, eval_data=eval_loader,
                 accelerator=accelerator, callbacks=callbacks)
    report_dict = report.to_dict()
    report_dict["train"] = len(examples)
    report_dict["eval"] = len(eval_examples)
    return PreferenceResult(fit=result, data=report_dict, truncation=trunc, loss=task.spec.name,
                            kind=task.kind, reference=ref_info, model=model, tokenizer=tokenizer,
                            reference_sums=ref)


def save_policy(result: PreferenceResult, folder: str | Path) -> Path:
    """Save the trained policy and tokenizer (LoRA as adapters that record their base model's
    absolute path: :func:`prefkit.models.load.save_model`); loads from any directory."""
    from ..models.load import save_model

    return save_model(result.model, result.tokenizer, folder)
