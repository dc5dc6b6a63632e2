"""``fit``: the one training loop every prefkit trainer uses.

A trainer supplies a model, a ``step_fn(model, batch) -> StepOutput`` and data; the loop owns
everything else: gradient accumulation, data parallelism (``accelerate``), mixed precision,
clipping, the learning-rate schedule, logging, evaluation, exact checkpoint/resume and
non-finite detection.

Loss reduction (invariant to accumulation and to data-parallel sharding)
-----------------------------------------------------------------------
``step_fn`` returns the SUM of per-example losses of its micro-batch and the number of examples.
For one optimizer step with micro-batches ``m`` on processes ``p`` (``W`` processes) the loop
back-propagates each local ``loss_sum(p, m)`` unscaled, lets DDP average the accumulated
gradients over processes, then multiplies the gradients by ``W / N``, where ``N`` is the number
of examples in the whole optimizer step (summed over micro-batches and gathered over processes):

    grad = (W / N) * (1 / W) * sum_p sum_m grad loss_sum(p, m) = grad (1/N) sum_examples loss

i.e. the gradient of the MEAN per-example loss over the global batch, whatever the micro-batch
sizes, the number of accumulation steps or the number of processes. (Scaling the gradients
after the backward pass equals dividing the loss by ``N / W`` before it, without having to know
``N`` before the forward passes.) Clipping and the optimizer then see that mean gradient.
Logged metrics are reduced the same way: ``sum(metrics_sum) / N`` over the logging window.

Data
----
``train_data`` is a ``torch.utils.data.DataLoader`` of collated batches that the caller builds
(see :func:`build_dataloader`); ``accelerate`` shards it across processes (rank ``r`` gets
batches ``r, r + W, ...`` so global step ``k`` with per-process batch ``b`` holds the same
examples as one process with batch ``W * b``). When the number of batches (or the last batch)
does not divide evenly over processes, ``accelerate`` pads the epoch's tail with examples from
its start (as ``DistributedSampler`` does): the invariance above is exact when
``len(dataset)`` is a multiple of ``W * batch_size`` or with ``drop_last=True``. Any other
re-iterable of batches (e.g. a list) is used as is on every process: the caller shards it, and
all processes must yield the same number of batches. Such an iterable may define
``set_epoch(epoch)`` (called before each epoch is iterated, also on a resume) and ``skip(n)``
(an iterable of the current epoch's batches after the first ``n``, for a resume mid-epoch or at
an epoch's end, without producing the skipped ones; default: iterate and drop them).

Shuffling uses accelerate's seedable sampler (seed ``config.seed + epoch``), and the loader's
iterator seed is derived from ``config.seed`` and the epoch, so resuming mid-epoch replays
exactly the remaining batches. A ``collate_fn`` that draws from the global RNG breaks exact
resume (give it its own generator).

Launching several processes
---------------------------
``torchrun --nproc_per_node 2 script.py`` (or ``accelerate launch --multi_gpu --num_processes 2
--num_machines 1 --mixed_precision no --dynamo_backend no script.py``). On a CPU-only machine
``accelerate launch --cpu --num_processes 2`` silently starts ONE process; :func:`fit` refuses to
run when ``WORLD_SIZE`` says N processes but accelerate set up fewer.

Sharding
--------
``config.sharding="ddp"`` (default): accelerate wraps the model in DDP; every process holds a
full copy. ``"fsdp2"``: the loop shards a copy of the model with torch's ``fully_shard`` (each
decoder layer, then the model; :mod:`prefkit.train.sharding`), builds AdamW over the shards,
accumulates with ``set_requires_gradient_sync`` and writes sharded checkpoints
(``torch.distributed.checkpoint``); at the end the caller's model receives the full trained
weights. Both are tested on CPU processes (gloo) against one process.

Mixed precision is the loop's own ``torch.autocast(bfloat16)`` around each forward (the
accelerator is always built with ``mixed_precision="no"``), so no process-wide accelerate state
has to change between runs of different precision. DeepSpeed is not supported and refused: its
engine takes over gradient accumulation, loss scaling, clipping and the optimizer step, which
this loop owns (the rule above); shard with ``sharding="fsdp2"`` instead. accelerate's own FSDP
plugin (``ACCELERATE_USE_FSDP``) is refused for the same reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import DistributedType, send_to_device, set_seed
from torch.utils.data import DataLoader

from . import sharding as fsdp
from .checkpoint import (
    checkpoint_dir,
    list_checkpoints,
    prune_checkpoints,
    read_trainer_state,
    resolve_resume,
    write_trainer_state,
)
from .config import ConfigError, LoopConfig
from .heap import keep_freed_memory
from .reporting import JsonlWriter, ProgressBar, format_record
from .run_dir import RunConflictError, check_run_dir, clear_run_dir, run_record, write_run_config
from .schedule import make_scheduler, warmup_steps_for

__all__ = [
    "Callback",
    "FitResult",
    "NonFiniteLossError",
    "StepOutput",
    "TrainingInterrupted",
    "build_dataloader",
    "fit",
    "make_accelerator",
]


@dataclass
class StepOutput:
    """What ``step_fn(model, batch)`` returns for one micro-batch.

    ``loss_sum``: scalar tensor, the SUM of per-example losses (with grad).
    ``n_examples``: number of examples in the micro-batch (the loss is averaged over these).
    ``metrics_sum``: per-metric SUMS over the examples (detached or not); the loop logs
    ``sum / n_examples`` over all processes. Keys must be the same on every call.
    ``n_tokens``: optional token count, for the ``tokens_per_s`` throughput figure.
    """

    loss_sum: torch.Tensor
    n_examples: int | torch.Tensor
    metrics_sum: dict[str, torch.Tensor | float] = field(default_factory=dict)
    n_tokens: int | torch.Tensor | None = None


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; raised before the optimizer step, so the
    weights and every saved checkpoint stay finite."""

    def __init__(self, message: str, *, step: int, micro_batch: int | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.micro_batch = micro_batch


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during :func:`fit`: where the run stopped and what can resume it.

    ``step``: optimizer steps completed; ``total``: steps planned; ``checkpoint``: the newest
    complete checkpoint in ``output_dir`` (None when none was saved yet)."""

    def __init__(self, *, step: int, total: int, output_dir: str,
                 checkpoint: str | None) -> None:
        where = f"checkpoint {checkpoint}" if checkpoint else "no checkpoint saved yet"
        super().__init__(f"interrupted after step {step} of {total} ({where})")
        self.step = step
        self.total = total
        self.output_dir = output_dir
        self.checkpoint = checkpoint


class Callback:
    """Hooks into :func:`fit`; override what you need (all run on every process)."""

    def on_log(self, record: dict[str, Any]) -> None:
        """Called with each logged record (training and ``eval/`` records)."""

    def on_save(self, path: Path, step: int) -> None:
        """Called after checkpoint ``path`` was written."""

    def on_step_end(self, step: int, model: torch.nn.Module) -> bool | None:
        """Called after each optimizer step; return True to stop training after it."""
        return None


@dataclass
class FitResult:
    """Outcome of :func:`fit`."""

    steps: int  # optimizer steps completed (counting steps before a resume)
    metrics: dict[str, float]  # last training record merged with the last eval record
    history: list[dict[str, Any]]  # every record logged by this call (train and eval/)
    checkpoints: list[str]  # checkpoint directories present in output_dir at the end
    seconds: float  # wall time of this call


StepFn = Callable[[torch.nn.Module, Any], StepOutput]


# ---------------------------------------------------------------------------------------------
# set-up helpers


def make_accelerator(config: LoopConfig) -> Accelerator:
    """The ``Accelerator`` :func:`fit` builds when none is passed.

    Gradient accumulation is done by the loop itself (accelerate's accumulation divides the loss
    by the number of micro-batches, which is wrong for uneven micro-batches), so accelerate sees
    ``gradient_accumulation_steps=1``. Mixed precision too (``torch.autocast`` in the loop), so
    accelerate sees ``mixed_precision="no"``: its process-wide state is then the same for every
    run of a process. Shuffling uses the seedable sampler seeded with ``config.seed``. Without a
    GPU (or with ``config.cpu``) it runs on the CPU, where several processes launched by
    ``torchrun`` form a gloo data-parallel group. A DeepSpeed or accelerate-FSDP launch is
    refused (module docstring).
    """
    trackers = [t for t in config.log_with if t != "jsonl"]
    _check_trackers(trackers)
    _refuse_engines(None)
    acc = Accelerator(
        cpu=config.cpu or not _has_accelerator_device(),
        mixed_precision="no",
        log_with=trackers or None,
        project_dir=config.output_dir,
        step_scheduler_with_optimizer=False,
        dataloader_config=DataLoaderConfiguration(
            use_seedable_sampler=True, data_seed=config.seed, even_batches=True
        ),
    )
    _check_world_size(acc)
    return acc


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _refuse_engines(acc: Accelerator | None) -> None:
    """Refuse DeepSpeed and accelerate's FSDP plugin (they take over what the loop owns)."""
    deepspeed = _env_flag("ACCELERATE_USE_DEEPSPEED") or (
        acc is not None and acc.distributed_type == DistributedType.DEEPSPEED)
    if deepspeed:
        raise ConfigError(
            "DeepSpeed is not supported: its engine takes over gradient accumulation, loss "
            "normalization, clipping and the optimizer step, which prefkit's loop owns (that is "
            "what makes the gradient the mean over the global batch). Launch without DeepSpeed "
            "(e.g. `accelerate launch --multi_gpu` or torchrun) and shard the model with "
            "`--sharding fsdp2` (config: sharding: fsdp2); see docs/distributed.md")
    accel_fsdp = _env_flag("ACCELERATE_USE_FSDP") or (
        acc is not None and acc.distributed_type == DistributedType.FSDP)
    if accel_fsdp:
        raise ConfigError(
            "accelerate's FSDP plugin is not used by prefkit: launch with a plain multi-GPU "
            "accelerate config (distributed_type: MULTI_GPU) or torchrun and pass "
            "`--sharding fsdp2` (config: sharding: fsdp2); prefkit applies FSDP2 itself "
            "(docs/distributed.md)")


def _has_accelerator_device() -> bool:
    # without a GPU, accelerate only sets up CPU data parallelism (gloo) when told cpu=True
    api = getattr(torch, "accelerator", None)
    if api is not None:
        return bool(api.is_available())
    return torch.cuda.is_available()


def _check_world_size(acc: Accelerator) -> None:
    """Refuse to run N independent copies when launched as N processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and acc.num_processes != world:
        raise RuntimeError(
            f"launched with WORLD_SIZE={world} but accelerate set up {acc.num_processes} "
            f"process(es) ({acc.distributed_type}); the processes would train independently"
        )


def _check_trackers(trackers: Sequence[str]) -> None:
    from accelerate.utils import is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}
    for t in trackers:
        if not available[t]():
            raise ValueError(f"log_with={t!r} requested but the {t} package is not installed")


def build_dataloader(
    dataset: Any,
    config: LoopConfig,
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    shuffle: bool = True,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A ``DataLoader`` of per-process micro-batches of ``config.batch_size`` examples."""
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle,
        collate_fn=collate_fn,
        drop_last=drop_last,
        num_workers=num_workers,
    )


