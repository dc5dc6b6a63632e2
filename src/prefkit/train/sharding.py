"""FSDP2 sharding for :func:`prefkit.train.loop.fit` (``LoopConfig.sharding = "fsdp2"``).

What is sharded
---------------
:func:`shard_model` calls torch's public ``torch.distributed.fsdp.fully_shard`` bottom-up on

1. every decoder layer (:func:`decoder_layers`: the classes a transformers model names in
   ``_no_split_modules``, else the members of its largest ``ModuleList`` of one class);
2. every outermost ``transformers.PreTrainedModel`` (it holds the embeddings, the final norm
   and the LM head, and it is what ``generate`` -- also through a peft wrapper -- and every
   forward call, so each of these calls gathers its parameters);
3. the root module given to :func:`fit`, when it holds parameters of its own beyond those
   (a reward head); a root without any (a peft wrapper, the online trainer's policy holder) is
   left as it is and its calls reach the sharded model inside.

With ``pretrained_units=False`` step 2 is skipped: the root owns the embeddings, final norm and
LM head as well (PPO's policy-with-value module: every call -- the value head's forward on the
decoder's hidden states, and generation -- enters the root, so those weights are gathered for
the whole call, see :mod:`prefkit.train.online`).

FSDP2 makes the first sharded module that runs a forward the root of its hierarchy, so the
outermost unit must be the one every call enters: a peft ``PeftModel`` therefore stays
unsharded around its sharded base model (``generate`` enters the base model directly), and
prefkit's log-prob code takes the model's own forward for parameters stored sharded.

Each unit's parameters are split in equal flat shards over the ``W`` processes (a 1-D device
mesh); a unit's forward all-gathers its full parameters and frees them afterwards; its backward
reduce-scatters the gradients. Parameters, gradients and AdamW state are therefore ``1/W`` per
process (plus one unit's full parameters while it runs).

Why the gradient equals the one-process gradient
-----------------------------------------------
FSDP2's reduce-scatter AVERAGES each gradient shard over the ``W`` processes, exactly as DDP's
all-reduce does, so the loop's rule (back-propagate each micro-batch's loss SUM, then multiply
the gradients by ``W / N``; see :mod:`prefkit.train.loop`) gives the gradient of the mean loss
over the global batch unchanged. Gradient accumulation: for every micro-batch but the last of an
optimizer step the loop calls ``set_requires_gradient_sync(False)`` (public FSDP2 API, applied
to every unit); each process then accumulates its full unsharded local gradient, and the last
backward (sync on) reduce-scatters the local SUM once:
``(1/W) sum_p sum_m grad loss_sum(p, m)`` -- the same quantity as under DDP's ``no_sync``.
Clipping uses the global norm of the sharded gradients (:func:`clip_grad_norm`: the sum of
squares over every shard of every process), the same number as the unsharded norm.

Mixed precision
---------------
``mixed_precision="bf16"`` gives each unit ``MixedPrecisionPolicy(param_dtype=bfloat16,
reduce_dtype=float32)``: the all-gathered parameters are cast to bf16 for compute, the sharded
parameters, gradients (reduced in float32) and optimizer state stay float32. The loop also runs
the forward under ``torch.autocast(bf16)`` as without sharding, so the ops autocast keeps in
float32 (softmax, log-softmax, norms) stay float32.

Why not through accelerate
--------------------------
accelerate 1.16 turns on its FSDP plugin (``FullyShardedDataParallelPlugin(fsdp_version=2)``)
only for multi-accelerator launches: on CPU processes (gloo) its state stays ``MULTI_CPU`` and the
plugin is ignored, so it could not be tested here; its ``prepare`` would also wrap the optimizer
and take over accumulation, which the loop owns. prefkit calls ``fully_shard`` itself and uses
accelerate only for the process group, data sharding and per-process RNG state.

The caller's model
------------------
:func:`sharded_copy` shards a deep copy; the caller's module is moved to the CPU while training
runs (so no full copy stays on the accelerator) and :func:`copy_full_weights` writes the trained
full weights back into it at the end (every process), so after :func:`fit` the caller holds an
ordinary model: it saves as a plain Hugging Face checkpoint and every prefkit command loads it.

Checkpoints
-----------
:func:`save_sharded` writes ``{checkpoint}/fsdp2/`` with ``torch.distributed.checkpoint`` (one
file of shards per process plus ``.metadata``): the model and AdamW state from
``torch.distributed.checkpoint.state_dict.get_state_dict``; :func:`load_sharded` reads it back
with ``set_state_dict``. A resume needs the same number of processes (the loop checks it).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "SHARDED_DIR",
    "clip_grad_norm",
    "copy_full_weights",
    "decoder_layers",
    "is_sharded",
    "load_sharded",
    "local_finite",
    "matching_params",
    "mixed_precision_policy",
    "save_sharded",
    "set_gradient_sync",
    "shard_model",
    "shard_units",
    "sharded_copy",
]

SHARDED_DIR = "fsdp2"
"""Sub-folder of a checkpoint holding the sharded model and optimizer state."""


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: nn.Module) -> bool:
    """True when ``model`` or a module inside it was sharded with ``fully_shard``."""
    return bool(_fsdp_modules(model))


def set_gradient_sync(model: nn.Module, enabled: bool) -> None:
    """Turn the gradient reduce-scatter of every sharded unit in ``model`` on or off (FSDP2's
    public ``set_requires_gradient_sync``; off: gradients accumulate unsharded locally)."""
    for unit in _fsdp_modules(model):
        unit.set_requires_gradient_sync(enabled, recurse=False)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks of ``model``, in module order.

    The classes named in any submodule's ``_no_split_modules`` (transformers marks its decoder
    layers so) when such modules exist; else the members of the largest ``nn.ModuleList`` whose
    members all have one class (the layer stack of a custom model). Empty when neither exists.
    """
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if layers:
        return layers
    best: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) > len(best):
            kinds = {type(x) for x in m}
            if len(kinds) == 1:
                best = list(m)
    return best


