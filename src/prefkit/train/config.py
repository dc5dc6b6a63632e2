"""Configuration of the training loop, and YAML + CLI-override merging for any config dataclass.

A config is a documented dataclass; every field carries ``metadata={"help": ...}`` so the same
text becomes CLI help (the training commands build their flags from these fields). A YAML file
and ``key=value`` overrides map onto the same fields:

    cfg = load_config("dpo.yaml", learning_rate="5e-7", max_steps=100)

Strings are coerced to the field's type (``"5e-7"`` -> ``5e-07``, ``"true"`` -> ``True``,
``"jsonl,tensorboard"`` -> ``["jsonl", "tensorboard"]``), so values from a command line and
from YAML (where PyYAML reads ``1e-5`` as a *string*) behave the same. Unknown keys raise
:class:`ConfigError` naming the key and where it came from.

Field metadata (set with :func:`option`) also says

* what values are valid: ``bounds`` (a :class:`Bounds` interval) and ``choices``; every float
  must be finite. :func:`check_fields` enforces them (``LoopConfig.__post_init__`` calls it, so
  every config class built on :class:`LoopConfig` is checked however it is built) and raises a
  :class:`ConfigError` naming the field, the value and what was expected;
* whether the field is part of the run's *identity* (``identity=True``, the default): a value
  that changes the maths of training (loss, batch size, learning rate, schedule, data, model,
  ...). A resumed run must keep every identity field; the others (``max_steps``, logging,
  saving, progress) may change (see :mod:`prefkit.train.run_dir`);
* ``path=True`` for fields naming files or folders: the run identity records them as absolute
  paths, so a resume from another working directory compares the same files.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "AT_LEAST_1",
    "DTYPES",
    "Bounds",
    "ConfigError",
    "FRACTION",
    "LoopConfig",
    "NON_NEGATIVE",
    "POSITIVE",
    "check_fields",
    "config_from_dict",
    "config_help",
    "identity_fields",
    "load_config",
    "option",
    "parse_overrides",
]

T = TypeVar("T")

SCHEDULERS = ("constant", "linear", "cosine")
PRECISIONS = ("no", "bf16")
SHARDINGS = ("ddp", "fsdp2")
ATTENTIONS = ("auto", "sdpa", "flex")
DTYPES = ("float32", "bfloat16")
"""Weight dtypes a training run loads its model in."""
TRACKERS = ("jsonl", "tensorboard", "wandb")


@dataclass(frozen=True)
class Bounds:
    """A valid interval for a numeric field: ``low <= x <= high`` (``<`` where open)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return not (self.high is not None and (x >= self.high if self.high_open
                                               else x > self.high))

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            return (f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return "any value"


POSITIVE = Bounds(0, low_open=True)
NON_NEGATIVE = Bounds(0)
AT_LEAST_1 = Bounds(1)
FRACTION = Bounds(0, 1, high_open=True)  # [0, 1)


def option(help: str, default: Any = None, *, bounds: Bounds | None = None,
           choices: tuple[str, ...] | None = None, identity: bool = True,
           path: bool = False) -> Any:
    """A config field with its help text (the text CLI help and :func:`config_help` show), its
    valid values (``bounds`` / ``choices``, checked by :func:`check_fields`), whether it is part
    of the run identity (``identity``: changing it changes the maths, so a resume refuses it)
    and whether it names a file or folder (``path``)."""
    metadata: dict[str, Any] = {"help": help, "identity": identity, "path": path}
    if bounds is not None:
        metadata["bounds"] = bounds
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if isinstance(default, list | dict | set):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


class ConfigError(ValueError):
    """A config value or key is invalid; the message names the key and its source."""


def _expected(f: dataclasses.Field) -> str:
    parts = []
    if "choices" in f.metadata:
        parts.append(f"one of {', '.join(map(str, f.metadata['choices']))}")
    if "bounds" in f.metadata:
        parts.append(f"a finite number {f.metadata['bounds'].describe()}")
    return " and ".join(parts) or "a finite number"


def _value_ok(value: Any, f: dataclasses.Field) -> bool:
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, list | tuple):
        return all(_value_ok(v, f) for v in value)
    choices = f.metadata.get("choices")
    if choices is not None and isinstance(value, str) and value not in choices:
        return False
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return False
        bounds = f.metadata.get("bounds")
        return bounds is None or bounds.contains(value)
    return True