def _set_epoch(loader: Any, epoch: int, seed: int) -> None:
    """Point every sampler in ``loader`` at ``epoch`` and give the loader a per-epoch iterator
    generator, so iterating it never consumes the global torch RNG (exact resume)."""
    if not isinstance(loader, DataLoader):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        return
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    # accelerate's skip_first_batches wrapper hides the sampler from set_epoch: walk the chain
    seen: set[int] = set()
    stack = [loader.batch_sampler, loader.sampler]
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
        stack.extend(getattr(obj, a, None) for a in ("batch_sampler", "sampler"))
    target = loader.__dict__.get("base_dataloader", loader)
    target.generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def _as_tensor(x: Any, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=torch.float64).reshape(())
    return torch.tensor(float(x), dtype=torch.float64, device=device)


# ---------------------------------------------------------------------------------------------
# sums reduced over micro-batches and processes


@dataclass
class _Sums:
    """Local (then global) sums of one optimizer step or one logging window."""

    loss: float = 0.0
    n: float = 0.0
    tokens: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    grad_norm: float = 0.0
    seconds: float = 0.0
    nonfinite_steps: int = 0

    def add(self, other: _Sums) -> None:
        self.loss += other.loss
        self.n += other.n
        self.tokens += other.tokens
        for k, v in other.metrics.items():
            self.metrics[k] = self.metrics.get(k, 0.0) + v
        self.steps += other.steps
        self.grad_norm += other.grad_norm
        self.seconds += other.seconds
        self.nonfinite_steps += other.nonfinite_steps


