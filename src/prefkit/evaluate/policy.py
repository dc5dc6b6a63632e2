"""Policy evaluation maths as pure numpy functions: KL to the reference, ranking accuracy (with
a Wilson interval), best-of-n and over-optimisation curves.

Inputs are per-sample numbers (summed sequence log-probs, rewards); nothing here loads a
model. Compute log-probs with :mod:`prefkit.models` first, then call these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from prefkit.evaluate.calibration import as_finite, same_length
from prefkit.evaluate.rm import pairwise_accuracy

ESTIMATORS = ("k1", "k2", "k3")


# --------------------------------------------------------------------------- KL


def kl_estimate(logp_policy: Any, logp_reference: Any, *, estimator: str = "k1") -> dict[str, Any]:
    """Monte-Carlo estimate of ``KL(policy || reference)`` from samples of the policy.

    ``logp_policy[i]`` and ``logp_reference[i]`` are the summed log-probabilities of sample
    ``y_i ~ pi_policy`` under each model (a sequence-level KL). With the ratio
    ``r = pi_ref(y) / pi_policy(y)``, i.e. ``log r = logp_reference - logp_policy``, and
    ``KL = E_policy[log pi_policy - log pi_ref] = E[-log r]``, the estimators of J. Schulman,
    "Approximating KL Divergence" (2020) are::

        k1 = -log r                 unbiased; high variance; can be negative per sample
        k2 = (log r)^2 / 2          biased (exact to 2nd order as the policies approach);
                                    low variance; >= 0
        k3 = (r - 1) - log r        unbiased (E[r] = 1); >= 0; lower variance than k1
                                    when the policies are close (heavy-tailed when not)

    (k1 is often written ``log r`` with the ratio the other way up, ``r = pi/pi_ref``; the
    value returned is the same.) Returns ``{"kl", "se", "n", "estimator"}``: the mean of the
    per-sample values and its standard error ``sd(ddof=1) / sqrt(n)`` (None if n = 1).
    ``k3`` evaluates ``exp(log r)``; it is unbiased but heavy-tailed when the reference puts
    much more mass on a sample than the policy.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    lp = as_finite(logp_policy, "logp_policy")
    lq = as_finite(logp_reference, "logp_reference")
    n = same_length(logp_policy=lp, logp_reference=lq)
    log_r = lq - lp
    if estimator == "k1":
        values = -log_r
    elif estimator == "k2":
        values = 0.5 * log_r**2
    else:
        values = np.expm1(log_r) - log_r
    se = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else None
    return {"kl": float(values.mean()), "se": se, "n": n, "estimator": estimator}


# --------------------------------------------------------------------------- ranking accuracy


def ranking_accuracy(logp_chosen: Any, logp_rejected: Any, *, chosen_lengths: Any = None,
                     rejected_lengths: Any = None, ties: str = "wrong") -> float:
    """Ranking accuracy of a policy on preference pairs (Chen et al. 2024, "Preference
    Learning Algorithms Do Not Learn Preference Rankings", arXiv:2405.19534)::

        acc = (1/N) * sum_i 1( log pi(y_w,i | x_i) > log pi(y_l,i | x_i) )

    the share of pairs where the policy gives the chosen response the higher likelihood
    (``logp_*`` are summed sequence log-probs). With ``chosen_lengths`` and
    ``rejected_lengths`` (token counts) the per-token average log-probs
    ``logp / length`` are compared instead (the length-normalised variant). Exact ties count
    0 (``ties="wrong"``, the paper's strict ``>``) or 0.5 (``"half"``).
    """
    c = as_finite(logp_chosen, "logp_chosen")
    r = as_finite(logp_rejected, "logp_rejected")
    same_length(logp_chosen=c, logp_rejected=r)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("pass both chosen_lengths and rejected_lengths, or neither")
    if chosen_lengths is not None:
        lc = _positive(chosen_lengths, "chosen_lengths")
        lr = _positive(rejected_lengths, "rejected_lengths")
        same_length(logp_chosen=c, chosen_lengths=lc, rejected_lengths=lr)
        c, r = c / lc, r / lr
    return pairwise_accuracy(c, r, ties=ties)


