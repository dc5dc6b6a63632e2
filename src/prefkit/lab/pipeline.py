"""The lab loop, first slice: SFT policy -> samples -> simulated annotators -> reward model ->
direct alignment and best-of-N -> evaluation against the gold reward.

``run_lab(LabConfig(...))``:

1. the task's cached SFT base model (:func:`prefkit.lab.base_model.build_base_model`);
2. ``n_prompts`` training prompts, ``k`` samples each from the SFT policy
   (:func:`prefkit.models.generate.sample`), paired (0 vs 1, 2 vs 3, ...) and labelled by a
   simulated annotator pool (:func:`prefkit.lab.annotators.alpacafarm_pool`) into ``pairs.jsonl``;
3. a Bradley-Terry reward model on those pairs (:func:`prefkit.train.reward.train_reward`);
4. every method: ``raft`` (fine-tune on the reward model's best of ``best_of_n`` samples per
   prompt), each direct loss in ``methods`` (unpaired losses such as ``kto`` get each pair's
   chosen answer as desirable and rejected as undesirable; listwise losses such as ``lipo`` get
   the pool's K-wise rankings of each prompt's samples;
   :func:`prefkit.train.preference.train_preference`, the SFT model as policy and reference),
   and ``best_of_n`` (``n`` SFT samples, the proxy reward model picks one);
6. over-optimization: a second reward model is trained on the same samples labelled by a
   length-biased annotator (``overopt_length_bias``, gold units per relative length difference);
   best-of-n with it for n in ``overopt_ns`` gives the proxy and gold curves
   (:func:`prefkit.evaluate.best_of_n_curve`, :func:`prefkit.evaluate.overoptimization_curve`):
   the proxy keeps rising while the gold reward peaks and falls.
5. evaluation on ``n_eval`` held-out prompts, one sample per prompt (same seed for every
   policy): gold reward mean, gold win rate against the SFT policy's sample with a 95% CI
   (ties half), length-controlled win rate, mean length, and the KL to the SFT policy (k1 on the
   policy's own samples).

Same config and seed -> the same numbers. Stages write under ``workdir``; the SFT model and the
reference log-probs are cached across runs (the rest is recomputed: a run takes seconds to a
couple of minutes on 2 cores).
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["LabConfig", "QUICK", "run_lab"]


@dataclass
class LabConfig:
    """One lab run (module docstring)."""

    task: str = "sort"
    workdir: str = "lab-runs"
    cache_dir: str | None = None  # SFT models and reference log-probs; default workdir/cache
    n_prompts: int = 256
    k: int = 4
    n_eval: int = 256
    temperature: float = 1.0
    pool_size: int = 6
    pool_scale: float = 0.3
    training_flips: bool = False
    methods: list[str] = field(default_factory=lambda: ["dpo", "rpo", "ipo", "simpo", "kto",
                                                        "lipo", "raft"])
    best_of_n: int = 8
    steps: int = 120
    batch_size: int = 16
    learning_rate: float = 1e-5  # direct losses (larger rates over-optimize: see QUICK)
    rm_learning_rate: float = 1e-4
    raft_learning_rate: float = 1e-4
    beta: float = 0.1
    rm_steps: int = 150
    overopt_length_bias: float = 1.0  # 0 turns the over-optimization stage off
    overopt_ns: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])
    rl_iterations: int = 12  # online methods (ppo, grpo, ...): rollout/update iterations
    rl_prompts_per_iteration: int = 32
    rl_generations: int = 4
    rl_learning_rate: float = 1e-4
    kl_coef: float = 0.05
    seed: int = 0


QUICK = dict(n_prompts=128, n_eval=128,
             methods=["dpo", "rpo", "kto", "lipo", "raft", "grpo", "ppo"], steps=120,
             rm_steps=80, best_of_n=8, rl_iterations=10)
"""Overrides for a run of well under two minutes (the tests' config).

Finding on the sort task: the direct losses need a small learning rate. At 1e-5 (120 steps)
DPO, RPO, IPO and SimPO all beat SFT (DPO: gold 0.58 -> 0.66, win rate 0.59, KL 0.26); at 1e-4
plain DPO and SimPO over-optimize -- answers three times longer, gold below zero, KL 20-37 --
probably because pushing down the rejected answers (filler words, then EOS) also pushes down the
EOS that ends the chosen ones, while DPO + NLL on the chosen answers (``rpo``) still improves."""


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _lengths(texts: list[str]) -> np.ndarray:
    return np.array([len(t.split()) for t in texts], dtype=float)


@torch.no_grad()
def _completion_logps(model, tokenizer, prompts: list[str], completions: list[str]
                      ) -> np.ndarray:
    """Summed log-probs of ``completions`` under ``model`` (prompt once per row)."""
    from ..models.packing import PromptGroup
    from ..train.preference_data import tokenize_example
    from ..train.reference import compute_logps

    groups = []
    for p, c in zip(prompts, completions, strict=True):
        ex = tokenize_example(tokenizer, p, [" " + c])
        groups.append(PromptGroup(ex.prompt_ids, [ex.response_ids[0] or
                                                  [tokenizer.eos_token_id]]))
    return compute_logps(model, groups, pad_id=tokenizer.pad_token_id or 0)[:, 0].numpy()


def _evaluate(texts: list[str], prompts: list[str], task, sft_texts: list[str], sft_model,
              tokenizer, policy=None) -> dict[str, Any]:
    """Gold-judged numbers of one policy's evaluation samples (module docstring, step 5)."""
    from ..evaluate import kl_estimate, length_controlled_win_rate, win_rate

    gold = np.array([task.gold_reward(p, t) for p, t in zip(prompts, texts, strict=True)])
    sft_gold = np.array([task.gold_reward(p, t) for p, t in zip(prompts, sft_texts,
                                                                 strict=True)])
    prefs = np.where(gold > sft_gold, 1.0, np.where(gold < sft_gold, 0.0, 0.5))
    wr = win_rate(prefs)
    lc = length_controlled_win_rate(prefs, _lengths(texts), _lengths(sft_texts))
    out = {"gold_reward": round(float(gold.mean()), 4),
           "gold_reward_se": round(float(gold.std(ddof=1) / np.sqrt(len(gold))), 4),
           "win_rate_vs_sft": round(wr["win_rate"], 4), "win_rate_ci": [
               round(wr["ci_low"], 4), round(wr["ci_high"], 4)],
           "lc_win_rate_vs_sft": round(float(lc["lc_win_rate"]), 4),
           "mean_length": round(float(_lengths(texts).mean()), 3)}
    if policy is not None:
        lp = _completion_logps(policy, tokenizer, prompts, texts)
        lr = _completion_logps(sft_model, tokenizer, prompts, texts)
        out["kl_to_sft"] = round(kl_estimate(lp, lr, estimator="k1")["kl"], 4)
    else:
        out["kl_to_sft"] = None
    return out


ONLINE_METHODS = ("ppo", "reinforce", "rloo", "grpo", "dr_grpo", "remax", "online_dpo",
                  "online_raft")


def _online(config: LabConfig, method: str, task, sft_path: str, rm, prompts: list[str],
            work: Path, quiet) -> tuple[Any, list[dict]]:
    """One online method against the proxy reward model; the gold reward of every rollout is
    recorded (not used for training) for the over-optimization-over-steps curves."""
    from ..models.load import load_model
    from ..rewards.sources import ModelReward
    from ..train.online import OnlineConfig, train_online

    algo = "raft" if method == "online_raft" else method
    policy, tokenizer = load_model(sft_path)

    def gold(ro) -> dict[str, torch.Tensor]:
        return {"gold_reward": torch.tensor([[task.gold_reward(p, c) for c in cs]
                                             for p, cs in zip(ro.prompts, ro.completions,
                                                              strict=True)])}

    cfg = OnlineConfig(algo=algo, output_dir=str(work / method), iterations=config.rl_iterations,
                       prompts_per_iteration=config.rl_prompts_per_iteration,
                       num_generations=config.rl_generations, kl_coef=config.kl_coef,
                       learning_rate=config.rl_learning_rate, temperature=config.temperature,
                       batch_size=config.batch_size, lr_scheduler="constant",
                       logging_steps=10_000, save_steps=0, save_final=False, progress=False,
                       seed=config.seed)
    with quiet:
        result = train_online(cfg, reward=ModelReward(rm.model, tokenizer), prompts=prompts,
                              model=policy, tokenizer=tokenizer, monitor=gold)
    curve = [{"step": it["iteration"], "gold_reward": it["gold_reward"],
              "proxy_reward": it["reward"], "kl": it["kl"]} for it in result.iterations]
    return result.model.eval(), curve


def _loss_kind(spec: str) -> str:
    from .. import losses

    return losses.build_loss(spec).loss_spec.kind


def _binary_data(rows: list[dict], work: Path) -> str:
    """Unpaired (KTO-style) labels from the annotated pairs: each chosen answer desirable, each
    rejected one undesirable (as TRL's unpaired conversion does)."""
    out = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
           for r in rows for side in ("chosen", "rejected")]
    return _write(work / "binary.jsonl", out)


