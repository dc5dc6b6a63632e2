"""TRL's side of bench/dpo_vs_trl.py, run in its own process (peak RSS is its own):
``python bench/_dpo_trl_child.py WORLD STEPS [--lora]`` prints one JSON line.

TRL 1.16 ``DPOTrainer`` at its fastest setting, as measured in the peer baselines:
``precompute_ref_log_probs=True`` (reference log-probs computed once in ``__init__``), float32,
no gradient checkpointing, batch 8, lr 1e-4 constant, ``loss_type=["sigmoid"]``, beta 0.1.
Step time = interval between consecutive ``on_step_end`` callbacks.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _dpo_child_common import peak_rss_mb, setup_threads  # noqa: E402


def main() -> None:
    world, steps = Path(sys.argv[1]), int(sys.argv[2])
    lora = "--lora" in sys.argv
    setup_threads()
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(world / "model", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(world / "model")
    data = load_dataset("json", data_files=str(world / "pairs.jsonl"), split="train")
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                 target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, max_steps=steps,
        learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, use_cpu=True,
        report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=0, bf16=False, fp16=False, gradient_checkpointing=False,
        logging_steps=1, beta=0.1, loss_type=["sigmoid"], max_length=1024,
        precompute_ref_log_probs=True)

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         callbacks=[Clock()], peft_config=peft_config)
    init_seconds = time.perf_counter() - start
    ref = None
    if "ref_chosen_logps" in trainer.train_dataset.column_names:
        ref = {"chosen": list(trainer.train_dataset["ref_chosen_logps"]),
               "rejected": list(trainer.train_dataset["ref_rejected_logps"])}
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({
        "init_seconds": init_seconds, "train_seconds": train_seconds,
        "step_seconds": [b - a for a, b in zip(stamps, stamps[1:], strict=False)],
        "first_step_seconds": stamps[0] - t0 if stamps else None,
        "losses": [h["loss"] for h in logs], "ref_logps": ref,
        "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(),
        "pid": os.getpid(),
    }))


if __name__ == "__main__":
    main()