def _outer_pretrained(model: nn.Module) -> list[nn.Module]:
    """The outermost ``transformers.PreTrainedModel`` modules in ``model`` (itself included)."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return [model]
    found: list[nn.Module] = []
    for child in model.children():
        found.extend(_outer_pretrained(child))
    return found


def shard_units(model: nn.Module, *, pretrained_units: bool = True) -> list[nn.Module]:
    """The modules :func:`shard_model` shards, innermost first (module docstring): decoder
    layers, the outermost pretrained models (unless ``pretrained_units`` is False), then the
    root when it holds parameters of its own."""
    layers = decoder_layers(model)
    layer_ids = {id(m) for m in layers}
    outer = [m for m in _outer_pretrained(model) if id(m) not in layer_ids]
    if not pretrained_units:
        outer = [m for m in outer if m is model]
    units = [*layers, *(m for m in outer if m is not model)]
    covered = {id(p) for unit in units for p in unit.parameters()}
    if model in outer or any(id(p) not in covered for p in model.parameters()):
        units.append(model)
    return units


def mixed_precision_policy(mixed_precision: str):
    """FSDP2's ``MixedPrecisionPolicy`` for the loop's ``mixed_precision`` setting: ``"no"`` ->
    compute in the parameters' dtype; ``"bf16"`` -> gathered parameters in bfloat16, gradients
    reduced in float32 (the sharded parameters and optimizer state keep their dtype)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if mixed_precision == "no":
        return MixedPrecisionPolicy()
    if mixed_precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    raise ValueError(f"mixed_precision must be 'no' or 'bf16', got {mixed_precision!r}")