def _ranking_data(pool, prompts: list[str], samples: list[list[str]], work: Path) -> str:
    """K-wise rankings of each prompt's distinct samples by the annotator pool (listwise
    losses)."""
    rows = []
    for prompt, cs in zip(prompts, samples, strict=True):
        uniq = [" " + c for c in dict.fromkeys(c for c in cs if c.strip())]
        if len(uniq) < 2:
            continue
        ranking = pool.rank(prompt, uniq)
        rows.append({"prompt": prompt, "responses": uniq,
                     "ranking": [t[0] if len(t) == 1 else list(t) for t in ranking.tiers]})
    return _write(work / "rankings.jsonl", rows)


def _raft_data(config: LabConfig, sft, tokenizer, rm, prompts: list[str], work: Path) -> str:
    """RAFT / rejection-sampling fine-tuning data (Dong et al. 2023, "RAFT: Reward rAnked
    FineTuning", arXiv 2304.06767): ``best_of_n`` SFT samples per training prompt, ranked by the
    learned reward model; the SFT loss then trains on the top-ranked one."""
    from ..models.generate import sample
    from ..rewards.scoring import score_groups

    n = max(2, config.best_of_n)
    cands = sample(sft, tokenizer, prompts, k=n, temperature=config.temperature,
                   seed=config.seed + 4)
    rows = []
    for prompt, cs in zip(prompts, cands, strict=True):
        uniq = list(dict.fromkeys(c for c in cs if c.strip()))
        if len(uniq) < 2:
            continue
        scores = score_groups(rm.model, [prompt], [[" " + c for c in uniq]],
                              tokenizer=rm.tokenizer)[0]
        order = torch.argsort(scores, descending=True).tolist()
        rows.append({"prompt": prompt, "responses": [" " + c for c in uniq], "ranking": order})
    return _write(work / "raft_rankings.jsonl", rows)