def check_fields(config: Any) -> None:
    """Check every field of a config dataclass against its metadata: numbers finite and inside
    their ``bounds``, strings among their ``choices``; ``None`` is always accepted (the field
    type says whether it may be ``None``). Raises :class:`ConfigError` naming the field, the
    value and what is expected."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _value_ok(value, f):
            raise ConfigError(f"invalid {type(config).__name__}.{f.name}={value!r}: expected "
                              f"{_expected(f)}")


def identity_fields(cls: type) -> list[str]:
    """Names of the fields of config class ``cls`` that make up a run's identity (see
    :func:`option`)."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("identity", True)]


def path_fields(cls: type) -> list[str]:
    """Names of the fields of ``cls`` that name files or folders."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("path", False)]


@dataclass
class LoopConfig:
    """Settings of :func:`prefkit.train.loop.fit`, the one loop every trainer uses."""

    output_dir: str = option(
        "Folder of this run: run_config.json, metrics.jsonl, tracker logs and checkpoint-{step}/ "
        "folders. A folder holding another run (or checkpoints of this one) is refused unless "
        "resuming or overwrite is set.", "runs/train", identity=False)
    max_steps: int | None = option(
        "Number of optimizer steps. When set (> 0) it wins over num_epochs and the data is "
        "cycled as often as needed.", identity=False)
    num_epochs: int = option(
        "Passes over train_data when max_steps is not set (needs len(data)).", 1,
        identity=False)
    batch_size: int = option(
        "Per-process micro-batch size in examples (the global batch of one optimizer step is "
        "batch_size * gradient_accumulation_steps * num_processes).", 8, bounds=AT_LEAST_1)
    gradient_accumulation_steps: int = option(
        "Micro-batches per optimizer step on each process.", 1, bounds=AT_LEAST_1)
    learning_rate: float = option(
        "Peak learning rate of AdamW (1e-5 suits full fine-tuning; LoRA and reward models "
        "usually want more, DPO on large models less; 0 freezes the weights).", 1e-5,
        bounds=NON_NEGATIVE)
    weight_decay: float = option(
        "Decoupled AdamW weight decay, applied to every trainable parameter.", 0.0,
        bounds=NON_NEGATIVE)
    adam_beta1: float = option("AdamW beta1.", 0.9, bounds=FRACTION)
    adam_beta2: float = option("AdamW beta2.", 0.999, bounds=FRACTION)
    adam_epsilon: float = option("AdamW epsilon.", 1e-8, bounds=POSITIVE)
    max_grad_norm: float | None = option(
        "Clip the global L2 gradient norm to this value; None or 0 disables clipping. The "
        "logged grad_norm is always the pre-clip norm.", 1.0, bounds=NON_NEGATIVE)
    lr_scheduler: str = option(
        "Learning-rate schedule after warm-up: constant, linear (to 0 at the last step) or "
        "cosine (to 0 at the last step).", "linear", choices=SCHEDULERS)
    warmup_steps: int = option(
        "Linear warm-up from 0 over this many optimizer steps.", 0, bounds=NON_NEGATIVE)
    warmup_ratio: float = option(
        "Warm-up as a fraction of the total steps (used when warmup_steps=0).", 0.0,
        bounds=FRACTION)
    seed: int = option(
        "Seed of python/numpy/torch RNGs and of the data shuffling order.", 42,
        bounds=NON_NEGATIVE)
    mixed_precision: str = option(
        "'no' or 'bf16'. bf16 runs the forward under torch.autocast (supported on CPU by torch "
        "and on GPUs with bf16 support); weights, gradients and optimizer state stay float32.",
        "no", choices=PRECISIONS)
    cpu: bool = option(
        "Train on the CPU even when a GPU is present (without a GPU the CPU is used anyway; "
        "several torchrun processes then form a gloo data-parallel group).", False,
        identity=False)
    keep_freed_memory: bool = option(
        "Training on the CPU: keep freed memory in the process for the next step instead of "
        "returning it to the OS (glibc malloc's mmap and trim thresholds raised to 32 MiB and 1 "
        "GiB for the rest of the process: prefkit.train.heap). Saves the page faults of "
        "re-touching fresh memory every step (~5% of an online step on a 2-core VM); resident "
        "memory then stays near its peak between steps. No effect on the values.", True,
        identity=False)
    sharding: str = option(
        "How several processes hold the model: 'ddp' (every process a full copy, gradients "
        "all-reduced) or 'fsdp2' (torch fully_shard: each decoder layer, then the model, split "
        "over the processes; parameters, gradients and optimizer state are 1/N per process). "
        "Both give the gradient of the mean loss over the global batch; a checkpoint of one "
        "resumes only with the same setting. With one process both train the model as is.",
        "ddp", choices=SHARDINGS)
    attention: str = option(
        "Attention back-end of the packed forward of preference and reward-model training: "
        "'auto' (flex_attention with a block mask on a CUDA device when torch has it, else sdpa "
        "with the dense mask), 'sdpa' or 'flex' (prefkit.models.attention; flex has no backward "
        "on the CPU). The same maths either way. Online training always uses sdpa.",
        "auto", choices=ATTENTIONS, identity=False)
    logging_steps: int = option(
        "Log every N optimizer steps (metrics averaged over the examples of those steps) to "
        "metrics.jsonl, the console and trackers.", 10, bounds=AT_LEAST_1, identity=False)
    eval_steps: int = option(
        "Evaluate every N optimizer steps (0: only at the end).", 0, bounds=NON_NEGATIVE,
        identity=False)
    save_steps: int = option(
        "Save a resumable checkpoint every N optimizer steps (0: never).", 500,
        bounds=NON_NEGATIVE, identity=False)
    save_final: bool = option("Also save a checkpoint after the last step.", True,
                              identity=False)
    save_total_limit: int | None = option(
        "Keep at most this many checkpoints (oldest pruned); None keeps all.", 3,
        bounds=AT_LEAST_1, identity=False)
    resume_from: str | None = option(
        "Checkpoint folder to resume from, or 'latest' (newest complete checkpoint in "
        "output_dir; starts fresh when there is none). The checkpoint's run must have the same "
        "settings (all but length, logging and saving).", identity=False)
    overwrite: bool = option(
        "Start a new run in an output_dir that holds another run: delete that run's "
        "checkpoints, metrics.jsonl, rollouts.jsonl and run_config.json first (other files "
        "are kept).", False, identity=False)
    log_with: list[str] = option(
        "Where metrics go: 'jsonl' (always on: output_dir/metrics.jsonl), 'tensorboard', "
        "'wandb' (accelerate trackers; must be installed).", ["jsonl"], choices=TRACKERS,
        identity=False)
    project_name: str = option("Project/run name given to accelerate trackers.", "prefkit",
                               identity=False)
    progress: bool = option(
        "Show a progress bar with ETA on stderr (main process, TTY only).", True,
        identity=False)
    stop_on_nonfinite: bool = option(
        "Raise NonFiniteLossError on a NaN/inf loss or gradient norm. When False the step is "
        "skipped (no update) and counted in 'nonfinite_steps'.", True, identity=False)

    def __post_init__(self) -> None:
        def bad(key: str, msg: str) -> ConfigError:
            return ConfigError(f"invalid {type(self).__name__}.{key}={getattr(self, key)!r}: "
                               f"{msg}")

        if isinstance(self.log_with, str):
            self.log_with = [s.strip() for s in self.log_with.split(",") if s.strip()]
        check_fields(self)
        if self.max_steps is not None and self.max_steps <= 0:
            self.max_steps = None
        if self.max_steps is None and self.num_epochs < 1:
            raise bad("num_epochs", "must be >= 1 when max_steps is not set")
        if self.warmup_steps and self.warmup_ratio:
            raise bad("warmup_ratio", "set warmup_steps or warmup_ratio, not both")
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