def shard_model(model: nn.Module, *, device: torch.device, world_size: int,
                mixed_precision: str = "no", reshard_after_forward: bool | None = None,
                pretrained_units: bool = True) -> nn.Module:
    """Shard ``model`` in place over ``world_size`` processes of the initialized default process
    group (units: :func:`shard_units`); returns it. Frozen parameters (LoRA's base weights, a
    reference model) are sharded like the others and simply get no gradient.

    ``reshard_after_forward``: FSDP2's setting; ``None`` (training) frees every unit's gathered
    parameters after its forward except the root's, which the backward needs at once; ``True``
    (a forward-only model: the reference pass) frees the root's too, so no process keeps more
    than one unit's full parameters between forwards. ``pretrained_units``: see
    :func:`shard_units`."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(torch.device(device).type, (world_size,))
    policy = mixed_precision_policy(mixed_precision)
    units = shard_units(model, pretrained_units=pretrained_units)
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=policy,
                    reshard_after_forward=reshard_after_forward)
    for unit in [*units, *_outer_pretrained(model)]:
        if hasattr(unit, "generate"):
            # transformers' generate keeps every process stepping until all have finished
            # (synced_gpus) for modules carrying this marker, as its own FSDP2 integration sets
            # it; without it a process whose samples all ended early would stop joining the
            # other processes' parameter all-gathers
            unit._is_fsdp_managed_module = True
    return model


def sharded_copy(model: nn.Module, *, device: torch.device, world_size: int,
                 mixed_precision: str = "no", reshard_after_forward: bool | None = None,
                 pretrained_units: bool = True) -> nn.Module:
    """A sharded deep copy of ``model`` (:func:`shard_model`); ``model`` itself is moved to the
    CPU until :func:`copy_full_weights` gives it the trained weights back."""
    model.to("cpu")
    work = copy.deepcopy(model)
    return shard_model(work, device=device, world_size=world_size,
                       mixed_precision=mixed_precision,
                       reshard_after_forward=reshard_after_forward,
                       pretrained_units=pretrained_units)


@torch.no_grad()
def copy_full_weights(sharded: nn.Module, plain: nn.Module,
                      device: torch.device | str | None = None) -> nn.Module:
    """Gather the full parameters and buffers of ``sharded`` (a collective: every process calls
    it) and copy them into ``plain``, a module of the same structure; then move ``plain`` to
    ``device``. Returns ``plain``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))
    own = dict(plain.named_parameters())
    own.update(plain.named_buffers())
    missing = [name for name in own if name not in full]
    persistent = {name for name, _ in plain.named_parameters()}
    if any(name in persistent for name in missing):
        raise RuntimeError(f"sharded model has no full value for {missing[:3]}")
    for name, tensor in own.items():
        if name in full:
            tensor.copy_(full[name].to(tensor.device, tensor.dtype))
    if device is not None:
        plain.to(device)
    return plain


def matching_params(plain: nn.Module, sharded: nn.Module,
                    params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters of ``sharded`` (a sharded copy of ``plain``) that correspond, by name, to
    ``params`` of ``plain`` (``fully_shard`` replaces the parameter objects)."""
    names = {id(p): n for n, p in plain.named_parameters()}
    by_name = dict(sharded.named_parameters())
    out = []
    for p in params:
        if id(p) not in names:
            raise ValueError("trainable_params must be parameters of the model given to fit")
        out.append(by_name[names[id(p)]])
    return out


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


def local_finite(params: Sequence[torch.Tensor]) -> bool:
    """Whether this process's shards of ``params`` are all finite (no communication)."""
    return all(bool(torch.isfinite(_local(p.detach())).all()) for p in params)


def clip_grad_norm(params: Sequence[nn.Parameter], max_norm: float) -> float:
    """Clip the gradients of sharded ``params`` to the global L2 norm ``max_norm`` (``inf``: no
    clipping); returns the pre-clip global norm (a collective: the sum of squared shards over
    every process, then the square root -- the norm of the unsharded gradients)."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = torch.nn.utils.get_total_norm(grads, 2.0)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if not torch.isfinite(norm):
        return float(norm)
    if max_norm != float("inf"):
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None],
                                             max_norm, norm)
    return float(norm)


def save_sharded(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write the sharded model and optimizer state into ``folder`` (every process writes its
    own shards; ``torch.distributed.checkpoint``)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(folder))


def load_sharded(folder: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load :func:`save_sharded`'s state into the sharded ``model`` and its ``optimizer``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (Path(folder) / ".metadata").is_file():
        raise FileNotFoundError(f"{folder} holds no sharded checkpoint (written with sharding "
                                "'fsdp2'); resume with the sharding the run was saved with")
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])