def _overoptimization(config: LabConfig, task, sft, tokenizer, sft_path: str, items: list,
                      eval_prompts: list[str], work: Path, common: dict, quiet) -> dict:
    """Stage 6 (module docstring): best-of-n against a length-biased proxy reward model."""
    from ..evaluate import best_of_n_curve, overoptimization_curve
    from ..lab.annotators import SimulatedAnnotator
    from ..models.generate import sample
    from ..rewards.scoring import score_groups
    from ..train.reward import RewardConfig, train_reward

    judge = SimulatedAnnotator(id="length-biased", gold=lambda p, r: task.gold_reward(p, r),
                               temperature=config.pool_scale / 3,
                               length_bias=config.overopt_length_bias, seed=config.seed)
    labels = [judge.compare(*item) for item in items]
    rows = [{"prompt": c.prompt, "chosen": c.chosen, "rejected": c.rejected}
            for c in labels if not c.outcome.is_tie]
    data = _write(work / "pairs_length_biased.jsonl", rows)
    with quiet:
        proxy_rm = train_reward(RewardConfig(model=sft_path, data=data, objective="bt",
                                             output_dir=str(work / "rm_length_biased"),
                                             max_steps=config.rm_steps,
                                             learning_rate=config.rm_learning_rate, **common))
    n_max = max(config.overopt_ns)
    cands = sample(sft, tokenizer, eval_prompts, k=n_max, temperature=config.temperature,
                   seed=config.seed + 3)
    proxy = score_groups(proxy_rm.model, eval_prompts, [[" " + c for c in cs] for cs in cands],
                         tokenizer=proxy_rm.tokenizer).numpy()
    gold = np.array([[task.gold_reward(p, c) for c in cs] for p, cs in zip(eval_prompts, cands,
                                                                          strict=True)])
    curve = best_of_n_curve(proxy, gold, ns=sorted(config.overopt_ns))
    summary = overoptimization_curve([c["n"] for c in curve], [c["gold_mean"] for c in curve],
                                     [c["proxy_mean"] for c in curve])
    return {"curve": [{k: (v if k == "n" else round(float(v), 4)) for k, v in c.items()}
                      for c in curve],
            **{k: (round(float(v), 4) if isinstance(v, float) else v)
               for k, v in summary.items()}}


