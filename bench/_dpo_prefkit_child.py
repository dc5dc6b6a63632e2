"""prefkit's side of bench/dpo_vs_trl.py, in its own process (peak RSS is its own):
``python bench/_dpo_prefkit_child.py WORLD STEPS DATA LOSS [--lora]`` prints one JSON line.

Same settings as the TRL child: batch 8, lr 1e-4 constant, float32, beta 0.1, the same
checkpoint and records. Reference log-probs are computed once before training (like TRL's
``precompute_ref_log_probs``; the on-disk cache is off so the cost is measured every run).
Step time = interval between consecutive ``on_step_end`` callbacks.
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
    world, steps, data, loss = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    lora = "--lora" in sys.argv
    setup_threads()
    import torch

    from prefkit.train.loop import Callback
    from prefkit.train.preference import PreferenceConfig, train_preference

    stamps: list[float] = []

    class Clock(Callback):
        def on_step_end(self, step, model):
            stamps.append(time.perf_counter())

    config = PreferenceConfig(
        model=str(world / "model"), data=str(world / data), loss=loss,
        output_dir=tempfile.mkdtemp(), max_steps=steps, batch_size=8, learning_rate=1e-4,
        lr_scheduler="constant", warmup_steps=0, logging_steps=1, save_steps=0,
        save_final=False, progress=False, reference_cache="none", lora=lora, lora_r=16,
        lora_alpha=32, max_length=1024, seed=0, shuffle=True)
    start = time.perf_counter()
    result = train_preference(config, callbacks=[Clock()])
    total = time.perf_counter() - start
    train_records = [h for h in result.fit.history if "loss" in h and "step" in h
                     and not any(k.startswith("eval/") for k in h)]
    ref = None
    if result.reference_sums is not None:
        sums = result.reference_sums
        ref = {"chosen": sums[:, 0].tolist(), "rejected": sums[:, -1].tolist()}
    print(json.dumps({
        "init_seconds": total - result.fit.seconds, "train_seconds": result.fit.seconds,
        "reference_seconds": (result.reference or {}).get("seconds"),
        "step_seconds": [b - a for a, b in zip(stamps, stamps[1:], strict=False)],
        "losses": [h["loss"] for h in train_records], "ref_logps": ref,
        "tokens_per_step": [h.get("tokens", None) for h in train_records],
        "peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
