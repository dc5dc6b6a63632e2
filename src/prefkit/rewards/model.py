"""The reward model object: a transformer body (no LM head) plus a reward head.

:class:`RewardModel` wraps the decoder of any ``AutoModelForCausalLM`` (``get_decoder()``,
e.g. ``LlamaModel``) and a head from :mod:`prefkit.rewards.heads`. The reward of a
response is read from the final hidden state of its LAST token (for training data that is the
EOS appended by :func:`~prefkit.models.encoding.tokenize_example`).

Batch layouts (all give the same rewards to ~1e-6):

* a :class:`~prefkit.models.packing.PackedBatch` -- prompt-shared rows
  ``[prompt | resp_1 | ... | resp_K]``: ONE forward computes each prompt once for its K
  responses; the last token of (group g, response k) is found from the batch itself (its
  completion tokens' ``logit_positions``: the row, and the largest column + 1);
* a :class:`~prefkit.models.packing.PaddedBatch` (one row per (group, response));
* plain ``input_ids`` + 2D ``attention_mask`` (:meth:`RewardModel.forward_padded`), left or
  right padded: positions are recomputed from the mask and the last attended token is used.

``model(batch)`` / ``model(input_ids, attention_mask)`` dispatches to these, so under
DDP/FSDP call the WRAPPER (``ddp_model(batch)``), never ``ddp_model.module.forward_packed``.
Save/restore: :meth:`RewardModel.save_pretrained` / :meth:`RewardModel.from_pretrained`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

from prefkit.models.bounded import bound_text
from prefkit.models.encoding import tokenize_example
from prefkit.models.load import (
    LoraSettings,
    load_model,
    load_tokenizer,
    with_attention_fallback,
)
from prefkit.models.logprobs import model_attention_mask
from prefkit.models.packing import PackedBatch, PaddedBatch, PromptGroup
from prefkit.models.prune import hidden_at
from prefkit.rewards.heads import HELPSTEER2_ATTRIBUTES, RewardHead, build_head

__all__ = ["HEAD_FILE", "CONFIG_FILE", "RewardModel", "RewardOutput"]

HEAD_FILE = "reward_head.safetensors"
CONFIG_FILE = "reward_config.json"
FORMAT_VERSION = 1


@dataclass
class RewardOutput:
    """Rewards of G groups with up to Kmax responses each (float32; 0 where absent).

    Fields:
        rewards: ``[G, Kmax]`` the scalar reward (ensemble: member mean; ODIN: the quality
            head; GPM: 0 -- use ``embeddings`` with :func:`~prefkit.rewards.gpm_logit`).
        mask: ``[G, Kmax]`` bool, True where response k of group g exists.
        attributes: ``[G, Kmax, A]`` per-attribute predictions (multi head).
        embeddings: ``[G, Kmax, D]`` preference embeddings (GPM head).
        length_rewards: ``[G, Kmax]`` the length head (ODIN).
        members: ``[G, Kmax, E]`` each ensemble member's reward (ensemble head).
        rewards_min: ``[G, Kmax]`` the smallest member reward (ensemble head).
        rewards_std: ``[G, Kmax]`` the std over members (ensemble head).
        features: ``[G, Kmax, H]`` the pooled hidden states (``return_features=True``).
    """

    rewards: torch.Tensor
    mask: torch.Tensor
    attributes: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None
    length_rewards: torch.Tensor | None = None
    members: torch.Tensor | None = None
    rewards_min: torch.Tensor | None = None
    rewards_std: torch.Tensor | None = None
    features: torch.Tensor | None = None

    @classmethod
    def cat(cls, outputs: Sequence[RewardOutput]) -> RewardOutput:
        """Concatenate along the group dimension (all parts must have the same Kmax)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            parts = [getattr(o, f.name) for o in outputs]
            values[f.name] = None if any(p is None for p in parts) else torch.cat(parts)
        return cls(**values)

    def index(self, index: torch.Tensor) -> RewardOutput:
        """Select groups ``index`` (a ``[G']`` long tensor) from every field."""
        return RewardOutput(
            **{
                f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                for f in fields(self)
            }
        )


