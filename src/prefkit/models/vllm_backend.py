"""vLLM as a :class:`prefkit.models.decode.GenerationBackend` (optional: ``pip install vllm``,
needs a GPU).

The engine runs in the training process, on the training GPU (colocated: its KV cache takes
``gpu_memory_utilization`` of the GPU memory, the rest stays with training), built from the
same checkpoint as the policy. Before every ``generate`` it loads the policy's current weights
(``load_weights`` of the model inside the engine: no checkpoint written, no second process), so
after each optimizer step the next rollout samples from the updated policy.

Sampling follows vLLM's own sampler, NOT prefkit's Gumbel rule: the tokens are a pure function
of ``(seed, global row)`` through a per-row vLLM seed (:func:`row_seed`), reproducible on the
same vLLM version and hardware, but not equal to the transformers backends' tokens. Log-probs
are vLLM's log-probs of the sampled tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .decode import DecodeSettings, Generation, cut_at_eos

__all__ = ["VLLMBackend", "row_seed", "vllm_unavailable"]


def vllm_unavailable() -> str | None:
    """Why the vLLM backend cannot run here (None: it can)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not installed (pip install vllm)"
    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU and none is visible"
    return None


def row_seed(seed: int, row: int) -> int:
    """The vLLM seed of global row ``row``: a 31-bit hash of ``(seed, row)`` (rows of one
    prompt differ; the same row always gets the same seed)."""
    x = torch.tensor([(seed & 0xFFFFFFFF) ^ ((row * 0x9E3779B1) & 0xFFFFFFFF)],
                     dtype=torch.long)
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    return int(x ^ (x >> 16)) & 0x7FFFFFFF


def _engine_model(llm: Any) -> Any:
    """The torch model inside an in-process engine (the attribute path moved between vLLM
    versions; each known one is tried)."""
    engine = llm.llm_engine
    for path in ("model_executor.driver_worker.worker.model_runner.model",
                 "model_executor.driver_worker.model_runner.model",
                 "engine_core.engine_core.model_executor.driver_worker.worker.model_runner.model"):
        obj = engine
        try:
            for name in path.split("."):
                obj = getattr(obj, name)
            return obj
        except AttributeError:
            continue
    raise RuntimeError("cannot reach the model inside this vLLM engine to load weights; run it "
                       "in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0)")


@dataclass
class VLLMBackend:
    """vLLM in-process, colocated with training (module docs).

    Args:
        model_path: the checkpoint the policy was loaded from (architecture and tokenizer).
        gpu_memory_utilization: share of the GPU memory vLLM may take (weights + KV cache).
        sync_weights: load the policy's weights into the engine before every ``generate``.
        engine_kwargs: more ``vllm.LLM`` arguments (``dtype``, ``max_model_len``, ...).
    """

    model_path: str
    gpu_memory_utilization: float = 0.3
    sync_weights: bool = True
    engine_kwargs: dict[str, Any] = field(default_factory=dict)
    name: str = "vllm"

    def __post_init__(self) -> None:
        reason = vllm_unavailable()
        if reason is not None:
            raise RuntimeError(f"the vLLM generation backend cannot run: {reason}")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine
        import vllm

        self._vllm = vllm
        self.llm = vllm.LLM(model=self.model_path,
                            gpu_memory_utilization=self.gpu_memory_utilization,
                            **self.engine_kwargs)

    def load_weights(self, model: Any) -> None:
        """Copy ``model``'s parameters (by their transformers names) into the engine. A LoRA
        policy must be merged first (``merge_and_unload`` on a copy) and a sharded one
        gathered: the engine loads full tensors."""
        weights = ((name, tensor.detach()) for name, tensor in model.state_dict().items())
        _engine_model(self.llm).load_weights(weights)
        reset = getattr(self.llm, "reset_prefix_cache", None)
        if reset is not None:
            reset()  # cached prompt KV belongs to the old weights

    def generate(self, model: Any, prompt_ids: Sequence[Sequence[int]],
                 settings: DecodeSettings, *, seed: int, row_offset: int = 0,
                 logprobs: bool = False) -> Generation:
        s = settings
        if self.sync_weights and model is not None:
            self.load_weights(model)
        params = []
        for r in range(len(prompt_ids)):
            extra: dict[str, Any] = {}
            if s.top_k is not None:
                extra["top_k"] = s.top_k
            if s.top_p is not None:
                extra["top_p"] = s.top_p
            params.append(self._vllm.SamplingParams(
                n=1, temperature=s.temperature, max_tokens=s.max_new_tokens,
                min_tokens=s.min_new_tokens, seed=row_seed(seed, row_offset + r),
                ignore_eos=s.eos_id is None,
                stop_token_ids=[s.eos_id] if s.eos_id is not None else None,
                logprobs=0 if logprobs else None, **extra))
        prompts = [{"prompt_token_ids": list(p)} for p in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        gen = Generation([], [] if logprobs else None)
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            n = cut_at_eos(ids, s.eos_id)
            gen.ids.append(ids[:n])
            if gen.logprobs is not None:
                gen.logprobs.append([float(step[t].logprob) for step, t
                                     in zip(completion.logprobs[:n], ids[:n], strict=True)])
        return gen