def _reduce_outputs(
    acc: Accelerator, outs: list[StepOutput], keys: list[str], device: torch.device
) -> torch.Tensor:
    """``[loss_sum, n_examples, n_tokens, *metrics]`` summed over ``outs`` and processes."""
    vec = torch.zeros(3 + len(keys), dtype=torch.float64, device=device)
    for out in outs:
        parts = [out.loss_sum, out.n_examples, 0 if out.n_tokens is None else out.n_tokens]
        parts += [out.metrics_sum[k] for k in keys]
        vec += torch.stack([_as_tensor(p, device) for p in parts])
    if acc.num_processes > 1:
        vec = acc.reduce(vec, reduction="sum")
    return vec


def _sums_from(vec: torch.Tensor, keys: list[str]) -> _Sums:
    v = vec.tolist()
    return _Sums(loss=v[0], n=v[1], tokens=v[2], metrics=dict(zip(keys, v[3:], strict=True)))


def _check_keys(out: StepOutput, keys: list[str] | None, what: str) -> list[str]:
    if not isinstance(out, StepOutput):
        raise TypeError(f"{what} must return a StepOutput, got {type(out).__name__}")
    got = sorted(out.metrics_sum)
    if keys is not None and got != keys:
        raise ValueError(f"{what} returned metric keys {got}, earlier calls returned {keys}")
    return got


# ---------------------------------------------------------------------------------------------
# the loop


