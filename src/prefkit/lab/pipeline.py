"""The lab loop: SFT policy -> samples -> simulated annotators -> feedback store -> reward model
-> offline and online alignment, best-of-N -> evaluation against the gold reward -> report.

``run_lab(LabConfig(...))``:

1. the task's cached SFT base model (:func:`prefkit.lab.base_model.build_base_model`);
2. ``n_prompts`` training prompts, ``k`` samples each from the SFT policy
   (:func:`prefkit.models.generate.sample`), paired (0 vs 1, 2 vs 3, ...) and labelled by a
   simulated annotator pool (:func:`prefkit.lab.annotators.alpacafarm_pool`) -- or, with
   ``feedback="ratings"``, each distinct sample rated by one annotator (gold + rating noise)
   and pairs made from rating gaps of at least ``rating_min_gap``; the labels are kept in a
   :class:`~prefkit.data.store.FeedbackStore` and the training pairs read back from it
   (``pairs.jsonl``); the pool's agreement (pairwise, Krippendorff's alpha, with gold);
3. a Bradley-Terry reward model on those pairs (:func:`prefkit.train.reward.train_reward`) --
   the proxy reward -- and its report on held-out pool-labelled pairs (accuracy, calibration,
   agreement with gold, length correlation);
4. every method of ``methods``: ``raft`` (fine-tune on the reward model's best of ``best_of_n``
   samples per prompt); each direct loss (unpaired losses such as ``kto`` get each pair's
   chosen answer as desirable and rejected as undesirable; listwise losses such as ``lipo`` get
   the pool's K-wise rankings; :func:`prefkit.train.preference.train_preference`, the SFT model
   as policy and reference; every ``curve_every`` steps the gold reward, proxy reward and KL of
   its samples on ``curve_prompts`` held-out prompts are recorded); the online methods of
   :data:`ONLINE_METHODS` against the proxy reward model
   (:func:`prefkit.train.online.train_online`; gold and proxy reward and KL recorded per
   iteration) -- both as ``training_curves``, the over-optimization curves over training
   steps; and ``best_of_n`` (``n`` SFT samples, the proxy picks). On a verifiable task
   (``arith``, ``sort_exact``, ``count``) the online methods train on the task's checker
   instead of the proxy (1 right, 0 otherwise) and their curves record accuracy, pass@G, maj@G,
   the unparsed share and KL per iteration;
5. evaluation on ``n_eval`` held-out prompts, one sample per prompt (same seed for every
   policy): gold reward mean, win rate against the SFT policy's answer judged by the gold
   reward, the annotator pool (both orders) and the proxy reward model, each with a 95% CI
   (ties half), length-controlled win rate, mean length, KL to the SFT policy (k1 on the
   policy's own samples), ranking accuracy on held-out gold-ordered pairs from the policy's own
   log-probs with the number of pairs, a 95% Wilson interval and the pairs it re-orders
   relative to SFT (and the idealized ranking accuracy of the KL-regularized optimum); on a
   verifiable task also the accuracy of ``eval_samples`` answers per prompt (pass@1, pass@k,
   maj@k) and its gain over SFT with a 95% paired bootstrap interval over prompts
   (:mod:`prefkit.lab.verifiable_eval`); then a
   leaderboard of all policies from gold-judged pairwise comparisons rated with the arena
   engine (Elo scale, bootstrap CIs);
6. over-optimization: a second reward model is trained on the same samples labelled by a
   length-biased annotator (``overopt_length_bias``, gold units per relative length difference);
   best-of-n with it for n in ``overopt_ns`` gives the proxy and gold curves
   (:func:`prefkit.evaluate.best_of_n_curve`, :func:`prefkit.evaluate.overoptimization_curve`):
   the proxy keeps rising while the gold reward peaks and falls.

Progress: ``run_lab(..., progress=LabProgress(write))`` reports every stage (started, done
with a summary, or cached) and remembers the stage in progress, so an interrupted run can say
where it stopped (:mod:`prefkit.lab.progress`).

Caching: the SFT model and reference log-probs are cached across runs; every other stage is
cached under ``workdir/stages/<key>/`` where the key hashes every setting but ``methods`` and
the paths: a rerun reuses the reward model and each finished method, and an interrupted run
resumes at the first missing one. Each use of the annotator pool has its own random stream, so
a stage's numbers do not depend on which stages ran before it: same config and seed -> the
same numbers, cached or not.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ONLINE_METHODS, QUICK, LabConfig
from .progress import LabProgress
from .verifiable_tasks import VerifiableTask

__all__ = ["ONLINE_METHODS", "QUICK", "LabConfig", "run_lab"]


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


def _online(config: LabConfig, method: str, task, sft_path: str, rm, prompts: list[str],
            runs: Path, quiet) -> tuple[Any, list[dict]]:
    """One online method against the proxy reward model; the gold reward of every rollout is
    recorded (not used for training) for the over-optimization-over-steps curves.

    On a verifiable task (:class:`~prefkit.lab.verifiable_tasks.VerifiableTask`) the reward is
    the task's own checker instead (1 right, 0 otherwise: RL with a verifiable reward, no proxy)
    and the curve records, per iteration, the rollouts' accuracy, unparsed share, pass@G, maj@G
    (G samples per prompt; :func:`~prefkit.lab.verifiable_tasks.verifiable_monitor`), the mean
    training reward and the KL."""
    from ..models.load import load_model
    from ..rewards.sources import BTPreference, FunctionReward, ModelReward
    from ..train.online import OnlineConfig, train_online
    from .verifiable_tasks import verifiable_monitor

    algo = {"online_raft": "raft", "rlaif": "online_dpo"}.get(method, method)
    verifiable = isinstance(task, VerifiableTask)
    with quiet:  # transformers' loading bar: the lab reports its own progress
        policy, tokenizer = load_model(sft_path)

    def gold(ro) -> dict[str, torch.Tensor]:
        return {"gold_reward": torch.tensor([[task.gold_reward(p, c) for c in cs]
                                             for p, cs in zip(ro.prompts, ro.completions,
                                                              strict=True)])}

    group = 2 if algo == "online_ipo" else config.rl_generations
    cfg = OnlineConfig(algo=algo, output_dir=str(runs / _safe(method)),
                       iterations=config.rl_iterations,
                       prompts_per_iteration=config.rl_prompts_per_iteration,
                       num_generations=group, kl_coef=config.kl_coef,
                       learning_rate=config.rl_learning_rate, temperature=config.temperature,
                       batch_size=config.batch_size, lr_scheduler="constant",
                       logging_steps=10_000, save_steps=0, save_final=False, progress=False,
                       seed=config.seed)
    reward: Any = (FunctionReward(task.gold_reward, name=f"{task.name} checker") if verifiable
                   else ModelReward(rm.model, tokenizer))
    if algo == "online_ipo":  # the reward's Bradley-Terry preference between 2 samples
        reward = BTPreference(reward)
    if method == "rlaif":  # AI feedback: a majority jury of the simulated LLM judges
        from ..judges.jury import Jury
        from ..judges.reward_source import JudgeReward
        from .simulated_judge import lab_judge_pool

        judges = lab_judge_pool(task.gold_reward, temperature=config.pool_scale / 3,
                                seed=config.seed)
        reward = JudgeReward(Jury(judges, aggregate="majority"), name="lab judges")
    monitor = verifiable_monitor(task, ks=(1, group)) if verifiable else gold
    with quiet:
        result = train_online(cfg, reward=reward, prompts=prompts, model=policy,
                              tokenizer=tokenizer, monitor=monitor)
    if verifiable:
        keys = ("accuracy", f"pass@{group}", f"maj@{group}", "unparsed")
        # DAPO's dynamic sampling: the monitor sees its first sampling round (every group,
        # before any is dropped); how many groups it dropped is recorded beside them
        curve = [{"step": it["iteration"], **{k: it[k] for k in keys}, "reward": it["reward"],
                  "kl": it["kl"], **{k: v for k, v in it.items()
                                     if k.startswith("dynamic_sampling/")}}
                 for it in result.iterations]
    else:
        curve = [{"step": it["iteration"], "gold_reward": it["gold_reward"],
                  "proxy_reward": it["reward"], "kl": it["kl"]} for it in result.iterations]
    return result.model.eval(), curve


def _offline_curve(config: LabConfig, task, sft, tokenizer, rm, prompts: list[str]):
    """A training callback recording, every ``curve_every`` optimizer steps, the gold reward,
    the proxy reward and the KL to the SFT policy of the policy's samples on ``prompts`` (the
    over-optimization curve over training steps of an offline method)."""
    from ..evaluate import kl_estimate
    from ..models.generate import sample
    from ..rewards.scoring import score_groups
    from ..train.loop import Callback

    class Curve(Callback):
        def __init__(self) -> None:
            self.points: list[dict] = []

        def record(self, step: int, model) -> None:
            policy = getattr(model, "module", model)
            texts = [s[0] for s in sample(policy, tokenizer, prompts, k=1,
                                          temperature=config.temperature,
                                          seed=config.seed + 5)]
            gold = np.mean([task.gold_reward(p, t) for p, t in zip(prompts, texts,
                                                                    strict=True)])
            proxy = score_groups(rm.model, prompts, [[" " + t] for t in texts],
                                 tokenizer=rm.tokenizer)[:, 0].mean()
            lp = _completion_logps(policy, tokenizer, prompts, texts)
            lr = _completion_logps(sft, tokenizer, prompts, texts)
            self.points.append({"step": step, "gold_reward": round(float(gold), 6),
                                "proxy_reward": round(float(proxy), 6),
                                "kl": round(kl_estimate(lp, lr, estimator="k1")["kl"], 6)})

        def on_step_end(self, step: int, model) -> None:
            if step % config.curve_every == 0:
                self.record(step, model)

    return Curve()


def _safe(method: str) -> str:
    """``method`` as a file or folder name."""
    return method.replace("/", "_").replace("*", "x")


def _method_detail(config: LabConfig, task: Any, method: str) -> str:
    """What training ``method`` means in this config (a progress line)."""
    if method == "rlaif":
        return (f"online DPO judged by a jury of simulated LLM judges, {config.rl_iterations} "
                f"iterations of {config.rl_prompts_per_iteration} prompts")
    if method in ONLINE_METHODS:
        against = ("the task's checker" if isinstance(task, VerifiableTask)
                   else "the proxy reward model")
        return (f"online against {against}, {config.rl_iterations} iterations of "
                f"{config.rl_prompts_per_iteration} prompts")
    if method == "raft":
        return (f"fine-tuning on the proxy's best of {config.best_of_n} answers, "
                f"{config.steps} steps")
    return f"{_loss_kind(method)} loss, {config.steps} steps"


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
                      eval_prompts: list[str], work: Path, runs: Path, common: dict,
                      quiet) -> dict:
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
                                             output_dir=str(runs / "rm_length_biased"),
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


def _stage_key(config: LabConfig, task, base_key: str) -> str:
    """Content key of a run's stages: every setting except where files go and which methods
    run (each method's result is cached under the key by its name), the SFT base model's key
    ``base_key`` (which follows its code), the prefkit version and :data:`STAGE_VERSION`."""
    import hashlib

    from .. import __version__

    data = {k: v for k, v in asdict(config).items() if k not in ("workdir", "cache_dir",
                                                                 "methods", "genrm")}
    if not isinstance(task, VerifiableTask):  # only a verifiable task's evaluation uses it
        data.pop("eval_samples")
    data |= {"task_settings": task.config(), "base_model": base_key, "prefkit": __version__,
             "stage_version": STAGE_VERSION}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


STAGE_VERSION = 5  # 4: ranking accuracy with n, Wilson CI, re-ordered pairs; 5: verifiable
# tasks train online methods on the checker and report accuracy gains
"""Bumped when a stage's computation changes, so cached stages of older runs are not reused."""


def _cached(path: Path, compute, progress: LabProgress | None = None, name: str = "",
            detail: str = "") -> Any:
    """``compute()`` once: its JSON result is kept at ``path`` (written atomically). With
    ``progress``, the stage ``name`` is reported as cached, or as started and done (a method's
    result -- a dict with a gold reward and a win rate -- is summarized on its done line)."""
    if path.exists():
        if progress is not None:
            progress.cached(name)
        return json.loads(path.read_text())
    if progress is None:
        value = compute()
    else:
        with progress.stage(name, detail) as st:
            value = compute()
            if isinstance(value, dict) and "gold_reward" in value:
                st.summary = (f"gold reward {value['gold_reward']:.3f}, win rate vs SFT "
                              f"{value['win_rate_vs_sft']:.3f}")
                if value.get("accuracy_gain") is not None:  # a verifiable task
                    lo, hi = value["accuracy_gain_ci"]
                    st.summary += (f", accuracy {value['accuracy']:.3f} (gain over SFT "
                                   f"{value['accuracy_gain']:+.3f} [{lo:+.3f}, {hi:+.3f}])")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    tmp.replace(path)
    return value


def _store_pairs(labels: list, db: Path) -> list[dict]:
    """Keep the annotations in a :class:`~prefkit.data.store.FeedbackStore` (SQLite) and read
    the training pairs back from it: the lab's feedback goes through the same store as human
    feedback (ties are kept in the store and left out of the pairs)."""
    from ..data.store import FeedbackStore

    store = FeedbackStore(str(db))
    try:
        store.add(labels)
        rows = [{"prompt": c.prompt, "chosen": c.chosen, "rejected": c.rejected}
                for c in store.iter_records(kind="comparison") if not c.outcome.is_tie]
    finally:
        store.close()
    order = {(c.prompt, c.chosen, c.rejected): i for i, c in enumerate(labels)
             if not c.outcome.is_tie}
    rows.sort(key=lambda r: order.get((r["prompt"], r["chosen"], r["rejected"]), len(order)))
    return rows


def _store_ratings(ratings: list, db: Path, min_gap: float) -> list[dict]:
    """Absolute ratings (each sample scored by one annotator of the pool: its gold reward plus
    the annotator's rating noise) kept in the feedback store, read back and turned into pairs
    of responses to the same prompt whose scores differ by at least ``min_gap``
    (:func:`prefkit.data.convert.ratings_to_pairs`)."""
    from ..data.convert import ratings_to_pairs
    from ..data.store import FeedbackStore

    store = FeedbackStore(str(db))
    try:
        store.add(ratings)
        stored = list(store.iter_records(kind="rating"))
    finally:
        store.close()
    order = {(r.prompt, r.response): i for i, r in enumerate(ratings)}
    stored.sort(key=lambda r: order.get((r.prompt, r.response), len(order)))
    return [{"prompt": c.prompt, "chosen": c.chosen, "rejected": c.rejected}
            for c in ratings_to_pairs(stored, min_gap=min_gap)]


def _judge_win_rates(prompts: list[str], texts: list[str], sft_texts: list[str], pool, rm,
                     tokenizer) -> dict[str, Any]:
    """Win rate against the SFT answers judged by (ii) the simulated pool (each pair shown in
    both orders, against its position bias) and (iii) the proxy reward model."""
    from ..evaluate import win_rate
    from ..rewards.scoring import score_groups

    prefs = []
    for p, t, s in zip(prompts, texts, sft_texts, strict=True):
        a, b = " " + t, " " + s
        if t == s:  # the same answer: a tie, whatever a judge would say
            prefs.append(0.5)
            continue
        votes = [pool.compare(p, a, b), pool.compare(p, b, a)]
        prefs.append(np.mean([0.5 if v.outcome.is_tie else float(v.chosen == a) for v in votes]))
    scores = score_groups(rm.model, prompts, [[" " + t, " " + s] for t, s in zip(texts, sft_texts,
                                                                              strict=True)],
                          tokenizer=rm.tokenizer).numpy()
    diff = scores[:, 0] - scores[:, 1]
    same = np.array([t == s for t, s in zip(texts, sft_texts, strict=True)])
    proxy = np.where(same | (np.abs(diff) < 1e-5), 0.5, (diff > 0).astype(float))
    out = {}
    for name, x in (("pool", np.array(prefs)), ("proxy_rm", proxy)):
        wr = win_rate(x)
        out[f"win_rate_vs_sft_{name}"] = round(wr["win_rate"], 4)
        out[f"win_rate_ci_{name}"] = [round(wr["ci_low"], 4), round(wr["ci_high"], 4)]
    return out


def _leaderboard(texts: dict[str, list[str]], prompts: list[str], task,
                 seed: int) -> list[dict]:
    """Every pair of policies judged by the gold reward on every evaluation prompt, rated with
    the arena engine (Bradley-Terry, ties as half wins, 200 bootstrap rounds)."""
    from ..rank.aggregate import aggregate_pairwise
    from ..rank.leaderboard import bt_leaderboard

    names = list(texts)
    gold = np.array([[task.gold_reward(p, texts[m][i]) for i, p in enumerate(prompts)]
                     for m in names])
    a, b, outcome = [], [], []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            diff = gold[i] - gold[j]
            a += [i] * len(diff)
            b += [j] * len(diff)
            outcome += np.where(diff > 0, 0, np.where(diff < 0, 1, 2)).tolist()
    counts = aggregate_pairwise(np.array(a), np.array(b), np.array(outcome), len(names))
    board = bt_leaderboard(counts, names, bootstrap=200, seed=seed, min_votes=1,
                           anchor=("sft", 1000.0))
    return [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()}
            for row in board.rows()]


