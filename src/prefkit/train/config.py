"""Configuration of the training loop, and YAML + CLI-override merging for any config dataclass.

A config is a documented dataclass; every field carries ``metadata={"help": ...}`` so the same
text can become CLI help. A YAML file and ``key=value`` overrides map onto the same fields:

    cfg = load_config("dpo.yaml", learning_rate="5e-7", max_steps=100)

Strings are coerced to the field's type (``"5e-7"`` -> ``5e-07``, ``"true"`` -> ``True``,
``"jsonl,tensorboard"`` -> ``["jsonl", "tensorboard"]``), so values from a command line and
from YAML (where PyYAML reads ``1e-5`` as a *string*) behave the same. Unknown keys raise
:class:`ConfigError` naming the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "ConfigError",
    "LoopConfig",
    "config_from_dict",
    "config_help",
    "option",
    "load_config",
    "parse_overrides",
]

T = TypeVar("T")

SCHEDULERS = ("constant", "linear", "cosine")
PRECISIONS = ("no", "bf16")
TRACKERS = ("jsonl", "tensorboard", "wandb")


def option(help: str, default: Any = None) -> Any:
    """A config field with its help text (the text CLI help and :func:`config_help` show)."""
    return field(default=default, metadata={"help": help})


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key and its source."""


@dataclass
class LoopConfig:
    """Settings of :func:`prefkit.train.loop.fit`, the one loop every trainer uses."""

    output_dir: str = field(
        default="runs/train",
        metadata={"help": "Directory for metrics.jsonl, tracker logs and checkpoint-{step}/ dirs."},
    )
    max_steps: int | None = field(
        default=None,
        metadata={
            "help": "Number of optimizer steps. When set (> 0) it wins over num_epochs and the "
            "data is cycled as often as needed."
        },
    )
    num_epochs: int = field(
        default=1,
        metadata={"help": "Passes over train_data when max_steps is not set (needs len(data))."},
    )
    batch_size: int = field(
        default=8,
        metadata={
            "help": "Per-process micro-batch size in examples (used by build_dataloader; the "
            "global batch of one optimizer step is batch_size * gradient_accumulation_steps * "
            "num_processes)."
        },
    )
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={"help": "Micro-batches per optimizer step on each process."},
    )
    learning_rate: float = field(
        default=1e-5,
        metadata={
            "help": "Peak learning rate of AdamW (1e-5 suits full fine-tuning; LoRA and "
            "reward models usually want more, DPO on large models less)."
        },
    )
    weight_decay: float = field(
        default=0.0,
        metadata={"help": "Decoupled AdamW weight decay, applied to every trainable parameter."},
    )
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2."})
    adam_epsilon: float = field(default=1e-8, metadata={"help": "AdamW epsilon."})
    max_grad_norm: float | None = field(
        default=1.0,
        metadata={
            "help": "Clip the global L2 gradient norm to this value; None or 0 disables "
            "clipping. The logged grad_norm is always the pre-clip norm."
        },
    )
    lr_scheduler: str = field(
        default="linear",
        metadata={
            "help": "Learning-rate schedule after warm-up: constant, linear (to 0 at the last "
            "step) or cosine (to 0 at the last step)."
        },
    )
    warmup_steps: int = field(
        default=0,
        metadata={"help": "Linear warm-up from 0 over this many optimizer steps."},
    )
    warmup_ratio: float = field(
        default=0.0,
        metadata={"help": "Warm-up as a fraction of the total steps (used when warmup_steps=0)."},
    )
    seed: int = field(
        default=42,
        metadata={"help": "Seed of python/numpy/torch RNGs and of the data shuffling order."},
    )
    mixed_precision: str = field(
        default="no",
        metadata={
            "help": "'no' or 'bf16'. bf16 runs the forward under torch.autocast (supported on "
            "CPU by torch and on GPUs with bf16 support); weights, gradients and optimizer "
            "state stay float32."
        },
    )
    cpu: bool = field(
        default=False,
        metadata={
            "help": "Train on the CPU even when a GPU is present (without a GPU the CPU is "
            "used anyway; several torchrun processes then form a gloo data-parallel group)."
        },
    )
    logging_steps: int = field(
        default=10,
        metadata={
            "help": "Log every N optimizer steps (metrics averaged over the examples of those "
            "steps) to metrics.jsonl, the console and trackers."
        },
    )
    eval_steps: int = field(
        default=0,
        metadata={"help": "Evaluate every N optimizer steps (0: only at the end)."},
    )
    save_steps: int = field(
        default=500,
        metadata={"help": "Save a resumable checkpoint every N optimizer steps (0: never)."},
    )
    save_final: bool = field(
        default=True,
        metadata={"help": "Also save a checkpoint after the last step."},
    )
    save_total_limit: int | None = field(
        default=3,
        metadata={"help": "Keep at most this many checkpoints (oldest pruned); None keeps all."},
    )
    resume_from: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint directory to resume from, or 'latest' (newest complete "
            "checkpoint in output_dir; starts fresh when there is none)."
        },
    )
    log_with: list[str] = field(
        default_factory=lambda: ["jsonl"],
        metadata={
            "help": "Where metrics go: 'jsonl' (always on: output_dir/metrics.jsonl), "
            "'tensorboard', 'wandb' (accelerate trackers; must be installed)."
        },
    )
    project_name: str = field(
        default="prefkit",
        metadata={"help": "Project/run name given to accelerate trackers."},
    )
    progress: bool = field(
        default=True,
        metadata={"help": "Show a progress bar with ETA on stderr (main process, TTY only)."},
    )
    stop_on_nonfinite: bool = field(
        default=True,
        metadata={
            "help": "Raise NonFiniteLossError on a NaN/inf loss or gradient norm. When False "
            "the step is skipped (no update) and counted in 'nonfinite_steps'."
        },
    )

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"invalid LoopConfig.{key}={getattr(self, key)!r}: {msg}")

        if self.max_steps is not None and self.max_steps <= 0:
            self.max_steps = None
        if self.max_steps is None and self.num_epochs < 1:
            raise bad("num_epochs", "must be >= 1 when max_steps is not set")
        for key in ("batch_size", "gradient_accumulation_steps", "logging_steps"):
            if getattr(self, key) < 1:
                raise bad(key, "must be >= 1")
        for key in ("eval_steps", "save_steps", "warmup_steps"):
            if getattr(self, key) < 0:
                raise bad(key, "must be >= 0")
        if self.lr_scheduler not in SCHEDULERS:
            raise bad("lr_scheduler", f"choose one of {', '.join(SCHEDULERS)}")
        if self.mixed_precision not in PRECISIONS:
            raise bad("mixed_precision", f"choose one of {', '.join(PRECISIONS)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise bad("warmup_ratio", "must be in [0, 1)")
        if self.warmup_steps and self.warmup_ratio:
            raise bad("warmup_ratio", "set warmup_steps or warmup_ratio, not both")
        if self.save_total_limit is not None and self.save_total_limit < 1:
            raise bad("save_total_limit", "must be >= 1 or None")
        if isinstance(self.log_with, str):
            self.log_with = [s.strip() for s in self.log_with.split(",") if s.strip()]
        unknown = [t for t in self.log_with if t not in TRACKERS]
        if unknown:
            raise bad("log_with", f"unknown tracker(s) {unknown}; choose from {TRACKERS}")
        if "jsonl" not in self.log_with:
            self.log_with = ["jsonl", *self.log_with]


# ---------------------------------------------------------------------------------------------
# generic dataclass <- dict merging


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` (str -> int/float/bool/list, ...)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be None")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, where) for v in value]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return config_from_dict(tp, value, source=where)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if not f.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, dict | list):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def config_from_dict(cls: type[T], data: dict[str, Any], *, source: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, coercing values to the field types.

    Unknown keys raise :class:`ConfigError` naming the key and ``source`` (a file name,
    ``"overrides"``, ...). Nested dataclass fields accept nested mappings.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in {source} (valid keys for {cls.__name__}: "
            f"{', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{source}: key {k!r}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Turn CLI ``["key=value", ...]`` into a dict (values stay strings; coercion happens in
    :func:`config_from_dict`)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def load_config(
    path: str | Path | None = None, *, cls: type[T] = LoopConfig, **overrides: Any
) -> T:
    """Load ``cls`` (default :class:`LoopConfig`) from a YAML file, then apply ``overrides``.

    Overrides win over the file; both are checked for unknown keys (the error names the key and
    the file, or ``overrides``).
    """
    import yaml

    data: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        config_from_dict(cls, loaded, source=source)  # report file errors against the file
        data.update(loaded)
    if overrides:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} in overrides")
        data.update(overrides)
        source = f"{source} + overrides" if path is not None else source
    return config_from_dict(cls, data, source=source)


def config_help(cls: type) -> dict[str, str]:
    """``{field: help text}`` of a documented config dataclass (for CLI help and docs)."""
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}
