"""prefkit's side of bench/online_vs_trl.py, in its own process (peak RSS is its own):
``python bench/_online_prefkit_child.py WORLD SETTINGS_JSON`` prints one JSON line.

``train_online(OnlineConfig(algo=grpo|rloo, ...), reward=...)`` on the shared checkpoint and
prompts: P prompts x G completions per iteration, one optimizer step per iteration (ppo_epochs =
num_minibatches = gradient_accumulation_steps = 1), lr constant, AdamW, grad-norm clip 1.0,
float32, 2 threads, ``kl_coef`` = the bench's beta (GRPO: k3 loss term; RLOO: k1 summed into the
reward, as TRL's RLOOTrainer does). Completions are forced to exactly ``max_new_tokens`` tokens
with ``OnlineConfig.min_new_tokens = max_new_tokens`` (EOS masked until then). The generation
backend is the setting ``backend``: ``prefkit`` (the default decode loop), ``prefkit-compiled``
or ``transformers``. The reward is ``low_share`` (a Python function) or ``verifiable_math``
(``--reward verifiable:math`` with the prompts file's answers, as the CLI builds it).

Timing (nothing in src/ is edited; wrappers live in this process):
- step = interval between consecutive ``on_step_end`` callbacks;
- rollout = ``_Online.collect`` (sampling, reward, the no-grad "old" log-prob forward when the
  update is off-policy or the KL is in the reward, the
  reference forward when beta > 0, advantages, collation) -- one call per step;
- generate = the generation backend's calls inside it; training = step - rollout.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _online_common import BackendTimer, RewardLog, emit_run, rss_mb, setup_threads  # noqa: E402
from _online_setup import low_share, read_prompts  # noqa: E402


def main() -> None:
    world, s = Path(sys.argv[1]), json.loads(sys.argv[2])
    setup_threads(s.get("threads", 2))
    import torch

    import prefkit.train.online as online
    from prefkit.models import decode
    from prefkit.models.load import load_model
    from prefkit.rewards.sources import FunctionReward
    from prefkit.specs.rewards import reward_from_spec
    from prefkit.train.loop import Callback

    t_init = time.perf_counter()
    model, tokenizer = load_model(str(world / "model"), dtype="float32", seed=0)
    gen = BackendTimer([decode.StaticCacheBackend, decode.GenerateBackend],
                       tokenizer.eos_token_id)

    rewards = RewardLog()
    if s.get("reward", "low_share") == "low_share":
        source = FunctionReward(low_share)
    else:  # what `--reward verifiable:math --prompts prompts.jsonl` builds (answers: the file's)
        source = reward_from_spec("verifiable:math", prompts=str(world / "prompts.jsonl"))

    class Reward:
        def __call__(self, prompts, completions, prompt_ids=None, completion_ids=None):
            out = source(prompts, completions, prompt_ids, completion_ids)
            rewards.add(out.flatten().tolist())
            return out

    if hasattr(source, "status_counts"):
        Reward.status_counts = lambda self: source.status_counts()
    reward = Reward()

    # the first rollout's tokens and the log-probs prefkit computed for them (initial weights)
    first: dict = {}
    rollout_seconds: list[float] = []
    original_collect = online._Online.collect
    original_rollout = online.collect_rollout

    def collect_rollout(*args, **kwargs):
        ro = original_rollout(*args, **kwargs)
        if "prompt_ids" not in first:
            first["prompt_ids"] = [list(p) for p in ro.prompt_ids]
            first["completion_ids"] = [[list(c) for c in cs] for cs in ro.completion_ids]
        return ro

    def collect(self, iteration):
        start = time.perf_counter()
        batches = original_collect(self, iteration)
        rollout_seconds.append(time.perf_counter() - start)
        return batches

    # the first update's forward: on-policy GRPO/RLOO need no separate "old" log-prob pass, so
    # the sampled tokens' log-probs under the initial weights are those of the first step
    original_record = online._Online._record_kl

    def record_kl(self, logps, batch):
        if "logps" not in first:  # one micro-batch: rows are prompt-major (i * G + j)
            first["logps"] = [row[m].tolist() for row, m in zip(logps.detach(), batch["mask"],
                                                                  strict=True)]
        return original_record(self, logps, batch)

    online.collect_rollout = collect_rollout
    online._Online.collect = collect
    online._Online._record_kl = record_kl

    stamps: list[float] = []

    class Clock(Callback):
        def on_step_end(self, step, model):
            stamps.append(time.perf_counter())

    config = online.OnlineConfig(
        algo=s["algo"], iterations=s["steps"], prompts_per_iteration=s["prompts_per_step"],
        num_generations=s["num_generations"], ppo_epochs=1, num_minibatches=1,
        gradient_accumulation_steps=1, batch_size=s["prompts_per_step"],
        sampling_batch_size=s["prompts_per_step"] * s["num_generations"],
        max_new_tokens=s["max_new_tokens"], temperature=1.0, kl_coef=s["beta"],
        min_new_tokens=s["max_new_tokens"], generation_backend=s.get("backend", "prefkit"),
        learning_rate=s["learning_rate"], lr_scheduler="constant", warmup_steps=0,
        max_grad_norm=1.0, weight_decay=0.0, output_dir=tempfile.mkdtemp(), logging_steps=1,
        save_steps=0, save_final=False, progress=False, seed=0, cpu=True)
    prompts = read_prompts(world)
    init_seconds = time.perf_counter() - t_init
    rss_before_training = rss_mb()
    t0 = time.perf_counter()
    result = online.train_online(config, reward=reward, prompts=prompts, model=model,
                                 tokenizer=tokenizer, callbacks=[Clock()])
    train_seconds = time.perf_counter() - t0
    losses = [h["loss"] for h in result.fit.history if "loss" in h]
    emit_run(side="prefkit", algo=s["algo"], init_seconds=init_seconds,
             train_seconds=train_seconds, rss_before_training_mb=rss_before_training,
             rollout_seconds=rollout_seconds, losses=losses, first=first, t0=t0,
             stamps=stamps, gen=gen, rewards=rewards, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