def _heldout_pairs(sft, tokenizer, task, prompts: list[str], seed: int, temperature: float
                   ) -> list[tuple[str, str, str]]:
    """Two SFT samples per evaluation prompt, ordered (chosen, rejected) by the gold reward
    (pairs with equal gold or identical answers are left out)."""
    from ..models.generate import sample

    out = []
    for p, (x, y) in zip(prompts, sample(sft, tokenizer, prompts, k=2, temperature=temperature,
                                         seed=seed), strict=True):
        gx, gy = task.gold_reward(p, x), task.gold_reward(p, y)
        if gx != gy and x != y and x.strip() and y.strip():
            out.append((p, x, y) if gx > gy else (p, y, x))
    return out


def _heldout_logps(policy, tokenizer, pairs) -> tuple[np.ndarray, np.ndarray]:
    """``policy``'s own summed log-probs of the chosen and of the rejected answers of
    ``pairs``."""
    prompts = [p for p, _, _ in pairs]
    return (_completion_logps(policy, tokenizer, prompts, [c for _, c, _ in pairs]),
            _completion_logps(policy, tokenizer, prompts, [r for _, _, r in pairs]))


def _ranking(policy, tokenizer, pairs, sft_right: np.ndarray | None = None
             ) -> tuple[dict[str, Any], np.ndarray]:
    """Ranking accuracy of ``policy`` on the held-out gold-ordered ``pairs`` from its own
    log-probs (Chen et al. 2024, arXiv:2405.19534), with the number of pairs, a 95% Wilson
    interval and -- given ``sft_right``, which pairs the SFT policy orders right -- the pairs it
    re-orders relative to SFT ``[fixed, broken]``; and which pairs it orders right.

    Why several methods can show the same accuracy: a pair flips only when training moves its
    log-prob margin by more than the SFT margin, and at a KL of a few tenths the policies move
    margins by about a nat while half the SFT margins are larger than ~2.5 nats (a longer
    answer has a much lower summed log-prob); what flips is the same handful of near-tied pairs
    for every method (lab default run: 5 fixed and 1 broken of 204 for DPO, IPO, SimPO, GRPO,
    PPO and RLOO alike, different pairs per method family), so the counts -- not the policies --
    coincide."""
    from ..evaluate.policy import ranking_accuracy_interval

    if not pairs:
        return {"ranking_accuracy": None, "ranking_accuracy_ci": None, "ranking_pairs": 0,
                "ranking_flips_vs_sft": None}, np.zeros(0, dtype=bool)
    lc, lr = _heldout_logps(policy, tokenizer, pairs)
    right = lc > lr
    stats = ranking_accuracy_interval(lc, lr)
    flips = (None if sft_right is None else
             [int((right & ~sft_right).sum()), int((~right & sft_right).sum())])
    return {"ranking_accuracy": round(stats["accuracy"], 4),
            "ranking_accuracy_ci": [round(stats["ci_low"], 4), round(stats["ci_high"], 4)],
            "ranking_pairs": stats["n"], "ranking_flips_vs_sft": flips}, right


