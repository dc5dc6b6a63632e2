"""Linear layers with their weights packed once per generation call (oneDNN, CPU float32).

A decode step multiplies a few rows (one token per sample: 32 rows in the online bench) by
every weight matrix of the model. At so few rows ``nn.Linear``'s BLAS call (MKL ``sgemm``) is
slow on the 2-core AMD host this project measures on: the 29 products of a tiny Llama step take
~4.3-5.9 ms through ``F.linear`` (as much with MKL's own packed-weight API), ~2.9-3.6 ms through
oneDNN with the weights as they are and ~2.3 ms through oneDNN with the weights packed into its
blocked layout beforehand (the same FLOPs). During one ``generate`` call the weights do not
change, so :func:`packed_linears` packs each plain ``nn.Linear`` weight once on entry
(``torch.ops.mkldnn._reorder_linear_weight``: one pass over the weights, ~5 ms for 6M
parameters) and routes the layers' forwards through ``torch.ops.mkldnn._linear_pointwise``
with the packed copy until it exits -- a second copy of those weights for the length of the
call, so models with more than :data:`PACK_MAX_BYTES` of them are not packed. (At training
sizes, thousands of rows, the two libraries are within ~10% of each other and the training
path keeps ``F.linear``, except for the LM head's forward product: :func:`pack_weight` and
:func:`packed_product` serve :mod:`prefkit.models.head_logps`, where oneDNN is ~25% faster.)

Values: ``x W^T + b`` -- the same product, summed in oneDNN's blocking order instead of MKL's,
so a logit can differ in its last bits (|diff| ~1e-6 relative, like the prompt-shared
attention's other order of sums in :mod:`prefkit.models.decode`); the sampler then draws the
same token except at an exact near-tie (tests/test_packed_linear.py compares products and the
decode tests compare tokens with ``generate``).

Compiled decode steps: ``torch.compile`` cannot take the packed (opaque oneDNN) tensor as an
input, so under compilation the forward calls an operator of (``x``, the weight, the bias) that
looks the packed copy up by the weight's address at run time and falls back to ``F.linear``
when there is none: the C++ operator ``prefkit_native::packed_linear`` when it is loaded
(:mod:`prefkit.models.native`; this module hands it each packed copy and takes it back on
exit), so that inductor's C++ wrapper can run the whole step, else the Python operator
``prefkit::packed_linear``. Each layer's replacement forward is created once and reused, so
dynamo's guards on it hold from one generation call to the next.

Where it does not apply (:func:`packing_unsupported`: a device other than the CPU, no oneDNN in
this torch build, or its packed product disagreeing with ``F.linear`` here) the layers keep
their forwards; a layer whose weight is not float32 on the CPU, or that is not a plain
``nn.Linear`` (a LoRA wrapper: its base layer is packed), is left alone.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import native

__all__ = ["PACK_MAX_BYTES", "layer_forward_is_packed", "pack_weight", "packed_count",
           "packed_linears", "packing_unsupported", "packed_product"]

_PACKED: dict[int, list[Any]] = {}
"""weight address -> [its packed copy, how many open contexts hold it]."""
_LOCK = threading.Lock()

_FORWARDS: weakref.WeakKeyDictionary[nn.Linear, Callable[[torch.Tensor], torch.Tensor]] = \
    weakref.WeakKeyDictionary()
"""Each layer's replacement forward, created once (dynamo guards on its identity)."""

