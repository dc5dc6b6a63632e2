"""TRL's side of bench/rm_vs_trl.py, in its own process:
``python bench/_rm_trl_child.py WORLD STEPS`` prints one JSON line.

TRL 1.16 ``RewardTrainer`` on ``WORLD/rm_model`` (a ``LlamaForSequenceClassification`` checkpoint
with its score head, so both sides start from identical weights), explicit-prompt pairs in file
order (``train_sampling_strategy="sequential"``: the first steps are comparable), batch 8,
float32, lr 1e-4 constant, no gradient checkpointing, dropout off. Step time = interval between
consecutive ``on_step_end`` callbacks.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _dpo_child_common import peak_rss_mb, setup_threads  # noqa: E402


def main() -> None:
    world, steps = Path(sys.argv[1]), int(sys.argv[2])
    setup_threads()
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(world / "rm_model", num_labels=1,
                                                               dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(world / "rm_model")
    data = load_dataset("json", data_files=str(world / "pairs.jsonl"), split="train")
    args = RewardConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8, max_steps=steps,
        learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, use_cpu=True,
        report_to="none", save_strategy="no", eval_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0, seed=0, bf16=False, fp16=False, gradient_checkpointing=False,
        logging_steps=1, max_length=1024, train_sampling_strategy="sequential")
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer = RewardTrainer(model=model, args=args, train_dataset=data,
                            processing_class=tokenizer, callbacks=[Clock()])
    t0 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t0
    logs = [h for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({
        "train_seconds": train_seconds,
        "step_seconds": [b - a for a, b in zip(stamps, stamps[1:], strict=False)],
        "losses": [h["loss"] for h in logs], "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