def _decoder_of(model: nn.Module) -> nn.Module:
    """The transformer body of a causal LM (or of a peft model wrapping one)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder = None
    with contextlib.suppress(AttributeError, NotImplementedError, ValueError):
        decoder = inner.get_decoder()
    if decoder is None or decoder is inner:
        decoder = getattr(inner, getattr(inner, "base_model_prefix", ""), None)
    if not isinstance(decoder, nn.Module) or decoder is inner:
        raise ValueError(f"cannot find the decoder (body) of {type(model).__name__}")
    return decoder


def _hidden_size(backbone: nn.Module) -> int:
    config = getattr(backbone, "config", None)
    size = getattr(config, "hidden_size", None)
    if size is None:
        size = backbone.get_input_embeddings().embedding_dim
    return int(size)


def _merged_state(backbone: nn.Module) -> dict[str, torch.Tensor] | None:
    """The backbone's state dict with active LoRA adapters merged into plain weights (the live
    model is not touched), or None if it has no peft LoRA layers."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    lora = {n: m for n, m in backbone.named_modules() if isinstance(m, LoraLayer)}
    if not lora:
        return None
    state = backbone.state_dict()
    merged = {
        key.replace(".base_layer.", "."): value.detach().clone()
        for key, value in state.items()
        if ".lora_" not in key
    }
    for name, module in lora.items():
        if module.merged or module.disable_adapters:
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            if module.use_dora.get(adapter, False):
                raise NotImplementedError("saving DoRA adapters merged is not supported")
            weight = merged[f"{name}.weight"]
            with torch.no_grad():
                weight += module.get_delta_weight(adapter).to(weight.dtype)
    return merged


