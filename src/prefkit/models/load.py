"""Load a causal LM and its tokenizer: a local HF checkpoint, or a tiny model from a config file.

``spec`` given to :func:`load_model` is either

* a directory holding a Hugging Face checkpoint (``config.json`` + weights + tokenizer files),
  loaded with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and ``local_files_only=True``; or
* a ``.json`` / ``.yaml`` / ``.yml`` model file describing a tiny model built from scratch with
  random weights (seeded)::

      tokenizer: tok            # REQUIRED: a saved tokenizer directory, relative to this file
      model_type: llama         # optional, default llama
      hidden_size: 64           # llama: the arguments of tiny_llama_config(), and any other
      num_layers: 2             #   LlamaConfig field (tie_word_embeddings, rope_theta, ...)
      num_heads: 4
      intermediate_size: 256
      vocab_size: 300           # optional, default len(tokenizer)

  For another ``model_type`` the remaining keys go to ``AutoConfig.for_model``. Unless the file
  sets them, ``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` come from the tokenizer.

A directory may also hold LoRA adapters (``adapter_config.json``, as :func:`save_model` writes
them): the base model is loaded from the path the adapters record, which :func:`save_model`
makes absolute (or from ``base_model/`` inside the folder, where :func:`save_model` puts a base
that exists only in memory), so a saved policy loads from any working directory. The adapters
are then MERGED into the base weights (``W + (alpha / r) B A``): the loaded model is a plain
model that computes what the saved policy computes (to float rounding; in the weight dtype),
every weight trainable like any checkpoint's. Continuing to train a saved LoRA policy thus
starts from that policy: with ``lora=`` NEW adapters go on top of the merged weights, and
:func:`reference_context` (adapters disabled) gives the saved policy back -- the reference of a
run that continues it is its starting point, not the bare base, and there is still no second
copy in memory. (Saving such a model stores the merged weights as its base: ``base_model/``.)

Nothing is ever downloaded. LoRA (peft) is optional; :func:`reference_context` turns the
adapters off so the same weights serve as the frozen reference model.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

__all__ = [
    "LoraSettings",
    "apply_lora",
    "format_prompt",
    "load_model",
    "load_tokenizer",
    "reference_context",
    "save_model",
    "tiny_llama_config",
]

logger = logging.getLogger(__name__)

CONFIG_SUFFIXES = (".json", ".yaml", ".yml")
ADAPTER_CONFIG = "adapter_config.json"
BASE_MODEL_DIR = "base_model"  # where save_model puts a LoRA base that exists only in memory


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapters (peft) on the attention projections.

    Fields: ``r`` rank; ``alpha`` scaling numerator (scale = alpha / r); ``dropout`` on the
    adapter input; ``target_modules`` module-name suffixes to adapt.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


def tiny_llama_config(
    vocab_size: int,
    hidden_size: int = 256,
    num_layers: int = 4,
    num_heads: int = 4,
    intermediate_size: int = 1024,
    max_position_embeddings: int = 1024,
    **overrides: Any,
) -> LlamaConfig:
    """A small ``LlamaConfig`` (multi-head attention, untied embeddings unless overridden)."""
    fields: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": False,
    }
    fields.update(overrides)
    return LlamaConfig(**fields)


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(
            f"dtype must be 'float32' or 'bfloat16' (a torch float dtype), not {dtype!r}"
        )
    return value


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a saved tokenizer directory (local files only); pad defaults to eos if unset."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer path does not exist: {path}")
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _read_model_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: a model file must hold a mapping, got {type(data).__name__}")
    data = dict(data)
    if "tokenizer" not in data:
        raise ValueError(f"{path}: missing field 'tokenizer' (a saved tokenizer directory)")
    return data


def _config_from_file(path: Path, tokenizer: PreTrainedTokenizerBase, data: dict[str, Any]):
    data.pop("tokenizer")
    model_type = data.pop("model_type", "llama")
    data.setdefault("vocab_size", len(tokenizer))
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            data.setdefault(name, value)
    try:
        if model_type == "llama":
            return tiny_llama_config(**data)
        return AutoConfig.for_model(model_type, **data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: invalid model config: {err}") from err


def _check_vocab(model: nn.Module, tokenizer: PreTrainedTokenizerBase, where: Path) -> None:
    n_embed = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > n_embed:
        raise ValueError(
            f"{where}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has "
            f"only {n_embed} rows (vocab_size); token ids >= {n_embed} would be out of range"
        )


def apply_lora(model: PreTrainedModel, settings: LoraSettings) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters; only adapter weights stay trainable."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def load_model(
    spec: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    lora: LoraSettings | None = None,
    attn_implementation: str = "sdpa",
    seed: int = 0,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` from a checkpoint directory or a tiny-model file.

    Args:
        spec: checkpoint directory or ``.json``/``.yaml`` model file (see the module docs).
        dtype: the WEIGHT dtype, ``"float32"`` (default) or ``"bfloat16"``; the model then
            computes in that dtype (no autocast). Log-probs are reduced in float32 anyway.
        lora: add LoRA adapters (the base weights are frozen) when given.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"``; both work with the packed
            4D masks of :mod:`prefkit.models.packing`. An architecture without sdpa attention
            (Gemma 2) gets ``"eager"``, with a logged reason.
        seed: seeds the random init of a model built from a file and of the LoRA adapters,
            without touching the global RNG state.

    The model is returned in eval mode; call ``model.train()`` to train.
    """
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"model path does not exist: {path}")
    torch_dtype = _torch_dtype(dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if path.is_dir():
            tokenizer = load_tokenizer(path)
            adapters = (path / ADAPTER_CONFIG).is_file()
            # an absolute name_or_path: LoRA adapters saved from this model record it as their
            # base, so they load from any working directory
            source = str(_adapter_base(path) if adapters else path.resolve())
            model = with_attention_fallback(
                lambda impl: AutoModelForCausalLM.from_pretrained(
                    source, local_files_only=True, dtype=torch_dtype, attn_implementation=impl),
                attn_implementation, str(path))
            if adapters:
                model = _merge_adapters(model, path)
        elif path.suffix.lower() in CONFIG_SUFFIXES:
            data = _read_model_file(path)
            tokenizer_dir = (path.parent / str(data["tokenizer"])).resolve()
            if not tokenizer_dir.exists():
                raise FileNotFoundError(
                    f"{path}: tokenizer directory does not exist: {tokenizer_dir}"
                )
            tokenizer = load_tokenizer(tokenizer_dir)
            config = _config_from_file(path, tokenizer, data)
            model = with_attention_fallback(
                lambda impl: AutoModelForCausalLM.from_config(
                    config, dtype=torch_dtype, attn_implementation=impl),
                attn_implementation, f"{path} ({config.model_type})")
        else:
            raise ValueError(
                f"{path}: expected a checkpoint directory or a model file ending in "
                f"{', '.join(CONFIG_SUFFIXES)}"
            )
        _check_vocab(model, tokenizer, path)
        model.eval()
        if lora is not None:
            model = apply_lora(model, lora)
    return model, tokenizer


def with_attention_fallback(build: Callable[[str], PreTrainedModel], attn_implementation: str,
                    where: str) -> PreTrainedModel:
    """``build(attn_implementation)``, or ``build("eager")`` with a logged reason when the
    architecture has no sdpa attention (Gemma 2: its attention logit soft-capping needs the
    eager path); both take the packed 4D masks (eager gets an additive one)."""
    try:
        return build(attn_implementation)
    except ValueError as err:
        if attn_implementation != "sdpa" or "scaled_dot_product_attention" not in str(err):
            raise
    logger.info("%s: this architecture has no sdpa attention in transformers; using eager "
                "attention (same results, additive float masks)", where)
    return build("eager")


def _merge_adapters(model: PreTrainedModel, folder: Path) -> PreTrainedModel:
    """``model`` (the base) with the LoRA adapters saved in ``folder`` merged into its weights
    (module docstring): a plain model, every parameter trainable. Its ``name_or_path`` is
    cleared -- the merged weights exist on no disk -- so :func:`save_model` stores them as the
    base of adapters trained on top."""
    from peft import PeftModel

    merged = PeftModel.from_pretrained(model, str(folder.resolve())).merge_and_unload()
    merged.config._name_or_path = ""
    merged.name_or_path = ""
    for p in merged.parameters():
        p.requires_grad_(True)
    return merged


def _adapter_base(folder: Path) -> Path:
    """The base-model folder of the LoRA adapters saved in ``folder``: the recorded path (as
    is, relative paths from the current directory), else ``folder/base_model``."""
    recorded = json.loads((folder / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    candidates = [Path(recorded)] if recorded else []
    candidates.append(folder / BASE_MODEL_DIR)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"{folder}: LoRA adapters whose base model {recorded!r} is not a model folder here "
        f"(relative paths count from the current directory, {Path.cwd()}); run from the folder "
        "the policy was trained in, or edit base_model_name_or_path in "
        f"{folder / ADAPTER_CONFIG}")


def save_model(model: nn.Module, tokenizer: PreTrainedTokenizerBase | None,
               folder: str | Path) -> Path:
    """Save a causal LM (DDP-style ``.module`` wrappers unwrapped) and its tokenizer so that
    :func:`load_model` loads ``folder`` from any working directory.

    LoRA (peft) models are saved as adapters that record their base model's absolute path
    (:func:`load_model` gives models an absolute ``name_or_path``). A base that exists nowhere on
    disk (built from a ``.json``/``.yaml`` model file, or in memory) is saved into
    ``folder/base_model`` (adapters removed, not merged) and recorded there.
    """
    from peft import PeftModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    inner = getattr(model, "module", model)
    if isinstance(inner, PeftModel):
        config = inner.peft_config[inner.active_adapter]
        base = config.base_model_name_or_path
        if base and (Path(base) / "config.json").is_file():
            config.base_model_name_or_path = str(Path(base).resolve())
        else:
            import copy

            base_dir = folder / BASE_MODEL_DIR
            copy.deepcopy(inner).unload().save_pretrained(base_dir)
            if tokenizer is not None:
                tokenizer.save_pretrained(base_dir)
            config.base_model_name_or_path = str(base_dir.resolve())
    inner.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def reference_context(model: nn.Module) -> contextlib.AbstractContextManager:
    """Context in which ``model`` acts as its own reference: LoRA adapters disabled.

    A no-op for models without peft adapters (then the caller keeps the starting weights: a
    frozen copy, or log-probs computed before the first update). For a saved LoRA policy
    loaded by :func:`load_model` the saved adapters are part of the (merged) weights, so the
    reference is that policy, also when new adapters train on top. Unwraps DDP-style
    ``.module`` wrappers.
    """
    from peft import PeftModel

    inner = getattr(model, "module", model)
    if isinstance(inner, PeftModel):
        return inner.disable_adapter()
    return contextlib.nullcontext()


def format_prompt(
    tokenizer: PreTrainedTokenizerBase, prompt: str | Sequence[Mapping[str, str]]
) -> str:
    """Prompt text: a plain string as is; ``{role, content}`` messages via the chat template
    with the generation prompt (:func:`prefkit.models.encoding.render_prompt` with
    ``chat_template="never"``: what a raw-text completion request sends)."""
    from .encoding import render_prompt

    return render_prompt(tokenizer, prompt, "never")[0]