def ranking_accuracy_interval(logp_chosen: Any, logp_rejected: Any, *, level: float = 0.95,
                              **kwargs: Any) -> dict[str, Any]:
    """:func:`ranking_accuracy` with its sample size and a Wilson score interval
    (:func:`~prefkit.evaluate.winrate.wilson_interval`; each pair a Bernoulli trial, ``level``
    95% by default): ``{"accuracy", "ci_low", "ci_high", "n", "correct", "level"}``, where
    ``correct = accuracy * n`` (a tie counts half with ``ties="half"``). ``kwargs`` go to
    :func:`ranking_accuracy` (lengths, ties)."""
    from prefkit.evaluate.winrate import wilson_interval

    accuracy = ranking_accuracy(logp_chosen, logp_rejected, **kwargs)
    n = len(np.atleast_1d(np.asarray(logp_chosen)))
    correct = accuracy * n
    lo, hi = wilson_interval(correct, n, level=level)
    return {"accuracy": accuracy, "ci_low": lo, "ci_high": hi, "n": n,
            "correct": round(correct, 6), "level": level}


def _positive(values: Any, name: str) -> np.ndarray:
    x = as_finite(values, name)
    bad = x <= 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] = {x[i]} must be > 0")
    return x


def idealized_ranking_accuracy(ref_logp_chosen: Any, ref_logp_rejected: Any,
                               gold_reward_chosen: Any, gold_reward_rejected: Any,
                               beta: float, *, ties: str = "wrong") -> float:
    """Ranking accuracy of the *optimal* KL-regularised policy (Chen et al. 2024,
    arXiv:2405.19534).

    The RLHF / DPO optimum is ``pi*(y|x) ∝ pi_ref(y|x) * exp(r(x, y) / beta)``, so::

        log pi*(y_w)/pi*(y_l) = [log pi_ref(y_w) - log pi_ref(y_l)] + (r_w - r_l) / beta

    and the idealised ranking accuracy is the share of pairs where that is ``> 0`` (ties as
    in :func:`ranking_accuracy`). With Bradley–Terry gold preference probabilities
    ``p = P(y_w > y_l)``, pass ``r_w - r_l = log(p / (1 - p))`` (e.g. rewards
    ``logit(p)`` and 0). A small ``beta`` approaches the gold ranking; a large one the
    reference model's.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    rc = as_finite(ref_logp_chosen, "ref_logp_chosen")
    rr = as_finite(ref_logp_rejected, "ref_logp_rejected")
    gc = as_finite(gold_reward_chosen, "gold_reward_chosen")
    gr = as_finite(gold_reward_rejected, "gold_reward_rejected")
    same_length(ref_logp_chosen=rc, ref_logp_rejected=rr, gold_reward_chosen=gc,
                gold_reward_rejected=gr)
    margin = (rc - rr) + (gc - gr) / beta
    return pairwise_accuracy(margin, np.zeros_like(margin), ties=ties)


# --------------------------------------------------------------------------- over-optimisation


def overoptimization_curve(xs: Any, gold: Any, proxy: Any, *,
                           tol: float = 0.0) -> dict[str, Any]:
    """Summarise a gold-vs-proxy curve (Gao, Schulman & Hilton 2023, "Scaling Laws for
    Reward Model Overoptimization", arXiv:2210.10760).

    ``xs`` is the optimisation axis (``n`` of best-of-n, KL, or training steps); ``gold`` and
    ``proxy`` the mean gold and proxy reward at each point. Points are sorted by ``xs``.
    Returns:

    - ``argmax_gold``: index (in sorted order) of the gold maximum (first if tied);
      ``x_at_gold_max``, ``gold_max``.
    - ``gold_interior``: the gold maximum exceeds the gold value at both ends by more than
      ``tol`` — gold rose and then fell, the over-optimisation signature.
    - ``gold_drop``: ``gold_max - gold[-1]`` (>= 0), what over-optimising cost at the end.
    - ``proxy_monotone``: every step of the proxy is ``>= -tol``;
      ``proxy_spearman`` / ``gold_spearman``: rank correlation with ``xs`` (None if constant).
    - ``overoptimized``: ``gold_interior`` while the proxy kept rising past the gold peak
      (``proxy[-1] > proxy[argmax_gold] + tol``).
    """
    x = as_finite(xs, "xs")
    g = as_finite(gold, "gold")
    p = as_finite(proxy, "proxy")
    n = same_length(xs=x, gold=g, proxy=p)
    order = np.argsort(x, kind="stable")
    x, g, p = x[order], g[order], p[order]
    k = int(np.argmax(g))
    gmax = float(g[k])
    interior = bool(n >= 3 and gmax > g[0] + tol and gmax > g[-1] + tol)
    monotone = bool(np.all(np.diff(p) >= -tol))
    return {
        "n": n,
        "argmax_gold": k,
        "x_at_gold_max": float(x[k]),
        "gold_max": gmax,
        "gold_interior": interior,
        "gold_drop": float(gmax - g[-1]),
        "proxy_monotone": monotone,
        "proxy_spearman": _spearman(x, p),
        "gold_spearman": _spearman(x, g),
        "overoptimized": bool(interior and p[-1] > p[k] + tol),
    }


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b)[0])


def best_of_n_kl_bound(n: int) -> float:
    """Analytic KL of best-of-n to the base policy, ``log n - (n - 1) / n`` (Stiennon et al.
    2020; Beirami et al. 2024 show it is an upper bound, exact for continuous rewards)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return float(np.log(n) - (n - 1) / n)


def best_of_n_curve(proxy_scores: Any, gold_scores: Any,
                    ns: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Best-of-n under a proxy reward, scored by the gold reward.

    ``proxy_scores`` and ``gold_scores`` are ``[N_prompts, K]``: K samples per prompt scored
    by both. For each ``n`` in ``ns`` (default ``1, 2, 4, ...`` up to K) the chosen sample
    of prompt i is ``j_i = argmax_{j < n} proxy[i, j]`` (first of the first n samples on a
    tie) and::

        proxy_mean = mean_i proxy[i, j_i]     gold_mean = mean_i gold[i, j_i]
        kl_bound   = log n - (n - 1) / n      (see best_of_n_kl_bound)

    ``gold_se`` is the standard error of ``gold_mean`` over prompts. Using the first n of K
    samples (not all subsets) keeps the points nested; average over seeds for smoother
    curves. Feed ``[d["n"] ...], [d["gold_mean"] ...], [d["proxy_mean"] ...]`` to
    :func:`overoptimization_curve`.
    """
    P = as_finite(proxy_scores, "proxy_scores", ndim=2)
    G = as_finite(gold_scores, "gold_scores", ndim=2)
    if P.shape != G.shape:
        raise ValueError(f"gold_scores has shape {G.shape} but proxy_scores has {P.shape}")
    n_prompts, k = P.shape
    if n_prompts == 0 or k == 0:
        raise ValueError(f"proxy_scores is empty (shape {P.shape})")
    if ns is None:
        ns = [2**i for i in range(int(np.log2(k)) + 1)]
    rows = np.arange(n_prompts)
    out = []
    for n in ns:
        n = int(n)
        if not 1 <= n <= k:
            raise ValueError(f"n = {n} is outside [1, K = {k}]")
        j = np.argmax(P[:, :n], axis=1)
        gold = G[rows, j]
        out.append({
            "n": n,
            "proxy_mean": float(P[rows, j].mean()),
            "gold_mean": float(gold.mean()),
            "gold_se": float(gold.std(ddof=1) / np.sqrt(n_prompts)) if n_prompts > 1 else None,
            "kl_bound": best_of_n_kl_bound(n),
        })
    return out
