"""Online RL step throughput: prefkit's ``train_online`` vs TRL's GRPOTrainer / RLOOTrainer.

The same tiny Llama (hidden 256, 4 layers, 4 heads, intermediate 1024, vocab 4096: 6.3M
parameters, random init, sdpa, float32) and word-level tokenizer (bench/_online_setup.py), the
same 64 synthetic prompts (32..63 words + BOS), the same reward (``low_share``: the share of
lower-half-vocabulary words in the completion, a plain Python function of the text; or, with
``--reward verifiable_math``, prefkit's math checker of the completion's last number against the
prompt's answer -- prefkit through ``--reward verifiable:math``, TRL through a reward function
calling the same checker), on 2 threads. Generation: TRL uses transformers ``generate`` (no
vLLM); prefkit its ``--backend`` (default ``prefkit``, its own static-cache decode loop, whose
linear weights are packed for oneDNN once per generation call;
``prefkit-compiled`` adds torch.compile; ``transformers``: generate). Per optimizer step: 8
prompts x G = 4 completions = 32 completions of EXACTLY 64 new tokens (EOS is masked with
``min_new_tokens = max_new_tokens`` on both sides, so both generate and train on the same
number of tokens), temperature 1 (no top-k/top-p), one generation and one optimizer step per
rollout (TRL: ``num_iterations = steps_per_generation = gradient_accumulation_steps = 1``;
prefkit: ``ppo_epochs = num_minibatches = 1``), AdamW lr 1e-5 constant, grad-norm clip 1.0.
Primary setting: beta = 0 (TRL's GRPO default: no reference model); ``--betas 0,0.04`` adds a
run with a reference model (GRPO: k3 KL loss term on both sides; RLOO: k1 sequence KL in the
reward on both sides); the full run does both, ``--quick`` only beta 0.

Each run is its own process (its own peak RSS); runs are interleaved (TRL, prefkit, prefkit,
TRL, ...) so a busy host hurts both alike. Per side:

- ``step_seconds``: median interval between consecutive optimizer steps (the first step, with
  its warm-up, is never counted);
- ``generation_seconds``: the rollout phase of a step -- prefkit ``_Online.collect``, TRL
  ``_generate_and_score_completions``: sampling, reward, the no-grad log-prob forwards, advantages;
  of which ``generate_call_seconds`` is the generation call itself (TRL: ``model.generate``;
  prefkit: its generation backend) and
  ``scoring_seconds`` the rest; ``training_seconds`` = step - rollout (forward, backward, AdamW);
- ``completions_per_s`` = 32 / step_seconds; ``ratio`` = prefkit's / TRL's (> 1: prefkit faster);
- ``generation_tokens_per_s`` = 32 x 64 / generate_call_seconds; ``generation_ratio`` = prefkit's /
  TRL's ``generate`` (the same model in the same run);
- useful FLOP/s = (6 * params * trained tokens + 2 * params * generated tokens) per step / step
  time, trained tokens = the step's completion tokens + each prompt ONCE, as a fraction of the
  float32 matmul peak measured in this run on 2 threads.

``agree`` (the two samplers draw different samples, so the check is on what each side computed
for its own samples, plus sampling statistics):

1. every ``generate`` call on both sides returned 32 rows of exactly 64 new tokens, no EOS;
2. each side's log-probs of its FIRST rollout's tokens (prefkit: its first update's forward;
   TRL: its first ``_get_per_token_logps_and_entropies`` call -- both at the initial weights)
   equal an independent unpadded transformers forward of the initial checkpoint on the same
   tokens within 1e-4 per token, and every first-rollout prompt is a prompt of the file,
   tokenized identically (BOS + one id per word);
3. the first rollout's mean reward of the two sides agrees within 4 standard errors, and so does
   the mean log-prob of the sampled tokens under the initial model (a weak check of the
   samplers: the random-init model is nearly uniform, entropy ~8.26 of ln 4096 = 8.32 nats);
4. the first step's loss is 0 within 1e-5 on both sides (importance ratio 1, advantages that sum
   to 0 over each group, KL 0 to a reference equal to the policy).

Fairness notes: both sides pay their own design costs -- on-policy, both skip the "old"
log-prob forward (TRL RLOO runs it; so does prefkit where a KL term enters the reward), TRL
repeats each prompt in all G rows and computes the entropy in the loss (prefkit packs each
prompt once per group); the two samplers
differ (prefkit: hashed Gumbel-max in float64, reproducible across batch sizes; TRL: transformers
multinomial sampling) and so do the prompts each draws per step (same length distribution). TRL
RLOO uses a sequence-level ratio, prefkit a token-level one. Peak RSS includes imports: see
``rss_before_training_mb`` (after imports, model load, trainer set-up). Seconds are only
meaningful on an idle machine: with 2 threads and one busy core, ``generate`` (hundreds of tiny
kernels per token) slows down 10-25x on both sides (OpenMP threads wait on a descheduled
sibling); ``machine.load_average_1m_*`` records the load, ``--threads 1`` is the robust fallback.

    python bench/online_vs_trl.py [--algo grpo|rloo] [--quick] [--betas 0,0.04] [--threads 2]
                                  [--backend prefkit|prefkit-compiled|transformers]
                                  [--reward low_share|verifiable_math] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from _common import machine, matmul_peak  # noqa: E402
from _online_setup import build_world, read_prompts  # noqa: E402

LOGP_TOL = 1e-4
LOSS0_TOL = 1e-5


def run(script: str, world: Path, settings: dict) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1",
           "OMP_NUM_THREADS": str(settings["threads"]), "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(HERE / script), str(world), json.dumps(settings)],
                          capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} {json.dumps(settings)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def per_step(result: dict) -> dict:
    """Medians over the steps after the first: interval ``j`` ends step ``j + 1`` (0-based),
    whose rollout / generate call is entry ``j + 1``."""
    steps = result["step_seconds"]
    idx = range(1, len(steps) + 1)
    calls = len(result["generate_seconds"]) // max(1, len(result["rollout_seconds"]))
    rollout = [result["rollout_seconds"][i] for i in idx]
    generate = [sum(result["generate_seconds"][i * calls:(i + 1) * calls]) for i in idx]
    return {"step": statistics.median(steps),
            "rollout": statistics.median(rollout),
            "generate": statistics.median(generate),
            "scoring": statistics.median(r - g for r, g in zip(rollout, generate, strict=True)),
            "training": statistics.median(s - r for s, r in zip(steps, rollout, strict=True))}


def summarize(runs: list[dict], completions: int, flops: float, peak: float) -> dict:
    parts = [per_step(r) for r in runs]

    def med(key: str) -> float:
        return statistics.median(p[key] for p in parts)
    step = med("step")
    return {"step_seconds": round(step, 4),
            "step_seconds_per_run": [round(p["step"], 4) for p in parts],
            "generation_seconds": round(med("rollout"), 4),
            "generate_call_seconds": round(med("generate"), 4),
            "scoring_seconds": round(med("scoring"), 4),
            "training_seconds": round(med("training"), 4),
            "completions_per_s": round(completions / step, 3),
            "generation_tokens_per_s": round(completions * runs[0]["generate_new_tokens"][0]
                                             / med("generate"), 1),
            "generated_tokens_per_s": round(completions * runs[0]["generate_new_tokens"][0]
                                            / step, 1),
            "peak_rss_mb": round(statistics.median(r["peak_rss_mb"] for r in runs), 1),
            "rss_before_training_mb": round(statistics.median(r["rss_before_training_mb"]
                                                              for r in runs), 1),
            "useful_gflops": round(flops / step / 1e9, 2),
            "fraction_of_fp32_peak": round(flops / step / 1e9 / peak, 4),
            "first_step_seconds": round(runs[0]["first_step_seconds"], 3),
            "first_rollout_mean_reward": round(statistics.fmean(runs[0]["rewards"][0]), 5),
            "losses": [float(f"{x:.4g}") for x in runs[0]["losses"]]}


def reference_logps(model, first: dict) -> list[list[float]]:
    """Per row: log-probs of the completion tokens under ``model``, one unpadded row at a time."""
    import torch

    rows = []
    with torch.no_grad():
        for prompt, completion in _rows(first):
            ids = torch.tensor([prompt + completion])
            logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
            lp = torch.log_softmax(logits, -1).gather(1, ids[0, len(prompt):, None])[:, 0]
            rows.append(lp.tolist())
    return rows


def _rows(first: dict) -> list[tuple[list[int], list[int]]]:
    """``(prompt ids, completion ids)`` per completion row (prefkit stores completions grouped
    per prompt, TRL one prompt copy per row)."""
    if first["completion_ids"] and isinstance(first["completion_ids"][0][0], list):
        return [(p, c) for p, cs in zip(first["prompt_ids"], first["completion_ids"],
                                        strict=True) for c in cs]
    return list(zip(first["prompt_ids"], first["completion_ids"], strict=True))


def _mean_se(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


def agreement(world: Path, pk: dict, trl: dict, settings: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(world / "model", dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    tokenizer = AutoTokenizer.from_pretrained(world / "model")
    file_prompts = {tuple(tokenizer(p)["input_ids"]) for p in read_prompts(world)}
    rows = settings["prompts_per_step"] * settings["num_generations"]
    new = settings["max_new_tokens"]
    out: dict = {}
    sample_logp: dict = {}
    ok = True
    for name, r in (("prefkit", pk), ("peer", trl)):
        fixed = (all(n == new for n in r["generate_new_tokens"])
                 and all(e == 0 for e in r["generate_eos"])
                 and all(k == rows for k in r["generate_rows"]))
        ref = reference_logps(model, r["first"])
        own = r["first"]["logps"]
        diff = max(abs(a - b) for x, y in zip(own, ref, strict=True)
                   for a, b in zip(x, y, strict=True))
        prompts_ok = all(tuple(p) in file_prompts for p, _ in _rows(r["first"]))
        n_rows = len(own)
        sample_logp[name] = [statistics.fmean(x) for x in ref]
        out[name] = {"fixed_length": fixed, "first_rollout_rows": n_rows,
                     "first_rollout_prompts_from_file": prompts_ok,
                     "logps_vs_plain_forward_max_abs_diff": diff}
        ok = ok and fixed and prompts_ok and diff <= LOGP_TOL and n_rows == rows
    for key, a, b in (("reward", pk["rewards"][0], trl["rewards"][0]),
                      ("sample_logp", sample_logp["prefkit"], sample_logp["peer"])):
        (ma, sa), (mb, sb) = _mean_se(a), _mean_se(b)
        tol = 4 * math.hypot(sa, sb) + 1e-6
        out[f"first_rollout_mean_{key}"] = {"prefkit": round(ma, 5), "peer": round(mb, 5),
                                            "abs_diff": round(abs(ma - mb), 5),
                                            "tolerance_4se": round(tol, 5)}
        ok = ok and abs(ma - mb) <= tol
    # ratio 1 and advantages that sum to 0 over each group (and KL 0 to an identical
    # reference): the first step's surrogate loss is 0 up to rounding on both sides
    first_losses = {"prefkit": pk["losses"][0], "peer": trl["losses"][0]}
    out["first_step_loss"] = first_losses
    ok = ok and all(abs(v) <= LOSS0_TOL for v in first_losses.values())
    out["logp_tolerance"] = LOGP_TOL
    out["first_step_loss_tolerance"] = LOSS0_TOL
    return {"agree": ok, **out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algo", choices=("grpo", "rloo"), default="grpo")
    parser.add_argument("--quick", action="store_true",
                        help="5 steps (4 timed), 1 run per side, beta 0 only")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--betas", default=None,
                        help="comma-separated KL coefficients; the first is the primary setting "
                             "(default 0,0.04; --quick: 0)")
    parser.add_argument("--prompts-per-step", type=int, default=8)
    parser.add_argument("--num-generations", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads per side (2: the bench setting; 1 for diagnosis)")
    parser.add_argument("--backend", default="prefkit",
                        choices=("prefkit", "prefkit-compiled", "transformers"),
                        help="prefkit's generation backend (TRL: transformers generate)")
    parser.add_argument("--reward", default="low_share", choices=("low_share", "verifiable_math"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    steps = args.steps or (5 if args.quick else 12)
    if steps < 2:
        parser.error("--steps must be >= 2 (the first step is warm-up)")
    repeats = args.repeats or (1 if args.quick else 2)
    betas = [float(b) for b in (args.betas or ("0" if args.quick else "0,0.04")).split(",")]

    load_before = os.getloadavg()[0]
    world = Path(tempfile.mkdtemp(prefix="prefkit_online_bench_"))
    info = build_world(world)
    peak = matmul_peak("float32", args.threads)
    params = info["params"]
    completions = args.prompts_per_step * args.num_generations
    prompt_len = statistics.fmean(info["prompt_lengths"])
    generated = completions * args.max_new_tokens
    trained = args.prompts_per_step * prompt_len + generated
    flops = 6 * params * trained + 2 * params * generated

    results = {}
    for beta in betas:
        settings = {"algo": args.algo, "steps": steps, "prompts_per_step": args.prompts_per_step,
                    "num_generations": args.num_generations,
                    "max_new_tokens": args.max_new_tokens, "beta": beta,
                    "learning_rate": args.learning_rate, "threads": args.threads,
                    "backend": args.backend, "reward": args.reward}
        trl_runs, pk_runs = [], []
        for r in range(repeats):
            order = (("trl", "pk") if r % 2 == 0 else ("pk", "trl"))
            for side in order:
                if side == "trl":
                    trl_runs.append(run("_online_trl_child.py", world, settings))
                else:
                    pk_runs.append(run("_online_prefkit_child.py", world, settings))
        pk = summarize(pk_runs, completions, flops, peak)
        peer = summarize(trl_runs, completions, flops, peak)
        results[beta] = {"settings": settings, "prefkit": pk, "peer": peer,
                         "ratio": round(pk["completions_per_s"] / peer["completions_per_s"], 3),
                         "generation_ratio": round(pk["generation_tokens_per_s"]
                                                   / peer["generation_tokens_per_s"], 3),
                         "rss_ratio": round(pk["peak_rss_mb"] / peer["peak_rss_mb"], 3),
                         "agreement": agreement(world, pk_runs[0], trl_runs[0], settings)}

    primary = results[betas[0]]
    trainer = "GRPOTrainer" if args.algo == "grpo" else "RLOOTrainer"
    result = {
        "bench": "online_vs_trl",
        "prefkit": {"name": f"prefkit train_online(algo={args.algo!r})", **primary["prefkit"]},
        "peer": {"name": f"trl {trainer} (transformers generate)", **primary["peer"]},
        "ratio": primary["ratio"],
        "generation_ratio": primary["generation_ratio"],
        "rss_ratio": primary["rss_ratio"],
        "agree": all(r["agreement"]["agree"] for r in results.values()),
        "agreement": primary["agreement"],
        "config": {"algo": args.algo, "beta": betas[0], "steps": steps, "repeats": repeats,
                   "prompts": len(info["prompt_lengths"]),
                   "prompts_per_step": args.prompts_per_step,
                   "num_generations": args.num_generations,
                   "completions_per_step": completions,
                   "max_new_tokens": args.max_new_tokens, "fixed_length": True,
                   "mean_prompt_tokens": round(prompt_len, 2), "temperature": 1.0,
                   "learning_rate": args.learning_rate, "params": params, "dtype": "float32",
                   "threads": args.threads,
                   "generation": {"prefkit": args.backend,
                                  "peer": "transformers generate (KV cache), no vLLM"},
                   "reward": args.reward,
                   "trained_tokens_per_step": round(trained, 1),
                   "generated_tokens_per_step": generated,
                   "useful_gflop_per_step": round(flops / 1e9, 2)},
        "matmul_peak_gflops": {"float32": round(peak, 1)},
        "machine": {**machine(), "load_average_1m_before": round(load_before, 2),
                    "load_average_1m_after": round(os.getloadavg()[0], 2)},
    }
    if len(betas) > 1:
        result["other_betas"] = {str(b): {k: results[b][k] for k in
                                          ("prefkit", "peer", "ratio", "generation_ratio",
                                           "rss_ratio", "agreement")}
                                 for b in betas[1:]}
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
