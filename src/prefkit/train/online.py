"""Online training: sample from the policy, score the samples, update -- on the one loop.

``train_online(OnlineConfig(algo="grpo", ...), reward=source, prompts=[...])``. Each
*iteration*:

1. take ``prompts_per_iteration`` prompts (a seeded shuffle of the prompt list, cycled); with
   several processes each process takes its contiguous shard;
2. sample each prompt's group of completions with the current policy (:mod:`.rollout`;
   ``num_generations`` per prompt unless the algorithm sizes groups otherwise -- groups may
   differ in size --, plus one greedy completion per prompt when the algorithm wants it as a
   baseline, as ReMax);
3. score them with the reward source (:mod:`prefkit.rewards.sources`; one call per group size),
   add the algorithm's per-sample terms (DAPO's overlong penalty), stop with a clear message on
   a NaN reward; with dynamic sampling (DAPO) drop the groups the algorithm rejects and sample
   further rounds of prompts until the batch is full again; shape the scores over the global
   batch (length penalty, normalization, clipping); log the source's ``status_counts()`` (ok /
   wrong / unparsed / timeout / error) when it has them, as ``reward_status/<status>``; a
   source that computes in the background (``submit``, as the reward executor's) scores each
   generate batch while the next one generates (``reward_overlap``; the same results, and the
   wait left after generation logged as ``reward_wait_seconds``);
4. one no-grad forward of the policy (and the reference) over prefix-shared rows -- each
   prompt computed once for its completions -- gives the sampled tokens' log-probs ("old"
   log-probs), the reference log-probs and, with a value head, the value estimates -- each
   only when the algorithm needs it;
5. the algorithm's targets (advantages from :mod:`prefkit.losses.rl`, pairs, kept samples);
6. ``ppo_epochs`` passes over the rollout in ``num_minibatches`` optimizer steps each (each
   split into ``gradient_accumulation_steps`` micro-batches) through
   :func:`prefkit.train.loop.fit` -- the same loop, reduction and checkpoints as every trainer
   -- with the algorithm's loss.

Algorithms (``algo``) are registered parts (:mod:`prefkit.train.algorithms`: ppo, reinforce,
rloo, grpo, dr_grpo, remax, online_dpo, online_ipo, raft, dapo, gspo, reinforce_pp, and any
algorithm registered by the user); this module never branches on their names.

KL blow-ups (mean sequence KL above ``max_kl``) and NaN rewards stop the run with a
:class:`OnlineTrainingError` naming the iteration and the last checkpoint. Completions that hit
``max_new_tokens`` and empty ones are counted per iteration (``rollouts.jsonl`` in
``output_dir`` and :attr:`OnlineResult.iterations`).

Exactness: the samples are a pure function of (seed, iteration, sampling round, global prompt
index), so a 2-process run with the same global batch draws the same rollouts as 1 process and
ends with the same parameters; reward normalization and the algorithms' global statistics are
computed over the global batch, and dynamic sampling selects its batch in global sampling order
(the groups a process trains may have been sampled by another). Checkpoints are
taken at iteration boundaries (``save_steps`` is rounded up to a multiple of the optimizer
steps per iteration), so resuming replays the next iteration exactly.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import random
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..losses import rl
from ..models.bounded import preview
from ..models.encoding import CHAT_TEMPLATE_HELP, CHAT_TEMPLATE_MODES
from ..models.logprobs import sequence_logps
from ..models.packing import PromptGroup, pack_groups
from ..rewards.sources import REWARD_NORMALIZATIONS
from . import algorithms
from .algorithms.samples import (
    PendingScores,
    SampleGroup,
    as_rollout,
    flat,
    from_rollout,
)
from .checkpoint import list_checkpoints
from .config import (
    AT_LEAST_1,
    DTYPES,
    NON_NEGATIVE,
    POSITIVE,
    Bounds,
    ConfigError,
    LoopConfig,
    config_help,
    option,
)
from .loop import Callback, FitResult, StepOutput, fit, make_accelerator
from .loss_spec import check_loss_spec
from .reporting import keep_records_up_to
from .rollout import (
    Rollout,
    SamplingSettings,
    TransformersBackend,
    collect_rollout,
    token_grid,
)
from .sharding import is_sharded

__all__ = ["ALGORITHMS", "OnlineConfig", "OnlineResult", "OnlineTrainingError",
           "PolicyWithValue", "best_of_n", "read_prompts", "resolve_model", "resolve_prompts",
           "self_reward", "train_online", "west_of_n_pairs"]

ALGORITHMS = algorithms.NAMES
"""The registered online algorithms (:mod:`prefkit.train.algorithms`), a live view."""
DEFAULT_MAX_PROMPT_LENGTH = 1024
"""Prompt tokens kept by default (when the model's positions allow that many)."""


class OnlineTrainingError(RuntimeError):
    """An online run had to stop (NaN reward, KL blow-up); the message names the iteration and
    the last checkpoint."""


LOOP_HELP = config_help(LoopConfig)
UNIT = Bounds(0, 1)
"""[0, 1]: discount and GAE lambda."""
PROBABILITY = Bounds(0, 1, low_open=True)
"""(0, 1]: nucleus sampling mass."""


@dataclass
class OnlineConfig(LoopConfig):
    """An online run: the loop's settings plus sampling, reward and algorithm settings.

    Every value is checked when the config is built (bounds and choices of each field, the
    ``dpo_loss`` spec, the combinations an algorithm needs), before any model loads. A resume
    may change ``iterations`` (more or fewer), ``max_kl`` (a stop rule),
    ``sampling_batch_size`` (the samples are a pure function of the seed and the global row,
    whatever the batch: tested) and ``chunk_size`` (how the LM head is computed, not what), as
    well as the loop's own non-identity fields; every other field is the run's identity."""

    output_dir: str = option(LOOP_HELP["output_dir"], "runs/online", identity=False)
    model: str = option("Policy: a checkpoint directory, a .json/.yaml tiny-model file "
                        "(`prefkit models init` makes one) or lab:TASK (the lab's cached SFT "
                        "model of that task, built on first use).", "", path=True)
    prompts: str = option("Prompts: records with a 'prompt' column (text, or a list of "
                          "{role, content} messages rendered with the chat template) in any "
                          "file prefkit reads (JSONL, JSON, Parquet, a dataset folder, "
                          "FOLDER::split), a .txt file (one prompt a line) or lab:TASK[:N].",
                          "", path=True)
    reward: str = option("Reward source (CLI): 'rm:PATH' (a prefkit reward model), "
                         "'implicit:POLICY[,REFERENCE]', 'python:module:function' "
                         "(fn(prompt, completion) -> float; the module may be a file in the "
                         "working folder, or give FILE.py:function), 'gold:TASK' (a lab "
                         "task's gold reward), 'judge:CONFIG' (a pairwise LLM / lab judge or "
                         "jury: each sample's win rate in its group, RLAIF; see prefkit judge), "
                         "'self' (the policy's own implicit reward).", "")
    reward_workers: int = option(
        "Run a 'python:' reward in this many worker processes with a per-call time limit "
        "(prefkit.rewards.executor; 0: in this process, as a plain function). Needs "
        "reward_failure_value.", 0, bounds=NON_NEGATIVE, identity=False)
    reward_timeout: float = option(
        "Seconds a reward call may take in a worker before it is killed and scored "
        "reward_failure_value (status 'timeout').", 10.0, bounds=POSITIVE, identity=False)
    reward_failure_value: float | None = option(
        "The reward of a call that times out or fails in a worker (status 'timeout' / 'error'; "
        "no default: a failure is never silently 0).")
    reward_overlap: bool = option(
        "Score rewards while generating: with a reward that computes in the background "
        "(a source with submit(), as --reward-workers makes), each generate batch (whole "
        "prompts, at most sampling_batch_size rows) goes to the reward workers as soon as it "
        "is generated, while the next batch generates; the same samples, rewards and updates "
        "as without (the iteration log's reward_wait_seconds: the wait for rewards after "
        "generation). Lower sampling_batch_size for more overlap.", True, identity=False)
    algo: str = field(default=algorithms.DEFAULT_ALGORITHM, metadata={
        "help": f"Online algorithm: {', '.join(ALGORITHMS)} (prefkit.train.algorithms; an "
                "algorithm registered there is accepted too).",
        "identity": True, "path": False, "choices": ALGORITHMS})
    iterations: int = option("Rollout/update iterations (sets max_steps; a resume may change "
                             "it).", 20, bounds=AT_LEAST_1, identity=False)
    prompts_per_iteration: int = option("Prompts sampled per iteration (global, over all "
                                        "processes).", 16, bounds=AT_LEAST_1)
    num_generations: int = option("Completions per prompt (the group size G).", 4,
                                  bounds=AT_LEAST_1)
    ppo_epochs: int = option("Passes over each rollout.", 1, bounds=AT_LEAST_1)
    num_minibatches: int = option("Optimizer steps per pass over a rollout.", 1,
                                  bounds=AT_LEAST_1)
    max_new_tokens: int = option("Length cap of a completion (EOS included).", 32,
                                 bounds=AT_LEAST_1)
    max_prompt_length: int | None = option(
        "Max prompt tokens: a longer prompt keeps its last tokens (BOS first); cut prompts are "
        "counted (prompts_truncated). None: the policy's max_position_embeddings minus "
        "max_new_tokens, at most 1024.", bounds=AT_LEAST_1)
    chat_template: str = option(CHAT_TEMPLATE_HELP, "auto", choices=CHAT_TEMPLATE_MODES)
    temperature: float = option("Sampling temperature (log-probs are at temperature 1: keep 1 "
                                "for on-policy gradients).", 1.0, bounds=POSITIVE)
    top_k: int | None = option("Top-k sampling (None: off).", bounds=AT_LEAST_1)
    top_p: float | None = option("Nucleus sampling mass in (0, 1] (None: off).",
                                 bounds=PROBABILITY)
    stop: list[str] = option("Stop strings.", [])
    sampling_batch_size: int = option("Rows per generate call (the samples do not depend on "
                                      "it).", 64, bounds=AT_LEAST_1, identity=False)
    min_new_tokens: int = option("EOS is masked until a completion has this many tokens (0: "
                                 "off).", 0, bounds=NON_NEGATIVE)
    generation_backend: str = option(
        "The token generator of the rollouts: 'prefkit' (its own batched decode loop over a "
        "static KV cache), 'prefkit-compiled' (the same with torch.compile), 'transformers' "
        "(Hugging Face generate) or 'auto' (prefkit-compiled when the run plans enough decode "
        "steps for compiling to pay and a compiler is there, else prefkit: "
        "prefkit.models.decode.auto_backend); the same samples for the same seed.", "auto",
        choices=("auto", "prefkit", "prefkit-compiled", "transformers"), identity=False)
    kl_coef: float = option("KL coefficient (reward penalty or loss weight; 0: no reference "
                            "needed for the PG methods).", 0.05, bounds=NON_NEGATIVE)
    kl_estimator: str = option("k1, k2, k3 or abs (Schulman's estimators); 'auto': k3 with "
                               "the KL in the loss, k1 in the reward.", "auto",
                               choices=("auto", *rl.KL_KINDS))
    kl_in: str = option("'reward' (penalty in the reward), 'loss' (a loss term) or 'auto' "
                        "(the algorithm's: loss for grpo, dr_grpo, dapo, gspo; reward "
                        "otherwise).", "auto",
                        choices=("auto", "reward", "loss"))
    target_kl: float | None = option("Adaptive KL controller target (None: fixed kl_coef).",
                                     bounds=POSITIVE)
    kl_horizon: int = option("Adaptive KL controller horizon.", 10000, bounds=AT_LEAST_1)
    max_kl: float | None = option("Stop when the mean sequence KL to the reference exceeds "
                                  "this (None: never).", bounds=POSITIVE, identity=False)
    clip_eps: float = option("PPO ratio clip.", 0.2, bounds=POSITIVE)
    clip_eps_high: float | None = option("Upper ratio clip (DAPO's decoupled clip; None: the "
                                         "algorithm's default -- 0.28 for dapo -- else "
                                         "clip_eps).", bounds=POSITIVE)
    dynamic_sampling: bool | None = option(
        "Dynamic sampling (DAPO): drop groups whose rewards are all equal and sample more "
        "prompts until the batch is full (None: the algorithm's default, on for dapo).")
    max_sampling_rounds: int = option(
        "Dynamic sampling: at most this many sampling rounds per iteration; then a warning and "
        "the earliest dropped groups fill the batch.", 4, bounds=AT_LEAST_1)
    overlong_buffer: int | None = option(
        "Soft overlong punishment (DAPO): a penalty from 0 to -1 over the last this-many tokens "
        "before max_new_tokens (0: off; None: the algorithm's default, max_new_tokens // 4 for "
        "dapo, else off).", bounds=NON_NEGATIVE)
    loss_aggregation: str = option("token_mean, seq_mean_token_mean or seq_mean_token_sum_norm "
                                   "('auto': the algorithm's: Dr. GRPO's for dr_grpo, "
                                   "seq_mean_token_mean for gspo, token_mean otherwise).",
                                   "auto", choices=("auto", *rl.AGGREGATION_MODES))
    vf_coef: float = option("PPO value-loss weight.", 0.1, bounds=NON_NEGATIVE)
    value_clip: float | None = option("PPO value clip range (None: no clipping).", 0.2,
                                      bounds=POSITIVE)
    gamma: float = option("PPO discount, in [0, 1].", 1.0, bounds=UNIT)
    lam: float = option("PPO GAE lambda, in [0, 1].", 0.95, bounds=UNIT)
    whiten_advantages: bool = option("Whiten PPO advantages over the rollout.", True)
    reward_normalization: str = option("none, batch or running.", "none",
                                       choices=REWARD_NORMALIZATIONS)
    reward_clip: float | None = option("Clip shaped rewards to [-c, c] (None: no clipping).",
                                       bounds=POSITIVE)
    length_penalty: float = option("Reward minus this times the completion length.", 0.0)
    beta: float = option("beta of online_ipo and of reward 'self' (the implicit reward); "
                         "online_dpo takes its beta from dpo_loss, e.g. 'dpo(beta=0.2)'.", 0.1,
                         bounds=POSITIVE)
    dpo_loss: str = option("Pairwise loss of online_dpo (any registered pairwise loss, with "
                           "arguments: 'ipo', 'dpo(label_smoothing=0.1)').", "dpo")
    raft_keep: int = option("RAFT: samples kept per prompt (the best by reward).", 1,
                            bounds=AT_LEAST_1)
    lora: bool = option("Train new LoRA adapters; the reference is the model as loaded (them "
                        "disabled; a saved LoRA policy loads with its adapters merged).", False)
    lora_r: int = option("LoRA rank.", 16, bounds=AT_LEAST_1)
    lora_alpha: int = option("LoRA alpha.", 32, bounds=POSITIVE)
    dtype: str = option("Model weights dtype: float32 or bfloat16.", "float32", choices=DTYPES)
    chunk_size: int = option("LM-head chunk (completion positions).", 1024, bounds=AT_LEAST_1,
                             identity=False)

    def __post_init__(self) -> None:
        if isinstance(self.algo, str):
            self.algo = self.algo.replace("-", "_")  # the CLI's online-dpo == online_dpo
        super().__post_init__()  # every field against its bounds and choices
        check_loss_spec(self.dpo_loss, field=f"{type(self).__name__}.dpo_loss",
                        kinds=("pairwise",), trained="online_dpo")
        self.algorithm.check(self)
        if self.overlong_buffer is not None and self.overlong_buffer > self.max_new_tokens:
            raise ConfigError(f"overlong_buffer={self.overlong_buffer} must be at most "
                              f"max_new_tokens={self.max_new_tokens}")
        per_iter = self.steps_per_iteration
        self.max_steps = self.iterations * per_iter
        if self.save_steps and self.save_steps % per_iter:
            # checkpoints only at iteration boundaries (so a resume replays whole iterations)
            self.save_steps += per_iter - self.save_steps % per_iter

    @property
    def algorithm(self) -> algorithms.Algorithm:
        """The registered :class:`~prefkit.train.algorithms.Algorithm` named by ``algo``."""
        return algorithms.get_algorithm(self.algo)

    @property
    def steps_per_iteration(self) -> int:
        return self.ppo_epochs * self.num_minibatches

    def resolved_max_prompt_length(self, model: nn.Module | None) -> int:
        """``max_prompt_length``, or the default: the room the model's positions leave for
        ``max_new_tokens`` (``max_position_embeddings - max_new_tokens``), at most
        :data:`DEFAULT_MAX_PROMPT_LENGTH`."""
        if self.max_prompt_length is not None:
            return self.max_prompt_length
        from ..models.bounded import model_max_length

        limit = model_max_length(model, cap=DEFAULT_MAX_PROMPT_LENGTH + self.max_new_tokens)
        return max(1, min(DEFAULT_MAX_PROMPT_LENGTH, limit - self.max_new_tokens))

    def resolved_kl_in(self) -> str:
        return self.kl_in if self.kl_in != "auto" else self.algorithm.kl_in

    def resolved_kl_estimator(self) -> str:
        if self.kl_estimator != "auto":
            return self.kl_estimator
        return "k3" if self.resolved_kl_in() == "loss" else "k1"

    def resolved_aggregation(self) -> str:
        if self.loss_aggregation != "auto":
            return self.loss_aggregation
        return self.algorithm.aggregation

    def resolved_clip_eps_high(self) -> float | None:
        if self.clip_eps_high is not None:
            return self.clip_eps_high
        return self.algorithm.clip_eps_high

    def resolved_dynamic_sampling(self) -> bool:
        if self.dynamic_sampling is not None:
            return bool(self.dynamic_sampling)
        return self.algorithm.dynamic_sampling

    def resolved_overlong_buffer(self) -> int:
        if self.overlong_buffer is not None:
            return self.overlong_buffer
        return int(self.algorithm.overlong_fraction * self.max_new_tokens)


@dataclass
class OnlineResult:
    """What a run returns: the loop's result, per-iteration rollout statistics, the model (and
    PPO's trained value head)."""

    fit: FitResult
    iterations: list[dict[str, Any]]
    model: Any
    tokenizer: Any
    algo: str
    truncation: dict[str, Any] = field(default_factory=dict)
    value_head: nn.Module | None = field(default=None, repr=False)
    generation: dict[str, str] = field(default_factory=dict)  # backend used, and why

    def to_dict(self) -> dict[str, Any]:
        return {"algo": self.algo, "steps": self.fit.steps, "metrics": self.fit.metrics,
                "iterations": self.iterations, "truncation": self.truncation,
                "generation": self.generation,
                "checkpoints": self.fit.checkpoints, "seconds": round(self.fit.seconds, 3)}


def _generation_backend(config: OnlineConfig, accelerator: Any) -> dict[str, str]:
    """The rollouts' generation backend, ``{"backend": name, "why": ...}``: the configured one,
    or for ``"auto"`` :func:`prefkit.models.decode.auto_backend` of the run's planned decode
    steps (iterations x generate calls per rollout x max_new_tokens, the least a run does:
    dynamic sampling's extra rounds and the greedy baseline add more)."""
    if config.generation_backend != "auto":
        return {"backend": config.generation_backend, "why": "configured"}
    from ..models.decode import auto_backend

    rows = config.prompts_per_iteration // accelerator.num_processes * config.num_generations
    calls = -(-rows // config.sampling_batch_size)
    name, why = auto_backend(config.iterations * calls * config.max_new_tokens,
                             accelerator.device)
    logging.getLogger(__name__).info("generation backend %s (auto): %s", name, why)
    return {"backend": name, "why": f"auto: {why}"}


class PolicyWithValue(nn.Module):
    """The trained module: a causal LM and (PPO) a value head on its final hidden states.

    ``forward(packed_batch) -> (SequenceLogps, values)`` computes the completion tokens'
    log-probs and, with a value head, the value of the state before each completion token
    (``[N]``, same order as the log-probs) in ONE forward of the shared body. The loop wraps
    this module (DDP), so gradients of both heads synchronize.

    ``forward(call=fn)`` returns ``fn()``: under FSDP2 with a value head this module is the
    sharded root that owns the embeddings, final norm, LM head and value head
    (:func:`_shard_online`), so every other use of the policy -- generation, the LoRA
    reference's log-probs -- runs inside its forward, where those weights are gathered.
    """

    def __init__(self, policy: nn.Module, *, value_head: bool = False,
                 chunk_size: int = 1024) -> None:
        super().__init__()
        self.policy = policy
        self.chunk_size = chunk_size
        self.value_head = None
        if value_head:
            hidden = policy.get_input_embeddings().weight.shape[1]
            self.value_head = nn.Linear(hidden, 1, dtype=torch.float32)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, batch=None, *, call: Callable[[], Any] | None = None):
        if call is not None:
            return call()
        lp = sequence_logps(self.policy, batch, chunk_size=self.chunk_size,
                            with_hidden=self.value_head is not None)
        values = None
        if self.value_head is not None:
            values = self.value_head(lp.hidden.float()).squeeze(-1)
        return lp, values


class _RootedPolicy:
    """The policy as the rollouts see it when a sharded :class:`PolicyWithValue` is the FSDP2
    root (PPO under ``sharding="fsdp2"``): ``generate`` runs inside the root's forward (its
    embeddings, norm and heads gathered for the whole generation); parameters, device and
    train/eval mode are the root's."""

    def __init__(self, root: PolicyWithValue) -> None:
        self.root = root

    def parameters(self):
        return self.root.parameters()

    @property
    def training(self) -> bool:
        return self.root.training

    def eval(self) -> _RootedPolicy:
        self.root.eval()
        return self

    def train(self, mode: bool = True) -> _RootedPolicy:
        self.root.train(mode)
        return self

    def generate(self, **kwargs):
        return self.root(call=lambda: self.root.policy.generate(**kwargs))


# ----------------------------------------------------------------------------- helpers


def best_of_n(model: Any, tokenizer: Any, prompts: Sequence[str], reward: Callable, *, n: int,
              settings: SamplingSettings | None = None, seed: int = 0
              ) -> tuple[list[str], torch.Tensor]:
    """Best-of-N sampling: ``n`` samples per prompt, the one the reward source ranks first;
    returns ``(texts, rewards [P, n])``."""
    backend = TransformersBackend(settings or SamplingSettings())
    ro = collect_rollout(backend, model, tokenizer, prompts, n=n, seed=seed)
    scores = reward(ro.prompts, ro.completions, ro.prompt_ids, ro.completion_ids)
    best = scores.argmax(dim=1).tolist()
    return [cs[b] for cs, b in zip(ro.completions, best, strict=True)], scores


def west_of_n_pairs(prompts: Sequence[str], completions: Sequence[Sequence[str]],
                    scores: torch.Tensor) -> list[dict[str, str]]:
    """West-of-N preference pairs (Pace et al. 2024): per prompt the best and the worst of its
    N samples under a reward model, as ``{"prompt", "chosen", "rejected"}`` records for reward
    model self-training; prompts whose best and worst score the same are skipped."""
    rows = []
    for p, cs, s in zip(prompts, completions, scores, strict=True):
        hi, lo = int(torch.argmax(s)), int(torch.argmin(s))
        if s[hi] > s[lo] and cs[hi] != cs[lo]:
            rows.append({"prompt": p, "chosen": cs[hi], "rejected": cs[lo]})
    return rows


def generation_chunks(n_prompts: int, n: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` prompt ranges of the chunks a round generates in when rewards overlap
    generation: ``max(1, batch_size // n)`` whole prompts each (``n`` rows a prompt), i.e. one
    generate batch of at most ``batch_size`` rows (one prompt when ``n > batch_size``). When
    ``batch_size`` is a multiple of ``n`` the chunks are exactly the batches one call for the
    whole round decodes (the same rows side by side, the same padding)."""
    per = max(1, batch_size // max(1, n))
    return [(start, min(start + per, n_prompts)) for start in range(0, n_prompts, per)]


def _grid(values: torch.Tensor, row: torch.Tensor, col: torch.Tensor, rows: int, width: int
          ) -> torch.Tensor:
    out = values.new_zeros(rows, width)
    out[row, col] = values
    return out


# ----------------------------------------------------------------------------- the shared loop


class _Online:
    """Rollouts, targets and the step function of one run (no file I/O but the log). Everything
    that differs between algorithms is asked of ``config.algorithm``
    (:class:`prefkit.train.algorithms.Algorithm`); this class never looks at its name."""

    def __init__(self, config: OnlineConfig, module: PolicyWithValue, tokenizer: Any,
                 reward: Callable, prompts: Sequence[str], accelerator: Any,
                 reference: nn.Module | None, shaping: Any,
                 monitor: Callable[[Rollout], dict[str, torch.Tensor]] | None = None,
                 max_prompt_length: int | None = None) -> None:
        self.cfg = config
        self.algorithm = config.algorithm
        self.monitor = monitor
        self.module = module
        self.tokenizer = tokenizer
        self.reward = reward
        self.prompts = list(prompts)
        self.acc = accelerator
        self.reference = reference
        self.shaping = shaping
        # PPO under FSDP2: the module is the sharded root every policy call enters
        self.rooted = module.value_head is not None and is_sharded(module)
        self.generation = _generation_backend(config, accelerator)
        self.backend = TransformersBackend(SamplingSettings(
            max_new_tokens=config.max_new_tokens, temperature=config.temperature,
            top_k=config.top_k, top_p=config.top_p, stop=list(config.stop),
            batch_size=config.sampling_batch_size, max_prompt_length=max_prompt_length,
            chat_template=config.chat_template, min_new_tokens=config.min_new_tokens,
            backend=self.generation["backend"]))
        self.truncation = {"max_prompt_length": max_prompt_length, "prompts_truncated": 0,
                           "completions_truncated": 0}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.kl_in = config.resolved_kl_in()
        self.kl_kind = config.resolved_kl_estimator()
        self.aggregation = config.resolved_aggregation()
        self.kl_ctl = (rl.AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
                       if config.target_kl else rl.FixedKLController(config.kl_coef))
        self.needs_reference = self.algorithm.needs_reference(config)
        # the sampled tokens' log-probs before the update ("old") need their own forward only
        # when the algorithm asks (off-policy updates, PPO's values, a KL penalty in the
        # reward); otherwise the update's own forward equals them
        self.needs_old = self.algorithm.needs_old(config, self.kl_in)
        self._kl_sum = self._kl_n = 0.0
        self._pending_kl = False
        self._reward_wait: float | None = None  # this iteration's, when rewards overlapped
        self.iterations: list[dict[str, Any]] = []
        self.log_path = Path(config.output_dir) / "rollouts.jsonl"
        self._log_opened = False
        world = accelerator.num_processes
        if config.prompts_per_iteration % world:
            raise ConfigError(f"prompts_per_iteration={config.prompts_per_iteration} must be "
                              f"divisible by the {world} processes")
        per_proc = config.prompts_per_iteration // world
        if per_proc < config.num_minibatches * config.gradient_accumulation_steps:
            raise ConfigError(
                f"{per_proc} prompts per process cannot fill num_minibatches x "
                f"gradient_accumulation_steps = "
                f"{config.num_minibatches * config.gradient_accumulation_steps} micro-batches")

    # ---- prompts of an iteration
    def _round_prompts(self, iteration: int, round_: int) -> list[Any]:
        """The GLOBAL prompts of an iteration's sampling round: round 0 takes the next
        ``prompts_per_iteration`` of a seeded shuffle of the prompt list (cycled); a refill round
        (dynamic sampling) draws them with a generator seeded by (seed, iteration, round) -- a
        pure function, so a resumed or sharded run draws the same."""
        cfg, n = self.cfg, len(self.prompts)
        per = cfg.prompts_per_iteration
        if round_:
            rng = random.Random(cfg.seed * 1_000_003 * 7919 + iteration * 1009 + round_)
            return [self.prompts[rng.randrange(n)] for _ in range(per)]
        chosen = []
        for j in range(iteration * per, (iteration + 1) * per):
            epoch, pos = divmod(j, n)
            order = list(range(n))
            random.Random(cfg.seed * 7919 + epoch).shuffle(order)
            chosen.append(self.prompts[order[pos]])
        return chosen

    def _policy(self) -> nn.Module:
        return _RootedPolicy(self.module) if self.rooted else self.module.policy

    @torch.no_grad()
    def _forward_all(self, groups: list[PromptGroup], *, reference: bool) -> tuple[list, list]:
        """Per group: per-token log-probs ``[k, T]`` and values (or None), no grad."""
        from ..models.load import reference_context

        logps, values = [], []
        model = self.module
        was_training = model.training
        model.eval()
        try:
            bs = max(1, self.cfg.batch_size)
            for start in range(0, len(groups), bs):
                chunk = groups[start:start + bs]
                batch = pack_groups(chunk, max_length=max(g.packed_length for g in chunk),
                                    pad_id=self.pad_id).to(self.acc.device)
                if reference and self.reference is not None:
                    lp = sequence_logps(self.reference, batch, chunk_size=self.cfg.chunk_size)
                    val = None
                elif reference:
                    def adapters_off(batch=batch):
                        with reference_context(self.module.policy):
                            return sequence_logps(self.module.policy, batch,
                                                  chunk_size=self.cfg.chunk_size)

                    lp = model(call=adapters_off) if self.rooted else adapters_off()
                    val = None
                else:
                    lp, val = model(batch)
                sizes = [g.k for g in chunk]
                rows = sum(sizes)
                row, col, width = token_grid(_flat_segment(lp, sizes), rows)
                grid = _grid(lp.per_token.float(), row, col, rows, width)
                vgrid = None if val is None else _grid(val.float(), row, col, rows, width)
                at = 0
                for k in sizes:
                    logps.append(grid[at:at + k].cpu())
                    values.append(None if vgrid is None else vgrid[at:at + k].cpu())
                    at += k
        finally:
            model.train(was_training)
        return logps, values

    # ---- sampling and scoring
    def _sample_round(self, iteration: int, round_: int, policy: Any,
                      counts: Counter) -> list[SampleGroup]:
        """This process's shard of one sampling round: sampled, scored, adjusted. With a
        reward that computes in the background (:meth:`_overlapping`) each chunk's rewards are
        computed while the next chunk generates (:meth:`_generate_submitting`); the result is
        the same."""
        cfg, algo = self.cfg, self.algorithm
        everyone = self._round_prompts(iteration, round_)
        sizes = list(algo.group_sizes(cfg, everyone, iteration))
        n = max(sizes, default=1)  # over the global round: the same on every process
        if len(sizes) != len(everyone) or min(sizes) < 1:
            raise ValueError(f"{cfg.algo}.group_sizes returned {sizes!r}: expected one size "
                             f">= 1 per prompt ({len(everyone)})")
        w, r = self.acc.num_processes, self.acc.process_index
        local = len(everyone) // w
        prompts, sizes = everyone[r * local:(r + 1) * local], sizes[r * local:(r + 1) * local]
        seed = cfg.seed * 1_000_003 + iteration
        offset = (round_ * len(everyone) + r * local) * n  # this shard's first global row

        def check(raw: torch.Tensor, part: Rollout) -> None:
            self._check_rewards(raw, part, iteration)

        # with a reward that computes in the background, chunk by chunk: each chunk scores
        # while the next one (and the greedy baseline) generates; else the round at once
        overlap = self._overlapping()
        chunks = (generation_chunks(len(prompts), n, cfg.sampling_batch_size) if overlap
                  else [(0, len(prompts))])
        pending = PendingScores(self.reward)
        groups = self._generate_submitting(pending, policy, prompts, sizes, n, seed, offset,
                                           chunks)
        if algo.greedy_baseline:  # one greedy answer per prompt, scored and adjusted alike
            ggroups = self._greedy_groups(policy, prompts, seed)
            gpending = PendingScores(self.reward)
            gpending.submit(ggroups)
        raw = pending.gather(check, counts)
        adjusted = algo.adjust_rewards(cfg, raw, flat(groups, "lengths"),
                                       flat(groups, "truncated"))
        sizes = [g.size for g in groups]
        for g, a, b in zip(groups, torch.split(raw, sizes), torch.split(adjusted, sizes),
                           strict=True):
            g.raw, g.adjusted = a, b
        if algo.greedy_baseline:
            graw = gpending.gather(check, counts)
            pending.wait_seconds += gpending.wait_seconds
            glen = flat(ggroups, "lengths")
            gadj = algo.adjust_rewards(cfg, graw, glen, flat(ggroups, "truncated"))
            for g, a, b, ln in zip(groups, graw, gadj, glen, strict=True):
                g.greedy_raw, g.greedy_adjusted, g.greedy_length = a, b, ln
        if overlap:  # logged as reward_wait_seconds
            self._reward_wait = (self._reward_wait or 0.0) + pending.wait_seconds
        return groups

    def _overlapping(self) -> bool:
        """Rewards overlap generation: ``reward_overlap`` is on and the source computes in the
        background (it has ``submit(prompts, completions, prompt_ids, completion_ids)``
        returning a handle whose ``result()`` is the ``[P, G]`` rewards)."""
        return bool(self.cfg.reward_overlap) and callable(getattr(self.reward, "submit", None))

    def _generate_submitting(self, pending: PendingScores, policy: Any, prompts: list[Any],
                             sizes: list[int], n: int, seed: int, offset: int,
                             chunks: list[tuple[int, int]]) -> list[SampleGroup]:
        """Generate the prompts chunk by chunk (``(start, stop)`` prompt ranges, e.g.
        :func:`generation_chunks`), handing each chunk's groups to ``pending`` (a background
        reward starts on them) before the next chunk generates. Prompt ``i``'s rows are
        ``offset + i * n + j`` whichever chunk it is in, and a sample is a pure function of
        (seed, global row), so the groups equal those of one
        :func:`~prefkit.train.rollout.collect_rollout` call for the whole shard."""
        groups: list[SampleGroup] = []
        for start, stop in chunks:
            ro = collect_rollout(self.backend, policy, self.tokenizer, prompts[start:stop], n=n,
                                 seed=seed, row_offset=offset + start * n)
            chunk = from_rollout(ro, sizes[start:stop])
            pending.submit(chunk)
            groups.extend(chunk)
        return groups

    def _greedy_groups(self, policy: Any, prompts: list[Any], seed: int) -> list[SampleGroup]:
        """One greedy completion per prompt (the baseline of ``Algorithm.greedy_baseline``)."""
        greedy = collect_rollout(self.backend, policy, self.tokenizer, prompts, n=1, seed=seed,
                                 greedy=True)
        return from_rollout(greedy, [1] * len(prompts))

    def _sample_batch(self, iteration: int, counts: Counter
                      ) -> tuple[list[SampleGroup], dict[str, Any], list[SampleGroup]]:
        """This process's groups of the iteration's batch, its sampling statistics, and its
        groups of the first sampling round (every group before any filtering: what the
        ``monitor`` sees, so that its accuracy is that of the policy). With dynamic sampling
        (``Algorithm.keep_groups``) the groups it drops are replaced by groups of further
        rounds: the batch is the first ``prompts_per_iteration`` kept groups in global sampling
        order (:func:`prefkit.losses.rl.fill_batch`), the same whatever the number of
        processes; a process receives its contiguous shard of it from whichever process
        sampled each group."""
        cfg, algo = self.cfg, self.algorithm
        policy = self._policy()
        groups = self._sample_round(iteration, 0, policy, counts)
        keep = algo.keep_groups(cfg, [g.adjusted for g in groups])
        if keep is None:
            return groups, {}, groups
        per, w = cfg.prompts_per_iteration, self.acc.num_processes
        local = per // w
        rounds = [groups]
        flags = self._gather_flags(keep)
        while sum(flags) < per and len(rounds) < cfg.max_sampling_rounds:
            more = self._sample_round(iteration, len(rounds), policy, counts)
            rounds.append(more)
            flags += self._gather_flags(algo.keep_groups(cfg, [g.adjusted for g in more]))
        kept = sum(flags)
        if kept < per:
            warnings.warn(f"dynamic sampling: {kept} of {per} groups with varied rewards after "
                          f"{len(rounds)} rounds (max_sampling_rounds={cfg.max_sampling_rounds})"
                          f" at iteration {iteration}; groups with equal rewards fill the batch",
                          stacklevel=2)
        chosen = rl.fill_batch(flags, per)  # global positions: round * per + rank * local + j
        mine = chosen[self.acc.process_index * local:(self.acc.process_index + 1) * local]
        owned = [g for part in rounds for g in part]  # this process's: round * local + j
        if w > 1:
            from accelerate.utils import gather_object

            everyone = gather_object([owned])  # one list per process, in rank order
        else:
            everyone = [owned]
        out = []
        for pos in mine:
            round_, rest = divmod(pos, per)
            rank, j = divmod(rest, local)
            out.append(everyone[rank][round_ * local + j])
        info = {"sampling_rounds": len(rounds), "groups_dropped": len(flags) - kept}
        return out, info, groups

    def _gather_flags(self, keep: list[bool]) -> list[bool]:
        """Every process's keep flags of a round, in global order."""
        if self.acc.num_processes == 1:
            return list(keep)
        t = torch.tensor(keep, dtype=torch.long, device=self.acc.device)
        return [bool(v) for v in self.acc.gather(t).cpu()]

    # ---- one iteration's rollout -> micro-batches
    def collect(self, iteration: int) -> list[dict[str, Any]]:
        if not self._log_opened:
            # the first iteration of this call: a resumed run replays it, so the lines a killed
            # run wrote for it and later ones go (a fresh start found the file cleared)
            self._log_opened = True
            if self.acc.is_main_process:
                keep_records_up_to(self.log_path, "iteration", iteration - 1)
        counts: Counter = Counter()
        batch, sampling, first_round = self._sample_batch(iteration, counts)
        algo = self.algorithm
        sizes = [g.size for g in batch]
        raw, adjusted = flat(batch, "raw"), flat(batch, "adjusted")
        lengths = flat(batch, "lengths")
        values_in, lengths_in = adjusted, lengths
        if algo.greedy_baseline:  # the greedy answers' rewards are shaped with the samples
            values_in = torch.cat([adjusted, torch.stack([g.greedy_adjusted for g in batch])])
            lengths_in = torch.cat([lengths, torch.stack([g.greedy_length for g in batch])])
        shaped = self._shape(values_in, lengths_in)
        scores, baseline = shaped[:len(raw)], None
        if algo.greedy_baseline:
            baseline = shaped[len(raw):]
        self.finalize_kl()  # the previous iteration's KL, when measured during its update
        groups = [PromptGroup(g.prompt_ids, g.completion_ids) for g in batch]
        widths = [max(len(c) for c in g.completion_ids) for g in batch]
        masks = [torch.arange(w)[None, :] < g.lengths()[:, None]
                 for g, w in zip(batch, widths, strict=True)]
        if self.needs_old:
            old, values = self._forward_all(groups, reference=False)
            old = [o[:, :w] for o, w in zip(old, widths, strict=True)]
            values = [v if v is None else v[:, :w] for v, w in zip(values, widths, strict=True)]
        else:
            old, values = [torch.zeros(k, w) for k, w in zip(sizes, widths, strict=True)], [
                None] * len(widths)
        ref = ([r[:, :w] for r, w in zip(self._forward_all(groups, reference=True)[0], widths,
                                          strict=True)]
               if self.needs_reference
               else [torch.zeros(k, w) for k, w in zip(sizes, widths, strict=True)])
        seq_kl = torch.zeros(len(raw))
        mean_kl = None
        if self.needs_old and self.needs_reference:
            seq_kl = torch.cat([(rl.kl_penalty(o, r, "k1") * m).sum(1)
                                for o, r, m in zip(old, ref, masks, strict=True)])
            mean_kl = self.global_mean(seq_kl)
        self._log_iteration(iteration, batch, raw, scores, mean_kl, counts, sampling,
                            first_round)
        if mean_kl is not None:
            self._after_kl(iteration, mean_kl)
        data = algorithms.RolloutData(sizes=sizes, scores=scores, baseline=baseline, old=old,
                                      ref=ref, values=values, masks=masks, seq_kl=seq_kl)
        targets = algo.targets(self, data)
        split_scores = data.split(scores)
        items = []
        for i in range(len(batch)):
            item = {"group": groups[i], "old": old[i], "ref": ref[i], "mask": masks[i],
                    "scores": split_scores[i]}
            item.update({k: v[i] for k, v in targets.items()})
            items.append(item)
        return self._micro_batches(items, iteration)

    def _after_kl(self, iteration: int, mean_kl: float) -> None:
        """Stop on a KL blow-up; feed the KL controller."""
        cfg = self.cfg
        if cfg.max_kl is not None and mean_kl > cfg.max_kl:
            ckpts = list_checkpoints(cfg.output_dir)
            last = str(ckpts[-1]) if ckpts else "none"
            raise OnlineTrainingError(
                f"KL blow-up at iteration {iteration}: mean sequence KL to the reference "
                f"{mean_kl:.3g} > max_kl={cfg.max_kl}; lower the learning rate or raise kl_coef. "
                f"Last checkpoint: {last}")
        self.kl_ctl.update(mean_kl, cfg.prompts_per_iteration * cfg.num_generations)

    def finalize_kl(self) -> None:
        """Without an "old" forward the KL of an iteration's samples to the reference is
        measured by the first pass of its update (same weights); record it (and write the
        iteration's line to ``rollouts.jsonl``) once all processes are done with that pass."""
        if not self._pending_kl:
            return
        self._pending_kl = False
        total = torch.tensor([self._kl_sum, self._kl_n], dtype=torch.float64,
                             device=self.acc.device)
        if self.acc.num_processes > 1:
            total = self.acc.reduce(total, reduction="sum")
        self._kl_sum = self._kl_n = 0.0
        stats = self.iterations[-1]
        if float(total[1]) > 0:
            stats["kl"] = round(float(total[0] / total[1]), 6)
        self._write_stats(stats)
        if stats["kl"] is not None:
            self._after_kl(stats["iteration"], stats["kl"])

    def _record_kl(self, logps: torch.Tensor, batch: dict[str, Any]) -> None:
        if self.needs_old or not self.needs_reference or not batch.get("first_pass"):
            return
        seq = ((logps.detach() - batch["ref"]) * batch["mask"]).sum(1)
        self._kl_sum += float(seq.sum())
        self._kl_n += float(seq.numel())

    def _shape(self, raw: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Reward shaping over the GLOBAL batch (normalization sees every process's rewards,
        so W processes shape exactly as one does), then this process's entries."""
        if self.shaping is None:
            return raw
        if self.acc.num_processes == 1:
            return self.shaping(raw, lengths)
        from accelerate.utils import gather_object

        parts = gather_object([torch.stack([raw.float(), lengths.float()]).cpu()])
        shaped = self.shaping(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        start = sum(p.shape[1] for p in parts[:self.acc.process_index])
        return shaped[start:start + raw.numel()]

    def global_totals(self, x: torch.Tensor) -> tuple[float, float]:
        """(sum, count) of ``x`` over all processes."""
        total = torch.tensor([float(x.sum()), float(x.numel())], dtype=torch.float64,
                             device=self.acc.device)
        if self.acc.num_processes > 1:
            total = self.acc.reduce(total, reduction="sum")
        return float(total[0]), float(total[1])

    def global_mean(self, x: torch.Tensor) -> float:
        """Mean of ``x``'s entries over all processes."""
        total, count = self.global_totals(x)
        return total / max(count, 1.0)

    def _global_counts(self, counts: Counter) -> dict[str, int]:
        """Reward status counts summed over processes (every process's keys)."""
        if self.acc.num_processes == 1:
            return dict(counts)
        from accelerate.utils import gather_object

        total: Counter = Counter()
        for part in gather_object([dict(counts)]):
            total.update(part)
        return dict(total)

    def _check_rewards(self, raw: torch.Tensor, ro: Rollout, iteration: int) -> None:
        bad = (~torch.isfinite(raw)).nonzero()
        if len(bad):
            i, j = (int(v) for v in bad[0])
            ckpts = list_checkpoints(self.cfg.output_dir)
            raise OnlineTrainingError(
                f"non-finite reward {float(raw[i, j])} at iteration {iteration} for prompt "
                f"{preview(ro.prompts[i])}, completion {preview(ro.completions[i][j])} "
                f"({len(bad)} of "
                f"{raw.numel()} rewards); last checkpoint: "
                f"{str(ckpts[-1]) if ckpts else 'none'}")

    def _log_iteration(self, iteration: int, batch: list[SampleGroup], raw, scores,
                       mean_kl: float | None, counts: Counter, sampling: dict[str, Any],
                       monitored: list[SampleGroup]) -> None:
        def glob(x: torch.Tensor) -> float:
            return self.global_mean(x.float())
        truncated = flat(batch, "truncated")
        stats = {"iteration": iteration, "reward": round(glob(raw), 6),
                 "shaped_reward": round(glob(scores), 6),
                 "kl": None if mean_kl is None else round(mean_kl, 6),
                 "kl_coef": round(float(self.kl_ctl.value), 6),
                 "length": round(glob(flat(batch, "lengths")), 3),
                 "truncated": round(glob(truncated), 4),
                 "empty": round(glob(flat(batch, "empty")), 4),
                 "stopped": round(glob(flat(batch, "stopped")), 4)}
        cut = torch.tensor([g.prompt_truncated for g in batch], dtype=torch.float32)
        stats["prompts_truncated"] = int(self.global_totals(cut)[0])
        self.truncation["prompts_truncated"] += stats["prompts_truncated"]
        self.truncation["completions_truncated"] += int(
            self.global_totals(truncated.float())[0])
        stats.update({f"dynamic_sampling/{k}": v for k, v in sampling.items()})
        if self._reward_wait is not None:  # rewards overlapped generation (mean over processes)
            stats["reward_wait_seconds"] = round(self.global_mean(
                torch.tensor([self._reward_wait])), 4)
            self._reward_wait = None
        if hasattr(self.reward, "status_counts"):
            stats.update({f"reward_status/{k}": v
                          for k, v in sorted(self._global_counts(counts).items())})
        if self.monitor is not None:
            stats.update({k: round(glob(_flat_values(v)), 6)
                          for k, v in self.monitor(as_rollout(monitored)).items()})
        self.iterations.append(stats)
        # without an "old" pass the KL comes from the update: the line is written then
        self._pending_kl = mean_kl is None and self.needs_reference and not self.needs_old
        if not self._pending_kl:
            self._write_stats(stats)

    def _write_stats(self, stats: dict[str, Any]) -> None:
        if self.acc.is_main_process:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(stats) + "\n")

    def _micro_batches(self, items: list[dict], iteration: int) -> list[dict]:
        cfg = self.cfg
        n_micro = cfg.num_minibatches * cfg.gradient_accumulation_steps
        out = []
        for epoch in range(cfg.ppo_epochs):
            order = list(range(len(items)))
            if cfg.ppo_epochs > 1 or cfg.num_minibatches > 1:
                random.Random(cfg.seed * 31 + iteration * 101 + epoch).shuffle(order)
            for m in range(n_micro):
                part = [items[i] for i in order[m::n_micro]]
                out.append({**self._collate(part), "first_pass": epoch == 0,
                            "closes_first_pass": epoch == 0 and m == n_micro - 1})
        return out

    def _collate(self, part: list[dict]) -> dict[str, Any]:
        """A micro-batch: the groups packed (each prompt once), every per-sample tensor of the
        items concatenated in sample order (``[k, T]`` ones right-padded to the widest)."""
        groups = [it["group"] for it in part]
        packed = pack_groups(groups, max_length=max(g.packed_length for g in groups),
                             pad_id=self.pad_id)
        width = max(it["old"].shape[1] for it in part)
        batch: dict[str, Any] = {"packed": packed, "sizes": [g.k for g in groups]}
        for key, first in part[0].items():
            if key == "group" or first is None:
                continue
            if first.dim() == 2:
                batch[key] = torch.cat([torch.nn.functional.pad(
                    it[key].float(), (0, width - it[key].shape[1])) for it in part])
            else:
                batch[key] = torch.cat([it[key] for it in part])
        batch["mask"] = batch["mask"].bool()
        return batch

    # ---- the step
    def step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        """One micro-batch's loss (the algorithm's :meth:`~prefkit.train.algorithms.Algorithm.
        loss`); after the last micro-batch of a rollout's first pass the KL it measured is final
        (:meth:`finalize_kl`): recorded before the optimizer step and the iteration's
        checkpoint, so the checkpoint holds the controller that iteration left (and a blow-up
        stops the run before the update)."""
        out = self._step(model, batch)
        if batch.get("closes_first_pass"):
            self.finalize_kl()
        return out

    def _step(self, model: nn.Module, batch: dict[str, Any]) -> StepOutput:
        lp, values = model(batch["packed"])
        mask = batch["mask"]
        rows, width = mask.shape
        row, col, _ = token_grid(_flat_segment(lp, batch["sizes"]), rows)
        logps = _grid(lp.per_token.float(), row, col, rows, width)
        self._record_kl(logps, batch)
        value_grid = None if values is None else _grid(values.float(), row, col, rows, width)
        return self.algorithm.loss(self, logps, value_grid, batch)


def _flat_segment(lp: Any, sizes: Sequence[int]) -> torch.Tensor:
    """Each token's completion as a flat index in group order (``pack_groups`` numbers them
    ``group * Kmax + response``: the same when every group has ``Kmax`` completions)."""
    k_max = lp.sum.shape[1]
    if all(k == k_max for k in sizes):
        return lp.segment
    starts = torch.tensor([0, *itertools.accumulate(sizes)][:-1], device=lp.segment.device)
    return starts[lp.segment // k_max] + lp.segment % k_max


def _flat_values(v: Any) -> torch.Tensor:
    """A monitor's values (a ``[P, G]`` tensor, or nested lists of groups of any size)."""
    if isinstance(v, torch.Tensor):
        return v
    return torch.tensor([float(x) for row in v for x in (row if hasattr(row, "__iter__")
                                                           else [row])])


class _RolloutStream:
    """The loop's train data: each pass ("epoch" of the loop) is one iteration's rollout."""

    def __init__(self, online: _Online) -> None:
        self.online = online
        self.iteration = 0

    def set_epoch(self, epoch: int) -> None:
        self.iteration = epoch

    def __iter__(self):
        return iter(self.online.collect(self.iteration))

    def skip(self, n: int):
        """A resume: the iteration's micro-batches after the first ``n``. Checkpoints fall on
        iteration boundaries, so ``n`` is all of them: the iteration is done, nothing is
        sampled (sampling it again would waste a rollout and log the iteration twice)."""
        cfg = self.online.cfg
        if n >= cfg.steps_per_iteration * cfg.gradient_accumulation_steps:
            return iter(())
        return itertools.islice(iter(self), n, None)


# ----------------------------------------------------------------------------- the run


def read_prompts(path: str) -> list[Any]:
    """Prompts from a ``.txt`` file (one a line, blank lines skipped) or from the ``prompt``
    column of any source prefkit reads (:func:`prefkit.data.io.iter_rows`: JSONL, JSON arrays,
    Parquet, ``datasets`` folders, ``FOLDER::split``). A prompt is text or a conversation
    (a list of ``{role, content}`` messages, rendered later with the chat template); a bad row
    raises :class:`~prefkit.data.errors.RecordError` naming the file, the row and the field."""
    from ..data.errors import FieldError, RecordError
    from ..data.formats import need_text
    from ..data.io import iter_rows, iter_text_lines, row_kind_of, source_kind

    file = Path(path.split("::", 1)[0])
    if not file.exists():
        raise FileNotFoundError(f"prompts file does not exist: {file}")
    if file.suffix == ".txt":  # non-UTF-8 bytes: a RecordError naming the file and line
        out: list[Any] = [text.strip() for _, text in iter_text_lines(file) if text.strip()]
    else:
        row_kind = row_kind_of(source_kind(path))
        out = []
        for row in iter_rows(path):
            if row.error is not None:
                raise row.error
            try:
                out.append(need_text(row.data, "prompt"))
            except FieldError as exc:
                raise RecordError.from_field(exc, path, row.line, row_kind) from None
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def train_online(config: OnlineConfig, *, reward: Callable | None = None,
                 prompts: Sequence[Any] | None = None, model: nn.Module | None = None,
                 tokenizer: Any = None, reference: nn.Module | None = None,
                 shaping: Any = None, callbacks: Sequence[Callback] = (),
                 monitor: Callable[[Rollout], dict[str, Any]] | None = None) -> OnlineResult:
    """Run one online training job (module docstring).

    ``reward``: a reward source (``source(prompts, completions, prompt_ids, completion_ids)
    -> [P, G]``); for ``online_ipo`` it returns ``P(sample 0 beats sample 1)`` in column 0.
    ``prompts``: the prompt list, text or conversations (else ``config.prompts`` is read);
    each keeps its last ``config.resolved_max_prompt_length(model)`` tokens.
    ``model``/``tokenizer``: the policy (else loaded from ``config.model``). ``reference``: a
    separate frozen reference (default: LoRA adapters disabled, else a frozen copy of the
    starting policy).
    ``shaping``: a :class:`prefkit.rewards.sources.RewardShaping` (default from the config).
    ``monitor(rollout) -> {name: [P, G] values}``: extra per-iteration statistics of the samples
    (e.g. a held-back gold reward), averaged into :attr:`OnlineResult.iterations`; with dynamic
    sampling (DAPO) it sees the first sampling round before any group is dropped, so its
    statistics are those of the policy, not of the kept groups.
    """
    from ..rewards.sources import RewardShaping

    if reward is None:
        raise ValueError("no reward source: pass reward= (see prefkit.rewards.sources) or use "
                         "the CLI's --reward")
    if prompts is None:
        if not config.prompts:
            raise ValueError("no prompts: set prompts (a file) or pass prompts=")
        prompts = resolve_prompts(config.prompts, seed=config.seed)
    if not prompts:
        raise ValueError("no prompts")
    if model is None:
        if not config.model:
            raise ValueError("no model: set model (a checkpoint directory or a model file)")
        model, tokenizer = resolve_model(config)
    if tokenizer is None:
        raise ValueError("a model passed directly needs its tokenizer too")
    if shaping is None:
        shaping = RewardShaping(length_penalty=config.length_penalty,
                                normalize=config.reward_normalization, clip=config.reward_clip)
    accelerator = make_accelerator(config)
    sharded = config.sharding == "fsdp2" and accelerator.num_processes > 1
    # under FSDP2 the full model stays in host memory: sharding moves each process's shards
    device = torch.device("cpu") if sharded else accelerator.device
    model.to(device)
    algorithm = config.algorithm
    module = PolicyWithValue(model, value_head=algorithm.value_head,
                             chunk_size=config.chunk_size).to(device)
    needs_copy = reference is None and not hasattr(model, "disable_adapter")
    online_needs_ref = algorithm.needs_reference(config)
    self_rewarding = isinstance(reward, str) and reward == "self"
    if needs_copy and (online_needs_ref or self_rewarding):
        reference = copy.deepcopy(model).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    plain = None
    if sharded:
        if self_rewarding and module.value_head is not None:
            raise ConfigError(f"sharding='fsdp2' with algo={config.algo} does not support reward "
                              "'self' "
                              "(the implicit reward calls the policy outside the sharded root); "
                              "use sharding='ddp' or a critic-free algorithm")
        plain, module, reference = _shard_online(config, accelerator, module, reference)
    if self_rewarding:
        reward = self_reward(module.policy, reference, tokenizer, beta=config.beta)
    elif isinstance(reward, str):
        raise ValueError(f"reward {reward!r}: pass a reward source (or 'self')")
    online = _Online(config, module, tokenizer, reward, prompts, accelerator, reference, shaping,
                     monitor, max_prompt_length=config.resolved_max_prompt_length(model))
    module.train()
    # what changes from iteration to iteration besides the weights: kept in every checkpoint
    state = {"kl_controller": online.kl_ctl}
    if isinstance(getattr(shaping, "moments", None), rl.RunningMoments):
        state["reward_moments"] = shaping.moments
    result = fit(module, online.step, _RolloutStream(online), config, accelerator=accelerator,
                 callbacks=callbacks, state=state)
    if plain is not None:  # the caller's policy gets the trained full weights
        from .sharding import copy_full_weights

        copy_full_weights(module, plain)
    online.finalize_kl()
    if online.truncation["prompts_truncated"]:
        warnings.warn(f"{online.truncation['prompts_truncated']} sampled prompts were longer "
                      f"than max_prompt_length={online.truncation['max_prompt_length']} tokens "
                      "and kept their last tokens", stacklevel=2)
    return OnlineResult(fit=result, iterations=online.iterations, model=model,
                        tokenizer=tokenizer, algo=config.algo, truncation=online.truncation,
                        value_head=(plain if plain is not None else module).value_head,
                        generation=online.generation)


def _shard_online(config: OnlineConfig, accelerator: Any, module: PolicyWithValue,
                  reference: nn.Module | None
                  ) -> tuple[PolicyWithValue, PolicyWithValue, nn.Module | None]:
    """FSDP2 (:mod:`.sharding`): the rollouts sample from the model being trained, so the run
    shards it before :func:`fit` (which then uses it as it is) and keeps the caller's module to
    copy the trained weights into. A frozen reference copy is sharded too (no optimizer state);
    a LoRA reference is the sharded policy with its adapters disabled. Returns ``(caller's
    module, sharded module, reference)``."""
    from .sharding import shard_model, sharded_copy

    kw = dict(device=accelerator.device, world_size=accelerator.num_processes,
              mixed_precision=config.mixed_precision)
    # PPO: the value head reads the decoder's hidden states, which the decoder path computes
    # without calling the pretrained model's forward; so the root owns the embeddings, norm,
    # LM head and value head (one unit, gathered for every call of the root) and only the
    # decoder layers are units below it
    work = sharded_copy(module, **kw, pretrained_units=module.value_head is None)
    if reference is not None:
        reference = shard_model(reference, **kw)
    return module, work, reference


def self_reward(policy: nn.Module, reference: nn.Module | None, tokenizer: Any, *,
                beta: float = 0.1) -> Callable:
    """The policy judges its own samples: the implicit reward ``beta * (log pi - log pi_ref)``
    of the CURRENT policy (it changes as training goes), as in self-rewarding / DPO-implicit-
    reward bootstrapping loops (Yuan et al. 2024; Chen et al. 2024, "Bootstrapping Language
    Models with DPO Implicit Rewards"). Start from a policy that already differs from its
    reference (e.g. after one round of offline DPO): at the reference itself every reward is 0.
    With LoRA (``reference=None``) the reference is the policy with its adapters disabled."""
    from ..models.load import reference_context
    from ..rewards.implicit import ImplicitReward
    from ..rewards.sources import ModelReward

    class _AdapterReference(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args, **kwargs):
            with reference_context(self.model):
                return self.model(*args, **kwargs)

    ref = reference
    if ref is None:
        ref = _AdapterReference(policy)
    return ModelReward(ImplicitReward(policy, ref, beta=beta, tokenizer=tokenizer), tokenizer,
                       name="self")


def resolve_model(config: OnlineConfig) -> tuple[nn.Module, Any]:
    """The policy and tokenizer of ``config.model``: a checkpoint folder or tiny-model file
    (with LoRA adapters when ``config.lora``). The lab's model (``lab:TASK``) is a spec of the
    layer above: :func:`prefkit.specs.resolve_model` (what the CLI calls) resolves it."""
    from ..models.load import LoraSettings, load_model

    if config.model.startswith("lab:"):
        raise ValueError(f"model {config.model!r} names the lab's base model: load it with "
                         "prefkit.specs.resolve_model(config) and pass model= and tokenizer=")
    lora = LoraSettings(r=config.lora_r, alpha=config.lora_alpha) if config.lora else None
    return load_model(config.model, dtype=config.dtype, lora=lora, seed=config.seed)


def resolve_prompts(spec: str, *, seed: int = 0) -> list[Any]:
    """Prompts from a file or dataset (:func:`read_prompts`). A lab task's prompts
    (``lab:TASK[:N]``) are a spec of the layer above: :func:`prefkit.specs.resolve_prompts`."""
    if spec.startswith("lab:"):
        raise ValueError(f"prompts {spec!r} name a lab task: sample them with "
                         "prefkit.specs.resolve_prompts and pass prompts=")
    return read_prompts(spec)