_SELF_TEST: list[str | None] = []


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` through the weight's packed copy when one is held and no
    gradient is wanted (a thread training the model meanwhile -- grad mode is per thread --
    gets ``F.linear`` with its gradients)."""
    held = _PACKED.get(weight.data_ptr())
    if held is None or x.dtype != torch.float32 or (
            torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad)):
        return F.linear(x, weight, bias)
    return packed_product(x, held[0], bias)


@torch.library.custom_op("prefkit::packed_linear", mutates_args=())
def _packed_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                      ) -> torch.Tensor:
    """:func:`_linear` as one operator that ``torch.compile`` calls as it is."""
    return _linear(x, weight, bias)


@_packed_linear_op.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _forward(layer: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor]:
    """The layer's replacement forward: eagerly the oneDNN call itself (no custom-operator
    dispatch per call), under ``torch.compile`` the C++ operator
    ``prefkit_native::packed_linear`` when it is loaded (:mod:`prefkit.models.native`;
    ``packed_linears(..., compiled=True)`` loads it before it packs), else the Python one."""
    ref = weakref.ref(layer)

    def forward(x: torch.Tensor) -> torch.Tensor:
        mod = ref()
        if torch.compiler.is_compiling():
            if native.is_loaded():
                return torch.ops.prefkit_native.packed_linear(x, mod.weight, mod.bias)
            return _packed_linear_op(x, mod.weight, mod.bias)
        return _linear(x, mod.weight, mod.bias)

    return forward


def _pack(weight: torch.Tensor, rows: int | None) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), rows)


def packing_unsupported(model: nn.Module) -> str | None:
    """Why :func:`packed_linears` would leave ``model`` as it is, or None when it packs."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        return "the model has no parameters"
    if device.type != "cpu":
        return f"the model is on {device.type}, packing is for the CPU"
    return _onednn_unsupported()


def _onednn_unsupported() -> str | None:
    if not _SELF_TEST:
        _SELF_TEST.append(_self_test())
    return _SELF_TEST[0]


def _packable(weight: torch.Tensor) -> bool:
    """A plain (not a subclass, not sharded) strided float32 CPU weight matrix."""
    return (weight.dtype == torch.float32 and weight.device.type == "cpu"
            and weight.layout == torch.strided and weight.dim() == 2
            and type(weight.data) is torch.Tensor)


def pack_weight(weight: torch.Tensor, rows: int | None = None) -> torch.Tensor | None:
    """``weight`` ``[out, in]`` packed for :func:`packed_product` (oneDNN's blocked layout;
    ``rows``: the usual rows per product, a hint), or None where packing does not apply
    (:func:`packing_unsupported`'s oneDNN check, or a weight that is not a plain float32 CPU
    matrix). The copy is of the weight as it is now: pack again after it changes."""
    if not _packable(weight) or _onednn_unsupported() is not None:
        return None
    with torch.no_grad():
        return _pack(weight, rows)


def packed_product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None
                   ) -> torch.Tensor:
    """``x W^T + b`` for float32 ``x`` with ``W`` packed by :func:`pack_weight` (no gradient
    flows through it: callers with their own backward use ``W`` there)."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _self_test() -> str | None:
    """Once per process: the packed product must equal ``F.linear`` to float32 rounding."""
    if not torch.backends.mkldnn.is_available():
        return "this torch build has no oneDNN (mkldnn)"
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(5, 3, 48, generator=gen)
        w, b = torch.randn(40, 48, generator=gen), torch.randn(40, generator=gen)
        with torch.inference_mode():
            got = packed_product(x, _pack(w, 15), b)
    except Exception as err:  # noqa: BLE001 -- any failure of the op: do not pack
        return f"oneDNN's packed linear failed here ({type(err).__name__}: {err})"
    if not torch.allclose(got, F.linear(x, w, b), rtol=1e-5, atol=1e-5):
        return "oneDNN's packed linear disagrees with F.linear here"
    return None


def _layers(model: nn.Module) -> Iterator[nn.Linear]:
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if type(module) is nn.Linear and weight is not None and _packable(weight):
            yield module


PACK_MAX_BYTES = 1 << 30
"""The packed copies are a second copy of the linear weights for the length of a call: models
whose float32 linear weights are larger than this (1 GiB, ~270M parameters) are not packed."""


@functools.cache
def _native_for_compiled() -> None:
    """Build or load prefkit's C++ operators (once per process) for compiled forwards; if they
    cannot be, say so once (unless ``$PREFKIT_NATIVE=0`` asked for that): compiled decode steps
    then call the Python operator (slower, the same tokens)."""
    why = native.native_unavailable()
    if why is not None and not native.turned_off():
        import warnings

        warnings.warn(f"compiled decode steps run without prefkit's C++ operator ({why}); "
                      "they call a Python operator instead: the same tokens, slower",
                      stacklevel=4)


@contextmanager
def packed_linears(model: nn.Module, rows: int | None = None, *,
                   max_bytes: int = PACK_MAX_BYTES, compiled: bool = False) -> Iterator[int]:
    """Pack every plain float32 ``nn.Linear`` weight of ``model`` once and route the layers'
    forwards through the packed copies until exit (module docs); ``rows``: the usual number
    of rows per product (oneDNN's blocking hint; any number works). Yields the number of
    layers packed (0 where :func:`packing_unsupported` says why not, or when the weights to
    pack exceed ``max_bytes``: the copies would double their memory). The weights must not
    change inside the context. Contexts may overlap (nested, or in other threads generating
    with the same model): a packed copy and a routed forward live until the last context
    holding them exits; a forward that finds no copy computes ``F.linear`` itself.
    ``compiled``: the forwards will run under ``torch.compile``; the C++ operator they call
    there is built or loaded first (a warning once where it cannot be), so that it holds the
    copies packed here."""
    if packing_unsupported(model) is not None:
        yield 0
        return
    if compiled:
        _native_for_compiled()
    layers = list(_layers(model))
    weights = {layer.weight.data_ptr(): layer.weight for layer in layers}  # tied: once
    if sum(w.nbytes for w in weights.values()) > max_bytes:
        yield 0
        return
    held: list[int] = []  # the packs this context counts in (released on exit, even mid-way)
    try:
        with torch.no_grad(), _LOCK:
            for key, weight in weights.items():
                if key not in _PACKED:
                    _PACKED[key] = [_pack(weight, rows), 0]
                    if native.is_loaded():  # the C++ operator's copy of the same pack
                        torch.ops.prefkit_native.hold(weight, _PACKED[key][0])
                _PACKED[key][1] += 1
                held.append(key)
            for layer in layers:
                if layer not in _FORWARDS:
                    _FORWARDS[layer] = _forward(layer)
                layer.forward = _FORWARDS[layer]
        yield len(layers)
    finally:
        with _LOCK:
            for key in held:
                _PACKED[key][1] -= 1
                if _PACKED[key][1] == 0:
                    del _PACKED[key]
                    if native.is_loaded():
                        torch.ops.prefkit_native.release(weights[key])
            for layer in layers:
                if layer.weight.data_ptr() not in _PACKED:
                    layer.__dict__.pop("forward", None)


def packed_count() -> int:
    """How many packed weights are held now (0 outside every context)."""
    return len(_PACKED)


def layer_forward_is_packed(layer: Any) -> bool:
    """Whether ``layer``'s forward is routed through a packed weight right now."""
    mine = _FORWARDS.get(layer)
    return mine is not None and layer.__dict__.get("forward") is mine
