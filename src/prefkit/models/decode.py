"""Token generation: the sampling rule, a batched decode loop over a static KV cache, and the
generation backends behind one interface.

The sampling rule (:func:`sampling_scores`). Row ``r`` (global index: sample ``j`` of prompt
``i`` is ``r = i * k + j``) at decoding step ``t`` takes the next token as
``argmax(float32(logits / T + G))`` where ``G`` is standard Gumbel noise computed by a
counter-based hash of ``(seed, r, t, token id)`` (:func:`gumbel_noise`), after masking EOS while
``t < min_new_tokens`` and keeping only the ``top_k`` / nucleus ``top_p`` tokens. The argmax of
``logits / T + Gumbel`` is an exact draw from ``softmax(logits / T)`` (the Gumbel-max trick), and
no global RNG is touched, so a row's tokens do not depend on which rows share its batch, on the
batch size, or on the process that draws it. ``T = 0`` is greedy decoding.

Backends (:class:`GenerationBackend`: prompt ids in, completion ids and optionally their
log-probs out) that all follow that rule:

* :class:`StaticCacheBackend` (``"prefkit"``, the default): prefill each distinct left-padded
  prompt once, then one forward of ONE token per row per step over preallocated keys and
  values (no per-step cache growth), sampling inline, finished rows fed the pad token. When
  every prompt of a batch has the same number k of rows (online RL's G samples; sdpa models),
  the steps attend over each prompt's prefilled keys once for its k samples and over each
  row's own generated keys (:mod:`prefkit.models.prefix_attention`: no copy of the prompt's
  keys, no mask); otherwise (a batch that splits a prompt's samples) the prompt's cache rows
  are copied to its samples in a :class:`transformers.StaticCache` and the model's own
  attention reads them under a 4D mask built once per batch, one key column opened per step.
  ``compile`` (off by default, ``"prefkit-compiled"`` turns both on): ``"noise"`` fuses the
  sampler's integer hash into one compiled pass (the same bits by construction; measured on a
  busy 2-core CPU at 32 rows x vocab 4096: the hash ~9x faster, the whole noise ~1.7x; ~7-12 s
  to compile once per process), ``"step"`` compiles the one-token forward (the same tokens in
  the tests; ~1.4x per step on a tiny Llama; ~12-45 s to compile, again for each new batch shape
  -- so the prompt width, and the generated slots a step reads, are rounded up to a multiple of
  32 there, :func:`_bucket`). ``pack_weights`` (on by default) packs the linear layers'
  weights once per call for the steps' few-row products (:mod:`prefkit.models.packed_linear`:
  oneDNN, CPU float32; ~2x faster products than ``F.linear`` at 32 rows on a 2-core AMD CPU,
  the same tokens in the tests).
* :class:`GenerateBackend` (``"transformers"``): Hugging Face ``generate`` with the rule as a
  logits processor -- the path prefkit used before; kept selectable and as the fallback for
  models the static loop does not cover (:func:`static_decode_unsupported` names why).
* ``prefkit.models.vllm_backend.VLLMBackend``: vLLM in-process (optional extra).

Why the two transformers backends give the same tokens: both run the same model on the same
left-padded chunk with the same position ids (``cumsum(mask) - 1``) and mask every pad key, so
the logits agree (the static cache only appends keys that the mask closes, whose softmax weight
is exactly 0) and the rule is the same function; tests/test_decode.py checks token equality.
(Prefilling the distinct prompts only, more left padding, or the prompt-shared attention's
other order of sums changes a logit at most in its last bits; the tests -- nine architectures
included -- see the same tokens.)
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StaticCache,
    StaticLayer,
)

from prefkit.models.native import cpp_compiler
from prefkit.models.native import is_loaded as native_is_loaded
from prefkit.models.native import load_for as load_native_for
from prefkit.models.packed_linear import packed_linears
from prefkit.models.prefix_attention import (
    SharedPrefixCache,
    equal_groups,
    shared_prefix_unsupported,
)

__all__ = ["COMPILE_PAYS_AFTER", "DecodeSettings", "GenerateBackend", "Generation",
           "GenerationBackend", "StaticCacheBackend", "auto_backend", "compiler_missing",
           "cut_at_eos", "get_backend", "gumbel_noise", "left_pad", "sampling_scores",
           "static_decode_unsupported"]

_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B


# ----------------------------------------------------------------------------- the rule


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (values kept in ``[0, 2^32)`` inside int64, no overflow). Works in
    place on ``x`` (callers pass a tensor they own): the same integer operations as the
    out-of-place form, so the same bits, without a new tensor per operation."""
    x.bitwise_xor_(x >> 16).mul_(_MIX).bitwise_and_(_MASK32)
    x.bitwise_xor_(x >> 16).mul_(_MIX).bitwise_and_(_MASK32)
    return x.bitwise_xor_(x >> 16)


def _row_hash(seed: int, rows: torch.Tensor, step: int | torch.Tensor) -> torch.Tensor:
    """The row part of the hash: ``[len(rows)]`` for one ``step``; ``[S, len(rows)]`` for a
    tensor of ``S`` steps (the same integer operations on every element: the same values)."""
    h = _mix(torch.full_like(rows, seed & _MASK32))
    h = _mix(h.bitwise_xor_(rows & _MASK32))
    if isinstance(step, torch.Tensor):
        return _mix(h[None, :] ^ (step[:, None] & _MASK32))
    return _mix(h.bitwise_xor_(step & _MASK32))


