"""prefkit's side of bench/rm_vs_trl.py, in its own process:
``python bench/_rm_prefkit_child.py WORLD STEPS`` prints one JSON line.

Same start as the TRL child: the backbone and score head of ``WORLD/rm_model`` (the head is
copied into prefkit's scalar head), the same pairs in file order, batch 8, float32, lr 1e-4
constant, Bradley-Terry loss; each prompt computed once for its two responses.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _dpo_child_common import peak_rss_mb, setup_threads  # noqa: E402
from _dpo_setup import load_prefkit_rm  # noqa: E402


def main() -> None:
    world, steps = Path(sys.argv[1]), int(sys.argv[2])
    setup_threads()
    import torch

    from prefkit.train.loop import Callback
    from prefkit.train.reward import RewardConfig, train_reward

    stamps: list[float] = []

    class Clock(Callback):
        def on_step_end(self, step, model):
            stamps.append(time.perf_counter())

    model, tokenizer = load_prefkit_rm(world / "rm_model")
    config = RewardConfig(
        model=str(world / "rm_model"), data=str(world / "pairs.jsonl"), objective="bt",
        output_dir=tempfile.mkdtemp(), max_steps=steps, batch_size=8, learning_rate=1e-4,
        lr_scheduler="constant", warmup_steps=0, logging_steps=1, save_steps=0,
        save_final=False, progress=False, max_length=1024, seed=0, shuffle=False)
    result = train_reward(config, model=model, tokenizer=tokenizer, callbacks=[Clock()])
    records = [h for h in result.fit.history if "loss" in h and "step" in h
               and not any(k.startswith("eval/") for k in h)]
    print(json.dumps({
        "train_seconds": result.fit.seconds,
        "step_seconds": [b - a for a, b in zip(stamps, stamps[1:], strict=False)],
        "losses": [h["loss"] for h in records], "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
