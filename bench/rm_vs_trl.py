"""Reward-model training and scoring throughput: prefkit vs TRL's RewardTrainer (training) and a
plain transformers batched loop (scoring), side by side in one run.

Training: the same ``LlamaForSequenceClassification`` start (tiny Llama: hidden 256, 4 layers,
4 heads, intermediate 1024, vocab 4096, plus a seeded score head copied into prefkit's scalar
head), the same 256 pairs in file order, batch 8, float32, lr 1e-4 constant, Bradley-Terry loss.
Each run is its own process (own peak RSS); runs are interleaved TRL, prefkit, TRL, prefkit.
prefkit computes each shared prompt once for its two responses; TRL encodes prompt+chosen and
prompt+rejected as two sequences.

Scoring (in this process, interleaved): rewards of the 256 pairs' 512 responses by prefkit
(:func:`prefkit.rewards.scoring.score_pairs`: prompt once per pair) and by a plain loop over
``AutoModelForSequenceClassification`` on right-padded batches of 16 sequences, no grad.

- ``ratio`` = prefkit training pairs/s / TRL's (goal >= 1.25 at prompt 64, >= 1.6 at 256);
- ``agree``: the first three steps' losses within 1e-4, and the two scorers' rewards within 1e-4;
- ``scoring_ratio`` = prefkit scoring pairs/s / the plain loop's.

    python bench/rm_vs_trl.py [--prompt-len 64|256] [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _common import machine  # noqa: E402
from _dpo_setup import build_rm_checkpoint, build_world, load_prefkit_rm  # noqa: E402
from dpo_vs_trl import BATCH, RESPONSE_LEN, matmul_peak, run, summarize  # noqa: E402


def plain_scores(folder: Path, rows: list[dict], batch_size: int = 16):
    """The peer scorer: prompt+response strings, right padding, one forward per batch."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    texts = [r["prompt"] + r[side] + tok.eos_token for r in rows for side in
             ("chosen", "rejected")]
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start:start + batch_size], return_tensors="pt", padding=True,
                      add_special_tokens=False)
            out.append(model(**enc).logits[:, 0])
    scores = torch.cat(out)
    return scores[0::2], scores[1::2]


def prefkit_scores(folder: Path, rows: list[dict], batch_size: int = 16):
    from prefkit.rewards.scoring import score_pairs

    model, tok = load_prefkit_rm(folder)
    return score_pairs(model, [r["prompt"] for r in rows], [r["chosen"] for r in rows],
                       [r["rejected"] for r in rows], tokenizer=tok, batch_size=batch_size)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="8 steps, 1 run each")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    steps = args.steps or (8 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 2)
    import torch

    torch.set_num_threads(2)
    world = Path(tempfile.mkdtemp(prefix="prefkit_rm_bench_"))
    info = build_world(world, prompt_len=args.prompt_len, response_len=RESPONSE_LEN)
    build_rm_checkpoint(world / "rm_model", world / "model")
    peak32 = matmul_peak("float32")

    trl_runs, pk_runs = [], []
    for _ in range(repeats):
        trl_runs.append(run("_rm_trl_child.py", str(world), str(steps)))
        pk_runs.append(run("_rm_prefkit_child.py", str(world), str(steps)))
    trl, pk = summarize(trl_runs), summarize(pk_runs)
    first = [abs(a - b) for a, b in zip(trl_runs[0]["losses"][:3], pk_runs[0]["losses"][:3],
                                        strict=True)]

    rows = [json.loads(line) for line in open(world / "pairs.jsonl")]
    plain_t, pk_t = [], []
    for _ in range(repeats + 1):
        t, plain = timed(plain_scores, world / "rm_model", rows)
        plain_t.append(t)
        t, mine = timed(prefkit_scores, world / "rm_model", rows)
        pk_t.append(t)
    score_diff = max(float((plain[0] - mine[0]).abs().max()),
                     float((plain[1] - mine[1]).abs().max()))

    params = info["params"]
    useful_tokens = BATCH * (args.prompt_len + 2 * RESPONSE_LEN)
    flops = 6 * params * useful_tokens
    result = {
        "bench": "rm_vs_trl",
        "setup": {"prompt_len": args.prompt_len, "response_len": RESPONSE_LEN, "batch": BATCH,
                  "steps": steps, "repeats": repeats, "params": params, "dtype": "float32",
                  "pairs_scored": len(rows)},
        "prefkit": {**pk, "useful_gflops": round(flops / pk["step_seconds"] / 1e9, 1),
                    "fraction_of_fp32_peak": round(flops / pk["step_seconds"] / 1e9 / peak32, 3),
                    "scoring_pairs_per_s": round(len(rows) / statistics.median(pk_t), 1)},
        "peer": {"name": "trl RewardTrainer; scoring: transformers batched loop", **trl,
                 "scoring_pairs_per_s": round(len(rows) / statistics.median(plain_t), 1)},
        "ratio": round(pk["pairs_per_s"] / trl["pairs_per_s"], 3),
        "rss_ratio": round(pk["peak_rss_mb"] / trl["peak_rss_mb"], 3),
        "scoring_ratio": round(statistics.median(plain_t) / statistics.median(pk_t), 3),
        "agree": max(first) <= 1e-4 and score_diff <= 1e-4,
        "agreement": {"first_three_losses_abs_diff": first, "scores_max_abs_diff": score_diff},
        "matmul_peak_gflops": {"float32": round(peak32, 1)},
        "machine": machine(),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
