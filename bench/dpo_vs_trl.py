"""DPO step throughput and memory: prefkit vs TRL's DPOTrainer, side by side in one run.

The same tiny Llama (hidden 256, 4 layers, 4 heads, intermediate 1024, vocab 4096: 6.3M
parameters, random init), the same 256 synthetic pairs (prompt ``--prompt-len`` words, responses
63 words + EOS), batch 8, float32, lr 1e-4 constant, beta 0.1, on 2 threads. TRL runs at its
fastest setting, ``precompute_ref_log_probs=True``; prefkit precomputes too (its on-disk cache
off, so the cost is paid in every run). Each run is its own process (its own peak RSS); runs
are interleaved TRL, prefkit, TRL, prefkit, ... so a busy host hurts both alike.

- ``pairs_per_s`` = 8 / median step time (steps after the first two);
- ``ratio`` = prefkit pairs/s / TRL pairs/s; ``rss_ratio`` = prefkit peak RSS / TRL's;
- ``agree``: first-step losses within 1e-4 and the two reference passes' summed log-probs within
  1e-5 per token on all 256 pairs (same tokens, same model);
- useful FLOP/s = 6 * parameters * tokens per step with each prompt counted ONCE (prompt + 2
  responses per pair), as a fraction of the float32 matmul peak measured in this run (the
  6PT convention of the peer baselines, all parameters included); ``strict_gflops`` counts only
  matmul work that must happen: no input-embedding FLOPs, the LM head on completion tokens only.

Variants: ``--lora`` (LoRA r=16 on q,k,v,o for both; prefkit also runs a reference-free SimPO
LoRA run, the policy-only memory baseline: LoRA-as-reference should cost <= 1.1x its RSS);
``--loss lipo`` (prefkit LiPO-lambda on K=4 rankings of the same prompts vs prefkit DPO on their
best-vs-worst pairs: listwise step time should be <= 1.6x pairwise; TRL has no listwise loss and
runs DPO on the pairs for reference).

    python bench/dpo_vs_trl.py [--prompt-len 64|256] [--loss dpo|lipo] [--lora] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _common import machine, matmul_peak  # noqa: E402
from _dpo_setup import build_world  # noqa: E402

BATCH = 8
RESPONSE_LEN = 64


def run(script: str, *args: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def step_time(result: dict) -> float:
    steps = result["step_seconds"]
    return statistics.median(steps[1:] if len(steps) > 2 else steps)


def summarize(runs: list[dict]) -> dict:
    times = [step_time(r) for r in runs]
    return {"step_seconds": round(statistics.median(times), 4),
            "step_seconds_per_run": [round(t, 4) for t in times],
            "pairs_per_s": round(BATCH / statistics.median(times), 2),
            "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in runs), 1),
            "reference_seconds": round(statistics.median(
                (r.get("reference_seconds") or r.get("init_seconds") or 0.0) for r in runs), 2),
            "first_step_loss": runs[0]["losses"][0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--loss", choices=("dpo", "lipo"), default="dpo")
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--quick", action="store_true", help="8 steps, 1 run each")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    steps = args.steps or (8 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 2)
    k = 4 if args.loss == "lipo" else 2

    world = Path(tempfile.mkdtemp(prefix="prefkit_dpo_bench_"))
    info = build_world(world, prompt_len=args.prompt_len, response_len=RESPONSE_LEN, k=k)
    peak32, peak16 = matmul_peak("float32"), matmul_peak("bfloat16")

    lora = ["--lora"] if args.lora else []
    trl_runs, pk_runs, extra_runs = [], [], []
    for _ in range(repeats):
        trl_runs.append(run("_dpo_trl_child.py", str(world), str(steps), *lora))
        if args.loss == "lipo":
            pk_runs.append(run("_dpo_prefkit_child.py", str(world), str(steps),
                               "rankings.jsonl", "lipo"))
            extra_runs.append(run("_dpo_prefkit_child.py", str(world), str(steps),
                                  "pairs.jsonl", "dpo"))
        else:
            pk_runs.append(run("_dpo_prefkit_child.py", str(world), str(steps), "pairs.jsonl",
                               "dpo", *lora))
            if args.lora:
                extra_runs.append(run("_dpo_prefkit_child.py", str(world), str(steps),
                                      "pairs.jsonl", "simpo", *lora))
    trl, pk = summarize(trl_runs), summarize(pk_runs)

    # agreement: the reference passes saw the same tokens through the same weights
    agree_ref = None
    if trl_runs[0]["ref_logps"] and pk_runs[0]["ref_logps"] and args.loss == "dpo":
        diffs = [abs(a - b) for side in ("chosen", "rejected") for a, b in
                 zip(trl_runs[0]["ref_logps"][side], pk_runs[0]["ref_logps"][side], strict=True)]
        agree_ref = max(diffs) / RESPONSE_LEN
    loss_diff = (abs(trl["first_step_loss"] - pk["first_step_loss"])
                 if args.loss == "dpo" else None)
    agree = (loss_diff is None or loss_diff <= 1e-4) and (agree_ref is None or agree_ref <= 1e-5)

    params = info["params"]
    useful_tokens = BATCH * (args.prompt_len + k * RESPONSE_LEN)  # each prompt once
    flops = 6 * params * useful_tokens
    # strict count: no work for the input embedding; the LM head only on completion tokens
    embed = head = 4096 * 256
    strict = (6 * (params - embed - head) * useful_tokens
              + 6 * head * BATCH * k * RESPONSE_LEN)
    result = {
        "bench": "dpo_vs_trl",
        "setup": {"prompt_len": args.prompt_len, "response_len": RESPONSE_LEN, "loss": args.loss,
                  "k": k, "lora": args.lora, "batch": BATCH, "steps": steps,
                  "repeats": repeats, "params": params, "dtype": "float32",
                  "useful_tokens_per_step": useful_tokens},
        "prefkit": {**pk, "useful_gflops": round(flops / pk["step_seconds"] / 1e9, 1),
                    "fraction_of_fp32_peak": round(flops / pk["step_seconds"] / 1e9 / peak32, 3),
                    "strict_gflops": round(strict / pk["step_seconds"] / 1e9, 1),
                    "strict_fraction_of_fp32_peak": round(
                        strict / pk["step_seconds"] / 1e9 / peak32, 3)},
        "peer": {"name": "trl DPOTrainer (precompute_ref_log_probs=True)", **trl,
                 "useful_gflops": round(BATCH * (args.prompt_len + 2 * RESPONSE_LEN) * 6 * params
                                        / trl["step_seconds"] / 1e9, 1)},
        "ratio": round(pk["pairs_per_s"] / trl["pairs_per_s"], 3),
        "rss_ratio": round(pk["peak_rss_mb"] / trl["peak_rss_mb"], 3),
        "agree": agree,
        "agreement": {"first_step_loss_abs_diff": loss_diff,
                      "reference_logps_max_abs_diff_per_token": agree_ref},
        "matmul_peak_gflops": {"float32": round(peak32, 1), "bfloat16": round(peak16, 1)},
        "machine": machine(),
    }
    if args.loss == "lipo":
        pair = summarize(extra_runs)
        result["prefkit_pairwise_same_prompts"] = pair
        result["listwise_over_pairwise_step_time"] = round(pk["step_seconds"]
                                                           / pair["step_seconds"], 3)
        result["ratio"] = round(pair["pairs_per_s"] / trl["pairs_per_s"], 3)
    if args.lora:
        free = summarize(extra_runs)
        result["prefkit_policy_only_simpo_lora"] = free
        result["lora_reference_rss_over_policy_only"] = round(pk["peak_rss_mb"]
                                                              / free["peak_rss_mb"], 3)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
