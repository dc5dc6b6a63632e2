"""Reward throughput: prefkit's reward executor (2 worker processes) vs the serial loop.

Workload: 8,192 rewards (1,024 prompts x 8 completions; ``--quick``: 512) of a pure-Python
CPU-bound function (a rolling hash of prompt + completion, a stand-in for a verifier) whose
cost is calibrated on this machine to ~3 ms per call before timing.

* prefkit: :class:`prefkit.rewards.sources.ExecutedReward` with ``workers`` processes
  (default 2) and a per-call timeout, the way the online loop scores a rollout; the workers are
  started (and warm) before timing, as they are for the whole of a training run.
* peer: the serial loop, :class:`prefkit.rewards.sources.FunctionReward` (what the online loop
  did before, and what TRL's and verl's default reward managers do: one call after another in
  the trainer process).

Both are timed ``--repeats`` times, alternating; the best of each is reported. ``agree``: the
two ``[P, G]`` reward tensors are equal exactly and every executed call has status ``ok``.
Goal (issue 16): ratio >= 1.7 on 2 workers.

    python bench/reward_executor.py [--quick] [--json] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, matmul_peak  # noqa: E402

TARGET_MS = 3.0
GOAL = {"ratio_min": 1.7}


def reward(prompt: str, completion: str, rounds: int) -> float:
    """``rounds`` steps of a rolling hash over prompt + completion, in [0, 1)."""
    text = prompt + completion
    n, h = len(text), 0
    for i in range(rounds):
        h = (h * 31 + ord(text[i % n])) % 1_000_003
    return h / 1_000_003


def calibrate(target_ms: float = TARGET_MS) -> tuple[int, float]:
    """Rounds for ~``target_ms`` per call on this machine, and the measured ms per call."""
    rounds = 20_000
    for _ in range(3):
        start = time.process_time()
        for i in range(20):
            reward("p", f"c{i}", rounds)
        ms = (time.process_time() - start) / 20 * 1e3
        rounds = max(1000, int(rounds * target_ms / ms))
    start = time.process_time()
    for i in range(20):
        reward("p", f"c{i}", rounds)
    return rounds, (time.process_time() - start) / 20 * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="512 rewards instead of 8,192")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from prefkit.rewards.sources import ExecutedReward, FunctionReward

    torch.set_num_threads(1)
    n_prompts, group = (64, 8) if args.quick else (1024, 8)
    rounds, ms = calibrate()
    prompts = [f"prompt {i}: " + "x" * (i % 17) for i in range(n_prompts)]
    completions = [[f"answer {i}.{j} " + "y" * ((i * j) % 23) for j in range(group)]
                   for i in range(n_prompts)]
    serial = FunctionReward(lambda p, c: reward(p, c, rounds), name="serial")
    executed = ExecutedReward(reward, timeout_value=-1.0, error_value=-1.0,
                              workers=args.workers, timeout=60.0,
                              references=dict.fromkeys(prompts, rounds))
    with executed:
        executed(prompts[:2], completions[:2])  # start the workers and load the function
        times = {"prefkit": [], "peer": []}
        for _ in range(args.repeats):
            start = time.perf_counter()
            ours = executed(prompts, completions)
            times["prefkit"].append(time.perf_counter() - start)
            counts = executed.status_counts()
            start = time.perf_counter()
            theirs = serial(prompts, completions)
            times["peer"].append(time.perf_counter() - start)
    n = n_prompts * group
    rows = {}
    for side, ts in times.items():
        best = min(ts)
        rows[side] = {"seconds": round(best, 3), "rewards_per_s": round(n / best, 1),
                      "seconds_all": [round(t, 3) for t in ts]}
    rows["prefkit"].update(workers=args.workers, status_counts=counts)
    rows["peer"].update(workers=0)
    ratio = rows["prefkit"]["rewards_per_s"] / rows["peer"]["rewards_per_s"]
    agree = bool(torch.equal(ours, theirs)) and counts["ok"] == n
    result = {
        "bench": "reward_executor", "rewards": n, "reward_ms": round(ms, 3),
        "rounds": rounds, "prefkit": rows["prefkit"], "peer": rows["peer"],
        "ratio": round(ratio, 3), "goal": GOAL, "goal_met": ratio >= GOAL["ratio_min"],
        "agree": agree,
        "machine": {**machine(),
                    "matmul_peak_gflops": {"float32": round(matmul_peak("float32"), 1)}},
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