def _uniform(h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``u[r, v] = (hash(h[r] ^ v) + 0.5) / 2^32`` in float64: integer operations, then an
    exact conversion (a 32-bit integer plus 0.5 is exact in float64, and the division is by a
    power of two) -- so ANY correct implementation, compiled or not, gives the same bits."""
    bits = _mix(_mix(h[:, None] ^ tokens[None, :]).bitwise_xor_(0x9E3779B9))
    return bits.double().add_(0.5).mul_(2.0**-32)  # exact: scaling by a power of two


_compiled_uniform: list[Any] = []


def _fast_uniform(h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """:func:`_uniform` through ``torch.compile`` (one fused pass instead of ~20; the same bits,
    see there); eager when compiling is not possible here (no C++ compiler, ...)."""
    if not _compiled_uniform:
        _compiled_uniform.append(torch.compile(_uniform, dynamic=True))
    fn = _compiled_uniform[0]
    if fn is not _uniform:
        try:
            return fn(h, tokens)
        except Exception as err:  # noqa: BLE001 -- any compiler failure: stay exact, go eager
            import warnings

            warnings.warn(f"compiling the sampler's hash failed ({type(err).__name__}: {err}); "
                          "using the eager hash (same samples, slower)", stacklevel=2)
            _compiled_uniform[0] = _uniform
    return _uniform(h, tokens)


def gumbel_noise(seed: int, rows: torch.Tensor, step: int, vocab: int, *,
                 compiled: bool = False) -> torch.Tensor:
    """``[len(rows), vocab]`` float64 standard Gumbel noise, a pure function of
    ``(seed, row id, step, token id)``: ``u = (hash + 0.5) / 2^32`` is uniform on ``(0, 1)``
    and ``-log(-log(u))`` is Gumbel. ``compiled``: the hash through ``torch.compile`` (same
    bits; the logarithms stay eager, where a compiled log could differ in the last bit)."""
    tokens = torch.arange(vocab, dtype=torch.long, device=rows.device)
    return _log_minus_log_u(_row_hash(seed, rows, step), tokens, compiled).neg_()


def _log_minus_log_u(h: torch.Tensor, tokens: torch.Tensor, compiled: bool) -> torch.Tensor:
    """``log(-log(u))``, minus the Gumbel noise, in place on a fresh ``u`` (see there). ``u``:
    through ``torch.compile`` when ``compiled``, else through the C++ operator
    ``prefkit_native::uniform`` where it is loaded (one pass instead of ~20 tensor operations;
    the same integer operations, so the same bits: tested), else :func:`_uniform` eagerly."""
    if compiled:
        u = _fast_uniform(h, tokens)
    elif native_is_loaded() and h.dim() == 1 and h.device.type == "cpu":
        u = torch.ops.prefkit_native.uniform(h, tokens)
    else:
        u = _uniform(h, tokens)
    return u.log_().neg_().log_()


PROPOSAL_MARGIN = (2.0**-12, 2.0**-18)
"""``(absolute, relative)``: a token is a candidate when its approximate score is within
``2^-12 + 2^-18 * |best|`` of its row's best approximate score (:func:`_proposal`)."""


def _approximate_scores(logits: torch.Tensor, h: torch.Tensor, tokens: torch.Tensor,
                        closed: torch.Tensor, temperature: float) -> torch.Tensor:
    """Float64 ``logits / T - log(float32(-log u))`` (``-inf`` where ``closed``): the rule's
    scores before their float32 rounding to within 2^-16 (:func:`_proposal`)."""
    u = _uniform(h, tokens)
    scores = logits.double()
    if temperature != 1.0:
        scores = scores / temperature
    return torch.where(closed, float("-inf"),
                       scores - torch.log((-torch.log(u)).float()).double())


def _proposal(logits: torch.Tensor, h: torch.Tensor, tokens: torch.Tensor,
              closed: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The sampled token of each row where it is certain without the exact noise:
    ``(index, count)`` -- the first argmax of approximate scores and how many tokens lie within
    :data:`PROPOSAL_MARGIN` of that row's best. Where ``count`` is 1, ``index`` IS the token the
    rule draws (``_StepSampler``); any other count (a near-tie, a non-finite row) leaves the row
    to the exact computation.

    Approximate scores: the same 32-bit hash and ``u`` (exact), then ``g = log(float32(-log
    u))`` -- one float64 and one float32 logarithm, whatever their implementation (compiled,
    vectorized) -- and ``s - g`` in float64, ``s = logits / T``. Error against the rule's exact
    ``s - log(-log u)``: the float32 rounding of ``-log u`` moves its log by <= 2^-24, a
    float32 log within 4 ulps of a value below 32 in magnitude (|g| <= 22.9 for every 32-bit
    hash) is off by <= 2^-17, the float64 steps by ~1e-15: eps < 2^-16 in all. Why a single
    candidate is the token: every other token ``j`` has ``a_j < a_i - margin``, so its exact
    score ``e_j <= a_j + eps < a_i - margin + eps <= e_i - margin + 2 eps``; the margin exceeds
    ``2 eps`` plus two float32 ulps of ``e_i`` (8x and 8x over), so ``float32(e_j) <
    float32(e_i)``: ``i`` is the strict argmax of the rule's float32 scores. A NaN or infinite
    best, or one beyond 2^64 in magnitude (float32 ulps grow to overflow, where scores would
    round to a tie at infinity), gives a count of 0."""
    approx = _approximate_scores(logits, h, tokens, closed, temperature)
    best, index = approx.max(-1, keepdim=True)
    near = approx >= best - (PROPOSAL_MARGIN[0] + PROPOSAL_MARGIN[1] * best.abs())
    return index[:, 0], near.sum(-1).masked_fill_(~(best[:, 0].abs() < 2.0**64), 0)


def sampling_scores(scores: torch.Tensor, rows: torch.Tensor, step: int, *, seed: int,
                    temperature: float, top_k: int | None = None,
                    top_p: float | None = None, compiled: bool = False) -> torch.Tensor:
    """The scores whose argmax is the sampled token (module docs): ``scores / T`` in float64,
    top-k, then nucleus top-p masked to ``-inf``, plus the row's Gumbel noise, as float32
    (``compiled``: see :func:`gumbel_noise`)."""
    scores = _filtered_(scores.to(torch.float64, copy=True), temperature, top_k, top_p)
    noise = gumbel_noise(seed, rows.to(scores.device), step, scores.shape[-1],
                         compiled=compiled)
    return noise.add_(scores).float()  # = scores + noise (addition commutes bit for bit)


def _filtered_(scores: torch.Tensor, temperature: float, top_k: int | None,
               top_p: float | None) -> torch.Tensor:
    """Float64 ``scores / T``, top-k, then nucleus top-p masked to ``-inf``, in place on
    ``scores`` (which the caller owns)."""
    if temperature != 1.0:  # x / 1 is x: skipping it changes no bit
        scores.div_(temperature)
    if top_k is not None and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[:, -1:]
        scores.masked_fill_(scores < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        # nucleus: keep the smallest set of most likely tokens whose mass reaches top_p
        probs, order = torch.softmax(scores, dim=-1).sort(dim=-1, descending=True)
        before = probs.cumsum(dim=-1) - probs  # mass of the strictly more likely tokens
        drop = torch.zeros_like(scores, dtype=torch.bool)
        drop.scatter_(-1, order, before >= top_p)
        scores.masked_fill_(drop, float("-inf"))
    return scores


class _StepSampler:
    """The rule (module docs) for the steps of one decode chunk, with what does not change
    from step to step done once: every step's row hashes in one vectorized pass, the token
    ids, and float64 / float32 buffers reused by each step; EOS is masked on the float64 copy
    of the logits rather than on a float32 clone, and ``scores + noise`` is taken as
    ``scores - log(-log u)`` (``a + (-b)`` and ``a - b`` round alike). The same operations on
    the same values otherwise: the same tokens (tests/test_decode.py). At 32 rows x vocab
    4,096 x 64 steps the sampling takes 33 instead of 46 ms with the compiled hash, 58 instead
    of 67 ms eager."""

    def __init__(self, rows: torch.Tensor, steps: int, s: DecodeSettings, seed: int,
                 compiled: bool, logits: torch.Tensor) -> None:
        self.s, self.compiled, self.steps = s, compiled, steps
        device = logits.device
        self.scores = torch.empty(logits.shape, dtype=torch.float64, device=device)
        if s.temperature == 0:
            return
        self.hashes = _row_hash(seed, rows.to(device), torch.arange(steps, device=device))
        self.tokens = torch.arange(logits.shape[-1], dtype=torch.long, device=device)
        self.rounded = torch.empty(logits.shape, dtype=torch.float32, device=device)
        self.closed = (self.tokens == (-1 if s.eos_id is None else s.eos_id),
                       torch.zeros_like(self.tokens, dtype=torch.bool))

    def proposal_inputs(self, step: int) -> tuple[Any, ...] | None:
        """The inputs of :func:`_proposal` after ``logits`` for ``step`` (hashes, token ids,
        the closed tokens, T), or None where it does not apply: greedy decoding, top-k or
        top-p (their masks need the exact scores), or a step past the last."""
        s = self.s
        if s.temperature == 0 or s.top_k is not None or (s.top_p is not None and s.top_p < 1.0) \
                or step >= self.steps:
            return None
        closed = self.closed[0 if s.eos_id is not None and step < s.min_new_tokens else 1]
        return self.hashes[step], self.tokens, closed, float(s.temperature)

    def __call__(self, logits: torch.Tensor, step: int,
                 proposal: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """The next token of every row from float32 ``logits``: EOS masked before
        ``min_new_tokens`` (as transformers' MinNewTokensLengthLogitsProcessor, which runs
        before the sampler), then greedy argmax or the sampling rule. ``proposal``:
        :func:`_proposal` of these logits for this step; when it is certain for every row
        (count 1) its indices are the tokens, else the rule is computed exactly."""
        s = self.s
        if proposal is not None and bool(proposal[1].eq(1).all()):
            return proposal[0]
        scores = self.scores.copy_(logits)  # exact: every float32 is a float64
        if s.eos_id is not None and step < s.min_new_tokens:
            scores[:, s.eos_id] = float("-inf")
        if s.temperature == 0:  # the float64 copy orders the values as the float32 logits do
            return _first_argmax(scores)
        scores = _filtered_(scores, s.temperature, s.top_k, s.top_p)
        minus_noise = _log_minus_log_u(self.hashes[step], self.tokens, self.compiled)
        return _first_argmax(self.rounded.copy_(torch.sub(scores, minus_noise, out=minus_noise)))


@dataclass(frozen=True)
class DecodeSettings:
    """How completions are decoded (every backend reads the same fields).

    ``max_new_tokens``: length cap (EOS included); ``min_new_tokens``: EOS is masked before
    that many tokens; ``temperature`` 0 is greedy; ``top_k`` / ``top_p``: None keeps all;
    ``eos_id`` None: rows never finish early; ``pad_id``: fed to finished rows and used as left
    padding; ``batch_size``: rows per forward batch (the tokens do not depend on it)."""

    max_new_tokens: int = 32
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    eos_id: int | None = None
    pad_id: int = 0
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("batch_size and max_new_tokens must be >= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got "
                             f"{self.min_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")


@dataclass
class Generation:
    """``ids[r]``: completion of row ``r`` up to and including its first EOS (all generated
    tokens when it has none); ``logprobs[r][t]``: ``log p(ids[r][t])`` under the model's own
    distribution (temperature 1, no top-k/top-p/min-length masking), when asked for."""

    ids: list[list[int]]
    logprobs: list[list[float]] | None = None


@runtime_checkable
class GenerationBackend(Protocol):
    """``generate(model, prompt_ids, settings, seed=, row_offset=, logprobs=)`` -> Generation:
    one completion per row of ``prompt_ids`` (a prompt repeated ``k`` times is ``k`` rows);
    row ``r`` is global row ``row_offset + r`` for the sampling rule."""

    name: str

    def generate(self, model: Any, prompt_ids: Sequence[Sequence[int]],
                 settings: DecodeSettings, *, seed: int, row_offset: int = 0,
                 logprobs: bool = False) -> Generation: ...


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)`` ``[len(rows), width]`` (default: the longest row) with each row
    right-aligned."""
    width = max(len(r) for r in rows) if width is None else width
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids, mask


def cut_at_eos(ids: list[int], eos_id: int | None) -> int:
    """The completion's length: up to and including the first EOS (a row is padded only after
    its EOS, so a row without EOS is all generated tokens, even a sampled pad id)."""
    if eos_id is not None and eos_id in ids:
        return ids.index(eos_id) + 1
    return len(ids)


def _chunks(prompt_ids: Sequence[Sequence[int]], batch_size: int):
    for start in range(0, len(prompt_ids), batch_size):
        yield start, prompt_ids[start:start + batch_size]


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


def _collect(tokens: torch.Tensor, logps: torch.Tensor | None, eos_id: int | None,
             gen: Generation) -> None:
    """Append a chunk's ``[B, steps]`` tokens (and log-probs) to ``gen``, cut at EOS."""
    rows = tokens.tolist()
    lps = logps.tolist() if logps is not None else None
    for i, row in enumerate(rows):
        n = cut_at_eos(row, eos_id)
        gen.ids.append(row[:n])
        if lps is not None and gen.logprobs is not None:
            gen.logprobs.append(lps[i][:n])


# ----------------------------------------------------------------------------- static cache


def static_decode_unsupported(model: Any) -> str | None:
    """Why the static-cache loop cannot run ``model`` (None: it can). It needs a decoder-only
    torch module whose layers all attend fully (a sliding-window layer would need the model's
    own rolling cache and masks), sdpa or eager attention (the 4D mask built here is a bool mask
    for sdpa, additive for eager), and no FSDP-sharded multi-process run (there every process
    must run the same number of forwards; ``generate`` synchronizes that)."""
    if not isinstance(model, nn.Module):
        return f"{type(model).__name__} is not a torch module"
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "get_text_config"):
        return "the model has no transformers config"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder model"
    text = config.get_text_config(decoder=True)
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None:
        if any(t != "full_attention" for t in layer_types):
            return f"layer types {sorted(set(layer_types))} (not all full attention)"
    elif getattr(text, "sliding_window", None) is not None:
        return "sliding-window attention"
    impl = getattr(config, "_attn_implementation", None)
    if impl not in ("sdpa", "eager"):
        return f"attention implementation {impl!r} (sdpa or eager needed)"
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        from torch.distributed.fsdp import FSDPModule

        if any(isinstance(m, FSDPModule) for m in model.modules()):
            return "FSDP-sharded model in a multi-process run"
    return None


class _Masks:
    """The attention masks of one chunk over ``L = W + N`` cache slots (``W`` prompt columns,
    left-padded, then ``N`` generated; the prefill's ``[B, 1, W, W]`` over the prompt slots,
    a step's ``[B, 1, 1, L]``): key ``k`` is visible from slot ``q`` iff it is a real
    prompt token or a generated slot, and ``k <= q``. A pad query row sees only itself (its
    output is never read, and this keeps it finite: a fully masked row could be NaN and a NaN
    key times weight 0 is still NaN). For sdpa a bool mask (True = attend), for eager an
    additive one (0 or the dtype's minimum, as transformers builds them)."""

    def __init__(self, mask: torch.Tensor, new: int, additive_dtype: torch.dtype | None) -> None:
        b, w = mask.shape
        device = mask.device
        real = mask.bool()
        q = torch.arange(w, device=device)[:, None]
        k = torch.arange(w, device=device)[None, :]
        # the prefill reads the W prompt slots only (the cache view of the prefill)
        prefill = (real[:, None, :] & (k <= q)[None]) | (k == q)[None]
        keys = torch.cat([real, torch.zeros(b, new, dtype=torch.bool, device=device)], 1)
        self.width = w
        self.dtype = additive_dtype
        self.prefill = self._form(prefill[:, None])
        self.live = self._form(keys[:, None, None, :])

    def _form(self, allowed: torch.Tensor) -> torch.Tensor:
        if self.dtype is None:
            return allowed
        out = torch.zeros(allowed.shape, dtype=self.dtype, device=allowed.device)
        return out.masked_fill_(~allowed, torch.finfo(self.dtype).min)

    def open(self, step: int) -> torch.Tensor:
        """The ``[B, 1, 1, L]`` mask of decode step ``step`` (its own slot opened)."""
        self.live[..., self.width + step] = True if self.dtype is None else 0.0
        return self.live


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


@dataclass
class StaticCacheBackend:
    """The batched decode loop over a static KV cache (module docs). Models it cannot run
    (:func:`static_decode_unsupported`) go through :class:`GenerateBackend` instead, with the
    same tokens."""

    compile: bool | str = False
    name: str = "prefkit"
    pack_weights: bool = True

    def __post_init__(self) -> None:
        modes = {False: (), "noise": ("noise",), "step": ("step",), True: ("noise", "step"),
                 "all": ("noise", "step")}
        if self.compile not in modes:
            raise ValueError(f"compile must be False, 'noise', 'step' or True/'all', got "
                             f"{self.compile!r}")
        self._modes = modes[self.compile]

    def generate(self, model: Any, prompt_ids: Sequence[Sequence[int]],
                 settings: DecodeSettings, *, seed: int, row_offset: int = 0,
                 logprobs: bool = False) -> Generation:
        if static_decode_unsupported(model) is not None:
            return GenerateBackend().generate(model, prompt_ids, settings, seed=seed,
                                              row_offset=row_offset, logprobs=logprobs)
        gen = Generation([], [] if logprobs else None)
        if not prompt_ids:
            return gen
        load_native_for(model)  # the C++ sampler hash and shared-prefix attention
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(), self._packing(model, settings) as packed:
                for start, chunk in _chunks(prompt_ids, settings.batch_size):
                    rows = torch.arange(len(chunk), dtype=torch.long) + (row_offset + start)
                    tokens, logps = self._chunk(model, chunk, rows, settings, seed, logprobs,
                                                packed > 0)
                    _collect(tokens, logps, settings.eos_id, gen)
        finally:
            model.train(was_training)
        return gen

    def _packing(self, model: nn.Module, settings: DecodeSettings
                 ) -> AbstractContextManager[int]:
        """The weights packed for the call's few-row products (:mod:`prefkit.models.
        packed_linear`; CPU float32 linear layers) when ``pack_weights``, else nothing; the
        chunk size is oneDNN's hint of the rows per product."""
        if not self.pack_weights:
            return nullcontext(0)
        return packed_linears(model, settings.batch_size,
                              compiled="step" in self._modes and not _STEP_COMPILE_FAILED)

    def _step_fn(self, model: nn.Module, packed: bool):
        """None (the model's own forward), or in ``"step"`` mode :func:`_forward_and_propose`
        through ``torch.compile``; either is called through :func:`_call_step`."""
        if "step" not in self._modes or _STEP_COMPILE_FAILED:
            return None
        # a new wrapper per batch is cheap: dynamo keeps compiled graphs on the function's code
        # object, guarded on this model, so the next batch of the same shapes reuses them. The
        # C++ wrapper calls a step's ~50 kernels and its packed linear layers' C++ operator
        # (prefkit.models.native) from C++ instead of Python: generation ~13% faster on the
        # online bench, the same tokens; a cold compile takes ~15% longer. Where that operator
        # could not be built the packed layers call a Python operator, which the C++ wrapper
        # calls slowly (a step ~25% slower than the Python wrapper's), so it stays off
        return torch.compile(_forward_and_propose, dynamic=False,
                             options={"cpp_wrapper": not packed or native_is_loaded()})

    def _chunk(self, model: nn.Module, chunk: Sequence[Sequence[int]], rows: torch.Tensor,
               s: DecodeSettings, seed: int, want_logprobs: bool, packed: bool
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        device = _device(model)
        width = max(len(r) for r in chunk)
        compiled = "step" in self._modes
        if compiled:  # few cache shapes, few compiled graphs (see _bucket)
            width = _bucket(width)
        # the decode steps attend over each prompt's prefix once for all its samples when
        # every prompt of the chunk has the same number of rows (prefix_attention); else each
        # row gets a copy of its prompt's cache rows
        grouped = None if shared_prefix_unsupported(model) is not None \
            else equal_groups(_distinct_rows(chunk)[1])
        order = None
        if grouped is not None:
            order, group = grouped
            chunk, rows = [chunk[i] for i in order], rows[order]
        ids, mask = left_pad(chunk, s.pad_id, width)
        ids, mask = ids.to(device), mask.to(device)
        b, w = ids.shape
        new = s.max_new_tokens
        eager = model.config._attn_implementation == "eager"
        masks = _Masks(mask, new, _model_dtype(model) if eager else None)
        cache = _view_cache(model, w if grouped is not None else w + new)
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        # each distinct prompt is read once (a prompt sampled k times is k equal rows): the
        # prefill runs on the distinct rows; their cache serves all their samples
        first, inverse = _distinct_rows(chunk)
        pick = torch.tensor(first, dtype=torch.long, device=device)
        _set_view(cache, w)
        out = model(input_ids=ids[pick], attention_mask=masks.prefill[pick],
                    position_ids=positions[pick], cache=cache, use_cache=True,
                    logits_to_keep=1)
        expand = torch.tensor(inverse, dtype=torch.long, device=device)
        logits = out.logits[:, -1].float()[expand]
        del out
        if grouped is not None:
            cache = SharedPrefixCache(cache, mask[pick], group, new)
            prepare = self._shared_prepare(cache, new)
        else:
            if len(first) < b:
                _expand_cache(cache, expand)
            prepare = self._copy_prepare(cache, masks, w, new)
        step_fn = self._stepper(model, cache, prepare, packed)
        position = positions[:, -1:] + 1
        tokens = torch.full((b, new), s.pad_id, dtype=torch.long, device=device)
        logps = torch.zeros((b, new), dtype=torch.float32, device=device) \
            if want_logprobs else None
        finished = torch.zeros(b, dtype=torch.bool, device=device)
        pad = torch.tensor(s.pad_id, dtype=torch.long, device=device)
        steps = 0
        sample = _StepSampler(rows, new, s, seed, "noise" in self._modes, logits)
        proposal = None  # the compiled step's proposal for the next token (_proposal)
        for t in range(new):
            nxt = sample(logits, t, proposal)
            if s.eos_id is not None:
                nxt = torch.where(finished, pad, nxt)
                finished |= nxt == s.eos_id
            tokens[:, t] = nxt
            if logps is not None:
                logps[:, t] = torch.log_softmax(logits, -1).gather(-1, nxt[:, None])[:, 0]
            steps = t + 1
            if t + 1 == new or (s.eos_id is not None and bool(finished.all())):
                break
            logits, proposal = step_fn(t, nxt, position, sample.proposal_inputs(t + 1))
            position = position + 1
        tokens = tokens[:, :steps].cpu()
        logps = logps[:, :steps].cpu() if logps is not None else None
        if order is not None:  # back to the caller's row order
            back = torch.empty(b, dtype=torch.long)
            back[torch.tensor(order)] = torch.arange(b)
            tokens = tokens[back]
            logps = logps[back] if logps is not None else None
        return tokens, logps

    def _stepper(self, model: nn.Module, cache: Any, prepare: Any, packed: bool):
        """Decode step ``t``: ``prepare(t)`` sets what the step reads and returns the 4D mask
        to pass and how to undo the step's cache write (for :func:`_call_step`), then one
        forward of the step's tokens (compiled in ``"step"`` mode); returns its float32 logits
        and, compiled, :func:`_proposal` of them for the next token when ``propose`` (its
        inputs) is given (else None)."""
        compiled = self._step_fn(model, packed)

        def step(t: int, nxt: torch.Tensor, position: torch.Tensor, propose: Any
                 ) -> tuple[torch.Tensor, Any]:
            mask, undo = prepare(t)
            return _call_step(model, compiled, undo, propose, input_ids=nxt[:, None],
                              attention_mask=mask, position_ids=position, cache=cache,
                              use_cache=True, logits_to_keep=1)

        return step

    def _copy_prepare(self, cache: StaticCache, masks: _Masks, w: int, new: int):
        """For a cache whose rows hold their prompt's keys (copied): step ``t`` reads the
        prompt and the tokens so far (compiled: rounded up to a multiple of 32 slots, so a few
        graphs cover every step) under the chunk's 4D mask; undoing puts the layers' write
        position back to slot ``w + t``."""
        rounded = "step" in self._modes

        def prepare(t: int) -> tuple[torch.Tensor, Any]:
            view = min(_bucket(w + t + 1), w + new) if rounded else w + t + 1
            _set_view(cache, view)

            def undo() -> None:
                for layer in cache.layers:
                    layer.cumulative_length.fill_(w + t)

            return masks.open(t)[..., :view], undo

        return prepare

    def _shared_prepare(self, cache: SharedPrefixCache, new: int):
        """For :mod:`prefkit.models.prefix_attention`: the cache holds the prompts' pad bias and
        closes the own slots after ``t`` (compiled: the own slots read are rounded up to a
        multiple of 32), so the 4D mask is a placeholder transformers hands on unread; a retry
        rewrites slot ``t`` with the same keys, so there is nothing to undo."""
        rounded = "step" in self._modes
        placeholder = torch.ones((1, 1, 1, 1), dtype=torch.bool, device=cache.own_bias.device)

        def prepare(t: int) -> tuple[torch.Tensor, Any]:
            cache.set_step(t, min(_bucket(t + 1), new) if rounded else None)
            return placeholder, lambda: None

        return prepare


_STEP_COMPILE_FAILED: list[str] = []
"""Set once compiling the decode step failed in this process: later steps run eagerly."""


def _forward_and_propose(model: nn.Module, propose: Any, **inputs: Any
                         ) -> tuple[torch.Tensor, Any]:
    """The compiled decode step: the last position's float32 logits, and :func:`_proposal` of
    them (``propose``: its other inputs) in the same graph, or None."""
    logits = model(**inputs).logits[:, -1].float()
    return logits, None if propose is None else _proposal(logits, *propose)


def _call_step(model: nn.Module, compiled: Any, undo: Any, propose: Any, **inputs: Any
               ) -> tuple[torch.Tensor, Any]:
    """One decode forward, ``(logits, proposal)``: through ``compiled`` (``torch.compile`` of
    :func:`_forward_and_propose`) when given, else the model eagerly and no proposal; if
    compiling fails (no C++ compiler, an operation inductor cannot lower, ...), a warning
    names the error, ``undo()`` puts the cache's write position back and the same step runs
    eagerly -- as every later step of the process does (the same tokens, slower). An error of
    the model itself raises again from the eager forward."""
    if compiled is None or _STEP_COMPILE_FAILED:
        return _forward_and_propose(model, None, **inputs)
    try:
        return compiled(model, propose, **inputs)
    except Exception as err:  # noqa: BLE001 -- any compiler failure: the same step, eager
        import warnings

        _STEP_COMPILE_FAILED.append(f"{type(err).__name__}: {err}")
        warnings.warn(f"compiling the decode step failed ({type(err).__name__}: {err}); "
                      "decoding eagerly from here on (the same tokens, slower)", stacklevel=2)
        undo()
        return _forward_and_propose(model, None, **inputs)


class _ViewLayer(StaticLayer):
    """A static cache layer whose ``update`` returns the first ``view`` slots of its keys and
    values (all of them when ``view`` is None): a decode step attends over the slots written
    so far instead of the whole preallocated cache. The slots left out are ones the mask
    closes (not yet written), whose softmax weight would be exactly 0."""

    view: int | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = super().update(key_states, value_states, *args, **kwargs)
        if self.view is None:
            return keys, values
        return keys[:, :, :self.view], values[:, :, :self.view]


def _view_cache(model: nn.Module, slots: int) -> StaticCache:
    """A StaticCache of ``slots`` slots per row whose layers are :class:`_ViewLayer` s (every
    layer attends fully: :func:`static_decode_unsupported`)."""
    cache = StaticCache(config=model.config, max_cache_len=slots)
    cache.layers = [_ViewLayer(max_cache_len=slots) for _ in cache.layers]
    return cache


def _set_view(cache: StaticCache, view: int) -> None:
    for layer in cache.layers:
        layer.view = view


def _bucket(width: int, step: int = 32) -> int:
    """The prompt width rounded up to a multiple of ``step`` (more left padding, every pad key
    masked): a compiled decode step is specialized to its cache shape, so rounding keeps the
    number of compiled graphs small when prompt widths vary between batches."""
    return -(-width // step) * step


def _distinct_rows(rows: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """``(first, inverse)``: the index of each distinct row's first occurrence, and for every
    row the position of its distinct row in ``first``."""
    seen: dict[tuple[int, ...], int] = {}
    first: list[int] = []
    inverse: list[int] = []
    for i, row in enumerate(rows):
        key = tuple(row)
        if key not in seen:
            seen[key] = len(first)
            first.append(i)
        inverse.append(seen[key])
    return first, inverse


def _expand_cache(cache: StaticCache, index: torch.Tensor) -> None:
    """Row ``r`` of every layer's keys and values becomes row ``index[r]`` of the prefilled
    distinct rows (a copy: each sample then writes its own tokens)."""
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)
        layer.batch_size = int(index.numel())
        torch._dynamo.mark_static_address(layer.keys)
        torch._dynamo.mark_static_address(layer.values)


def _first_argmax(scores: torch.Tensor) -> torch.Tensor:
    """``scores.argmax(-1)`` (the first maximal index of each row, as both are documented to
    return), through ``max``, which is ~3x faster on the CPU for a [32, 4096] step."""
    return scores.max(-1).indices


# ----------------------------------------------------------------------------- generate()


class _RuleProcessor(LogitsProcessor):
    """:func:`sampling_scores` as a transformers logits processor (greedy decoding then
    samples); the step is the number of tokens generated so far."""

    def __init__(self, rows: torch.Tensor, prompt_width: int, seed: int,
                 s: DecodeSettings) -> None:
        self.rows = rows
        self.prompt_width = prompt_width
        self.seed = seed
        self.s = s

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.Tensor:
        return sampling_scores(scores, self.rows, input_ids.shape[1] - self.prompt_width,
                               seed=self.seed, temperature=self.s.temperature,
                               top_k=self.s.top_k, top_p=self.s.top_p)


@dataclass
class GenerateBackend:
    """Hugging Face ``generate`` (its own KV cache and loop) with the sampling rule as a logits
    processor and ``min_new_tokens`` through its GenerationConfig. Works with anything that has
    ``generate`` and ``parameters()`` (wrapped or sharded policies included)."""

    name: str = "transformers"

    def generate(self, model: Any, prompt_ids: Sequence[Sequence[int]],
                 settings: DecodeSettings, *, seed: int, row_offset: int = 0,
                 logprobs: bool = False) -> Generation:
        s = settings
        config = GenerationConfig(
            do_sample=False, max_new_tokens=s.max_new_tokens,
            # None would fall back to the model's own EOS; [] is "no EOS" (rows never stop)
            eos_token_id=s.eos_id if s.eos_id is not None else [],
            pad_token_id=s.pad_id, num_beams=1,
            min_new_tokens=s.min_new_tokens if s.min_new_tokens and s.eos_id is not None
            else None,
            return_dict_in_generate=logprobs, output_logits=logprobs,
        )
        gen = Generation([], [] if logprobs else None)
        if not prompt_ids:
            return gen
        device = _device(model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for start, chunk in _chunks(prompt_ids, s.batch_size):
                    ids, mask = left_pad(chunk, s.pad_id)
                    processors = LogitsProcessorList()
                    if s.temperature > 0:
                        rows = torch.arange(len(chunk), dtype=torch.long) + (row_offset + start)
                        processors.append(_RuleProcessor(rows, ids.shape[1], seed, s))
                    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                         generation_config=config, logits_processor=processors)
                    seq = out.sequences if logprobs else out
                    new = seq[:, ids.shape[1]:]
                    logps = None
                    if logprobs:
                        raw = torch.stack([x.float() for x in out.logits], 1)
                        logps = torch.log_softmax(raw, -1).gather(-1, new[..., None])[..., 0]
                        logps = logps.cpu()
                    _collect(new.cpu(), logps, s.eos_id, gen)
        finally:
            model.train(was_training)
        return gen


COMPILE_PAYS_AFTER = 10_000
"""Decode steps (one-token forwards of a batch) a run must plan for ``"auto"`` to compile the
step: on the bench's tiny Llama (2 cores) compiling took ~5 s and saved ~1.25 ms a step, so it
paid after ~4,000 steps; this leaves a 2.5x margin for slower compiles."""


def compiler_missing(device: torch.device | str) -> str | None:
    """Why ``torch.compile`` cannot build kernels for ``device`` here (None: as far as can be
    told without compiling, it can): inductor needs a C++ compiler on CPU and triton on
    CUDA."""
    kind = torch.device(device).type
    if kind == "cuda":
        import importlib.util

        return None if importlib.util.find_spec("triton") else "triton is not installed"
    if kind != "cpu":
        return f"compiling is chosen automatically on CPU and CUDA only, not {kind}"
    if cpp_compiler() is not None:
        return None
    return "no C++ compiler on PATH (g++, c++, clang++ or $CXX)"


def auto_backend(decode_steps: int, device: torch.device | str) -> tuple[str, str]:
    """The ``"auto"`` generation backend of a run that plans ``decode_steps`` one-token
    forwards: ``("prefkit-compiled", why)`` when that is at least
    :data:`COMPILE_PAYS_AFTER` and compiling is possible on ``device``, else
    ``("prefkit", why)``. A compile that fails anyway falls back to eager steps with a warning
    (the same tokens)."""
    if decode_steps < COMPILE_PAYS_AFTER:
        return "prefkit", (f"{decode_steps:,} decode steps planned; compiling pays after "
                           f"~{COMPILE_PAYS_AFTER:,}")
    missing = compiler_missing(device)
    if missing is not None:
        return "prefkit", f"{decode_steps:,} decode steps planned, but {missing}"
    return "prefkit-compiled", (f"{decode_steps:,} decode steps planned (compiling pays after "
                                f"~{COMPILE_PAYS_AFTER:,})")


_BACKENDS = {"prefkit": StaticCacheBackend,
             "prefkit-compiled": lambda: StaticCacheBackend(compile=True),
             "transformers": GenerateBackend}


def get_backend(backend: str | GenerationBackend) -> GenerationBackend:
    """A backend from its name (``"prefkit"``: :class:`StaticCacheBackend`,
    ``"prefkit-compiled"``: the same with ``compile=True``, ``"transformers"``:
    :class:`GenerateBackend`) or the backend itself."""
    if isinstance(backend, str):
        if backend not in _BACKENDS:
            raise ValueError(f"unknown generation backend {backend!r}; expected one of "
                             f"{sorted(_BACKENDS)} or a GenerationBackend instance")
        return _BACKENDS[backend]()
    if not isinstance(backend, GenerationBackend):
        raise TypeError(f"expected a backend name or a GenerationBackend, got "
                        f"{type(backend).__name__}")
    return backend