def fit(
    model: torch.nn.Module,
    step_fn: StepFn,
    train_data: Iterable[Any],
    config: LoopConfig,
    *,
    eval_data: Iterable[Any] | None = None,
    eval_fn: StepFn | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    trainable_params: Iterable[torch.nn.Parameter] | None = None,
    callbacks: Sequence[Callback] = (),
    accelerator: Accelerator | None = None,
    state: Mapping[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` with ``step_fn`` on ``train_data`` according to ``config``.

    ``step_fn(model, batch) -> StepOutput`` computes one micro-batch (``model`` is the prepared,
    possibly DDP-wrapped or FSDP2-sharded model: call its forward so gradients synchronize and
    sharded weights are gathered). ``eval_fn`` (default ``step_fn``) is run under
    ``torch.no_grad()`` over ``eval_data`` every ``eval_steps`` and at the end. The optimizer is
    AdamW over ``trainable_params`` (default: parameters with ``requires_grad``) unless
    ``optimizer`` is given (not with ``sharding="fsdp2"``: the optimizer must hold the shards);
    the schedule wraps whichever is used. With ``sharding="fsdp2"`` and several processes,
    ``model`` is trained as a sharded copy and receives the trained full weights at the end
    (every process); a model the caller sharded already (:func:`~prefkit.train.sharding.
    shard_model`) is trained in place and stays sharded. ``accelerator`` overrides
    :func:`make_accelerator` (its own mixed precision then adds to ``config.mixed_precision``;
    ``log_with`` trackers are its business).
    ``state``: ``{name: object}`` of the trainer's own state that changes as training goes
    (an adaptive KL coefficient, running reward moments): each object's ``state_dict()`` (JSON
    values) goes into every checkpoint and a resume gives it back with ``load_state_dict()``
    (the same on every process); a checkpoint without it (an older prefkit) leaves the object
    as it is, with a warning.

    Returns a :class:`FitResult`; raises :class:`NonFiniteLossError` on a NaN/inf loss or
    gradient norm (when ``config.stop_on_nonfinite``) before touching the weights.
    """
    return _Loop(
        model,
        step_fn,
        train_data,
        config,
        eval_data,
        eval_fn or step_fn,
        optimizer,
        trainable_params,
        list(callbacks),
        accelerator,
        dict(state or {}),
    ).run()


def _adamw(params: list[torch.nn.Parameter], config: LoopConfig) -> torch.optim.Optimizer:
    """AdamW with the fused kernel where torch has one for these tensors (CPU and CUDA,
    floating point; ~4x faster than the per-tensor loop on CPU), else the default."""
    kwargs = dict(lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
                  eps=config.adam_epsilon, weight_decay=config.weight_decay)
    devices = {p.device.type for p in params}
    if devices <= {"cpu", "cuda"} and all(p.dtype.is_floating_point for p in params):
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, **kwargs)


class _Loop:
    """State of one :func:`fit` call (kept private: the public surface is ``fit``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        step_fn: StepFn,
        train_data: Iterable[Any],
        config: LoopConfig,
        eval_data: Iterable[Any] | None,
        eval_fn: StepFn,
        optimizer: torch.optim.Optimizer | None,
        trainable_params: Iterable[torch.nn.Parameter] | None,
        callbacks: list[Callback],
        accelerator: Accelerator | None,
        state: dict[str, Any] | None = None,
    ) -> None:
        self.t_start = time.perf_counter()
        self.cfg = config
        self.state_objects = state or {}
        self.step_fn = step_fn
        self.eval_fn = eval_fn
        self.eval_data = eval_data
        self.callbacks = callbacks
        self.acc = acc = accelerator or make_accelerator(config)
        _check_world_size(acc)
        _refuse_engines(acc)
        if config.keep_freed_memory and acc.device.type == "cpu":
            keep_freed_memory()  # returns why not (another C library): nothing to do then
        self.out_dir = Path(config.output_dir)
        # FSDP2 shards over several processes; one process trains the model as is
        self.sharded = config.sharding == "fsdp2" and acc.num_processes > 1
        self.plain_model: torch.nn.Module | None = None  # gets the weights back at the end
        if self.sharded and optimizer is not None:
            raise ValueError("sharding='fsdp2' builds the optimizer over the sharded parameters: "
                             "pass trainable_params instead of an optimizer")
        resume = self._claim_output_dir()
        set_seed(config.seed)

        if self.sharded:
            model, trainable_params = self._shard(model, trainable_params)
        if optimizer is None:
            if trainable_params is None:
                params = [p for p in model.parameters() if p.requires_grad]
            else:
                params = list(trainable_params)
            if not params:
                raise ValueError("no trainable parameters (none has requires_grad=True)")
            optimizer = _adamw(params, config)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]

        self.is_loader = isinstance(train_data, DataLoader)
        if self.sharded:
            # the model is sharded already and the optimizer stays torch's own: accelerate only
            # shards the data
            self.model, self.optimizer = model, optimizer
            self.train_data = acc.prepare(train_data) if self.is_loader else train_data
        elif self.is_loader:
            self.model, self.optimizer, self.train_data = acc.prepare(model, optimizer, train_data)
        else:
            self.model, self.optimizer = acc.prepare(model, optimizer)
            self.train_data = train_data
        self.n_batches = len(self.train_data) if hasattr(self.train_data, "__len__") else None

        ga = config.gradient_accumulation_steps
        if config.max_steps is not None:
            self.total = config.max_steps
        else:
            if self.n_batches is None:
                raise ValueError("num_epochs needs a train_data with len(); set max_steps")
            self.total = config.num_epochs * math.ceil(self.n_batches / ga)
        warmup = warmup_steps_for(self.total, config.warmup_steps, config.warmup_ratio)
        self.scheduler = make_scheduler(optimizer, config.lr_scheduler, warmup, self.total)
        acc.register_for_checkpointing(self.scheduler)

        # loop position: optimizer steps done, epoch, micro-batches consumed in the epoch
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.window = _Sums()  # logging window (sums over steps since the last log)
        self.keys: list[str] | None = None
        self.history: list[dict[str, Any]] = []
        self.last_train: dict[str, Any] = {}
        self.last_eval: dict[str, Any] = {}
        self.saved_step = -1

        if resume is not None:
            self._load(resume)
        self.writer = None
        if acc.is_main_process:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.writer = JsonlWriter(
                self.out_dir / "metrics.jsonl",
                truncate_after_step=self.step if resume is not None else None,
            )
        if acc.log_with:
            acc.init_trackers(config.project_name, config=_flat_config(config))

    def _shard(self, model: torch.nn.Module, trainable: Iterable[torch.nn.Parameter] | None
               ) -> tuple[torch.nn.Module, list[torch.nn.Parameter] | None]:
        """The FSDP2 model to train and its trainable parameters. A model the caller sharded
        already (:func:`prefkit.train.sharding.shard_model`) is used as it is; any other is
        trained as a sharded copy whose weights go back into it at the end."""
        if fsdp.is_sharded(model):
            return model, None if trainable is None else list(trainable)
        self.plain_model = model
        self.plain_device = next(model.parameters()).device
        work = fsdp.sharded_copy(model, device=self.acc.device,
                                 world_size=self.acc.num_processes,
                                 mixed_precision=self.cfg.mixed_precision)
        params = None if trainable is None else fsdp.matching_params(model, work, trainable)
        return work, params

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The forward's precision: ``torch.autocast(bfloat16)`` for ``mixed_precision="bf16"``
        (inside the accelerator's own autocast, a no-op unless a caller's accelerator has a
        precision of its own)."""
        stack = contextlib.ExitStack()
        stack.enter_context(self.acc.autocast())
        if self.cfg.mixed_precision == "bf16":
            stack.enter_context(torch.autocast(device_type=self.acc.device.type,
                                               dtype=torch.bfloat16))
        return stack

    # -- checkpoints --------------------------------------------------------------------------

    def _claim_output_dir(self) -> Path | None:
        """Check that this run may start or continue in ``output_dir`` (every process, reads
        only; :mod:`.run_dir`), then, on the main process, clear prefkit's files from it on a
        fresh start (or with ``overwrite``) and write ``run_config.json``. Returns the
        checkpoint to resume, if any."""
        acc, cfg = self.acc, self.cfg
        resume = resolve_resume(self.out_dir, cfg.resume_from)
        check_run_dir(cfg, resume)
        if resume is not None:
            saved = read_trainer_state(resume).get("num_processes")
            if saved is not None and saved != acc.num_processes:
                raise RunConflictError(
                    f"cannot resume {resume}: it was saved by {saved} process(es), this run has "
                    f"{acc.num_processes}; the global batch (batch_size x "
                    "gradient_accumulation_steps x processes) and the data order would change. "
                    f"Resume with {saved} process(es)")
        acc.wait_for_everyone()
        if acc.is_main_process:
            if cfg.overwrite or resume is None:
                # a fresh start: what is left is this run's own earlier attempt without
                # checkpoints (metrics.jsonl, rollouts.jsonl), or, with overwrite, another run
                clear_run_dir(self.out_dir)
            write_run_config(cfg)
        acc.wait_for_everyone()
        return resume

    def _state(self) -> dict[str, Any]:
        return {
            "global_step": self.step,
            "total_steps": self.total,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "num_processes": self.acc.num_processes,
            "gradient_accumulation_steps": self.cfg.gradient_accumulation_steps,
            "window": dataclasses.asdict(self.window),
            "metric_keys": self.keys,
            "trainer_objects": {name: obj.state_dict()
                                for name, obj in self.state_objects.items()},
            **run_record(self.cfg),
        }

    def _load(self, path: Path) -> None:
        self.acc.load_state(str(path))
        if self.sharded:
            fsdp.load_sharded(path / fsdp.SHARDED_DIR, self.model, self.optimizer)
        st = read_trainer_state(path)
        before = st.get("total_steps")
        if before not in (None, self.total) and (self.cfg.lr_scheduler != "constant"
                                                 or self.cfg.warmup_ratio):
            what = (f"the {self.cfg.lr_scheduler} schedule" if self.cfg.lr_scheduler !=
                    "constant" else "the warm-up (warmup_ratio)")
            warnings.warn(f"resuming {path} with {self.total} instead of {before} total steps: "
                          f"{what} follows the new length from here on", stacklevel=3)
        self.step = st["global_step"]
        self.epoch = st["epoch"]
        self.batch_in_epoch = st["batch_in_epoch"]
        self.window = _Sums(**st["window"])
        self.keys = st.get("metric_keys")
        self.saved_step = self.step
        saved = st.get("trainer_objects", {})
        for name, obj in self.state_objects.items():
            if name in saved:
                obj.load_state_dict(saved[name])
            else:
                warnings.warn(f"{path} holds no state of {name} (written by an older prefkit?): "
                              "it goes on from its starting value", stacklevel=3)

    def _save(self) -> None:
        acc = self.acc
        if not self._params_finite():
            raise NonFiniteLossError(
                f"refusing to save checkpoint-{self.step}: parameters are not finite",
                step=self.step,
            )
        final = checkpoint_dir(self.out_dir, self.step)
        tmp = final.with_name(final.name + ".tmp")
        if acc.is_main_process:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        if self.sharded:
            fsdp.save_sharded(tmp / fsdp.SHARDED_DIR, self.model, self.optimizer)
        acc.wait_for_everyone()
        if acc.is_main_process:
            import shutil

            write_trainer_state(tmp, self._state())
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)
            prune_checkpoints(self.out_dir, self.cfg.save_total_limit)
        acc.wait_for_everyone()
        self.saved_step = self.step
        for cb in self.callbacks:
            cb.on_save(final, self.step)

    def _params_finite(self) -> bool:
        if not self.sharded:
            return all(bool(torch.isfinite(p.detach()).all()) for p in self.params)
        # each process holds other shards: every process must reach the same verdict
        bad = torch.tensor([0.0 if fsdp.local_finite(self.params) else 1.0],
                           dtype=torch.float64, device=self.acc.device)
        return float(self.acc.reduce(bad, reduction="sum")) == 0.0

    # -- logging ------------------------------------------------------------------------------

    def _epoch_float(self) -> float:
        if self.n_batches:
            return round(self.epoch + self.batch_in_epoch / self.n_batches, 6)
        return float(self.epoch)

    def _emit(self, record: dict[str, Any], bar: ProgressBar) -> None:
        self.history.append(record)
        if self.writer is not None:
            self.writer.write(record)
            bar.print(format_record(record, self.total))
        if self.acc.log_with:
            self.acc.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])
        for cb in self.callbacks:
            cb.on_log(record)

    def _log_window(self, lr: float, bar: ProgressBar) -> None:
        w = self.window
        n = max(w.n, 1.0)
        rec: dict[str, Any] = {"step": self.step, "epoch": self._epoch_float()}
        rec["loss"] = w.loss / n
        rec["lr"] = lr
        rec["grad_norm"] = w.grad_norm / max(1, w.steps - w.nonfinite_steps)
        rec.update({k: v / n for k, v in w.metrics.items()})
        rec["examples"] = int(w.n)
        if w.seconds > 0:
            rec["examples_per_s"] = w.n / w.seconds
            if w.tokens > 0:
                rec["tokens_per_s"] = w.tokens / w.seconds
        if w.nonfinite_steps:
            rec["nonfinite_steps"] = w.nonfinite_steps
        self.last_train = rec
        self.window = _Sums()
        self._emit(rec, bar)

    # -- evaluation ---------------------------------------------------------------------------

    def _eval_model(self) -> torch.nn.Module:
        if isinstance(self.model, torch.nn.parallel.DistributedDataParallel):
            # DDP's forward may broadcast buffers (a collective); ranks can hold different
            # numbers of eval batches, so evaluate the wrapped module directly
            return self.model.module
        return self.model

    def evaluate(self, bar: ProgressBar) -> dict[str, Any]:
        """Mean metrics of ``eval_fn`` over ``eval_data`` (batch ``i`` on rank ``i % W``)."""
        acc = self.acc
        model = self._eval_model()
        was_training = model.training
        model.eval()
        t0 = time.perf_counter()
        outs: list[StepOutput] = []
        keys: list[str] | None = None
        with torch.no_grad():
            mine = [b for i, b in enumerate(self.eval_data if self.eval_data is not None else ())
                    if i % acc.num_processes == acc.process_index]
            padding = self._eval_padding(len(mine)) if self.sharded else 0
            for batch in mine:
                batch = send_to_device(batch, acc.device)
                with self._autocast():
                    out = self.eval_fn(model, batch)
                keys = _check_keys(out, keys, "eval_fn")
                outs.append(out)
            if self.sharded:
                self._pad_eval_forwards(model, padding, mine)
        model.train(was_training)
        if acc.num_processes > 1:
            from accelerate.utils import gather_object

            all_keys = gather_object([keys])
            keys = next((k for k in all_keys if k is not None), [])
        keys = keys or []
        s = _sums_from(_reduce_outputs(acc, outs, keys, acc.device), keys)
        n = max(s.n, 1.0)
        rec: dict[str, Any] = {"step": self.step, "epoch": self._epoch_float()}
        rec["eval/loss"] = s.loss / n
        rec.update({f"eval/{k}": v / n for k, v in s.metrics.items()})
        rec["eval/examples"] = int(s.n)
        rec["eval/seconds"] = time.perf_counter() - t0
        self.last_eval = rec
        self._emit(rec, bar)
        return rec

    def _eval_padding(self, n_mine: int) -> int:
        """How many eval forwards this process lacks to the process with the most batches
        (counted before any forward: a sharded forward is itself a collective)."""
        acc = self.acc
        count = torch.tensor([float(n_mine)], dtype=torch.float64, device=acc.device)
        return int(acc.gather(count).max()) - n_mine

    def _pad_eval_forwards(self, model: torch.nn.Module, padding: int, mine: list[Any]) -> None:
        """A sharded forward all-gathers each unit's parameters, a collective: a process holding
        fewer eval batches than another repeats one of its own (or the first eval batch) and
        discards the result, so every process runs as many forwards."""
        if padding <= 0:
            return
        spare = mine[0] if mine else next(iter(self.eval_data))
        spare = send_to_device(spare, self.acc.device)
        for _ in range(padding):
            with self._autocast():
                self.eval_fn(model, spare)

    # -- one optimizer step -------------------------------------------------------------------

    def _optimizer_step(self, micro: list[Any]) -> tuple[_Sums, float]:
        """Forward/backward over the micro-batches of one step, then clip and update."""
        acc, model = self.acc, self.model
        t0 = time.perf_counter()
        outs: list[StepOutput] = []
        for i, batch in enumerate(micro):
            if not self.is_loader:
                batch = send_to_device(batch, acc.device)
            last = i == len(micro) - 1
            if self.sharded:  # FSDP2: reduce-scatter only after the step's last backward
                fsdp.set_gradient_sync(model, last)
                sync = contextlib.nullcontext()
            else:
                sync = contextlib.nullcontext() if last else acc.no_sync(model)
            with sync:
                with self._autocast():
                    out = self.step_fn(model, batch)
                self.keys = _check_keys(out, self.keys, "step_fn")
                if out.loss_sum.dim() != 0:
                    raise ValueError("StepOutput.loss_sum must be a scalar (the SUM of losses)")
                acc.backward(out.loss_sum)
            outs.append(out)

        keys = self.keys or []
        vec = _reduce_outputs(acc, outs, keys, acc.device)
        step_sums = _sums_from(vec, keys)
        step_sums.steps = 1
        step_no = self.step + 1
        lr = self.scheduler.get_last_lr()[0]

        nonfinite = not math.isfinite(step_sums.loss)
        if nonfinite and self.cfg.stop_on_nonfinite:
            self._raise_nonfinite_loss(step_no, outs)
        if not nonfinite and step_sums.n > 0:
            scale = acc.num_processes / step_sums.n
            for p in self.params:
                if p.grad is not None:
                    p.grad.mul_(scale)
            max_norm = self.cfg.max_grad_norm or math.inf
            if self.sharded:
                grad_norm = fsdp.clip_grad_norm(self.params, max_norm)
            else:
                grad_norm = float(acc.clip_grad_norm_(self.params, max_norm))
            if not math.isfinite(grad_norm):
                if self.cfg.stop_on_nonfinite:
                    raise NonFiniteLossError(
                        f"non-finite gradient norm ({grad_norm}) at optimizer step {step_no} "
                        f"with a finite loss; the update was not applied",
                        step=step_no,
                    )
                nonfinite = True
            else:
                step_sums.grad_norm = grad_norm
        # accelerate's optimizer wrapper skips step/zero_grad while "accumulating"; the loop
        # accumulates itself, so every optimizer step is a synchronizing one
        acc.sync_gradients = True
        if nonfinite:
            step_sums.nonfinite_steps = 1
            step_sums.loss = step_sums.n = step_sums.tokens = 0.0
            step_sums.metrics = {k: 0.0 for k in step_sums.metrics}
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        step_sums.seconds = time.perf_counter() - t0
        return step_sums, lr

    def _raise_nonfinite_loss(self, step_no: int, outs: list[StepOutput]) -> None:
        acc = self.acc
        bad = [i for i, o in enumerate(outs) if not torch.isfinite(o.loss_sum.detach())]
        first_bad = float(bad[0]) if bad else math.inf
        local = torch.tensor([first_bad], dtype=torch.float64, device=acc.device)
        per_rank = acc.gather(local).tolist() if acc.num_processes > 1 else [first_bad]
        where = [(r, int(i)) for r, i in enumerate(per_rank) if math.isfinite(i)]
        rank, micro = where[0] if where else (0, -1)
        proc = f" on process {rank}" if acc.num_processes > 1 else ""
        raise NonFiniteLossError(
            f"non-finite loss at optimizer step {step_no}, micro-batch {micro}{proc} "
            f"(epoch {self.epoch}); the update was not applied and the last checkpoint "
            f"(step {self.saved_step if self.saved_step >= 0 else 'none'}) is intact",
            step=step_no,
            micro_batch=micro,
        )

    # -- main loop ----------------------------------------------------------------------------

    def _epoch_iter(self) -> Iterable[Any]:
        data = self.train_data
        skip = self.batch_in_epoch
        if not self.is_loader:
            # the epoch goes to the data itself, before any wrapper hides its set_epoch
            _set_epoch(data, self.epoch, self.cfg.seed)
            if skip:
                data = (data.skip(skip) if hasattr(data, "skip")
                        else itertools.islice(data, skip, None))
            return iter(data)
        if skip:
            data = self.acc.skip_first_batches(data, skip)
        _set_epoch(data, self.epoch, self.cfg.seed)
        return iter(data)

    def run(self) -> FitResult:
        cfg, acc = self.cfg, self.acc
        ga = cfg.gradient_accumulation_steps
        self.model.train()
        bar = ProgressBar(self.total, self.step, cfg.progress and acc.is_main_process)
        lr = self.scheduler.get_last_lr()[0]
        stop = self.step >= self.total
        try:
            while not stop:
                if cfg.max_steps is None and self.epoch >= cfg.num_epochs:
                    break
                it = self._epoch_iter()
                got_any = False
                while not stop:
                    micro = list(itertools.islice(it, ga))
                    if not micro:
                        break
                    got_any = True
                    sums, lr = self._optimizer_step(micro)
                    self.step += 1
                    self.batch_in_epoch += len(micro)
                    self.window.add(sums)
                    stop = self._after_step(lr, bar)
                if not got_any and self.batch_in_epoch == 0:
                    if self.step == 0:
                        raise ValueError("train_data yielded no batches")
                    warnings.warn(
                        f"train_data is exhausted after {self.step} steps (a one-shot iterable?)",
                        stacklevel=2,
                    )
                    break
                if not stop:
                    self.epoch += 1
                    self.batch_in_epoch = 0
            if self.window.steps:
                self._log_window(lr, bar)
            if self.eval_data is not None and self.last_eval.get("step") != self.step:
                self.evaluate(bar)
            if cfg.save_final and self.saved_step != self.step and self.step > 0:
                self._save()
            if self.plain_model is not None:  # the caller's model gets the trained weights
                fsdp.copy_full_weights(self.model, self.plain_model, self.plain_device)
        except KeyboardInterrupt:
            ckpts = list_checkpoints(self.out_dir)
            raise TrainingInterrupted(step=self.step, total=self.total,
                                      output_dir=str(self.out_dir),
                                      checkpoint=str(ckpts[-1]) if ckpts else None) from None
        finally:
            bar.close()
        if acc.log_with:
            acc.end_training()
        return FitResult(
            steps=self.step,
            metrics={**self.last_train, **self.last_eval},
            history=self.history,
            checkpoints=[str(p) for p in list_checkpoints(self.out_dir)],
            seconds=time.perf_counter() - self.t_start,
        )

    def _after_step(self, lr: float, bar: ProgressBar) -> bool:
        """Logging, eval, checkpoint and callbacks after optimizer step ``self.step``."""
        cfg = self.cfg
        info = ""
        if self.step % cfg.logging_steps == 0:
            self._log_window(lr, bar)
            info = f"loss {self.last_train['loss']:.4g}"
        bar.update(self.step, info)
        if cfg.eval_steps and self.eval_data is not None and self.step % cfg.eval_steps == 0:
            self.evaluate(bar)
        if cfg.save_steps and self.step % cfg.save_steps == 0:
            self._save()
        stop = self.step >= self.total
        for cb in self.callbacks:
            if cb.on_step_end(self.step, self.model):
                stop = True
        return stop


def _flat_config(config: LoopConfig) -> dict[str, Any]:
    """Config as scalars only (tensorboard hparams reject lists and None)."""
    out: dict[str, Any] = {}
    for k, v in dataclasses.asdict(config).items():
        out[k] = v if isinstance(v, int | float | str | bool) else str(v)
    return out