def run_lab(config: LabConfig | None = None, **overrides: Any) -> dict[str, Any]:
    """Run the loop (module docstring); returns one JSON-ready dict."""
    from ..lab.annotators import alpacafarm_pool
    from ..lab.base_model import build_base_model
    from ..lab.tasks import get_task
    from ..models.generate import sample
    from ..rewards.scoring import score_groups
    from ..train.preference import PreferenceConfig, train_preference
    from ..train.reward import RewardConfig, train_reward

    config = LabConfig(**{**asdict(config or LabConfig()), **overrides})
    work = Path(config.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(config.cache_dir) if config.cache_dir else work / "cache"
    task = get_task(config.task)
    quiet = contextlib.redirect_stderr(io.StringIO())
    with quiet:
        sft, tokenizer, info = build_base_model(task, cache / "base", seed=config.seed)
    sft_path = info["path"]
    rng = random.Random(config.seed)
    train_prompts = [task.sample_prompt(rng) for _ in range(config.n_prompts)]
    eval_prompts = [task.sample_prompt(rng) for _ in range(config.n_eval)]

    # 2. samples -> simulated annotators -> pairs
    samples = sample(sft, tokenizer, train_prompts, k=config.k, temperature=config.temperature,
                     seed=config.seed)
    pool = alpacafarm_pool(lambda p, r: task.gold_reward(p, r), n=config.pool_size,
                           scale=config.pool_scale, training=config.training_flips,
                           seed=config.seed)
    items = [(p, " " + s[i], " " + s[i + 1]) for p, s in zip(train_prompts, samples,
                                                             strict=True)
             for i in range(0, config.k - 1, 2)
             if s[i] != s[i + 1] and s[i].strip() and s[i + 1].strip()]
    labels = pool.annotate_pairs(items)
    rows = [{"prompt": c.prompt, "chosen": c.chosen, "rejected": c.rejected}
            for c in labels if not c.outcome.is_tie]
    pairs = _write(work / "pairs.jsonl", rows)
    gold_agree = float(np.mean([task.gold_reward(r["prompt"], r["chosen"].strip())
                                >= task.gold_reward(r["prompt"], r["rejected"].strip())
                                for r in rows]))

    common = dict(batch_size=config.batch_size, lr_scheduler="constant", logging_steps=10_000,
                  save_steps=0, save_final=False, progress=False, seed=config.seed)
    # 3. reward model
    with quiet:
        rm = train_reward(RewardConfig(model=sft_path, data=pairs, objective="bt",
                                       output_dir=str(work / "rm"), max_steps=config.rm_steps,
                                       learning_rate=config.rm_learning_rate, **common))

    # 5. the SFT baseline's evaluation samples (the same seed for every policy)
    def eval_samples(model) -> list[str]:
        return [s[0] for s in sample(model, tokenizer, eval_prompts, k=1,
                                     temperature=config.temperature, seed=config.seed + 1)]

    sft_texts = eval_samples(sft)
    results: dict[str, Any] = {"sft": _evaluate(sft_texts, eval_prompts, task, sft_texts,
                                                sft, tokenizer)}
    # 4a. direct alignment methods (and RAFT: fine-tune on the reward model's best samples)
    curves: dict[str, list[dict]] = {}
    for method in config.methods:
        if method in ONLINE_METHODS:
            policy, curves[method] = _online(config, method, task, sft_path, rm, train_prompts,
                                             work, quiet)
            results[method] = _evaluate(eval_samples(policy), eval_prompts, task, sft_texts,
                                        sft, tokenizer, policy=policy)
            results[method]["kind"] = "online"
            continue
        data, loss, lr = pairs, method, config.learning_rate
        if method == "raft":
            data = _raft_data(config, sft, tokenizer, rm, train_prompts, work)
            loss, lr = "sft", config.raft_learning_rate
        elif _loss_kind(method) == "unpaired":
            data = _binary_data(rows, work)
        elif _loss_kind(method) == "listwise":
            data = _ranking_data(pool, train_prompts, samples, work)
        with quiet:
            trained = train_preference(PreferenceConfig(
                model=sft_path, data=data, loss=loss, beta=config.beta,
                output_dir=str(work / method), max_steps=config.steps, learning_rate=lr,
                reference_cache=str(cache / "reference"), **common))
        policy = trained.model.eval()
        results[method] = _evaluate(eval_samples(policy), eval_prompts, task,
                                    sft_texts, sft, tokenizer, policy=policy)
    # 4b. best-of-N with the proxy reward model
    if config.best_of_n > 1:
        cands = sample(sft, tokenizer, eval_prompts, k=config.best_of_n,
                       temperature=config.temperature, seed=config.seed + 2)
        proxy = score_groups(rm.model, eval_prompts, [[" " + c for c in cs] for cs in cands],
                             tokenizer=rm.tokenizer)
        picked = [cs[int(torch.argmax(r))] for cs, r in zip(cands, proxy, strict=True)]
        res = _evaluate(picked, eval_prompts, task, sft_texts, sft, tokenizer)
        n = config.best_of_n
        res["kl_to_sft"] = round(float(np.log(n) - (n - 1) / n), 4)  # the analytic bound
        results[f"best_of_{n}"] = res
    overopt = None
    if config.overopt_length_bias > 0:
        overopt = _overoptimization(config, task, sft, tokenizer, sft_path, items, eval_prompts,
                                    work, common, quiet)
    return {"config": asdict(config), "sft_model": sft_path,
            "data": {"pairs": len(rows), "ties_dropped": len(labels) - len(rows),
                     "identical_or_empty_samples_dropped":
                         config.n_prompts * (config.k // 2) - len(items),
                     "labels_agreeing_with_gold": round(gold_agree, 4)},
            "reward_model": {"train_accuracy": round(rm.fit.metrics.get("accuracy", float("nan")),
                                                     4)},
            "methods": results, "overoptimization": overopt, "training_curves": curves}