def _rm_report(rm, pool, pairs, task) -> dict[str, Any]:
    """The proxy reward model on held-out pairs labelled by the pool: accuracy, calibration
    (ECE, reliability bins), agreement with the gold reward, reward-length correlation."""
    from ..evaluate.rm import evaluate_pairs
    from ..rewards.scoring import score_pairs

    labelled = pool.annotate_pairs([(p, " " + c, " " + r) for p, c, r in pairs])
    kept = [c for c in labelled if not c.outcome.is_tie]
    rc, rr = score_pairs(rm.model, [c.prompt for c in kept], [c.chosen for c in kept],
                         [c.rejected for c in kept], tokenizer=rm.tokenizer)
    gold = [task.gold_reward(c.prompt, c.chosen.strip()) > task.gold_reward(c.prompt,
                                                                              c.rejected.strip())
            for c in kept]
    return evaluate_pairs(rc.numpy(), rr.numpy(), gold=np.array(gold),
                          chosen_lengths=_lengths([c.chosen for c in kept]),
                          rejected_lengths=_lengths([c.rejected for c in kept]))


def run_lab(config: LabConfig | None = None, *, progress: LabProgress | None = None,
            **overrides: Any) -> dict[str, Any]:
    """Run the loop (module docstring); returns one JSON-ready dict. ``progress`` (a
    :class:`~prefkit.lab.progress.LabProgress`) gets a line per stage -- started, done or
    cached -- and knows the stage in progress and the stage folder if the run is
    interrupted."""
    from ..lab.annotators import agreement, alpacafarm_pool
    from ..lab.base_model import BaseModelSettings, base_model_path, build_base_model
    from ..lab.tasks import get_task
    from ..models.generate import sample
    from ..rewards import RewardModel
    from ..rewards.scoring import score_groups
    from ..train.preference import PreferenceConfig, train_preference
    from ..train.reward import RewardConfig, train_reward

    config = LabConfig(**{**asdict(config or LabConfig()), **overrides})
    progress = progress or LabProgress()
    work = Path(config.workdir)
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(config.cache_dir) if config.cache_dir else work / "cache"
    task = get_task(config.task)
    quiet = contextlib.redirect_stderr(io.StringIO())
    base_path = base_model_path(task, cache / "base", seed=config.seed)
    if (base_path / "info.json").exists():
        progress.cached("SFT base model", str(base_path))
        with quiet:
            sft, tokenizer, info = build_base_model(task, cache / "base", seed=config.seed)
    else:
        with progress.stage("SFT base model", f"training {BaseModelSettings().steps} steps "
                            "(first run only, cached afterwards)") as st, quiet:
            sft, tokenizer, info = build_base_model(task, cache / "base", seed=config.seed)
            st.summary = f"final NLL {info['final_nll']:.3f}, saved to {info['path']}"
    sft_path = info["path"]
    stage = work / "stages" / _stage_key(config, task, info["key"])
    (stage / "methods").mkdir(parents=True, exist_ok=True)
    runs = stage / "runs"  # the trainers' output folders: one run per folder and stage
    progress.stage_dir = str(stage)
    rng = random.Random(config.seed)
    train_prompts = [task.sample_prompt(rng) for _ in range(config.n_prompts)]
    eval_prompts = [task.sample_prompt(rng) for _ in range(config.n_eval)]

    # 2. samples -> simulated annotators -> the feedback store -> pairs
    with progress.stage("sampling", f"{config.k} answers to each of {config.n_prompts} "
                        "training prompts from the SFT policy"):
        samples = sample(sft, tokenizer, train_prompts, k=config.k,
                         temperature=config.temperature, seed=config.seed)

    def pool_for(tag: str):
        """The annotator pool with its own random stream per use, so a stage's labels do not
        depend on which other stages ran before it (cached stages are skipped on a rerun)."""
        import zlib

        return alpacafarm_pool(lambda p, r: task.gold_reward(p, r), n=config.pool_size,
                               scale=config.pool_scale, training=config.training_flips,
                               seed=config.seed if tag == "labels" else
                               config.seed * 1_000_003 + zlib.crc32(tag.encode()))

    pool = pool_for("labels")
    items = [(p, " " + s[i], " " + s[i + 1]) for p, s in zip(train_prompts, samples,
                                                             strict=True)
             for i in range(0, config.k - 1, 2)
             if s[i] != s[i + 1] and s[i].strip() and s[i + 1].strip()]
    what = (f"{len(items)} pairs" if config.feedback == "pairs" else "every distinct answer")
    with progress.stage("annotation", f"{what} labelled by a pool of {config.pool_size} "
                        "simulated annotators, kept in the feedback store") as st:
        if config.feedback == "pairs":
            labels = pool.annotate_pairs(items)
            rows = _store_pairs(labels, stage / "feedback.db")
            st.summary = (f"{len(labels)} labels, {len(labels) - len(rows)} ties, "
                          f"{len(rows)} training pairs")
        else:  # ratings (LabConfig checks the value)
            labels = [pool.rate(p, " " + c, scale=(-10.0, 10.0))
                      for p, cs in zip(train_prompts, samples, strict=True)
                      for c in dict.fromkeys(c for c in cs if c.strip())]
            rows = _store_ratings(labels, stage / "feedback.db", config.rating_min_gap)
            st.summary = f"{len(labels)} ratings, {len(rows)} training pairs"
    pairs = _write(work / "pairs.jsonl", rows)
    gold_agree = float(np.mean([task.gold_reward(r["prompt"], r["chosen"].strip())
                                >= task.gold_reward(r["prompt"], r["rejected"].strip())
                                for r in rows]))
    annotators = _cached(stage / "agreement.json", lambda: _rounded(agreement(
        pool_for("agreement"), items[:200], n_repeats=3, seed=config.seed)),
        progress, "annotator agreement")

    common = dict(batch_size=config.batch_size, lr_scheduler="constant", logging_steps=10_000,
                  save_steps=0, save_final=False, progress=False, seed=config.seed)
    # 3. reward model (cached with the stage)
    rm_dir = stage / "reward_model"
    if (rm_dir / "reward_config.json").exists():
        progress.cached("reward model")
        with quiet:
            rm_model = RewardModel.from_pretrained(rm_dir)
        rm_accuracy = json.loads((stage / "reward_model.json").read_text())["train_accuracy"]
    else:
        with progress.stage("reward model", f"Bradley-Terry, {config.rm_steps} steps on "
                            f"{len(rows)} pairs") as st:
            with quiet:
                trained_rm = train_reward(RewardConfig(
                    model=sft_path, data=pairs, objective="bt", output_dir=str(runs / "rm"),
                    max_steps=config.rm_steps, learning_rate=config.rm_learning_rate,
                    **common))
            rm_accuracy = round(trained_rm.fit.metrics.get("accuracy", float("nan")), 4)
            trained_rm.model.save_pretrained(rm_dir)
            (stage / "reward_model.json").write_text(json.dumps({"train_accuracy":
                                                                 rm_accuracy}))
            with quiet:  # the same weights as a rerun loads
                rm_model = RewardModel.from_pretrained(rm_dir)
            st.summary = f"train accuracy {rm_accuracy:.3f}"
    rm = _RM(rm_model.eval(), tokenizer)

    # 5. the SFT baseline's evaluation samples (the same seed for every policy)
    def eval_samples(model) -> list[str]:
        return [s[0] for s in sample(model, tokenizer, eval_prompts, k=1,
                                     temperature=config.temperature, seed=config.seed + 1)]

    verifiable = isinstance(task, VerifiableTask)

    def graded(model):
        """A policy's ``eval_samples`` answers to each held-out prompt, checked (verifiable
        tasks; the same seed for every policy)."""
        from .verifiable_eval import grade

        return grade(task, eval_prompts, sample(model, tokenizer, eval_prompts,
                                                k=config.eval_samples,
                                                temperature=config.temperature,
                                                seed=config.seed + 6))

    with progress.stage("evaluation set", f"{config.n_eval} held-out prompts: SFT answers "
                        "and gold-ordered pairs") as st:
        sft_texts = eval_samples(sft)
        heldout = _heldout_pairs(sft, tokenizer, task, eval_prompts, config.seed + 4,
                                 config.temperature)
        sft_right = _ranking(sft, tokenizer, heldout)[1]  # the pairs SFT orders right
        st.summary = f"{len(heldout)} held-out pairs"
        sft_graded = graded(sft) if verifiable else None
    rm_report = _cached(stage / "rm_report.json",
                        lambda: _rm_report(rm, pool_for("rm_report"), heldout, task),
                        progress, "reward model on held-out pairs")
    genrm = None
    if config.genrm:  # generative RM vs the BT RM on the same held-out pairs (lab/genrm.py)
        from .genrm import genrm_vs_bt

        genrm = _cached(stage / "genrm.json", lambda: genrm_vs_bt(
            sft_path, pairs, heldout, rm.model, tokenizer, output_dir=str(runs / "genrm"),
            seed=config.seed), progress,
            "generative reward model", "verdict-token GenRM from the SFT weights, both orders")

    def evaluate(texts: list[str], policy=None, name: str = "sft") -> dict[str, Any]:
        out = _evaluate(texts, eval_prompts, task, sft_texts, sft, tokenizer, policy=policy)
        out |= _judge_win_rates(eval_prompts, texts, sft_texts, pool_for(f"judge:{name}"), rm,
                                tokenizer)
        if policy is not None or name == "sft":  # not for sampling procedures (best-of-n)
            out |= _ranking(policy if policy is not None else sft, tokenizer, heldout,
                            sft_right)[0]
        else:
            out["ranking_accuracy"] = None
        if verifiable and (policy is not None or name == "sft"):  # accuracy, gain over SFT
            from .verifiable_eval import accuracy_summary

            mine = sft_graded if policy is None else graded(policy)
            out |= accuracy_summary(mine, sft_graded, seed=config.seed)
        out["texts"] = texts
        return out

    results: dict[str, Any] = {"sft": _cached(stage / "methods" / "sft.json",
                                              lambda: evaluate(sft_texts), progress,
                                              "evaluation of the SFT policy")}
    curves: dict[str, list[dict]] = {}
    n_methods = len(config.methods) + (config.best_of_n > 1)
    # 4a. every method (each cached: an interrupted run resumes at the first missing one)
    for number, method in enumerate(config.methods, 1):
        def compute(method: str = method) -> dict[str, Any]:
            if method in ONLINE_METHODS:
                policy, curve = _online(config, method, task, sft_path, rm, train_prompts,
                                        runs, quiet)
                res = evaluate(eval_samples(policy), policy, method)
                return {**res, "kind": "online", "curve": curve}
            data, loss, lr = pairs, method, config.learning_rate
            if method == "raft":
                data = _raft_data(config, sft, tokenizer, rm, train_prompts, work)
                loss, lr = "sft", config.raft_learning_rate
            elif _loss_kind(method) == "unpaired":
                data = _binary_data(rows, work)
            elif _loss_kind(method) == "listwise":
                data = _ranking_data(pool_for("rankings"), train_prompts, samples, work)
            curve = (_offline_curve(config, task, sft, tokenizer, rm,
                                    eval_prompts[:config.curve_prompts])
                     if config.curve_every > 0 else None)
            if curve is not None:
                curve.record(0, sft)
            with quiet:
                trained = train_preference(PreferenceConfig(
                    model=sft_path, data=data, loss=loss, beta=config.beta,
                    output_dir=str(runs / _safe(method)), max_steps=config.steps,
                    learning_rate=lr,
                    reference_cache=str(cache / "reference"), **common),
                    callbacks=[curve] if curve is not None else ())
            policy = trained.model.eval()
            res = {**evaluate(eval_samples(policy), policy, method), "kind": "offline"}
            return res | ({"curve": curve.points} if curve is not None else {})

        res = _cached(stage / "methods" / f"{_safe(method)}.json", compute, progress,
                      f"method {number}/{n_methods} {method}", _method_detail(config, task, method))
        if "curve" in res:
            curves[method] = res.pop("curve")
        results[method] = res
    # 4b. best-of-N with the proxy reward model
    if config.best_of_n > 1:
        def best_of_n() -> dict[str, Any]:
            cands = sample(sft, tokenizer, eval_prompts, k=config.best_of_n,
                           temperature=config.temperature, seed=config.seed + 2)
            proxy = score_groups(rm.model, eval_prompts, [[" " + c for c in cs] for cs in cands],
                                 tokenizer=rm.tokenizer)
            picked = [cs[int(torch.argmax(r))] for cs, r in zip(cands, proxy, strict=True)]
            res = evaluate(picked, name=f"best_of_{config.best_of_n}")
            n = config.best_of_n
            res["kl_to_sft"] = round(float(np.log(n) - (n - 1) / n), 4)  # the analytic bound
            res["kind"] = "sampling"
            return res

        name = f"best_of_{config.best_of_n}"
        results[name] = _cached(stage / "methods" / f"{name}.json", best_of_n, progress,
                                f"method {n_methods}/{n_methods} {name}",
                                f"{config.best_of_n} SFT answers per prompt, the proxy picks")
    overopt = None
    if config.overopt_length_bias > 0:
        overopt = _cached(stage / "overoptimization.json", lambda: _overoptimization(
            config, task, sft, tokenizer, sft_path, items, eval_prompts, work, runs, common,
            quiet),
            progress, "over-optimization", "a reward model on length-biased labels, best-of-n "
            f"for n in {', '.join(map(str, config.overopt_ns))}")
    texts = {name: res.pop("texts") for name, res in results.items()}
    with progress.stage("leaderboard", f"every pair of the {len(texts)} policies judged by the "
                        "gold reward"):
        leaderboard = _leaderboard(texts, eval_prompts, task, config.seed)
        ideal = _idealized(sft, tokenizer, task, heldout, config.beta)
    return {"config": asdict(config), "sft_model": sft_path, "stage": str(stage),
            "data": {"feedback": config.feedback, "labels": len(labels), "pairs": len(rows),
                     "ties_dropped": (len(labels) - len(rows)
                                      if config.feedback == "pairs" else None),
                     "identical_or_empty_samples_dropped":
                         config.n_prompts * (config.k // 2) - len(items),
                     "labels_agreeing_with_gold": round(gold_agree, 4),
                     "heldout_pairs": len(heldout)},
            "feedback_store": str(stage / "feedback.db"),
            "annotators": annotators,
            "reward_model": {"train_accuracy": rm_accuracy, "heldout": rm_report}
            | ({"generative": genrm} if genrm is not None else {}),
            "methods": results, "leaderboard": leaderboard,
            "idealized_ranking_accuracy": ideal,
            "overoptimization": overopt, "training_curves": curves}


@dataclass
class _RM:
    """The proxy reward model with the tokenizer it scores with."""

    model: Any
    tokenizer: Any


def _idealized(sft, tokenizer, task, pairs, beta: float) -> float | None:
    """Ranking accuracy of the ideal KL-regularised policy (reference = SFT, reward = gold)."""
    from ..evaluate import idealized_ranking_accuracy

    if not pairs:
        return None
    lc, lr = _heldout_logps(sft, tokenizer, pairs)
    gc = [task.gold_reward(p, c) for p, c, _ in pairs]
    gr = [task.gold_reward(p, r) for p, _, r in pairs]
    return round(float(idealized_ranking_accuracy(lc, lr, gc, gr, beta)), 4)


def _rounded(obj: Any, digits: int = 4) -> Any:
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_rounded(v, digits) for v in obj]
    return obj
