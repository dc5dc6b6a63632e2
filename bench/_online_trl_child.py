"""TRL's side of bench/online_vs_trl.py, in its own process (peak RSS is its own):
``python bench/_online_trl_child.py WORLD SETTINGS_JSON`` prints one JSON line.

TRL 1.16 ``GRPOTrainer`` (``--algo grpo``) or ``RLOOTrainer`` (``--algo rloo``) with
transformers generation (no vLLM), the same checkpoint (sdpa attention, float32), prompts and
reward function as prefkit: ``per_device_train_batch_size`` = P x G completions,
``gradient_accumulation_steps = steps_per_generation = num_iterations = 1`` (one generation,
one optimizer step), lr constant, AdamW, grad-norm clip 1.0, temperature 1, top_p 1, top_k 0,
``max_completion_length`` = max new tokens with ``generation_kwargs={"min_new_tokens": ...}``
(EOS masked: every completion has exactly that many tokens), ``beta`` = the bench's beta.
GRPO: ``loss_type="dapo"`` (TRL's default: token-level mean over the batch = prefkit's
``token_mean``), ``scale_rewards="group"`` (= prefkit's group std normalization).
RLOO: TRL's defaults (sequence-level ratio, no advantage normalization).

Timing: step = interval between ``on_step_end`` callbacks; rollout =
``_generate_and_score_completions`` (generation, reward, TRL's no-grad log-prob forwards:
GRPO skips the "old" forward when on-policy, RLOO always runs it; the reference forward when
beta > 0); generate = ``model.generate``; training = step - rollout.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _online_common import GenerateTimer, RewardLog, emit_run, rss_mb, setup_threads  # noqa: E402
from _online_setup import low_share, read_prompts, verifiable_math  # noqa: E402


def main() -> None:
    world, s = Path(sys.argv[1]), json.loads(sys.argv[2])
    setup_threads(s.get("threads", 2))
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    t_init = time.perf_counter()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(world / "model", dtype=torch.float32,
                                                 attn_implementation="sdpa")
    tokenizer = AutoTokenizer.from_pretrained(world / "model")
    gen = GenerateTimer(model, tokenizer.eos_token_id)
    data = Dataset.from_list([{"prompt": p} for p in read_prompts(world)])
    rewards = RewardLog()
    score = low_share if s.get("reward", "low_share") == "low_share" else verifiable_math

    def reward_fn(prompts, completions, **kwargs):
        out = [score(p, c) for p, c in zip(prompts, completions, strict=True)]
        rewards.add(out)
        return out

    batch = s["prompts_per_step"] * s["num_generations"]
    common = dict(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, steps_per_generation=1, num_iterations=1,
        num_generations=s["num_generations"], max_completion_length=s["max_new_tokens"],
        generation_kwargs={"min_new_tokens": s["max_new_tokens"]}, temperature=1.0,
        top_p=1.0, top_k=0, beta=s["beta"], max_steps=s["steps"],
        learning_rate=s["learning_rate"], lr_scheduler_type="constant", warmup_steps=0,
        max_grad_norm=1.0, weight_decay=0.0, use_cpu=True, bf16=False, fp16=False,
        report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=0, logging_steps=1, gradient_checkpointing=False,
        use_vllm=False, log_completions=False)
    if s["algo"] == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(**common, loss_type="dapo", scale_rewards="group")
        trainer_cls = GRPOTrainer
    else:
        from trl import RLOOConfig, RLOOTrainer

        args = RLOOConfig(**common)
        trainer_cls = RLOOTrainer

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer = trainer_cls(model=model, reward_funcs=[reward_fn], args=args,
                          train_dataset=data, processing_class=tokenizer, callbacks=[Clock()])

    rollout_seconds: list[float] = []
    first: dict = {}
    original_rollout = trainer._generate_and_score_completions
    original_logps = trainer._get_per_token_logps_and_entropies

    def generate_and_score(inputs):
        start = time.perf_counter()
        out = original_rollout(inputs)
        rollout_seconds.append(time.perf_counter() - start)
        return out

    def per_token_logps(model_, input_ids, attention_mask, logits_to_keep, *a, **k):
        out = original_logps(model_, input_ids, attention_mask, logits_to_keep, *a, **k)
        if "logps" not in first:  # the first log-prob pass: the initial weights
            logps = out[0].detach()
            width = input_ids.shape[1] - logits_to_keep
            pm, cm = attention_mask[:, :width].bool(), attention_mask[:, width:].bool()
            first["prompt_ids"] = [r[m].tolist() for r, m in zip(input_ids[:, :width], pm,
                                                                  strict=True)]
            first["completion_ids"] = [r[m].tolist() for r, m in
                                       zip(input_ids[:, width:], cm, strict=True)]
            first["logps"] = [r[m].tolist() for r, m in zip(logps, cm, strict=True)]
        return out

    trainer._generate_and_score_completions = generate_and_score
    trainer._get_per_token_logps_and_entropies = per_token_logps
    init_seconds = time.perf_counter() - t_init
    rss_before_training = rss_mb()
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    emit_run(side="trl", algo=s["algo"], init_seconds=init_seconds,
             train_seconds=train_seconds, rss_before_training_mb=rss_before_training,
             rollout_seconds=rollout_seconds, losses=[h["loss"] for h in logs], first=first,
             trl_step_time=[h.get("step_time") for h in logs], t0=t0, stamps=stamps,
             gen=gen, rewards=rewards, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