def _positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting only attended tokens (left padding starts at 0 too)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _last_attended(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[R]`` column of the last token with ``attention_mask == 1`` (any padding side)."""
    cols = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = torch.where(attention_mask.bool(), cols, -1).amax(dim=1)
    if bool((last < 0).any()):
        raise ValueError("a row of attention_mask has no attended token")
    return last


class RewardModel(nn.Module):
    """A reward model: ``backbone`` (a decoder body returning ``last_hidden_state``) + ``head``.

    Args:
        backbone: e.g. ``causal_lm.get_decoder()``; with LoRA, the decoder of a peft model
            (its adapter layers are injected in place, so only the adapters train).
        head: a :class:`~prefkit.rewards.heads.RewardHead`; always trainable.
        tokenizer: optional; used by :meth:`score` and :meth:`save_pretrained` by default.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: RewardHead,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(
        cls,
        spec: str | Path,
        *,
        head: str = "scalar",
        attributes: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        gpm_dim: int = 8,
        ensemble_size: int = 4,
        dtype: str | torch.dtype = "float32",
        lora: LoraSettings | None = None,
        attn_implementation: str = "sdpa",
        seed: int = 0,
    ) -> tuple[RewardModel, PreTrainedTokenizerBase]:
        """A fresh reward model on the body of :func:`~prefkit.models.load.load_model`'s LM.

        ``spec`` is a checkpoint directory or a tiny-model file; the LM head is dropped.
        ``head``: ``"scalar"``, ``"multi"`` (``attributes``, default the five HelpSteer2
        ones, and ``weights``, default uniform), ``"gpm"`` (``gpm_dim``), ``"odin"`` or
        ``"ensemble"`` (``ensemble_size`` members). With ``lora`` the base weights are frozen
        and the adapters and the head train. ``seed`` seeds the head (and a model built from a
        file, and the adapters). Returned in eval mode; call ``.train()`` to train.
        """
        lm, tokenizer = load_model(
            spec, dtype=dtype, lora=lora, attn_implementation=attn_implementation, seed=seed
        )
        backbone = _decoder_of(lm)
        options: dict[str, Any] = {}
        if head == "multi":
            options = {"names": list(attributes or HELPSTEER2_ATTRIBUTES), "weights": weights}
        elif head == "gpm":
            options = {"dim": gpm_dim}
        elif head == "ensemble":
            options = {"n": ensemble_size, "seed": seed}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            reward_head = build_head(head, _hidden_size(backbone), **options)
        model = cls(backbone, reward_head, tokenizer=tokenizer)
        model.eval()
        return model, tokenizer

    @property
    def head_kind(self) -> str:
        """The head's kind: ``scalar``, ``multi``, ``gpm``, ``odin`` or ``ensemble``."""
        return self.head.kind

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ forward paths
    def forward(
        self,
        batch: PackedBatch | PaddedBatch | torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        input_ids: torch.Tensor | None = None,
        return_features: bool = False,
    ) -> RewardOutput:
        """Dispatch: a ``PackedBatch`` -> :meth:`forward_packed`; a ``PaddedBatch`` -> one
        row per (group, response); ``input_ids`` (positional or keyword) + ``attention_mask``
        -> :meth:`forward_padded`. Call this (``model(...)``) through DDP/FSDP wrappers."""
        if isinstance(batch, PackedBatch):
            return self._packed(batch, return_features)
        if isinstance(batch, PaddedBatch):
            return self._padded_batch(batch, return_features)
        ids = batch if isinstance(batch, torch.Tensor) else input_ids
        if ids is None:
            raise TypeError("RewardModel expects a PackedBatch, a PaddedBatch or input_ids")
        if attention_mask is None:
            attention_mask = torch.ones_like(ids)
        return self._padded(ids, attention_mask, return_features)

    def forward_packed(self, batch: PackedBatch, *, return_features: bool = False) -> RewardOutput:
        """Rewards ``[G, Kmax]`` of a prompt-shared packed batch, in ONE forward."""
        return self(batch, return_features=return_features)

    def forward_padded(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        *,
        return_features: bool = False,
    ) -> RewardOutput:
        """Rewards of padded rows (G = rows, Kmax = 1), left or right padding: position ids
        count attended tokens only and the reward is read at the last attended token."""
        return self(input_ids, attention_mask, return_features=return_features)

    def _hidden_at(
        self, input_ids: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor,
        rows: torch.Tensor, cols: torch.Tensor,
    ) -> torch.Tensor:
        """Final hidden states at ``(rows, cols)``; the backbone's last layer runs only there
        (:func:`prefkit.models.prune.hidden_at`)."""
        return hidden_at(self.backbone, rows, cols, input_ids=input_ids, attention_mask=mask,
                         position_ids=position_ids, use_cache=False)

    def _apply_head(
        self,
        features: torch.Tensor,
        present: torch.Tensor,
        shape: tuple[int, int],
        return_features: bool,
    ) -> RewardOutput:
        """Run the head on ``features [P, H]`` (the present slots) and scatter into
        ``[G, Kmax, ...]`` with zeros where ``present`` (``[G*Kmax]`` bool) is False."""
        features = features.float()
        values = dict(self.head(features))
        if return_features:
            values["features"] = features
        flat_index = present.nonzero().squeeze(-1)
        out: dict[str, torch.Tensor] = {}
        for name, value in values.items():
            full = value.new_zeros((shape[0] * shape[1], *value.shape[1:]))
            full = full.index_copy(0, flat_index, value)
            out[name] = full.view(*shape, *value.shape[1:])
        return RewardOutput(mask=present.view(shape), **out)

    def _packed(self, batch: PackedBatch, return_features: bool) -> RewardOutput:
        mask = model_attention_mask(self.backbone, batch)
        shape = (batch.n_groups, batch.k_max)
        n_slots = shape[0] * shape[1]
        rows, cols = batch.logit_positions[:, 0], batch.logit_positions[:, 1]
        # A segment's smallest predicting column is its group's last prompt token (it predicts
        # the first token of every response); responses follow it contiguously, so response k
        # ends at that column + len(resp_0) + ... + len(resp_k). (For a response of 2+ tokens
        # this equals its largest predicting column + 1; a 1-token response has only the
        # shared prompt column, so "largest + 1" would point at a sibling.)
        big = torch.iinfo(torch.long).max
        start = torch.full((n_slots,), big, dtype=torch.long, device=cols.device)
        start = start.scatter_reduce(0, batch.segment, cols, reduce="amin")
        row = torch.zeros(n_slots, dtype=torch.long, device=rows.device)
        row = row.scatter(0, batch.segment, rows)
        ends = batch.completion_lengths.to(cols.device).cumsum(dim=1).flatten()
        present = batch.response_mask.to(cols.device).flatten()
        features = self._hidden_at(batch.input_ids, mask, batch.position_ids, row[present],
                                   start[present] + ends[present])
        return self._apply_head(features, present, shape, return_features)

    def _padded(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_features: bool
    ) -> RewardOutput:
        if attention_mask.dim() != 2:
            raise ValueError(f"attention_mask must be [rows, length], not {attention_mask.dim()}D")
        positions = _positions_from_mask(attention_mask)
        last = _last_attended(attention_mask)
        n = input_ids.shape[0]
        features = self._hidden_at(input_ids, attention_mask, positions,
                                   torch.arange(n, device=input_ids.device), last)
        present = torch.ones(n, dtype=torch.bool, device=input_ids.device)
        return self._apply_head(features, present, (n, 1), return_features)

    def _padded_batch(self, batch: PaddedBatch, return_features: bool) -> RewardOutput:
        rows = self._padded(batch.input_ids, batch.attention_mask, return_features)
        row_of = batch.row_of.flatten()
        present = row_of >= 0
        shape = (batch.n_groups, batch.k_max)
        values: dict[str, Any] = {}
        for f in fields(RewardOutput):
            value = getattr(rows, f.name)
            if f.name == "mask" or value is None:
                continue
            value = value[:, 0]
            full = value.new_zeros((shape[0] * shape[1], *value.shape[1:]))
            full[present] = value[row_of[present]]
            values[f.name] = full.view(*shape, *value.shape[1:])
        return RewardOutput(mask=present.view(shape), **values)

    # ------------------------------------------------------------------ scoring
    @staticmethod
    def _group(tokenizer: PreTrainedTokenizerBase, prompt: Any, response: Any, i: int,
               chat_template: str = "auto"):
        example = tokenize_example(tokenizer, prompt, [response], index=i,
                                   chat_template=chat_template)
        prompt_ids, completion = list(example.prompt_ids), list(example.response_ids[0])
        if not completion and tokenizer.eos_token_id is not None:
            completion = [tokenizer.eos_token_id]  # an empty response is scored at EOS
        if not prompt_ids and len(completion) > 1:
            # Only the full sequence matters for a reward: move one token to the prompt.
            prompt_ids, completion = completion[:1], completion[1:]
        if not prompt_ids or not completion:
            raise ValueError(f"example {i}: prompt + response tokenize to fewer than 2 tokens")
        return PromptGroup(prompt_ids, [completion])

    @torch.no_grad()
    def score_outputs(
        self,
        prompts: Sequence[Any],
        responses: Sequence[Any],
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        chat_template: str = "auto",
    ) -> RewardOutput:
        """:meth:`score` returning the full :class:`RewardOutput` (G = N, Kmax = 1)."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ValueError("score needs a tokenizer (pass tokenizer=...)")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if max_length is not None:  # tokenize only what the budget can keep (bounded memory)
            prompts = [bound_text(tokenizer, p, max_length, keep="tail")[0] for p in prompts]
            responses = [bound_text(tokenizer, r, max_length, keep="head")[0] for r in responses]
        pairs = enumerate(zip(prompts, responses, strict=True))
        groups = [self._group(tokenizer, p, r, i, chat_template) for i, (p, r) in pairs]
        if max_length is not None:
            groups = [_truncate(g, max_length, i) for i, g in enumerate(groups)]
        pad_id = tokenizer.pad_token_id
        if pad_id is None:
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        from .scoring import packed_outputs

        order: list[int] = []
        outputs = []
        for idx, out in packed_outputs(self, groups, pad_id=pad_id, batch_size=batch_size):
            order.extend(idx)
            outputs.append(out)
        device = self.device
        if not outputs:
            empty = torch.zeros((0, 1), device=device)
            return RewardOutput(rewards=empty, mask=empty.bool())
        inverse = torch.argsort(torch.tensor(order, device=device))
        return RewardOutput.cat(outputs).index(inverse)

    def score(
        self,
        prompts: Sequence[Any],
        responses: Sequence[Any],
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 16,
        max_length: int | None = None,
        chat_template: str = "auto",
    ) -> torch.Tensor:
        """Rewards ``[N]`` of ``(prompts[i], responses[i])`` in input order, no grad, eval mode.

        Tokenized like training data (:func:`~prefkit.models.encoding.tokenize_example`: the
        prompt once -- through the chat template for messages, and for plain text when the
        tokenizer has one and ``chat_template="auto"`` -- the completion is what follows, EOS
        appended); sequences are packed ``batch_size`` at a time (the result does not depend
        on ``batch_size``). ``max_length`` keeps the LAST ``max_length - 1`` prompt tokens and
        cuts the response so the sequence fits (only a window of each text proportional to
        ``max_length`` is tokenized, so memory does not grow with the input's size).
        ``tokenizer`` defaults to ``self.tokenizer``.
        """
        out = self.score_outputs(
            prompts, responses, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
            chat_template=chat_template,
        )
        return out.rewards[:, 0]

    # ------------------------------------------------------------------ save / load
    def save_pretrained(
        self, folder: str | Path, tokenizer: PreTrainedTokenizerBase | None = None
    ) -> Path:
        """Write the backbone (HF ``save_pretrained`` of the decoder: ``config.json`` +
        weights, loadable with ``AutoModel``), ``reward_head.safetensors``,
        ``reward_config.json`` and the tokenizer (``tokenizer`` or ``self.tokenizer``).

        LoRA adapters are MERGED into the saved backbone weights (without touching the live
        model), so the folder is a plain model; pass ``lora=`` to :meth:`from_pretrained` to
        continue with fresh adapters.
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if not hasattr(self.backbone, "save_pretrained"):
            raise TypeError(f"{type(self.backbone).__name__} has no save_pretrained")
        self.backbone.save_pretrained(str(folder), state_dict=_merged_state(self.backbone))
        head_state = {k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(head_state, str(folder / HEAD_FILE))
        dtype = next(self.backbone.parameters()).dtype
        config = {
            "format": FORMAT_VERSION,
            "head": self.head.kind,
            "hidden_size": self.head.hidden_size,
            "head_config": self.head.config(),
            "backbone_class": type(self.backbone).__name__,
            "dtype": str(dtype).removeprefix("torch."),
        }
        (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
        return folder

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        dtype: str | torch.dtype | None = None,
        attn_implementation: str = "sdpa",
        lora: LoraSettings | None = None,
        seed: int = 0,
    ) -> RewardModel:
        """Restore a :meth:`save_pretrained` folder (local files only), in eval mode.

        ``dtype`` defaults to the saved one; ``lora`` adds fresh adapters (seeded by
        ``seed``) on the restored backbone. ``model.tokenizer`` is the saved tokenizer, or
        None when the folder has none.
        """
        import transformers

        folder = Path(folder)
        config_path = folder / CONFIG_FILE
        if not config_path.exists():
            raise FileNotFoundError(f"{folder}: no {CONFIG_FILE}; not a saved RewardModel")
        config = json.loads(config_path.read_text())
        torch_dtype = dtype if dtype is not None else config.get("dtype", "float32")
        if isinstance(torch_dtype, str):
            torch_dtype = getattr(torch, torch_dtype)
        backbone_cls = getattr(transformers, config.get("backbone_class", ""), None)
        if backbone_cls is None:
            backbone_cls = transformers.AutoModel
        backbone = with_attention_fallback(
            lambda impl: backbone_cls.from_pretrained(
                str(folder), local_files_only=True, dtype=torch_dtype, attn_implementation=impl),
            attn_implementation, str(folder))
        if lora is not None:
            backbone = _add_lora(backbone, lora, seed)
        head = build_head(config["head"], int(config["hidden_size"]), **config["head_config"])
        head.load_state_dict(load_file(str(folder / HEAD_FILE)))
        tokenizer = None
        if (folder / "tokenizer_config.json").exists() or (folder / "tokenizer.json").exists():
            tokenizer = load_tokenizer(folder)
        model = cls(backbone, head, tokenizer=tokenizer)
        model.eval()
        return model


def _truncate(group: PromptGroup, max_length: int, i: int) -> PromptGroup:
    """Fit ``prompt + response`` into ``max_length``: keep the last ``max_length - 1`` prompt
    tokens, then cut the response from the right."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    prompt = group.prompt_ids[-(max_length - 1) :]
    response = group.response_ids[0][: max_length - len(prompt)]
    return PromptGroup(prompt, [response])


def _add_lora(backbone: nn.Module, settings: LoraSettings, seed: int) -> nn.Module:
    """Inject LoRA adapters into a decoder body in place (base weights frozen). Unlike
    :func:`~prefkit.models.load.apply_lora` (a causal-LM peft wrapper) this needs no LM head."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(backbone, config).get_base_model()
